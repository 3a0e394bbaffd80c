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

The bucket is kept complete enough to rebuild the store from it alone
(checkpoints of the open pack, index generations, deleting removed packs'
objects when no generation needs them) by a :class:`BucketFlusher`
(_bucket_flush.py).

The store's compression dictionaries are *published* (:meth:`publish`, by
the flusher): uploaded when the store opens for writing if the bucket lacks
them, and a new one before the store lets any record name it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import ObjectStoreError, PackIOError, PackMissingError, StoreFullError, WouldBlock
from ._backend import REMOVED_PACK_GRACE, Buffer, PackBackend
from ._bucket import Bucket, DataLocation, pack_name
from ._bucket_flush import RETRY_BACKOFF, BucketFlusher, read_state
from ._local_backend import LocalBackend
from ._object_reads import ObjectReads
from ._pack_cache import PackRangeCache

log = logging.getLogger(__name__)

UPLOAD_WORKERS = 4


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
        self._objects: dict[int, int] | None = None  # uploaded pack -> object size (None: not listed yet)
        self._removed: dict[int, float] = {}  # pack -> when, within the grace period
        self._reaped: set[int] = set()
        self._retired_fds: list[tuple[float, int]] = []
        self._removed_fds: dict[int, int] = {}  # removed local packs, readable until reaped
        self._uploading: set[int] = set()
        self._last_error = ""
        self._stopping = False
        self._closed = False  # set by close: a request that ends later changes no file and no state
        self._queue: queue.Queue[int] = queue.Queue()
        self.reads = ObjectReads(self.bucket, self.cache, lambda: self._objects or {}, self._is_local)
        self._threads: list[threading.Thread] = []
        self.flusher = BucketFlusher(self)
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
        self.flusher.start()

    def attach_index(self, copy_index: Callable[[int], None]) -> None:
        self.flusher.copy_index = copy_index

    def publish(self, names: Sequence[str]) -> None:
        self.flusher.publish(names)

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
                self.note_failure(f"upload of pack {pack:08x} failed: {exc}")
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

    def note_failure(self, message: str) -> None:
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
            self.flusher.doom(pack)

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

    # -- for the flusher (_bucket_flush.py) ----------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self, wait: bool = True) -> dict:
        return self.flusher.flush(wait)

    def local_packs(self) -> tuple[set[int], set[int]]:
        """The packs not in the bucket yet: (open, sealed)."""
        with self._lock:
            return set(self._open), set(self._sealed)

    def waiting_uploads(self) -> bool:
        with self._lock:
            return bool(self._sealed)

    def checkpoint(self, pack: int, last: tuple[int, int] | None) -> tuple[int, int] | None:
        """Upload the open pack as it is unless it is still ``last`` (size, version); what was uploaded."""
        fd = self._local_fd(pack) if not self._closed else None
        if fd is None:
            return None
        with self._lock:
            version = self._version.get(pack, 0)
            if last == (os.fstat(fd).st_size, version):
                return None
        size = self._upload_file(pack, fd)
        with self._lock:
            if self._objects is not None and pack in self._open:
                self._objects[pack] = size
        return size, version

    def wait_uploaded(self, packs: set[int] | None) -> None:
        """Until ``packs`` (None: every sealed pack) are uploaded; ObjectStoreError after ``close_wait`` s
        without progress."""
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

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> dict:
        if self.readonly:
            saved = read_state(self.state_dir)
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
                   "deletes_waiting": self.flusher.doomed_count(),
                   "last_error": self._last_error}
        out.update(self.bucket.stats())
        out["cache"] = self.cache.stats()
        return out

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
                self.flusher.final_flush()
        finally:
            with self._lock:
                self._closed = self._stopping = True
            for _ in range(UPLOAD_WORKERS):
                self._queue.put(-1)
            deadline = time.monotonic() + 5  # idle threads end at once; one inside a request is left to it
            self.flusher.stop(timeout=5)
            for t in self._threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            self.reads.close()
            if not self.readonly:
                self._seal_for_the_next_open()
                self.flusher.write_state("")
            with self._lock:
                fds = [fd for _, fd in self._retired_fds] + list(self._removed_fds.values())
                self._retired_fds, self._removed_fds = [], {}
            for fd in fds:
                os.close(fd)
            self.local.close()
            self.cache.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
