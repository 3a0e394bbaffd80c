"""Read-around: pushing the rest of a just-verified chunk into the kernel's page cache.

A 4 KiB random read of a file in the mount costs the daemon a whole chunk
(~41 KiB on average): it has to be read from its pack and verified before any
byte of it may be returned.  The kernel only keeps the pages it asked for, so
the next read in the same chunk makes the round trip again.  After such a
read the adapter offers the chunk's other pages to a :class:`PagePusher`,
whose thread hands them to the kernel (FUSE_NOTIFY_STORE); nearby reads then
never leave the kernel.

Two hazards decide the shape of this module:

* **Deadlock.**  The kernel stores the pages with each page locked, and a
  page stays locked while a read or write request for it waits for the
  daemon.  A push made on the event loop could wait for a request that only
  the event loop can answer, so pushes run in their own thread.
* **Stale pages.**  A push of bytes read before a write would overwrite what
  the write put in the cache.  Pages are only offered for files nobody can
  write (FsCore.pages_around), and :meth:`PagePusher.hold` keeps a file's
  pushes out from the moment a writer starts to open it (or a truncate
  starts) until it is done, after waiting for the pushes already queued.
  Every change to a file's bytes comes through a writable handle or a
  truncate, so no push can land after a change began.

Pushing is best effort: a full queue drops the offer, and an error (the
kernel forgot the inode, the mount is going away) only skips that push.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from .errors import ChunkfsError

log = logging.getLogger(__name__)

Push = Callable[[int, int, "bytes | memoryview"], None]  # (inode, offset, bytes): pyfuse3.notify_store
Extent = Callable[[], "tuple[int, bytes | memoryview] | None"]  # (offset, bytes) to push, made in the thread
BATCH = 16  # offers handed to the thread at once: waking it for each one cost more than the pushes saved
MAX_QUEUED = 64  # offers beyond this are dropped: a burst of reads must not build a backlog
MAX_REMEMBERED = 4096  # inodes remembered with their last batch before the finished ones are forgotten


@dataclass
class PusherStatistics:
    offered: int
    pushed: int
    pushed_bytes: int
    dropped: int
    failed: int


class PagePusher:
    """One thread that pushes page extents into the kernel's cache, and the writers' barrier.

    ``offer``, ``hold`` and ``close`` belong to one thread (the event loop;
    ``close`` after it ended), so what they share needs no lock: the batch
    being filled, which batch last carried each inode, the holds.  The push
    thread only reports the number of the last batch it finished.  Offers go
    over in numbered batches, and a hold waits until the batch that last
    carried its inode is done.
    """

    def __init__(self, push: Push):
        self._push = push
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # the event loop's side
        self._batch: list[tuple[int, Extent]] = []  # offers not yet handed to the thread
        self._sent = 0  # number of the last batch handed over
        self._offers_sent = 0  # offers in all batches handed over
        self._last_batch: dict[int, int] = {}  # inode -> number of the last batch that carried it
        self._held: Counter[int] = Counter()  # inode -> writers opening or truncates running
        self._offered = self._dropped = 0
        # the push thread's side, read by the loop
        self._done = threading.Condition()
        self._finished = 0  # number of the last batch the thread finished
        self._offers_finished = 0
        self._pushed = self._pushed_bytes = self._failed = 0

    def offer(self, ino: int, extent: Extent) -> None:
        """Queue ``extent()`` to be pushed for ``ino``; never blocks the event loop."""
        queued = len(self._batch) + self._offers_sent - self._offers_finished
        if self._stopping or self._held[ino] or queued >= MAX_QUEUED:
            self._dropped += 1
            return
        self._offered += 1
        self._batch.append((ino, extent))
        self._last_batch[ino] = self._sent + 1
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """Hand the batch to the thread; starts the thread the first time."""
        if not self._batch:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="chunkfs-readaround", daemon=True)
            self._thread.start()
        self._sent += 1
        self._offers_sent += len(self._batch)
        if len(self._last_batch) > MAX_REMEMBERED:  # forget inodes whose pushes are all done
            finished = self._finished
            self._last_batch = {ino: n for ino, n in self._last_batch.items() if n > finished}
        self._jobs.put((self._sent, self._batch))
        self._batch = []

    @contextlib.asynccontextmanager
    async def hold(self, ino: int) -> AsyncIterator[None]:
        """No push for ``ino`` lands while this is held: for an open for writing, or a truncate."""
        self._held[ino] += 1
        try:
            last = self._last_batch.get(ino, 0)
            if last > self._sent:
                self._flush()
            if last > self._finished:
                await trio.to_thread.run_sync(self._wait_finished, last)
            yield
        finally:
            self._held[ino] -= 1
            if not self._held[ino]:
                del self._held[ino]

    def _wait_finished(self, number: int) -> None:
        with self._done:
            self._done.wait_for(lambda: self._finished >= number)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, skipping queued pushes; call after the request loop ended, before unmounting.

        A push under way can only be waiting for a page that a request the
        loop never answered keeps locked (the loop was stopped by a signal
        while a read was queued).  The unmount that follows ends those
        requests, so after ``timeout`` this gives up waiting and says so.
        """
        self._stopping = True
        self._batch = []
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("a read-around push is still waiting for the kernel; unmounting anyway")
            self._thread = None

    def statistics(self) -> PusherStatistics:
        return PusherStatistics(self._offered, self._pushed, self._pushed_bytes, self._dropped, self._failed)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            number, batch = job
            pushed = pushed_bytes = failed = 0
            for ino, extent in batch:
                if self._stopping:
                    break
                done = self._run(ino, extent)
                if done is None:
                    failed += 1
                else:
                    pushed += done > 0
                    pushed_bytes += done
            with self._done:
                self._pushed += pushed
                self._pushed_bytes += pushed_bytes
                self._failed += failed
                self._offers_finished += len(batch)
                self._finished = number
                self._done.notify_all()

    def _run(self, ino: int, extent: Extent) -> int | None:
        """Bytes pushed (0: nothing to push), or None if the push failed."""
        try:
            found = extent()
            if found is None:
                return 0
            offset, data = found
            self._push(ino, offset, data)
            return len(data)
        except (ChunkfsError, OSError) as exc:  # the kernel forgot the inode, the mount is going away, ...
            log.debug("inode %d: pages not pushed: %s", ino, exc)
        except Exception:  # noqa: BLE001 (a bug here must not kill the thread; it is logged)
            log.exception("inode %d: pushing pages failed", ino)
        return None
