"""ChunkStore: the embeddable, content-addressed, deduplicating chunk store.

A store is one directory::

    chunkfs.json   settings, written once at mkfs (see settings.py)
    meta/          the LMDB environment (see _index.py for every database)
    packs/         chunk bytes in append-only pack files (see _packs.py; another
                   PackBackend, such as MemoryBackend, may keep them elsewhere)
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

import functools
import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import lmdb

from . import _index as ix
from ._cache import ChunkCache
from ._deadspace import DeadSpace
from ..chunker import make_chunker
from ..errors import FileNotFoundInStore, InvalidArgument
from ..hashing import VERIFY_MODES
from . import _reserve as reserve
from ._fileids import FileId, decode_file_id, encode_file_id, key_prefix
from ._filestream import StoreFileReader, blocks_of
from ._handles import StoreHandles, weak_callback
from ._ledger import Action, Ledger, new_pack_record
from ._manifests import RETIRE_MIN, TO_END, ChunkRef, ManifestEntry, ManifestIndex, Patch, check_file_size
from ._packs import PackFiles
from ._check import FileNamer, check_records
from ..settings import parse_compression
from ._compression import Codec, Dictionaries
from ._recompress import WaitingTally, compress_waiting
from ._compaction import DEFAULT_MIN_DEAD_FRACTION, collect_garbage, reclaimable_bytes
from ._gcworker import BackgroundGC
from ._group_sync import GroupSync
from ._opening import BackendChoice, make_backend, make_directory, new_settings
from ._recovery import RecoveryReport, recover
from ._reading import ChunkReader
from ._versions import FileVersion, open_version
from ._stats import disk_bytes, store_stats
from ._writing import put_many
from ._repair import mark_lost_tail, repair_store
from ._report import CheckReport, Progress
from ..settings import StoreSettings, read_settings, write_settings

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 64 * 1024 * 1024
DROP_PAGE = 4096  # retired manifest entries dropped per transaction (about 0.1 s here)
COMPRESS_WHEN = ("inline", "behind")  # compress new chunks as they are written, or later (_recompress.py)
@dataclass(frozen=True)
class IngestResult:
    file_id: FileId
    size: int
    chunks: int
    new_chunks: int
    new_bytes: int


class ChunkStore:
    """See the module docstring.  Use :meth:`create` or :meth:`open`, ideally as a context manager."""

    # -- opening ------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, chunker: str = "fastcdc", min_size=None, avg_size=None,
               max_size=None, data: dict | None = None, compression: str | None = None,
               **open_kwargs) -> "ChunkStore":
        """Make a new store at ``path`` (absent or an empty directory) and open it.

        ``compression`` is how new chunks are stored: ``"zstd:LEVEL"`` (the
        default: ``settings.DEFAULT_COMPRESSION``) or ``"none"``.
        ``data`` is where pack data lives: None for files in ``path/packs``, or
        an object store as ``data_location(url, endpoint, region)`` makes it
        (the bucket is checked first: reachable, and holding no store yet).
        """
        path = os.fspath(path)
        settings = new_settings(StoreSettings.build(chunker, min_size, avg_size, max_size), compression, data,
                                open_kwargs.get("backend"))
        make_directory(path)
        store = cls(path, settings, readonly=False, _create=True, **open_kwargs)
        write_settings(path, settings)  # last: a half-made store has no settings file
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False, verify: str = "xxh3",
             cache_size: int = DEFAULT_CACHE_SIZE, backend: BackendChoice = None,
             data_options: dict | None = None, compression: str | None = None,
             compress: str = "inline") -> "ChunkStore":
        """Open the store at ``path``.

        ``compression`` (``"zstd:LEVEL"`` or ``"none"``) overrides the store's
        setting for chunks written from now on; chunks already stored read
        back whatever they were written with.  ``compress="behind"`` has
        writers store compressible chunks raw, to be compressed by
        :meth:`compress_waiting` (a mount's background worker runs it when
        the store is idle): writes cost only the probe.  A store whose packs
        are in an object store always compresses inline (rewriting a pack
        there would cost uploads and deletes).

        ``backend`` holds the packs: None for files in ``path/packs``, a
        :class:`PackBackend`, or a factory called as ``factory(packs_dir,
        readonly)``.  A store must be opened with the backend it was created
        with (a :class:`MemoryBackend` instance lives only as long as it); a
        store made with a data location opens its object store by itself,
        tuned by ``data_options`` (see docs/object-store.md).
        """
        path = os.fspath(path)
        settings = read_settings(path)
        if settings.data and backend is None:
            from . import _object_store  # noqa: PLC0415

            _object_store.before_open(path, settings, readonly)
        return cls(path, settings, readonly=readonly, verify=verify, cache_size=cache_size, backend=backend,
                   data_options=data_options, compression=compression, compress=compress)

    def __init__(self, path: str, settings: StoreSettings, readonly: bool = False,
                 verify: str = "xxh3", cache_size: int = DEFAULT_CACHE_SIZE, _create: bool = False,
                 backend: BackendChoice = None, data_options: dict | None = None, compression: str | None = None,
                 compress: str = "inline"):
        if verify not in VERIFY_MODES:
            raise InvalidArgument(f"verify must be one of {', '.join(VERIFY_MODES)}")
        if compress not in COMPRESS_WHEN:
            raise InvalidArgument(f"compress must be one of {', '.join(COMPRESS_WHEN)}, not {compress!r}")
        self.path = path
        self.settings = settings
        self.readonly = readonly
        self.verify = verify
        self.staging_dir = os.path.join(path, "staging")
        self._lock = threading.RLock()  # pins, appends and commits
        self.recovery: RecoveryReport | None = None  # what opening repaired (None: opened read-only)
        self.maintenance_lock = threading.Lock()  # one pack rewrite at a time: gc or compression behind
        self.last_activity = 0.0  # time.monotonic() of the last read or write: compression behind waits for quiet
        handles = StoreHandles(path, readonly)  # closed by close(), or when this store is dropped unclosed
        try:
            handles.acquire()  # one open store per directory per process; the writer's lock
            self.index = handles.index = ix.Index(os.path.join(path, "meta"), readonly=readonly, create=_create)
            self.index.on_disk_full = weak_callback(self, ChunkStore._release_reserve)  # no cycle back to us
            backend = make_backend(backend, os.path.join(path, "packs"), readonly, settings, data_options)
            self.packs = handles.packs = PackFiles(backend, readonly=readonly)
            self.syncer = GroupSync(self.index, self.packs, self._lock)
            dictionaries = Dictionaries(path, publish=backend.publish)
            if not readonly:
                backend.publish(dictionaries.names())  # a store from before, or a crash before a publish
            behind = compress == "behind" and not settings.data and not readonly
            self.codec = Codec(dictionaries, *parse_compression(compression or settings.compression), behind=behind)
            self.waiting = WaitingTally(self.index)
            index = self.index  # not self: nothing the store owns may keep it alive
            self.dead_space = DeadSpace(self.packs.punch, urgent=lambda: index.low_space)  # now, or by the bg gc
            self.ledger = Ledger(self.index, on_dead=None if readonly else self.dead_space.died)
            self.manifest_index = ManifestIndex(self.index, self.ledger)
            self.cache = ChunkCache(cache_size)
            self.reader = ChunkReader(self.index, self.ledger, self.manifest_index, self.packs, self.cache, verify,
                                      self._lock, self.codec)
            self.fs_tables = ix.FsTables(self.index)
            if not readonly:
                self.recovery = recover(self, left_by=handles.left_by)
                self.ensure_reserve()
                env = self.index.env  # not self: the backend must not keep the store alive
                self.packs.backend.attach_index(lambda fd: env.copyfd(fd, compact=True))
        except BaseException:
            handles.close()
            raise
        self._closed = False
        self._finalizer = handles.close_when_dropped(self)

    def __enter__(self) -> "ChunkStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.codec.wait()
        self._finalizer()  # sync if writable, close packs and index, release the lock (_handles.py)

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

    def sync(self, nowait: bool = False, full: bool = False) -> None:
        """Make everything committed so far survive power loss: packs first, then the index.

        It costs what was committed since the last sync: no disk flush at
        all if nothing was, and callers that arrive during a flush share the
        next one (_group_sync.py).  ``full`` also flushes the packs and
        empties the sync log (_synclog.py).  With ``nowait``, WouldBlock
        instead of flushing or waiting for a flush.
        """
        self.syncer.sync(nowait=nowait, full=full)

    def flush(self) -> dict:
        """:meth:`sync`, then have the backend put everything on its medium (an object store: upload all).

        Returns what the backend did (empty for a local one); raises a
        StoreError if the medium cannot take it now (the data stays safe locally).
        """
        self.sync()
        return self.packs.backend.flush()

    # -- transactions ---------------------------------------------------------

    def read_txn(self) -> "ix._Reading":
        """``with store.read_txn() as txn``: one consistent snapshot of the whole index."""
        return self.index.read()

    @property
    def write_lock(self) -> threading.RLock:
        """Held by every write transaction; a caller may hold it to group work with one."""
        return self.index.write_lock

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
                    self.waiting.write(txn)
                finally:
                    self.ledger.drop_tally()  # after a failure: nothing of it may leak into the next one
                return result, actions + more
            result, actions = self.index.write(run, frees=frees)
            self.waiting.written()
            for action in actions:
                action()
            if frees and self.index.low_space:
                self.dead_space.drain()  # a full disk wants the space now, not at the background gc's next look
                self.ensure_reserve()  # dead records were punched out: maybe there is room again
            return result

    def _ensure_active_pack(self, frees: bool = False, nbytes: int = 0) -> None:
        """Make sure a pack is active with room for ``nbytes`` of records (a new one if need be)."""
        if not self.packs.needs_roll(nbytes):
            return

        def allocate(txn):
            pack = ix.next_id(txn, self.index.counters, "next_pack", first=1)
            new_pack_record(txn, self.index.packs, pack)
            self.packs.create(pack)  # its header on disk before the record commits
            return pack, []

        self.packs.start(self.write_txn(allocate, frees=frees))

    # -- writing chunks -------------------------------------------------------

    def put_chunk(self, data: bytes | memoryview) -> ChunkRef:
        """Store one chunk (unless already stored) and pin it until committed or released."""
        return put_many(self, [data])[0][0]

    def put_chunks(self, chunks: Sequence[bytes | memoryview]) -> list[ChunkRef]:
        """put_chunk for consecutive chunks of one writer, all or none.

        Cheaper than one call each: a big batch is hashed on two cores, looked
        up in one read transaction, and its new chunks go to the pack in one
        write.  On failure (a full disk) nothing is stored or pinned.
        """
        return put_many(self, chunks)[0]

    def release(self, refs: Iterable[ChunkRef]) -> None:
        """Drop the pins of chunks a writer will not commit after all."""
        addresses = [r.address for r in refs if r.address]
        if addresses:
            self.write_txn(lambda txn: (None, self.ledger.unpin(txn, addresses)), frees=True)

    def commit_file(self, file_id: FileId, patches: list[Patch], size: int,
                    hook: Callable[[lmdb.Transaction], None] | None = None) -> None:
        """Apply manifest patches, set the file size, and drop the pins of the patches' chunks.

        All of it (and ``hook``, for the filesystem's own records) happens in one
        transaction.  The patched manifest's entries must lie in ``[0, size)``
        without overlapping; what they leave uncovered is a hole.  A size past
        :data:`MAX_FILE_SIZE` raises FileTooLargeError.
        """
        key = encode_file_id(file_id)
        check_file_size(size)
        pinned = [ref.address for p in patches for ref in p.chunks if ref.address]

        def apply(txn):
            actions = self.manifest_index.patch(txn, key, patches, size, retire=self._retiring())
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
                put, written = put_many(self, chunker.feed(block) if block is not None else chunker.finish())
                refs += put
                new_chunks += sum(written)
                new_bytes += sum(r.length for r, w in zip(put, written) if w)
            size = sum(r.length for r in refs)
            self.commit_file(file_id, [Patch(0, TO_END, refs)], size)
        except BaseException:
            self.release(refs)
            raise
        return IngestResult(file_id, size, len(refs), new_chunks, new_bytes)

    def _file_record(self, file_id: FileId, txn: lmdb.Transaction | None = None) -> tuple[int, int, int, int] | None:
        if txn is None:
            with self.index.read() as txn:
                return self._file_record(file_id, txn)
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
            fkey, size, count, _ = ix.FILE.unpack(raw)
            actions: list[Action] = []
            if count >= RETIRE_MIN and self._retiring():
                self.manifest_index.retire(txn, fkey, count)  # its references go in the background
            else:
                extents = self.manifest_index.delete_runs(txn, fkey)
                for extent in extents:
                    actions += self.ledger.decref(txn, extent.chunk)
                ix.add_counter(txn, self.index.counters, "chunk_refs", -len(extents))
            txn.delete(key, db=self.index.files)
            ix.add_counter(txn, self.index.counters, "files", -1)
            ix.add_counter(txn, self.index.counters, "logical_bytes", -size)
            if hook is not None:
                hook(txn)
            return True, actions

        return self.write_txn(remove, frees=True)

    def _retiring(self) -> bool:
        """Whether a commit that drops a big manifest retires it (_manifests.ManifestIndex.retire): while a
        background worker drops retired manifests (a mount's gc thread), unless the disk is full, when
        the space must come back before the next write."""
        return self.dead_space.deferred and not self.index.low_space and self.index.retired is not None

    def retired_entries(self) -> int:
        """Manifest entries of replaced or deleted big files whose references are yet to be dropped."""
        with self.index.read() as txn:
            return sum(self.manifest_index.retired_keys(txn).values())

    def drop_retired(self, limit: int = DROP_PAGE) -> int:
        """Drop the references of about ``limit`` retired manifest entries, in one transaction; returns
        how many (0: none waits).  Chunks left without a reference die here, as in the commit would have."""
        if self.index.retired is None or not self.retired_entries():
            return 0  # no write transaction: an idle mount's fsync must find nothing new to flush
        return self.write_txn(lambda txn: self.manifest_index.drop_retired(txn, limit), frees=True)

    # -- copies by metadata (chunkfs clone, snapshot, du) ------------------------------

    def clone_files(self, plan: Callable[[lmdb.Transaction], Iterable[tuple[FileId, FileId]]]) -> list[bool]:
        """Copy files by metadata, in one transaction: no chunk is read or hashed.

        ``plan(txn)`` runs first, inside the transaction (the filesystem writes
        the new inodes with it), and names the (source, destination) pairs to
        copy.  Each destination (which must not exist) gets its source's
        manifest, and every chunk named gets one more reference, so the copies
        are independent: a later commit to either side patches only its own
        manifest.  Returns, per pair, whether the source existed (a missing
        source is an empty file: its destination gets no record either).
        """
        def copy(txn):
            pairs = [(encode_file_id(src), encode_file_id(dst)) for src, dst in plan(txn)]
            return self.manifest_index.copy(txn, pairs), []

        return self.write_txn(copy)

    def file_chunks(self, file_id: FileId, txn: lmdb.Transaction) -> list[tuple[bytes, int, int]]:
        """(address, length, refcount) of every chunk a file's manifest names, in file order ([] if missing).

        For ``chunkfs du``: which bytes a set of files alone holds is which of
        their chunks have no reference from elsewhere, known from the index
        without reading chunk data.
        """
        raw = txn.get(encode_file_id(file_id), db=self.index.files)
        if raw is None:
            return []
        out, records = [], {}
        for extent in self.manifest_index.entries(txn, ix.FILE.unpack(raw)[0], 0, None):
            rec = records.get(extent.chunk)
            if rec is None:
                rec = records[extent.chunk] = self.ledger.record(txn, extent.chunk)
            out.append((rec.address if rec is not None else b"", extent.length, rec.refcount if rec is not None else 0))
        return out

    def exists(self, file_id: FileId) -> bool:
        return self._file_record(file_id) is not None

    def size(self, file_id: FileId, txn: lmdb.Transaction | None = None, default: int | None = None) -> int:
        """A stored file's size; ``default`` if it is missing (FileNotFoundInStore when no default)."""
        rec = self._file_record(file_id, txn)
        if rec is None:
            if default is not None:
                return default
            raise FileNotFoundInStore(f"no file {file_id!r} in the store")
        return rec[1]

    def list_files(self, prefix: FileId | None = None, after: FileId | None = None, limit: int | None = None,
                   txn: lmdb.Transaction | None = None) -> list[FileId]:
        """File ids in key order (bytes ids, then str ids, each in byte order), one cursor walk.

        ``prefix`` keeps the ids of its type that start with it; ``after`` starts
        past that id and ``limit`` stops after so many: a paged listing.
        """
        if txn is None:
            with self.index.read() as txn:
                return self.list_files(prefix, after, limit, txn)
        want = b"" if prefix is None else key_prefix(prefix)
        start = want if after is None else max(want, encode_file_id(after))
        skip = None if after is None else encode_file_id(after)
        out: list[FileId] = []
        with txn.cursor(db=self.index.files) as cur:
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
            return self.manifest_index.resolve(txn, self.manifest_index.covering_file(txn, file_id, start, end))

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
        """``read_range`` for long reads: the bytes in one new buffer, no chunk objects, no cache (_reading.py).

        With ``nowait``, WouldBlock rather than wait for the disk: for the
        event loop, which hands the read to a thread then.
        """
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        self.last_activity = time.monotonic()
        return self.reader.read_span(file_id, offset, length, nowait)

    def note_activity(self) -> None:
        """A write the store does not see (into a staging file) counts as activity too.

        The background gc drops replaced files' references and compresses
        only once reads and writes pause; a writer whose bytes wait in a
        staging file must hold that work off as much as one whose chunks arrive.
        """
        self.last_activity = time.monotonic()

    def read_chunks(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes | memoryview]]:
        """The verified chunks that hold ``[offset, offset+length)``, in order, and where the first begins.

        A chunk may come as a read-only view of the buffer it was read into (no copy).

        The whole chunks are what the FUSE adapter pushes into the kernel's
        page cache after a short read (readaround.py).
        """
        self.last_activity = time.monotonic()
        return self.reader.read_chunks(file_id, offset, length)

    def open_version(self, file_id: FileId, start: int = 0, end: int | None = None) -> FileVersion:
        """The file as it is now, readable until closed even if it is replaced or deleted meanwhile.

        For a reader that streams a file over many calls (_versions.py); only the
        chunks covering ``[start, end)`` (the whole file by default) are held.
        A context manager.
        """
        return open_version(self, file_id, start, end)

    @property
    def closed(self) -> bool:
        return getattr(self, "_closed", True)

    def open_reader(self, file_id: FileId) -> io.BufferedReader:
        """A seekable, read-only binary file object over one stored file."""
        return io.BufferedReader(StoreFileReader(functools.partial(self.read_range, file_id), self.size(file_id)), buffer_size=self.settings.avg_size)

    # -- reading chunks ---------------------------------------------------------

    def get_chunk(self, address: bytes, file_id: FileId | None = None) -> bytes:
        """A chunk's bytes, verified; raises ChunkCorruptError rather than return wrong bytes."""
        self.last_activity = time.monotonic()
        data = self.reader.get_chunk(address, file_id)
        return data if isinstance(data, bytes) else bytes(data)

    # -- statistics and maintenance ---------------------------------------------

    def stats(self) -> dict:
        """Counters kept exact in every commit, plus what the store occupies on disk (_stats.py)."""
        return store_stats(self)

    def garbage_bytes(self, min_dead_fraction: float = DEFAULT_MIN_DEAD_FRACTION) -> int:
        """Disk bytes :meth:`gc` at ``min_dead_fraction`` would give back now (no chunk data read)."""
        return reclaimable_bytes(self, min_dead_fraction)

    def start_background_gc(self, **options) -> "BackgroundGC":
        """Start a thread that compacts packs whenever enough is dead (for a mounted filesystem)."""
        return BackgroundGC(self, **options).start()

    def data_bytes(self, file_id: FileId, txn: lmdb.Transaction | None = None) -> int:
        """Bytes of a stored file that are not holes (kept in its file record: O(1)); 0 if it is missing."""
        rec = self._file_record(file_id, txn)
        return rec[3] if rec is not None else 0

    def disk_bytes(self) -> int:
        """Bytes the store occupies: its directory's allocated blocks, as ``du`` counts, and its packs', less
        the space reserve (``stats`` reports that apart)."""
        return disk_bytes(self)

    # -- checking and repair (chunkfs fsck) ------------------------------------------

    def check_records(self, txn: lmdb.Transaction, report: CheckReport, namer: FileNamer,
                      progress: Progress, verify_data: bool = False) -> None:
        """Recount manifests, chunk records, packs and counters in ``txn``; add findings to ``report``.

        ``namer(file_id)`` names a damaged file for people (its paths, say).
        """
        check_records(self, txn, report, namer, progress, verify_data)

    def repair_records(self, bad_chunks: dict[int, str]) -> list[str]:
        """Repair what :meth:`check_records` found at the chunk level; one line per kind of change."""
        return repair_store(self, bad_chunks)

    def mark_lost_tail(self, txn: lmdb.Transaction, file_id: FileId, size: int) -> bool:
        """Extend a file's contents to ``size`` with lost-data tombstones (fsck: size beyond its contents)."""
        return mark_lost_tail(self, txn, encode_file_id(file_id), size)

    def gc(self, min_dead_fraction: float = DEFAULT_MIN_DEAD_FRACTION, progress=None) -> dict:
        """Reclaim the space of unreferenced chunks by compacting packs; returns what it moved and freed.

        A pack is rewritten only if at least ``min_dead_fraction`` of the disk
        blocks it holds would come back (at 0.5 or more, no run moves more
        bytes than it frees; 0 compacts every pack with a dead record).  The
        report: ``packs_removed``, ``packs_rewritten``, ``chunks_moved``,
        ``bytes_moved``, ``bytes_reclaimed`` (disk bytes), ``packs_left`` and
        ``dead_bytes_left`` (packs not dead enough), ``skipped_corrupt``,
        ``stopped_full``, ``threshold``.
        """
        with self.maintenance_lock:
            while self.drop_retired():  # the references of retired manifests first: their chunks may die
                pass
            report = collect_garbage(self, min_dead_fraction, progress)
        self.ensure_reserve()
        return report

    def compress_waiting(self, stop: Callable[[], bool] = lambda: False, pause: float = 0.0,
                         include_active: bool = True, progress: Callable[[int, int], None] | None = None) -> dict:
        """Compress the chunks stored raw to be compressed later (``compress="behind"``), pack by pack.

        Records compressed without a dictionary are compressed again with
        the store's dictionary, once it has one.  With ``include_active``
        (the default) the active pack is sealed and rewritten too, and the
        pass goes on until nothing waits; ``stop()`` ends it between two
        packs.  Returns ``packs_rewritten``, ``chunks_compressed``,
        ``bytes_before``, ``bytes_after``, ``packs_skipped``,
        ``skipped_corrupt`` and ``stopped_full``.
        """
        return compress_waiting(self, stop, pause, include_active, progress)

