"""Chunk bytes in append-only pack files.

Why packs and not a file per chunk: the default average chunk is small
(tens of KiB) and small files are one chunk each, so a file per chunk would
cost a 4 KiB-rounded inode and a directory entry per chunk: measured on 10,000
files of 1-8 KiB that is about 1.4x their size on disk before any metadata.
Appending to a pack costs one ``pwritev`` per batch of chunks and packs the bytes tightly.

A pack is ``packs/<id:08x>.pack``: a 16-byte header, then records of a
38-byte record header (magic, length, address) and the chunk bytes.  Records
are self-describing, so ``fsck`` can rebuild what a pack holds from the pack
alone.  The index (not this module) decides which records are live; space of
dead records comes back when garbage collection copies a pack's live records
forward and removes the pack.

Only this module opens pack files, and only the store calls it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import StoreFullError, WouldBlock

PACK_MAGIC = b"CHUNKFS-PACK\x00\x00\x01\n"
assert len(PACK_MAGIC) == 16
RECORD = struct.Struct("<2sI32s")  # magic, length, address
RECORD_MAGIC = b"CK"
HEADER_SIZE = len(PACK_MAGIC)
PACK_TARGET_SIZE = 64 * 1024 * 1024
REMOVED_PACK_GRACE = 10.0  # seconds a removed pack stays readable through its open descriptor
PUNCH_ALIGN = 4096
IOV_BATCH = 512  # buffers per pwritev call, well below IOV_MAX (1024)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02  # linux/falloc.h


def _load_libc(name: str, argtypes: tuple):
    """A libc function the os module does not wrap, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn  # a failure returns -1 and only costs the optimisation


# fallocate(2) to punch out dead records (a failure such as EOPNOTSUPP: the bytes wait for gc)
_fallocate = _load_libc("fallocate", (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64))
# sync_file_range(2) to start writing appended bytes back early, so that a later fdatasync has little left
_sync_file_range = _load_libc("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint))
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
WRITEBACK_STEP = 8 * 1024 * 1024  # start writeback of every this many appended bytes


@dataclass(frozen=True, slots=True)
class Location:
    pack: int
    offset: int  # of the chunk bytes, just after the record header
    length: int

    @property
    def record_offset(self) -> int:
        return self.offset - RECORD.size

    @property
    def record_size(self) -> int:
        return RECORD.size + self.length


def record_size(length: int) -> int:
    return RECORD.size + length


class PackFiles:
    """Append, read, sync, truncate and remove pack files.

    Appends go to one active pack at a time, under a lock; reads use
    ``os.pread`` on cached descriptors and may run from any thread.
    """

    def __init__(self, directory: str, readonly: bool = False):
        self.dir = directory
        self.readonly = readonly
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        self._active: int | None = None
        self._end = 0
        self._written_back = 0  # active pack offset up to which writeback was started
        self._unsynced: set[int] = set()
        self._removed: list[tuple[float, int, int]] = []  # (when, pack, fd) of removed packs, see remove()
        if not readonly:
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, pack: int) -> str:
        return os.path.join(self.dir, f"{pack:08x}.pack")

    def existing(self) -> list[int]:
        """Pack ids present on disk (one listdir; packs are few)."""
        ids = []
        for name in os.listdir(self.dir):
            if name.endswith(".pack") and len(name) == 13:
                try:
                    ids.append(int(name[:8], 16))
                except ValueError:
                    continue
        return sorted(ids)

    # -- writing ------------------------------------------------------------

    @property
    def active(self) -> int | None:
        return self._active

    @property
    def active_end(self) -> int:
        return self._end

    def needs_roll(self) -> bool:
        return self._active is None or self._end >= PACK_TARGET_SIZE

    def create(self, pack: int) -> int:
        """Give ``pack`` a file holding at least its header; return the file's size.

        The store calls this inside the transaction that registers a new pack,
        before it commits (blob before index): a crash in between leaves a
        pack no record names, which recovery removes, never a record naming a
        pack that has no header.  Calling it again is harmless.
        """
        with self._lock:
            fd = self._fds.get(pack)
            if fd is None:
                fd = self._fds[pack] = os.open(self.path(pack), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            size = os.fstat(fd).st_size
            if size == 0:
                self._write_all(fd, PACK_MAGIC, 0)
                size = HEADER_SIZE
            self._unsynced.add(pack)
            return size

    def start(self, pack: int) -> None:
        """Make ``pack`` the active pack, creating it if it does not exist."""
        size = self.create(pack)
        with self._lock:
            self._active, self._end = pack, size
            self._written_back = size

    def retire_active(self) -> None:
        """Stop appending to the active pack; the next append needs :meth:`start`."""
        with self._lock:
            self._active = None

    def append(self, address: bytes, data: bytes | memoryview) -> Location:
        return self.append_many([(address, data)])[0]

    def append_many(self, records: Sequence[tuple[bytes, bytes | memoryview]]) -> list[Location]:
        """Append ``(address, data)`` records with as few writes as possible and no copying.

        All or nothing for the caller: after a failure the pack's end does
        not move, so whatever part did reach the file lies beyond it and is
        overwritten by the next append (and beyond the indexed end anyway).
        """
        with self._lock:
            if self._active is None:
                raise RuntimeError("no active pack")
            offset = self._end
            buffers: list[bytes | memoryview] = []
            locations = []
            for address, data in records:
                buffers += (RECORD.pack(RECORD_MAGIC, len(data), address), data)
                locations.append(Location(self._active, offset + RECORD.size, len(data)))
                offset += RECORD.size + len(data)
            self._writev_all(self._fds[self._active], buffers, self._end)
            self._end = offset
            self._unsynced.add(self._active)
            self._start_writeback()
            return locations

    def _start_writeback(self) -> None:
        """Let the disk take appended bytes while the writer goes on (the fsync then waits less).

        Only starts the IO (it does not wait, and does not make anything
        durable: ``sync`` still does that).
        """
        if _sync_file_range is None or self._end - self._written_back < WRITEBACK_STEP:
            return
        start = min(self._written_back, self._end)
        _sync_file_range(self._fds[self._active], start, self._end - start, SYNC_FILE_RANGE_WRITE)
        self._written_back = self._end

    @staticmethod
    def _writev_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
        views = [memoryview(b).cast("B") for b in buffers]
        try:
            while views:
                written = os.pwritev(fd, views[:IOV_BATCH], offset)
                offset += written
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StoreFullError(f"no space left for chunk data ({exc.strerror})") from None
            raise

    @staticmethod
    def _write_all(fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StoreFullError(f"no space left for chunk data ({exc.strerror})") from None
            raise

    def sync(self) -> None:
        """Make every append so far durable (called before an index sync)."""
        with self._lock:
            pending, self._unsynced = self._unsynced, set()
            fds = [self._fds[p] for p in pending if p in self._fds]
        for fd in fds:
            os.fdatasync(fd)
        if pending:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self.reap()

    # -- reading ------------------------------------------------------------

    def _fd(self, pack: int) -> int:
        fd = self._fds.get(pack)
        if fd is None:
            flags = os.O_RDONLY if self.readonly else os.O_RDWR
            fd = os.open(self.path(pack), flags | os.O_CLOEXEC)
            with self._lock:
                if pack in self._fds:
                    os.close(fd)
                    fd = self._fds[pack]
                else:
                    self._fds[pack] = fd
        return fd

    def read(self, loc: Location) -> bytes:
        """The bytes at ``loc``; short if the pack is truncated, FileNotFoundError if gone."""
        return os.pread(self._fd(loc.pack), loc.length, loc.offset)

    def read_run(self, locs: Sequence[Location], into: Sequence[memoryview], nowait: bool = False) -> bool:
        """Read records that lie back to back in one pack, each chunk into its buffer, with one ``preadv``.

        The record headers between the chunks land in a scratch buffer.  At
        most IOV_BATCH records.  False if the pack ends early (truncated: the
        caller reads the chunks one by one to find out which); FileNotFoundError
        if it is gone.  With ``nowait``, only bytes the page cache already
        holds (RWF_NOWAIT): WouldBlock if any would have to come from the disk.
        """
        header = memoryview(bytearray(RECORD.size))
        iov: list[memoryview] = []
        for loc, view in zip(locs, into):
            if iov:
                iov.append(header)
            iov.append(view)
        want = sum(len(v) for v in iov)
        fd = self._fd(locs[0].pack)
        if not nowait:
            return os.preadv(fd, iov, locs[0].offset) == want
        try:
            got = os.preadv(fd, iov, locs[0].offset, os.RWF_NOWAIT)
        except BlockingIOError:
            got = -1
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # EINVAL, EOPNOTSUPP: no RWF_NOWAIT here
                raise
            got = -1
        if got != want:  # part of it is not in memory (or the pack is short: a waiting read tells)
            raise WouldBlock(f"pack {locs[0].pack:08x} at {locs[0].offset}: not all in the page cache")
        return True

    def read_record_header(self, loc: Location) -> tuple[bytes, int, bytes]:
        raw = self.read_record_header_bytes(loc)
        if len(raw) < RECORD.size:
            return b"", -1, b""
        return RECORD.unpack(raw)

    def read_record_header_bytes(self, loc: Location) -> bytes:
        return os.pread(self._fd(loc.pack), RECORD.size, loc.record_offset)

    def write_record_header(self, loc: Location, address: bytes) -> None:
        """Rewrite the header of the record at ``loc`` (fsck --repair, for a damaged one), durably."""
        fd = self._fd(loc.pack)
        self._write_all(fd, RECORD.pack(RECORD_MAGIC, loc.length, address), loc.record_offset)
        os.fdatasync(fd)

    def size(self, pack: int) -> int:
        return os.fstat(self._fd(pack)).st_size

    def usage(self, pack: int) -> tuple[int, int]:
        """(length, bytes the disk holds for it) of a pack: the second is less where dead records were punched.

        A stat of the path, not of a cached descriptor: gc asks this of every
        pack holding dead records and should not open them all.
        """
        st = os.stat(self.path(pack))
        return st.st_size, st.st_blocks * 512

    def scan(self, pack: int, start: int = HEADER_SIZE) -> Iterator[tuple[Location, bytes]]:
        """Yield (location, address) of every well-formed record from ``start``.

        Stops at the first malformed or truncated record header: what follows
        cannot be trusted to be aligned on record boundaries.
        """
        fd = self._fd(pack)
        size = os.fstat(fd).st_size
        offset = start
        while offset + RECORD.size <= size:
            magic, length, address = RECORD.unpack(os.pread(fd, RECORD.size, offset))
            if magic != RECORD_MAGIC or offset + RECORD.size + length > size:
                return
            yield Location(pack, offset + RECORD.size, length), address
            offset += RECORD.size + length

    # -- repair and removal -------------------------------------------------

    def truncate(self, pack: int, end: int) -> None:
        fd = self._fd(pack)
        os.ftruncate(fd, end)
        os.fdatasync(fd)
        if pack == self._active:
            self._end = end

    def punch(self, loc: Location) -> None:
        """Give the disk blocks of a dead record's bytes back to the filesystem, at once.

        Only whole blocks inside the chunk bytes are punched; the record
        header stays, so the pack can still be walked record by record.
        Filesystems without hole punching simply keep the bytes until gc.
        """
        start = -(-loc.offset // PUNCH_ALIGN) * PUNCH_ALIGN
        end = (loc.offset + loc.length) // PUNCH_ALIGN * PUNCH_ALIGN
        if end <= start:
            return
        if _fallocate is None:
            return
        _fallocate(self._fd(loc.pack), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start)

    def remove(self, pack: int) -> None:
        """Unlink a pack; its descriptor stays open for reads already on their way for a grace period.

        Background gc removes packs while the filesystem serves reads, which
        run without the store's lock: a read may have looked up a chunk's old
        location just before gc's commit moved it.  Keeping the descriptor
        (bytes of an unlinked file stay readable through it) lets that read
        finish with the right bytes; closing it at once would fail it, or
        worse, let the descriptor number be reused by another file.
        """
        with self._lock:
            fd = self._fds.get(pack)
            if fd is not None:
                self._removed.append((time.monotonic(), pack, fd))
            if pack == self._active:
                self._active = None
        try:
            os.unlink(self.path(pack))
        except FileNotFoundError:
            pass
        self.reap()

    def reap(self, grace: float = REMOVED_PACK_GRACE) -> None:
        """Close descriptors of packs removed more than ``grace`` seconds ago (frees their space)."""
        now = time.monotonic()
        with self._lock:
            old = [r for r in self._removed if now - r[0] >= grace]
            self._removed = [r for r in self._removed if now - r[0] < grace]
            for _, pack, fd in old:
                if self._fds.get(pack) == fd:
                    del self._fds[pack]
        for _, _, fd in old:
            os.close(fd)

    def disk_bytes(self) -> int:
        total = 0
        for pack in self.existing():
            try:
                total += os.stat(self.path(pack)).st_blocks * 512
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
            self._active = None
            self._removed = []
        for fd in fds:
            os.close(fd)
