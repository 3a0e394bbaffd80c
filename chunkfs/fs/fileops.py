"""Open files: open, read, write, flush, fsync and release, for FsCore.

A mixin of :class:`chunkfs.fs.core.FsCore`, like xattrs.py: it uses the
core's namespace, transaction helpers and open-file table (handles.py), which
holds one FileData (openfile.py) per open inode.  Also here: which data calls
are cheap enough for the adapter to run on the event loop (``small_io``,
``read_now``), and the atime policy of opens ("relatime", see core.py).
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
from .chunkrun import ChunkRun
from .handles import OpenFiles
from .namespace import Inode, Namespace, check_mutable
from .recovery import resolve_paths

log = logging.getLogger(__name__)

SMALL_FILE = 256 * 1024  # a file this small is read, written and committed on the event loop
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

    def small_io(self, fh: int, end: int = 0) -> bool:
        """Whether a data call on ``fh`` is cheap enough to run on the event loop.

        A file of at most 256 KiB costs microseconds to read, write or commit,
        less than handing the call to a worker thread and back; untar and
        rsync of many small files spend most of their requests here.
        """
        try:
            size = self.files.handle(fh).inode.data.size
        except FSError:
            return True  # the call itself reports the bad handle
        return max(size, end) <= SMALL_FILE

    def read(self, fh: int, offset: int, length: int) -> bytes | memoryview:
        try:
            return self.files.read(fh, offset, length)
        except ChunkCorruptError as exc:
            raise self._located(fh, exc) from None

    def read_now(self, fh: int, offset: int, length: int) -> bytes | memoryview | None:
        """``read`` if it is short enough for the event loop, else None: then call ``read`` in a thread."""
        found = self.read_now_around(fh, offset, length)
        return None if found is None else found[0]

    def read_now_around(self, fh: int, offset: int,
                        length: int) -> tuple[bytes | memoryview, ChunkRun | None] | None:
        """``read_now``, with the whole verified chunks the bytes came from if the kernel may cache them.

        Short means a small file (``small_io``), or a request of at most the
        store's minimum chunk size: it touches at most two chunks, so it costs a
        cache hit or one or two chunk preads and their xxh3 check, tens of
        microseconds, while the hop to a worker thread and back cost more than
        the read itself (cold 4 KiB random reads of a 1 GiB file, 3 runs:
        daemon CPU per read 216 us with the hop, 144 us without).  The loop
        may wait for the disk during those preads.

        A longer read (the kernel's 128 KiB and read-ahead requests) of a
        file with no uncommitted change runs here too when the page cache
        holds every chunk it needs (``ChunkStore.read_view`` with ``nowait``),
        else None.  Its CPU is a few microseconds per chunk, less than the hop:
        while the kernel keeps several read-ahead requests in flight, worker
        threads and the loop take turns at the GIL (1 GiB through a fresh
        mount, the packs' pages cached, 3 runs: 1.2-1.4 s in threads, 0.65 s
        here).  Never waits for another thread: a file busy in a commit or a
        stream gives None.

        The chunks come only with a short read of a file nobody can write (no
        writable handle, no uncommitted change), so they are its contents;
        the adapter pushes their other pages into the kernel's cache
        (readaround.py), which keeps writers out while a push is under way.
        """
        short = length <= self.store.settings.min_size or self.small_io(fh, offset + length)
        oi = self.files.handle(fh).inode
        try:
            found = oi.data.read_nowait(offset, length, wait_for_disk=short)
        except ChunkCorruptError as exc:
            raise self._located(fh, exc) from None
        if found is None or found[1] is None or not (oi.writers or oi.unlinked):
            return found
        return found[0], None

    def _located(self, fh: int, exc: ChunkCorruptError) -> ChunkCorruptError:
        """The store knows only the inode's file id: name the file, by path if it has one."""
        ino = self.files.handle(fh).inode.ino
        path = resolve_paths(self.ns, self.store.fs_tables, {ino}).get(ino)
        return exc.located(f"inode {ino} ({path})" if path else f"inode {ino}")

    def write(self, fh: int, offset: int, data: bytes) -> int:
        if self.readonly:
            raise FSError(errno.EROFS)
        return self.files.write(fh, offset, data)

    def flush(self, fh: int) -> None:
        """close(2) of a descriptor: commit, so ENOSPC/EIO reach the application that wrote."""
        if self.flush_may_commit(fh):
            self.files.commit(self.files.handle(fh).inode)

    def flush_may_commit(self, fh: int) -> bool:
        """False if flushing ``fh`` is a no-op (read-only handle): the adapter then skips the thread."""
        return self.files.handle(fh).writable

    def fsync(self, fh: int, datasync: bool = False) -> None:
        self.flush(fh)
        self.store.sync()

    def release(self, fh: int) -> None:
        oi = self.files.release(fh)
        if oi is not None and oi.unlinked:
            self.purge_if_unreachable(oi.ino)

