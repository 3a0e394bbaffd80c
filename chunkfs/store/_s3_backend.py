"""The pack backend on an S3-compatible object store: packs fill locally, then live as one object each.

Where a pack's bytes are, in the order a read looks:

* ``packs/<id>.pack`` in the store directory: the *open* pack, written by
  the store like a local pack (the staging copy; ``sync`` is ``fdatasync``);
* ``packs/<id>.sealed``: a sealed pack waiting for its upload.  :meth:`seal`
  only queues it (the store calls it holding its append lock); an upload
  worker makes the copy durable and renames it ``.sealed``, then PUTs it as
  the object ``PREFIX/packs/<id>.pack`` with its checksum.  Only once the
  store confirmed that checksum is the pack "in the bucket" (blob before
  reference: until then the local copy is the pack), and the local file
  moves into the pack cache whole.  After a crash the next open uploads the
  ``.sealed`` files again, and every ``.pack`` but the newest (sealed before
  its rename);
* the object, read through _object_reads.py: ranged GETs through a bounded
  on-disk cache of pack blocks (_pack_cache.py), prefetched for a
  sequential reader.

What is not yet in the bucket (the open pack, and the sealed packs waiting)
is the *upload backlog*; when it would pass ``upload_backlog`` bytes, a
write waits a little for uploads and then fails with StoreFullError (ENOSPC):
an unreachable object store never makes chunkfs drop data, it stops taking
more.  Uploads retry forever with backoff while the store is unreachable.

A background thread keeps the bucket complete enough to rebuild the store
from it alone (docs/object-store.md): every ``upload_interval`` seconds, if
anything changed, it copies the index (LMDB's compacting copy, through the
function the store attaches), uploads the open pack as it is (a checkpoint:
the same key, overwritten later by the sealed pack), waits for the sealed
packs, and then uploads the index copy as a new generation (_bucket_meta.py).
A removed pack's object is deleted only after the grace period *and* after a
metadata generation taken after its removal is in the bucket, so the latest
generation never names a deleted object.

The store's compression dictionaries are *published* (:meth:`publish`):
uploaded when the store opens for writing if the bucket lacks them, and a
new one before the store lets any record name it, so every pack object and
index generation in the bucket only needs dictionaries that are there.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import ObjectStoreError, PackIOError, PackMissingError, StoreFullError, WouldBlock
from . import _bucket_meta as meta
from ._backend import REMOVED_PACK_GRACE, Buffer, PackBackend
from ._bucket import Bucket, DataLocation, md5_of, pack_name
from ._local_backend import LocalBackend
from ._object_reads import ObjectReads
from ._pack_cache import PackRangeCache

log = logging.getLogger(__name__)

UPLOAD_WORKERS = 4
RETRY_BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)  # seconds between upload attempts while the store fails
STATE_NAME = "state.json"


@dataclass
class ObjectStoreOptions:
    """What a mount (or library user) may tune; see docs/object-store.md."""

    pack_cache: int = 1 << 30  # bytes of pack ranges kept on the local disk
    upload_backlog: int = 4 << 30  # bytes not yet uploaded before writes get ENOSPC
    upload_interval: float = 60.0  # seconds between checkpoints of the open pack and the index
    backlog_wait: float = 5.0  # seconds a write waits for uploads to make room before ENOSPC
    close_wait: float = 30.0  # seconds close waits for an upload that makes no progress
    request_timeout: float = 60.0  # seconds a request may wait for an answer before botocore retries it


class S3Backend(PackBackend):
    """Packs in an S3 bucket, staged under ``packs_dir``; see the module docstring."""

    def __init__(self, packs_dir: str, location: DataLocation, readonly: bool = False,
                 options: ObjectStoreOptions | None = None, bucket: Bucket | None = None):
        self.options = options or ObjectStoreOptions()
        self.readonly = readonly
        self.dir = packs_dir
        self.store_dir = os.path.dirname(os.path.abspath(packs_dir))
        self.state_dir = os.path.join(self.store_dir, "bucket")
        self.location = location
        self.bucket = bucket or Bucket(location, read_timeout=self.options.request_timeout)
        self.bucket.check()  # wrong credentials, no bucket, no server: one line, now
        self.local = LocalBackend(packs_dir, readonly=readonly)  # the staging copies
        self.cache = PackRangeCache(os.path.join(self.state_dir, "cache"), self.options.pack_cache)
        self._lock = threading.Condition()
        self._sealed: set[int] = set()  # local packs sealed and waiting for upload
        self._unrenamed: set[int] = set()  # sealed packs whose file is still named .pack (see seal)
        self._open: set[int] = set()  # local packs open for writing
        self._local_size: dict[int, int] = {}
        self._version: dict[int, int] = {}  # bumped by patch/truncate: an upload of an older version is redone
        self._checkpointed: dict[int, tuple[int, int]] = {}  # open pack -> (size, version) last uploaded
        self._objects: dict[int, int] | None = None  # uploaded pack -> object size (None: not listed yet)
        self._removed: dict[int, float] = {}  # pack -> when, within the grace period
        self._reaped: set[int] = set()
        self._doomed: list[tuple[float, int]] = []  # (removed at, pack) whose object waits for deletion
        self._retired_fds: list[tuple[float, int]] = []
        self._removed_fds: dict[int, int] = {}  # removed local packs, readable until reaped
        self._uploading: set[int] = set()
        self._copy_index: Callable[[int], None] | None = None
        self._published: dict[str, str] | None = None  # published file -> its MD5 in the bucket
        self._publish_lock = threading.Lock()
        self._meta_watermark = 0.0  # removals before this are out of the latest index generation
        self._last_error = ""
        self._stopping = False
        self._closed = False  # set by close: a request that ends later changes no file and no state
        self._flush_lock = threading.Lock()  # one flush at a time: they all write the same index copy
        self._flush_requested = threading.Event()
        self._state_lock = threading.Lock()
        self._queue: queue.Queue[int] = queue.Queue()
        self.reads = ObjectReads(self.bucket, self.cache, lambda: self._objects or {}, self._is_local)
        self._threads: list[threading.Thread] = []
        if not readonly:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self._scan_local()
        if not readonly:
            self._load_objects()
            for pack in sorted(self._sealed):
                self._queue.put(pack)  # a crash left these: upload them now
            self._start_threads()

    # -- setup -------------------------------------------------------------------------

    def _scan_local(self) -> None:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            stem, _, kind = name.partition(".")
            if len(stem) != 8 or kind not in ("pack", "sealed"):
                continue
            try:
                pack = int(stem, 16)
            except ValueError:
                continue
            (self._open if kind == "pack" else self._sealed).add(pack)
            self._local_size[pack] = os.stat(os.path.join(self.dir, name)).st_size
        for pack in self._sealed & self._open:  # crashed between writing and renaming: the .sealed is whole
            self._open.discard(pack)
            _unlink(os.path.join(self.dir, f"{pack:08x}.pack"))
        for pack in sorted(self._open)[:-1]:  # sealed before a crash, not renamed yet (see seal)
            self._open.discard(pack)
            self._sealed.add(pack)
            self._unrenamed.add(pack)

    def _load_objects(self) -> dict[int, int]:
        if self._objects is None:
            found = {}
            for name, size in self.bucket.listing("packs/"):
                stem = name[len("packs/"):]
                if stem.endswith(".pack") and len(stem) == 13:
                    try:
                        found[int(stem[:8], 16)] = size
                    except ValueError:
                        continue
            with self._lock:
                if self._objects is None:
                    self._objects = found
        return self._objects

    def _start_threads(self) -> None:
        for i in range(UPLOAD_WORKERS):
            t = threading.Thread(target=self._upload_worker, name=f"chunkfs-upload-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._flusher, name="chunkfs-bucket-flush", daemon=True)
        t.start()
        self._threads.append(t)

    def attach_index(self, copy_index: Callable[[int], None]) -> None:
        self._copy_index = copy_index

    def publish(self, names: Sequence[str]) -> None:
        """Upload the store directory's files ``names`` unless the bucket holds them already (by MD5).

        Retried with backoff for up to ``close_wait`` seconds while the object
        store fails; then ObjectStoreError, and the caller must not use them.
        """
        if self.readonly or not names:
            return
        with self._publish_lock:
            if self._published is None:
                self._published = self._retrying(lambda: meta.published_files(self.bucket))
            for name in names:
                try:
                    with open(os.path.join(self.store_dir, name), "rb") as fh:
                        data = fh.read()
                except OSError as exc:
                    raise PackIOError(f"cannot read {name} to upload it: {exc.strerror}") from None
                digest = md5_of(data)
                if self._published.get(name) != digest:
                    self._retrying(lambda: self.bucket.put(meta.published_key(name), data))  # noqa: B023
                    self._published[name] = digest

    # -- names ---------------------------------------------------------------------------

    def _path(self, pack: int, sealed: bool) -> str:
        return os.path.join(self.dir, f"{pack:08x}.{'sealed' if sealed else 'pack'}")

    def _current_path(self, pack: int) -> str:
        """With the lock held: the name of ``pack``'s local copy now (a seal renames it, later)."""
        return self._path(pack, pack in self._sealed and pack not in self._unrenamed)

    def _local_fd(self, pack: int) -> int | None:
        """A descriptor of the local copy of ``pack`` (open or sealed), or None if there is none."""
        with self._lock:
            fd = self.local._fds.get(pack, self._removed_fds.get(pack))
            if fd is not None:
                return fd
            if pack not in self._open and pack not in self._sealed:
                return None
            path = self._current_path(pack)
        try:
            fd = os.open(path, (os.O_RDONLY if self.readonly else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # uploaded (or renamed) meanwhile: the caller looks again
        except OSError as exc:
            raise PackIOError(f"cannot open pack {pack:08x}: {exc.strerror}") from None
        with self._lock:
            if pack in self.local._fds:
                os.close(fd)
                return self.local._fds[pack]
            self.local._fds[pack] = fd
            return fd

    # -- writing -------------------------------------------------------------------------

    def create(self, pack: int) -> int:
        with self._lock:
            if pack in self._open:
                return self._local_size.get(pack, 0)
            if pack in self._sealed or (self._objects or {}).get(pack) is not None:
                raise RuntimeError(f"pack {pack:08x} is sealed and cannot be reopened")
        fd = os.open(self._path(pack, False), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with self._lock:
            self.local._fds[pack] = fd
            self._open.add(pack)
            self._local_size[pack] = os.fstat(fd).st_size
            self._removed.pop(pack, None)
            self._reaped.discard(pack)
            return self._local_size[pack]

    def write(self, pack: int, offset: int, buffers: Sequence[Buffer]) -> None:
        total = sum(memoryview(b).nbytes for b in buffers)
        with self._lock:
            if pack not in self._open:
                raise RuntimeError(f"pack {pack:08x} is not open for writing")
            grow = max(0, offset + total - self._local_size.get(pack, 0))
            self._wait_for_room(grow)
        self.local.write(pack, offset, buffers)
        with self._lock:
            self._local_size[pack] = max(self._local_size.get(pack, 0), offset + total)

    def _backlog(self) -> int:
        return sum(self._local_size.get(p, 0) for p in self._open | self._sealed)

    def _wait_for_room(self, grow: int) -> None:
        """With the lock held: wait a little for uploads if the backlog is full, then StoreFullError."""
        deadline = time.monotonic() + self.options.backlog_wait
        while self._backlog() + grow > self.options.upload_backlog and self._sealed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(left)
        if self._backlog() + grow > self.options.upload_backlog:
            why = f": {self._last_error}" if self._last_error else ""
            raise StoreFullError(f"no space left for chunk data: the upload backlog is full "
                                 f"({self._backlog()} bytes wait for {self.location.describe()}{why})")

    def writeback(self, pack: int, offset: int, length: int) -> None:
        self.local.writeback(pack, offset, length)

    def seal(self, pack: int) -> None:
        """Mark the pack sealed and queue its upload; no I/O (the caller holds the writers' lock).

        The upload worker makes the staging copy durable and renames it to
        ``.sealed`` (:meth:`_finish_seal`) before it uploads it.  A crash
        before that leaves it named ``.pack``: the next open takes every
        ``.pack`` but the newest for sealed (only the newest can be open).
        """
        with self._lock:
            if pack not in self._open:
                return
            self._open.discard(pack)
            self._sealed.add(pack)
            self._unrenamed.add(pack)
        self._queue.put(pack)

    def _finish_seal(self, pack: int) -> None:
        """fdatasync a sealed pack's staging copy and rename it ``.sealed`` (durably)."""
        fd = self._local_fd(pack)
        if fd is None:
            return
        try:
            os.fdatasync(fd)
            with self._lock:
                if pack not in self._unrenamed:
                    return
                os.rename(self._path(pack, False), self._path(pack, True))
                self._unrenamed.discard(pack)
            self._sync_dir()
        except OSError as exc:
            raise PackIOError(f"cannot seal pack {pack:08x}: {exc.strerror}") from None

    def sealed(self, pack: int) -> bool:
        with self._lock:
            return pack not in self._open

    def sync_all(self) -> None:
        self.local.sync_all()  # the staging copies: what is in the bucket was flushed before its upload

    def sync(self, packs: Iterable[int]) -> None:
        with self._lock:
            local = [p for p in packs if p in self._open or p in self._sealed]
        for pack in local:
            fd = self._local_fd(pack)
            if fd is not None:
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    raise PackIOError(f"cannot sync pack {pack:08x}: {exc.strerror}") from None
        if local:
            self._sync_dir()

    def _sync_dir(self) -> None:
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- uploads -------------------------------------------------------------------------

    def _upload_worker(self) -> None:
        while True:
            pack = self._queue.get()
            if pack < 0:
                return
            self._upload_until_done(pack)

    def _upload_until_done(self, pack: int) -> None:
        attempt = 0
        while not self._stopping:
            with self._lock:
                if pack not in self._sealed or pack in self._uploading:
                    return  # removed, uploaded already, or another worker has it
                self._uploading.add(pack)
                version = self._version.get(pack, 0)
            try:
                done = self._upload_once(pack, version)
            except (ObjectStoreError, PackMissingError, PackIOError, OSError) as exc:
                done = False
                self._note_failure(f"upload of pack {pack:08x} failed: {exc}")
                time.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
                attempt += 1
            finally:
                with self._lock:
                    self._uploading.discard(pack)
                    self._lock.notify_all()
            if done:
                return

    def _upload_once(self, pack: int, version: int) -> bool:
        self._finish_seal(pack)
        fd = self._local_fd(pack)
        if fd is None:
            return True
        size = self._upload_file(pack, fd)
        with self._lock:
            if self._closed:
                return True  # the store closed while this upload went on: the next open uploads it again
            if self._version.get(pack, 0) != version:
                return False  # patched meanwhile: upload again
            if pack not in self._sealed:
                return True  # removed meanwhile: its object is doomed already
            self._sealed.discard(pack)
            self._local_size.pop(pack, None)
            if self._objects is not None:
                self._objects[pack] = size
            self._retire_fd(pack)
            if self._last_error:
                log.info("uploads to %s work again", self.location.describe())
                self._last_error = ""
            self._lock.notify_all()
            # under the lock: a repair's _rewrite cannot fetch the pack back before its copy is in the cache
            if not self.cache.adopt(pack, self._path(pack, True)):
                _unlink(self._path(pack, True))
        return True

    def _upload_file(self, pack: int, fd: int) -> int:
        """PUT the local copy of ``pack`` as it is now, streamed from the file; its size.

        A descriptor of its own for the upload: the pack's may be closed (the
        pack removed) while the upload goes on.
        """
        own = os.dup(fd)
        try:
            size = os.fstat(own).st_size
            self.bucket.put_file(pack_name(pack), own, size)
            return size
        finally:
            os.close(own)

    def _retire_fd(self, pack: int) -> None:
        """With the lock held: a local copy is gone; close its descriptor after the grace period."""
        fd = self.local._fds.pop(pack, None)
        if fd is not None:
            self._retired_fds.append((time.monotonic(), fd))

    def _note_failure(self, message: str) -> None:
        with self._lock:
            first = not self._last_error
            self._last_error = message
        (log.warning if first else log.debug)("%s; retrying with backoff (data stays on the local disk)", message)

    # -- reading -------------------------------------------------------------------------

    def read(self, pack: int, offset: int, length: int) -> bytes:
        data = self.reads.from_memory(pack, offset, length)  # a sequential reader's next chunk
        if data is not None:
            return data
        fd = self._local_fd(pack)
        if fd is not None:
            try:
                return os.pread(fd, length, offset)
            except OSError as exc:
                raise PackIOError(f"cannot read pack {pack:08x}: {exc.strerror}") from None
        return self.reads.read(pack, offset, length, self._object_size(pack), nowait=False)

    def readv(self, pack: int, offset: int, buffers: Sequence[memoryview], nowait: bool = False) -> int:
        fd = self._local_fd(pack)
        if fd is not None:
            if nowait:
                raise WouldBlock(f"pack {pack:08x}: read it in a worker")
            try:
                return os.preadv(fd, buffers, offset)
            except OSError as exc:
                raise PackIOError(f"cannot read pack {pack:08x}: {exc.strerror}") from None
        return self.reads.read_into(pack, offset, buffers, self._object_size(pack), nowait)

    def _is_local(self, pack: int) -> bool:
        with self._lock:
            return pack in self._open or pack in self._sealed

    def _object_size(self, pack: int) -> int:
        with self._lock:
            if pack in self._reaped:
                raise PackMissingError(f"pack {pack:08x} is missing")
        size = self._load_objects().get(pack)
        if size is None:
            raise PackMissingError(f"pack {pack:08x} is missing (no object {pack_name(pack)} in "
                                   f"{self.location.describe()})")
        return size

    # -- sizes and listing ---------------------------------------------------------------

    def list(self) -> list[int]:
        objects = self._load_objects()
        with self._lock:
            present = (set(objects) | self._open | self._sealed) - set(self._removed) - self._reaped
        return sorted(present)

    def size(self, pack: int) -> int:
        with self._lock:
            if pack in self._open or pack in self._sealed:
                return self._local_size.get(pack, 0)
        return self._object_size(pack)

    def usage(self, pack: int) -> tuple[int, int]:
        size = self.size(pack)
        return size, size  # an object cannot be partly freed

    def disk_bytes(self) -> int:
        objects = self._load_objects()
        with self._lock:
            local = self._open | self._sealed
            gone = set(self._removed) | self._reaped
            return (sum(self._local_size.get(p, 0) for p in local - gone)
                    + sum(size for p, size in objects.items() if p not in local and p not in gone))

    # -- repair, removal -----------------------------------------------------------------

    def _make_local(self, pack: int) -> int:
        """Bring an uploaded pack back as a sealed local copy (to rewrite the object); return its fd."""
        fd = self._local_fd(pack)
        if fd is not None:
            return fd
        data = self.bucket.get(pack_name(pack))
        path = self._path(pack, True)
        with open(path + ".tmp", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(path + ".tmp", path)
        self._sync_dir()
        with self._lock:
            self._sealed.add(pack)
            self._local_size[pack] = len(data)
        self.reads.forget(pack)
        return self._local_fd(pack)

    def _rewrite(self, pack: int, change: Callable[[int], None]) -> None:
        """Apply ``change(fd)`` to the local copy durably; a sealed pack is then uploaded again whole.

        The version goes up first: an upload finishing meanwhile then keeps
        the local copy (and goes again) instead of deleting what is changed.
        """
        with self._lock:
            self._version[pack] = self._version.get(pack, 0) + 1
        fd = self._make_local(pack)
        try:
            change(fd)
            os.fdatasync(fd)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise PackIOError(f"cannot rewrite pack {pack:08x}: {exc.strerror}") from None
        with self._lock:
            self._local_size[pack] = size
            again = pack in self._sealed
        self.reads.forget(pack)
        if again:
            self._queue.put(pack)

    def patch(self, pack: int, offset: int, data: Buffer) -> None:
        self._rewrite(pack, lambda fd: os.pwrite(fd, bytes(data), offset))

    def truncate(self, pack: int, end: int) -> None:
        self._rewrite(pack, lambda fd: os.ftruncate(fd, end))

    def punch(self, pack: int, offset: int, length: int) -> bool:
        return False  # an object cannot be partly freed: the bytes wait for gc to rewrite the pack

    def remove(self, pack: int) -> None:
        """Forget a pack now; its object is deleted once the grace period and a newer index copy allow."""
        now = time.monotonic()
        with self._lock:
            local = pack in self._open or pack in self._sealed
            known = local or pack in (self._objects or {})
            if not known or pack in self._removed:
                return
            self._removed[pack] = now
            if local:
                name = self._current_path(pack)
                self._open.discard(pack)
                self._sealed.discard(pack)
                self._unrenamed.discard(pack)
                self._local_size.pop(pack, None)
                fd = self.local._fds.pop(pack, None)
                if fd is not None:
                    self._removed_fds[pack] = fd
                _unlink(name)
            self._doomed.append((time.time(), pack))  # its object, or one an upload may still make

    def reap(self, grace: float = REMOVED_PACK_GRACE) -> None:
        now = time.monotonic()
        with self._lock:
            for pack, when in list(self._removed.items()):
                if now - when >= grace:
                    del self._removed[pack]
                    self._reaped.add(pack)
                    fd = self._removed_fds.pop(pack, None)
                    if fd is not None:
                        self._retired_fds.append((now - REMOVED_PACK_GRACE, fd))
                    if self._objects is not None:
                        self._objects.pop(pack, None)
                    self.reads.forget(pack)
            old = [fd for when, fd in self._retired_fds if now - when >= REMOVED_PACK_GRACE]
            self._retired_fds = [r for r in self._retired_fds if now - r[0] < REMOVED_PACK_GRACE]
        for fd in old:
            os.close(fd)

    def _delete_doomed(self, everything: bool = False) -> None:
        """Delete objects of removed packs that no index generation in the bucket still needs."""
        now = time.time()
        with self._lock:
            limit = self._meta_watermark if self._copy_index is not None else now
            due = [(t, p) for t, p in self._doomed
                   if everything or (t < limit and now - t >= REMOVED_PACK_GRACE)]
        for item in due:
            self.bucket.delete(pack_name(item[1]))
            with self._lock:
                self._doomed.remove(item)

    # -- flushing: checkpoints, metadata, sync ------------------------------------------------

    def _flusher(self) -> None:
        last_flush = time.monotonic()
        last_state = ""
        while not self._stopping:
            requested = self._flush_requested.wait(1.0)
            if self._stopping:
                return
            due = time.monotonic() - last_flush >= self.options.upload_interval
            if requested or due:
                self._flush_requested.clear()
                try:
                    self.flush(wait=False)
                except (ObjectStoreError, PackMissingError, PackIOError, OSError) as exc:
                    self._note_failure(f"upload of the index copy failed: {exc}")
                last_flush = time.monotonic()
            try:
                self._delete_doomed()
            except (ObjectStoreError, OSError) as exc:
                self._note_failure(f"deleting removed packs failed: {exc}")
            last_state = self._write_state(last_state)

    def flush(self, wait: bool = True) -> dict:
        """Put everything in the bucket: sealed packs, the open pack as it is, then an index copy.

        ``wait``: block until every sealed pack is uploaded (ObjectStoreError
        if uploads make no progress for ``close_wait`` seconds); otherwise
        only the packs sealed when the index copy was taken are waited for.
        """
        if self.readonly or self._copy_index is None:
            return {}
        with self._flush_lock:  # the background flush, 'chunkfs sync' and close would share index.copy
            if self._closed:
                return {}
            done = self._flush(wait)
        if wait:
            self._write_state("")  # 'chunkfs stats' right after 'chunkfs sync' shows what sync did
        return done

    def _flush(self, wait: bool) -> dict:
        started = time.time()
        index_path = os.path.join(self.state_dir, "index.copy")
        if not meta.copy_if_changed(self._copy_index, index_path, self.state_dir) and not self._pending():
            return {"generation": None}
        with self._lock:
            open_packs, sealed = set(self._open), set(self._sealed)
        for pack in sorted(open_packs):
            self._retrying(lambda: self._checkpoint(pack))
        self._wait_uploaded(sealed if not wait else None)
        if self._closed:  # close gave up waiting for this flush
            return {"generation": None}
        generation = self._retrying(lambda: meta.upload_index(self.bucket, index_path, self.store_dir))
        with self._lock:
            self._meta_watermark = started
        self._delete_doomed()
        return {"generation": generation}

    def _retrying(self, work: Callable[[], object]) -> object:
        """``work()``, tried again with backoff for up to ``close_wait`` seconds while the object store fails."""
        deadline = time.monotonic() + self.options.close_wait
        for attempt in range(1000):
            try:
                return work()
            except ObjectStoreError as exc:
                if time.monotonic() >= deadline:
                    raise
                self._note_failure(str(exc))
                time.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
        raise AssertionError("unreachable")

    def _pending(self) -> bool:
        with self._lock:
            return bool(self._sealed or self._doomed)

    def _checkpoint(self, pack: int) -> None:
        """Upload the open pack as it is, unless this process uploaded it as it is already (a flush after
        a change of metadata only, such as the atime a read sets, does not send up to 64 MiB again)."""
        fd = self._local_fd(pack) if not self._closed else None
        if fd is None:
            return
        with self._lock:
            version = self._version.get(pack, 0)
            if self._checkpointed.get(pack) == (os.fstat(fd).st_size, version):
                return
        size = self._upload_file(pack, fd)
        with self._lock:
            self._checkpointed[pack] = (size, version)
            if self._objects is not None and pack in self._open:
                self._objects[pack] = size

    def _wait_uploaded(self, packs: set[int] | None) -> None:
        progress = time.monotonic()
        with self._lock:
            while True:
                left = (self._sealed if packs is None else self._sealed & packs)
                if not left:
                    return
                count = len(left)
                self._lock.wait(1.0)
                if len(self._sealed if packs is None else self._sealed & packs) < count:
                    progress = time.monotonic()
                elif time.monotonic() - progress > self.options.close_wait:
                    raise ObjectStoreError(f"{len(left)} pack(s) could not be uploaded to "
                                           f"{self.location.describe()} ({self._last_error or 'no progress'}); "
                                           "they stay on the local disk and upload at the next mount")

    def request_flush(self) -> None:
        self._flush_requested.set()

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> dict:
        if self.readonly:
            saved = _read_json(os.path.join(self.state_dir, STATE_NAME))
            if saved:
                return saved
        objects = self._objects or {}
        with self._lock:
            backlog = sorted(self._sealed)
            out = {"data": self.location.url, "endpoint": self.location.endpoint,
                   "objects": len(set(objects) - self._reaped),
                   "bucket_bytes": sum(s for p, s in objects.items() if p not in self._reaped),
                   "upload_backlog_packs": len(backlog),
                   "upload_backlog_bytes": self._backlog(),
                   "deletes_waiting": len(self._doomed),
                   "last_error": self._last_error}
        out.update(self.bucket.stats())
        out["cache"] = self.cache.stats()
        return out

    def _write_state(self, last: str) -> str:
        """Write the stats for ``chunkfs stats`` of a mounted store, if they changed since ``last``."""
        with self._state_lock:
            text = json.dumps(self.stats(), sort_keys=True)
            if text != last:
                meta.write_atomically(os.path.join(self.state_dir, STATE_NAME), text.encode())
            return text

    # -- closing -------------------------------------------------------------------------

    def _seal_for_the_next_open(self) -> None:
        """Packs sealed but not uploaded: make them ``.sealed`` files, which the next open uploads first."""
        for pack in sorted(self._unrenamed):
            try:
                self._finish_seal(pack)
            except PackIOError as exc:
                log.warning("%s; it waits on the local disk for the next open", exc)

    def close(self) -> None:
        """Upload what is waiting and stop the threads; give up once the object store has made no progress
        (no request ended, no upload sent a byte) for ``close_wait`` seconds.

        A request the object store sits on cannot be interrupted, so the
        final flush runs in a thread of its own, and the close goes on
        without it when it stalls: what was not uploaded stays on the local
        disk and goes first at the next open, and a request that ends after
        the close changes nothing here.
        """
        try:
            if not self.readonly:
                self._final_flush()
        finally:
            with self._lock:
                self._closed = self._stopping = True
            self._flush_requested.set()
            for _ in range(UPLOAD_WORKERS):
                self._queue.put(-1)
            deadline = time.monotonic() + 5  # idle threads end at once; one inside a request is left to it
            for t in self._threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            self.reads.close()
            if not self.readonly:
                self._seal_for_the_next_open()
                self._write_state("")
            with self._lock:
                fds = [fd for _, fd in self._retired_fds] + list(self._removed_fds.values())
                self._retired_fds, self._removed_fds = [], {}
            for fd in fds:
                os.close(fd)
            self.local.close()
            self.cache.close()

    def _final_flush(self) -> None:
        """close's flush of everything, waited for while the object store makes progress."""
        failed: list[BaseException] = []
        done = threading.Event()

        def flush_all() -> None:
            try:
                self.flush(wait=True)
                self._delete_doomed(everything=True)
            except (ObjectStoreError, PackMissingError, PackIOError, OSError) as exc:
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=flush_all, name="chunkfs-close-flush", daemon=True).start()
        started = time.monotonic()
        while not done.wait(0.5):
            if min(time.monotonic() - started, self.bucket.idle()) > self.options.close_wait:
                failed.append(ObjectStoreError(f"{self.location.describe()} made no progress for "
                                               f"{self.options.close_wait:.0f} s"))
                break
        if failed:
            log.warning("not everything reached the object store before closing: %s; what is left stays on the "
                        "local disk and is uploaded at the next open", failed[0])


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}
