"""Open regular files: file handles, one shared FileData per inode, and commits.

Every handle of one inode shares one :class:`OpenInode`, which owns the
inode's ``FileData`` (the data path in openfile.py) and the time of its last
uncommitted change.  Reads and writes go straight to the FileData; a commit
(on flush, fsync, release and shutdown) chunks what is dirty and, in the same
LMDB transaction as the new manifest, stores the inode's size and times, so a
crash never leaves a size that disagrees with the contents.

Data calls may block (disk IO, hashing) and then run in worker threads, so
this table is guarded by a lock; the FileData guards its own bytes, and
decides whether a call may run on the event loop (``nowait``).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lmdb

from ..errors import ChunkfsError, FSError, WouldBlock
from .namespace import Namespace

log = logging.getLogger(__name__)


@dataclass(eq=False)
class OpenInode:
    """What all handles of one inode share."""

    ino: int
    data: object  # a FileData
    handles: int = 0
    writers: int = 0
    changed_ns: int | None = None  # time of the last uncommitted write or truncate
    changes: int = 0  # bumped on every change, so a commit clears only the times it stored
    unlinked: bool = False  # no name left: contents die with the last handle, never commit them
    holey: bool = False  # at its last commit the file had holes (st_blocks below its size: fs/blocks.py)


@dataclass(eq=False)
class Handle:
    fh: int
    flags: int
    inode: OpenInode
    writable: bool = field(init=False)

    def __post_init__(self) -> None:
        self.writable = (self.flags & os.O_ACCMODE) != os.O_RDONLY


FileDataFactory = Callable[[object, int, int], object]  # (store, ino, committed size) -> FileData


class OpenFiles:
    """The table of open regular files and the data operations on them."""

    def __init__(self, store, namespace: Namespace, factory: FileDataFactory):
        self.store = store
        self.ns = namespace
        self.factory = factory
        self.lock = threading.RLock()
        self._handles: dict[int, Handle] = {}
        self._inodes: dict[int, OpenInode] = {}
        self._next_fh = 1
        self._stale: set[int] = set()  # written since their last open: page cache must be dropped

    # -- the table -------------------------------------------------------------------

    def open(self, ino: int, flags: int, committed_size: Callable[[], int]) -> tuple[Handle, bool]:
        """A new handle on ``ino``; also says whether the kernel may keep its cached pages."""
        with self.lock:
            oi = self._inodes.get(ino)
            if oi is None:
                oi = OpenInode(ino, self.factory(self.store, ino, committed_size()))
                # commits the FileData makes on its own (a stream broken by a random
                # write) must store the inode's size in the same transaction too
                oi.data.on_commit = lambda txn, oi=oi: self._persist(txn, oi)
                self._inodes[ino] = oi
            handle = Handle(self._next_fh, flags, oi)
            self._next_fh += 1
            self._handles[handle.fh] = handle
            oi.handles += 1
            oi.writers += handle.writable
            keep_cache = not handle.writable and oi.writers == 0 and ino not in self._stale
            self._stale.discard(ino)
            return handle, keep_cache

    def handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FSError(errno.EBADF) from None

    def inode(self, ino: int) -> OpenInode | None:
        return self._inodes.get(ino)

    def is_open(self, ino: int) -> bool:
        return ino in self._inodes

    def mark_unlinked(self, ino: int) -> None:
        with self.lock:
            oi = self._inodes.get(ino)
            if oi is not None:
                oi.unlinked = True

    def forget_times(self, ino: int) -> None:
        """An explicit utimens wins over the time of earlier uncommitted writes."""
        with self.lock:
            oi = self._inodes.get(ino)
            if oi is not None:
                oi.changed_ns = None

    def overlay(self, ino: int) -> tuple[int, int | None] | None:
        """(current size, time of uncommitted change) of an open inode, else None."""
        oi = self._inodes.get(ino)
        if oi is None:
            return None
        return oi.data.size, oi.changed_ns

    def all_open(self) -> list[OpenInode]:
        with self.lock:
            return list(self._inodes.values())

    # -- data (may block, unless called with nowait: see FileData) -------------------

    def read(self, fh: int, offset: int, length: int, nowait: bool = False, around=None) -> bytes | memoryview:
        """FileData.read; ``around`` is dropped while anyone can write the file (its chunks may change)."""
        oi = self.handle(fh).inode
        if oi.writers or oi.unlinked:
            around = None
        return oi.data.read(offset, length, nowait, around)

    def write(self, fh: int, offset: int, data: bytes, nowait: bool = False) -> int:
        handle = self.handle(fh)
        if not handle.writable:
            raise FSError(errno.EBADF)
        written = handle.inode.data.write(offset, data, nowait)
        self._changed(handle.inode)
        return written

    def truncate(self, oi: OpenInode, size: int) -> None:
        oi.data.truncate(size)
        self._changed(oi)

    def _changed(self, oi: OpenInode) -> None:
        with self.lock:
            oi.changed_ns = time.time_ns()
            oi.changes += 1
            self._stale.add(oi.ino)

    def commit(self, oi: OpenInode, nowait: bool = False) -> None:
        """Commit the inode's dirty data with its size and times; errors propagate (flush, fsync)."""
        if oi.unlinked:
            return
        with self.lock:
            changes, changed_ns = oi.changes, oi.changed_ns

        def persist(txn: lmdb.Transaction) -> None:
            self._persist(txn, oi)

        if not oi.data.commit(persist, nowait) and changed_ns is not None:
            self.store.write_txn(lambda txn: (persist(txn), []))
        with self.lock:
            if oi.changes == changes:
                oi.changed_ns = None

    def _persist(self, txn: lmdb.Transaction, oi: OpenInode) -> None:
        """Store the inode's size and change times inside a data commit's transaction.

        The pending write time is read here, inside the transaction, not when
        the commit began: an explicit utimens clears it before its own
        transaction, and transactions are serialized, so a commit that started
        earlier (say, the release of another handle) cannot overwrite the
        time rsync or ``cp -p`` just set.
        """
        changed_ns = oi.changed_ns
        data_bytes = self.store.data_bytes(oi.data.file_id, txn)
        oi.holey = data_bytes < oi.data.size
        inode = self.ns.get(txn, oi.ino)
        if inode is not None:
            inode.size = oi.data.size
            inode.note_density(data_bytes)
            if changed_ns is not None:
                inode.mtime_ns = changed_ns
                inode.ctime_ns = max(inode.ctime_ns, changed_ns)
            self.ns.put(txn, inode)

    def release(self, fh: int, nowait: bool = False) -> OpenInode | None:
        """Drop a handle after a best-effort commit; returns its OpenInode if that was the last handle.

        The commit happens before the handle leaves the table, so an open()
        racing with this release attaches to the same FileData rather than
        building a second one over not-yet-committed contents.  With
        ``nowait``, WouldBlock (before anything changes) unless that commit,
        and the purge of an unlinked file's contents after it, are cheap.
        """
        handle = self.handle(fh)
        oi = handle.inode
        if nowait and not oi.data.cheap_to_close(purge=oi.unlinked):
            raise WouldBlock(f"inode {oi.ino}: closing it takes a while")
        self._commit_logged(oi)
        with self.lock:
            del self._handles[fh]
            oi.handles -= 1
            oi.writers -= handle.writable
            if oi.handles:
                return None
            del self._inodes[oi.ino]
            self._close_data(oi)  # under the lock: a new open of this inode waits for it
        return oi

    def _commit_logged(self, oi: OpenInode) -> None:
        try:
            self.commit(oi)
        except ChunkfsError as exc:
            log.error("inode %d: could not commit its data at release (%s); the changes are lost", oi.ino, exc)
        except Exception:
            log.exception("inode %d: could not commit its data at release; the changes are lost", oi.ino)

    def _close_data(self, oi: OpenInode) -> None:
        """Last handle gone: drop what could not be committed and close the FileData."""
        try:
            if oi.unlinked or oi.data.dirty:
                oi.data.discard()
            oi.data.close()
        except Exception:
            log.exception("inode %d: could not close its staged data", oi.ino)

    def commit_all(self) -> None:
        """At shutdown: commit every open inode, logging failures, and close them all."""
        for oi in self.all_open():
            self._commit_logged(oi)
            with self.lock:
                for fh in [fh for fh, h in self._handles.items() if h.inode is oi]:
                    del self._handles[fh]
                self._inodes.pop(oi.ino, None)
                self._close_data(oi)
