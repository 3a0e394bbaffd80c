"""Keeping the bucket complete enough to rebuild the store from it alone (docs/object-store.md).

The S3 backend (_s3_backend.py) uploads each pack once it is sealed; this
module's :class:`BucketFlusher` does the rest, in a thread of its own: every
``upload_interval`` seconds, if anything changed, it copies the index (LMDB's
compacting copy, through the function the store attaches), uploads the open
pack as it is (a checkpoint: the same key, overwritten later by the sealed
pack), waits for the packs sealed before the copy, and then uploads the
index copy as a new generation (_bucket_meta.py).

It publishes the store's compression dictionaries (:meth:`BucketFlusher.publish`)
and owns the deletion of removed packs' objects: an object is deleted
only after the grace period *and* after a metadata generation taken after
the pack's removal is in the bucket, so the latest generation never names a
deleted object.

Lock order: the backend's lock may be held while :meth:`doom` takes the
flusher's ``_doomed_lock``; the flusher never takes the backend's lock while
holding one of its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from ..errors import ObjectStoreError, PackIOError, PackMissingError
from . import _bucket_meta as meta
from ._backend import REMOVED_PACK_GRACE
from ._bucket import Bucket, DataLocation, md5_of, pack_name

log = logging.getLogger(__name__)

RETRY_BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)  # seconds between attempts while the object store fails
STATE_NAME = "state.json"

T = TypeVar("T")


class FlushTimes(Protocol):
    upload_interval: float  # seconds between background flushes
    close_wait: float  # seconds to keep retrying while the object store fails


class UploadingBackend(Protocol):
    """What the flusher needs of the backend whose bucket it keeps (the S3 backend, _s3_backend.py)."""

    readonly: bool
    store_dir: str
    state_dir: str
    bucket: Bucket
    location: DataLocation
    options: FlushTimes

    @property
    def closed(self) -> bool: ...

    def note_failure(self, message: str) -> None: ...

    def local_packs(self) -> tuple[set[int], set[int]]: ...

    def waiting_uploads(self) -> bool: ...

    def checkpoint(self, pack: int, last: tuple[int, int] | None) -> tuple[int, int] | None: ...

    def wait_uploaded(self, packs: set[int] | None) -> None: ...

    def stats(self) -> dict: ...


def retrying_for(seconds: float, work: Callable[[], T], on_failure: Callable[[str], None]) -> T:
    """``work()``, tried again with backoff for up to ``seconds`` while the object store fails."""
    deadline = time.monotonic() + seconds
    for attempt in itertools.count():
        try:
            return work()
        except ObjectStoreError as exc:
            if time.monotonic() >= deadline:
                raise
            on_failure(str(exc))
            time.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])


class BucketFlusher:
    """Checkpoints, index generations and deletions of one S3 backend; see the module docstring."""

    def __init__(self, backend: UploadingBackend):
        self.backend = backend
        self.copy_index: Callable[[int], None] | None = None  # attached by the store
        self._flush_lock = threading.Lock()  # one flush at a time: they all write the same index copy
        self._stop = threading.Event()
        self._watermark = 0.0  # removals before this are out of the latest index generation
        self._checkpointed: dict[int, tuple[int, int]] = {}  # open pack -> (size, version) last uploaded
        self._doomed: list[tuple[float, int]] = []  # (removed at, pack) whose object waits for deletion
        self._doomed_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._published: dict[str, str] | None = None  # published file -> its MD5 in the bucket
        self._publish_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chunkfs-bucket-flush", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the thread; one inside a request is left to it after ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        last_flush = time.monotonic()
        last_state = ""
        while not self._stop.wait(1.0):
            if time.monotonic() - last_flush >= self.backend.options.upload_interval:
                try:
                    self.flush(wait=False)
                except (ObjectStoreError, PackMissingError, PackIOError, OSError) as exc:
                    self.backend.note_failure(f"upload of the index copy failed: {exc}")
                last_flush = time.monotonic()
            try:
                self.delete_doomed()
            except (ObjectStoreError, OSError) as exc:
                self.backend.note_failure(f"deleting removed packs failed: {exc}")
            last_state = self.write_state(last_state)

    # -- flushing ------------------------------------------------------------------------

    def flush(self, wait: bool = True) -> dict:
        """Put everything in the bucket: sealed packs, the open pack as it is, then an index copy.

        ``wait``: block until every sealed pack is uploaded (ObjectStoreError
        if uploads make no progress for ``close_wait`` seconds); otherwise
        only the packs sealed when the index copy was taken are waited for.
        """
        if self.backend.readonly or self.copy_index is None:
            return {}
        with self._flush_lock:  # the background flush, 'chunkfs sync' and close would share index.copy
            if self.backend.closed:
                return {}
            done = self._flush(wait)
        if wait:
            self.write_state("")  # 'chunkfs stats' right after 'chunkfs sync' shows what sync did
        return done

    def _flush(self, wait: bool) -> dict:
        backend = self.backend
        started = time.time()
        index_path = os.path.join(backend.state_dir, "index.copy")
        changed = meta.copy_if_changed(self.copy_index, index_path, backend.state_dir)
        if not changed and not backend.waiting_uploads() and not self.doomed_count():
            return {"generation": None}
        open_packs, sealed = backend.local_packs()
        for pack in sorted(open_packs):
            self._retrying(lambda: self._checkpoint(pack))  # noqa: B023 (called at once)
        backend.wait_uploaded(sealed if not wait else None)
        if backend.closed:  # close gave up waiting for this flush
            return {"generation": None}
        generation = self._retrying(lambda: meta.upload_index(backend.bucket, index_path, backend.store_dir))
        with self._doomed_lock:
            self._watermark = started
        self.delete_doomed()
        return {"generation": generation}

    def _retrying(self, work: Callable[[], T]) -> T:
        return retrying_for(self.backend.options.close_wait, work, self.backend.note_failure)

    def _checkpoint(self, pack: int) -> None:
        """Upload the open pack as it is, unless this process uploaded it as it is already (a flush after
        a change of metadata only, such as the atime a read sets, does not send up to 64 MiB again)."""
        uploaded = self.backend.checkpoint(pack, self._checkpointed.get(pack))
        if uploaded is not None:
            self._checkpointed[pack] = uploaded

    def publish(self, names: Sequence[str]) -> None:
        """Upload the store directory's files ``names`` unless the bucket holds them already (by MD5).

        These are the compression dictionaries: the store publishes one before
        any record names it, so every pack object and index generation in the
        bucket only needs files that are there.  Retried with backoff for up to
        ``close_wait`` seconds while the object store fails; then
        ObjectStoreError, and the caller must not use them.
        """
        backend = self.backend
        if backend.readonly or not names:
            return
        with self._publish_lock:
            if self._published is None:
                self._published = self._retrying(lambda: meta.published_files(backend.bucket))
            for name in names:
                try:
                    with open(os.path.join(backend.store_dir, name), "rb") as fh:
                        data = fh.read()
                except OSError as exc:
                    raise PackIOError(f"cannot read {name} to upload it: {exc.strerror}") from None
                digest = md5_of(data)
                if self._published.get(name) != digest:
                    self._retrying(lambda: backend.bucket.put(meta.published_key(name), data))  # noqa: B023
                    self._published[name] = digest

    # -- deleting removed packs' objects --------------------------------------------------

    def doom(self, pack: int) -> None:
        """``pack`` was removed: delete its object (or one an upload may still make) when that is safe."""
        with self._doomed_lock:
            self._doomed.append((time.time(), pack))

    def doomed_count(self) -> int:
        with self._doomed_lock:
            return len(self._doomed)

    def delete_doomed(self, everything: bool = False) -> None:
        """Delete objects of removed packs that no index generation in the bucket still needs."""
        now = time.time()
        with self._doomed_lock:
            limit = self._watermark if self.copy_index is not None else now
            due = [(t, p) for t, p in self._doomed
                   if everything or (t < limit and now - t >= REMOVED_PACK_GRACE)]
        for item in due:
            self.backend.bucket.delete(pack_name(item[1]))
            with self._doomed_lock:
                self._doomed.remove(item)

    # -- what 'chunkfs stats' of a mounted store reads ---------------------------------------

    def write_state(self, last: str) -> str:
        """Write the backend's stats for ``chunkfs stats`` of a mounted store, if they changed since ``last``."""
        with self._state_lock:
            text = json.dumps(self.backend.stats(), sort_keys=True)
            if text != last:
                meta.write_atomically(os.path.join(self.backend.state_dir, STATE_NAME), text.encode())
            return text

    # -- closing -------------------------------------------------------------------------

    def final_flush(self) -> None:
        """close's flush of everything, waited for while the object store makes progress.

        A request the object store sits on cannot be interrupted, so the
        flush runs in a thread of its own, and the close goes on without it
        when it stalls: what was not uploaded stays on the local disk and
        goes first at the next open.
        """
        failed: list[BaseException] = []
        done = threading.Event()
        options = self.backend.options

        def flush_all() -> None:
            try:
                self.flush(wait=True)
                self.delete_doomed(everything=True)
            except (ObjectStoreError, PackMissingError, PackIOError, OSError) as exc:
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=flush_all, name="chunkfs-close-flush", daemon=True).start()
        started = time.monotonic()
        while not done.wait(0.5):
            if min(time.monotonic() - started, self.backend.bucket.idle()) > options.close_wait:
                failed.append(ObjectStoreError(f"{self.backend.location.describe()} made no progress for "
                                               f"{options.close_wait:.0f} s"))
                break
        if failed:
            log.warning("not everything reached the object store before closing: %s; what is left stays on the "
                        "local disk and is uploaded at the next open", failed[0])


def read_state(state_dir: str) -> dict:
    """The stats a mounted store's flusher wrote last (empty if none)."""
    try:
        with open(os.path.join(state_dir, STATE_NAME), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}
