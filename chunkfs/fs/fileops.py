"""Open files: open, read, write, flush, fsync and release, for FsCore.

A mixin of :class:`chunkfs.fs.core.FsCore`, like xattrs.py: it uses the
core's namespace, transaction helpers and open-file table (handles.py), which
holds one FileData (openfile.py) per open inode; FileData decides which data
calls are cheap enough for the adapter to run on the event loop (``nowait``).
Also here: the atime policy of opens ("relatime", see core.py).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

import lmdb

from ..errors import ChunkCorruptError, FSError, StoreFullError
from .handles import OpenFiles
from .namespace import Inode, Namespace, check_mutable
from .openfile import Around
from .recovery import resolve_paths

log = logging.getLogger(__name__)

RELATIME_WINDOW_NS = 24 * 3600 * 10**9


class FileOps:
    """The open-file calls of FsCore."""

    ns: Namespace
    files: OpenFiles
    readonly: bool
    atime: str

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open a regular file: (file handle, whether the kernel may keep cached pages).

        With O_TRUNC this truncates, which may block: call it from a worker thread then.
        """
        with self._read() as txn:
            inode = self.ns.need(txn, ino)
        return self._open_inode(inode, flags, lambda: self._committed_size(ino))

    def _open_inode(self, inode: Inode, flags: int, committed_size: Callable[[], int],
                    created: bool = False) -> tuple[int, bool]:
        """open() of an inode record in hand; ``committed_size`` is asked only if the file is not open yet."""
        ino = inode.ino
        if inode.is_dir:
            raise FSError(errno.EISDIR)
        if not inode.is_reg:
            raise FSError(errno.EINVAL)  # FIFOs and devices are opened by the kernel itself
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if (writable or flags & os.O_TRUNC) and self.readonly:
            raise FSError(errno.EROFS)
        if writable or flags & os.O_TRUNC:
            check_mutable(inode)
        handle, keep_cache = self.files.open(ino, flags, committed_size)
        if inode.nlink == 0:
            self.files.mark_unlinked(ino)  # reopened through /proc/PID/fd after its last name went
        if flags & os.O_TRUNC:  # libfuse asks for atomic O_TRUNC: it comes here, not as setattr
            self._truncate_at_open(handle, writable)
            keep_cache = False
        if (flags & os.O_ACCMODE) != os.O_WRONLY and not created:
            self._relatime(inode)
        return handle.fh, keep_cache

    def _truncate_at_open(self, handle, writable: bool) -> None:
        """O_TRUNC: empty the file, as Linux does even for O_RDONLY | O_TRUNC (the kernel checked write access).

        A read-only handle never commits at flush, so its truncate is
        committed here, and its errors reach open().
        """
        try:
            self.files.truncate(handle.inode, 0)
            if not writable:
                self.files.commit(handle.inode)
        except BaseException:
            self.files.release(handle.fh)
            raise

    def write_clears_privileges(self, ino: int) -> bool:
        """Whether a write to ``ino`` must clear setuid/setgid bits or file capabilities.

        The kernel clears them itself on a write through its page cache, but
        leaves it to the filesystem on a direct write (FUSE_WRITE_KILL_SUIDGID,
        which pyfuse3 does not pass on): such files must not be written directly.
        """
        with self._read() as txn:
            inode = self.ns.need(txn, ino)
            if inode.mode & (stat.S_ISUID | stat.S_ISGID):
                return True
            return self.ns.xattr(txn, ino, b"security.capability") is not None

    def _committed_size(self, ino: int) -> int:
        with self._read() as txn:
            return self.ns.need(txn, ino).size

    def _relatime(self, inode: Inode) -> None:
        if self.atime != "relatime" or inode.immutable:  # a snapshot does not change, not even its atimes
            return
        now = time.time_ns()
        atime = inode.atime_ns
        if atime > inode.mtime_ns and atime > inode.ctime_ns and now - atime < RELATIME_WINDOW_NS:
            return

        def touch(txn: lmdb.Transaction) -> None:
            current = self.ns.get(txn, inode.ino)
            if current is not None:
                current.atime_ns = now
                self.ns.put(txn, current)

        try:
            self._write(touch)
        except StoreFullError:  # best effort: on a full disk, reading must still work
            log.debug("inode %d: atime not updated, the disk is full", inode.ino)

    def read(self, fh: int, offset: int, length: int, nowait: bool = False,
             around: Around | None = None) -> bytes | memoryview:
        """The one read of the filesystem: ``FileData.read`` (openfile.py) says what may run on the event loop.

        ``nowait=True`` is the event loop's call: it reads now if that is
        cheap, else raises WouldBlock and the adapter repeats the call in a
        worker thread.  ``around(run)`` gets the whole verified chunks a short
        read fetched, when nobody can write the file (so they are its
        contents); the adapter pushes their other pages into the kernel's
        cache (readaround.py), which keeps writers out while a push is under way.
        """
        try:
            return self.files.read(fh, offset, length, nowait, around)
        except ChunkCorruptError as exc:
            raise self._located(fh, exc) from None

    def _located(self, fh: int, exc: ChunkCorruptError) -> ChunkCorruptError:
        """The store knows only the inode's file id: name the file, by path if it has one."""
        ino = self.files.handle(fh).inode.ino
        path = resolve_paths(self.ns, self.store.fs_tables, {ino}).get(ino)
        return exc.located(f"inode {ino} ({path})" if path else f"inode {ino}")

    def write(self, fh: int, offset: int, data: bytes, nowait: bool = False) -> int:
        """Write at ``offset``; with ``nowait``, WouldBlock unless it is cheap (FileData.write decides)."""
        if self.readonly:
            raise FSError(errno.EROFS)
        return self.files.write(fh, offset, data, nowait)

    def flush(self, fh: int, nowait: bool = False) -> bool:
        """close(2) of a descriptor: commit, so ENOSPC/EIO reach the application that wrote.

        Returns whether the handle is writable (it may have committed); a
        read-only handle's flush does nothing.  With ``nowait``, WouldBlock
        unless the commit is cheap (nothing changed, or a small file).  When
        chunking behind the writer, a big file's changes are staged instead
        (fs/behind.py).
        """
        return self._flush(fh, False, nowait)

    def fsync(self, fh: int, datasync: bool = False, nowait: bool = False) -> bool:
        """Commit (or stage durably), then make it survive power loss; costs nothing more when nothing is new.

        Returns what ``flush`` returns.  With ``nowait``, WouldBlock unless
        the commit is cheap and the store has nothing left to flush to disk.
        """
        committed = self._flush(fh, True, nowait)
        self.store.sync(nowait=nowait)
        return committed

    def _flush(self, fh: int, durable: bool, nowait: bool) -> bool:
        handle = self.files.handle(fh)
        if not handle.writable:
            return False
        self.files.flush(handle.inode, durable, nowait)
        return True

    def release(self, fh: int, nowait: bool = False) -> None:
        oi = self.files.release(fh, nowait)
        if oi is not None and oi.unlinked:
            self.purge_if_unreachable(oi.ino)

