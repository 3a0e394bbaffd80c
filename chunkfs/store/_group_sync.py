"""Syncs in groups: an fsync costs what was committed since the last one, once per round of callers.

Why: applications fsync far more often than they change anything (SQLite
fsyncs its journal and its database, git every object, an editor on every
save), and a flush of the disk costs a millisecond or more whether or not
anything new is in it.  So a sync asks LMDB's own transaction counter what
is committed and flushes only if it moved since the last sync: no commit
path has to report here.  Callers that arrive while a flush is under way
wait for it and share the next one (group commit), so an fsync storm costs
one flush per round, not one per call.

Locks, in the order they are taken: ``_done`` (this object's condition),
released before any flush starts; then, inside a flush, the store's lock
(appends and commits) only for as long as _synclog reads and logs a pack's
tail.  Only one flush runs at a time (``_syncing``); a caller that finds one
running waits on ``_done`` and never flushes concurrently with it.
"""

from __future__ import annotations

import collections
import threading
import time

from . import _synclog as synclog
from ._index import Index
from ._packs import PackFiles
from ..errors import WouldBlock


class GroupSync:
    """Makes everything committed so far survive power loss: packs first, then the index."""

    def __init__(self, index: Index, packs: PackFiles, store_lock: threading.RLock):
        self.index = index
        self.packs = packs
        self.store_lock = store_lock
        self._done = threading.Condition()
        self._syncing = False
        self._synced_txn = -2  # the transaction the last sync made durable (none yet: the first always flushes)
        self._flushed_at: collections.deque[float] = collections.deque(maxlen=2)  # when the last syncs ended

    @property
    def busy(self) -> bool:
        """Whether a flush is under way now."""
        return self._syncing

    def sync(self, nowait: bool = False, full: bool = False) -> None:
        """Flush what was committed since the last sync; with ``full``, also the packs, emptying the sync log.

        In a run of syncs (an application that fsyncs after every change),
        when only a short tail of the active pack is new, that tail is
        written into the index and one flush of the index makes both durable
        (_synclog.py).  With ``nowait``, WouldBlock instead of flushing or
        waiting for a flush.
        """
        want = self.index.last_txn()
        with self._done:
            if nowait and self._synced_txn < want:
                raise WouldBlock("a sync would flush the disk")
            while self._syncing and (full or self._synced_txn < want):
                self._done.wait()
            if self._synced_txn >= want and not full:
                return
            self._syncing = True
        upto, ok = None, False
        try:
            if not full and self.packs.backend.logged_sync and self._in_a_run():
                upto = synclog.sync_by_log(self.index, self.packs, self.store_lock)
            if upto is None:
                upto = synclog.sync_all(self.index, self.packs)
            ok = True
        finally:
            with self._done:
                self._syncing = False
                if ok:
                    self._synced_txn = max(self._synced_txn, upto)
                    self._flushed_at.append(time.monotonic())
                self._done.notify_all()

    def _in_a_run(self) -> bool:
        """Whether the two syncs before this one ended within RUN_GAP: a lone sync flushes both files."""
        return len(self._flushed_at) == 2 and time.monotonic() - self._flushed_at[0] <= synclog.RUN_GAP
