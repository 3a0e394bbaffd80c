"""The LMDB environment: every named database, its key and value layout, and map growth.

This module is the schema's single source of truth.  Every record format is a
fixed ``struct`` defined here; integers in keys are big-endian so that LMDB's
byte order is numeric order (manifest entries sort by file offset, directory
listings by entry id).

Databases (all in one environment, so one write transaction can change file
contents, refcounts and the namespace together):

=============  ==========================================  ===========================================
name           key                                         value
=============  ==========================================  ===========================================
chunks         chunk id (u32 BE, from ``next_chunk``)      CHUNK: address, refcount, stored length, pack, offset (+ raw length if compressed)
lookup         address[:8] + chunk id (u32 BE)             empty: finds a chunk id by its address (dedup)
files          file id (store-level, bytes)                FILE: fkey, size, chunk count, data bytes
manifests      fkey (u64 BE) + run start offset (u64 BE)   a run: up to RUN_MAX (chunk id, end) pairs of
                                                           chunks laid back to back from the start; each
                                                           end is relative to the start (RUN_ENTRY)
packs          pack id (u32 BE)                            PACK: indexed end, live bytes, dead bytes
pending        pack id (u32 BE) + record offset (u64 BE)   PENDING: chunk id, stored length
counters       name                                        u64 LE
inodes         ino (u64 BE)                                INODE: mode, nlink, uid, gid, rdev, size, times, parent
dirents        parent ino (u64 BE) + name                  DIRENT: child ino, entry id
dirorder       parent ino (u64 BE) + entry id (u64 BE)     DIRORDER (child ino) + name: stable readdir cookies
xattrs         ino (u64 BE) + name                         value
symlinks       ino (u64 BE)                                target
orphans        ino (u64 BE)                                empty: nlink 0 but still open or looked up
synclog        pack id (u32 BE) + offset (u64 BE)          bytes of that pack from that offset, durable
                                                           here until the pack is flushed (_synclog.py)
recompress     pack id (u32 BE)                            WAITING: bytes of records in that pack stored
                                                           raw to be compressed later, bytes of records
                                                           compressed without a dictionary (_recompress.py)
retired        fkey (u64 BE)                               u64 LE: entries left of a big manifest a commit
                                                           replaced or deleted; its runs stay in
                                                           ``manifests`` holding their references until
                                                           the background drops them (_manifests.py)
staged         ino (u64 BE)                                a file's changes staged raw, not yet chunked
                                                           (layout: chunkfs.fs.behind)
=============  ==========================================  ===========================================

Why this shape (docs/store-format.md has the measurements): the index must
cost little per unique chunk and per manifest entry.  A chunk is named by
a short id handed out by a counter, so chunk records are written in key
order (LMDB's ``append``: full pages) and a manifest entry is 8 bytes; the
address (the dedup identity) is stored once, in the chunk record, and found
from the ``lookup`` database, whose 8-byte prefix is confirmed against the
chunk record (two addresses may share a prefix: both are listed).  A file's
manifest is a few records of up to RUN_MAX entries each, one per run of
chunks lying back to back; a hole is a gap between runs, and no run spans
one.  The checksum that verifies a read lives in the pack record header,
next to the bytes it covers (_packs.py).

The seven filesystem databases (inodes ... orphans, and staged) belong to the layer above:
the store keeps them in its environment, so that one transaction can change a
file's contents and its inode together, and hands them out through
:class:`FsTables`; their record layouts are defined and documented in
``chunkfs.fs.namespace``, and nothing in the store reads them.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

import lmdb

from ..errors import IndexCorruptError, ReadOnlyError, StoreFullError

T = TypeVar("T")
log = logging.getLogger(__name__)

DATABASES = (
    "chunks", "lookup", "files", "manifests", "packs", "pending", "counters",
    "inodes", "dirents", "dirorder", "xattrs", "symlinks", "orphans",
)
ADDED_DATABASES = ("synclog", "recompress", "retired", "staged")  # newer than some stores: made at the first writable open that lacks them

CHUNK = struct.Struct("<32sIIII")  # address, refcount, stored length, pack id, data offset
# ... then, only for a chunk stored compressed, its raw length (u32): an uncompressed chunk's is its stored
# length, and every byte of the chunk record counts in the index's size per chunk
CHUNK_RAW = struct.Struct("<I")
FILE = struct.Struct("<QQQQ")  # fkey, logical size, number of chunks, bytes in chunks (size less holes)
RUN_ENTRY = struct.Struct("<II")  # one manifest entry in a run: chunk id, its end relative to the run's start
RUN_MAX = 32  # entries per run: 9 bytes an entry in full pages, and a short decode per read
MAX_RUN_SPAN = 0xFFFFFFFF  # a run covers less than 4 GiB: its relative ends are u32
PACK = struct.Struct("<QQQ")  # indexed end, live bytes, dead bytes
PENDING = struct.Struct("<II")  # chunk id, stored length
WAITING = struct.Struct("<QQ")  # raw bytes waiting for compression, bytes compressed without a dictionary
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
KEY64 = struct.Struct(">Q")
KEY64x2 = struct.Struct(">QQ")
KEYCHUNK = struct.Struct(">I")
KEYPACK = struct.Struct(">I")
KEYPENDING = struct.Struct(">IQ")
KEYSYNCLOG = struct.Struct(">IQ")  # pack id, offset
LOOKUP_PREFIX = 8  # bytes of the address that key the lookup (a hit is confirmed by the chunk record)
MAX_CHUNK_ID = 0xFFFFFFFF  # ids are u32; the counter never hands one out twice
MAX_REFCOUNT = 0xFFFFFFFF
MAX_OFFSET = (1 << 64) - 1  # past every manifest key's offset


def lookup_key(address: bytes, chunk: int) -> bytes:
    """The ``lookup`` key listing ``chunk`` under its address's prefix."""
    return address[:LOOKUP_PREFIX] + KEYCHUNK.pack(chunk)


STORE_DATABASES = ("chunks", "lookup", "files", "manifests", "packs", "pending", "counters")
FS_DATABASES = ("inodes", "dirents", "dirorder", "xattrs", "symlinks", "orphans")  # layouts: chunkfs.fs.namespace

INITIAL_MAP_SIZE = 256 * 1024 * 1024
MAX_MAP_SIZE = 1 << 44


class Index:
    """Owns the LMDB environment; hands out transactions and grows the map.

    Writes go through :meth:`write`, which runs a function in a write
    transaction and, if LMDB reports the map is full, doubles the map and runs
    it again.  So a write function must have no side effects outside LMDB that
    cannot be repeated.  Resizing needs every transaction of this process
    closed, which the reader count below guarantees.
    """

    def __init__(self, path: str, readonly: bool = False, create: bool = False, map_size: int | None = None):
        self.path = path
        self.create = create
        self.readonly = readonly
        self._gate_lock = threading.Lock()
        self._gate = threading.Condition(self._gate_lock)
        self._readers = 0
        self._resizing = False
        self._write_lock = threading.RLock()
        self.on_disk_full: Callable[[], bool] | None = None  # frees some space; True if it did
        self.low_space = False  # the reserve is spent: only space-freeing transactions run
        if not create and not os.path.exists(os.path.join(path, "data.mdb")):
            raise IndexCorruptError(f"{path}: the metadata index is missing")
        try:
            if create:
                os.makedirs(path, mode=0o700, exist_ok=True)
            self.env = lmdb.open(
                os.fsencode(path),  # bytes: a directory's name need not be UTF-8
                map_size=map_size or INITIAL_MAP_SIZE, max_dbs=len(DATABASES) + len(ADDED_DATABASES) + 1, readonly=readonly, subdir=True, create=create, sync=False, metasync=False,
                readahead=False, max_readers=512, lock=True,
                mode=0o700,  # data.mdb and lock.mdb get 0600: the index names every user's files
            )
            if not create:
                self._check_length()
            self._open_databases()
        except lmdb.Error as exc:
            raise IndexCorruptError(f"{path}: cannot open the metadata index ({exc})") from None

    def _check_length(self) -> None:
        """Refuse a data file shorter than the pages its header says are in use.

        LMDB maps the file: reading a page past its end kills the process with
        SIGBUS, which no ``except`` catches (a mount would die without a word,
        fsck with it).  The pages past the end may only be free ones LMDB never
        had to write, so a short file is read through once in a child process
        before it is called truncated.
        """
        data = os.path.join(self.path, "data.mdb")
        needed = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        size = os.path.getsize(data)
        if size >= needed or _readable_in_child(self.path):
            return
        self.env.close()
        raise IndexCorruptError(f"{self.path}: the metadata index is truncated ({size} of {needed} bytes); "
                                "restore meta/ from a backup")

    def _open_databases(self) -> None:
        """Open every database; only mkfs may create them (an empty index is damage, not a new store)."""
        if not self.create:
            with self.env.begin() as txn:
                missing = [name for name in DATABASES if txn.get(name.encode()) is None]
            if missing:
                self.env.close()
                raise IndexCorruptError(f"{self.path}: metadata index is damaged or empty (no {missing[0]!r} database)")
        for name in DATABASES:
            setattr(self, name, self.env.open_db(name.encode(), create=self.create))
        for name in ADDED_DATABASES:  # None in a read-only open of a store that has none yet
            with self.env.begin() as txn:
                exists = txn.get(name.encode()) is not None
            setattr(self, name, self.env.open_db(name.encode(), create=not self.readonly)
                    if exists or not self.readonly else None)

    # -- transactions -------------------------------------------------------

    def read(self) -> "_Reading":
        """``with index.read() as txn``: a read transaction a map resize waits for."""
        return _Reading(self)

    def _enter_read(self) -> None:
        with self._gate_lock:
            while self._resizing:
                self._gate.wait()
            self._readers += 1

    def _leave_read(self) -> None:
        with self._gate_lock:
            self._readers -= 1
            if self._resizing:
                self._gate.notify_all()

    def _begin_read(self) -> lmdb.Transaction:
        try:
            return self.env.begin(buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)  # another process grew the map; adopt its size
            return self.env.begin(buffers=False)

    def write(self, fn: Callable[[lmdb.Transaction], T], frees: bool = False) -> T:
        """Run ``fn(txn)`` in one write transaction and commit it.

        On a full disk, once the store's reserve has been given up, only
        transactions that free space (``frees=True``: deletes, unlinks) are
        tried; the rest fail with ENOSPC at once, so the reserve stays for them.
        """
        if self.readonly:
            raise ReadOnlyError(f"{self.path}: store is open read-only")
        if self.low_space and not frees:
            raise StoreFullError(f"{self.path}: no space left on device (free space, or delete files)")
        with self._write_lock:
            while True:
                try:
                    with self.env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    self._grow()
                except lmdb.Error as exc:
                    # LMDB reports a failed page write (ENOSPC included) as a plain
                    # error from commit; the transaction is aborted, the file intact.
                    if not self._disk_full():
                        raise IndexCorruptError(f"{self.path}: metadata write failed ({exc})") from None
                    if not (frees and self.on_disk_full and self.on_disk_full()):
                        raise StoreFullError(f"{self.path}: no space left on device for metadata") from None
                    self.low_space = True

    def _disk_full(self) -> bool:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize < 1024 * 1024

    @property
    def write_lock(self) -> threading.RLock:
        """Held across a write transaction; callers may take it to group work with one."""
        return self._write_lock

    def _grow(self) -> None:
        size = self.env.info()["map_size"]
        log.info("metadata index %s is full at %d MiB; doubling it", self.path, size >> 20)
        if size >= MAX_MAP_SIZE:
            raise StoreFullError(f"{self.path}: metadata index reached its maximum size")
        with self._gate:
            self._resizing = True
            try:
                while self._readers:
                    self._gate.wait()
                self.env.set_mapsize(size * 2)
            finally:
                self._resizing = False
                self._gate.notify_all()

    def last_txn(self) -> int:
        """LMDB's id of the last committed write transaction (read-only: nothing to sync, ever)."""
        return -1 if self.readonly else self.env.info()["last_txnid"]

    def sync(self) -> None:
        if not self.readonly:
            self.env.sync(True)

    def close(self) -> None:
        self.env.close()

    def file_bytes(self) -> int:
        """On-disk size of the environment (allocated blocks, not the sparse map size)."""
        total = 0
        for name in ("data.mdb", "lock.mdb"):
            try:
                total += os.stat(os.path.join(self.path, name)).st_blocks * 512
            except FileNotFoundError:
                pass
        return total


class FsTables:
    """The filesystem's own databases and the shared counters, for the layer above the store.

    The store never looks inside these records; the filesystem (chunkfs.fs)
    owns their layouts.  Counters live in one database with the store's own
    (``files``, ``logical_bytes``...), so the filesystem gets functions, not
    the database, and keeps to its own names.
    """

    def __init__(self, index: Index):
        self.inodes = index.inodes
        self.dirents = index.dirents
        self.dirorder = index.dirorder
        self.xattrs = index.xattrs
        self.symlinks = index.symlinks
        self.orphans = index.orphans
        self.staged = index.staged  # None in a read-only open of a store made before it existed
        self._counters = index.counters
        self.read = index.read  # ``with tables.read() as txn``: a read transaction

    def counter(self, txn: lmdb.Transaction, name: str) -> int:
        return get_counter(txn, self._counters, name)

    def set_counter(self, txn: lmdb.Transaction, name: str, value: int) -> None:
        txn.put(name.encode(), U64.pack(value), db=self._counters)

    def add_counter(self, txn: lmdb.Transaction, name: str, delta: int) -> int:
        return add_counter(txn, self._counters, name, delta)

    def next_id(self, txn: lmdb.Transaction, name: str, first: int = 1) -> int:
        return next_id(txn, self._counters, name, first)


class _Reading:
    """The context manager behind :meth:`Index.read`.

    A class, not a generator: the filesystem opens a read transaction or two
    for nearly every FUSE request, and a generator-based context manager
    costs about as much again as the transaction itself.
    """

    __slots__ = ("index", "txn")

    def __init__(self, index: Index):
        self.index = index
        self.txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        index = self.index
        index._enter_read()
        try:
            self.txn = index._begin_read()
        except BaseException:
            index._leave_read()
            raise
        return self.txn

    def __exit__(self, *exc) -> None:
        try:
            self.txn.abort()  # a read-only transaction has nothing to commit
        finally:
            self.index._leave_read()


_PROBE = """
import os, sys, lmdb
env = lmdb.open(os.fsencode(sys.argv[1]), readonly=True, subdir=True, max_dbs=64, lock=True)
with env.begin(buffers=True) as txn:
    for name in [bytes(k) for k in txn.cursor().iternext(values=False)]:
        for _ in txn.cursor(db=env.open_db(name, txn=txn, create=False)):
            pass
"""


def _readable_in_child(path: str) -> bool:
    """Whether every record of the environment at ``path`` can be read (in a process that may die)."""
    import subprocess  # noqa: PLC0415 (only for a damaged-looking index)
    import sys  # noqa: PLC0415

    try:
        result = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def db_bytes(txn: lmdb.Transaction, db) -> int:
    """Bytes of the pages a database occupies (branch, leaf and overflow pages, times the page size)."""
    st = txn.stat(db)
    return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]


# -- counters ----------------------------------------------------------------

def get_counter(txn: lmdb.Transaction, db, name: str) -> int:
    raw = txn.get(name.encode(), db=db)
    return U64.unpack(raw)[0] if raw else 0


def add_counter(txn: lmdb.Transaction, db, name: str, delta: int) -> int:
    value = get_counter(txn, db, name) + delta
    if value < 0:
        raise IndexCorruptError(f"counter {name} would go negative ({value})")
    txn.put(name.encode(), U64.pack(value), db=db)
    return value


def next_id(txn: lmdb.Transaction, db, name: str, first: int = 1) -> int:
    """Allocate the next value of a monotonically increasing id."""
    value = max(get_counter(txn, db, name), first)
    txn.put(name.encode(), U64.pack(value + 1), db=db)
    return value
