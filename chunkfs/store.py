"""ChunkStore: the embeddable, content-addressed, deduplicating chunk store.

A store is one directory::

    chunkfs.json   settings, written once at mkfs (see settings.py)
    meta/          the LMDB environment (see index.py for every database)
    packs/         chunk bytes in append-only pack files (see packs.py)
    staging/       per-inode staging files of a mounted filesystem
    lock           held with an exclusive flock by the one writer

Writing a file is: cut it into chunks (chunker.py), put each chunk (hash,
dedup against the index and the chunks in flight, append new bytes to a
pack), then commit the file's manifest and every refcount change in one LMDB
transaction.  Bytes are always written before the transaction that refers to
them commits (invariant 1); a commit is visible and survives ``kill -9`` of
the process at once, and survives power loss after :meth:`ChunkStore.sync`.
"""

from __future__ import annotations

import errno
import fcntl
import io
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Callable

import lmdb

from . import index as ix
from .cache import ChunkCache
from .chunker import make_chunker
from .errors import (ChunkCorruptError, ChunkFreedError, FileNotFoundInStore, InvalidArgument,
                     NotAStoreError, StoreError, StoreExistsError, StoreLockedError)
from .hashing import VERIFY_MODES, address_of, addresses_of, checksum_of
from . import reserve
from .filestream import StoreFileReader, blocks_of
from .ledger import LOST_PACK, Action, ChunkRecord, Ledger, new_pack_record
from .manifests import TO_END, ChunkRef, ManifestEntry, ManifestIndex, Patch
from .packs import Location, PackFiles
from .spans import read_span
from .versions import FileVersion, open_version
from .settings import SETTINGS_NAME, StoreSettings, read_settings, write_settings

log = logging.getLogger(__name__)

FileId = str | bytes
DEFAULT_CACHE_SIZE = 64 * 1024 * 1024
MAX_FILE_ID = 500  # LMDB keys are at most 511 bytes
READ_ATTEMPTS = 3  # lock-free tries of a read whose file keeps changing under it, before one under the lock


@dataclass(frozen=True)
class IngestResult:
    file_id: FileId
    size: int
    chunks: int
    new_chunks: int
    new_bytes: int


def encode_file_id(file_id: FileId) -> bytes:
    if isinstance(file_id, str):
        key = b"s" + file_id.encode("utf-8")
    elif isinstance(file_id, (bytes, bytearray)):
        key = b"b" + bytes(file_id)
    else:
        raise InvalidArgument(f"file id must be str or bytes, not {type(file_id).__name__}")
    if len(key) > MAX_FILE_ID or len(key) == 1:
        raise InvalidArgument(f"file id must be 1 to {MAX_FILE_ID - 1} bytes long")
    return key


def _key_prefix(prefix: FileId) -> bytes:
    """What the keys of the file ids starting with ``prefix`` start with."""
    if isinstance(prefix, str):
        return b"s" + prefix.encode("utf-8")
    if isinstance(prefix, (bytes, bytearray)):
        return b"b" + bytes(prefix)
    raise InvalidArgument(f"a file id prefix must be str or bytes, not {type(prefix).__name__}")


def decode_file_id(key: bytes) -> FileId:
    return key[1:].decode("utf-8") if key[:1] == b"s" else key[1:]


class ChunkStore:
    """See the module docstring.  Use :meth:`create` or :meth:`open`, ideally as a context manager."""

    # -- opening ------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, chunker: str = "fastcdc", min_size=None, avg_size=None,
               max_size=None, **open_kwargs) -> "ChunkStore":
        """Make a new store at ``path`` (absent or an empty directory) and open it."""
        path = os.fspath(path)
        settings = StoreSettings.build(chunker, min_size, avg_size, max_size)
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise StoreExistsError(f"{path}: exists and is not a directory")
            if os.listdir(path):
                what = "a chunkfs store" if os.path.exists(os.path.join(path, SETTINGS_NAME)) else "not empty"
                raise StoreExistsError(f"{path}: already exists and is {what}")
        else:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise NotAStoreError(f"{path}: parent directory {parent} does not exist")
            os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # the store holds every user's data
        for sub in ("meta", "packs", "staging"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        store = cls(path, settings, readonly=False, _create=True, **open_kwargs)
        write_settings(path, settings)  # last: a half-made store has no settings file
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False, verify: str = "xxh3",
             cache_size: int = DEFAULT_CACHE_SIZE) -> "ChunkStore":
        path = os.fspath(path)
        settings = read_settings(path)
        return cls(path, settings, readonly=readonly, verify=verify, cache_size=cache_size)

    def __init__(self, path: str, settings: StoreSettings, readonly: bool = False,
                 verify: str = "xxh3", cache_size: int = DEFAULT_CACHE_SIZE, _create: bool = False):
        if verify not in VERIFY_MODES:
            raise InvalidArgument(f"verify must be one of {', '.join(VERIFY_MODES)}")
        self.path = path
        self.settings = settings
        self.readonly = readonly
        self.verify = verify
        self.staging_dir = os.path.join(path, "staging")
        self._lock = threading.RLock()  # pins, appends and commits
        self._lock_fd = None if readonly else self._take_lock()
        try:
            self.index = ix.Index(os.path.join(path, "meta"), readonly=readonly, create=_create)
            self.index.on_disk_full = self._release_reserve
            self.packs = PackFiles(os.path.join(path, "packs"), readonly=readonly)
            self.ledger = Ledger(self.index, on_dead=None if readonly else self.packs.punch)
            self.manifest_index = ManifestIndex(self.index, self.ledger)
            self.cache = ChunkCache(cache_size)
            if not readonly:
                from .maintenance import recover  # noqa: PLC0415 (maintenance imports this module)
                self.recovery = recover(self)
                self.ensure_reserve()
        except BaseException:
            self._release_lock()
            raise
        self._closed = False

    def _take_lock(self) -> int:
        lock_path = os.path.join(self.path, "lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLockedError(f"{self.path}: store is in use by another process (pid {holder})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> "ChunkStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            if not self.readonly:
                self.sync()
        finally:
            self.packs.close()
            self.index.close()
            self._release_lock()

    # -- a little space for a full disk ------------------------------------------

    def ensure_reserve(self) -> None:
        """Take the space reserve back if there is room (see reserve.py); leaves low-space mode."""
        if self.readonly:
            return
        if reserve.take(self.path):
            if self.index.low_space:
                log.warning("%s: space is free again; writes are accepted", self.path)
            self.index.low_space = False

    def _release_reserve(self) -> bool:
        if not reserve.release(self.path):
            return False
        log.warning("%s: disk full; released the space reserve so metadata can still change", self.path)
        return True

    def sync(self) -> None:
        """Make everything committed so far survive power loss: packs first, then the index."""
        self.packs.sync()
        self.index.sync()

    # -- transactions ---------------------------------------------------------

    def write_txn(self, fn: Callable[[lmdb.Transaction], tuple[object, list[Action]]], frees: bool = False,
                  committing: frozenset = frozenset()) -> object:
        """Run ``fn(txn) -> (result, actions)`` in one write transaction, then apply the actions.

        Every write transaction first registers chunks in flight (except those
        ``committing``, which ``fn`` references) and advances the active pack's
        indexed end, so what lies beyond that end in a pack is known to be
        unreferenced.
        """
        with self._lock:
            def run(txn):
                self.ledger.begin_tally()
                try:
                    actions = self.ledger.register_unwritten(txn, self.packs.active, self.packs.active_end,
                                                             committing)
                    result, more = fn(txn)
                    self.ledger.flush_tally(txn)
                finally:
                    self.ledger.drop_tally()  # after a failure: nothing of it may leak into the next one
                return result, actions + more
            result, actions = self.index.write(run, frees=frees)
            for action in actions:
                action()
            if frees and self.index.low_space:
                self.ensure_reserve()  # dead records were punched out: maybe there is room again
            return result

    def _ensure_active_pack(self, frees: bool = False) -> None:
        if not self.packs.needs_roll():
            return

        def allocate(txn):
            pack = ix.next_id(txn, self.index.counters, "next_pack", first=1)
            new_pack_record(txn, self.index.packs, pack)
            self.packs.create(pack)  # its header on disk before the record commits
            return pack, []

        self.packs.start(self.write_txn(allocate, frees=frees))

    # -- writing chunks -------------------------------------------------------

    def put_chunk(self, data: bytes | memoryview, pins: int = 1) -> ChunkRef:
        """Store one chunk (unless already stored) and pin it until committed or released.

        ``pins`` > 1 pins it that many times, for a writer that will reference
        the same chunk repeatedly (the zero chunks of a hole).
        """
        ref = self._put_many([data])[0][0]
        with self._lock:
            for _ in range(pins - 1):
                self.ledger.add_pin(ref.address)
        return ref

    def put_chunks(self, chunks: Sequence[bytes | memoryview]) -> list[ChunkRef]:
        """put_chunk for consecutive chunks of one writer, all or none.

        Cheaper than one call each: a big batch is hashed on two cores, looked
        up in one read transaction, and its new chunks go to the pack in one
        write.  On failure (a full disk) nothing is stored or pinned.
        """
        return self._put_many(chunks)[0]

    def _put_many(self, chunks: Sequence[bytes | memoryview]) -> tuple[list[ChunkRef], list[bool]]:
        """put_chunks, also saying which chunks' bytes were new to the store."""
        addresses = addresses_of(chunks)
        with self._lock:
            found, new = self._lookup_unpinned(addresses)
            locations = {}
            if new:
                self._ensure_active_pack()
                stored = self.packs.append_many([(a, chunks[i]) for a, i in new.items()])
                locations = dict(zip(new, stored))
            written = []
            for address, data in zip(addresses, chunks):
                is_new = address in locations and address not in self.ledger.pins
                if is_new:
                    self.ledger.pin_new(address, locations[address], checksum_of(data))
                elif not self.ledger.add_pin(address):
                    self.ledger.pin_existing(address, found[address])
                written.append(is_new)
        return [ChunkRef(a, len(c)) for a, c in zip(addresses, chunks)], written

    def _lookup_unpinned(self, addresses: list[bytes]) -> tuple[dict, dict]:
        """For chunks no writer pins: their stored records, and the ones new to the store (first index)."""
        found: dict[bytes, ChunkRecord] = {}
        new: dict[bytes, int] = {}
        todo: dict[bytes, int] = {}
        for i, address in enumerate(addresses):
            if address not in self.ledger.pins and address not in todo:
                todo[address] = i
        if todo:
            with self.index.read() as txn:
                for address, i in todo.items():
                    rec = self.ledger.record(txn, address)
                    if rec is not None:
                        found[address] = rec
                    else:
                        new[address] = i
        return found, new

    def release(self, refs: Iterable[ChunkRef]) -> None:
        """Drop the pins of chunks a writer will not commit after all."""
        addresses = [r.address for r in refs]
        if addresses:
            self.write_txn(lambda txn: (None, self.ledger.unpin(txn, addresses)), frees=True)

    def commit_file(self, file_id: FileId, patches: list[Patch], size: int,
                    hook: Callable[[lmdb.Transaction], None] | None = None) -> None:
        """Apply manifest patches, set the file size, and drop the pins of the patches' chunks.

        All of it (and ``hook``, for the filesystem's own records) happens in one
        transaction.  The patched manifest must tile ``[0, size)`` exactly.
        """
        key = encode_file_id(file_id)
        pinned = [ref.address for p in patches for ref in p.chunks]

        def apply(txn):
            actions = self.manifest_index.patch(txn, key, patches, size)
            actions += self.ledger.unpin(txn, pinned)
            if hook is not None:
                hook(txn)
            return None, actions

        self.write_txn(apply, committing=frozenset(pinned))

    # -- the file API -----------------------------------------------------------

    def ingest(self, file_id: FileId, data: bytes | bytearray | memoryview | BinaryIO) -> IngestResult:
        """Store a whole file, replacing (and releasing) any previous version.

        ``data`` may be bytes or a binary file object, which is read in blocks:
        the file is never held whole in memory.
        """
        encode_file_id(file_id)
        chunker = make_chunker(self.settings)
        refs: list[ChunkRef] = []
        new_chunks = new_bytes = 0
        try:
            for block in itertools.chain(blocks_of(data), [None]):  # None: the end, finish()
                put, written = self._put_many(chunker.feed(block) if block is not None else chunker.finish())
                refs += put
                new_chunks += sum(written)
                new_bytes += sum(r.length for r, w in zip(put, written) if w)
            size = sum(r.length for r in refs)
            self.commit_file(file_id, [Patch(0, TO_END, refs)], size)
        except BaseException:
            self.release(refs)
            raise
        return IngestResult(file_id, size, len(refs), new_chunks, new_bytes)

    def _file_record(self, file_id: FileId) -> tuple[int, int, int] | None:
        with self.index.read() as txn:
            raw = txn.get(encode_file_id(file_id), db=self.index.files)
        return ix.FILE.unpack(raw) if raw else None

    def delete(self, file_id: FileId, hook: Callable[[lmdb.Transaction], None] | None = None,
               missing_ok: bool = False) -> bool:
        """Remove a file; chunks nobody else references become garbage at once.

        ``hook(txn)`` runs in the same transaction (the filesystem removes the
        inode with it).  Returns whether the file existed.
        """
        key = encode_file_id(file_id)

        def remove(txn):
            raw = txn.get(key, db=self.index.files)
            if raw is None:
                if not missing_ok:
                    raise FileNotFoundInStore(f"no file {file_id!r} in the store")
                if hook is not None:
                    hook(txn)
                return False, []
            fkey, size, _ = ix.FILE.unpack(raw)
            actions: list[Action] = []
            for entry in self.manifest_index.entries(txn, fkey, 0, None):
                txn.delete(ix.KEY64x2.pack(fkey, entry.offset), db=self.index.manifests)
                actions += self.ledger.decref(txn, entry.address)
            txn.delete(key, db=self.index.files)
            ix.add_counter(txn, self.index.counters, "files", -1)
            ix.add_counter(txn, self.index.counters, "logical_bytes", -size)
            if hook is not None:
                hook(txn)
            return True, actions

        return self.write_txn(remove, frees=True)

    def exists(self, file_id: FileId) -> bool:
        return self._file_record(file_id) is not None

    def size(self, file_id: FileId) -> int:
        rec = self._file_record(file_id)
        if rec is None:
            raise FileNotFoundInStore(f"no file {file_id!r} in the store")
        return rec[1]

    def list_files(self, prefix: FileId | None = None, after: FileId | None = None,
                   limit: int | None = None) -> list[FileId]:
        """File ids in key order (bytes ids, then str ids, each in byte order), one cursor walk.

        ``prefix`` keeps the ids of its type that start with it; ``after`` starts
        past that id and ``limit`` stops after so many: a paged listing.
        """
        want = b"" if prefix is None else _key_prefix(prefix)
        start = want if after is None else max(want, encode_file_id(after))
        skip = None if after is None else encode_file_id(after)
        out: list[FileId] = []
        with self.index.read() as txn, txn.cursor(db=self.index.files) as cur:
            if not cur.set_range(start):
                return out
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(want) or (limit is not None and len(out) >= limit):
                    break
                if key != skip:
                    out.append(decode_file_id(key))
        return out

    def manifest(self, file_id: FileId, start: int = 0, end: int | None = None) -> list[ManifestEntry]:
        """Entries covering ``[start, end)`` of the file, the one containing ``start`` first."""
        with self.index.read() as txn:
            return self._manifest_in(txn, file_id, start, end)

    def _manifest_in(self, txn, file_id: FileId, start: int, end: int | None) -> list[ManifestEntry]:
        raw = txn.get(encode_file_id(file_id), db=self.index.files)
        if raw is None:
            raise FileNotFoundInStore(f"no file {file_id!r} in the store")
        fkey, size, _ = ix.FILE.unpack(raw)
        return self.manifest_index.covering(txn, fkey, start, size if end is None else min(end, size))

    def read(self, file_id: FileId) -> bytes:
        return self.read_range(file_id, 0, self.size(file_id))

    def read_range(self, file_id: FileId, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` (short at end of file), fetching only the chunks needed."""
        start, chunks = self.read_chunks(file_id, offset, length)
        end, out = offset + length, []
        for data in chunks:
            out.append(memoryview(data)[max(offset - start, 0) : min(end - start, len(data))])
            start += len(data)
        return bytes(out[0]) if len(out) == 1 else b"".join(out)

    def read_view(self, file_id: FileId, offset: int, length: int, nowait: bool = False) -> memoryview:
        """``read_range`` for long reads: the bytes in one new buffer, no chunk objects, no cache (spans.py).

        With ``nowait``, WouldBlock rather than wait for the disk: for the
        event loop, which hands the read to a thread then.
        """
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        return self._consistent(read_span, self, file_id, offset, length, nowait)

    def read_chunks(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes]]:
        """The verified chunks that hold ``[offset, offset+length)``, in order, and where the first begins.

        One read transaction finds the chunks and where they lie (a fresh one
        costs microseconds, a good part of a 4 KiB random read's CPU).  The
        whole chunks are what the FUSE adapter pushes into the kernel's page
        cache after a short read (readaround.py).
        """
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        return self._consistent(self._read_chunks_once, file_id, offset, length)

    def _read_chunks_once(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes]]:
        with self.index.read() as txn:
            entries = self._manifest_in(txn, file_id, offset, offset + length)
            chunks = [self.cache.get(e.address) for e in entries]
            places = [None if c is not None else self.ledger.locate(txn, e.address) for e, c in zip(entries, chunks)]
        fetched: dict[bytes, bytes] = {}
        for i, (entry, found) in enumerate(zip(entries, places)):
            if chunks[i] is None:  # fetched once even where the range repeats a chunk (zeros, say)
                chunks[i] = fetched.get(entry.address) or self._fetch(entry.address, found, file_id)
                fetched[entry.address] = chunks[i]
        return (entries[0].offset if entries else offset), chunks

    def _consistent(self, read: Callable, *args):
        """``read(*args)``, again if another thread freed a chunk under it (ChunkFreedError).

        Reads take no lock: one looks at the manifest in a read transaction, then
        reads the chunks it names.  If the file is replaced or deleted in
        between, a chunk may be freed (and its disk blocks punched out) before
        its bytes are read; the read then starts over on the file as it is now.
        After a few tries it runs under the store's lock, where no commit can
        free anything, so a file that never stops changing cannot starve it.
        Each try is one manifest snapshot: the bytes are all of one version.
        """
        for _ in range(READ_ATTEMPTS):
            try:
                return read(*args)
            except ChunkFreedError:
                continue
        with self._lock:
            return read(*args)

    def open_version(self, file_id: FileId, start: int = 0, end: int | None = None) -> FileVersion:
        """The file as it is now, readable until closed even if it is replaced or deleted meanwhile.

        For a reader that streams a file over many calls (versions.py); only the
        chunks covering ``[start, end)`` (the whole file by default) are held.
        A context manager.
        """
        return open_version(self, encode_file_id(file_id), file_id, start, end)

    def open_reader(self, file_id: FileId) -> io.BufferedReader:
        """A seekable, read-only binary file object over one stored file."""
        return io.BufferedReader(StoreFileReader(self, file_id), buffer_size=self.settings.avg_size)

    # -- reading chunks ---------------------------------------------------------

    def get_chunk(self, address: bytes, file_id: FileId | None = None) -> bytes:
        """A chunk's bytes, verified; raises ChunkCorruptError rather than return wrong bytes."""
        data = self.cache.get(address)
        if data is not None:
            return data
        with self.index.read() as txn:
            found = self.ledger.locate(txn, address)
        return self._fetch(address, found, file_id)

    def _fetch(self, address: bytes, found: tuple[Location, bytes] | None, file_id) -> bytes:
        """Read and verify the chunk ``found`` (location, checksum) says is at ``address``, and cache it."""
        if found is None:
            raise ChunkCorruptError(address, "no such chunk in the index", file_id)
        try:
            data = self._read_verified(address, found[0], found[1], file_id, quiet=True)
        except ChunkCorruptError:
            # gc may have moved the chunk (or the caller's file changed) since it
            # was located: look again, and only a failure at a stable place counts
            with self.index.read() as txn:
                again = self.ledger.locate(txn, address)
            if again is None:  # it was there when the caller looked: freed since, not damaged
                raise ChunkFreedError(address, "freed while being read", file_id) from None
            data = self._read_verified(address, again[0], again[1], file_id)
        self.cache.put(address, data)
        return data

    def _read_verified(self, address: bytes, loc: Location, checksum: bytes, file_id,
                       quiet: bool = False) -> bytes:
        def corrupt(reason: str) -> ChunkCorruptError:
            return ChunkCorruptError(address, reason, file_id) if quiet else self._corrupt(address, reason, file_id)

        if loc.pack == LOST_PACK:
            raise corrupt("its data was lost ('chunkfs fsck --repair' found it gone)")
        try:
            data = self.packs.read(loc)
        except FileNotFoundError:
            raise corrupt(f"pack {loc.pack:08x} is missing") from None
        except OSError as exc:
            raise corrupt(f"read error in pack {loc.pack:08x}: {exc.strerror}") from None
        if len(data) != loc.length:
            raise corrupt(f"pack {loc.pack:08x} is truncated")
        if self.verify == "xxh3" and checksum_of(data) != checksum:
            raise corrupt("xxh3 checksum mismatch")
        if self.verify == "sha256" and address_of(data) != address:
            raise corrupt("SHA-256 mismatch")
        return data

    def _corrupt(self, address: bytes, reason: str, file_id) -> ChunkCorruptError:
        exc = ChunkCorruptError(address, reason, file_id)
        log.error("%s", exc)
        return exc

    # -- statistics and maintenance ---------------------------------------------

    def stats(self) -> dict:
        """Counters kept exact in every commit, plus what the store occupies on disk."""
        with self.index.read() as txn:
            c = self.index.counters
            names = ("files", "logical_bytes", "stored_bytes", "unique_chunks")
            out = {name: ix.get_counter(txn, c, name) for name in names}
            dead = live = 0
            with txn.cursor(db=self.index.packs) as cur:
                for _, v in cur:
                    _, pack_live, pack_dead = ix.PACK.unpack(v)
                    live, dead = live + pack_live, dead + pack_dead
            out["chunk_refs"] = txn.stat(self.index.manifests)["entries"]
        logical = out["logical_bytes"]
        out["savings_pct"] = round(100.0 * (1 - out["stored_bytes"] / logical), 2) if logical else 0.0
        out["garbage_bytes"] = dead
        out["disk_bytes"] = self.disk_bytes()
        out["disk_savings_pct"] = round(100.0 * (1 - out["disk_bytes"] / logical), 2) if logical else 0.0
        out["chunker"] = self.settings.chunker
        out["avg_chunk_size"] = self.settings.avg_size
        return out

    def disk_bytes(self) -> int:
        """Bytes the whole store directory occupies (allocated blocks, as ``du`` counts)."""
        total = 0
        for root, dirs, files in os.walk(self.path):
            for name in files + dirs:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def gc(self, min_dead_fraction: float = 0.0, progress=None) -> dict:
        """Reclaim the space of unreferenced chunks by compacting packs; returns what it removed."""
        from .maintenance import collect_garbage  # noqa: PLC0415

        report = collect_garbage(self, min_dead_fraction, progress)
        self.ensure_reserve()
        return report
