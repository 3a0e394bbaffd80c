"""Chunking behind the writer (``-o chunking=behind``): a big file's changes are staged raw and chunked later.

Why: storing a chunk costs FastCDC, SHA-256, compression and a pack append
before the bytes count as written; for a new 1 GiB file that chain takes
about twice as long as a plain passthrough's whole write (docs/benchmarks.md,
"Sequential writes are bound by the pump's chain").  Staging the raw bytes
costs what the passthrough's own write costs.  So with this mode a file
larger than ``SMALL_FILE`` keeps its changes in its staging file (the
overlay of openfile.py), and close and fsync answer once the changes are
*recorded*, not chunked:

* ``close``: a staged record (this module's table in the index: the file's
  size, how much of its committed contents still holds, and the ranges
  changed over it) is committed in one LMDB transaction.  After ``kill -9``
  the next mount finds the record and the staging file's bytes (the page
  cache kept them) and commits the file (``replay_staged``).
* ``fsync``: the staging file is flushed (``fdatasync``) before the record is
  committed, then the index is flushed: the same replay works after a power
  loss.  Staging before record, as the store keeps blob before index.
* The committer thread (:class:`Committer`) chunks and commits the file soon
  after: at once after its last close, and while it stays open, at most
  ``QUIET`` seconds after it was first staged.  The commit deletes the record
  in its own transaction, so a record never outlives the changes it names.

What a user sees differently: nothing in the file's bytes or attributes;
``chunkfs stats`` counts a file's new contents once the committer has stored
them, and ``chunkfs sync``, clones and snapshots first commit every staged
file.  A file closed but never fsync'ed may, after a power loss (not after
``kill -9``), come back with zeros where its last writes were, as on ext4 with
delayed allocation: its record may reach the disk before its staging bytes.
Small files (untar, rsync of a source tree) are committed at close as in the
default mode: a staging file and a record each would cost them more than the
commit they save.
"""

from __future__ import annotations

import heapq
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import lmdb

from ..store import FsTables

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNKING_MODES = ("inline", "behind")
STAGED = struct.Struct(">QQQ")  # size, base limit, committed size; then the changed ranges
RANGE = struct.Struct(">QQ")  # start, end
KEY = struct.Struct(">Q")  # ino


@dataclass
class StagedState:
    """An open file's changes as a staged record describes them: enough to rebuild its contents from the base."""

    size: int
    base_limit: int  # committed bytes at or past this were truncated away
    committed: int  # size of the base the ranges apply to (the manifest in the index)
    ranges: list[tuple[int, int]] = field(default_factory=list)  # changed bytes, in the staging file

    def encode(self) -> bytes:
        return STAGED.pack(self.size, self.base_limit, self.committed) + \
            b"".join(RANGE.pack(lo, hi) for lo, hi in self.ranges)

    @classmethod
    def decode(cls, raw: bytes) -> "StagedState":
        size, base_limit, committed = STAGED.unpack_from(raw)
        ranges = [RANGE.unpack_from(raw, at) for at in range(STAGED.size, len(raw), RANGE.size)]
        return cls(size, base_limit, committed, ranges)


def put_record(txn: lmdb.Transaction, tables: FsTables, ino: int, state: StagedState) -> None:
    txn.put(KEY.pack(ino), state.encode(), db=tables.staged)


def drop_record(txn: lmdb.Transaction, tables: FsTables, ino: int) -> None:
    if tables.staged is not None:
        txn.delete(KEY.pack(ino), db=tables.staged)


def records(tables: FsTables) -> list[tuple[int, StagedState]]:
    """Every staged record, by inode (at mount: what a crash left to replay)."""
    if tables.staged is None:
        return []
    with tables.read() as txn:
        return [(KEY.unpack(key)[0], StagedState.decode(bytes(value))) for key, value in txn.cursor(db=tables.staged)]


class Committer(Generic[T]):
    """The thread that commits staged files, each at the time it is due.

    ``commit(item)`` does the work and raises if it failed (a full disk, an
    IO error): the item is tried again after a growing pause, since its
    changes are safe in the staging file meanwhile and must not be lost.
    One thread: the commits are CPU-bound and hold the GIL for FastCDC, and
    two at once would only take turns.
    """

    QUIET = 2.0  # seconds an open file's staged changes may wait before they are chunked
    RETRY = (1.0, 5.0, 30.0)  # pauses after the first, second and later failures of one item

    def __init__(self, commit: Callable[[T], None]):
        self._commit = commit
        self._cond = threading.Condition()
        self._due: dict[int, float] = {}  # key (an inode) -> when it is due
        self._items: dict[int, T] = {}
        self._failures: dict[int, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    def schedule(self, key: int, item: T, delay: float = 0.0) -> None:
        """Commit ``item`` (known by ``key``) in ``delay`` seconds, or earlier if it is already due earlier."""
        due = time.monotonic() + delay
        with self._cond:
            if self._stopping or self._due.get(key, due + 1) <= due:
                return
            self._due[key], self._items[key] = due, item
            heapq.heappush(self._heap, (due, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chunkfs-committer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._due)

    def stop(self) -> None:
        """Stop after the commit under way; what is left is the caller's (FsCore.close commits it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _next(self) -> tuple[int, T] | None:
        with self._cond:
            while not self._stopping:
                while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier time, or done
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is not None and wait <= 0:
                    _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key, self._items.pop(key)
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            key, item = job
            try:
                self._commit(item)
                self._failures.pop(key, None)
            except Exception as exc:  # noqa: BLE001 (kept staged and retried: nothing is lost)
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                pause = self.RETRY[min(failures, len(self.RETRY)) - 1]
                log.warning("committing staged writes failed (%s); trying again in %.0f s", exc, pause)
                self.schedule(key, item, pause)
