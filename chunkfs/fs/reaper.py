"""Deleting detached trees in the background: what makes ``chunkfs rmtree`` return at once.

A tree is *detached* in one transaction: its top directory loses its name,
gets link count 0 and an orphan mark, like a directory removed while a
process still sits in it (the same transaction, so a crash leaves it either
named or detached).  From then on nothing can name it, and this module
deletes what is below it, bottom up, a page of entries per transaction, so
that requests through the mount get the write lock in between; each file's
inode and contents go as an unlinked file's do (``FsCore.orphaned``: at
once, or when the kernel forgets it or its last handle closes), which gives
its chunks' space back at once, and the background gc compacts the packs.
Partial copies (clone.py) are detached trees too.

A crash leaves the orphan mark of the top directory: the next mount finds
it among the orphans (``FsCore.purge_orphans``) and hands it here again.
"""

from __future__ import annotations

import logging
import threading
import time

import lmdb

from .namespace import Inode
from .rename import drop_link

log = logging.getLogger(__name__)

PAGE = 256  # entries removed per transaction


class TreeReaper:
    """One background thread deleting the detached trees it is given, one after the other."""

    def __init__(self, core):
        self.core = core
        self._queue: list[int] = []
        self._cond = threading.Condition()
        self._busy: int | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, root: int) -> None:
        """Delete the detached tree ``root`` (in the background: returns at once)."""
        with self._cond:
            if self._stopping or root in self._queue or root == self._busy:
                return
            self._queue.append(root)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="chunkfs-reaper", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (self._busy is not None)

    def wait(self, root: int, should_stop=lambda: False) -> bool:
        """Wait until the tree ``root`` is deleted; False if stopped first (unmount, or ``should_stop()``)."""
        with self._cond:
            while root in self._queue or root == self._busy:
                if self._stopping or should_stop():
                    return False
                self._cond.wait(0.2)
        return True

    def stop(self) -> None:
        """Stop after the current page; what is left stays detached for the next mount."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping or not self._queue:
                    self._busy = None
                    self._cond.notify_all()
                    return
                root = self._busy = self._queue.pop(0)
            try:
                started, removed = time.monotonic(), self._reap(root)
                if removed is not None:
                    log.info("deleted a detached tree of %d entries in %.1f s", removed, time.monotonic() - started)
            except Exception:  # noqa: BLE001 (logged; the next mount tries again)
                log.exception("could not delete the detached tree of inode %d; the next mount tries again", root)
            with self._cond:
                self._busy = None
                self._cond.notify_all()

    def _stopped(self) -> bool:
        with self._cond:
            return self._stopping

    def _reap(self, root: int) -> int | None:
        """Empty ``root`` bottom up, then purge it; the number of entries removed (None if stopped)."""
        stack, removed = [root], 0
        while stack:
            if self._stopped():
                return None
            directory = stack[-1]
            with self.core.store.read_txn() as txn:
                page = [(e, self.core.ns.get(txn, e.ino)) for e in self.core.ns.entries(txn, directory, limit=PAGE)]
                full = [e.ino for e, child in page
                        if child is not None and child.is_dir and not self.core.ns.is_empty(txn, e.ino)]
            if full:
                stack.append(full[0])  # empty that one first
                continue
            if not page:
                stack.pop()
                continue
            gone = self.core.store.write_txn(lambda txn: (self._remove_page(txn, directory, page), []), frees=True)
            removed += len(page)
            for ino in gone:
                self.core.orphaned(ino)
        self.core.purge_if_unreachable(root)
        return removed

    def _remove_page(self, txn: lmdb.Transaction, directory: int, page: list) -> list[int]:
        """Remove the entries of ``page`` still there (directories only if empty); inodes left without a name."""
        ns = self.core.ns
        parent = ns.get(txn, directory)
        if parent is None:
            return []
        now = time.time_ns()
        gone = []
        for entry, _ in page:
            current = ns.lookup(txn, directory, entry.name)
            if current is None or current.ino != entry.ino:
                continue  # renamed or replaced meanwhile: the next pass sees what is there now
            child = ns.get(txn, entry.ino)
            if child is None:  # an entry naming nothing (damage): drop it, or this page would come back forever
                ns.unlink(txn, directory, current)
                continue
            if child.is_dir and not ns.is_empty(txn, child.ino):
                continue  # filled meanwhile: the next pass descends into it
            ns.unlink(txn, directory, current)
            parent.nlink -= child.is_dir if parent.nlink else 0
            drop_link(ns, txn, child, now)
            if child.nlink == 0:
                gone.append(child.ino)
        ns.put(txn, parent)
        return gone


def is_detached_dir(inode: Inode) -> bool:
    """A directory with no name left (removed, or the top of a detached tree)."""
    return inode.is_dir and inode.nlink == 0
