"""A file being written front to back, chunked and stored while its bytes arrive.

``FileData`` (openfile.py) hands appends to a ``ChunkStream``; a pump thread
cuts, hashes and puts the chunks (pinned) in the store, so committing the file
only has to cut its last chunk and nothing is written twice.
"""

from __future__ import annotations

import collections
import logging
import threading

from ..chunker import make_chunker
from ..errors import StoreFullError, WouldBlock
from ..pools import LazyPool
from ..store import TO_END, ChunkRef, ChunkStore

log = logging.getLogger(__name__)

_PUMPS = LazyPool(2, "chunkfs-stream")  # the threads that store streamed writes, shared by all files


class ChunkStream:
    """Chunks of a run ``[start, end)`` written front to back, put and pinned as they complete.

    A write only hands its bytes over (``submit``): chunking, hashing and the
    pack append run in a background *pump*, so the kernel can already copy
    the next write request while this one is being stored, and a writer of
    a big file pays roughly the slower of the two, not their sum.  At most
    ``INBOX_LIMIT`` bytes wait for the pump; a writer that gets further ahead
    waits for it.

    Chunks the chunker has cut but the store could not take yet (a full
    disk) wait in ``backlog``: the bytes were accepted, so they must not be
    lost, and the error surfaces at the next write or at commit, like delayed
    allocation in any filesystem.  Whoever looks at or changes the stream's
    state other than by ``submit`` calls ``quiesce`` first, which waits until
    the pump is idle.
    """

    INBOX_LIMIT = 8 * 1024 * 1024
    TURN = 8  # blocks a pump stores before it lets other files' pumps have the thread

    def __init__(self, store: ChunkStore, start: int):
        self.store = store
        self.start = start
        self.end = start  # just past the last byte accepted
        self.kept_from = TO_END  # a rewrite's commit: where the file's committed chunks are kept again
        self.rewritten_end: int | None = None  # a rewrite's commit: where the bytes written end
        self.refs: list[ChunkRef] = []
        self.chunked_end = start  # end of the last chunk put in the store
        self.chunker = make_chunker(store.settings)
        self.offsets: list[int] = []  # start offset of each ref, for reads
        self.backlog: list[bytes] = []
        self._inbox: collections.deque[bytes] = collections.deque()
        self._inbox_bytes = 0
        self._pumping = False
        self._cond = threading.Condition()

    # -- the writer's side ------------------------------------------------------

    def submit(self, data: bytes, nowait: bool = False) -> None:
        """Accept ``data`` (the next bytes of the run); store it now or in the pump.

        With ``nowait``, WouldBlock (before accepting anything) rather than
        wait for the pump to make room in the inbox.
        """
        with self._cond:
            idle = not self._pumping and not self.backlog and not self._inbox
            if idle and self.chunker.pending + len(data) < self.chunker.ready_at:
                self.chunker.feed(data)  # it only buffers: cheaper than a hand-over
                self.end += len(data)
                return
            if nowait and self._inbox_bytes >= self.INBOX_LIMIT and self._pumping:
                raise WouldBlock("the stream's pump is behind")
            while self._inbox_bytes >= self.INBOX_LIMIT and self._pumping:
                self._cond.wait()
            self.end += len(data)
            self._inbox.append(data)
            self._inbox_bytes += len(data)
            if not self._pumping:
                self._pumping = True
                _PUMPS.submit(self._pump)

    def quiesce(self) -> None:
        """Wait until everything submitted has been chunked (and put, unless the disk is full)."""
        with self._cond:
            while self._pumping:
                self._cond.wait()

    def _pump(self) -> None:
        """Feed and put what the writer submitted, in order, until the inbox is empty.

        A failure (a full disk, an IO error) stops it with the unput chunks
        kept in ``backlog``; the writer's next call retries them itself and
        gets the error if it persists (``check``).  After ``TURN`` blocks it
        queues itself again behind the other files' pumps, so that a writer
        that never pauses cannot keep a pool thread from every other file.
        """
        for _ in range(self.TURN):
            with self._cond:
                if not self._inbox or self.backlog:
                    self._pumping = False
                    self._cond.notify_all()
                    return
                data = self._inbox.popleft()  # readers and committers wait for the pump: none sees it gone
                self._inbox_bytes -= len(data)
                self._cond.notify_all()
            try:
                self.backlog.extend(self.chunker.feed(data))
                self.drain()
            except StoreFullError:
                log.info("%d streamed chunks wait for disk space", len(self.backlog))
            except Exception:  # noqa: BLE001 (the chunks stay in backlog; check() raises it again)
                log.debug("storing streamed chunks failed; retried at the next call", exc_info=True)
        _PUMPS.submit(self._pump)  # still pumping: its turn ended

    def check(self, nowait: bool = False) -> None:
        """Before accepting more: if the pump stopped on a failure, retry now and raise if it persists.

        With ``nowait``, WouldBlock instead of the retry (it stores chunks).
        """
        with self._cond:
            if not self._pumping and self.backlog:
                if nowait:
                    raise WouldBlock("streamed chunks wait to be stored")
                self.drain()

    # -- under quiesce ------------------------------------------------------------

    def feed_now(self, data: bytes | memoryview) -> None:
        """Chunk and put ``data`` (the next bytes of the run) in this thread: bytes the run starts with."""
        self.backlog.extend(self.chunker.feed(data))
        self.end += len(data)
        self.drain()

    def drain(self) -> None:
        """Put backlogged chunks, then chunk and put what still waits in the inbox; raises on failure."""
        while True:
            if self.backlog:
                self.refs += self.store.put_chunks(self.backlog)
                for chunk in self.backlog:
                    self.offsets.append(self.chunked_end)
                    self.chunked_end += len(chunk)
                self.backlog = []
            if self._pumping or not self._inbox:
                return
            data = self._inbox.popleft()
            self._inbox_bytes -= len(data)
            self.backlog.extend(self.chunker.feed(data))

    def unput(self) -> bytes:
        """Bytes accepted but not yet in the store, in file order (for reads)."""
        tail = self.chunker.peek() if self.chunker is not None else b""
        return b"".join(self.backlog) + tail + b"".join(self._inbox)

    def finish(self) -> None:
        self.drain()
        if self.chunker is not None:
            self.backlog.extend(self.chunker.finish())
            self.chunker = None
        self.drain()
