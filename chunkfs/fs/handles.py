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

Chunking behind the writer (fs/behind.py) changes when a big file commits:
its flush, fsync and last release record its changes instead (``stage``),
and the committer thread commits it afterwards.  Until then the inode stays
in this table with no handle, so an open, a stat or a read finds its
current contents, and an unlink drops them.
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
from ..store import ChunkStore
from . import behind
from .behind import Committer, StagedState
from .namespace import Namespace
from .openfile import FileData

log = logging.getLogger(__name__)


@dataclass(eq=False)
class OpenInode:
    """What all handles of one inode share."""

    ino: int
    data: FileData
    handles: int = 0
    writers: int = 0
    changed_ns: int | None = None  # time of the last uncommitted write or truncate
    changes: int = 0  # bumped on every change, so a commit clears only the times it stored
    unlinked: bool = False  # no name left: contents die with the last handle, never commit them
    holey: bool = False  # at its last commit the file had holes (st_blocks below its size: fs/blocks.py)
    staged: bool = False  # it was staged (fs/behind.py): its commits drop its record, if one is left


@dataclass(eq=False)
class Handle:
    fh: int
    flags: int
    inode: OpenInode
    writable: bool = field(init=False)

    def __post_init__(self) -> None:
        self.writable = (self.flags & os.O_ACCMODE) != os.O_RDONLY


FileDataFactory = Callable[[ChunkStore, int, int], FileData]  # (store, ino, committed size) -> FileData


class OpenFiles:
    """The table of open regular files and the data operations on them."""

    def __init__(self, store: ChunkStore, namespace: Namespace, factory: FileDataFactory, chunk_behind: bool = False,
                 on_closed: Callable[[OpenInode], None] | None = None):
        self.store = store
        self.ns = namespace
        self.factory = factory
        self.chunk_behind = chunk_behind and not store.readonly and store.fs_tables.staged is not None
        self.committer: Committer[OpenInode] | None = Committer(self.settle) if self.chunk_behind else None
        self.on_closed = on_closed  # an inode left the table after its last handle (the core purges the unlinked)
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
                oi = self._inodes[ino] = self._new_inode(ino, committed_size())
            handle = Handle(self._next_fh, flags, oi)
            self._next_fh += 1
            self._handles[handle.fh] = handle
            oi.handles += 1
            oi.writers += handle.writable
            keep_cache = not handle.writable and oi.writers == 0 and ino not in self._stale
            self._stale.discard(ino)
            return handle, keep_cache

    def _new_inode(self, ino: int, committed_size: int) -> OpenInode:
        oi = OpenInode(ino, self.factory(self.store, ino, committed_size))
        # commits the FileData makes on its own (a stream broken by a random
        # write) must store the inode's size in the same transaction too
        oi.data.on_commit = lambda txn, oi=oi: self._persist(txn, oi)
        oi.data.behind = self.chunk_behind
        return oi

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
                if not oi.handles and self.committer is not None:
                    self.committer.schedule(ino, oi)  # waiting to be committed: drop it now instead

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

    def flush(self, oi: OpenInode, durable: bool = False, nowait: bool = False) -> None:
        """close(2) or, with ``durable``, fsync(2): commit, or when chunking behind the writer, stage.

        A staged file is committed by the committer thread: at once once its
        last handle is gone, within Committer.QUIET seconds while it stays open.
        """
        if not self._stage(oi, durable, nowait):
            self.commit(oi, nowait)
        elif self.committer is not None:
            self.committer.schedule(oi.ino, oi, Committer.QUIET)

    def _stage(self, oi: OpenInode, durable: bool, nowait: bool = False) -> bool:
        """Record the inode's changes (and its times) in one transaction instead of committing; see fs/behind.py."""
        if not self.chunk_behind or oi.unlinked:
            return False
        tables = self.store.fs_tables

        def record(state: StagedState) -> None:
            def put(txn: lmdb.Transaction) -> None:
                behind.put_record(txn, tables, oi.ino, state)
                self._persist(txn, oi, size=False)

            self.store.write_txn(lambda txn: (put(txn), []))
            oi.staged = True

        return oi.data.stage(record, durable, nowait)

    def _persist(self, txn: lmdb.Transaction, oi: OpenInode, size: bool = True) -> None:
        """Store the inode's size and change times inside a data commit's transaction.

        Without ``size``, the times only (a staged record's transaction: the
        size follows the contents, which the commit stores).  A commit also
        drops the inode's staged record, if it has one: it stores every change.

        The pending write time is read here, inside the transaction, not when
        the commit began: an explicit utimens clears it before its own
        transaction, and transactions are serialized, so a commit that started
        earlier (say, the release of another handle) cannot overwrite the
        time rsync or ``cp -p`` just set.
        """
        changed_ns = oi.changed_ns
        inode = self.ns.get(txn, oi.ino)
        if size:
            if oi.staged:
                behind.drop_record(txn, self.store.fs_tables, oi.ino)
            data_bytes = self.store.data_bytes(oi.data.file_id, txn)
            oi.holey = data_bytes < oi.data.committing_size
            if inode is not None:
                inode.size = oi.data.committing_size
                inode.note_density(data_bytes)
        if inode is not None:
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
        staged = self._stage_logged(oi, nowait)
        if not staged:
            if nowait and not oi.data.cheap_to_close(purge=oi.unlinked):
                raise WouldBlock(f"inode {oi.ino}: closing it takes a while")
            self._commit_logged(oi)
        with self.lock:
            del self._handles[fh]
            oi.handles -= 1
            oi.writers -= handle.writable
            if staged:  # the committer commits it; after the last handle it also takes it out of the table
                self.committer.schedule(oi.ino, oi, Committer.QUIET if oi.handles else 0.0)
            if oi.handles or staged:
                return None
            del self._inodes[oi.ino]
            self._close_data(oi)  # under the lock: a new open of this inode waits for it
        return oi

    def _stage_logged(self, oi: OpenInode, nowait: bool) -> bool:
        """Stage at release (see ``flush``); False, with a log line, if that failed: then release commits."""
        try:
            return self._stage(oi, False, nowait)
        except WouldBlock:
            raise
        except ChunkfsError as exc:
            log.warning("inode %d: could not stage its changes at release (%s); committing them now", oi.ino, exc)
            return False

    def settle(self, oi: OpenInode) -> None:
        """The committer's job: commit a staged inode; if no handle is left, close it and take it out of the table."""
        with self.lock:
            if self._inodes.get(oi.ino) is not oi:
                return  # closed meanwhile (at shutdown)
        if not oi.unlinked:
            oi.data.commit_staged()  # what its last flush, fsync or release named: a state between two calls
            if not oi.handles:
                self.commit(oi)  # nothing can write it any more: whatever is left (normally nothing)
        with self.lock:
            if oi.handles or self._inodes.get(oi.ino) is not oi or (oi.data.dirty and not oi.unlinked):
                return  # open again, or changed since: that handle's flush or release schedules it again
            del self._inodes[oi.ino]
            self._close_data(oi)
        if self.on_closed is not None:
            self.on_closed(oi)

    def settle_staged(self) -> None:
        """Commit every staged file now: clones, snapshots and ``chunkfs sync`` work from what is committed."""
        for oi in self.all_open():
            if oi.staged and oi.data.recorded:
                self.settle(oi)

    def _commit_logged(self, oi: OpenInode) -> None:
        kept = "they stay staged for the next mount" if oi.data.recorded else "the changes are lost"
        try:
            self.commit(oi)
        except ChunkfsError as exc:
            log.error("inode %d: could not commit its data at release (%s); %s", oi.ino, exc, kept)
        except Exception:
            log.exception("inode %d: could not commit its data at release; %s", oi.ino, kept)

    def _close_data(self, oi: OpenInode) -> None:
        """Last handle gone: drop what could not be committed and close the FileData.

        Staged changes that could not be committed (a full disk at unmount)
        keep their staging file: their record makes the next mount commit them.
        """
        try:
            if oi.data.recorded and not oi.unlinked:
                oi.data.close(keep_staging=True)
                return
            if oi.unlinked or oi.data.dirty:
                oi.data.discard()
            oi.data.close()
        except Exception:
            log.exception("inode %d: could not close its staged data", oi.ino)

    def adopt_staged(self, ino: int, committed_size: int, state: StagedState) -> OpenInode:
        """An inode whose staged record a crash left (fs/recovery.py), in the table with no handle, to be committed."""
        oi = self._new_inode(ino, committed_size)
        oi.data.adopt_staged(state)
        oi.staged = True
        with self.lock:
            self._inodes[ino] = oi
        return oi

    def close_inode(self, oi: OpenInode) -> None:
        """Take a handle-less inode out of the table and close it (changes it could not commit stay staged)."""
        with self.lock:
            if self._inodes.get(oi.ino) is oi:
                del self._inodes[oi.ino]
            self._close_data(oi)

    def stop_committer(self) -> None:
        if self.committer is not None:
            self.committer.stop()

    def commit_all(self) -> None:
        """At shutdown: commit every open inode, logging failures, and close them all."""
        for oi in self.all_open():
            self._commit_logged(oi)
            with self.lock:
                for fh in [fh for fh, h in self._handles.items() if h.inode is oi]:
                    del self._handles[fh]
                self._inodes.pop(oi.ino, None)
                self._close_data(oi)
