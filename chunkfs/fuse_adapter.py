"""The FUSE adapter: pyfuse3 requests in, one FsCore call each, errno out.

This is the only module that imports pyfuse3.  Every handler maps every
exception to ``FUSEError(errno_for(exc))``, because any other exception
escaping a handler kills the pyfuse3 main loop.  Data calls (read, write,
flush, fsync, release) are first tried on the trio loop with ``nowait=True``
and repeated in a worker thread when the data path answers WouldBlock (it
alone decides: FileData, fs/openfile.py), so disk IO and chunking never stall
the loop while cheap calls skip the thread hop; truncates run in threads,
metadata calls inline.  With ``CHUNKFS_REQUEST_TRACE=FILE`` in its
environment the daemon times every request and writes a summary to FILE at
unmount (reqtrace.py).

Entry point for the daemon (``chunkfs mount``)::

    run(store, mountpoint, options=frozenset(), *, debug=False, ready=None,
        handle_signals=False, filedata_factory=None, file_id_for=None,
        writeback_cache=False) -> None

``store`` is an open, writable (or, for ``-o ro``, read-only) ChunkStore;
run() owns it from then on and closes it before returning.  ``options`` are
libfuse/kernel mount options (``allow_other``, ``ro``, ``noatime``,
``fsname=...``); run() always adds ``default_permissions`` (the core leaves
permission checks to the kernel) and defaults ``fsname`` to the store path
and ``subtype`` to ``chunkfs``.  ``ready()`` is called once the mount exists,
before requests are served, so a backgrounding parent can return then.
run() blocks until the filesystem is unmounted (``fusermount3 -u``); then
every open file is committed and the store closed.  With ``handle_signals``,
SIGTERM/SIGINT end the request loop and run() unmounts (lazily, if busy);
leave it off when the caller unmounts on signals itself, as the daemon does.
``writeback_cache`` asks the kernel for its writeback cache (off by default,
see docs/tuning.md); ``read_around`` pushes the rest of a chunk a short read
fetched into the kernel's page cache (on by default, readaround.py).
Failure to mount raises MountError.

For tests and debugging: ``python -m chunkfs.fuse_adapter STORE MOUNTPOINT
[-o opt,...] [--debug]`` mounts in the foreground with logs on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno
import functools
import logging
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable

import pyfuse3
import trio

from .errors import ChunkfsError, FSError, MountError, WouldBlock, errno_for
from .fs import Caller, FsCore, Inode, SetAttr
from .readaround import PagePusher
from .reqtrace import RequestTrace

log = logging.getLogger(__name__)


def _demote_vanished_replies(record: logging.LogRecord) -> bool:
    """pyfuse3 logs every failed reply as an error; one failing with ENOENT is not.

    The kernel answers a reply with ENOENT when it no longer waits for it:
    the request was interrupted, or the filesystem was unmounted or aborted
    while a RELEASE was still on its way (every unmount by signal races with
    the kernel's asynchronous releases).  Nothing is lost: the data was
    committed at flush.  Other reply failures stay errors.
    """
    message = record.getMessage()
    if "fuse_reply_* failed" in message and os.strerror(errno.ENOENT) in message:
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = f"{message} (the kernel had stopped waiting for it)", ()
    return True


logging.getLogger("pyfuse3").addFilter(_demote_vanished_replies)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TIMEOUT = 60.0  # seconds the kernel may cache entries and attributes: every change goes through it
BLKSIZE = 128 * 1024  # preferred IO size reported in st_blksize (reads arrive as 128 KiB anyway)


def _attributes(inode: Inode) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = inode.ino
    attr.generation = 0  # inode numbers are never reused
    attr.entry_timeout = TIMEOUT
    attr.attr_timeout = TIMEOUT
    attr.st_mode = inode.mode
    attr.st_nlink = inode.nlink
    attr.st_uid = inode.uid
    attr.st_gid = inode.gid
    attr.st_rdev = inode.rdev
    attr.st_size = inode.size
    attr.st_blksize = BLKSIZE
    attr.st_blocks = inode.blocks if inode.blocks is not None else (inode.size + 511) // 512
    attr.st_atime_ns = inode.atime_ns
    attr.st_mtime_ns = inode.mtime_ns
    attr.st_ctime_ns = inode.ctime_ns
    return attr


def _negative_entry() -> pyfuse3.EntryAttributes:
    """A cacheable "no such name": st_ino 0 makes the kernel remember the miss for ``entry_timeout``."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = TIMEOUT
    return attr


def _caller(ctx) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.umask)


def _fuse_error(exc: Exception, what: str) -> pyfuse3.FUSEError:
    """Translate, and log whatever is not an ordinary answer like ENOENT."""
    if isinstance(exc, FSError) or getattr(exc, "refusal", False):
        return pyfuse3.FUSEError(errno_for(exc))
    if isinstance(exc, ChunkfsError):
        log.error("%s: %s", what, exc)
    else:
        log.error("%s failed unexpectedly", what, exc_info=exc)
    return pyfuse3.FUSEError(errno_for(exc))


def _translated(handler: Callable) -> Callable:
    """Wrap a handler so that only FUSEError ever leaves it; time it when the request trace is on."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self, *args):
        trace = self.trace
        if trace is not None:
            start = time.perf_counter()
            _went_to_thread.set(False)
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 (every failure must become an errno)
            raise _fuse_error(exc, name) from None
        finally:
            if trace is not None:
                trace.record(name, time.perf_counter() - start, len(args[2]) if name == "write" else 0,
                             threaded=_went_to_thread.get())

    return wrapper


def kernel_keeps_direct_writes_coherent(release: str | None = None) -> bool:
    """Linux 6.6 and later drop the cached pages a FUSE direct write overwrites; older kernels keep them.

    On an older kernel, a file written through a direct handle while another
    handle has its pages cached would read stale bytes, so direct writes stay off.
    """
    match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= (6, 6)


async def _in_thread(fn: Callable, *args):
    return await trio.to_thread.run_sync(fn, *args)


async def _now_or_in_thread(fn: Callable, *args, **now_only):
    """``fn(*args, nowait=True, **now_only)`` on the event loop; on WouldBlock, ``fn(*args)`` in a thread.

    The data path (FileData) alone decides what may run on the loop: it
    either finishes a call cheaply or raises WouldBlock before changing
    anything.  ``now_only`` are arguments only the loop's call may take.
    """
    try:
        return fn(*args, nowait=True, **now_only)
    except WouldBlock:
        _went_to_thread.set(True)
        return await _in_thread(fn, *args)


_went_to_thread = contextvars.ContextVar("went_to_thread", default=False)  # for the request trace


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers; each is one FsCore call."""

    supports_dot_lookup = True
    enable_acl = True  # the kernel enforces POSIX ACLs; the core keeps them in step with modes (fs/acl.py)

    def __init__(self, core: FsCore, writeback_cache: bool = False, direct_writes: bool | None = None,
                 read_around: bool = True):
        super().__init__()
        self.core = core
        self.trace = RequestTrace.from_environment()  # off unless CHUNKFS_REQUEST_TRACE names a file
        self.pusher = PagePusher(pyfuse3.notify_store) if read_around else None
        # off by default: measured no gain for sequential writes, extra setattrs for untar (docs/tuning.md)
        self.enable_writeback_cache = writeback_cache
        if direct_writes is None:
            direct_writes = not writeback_cache and kernel_keeps_direct_writes_coherent()
        self.direct_writes = direct_writes

    @_translated
    async def lookup(self, parent_inode, name, ctx):
        inode = self.core.find(parent_inode, name)
        if inode is None:
            return _negative_entry()  # every create goes through the kernel, which drops this entry then
        return _attributes(inode)

    async def forget(self, inode_list):
        try:  # in a thread: forgetting an unlinked big file deletes its whole manifest
            await _in_thread(self.core.forget, list(inode_list))
        except Exception:  # noqa: BLE001 (forget must not raise at all)
            log.exception("forget failed")

    @_translated
    async def getattr(self, inode, ctx):
        return _attributes(self.core.getattr(inode))

    @_translated
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        if changes.size is not None:
            async with self._writing(inode):
                return _attributes(await _in_thread(self.core.setattr, inode, changes, fh))
        return _attributes(self.core.setattr(inode, changes, fh))

    @_translated
    async def readlink(self, inode, ctx):
        return self.core.readlink(inode)

    @_translated
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return _attributes(self.core.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    @_translated
    async def mkdir(self, parent_inode, name, mode, ctx):
        return _attributes(self.core.mkdir(parent_inode, name, mode, _caller(ctx)))

    @_translated
    async def symlink(self, parent_inode, name, target, ctx):
        return _attributes(self.core.symlink(parent_inode, name, target, _caller(ctx)))

    @_translated
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return _attributes(self.core.link(inode, new_parent_inode, new_name))

    @_translated
    async def unlink(self, parent_inode, name, ctx):
        self.core.unlink(parent_inode, name)

    @_translated
    async def rmdir(self, parent_inode, name, ctx):
        self.core.rmdir(parent_inode, name)

    @_translated
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.core.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_translated
    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC:
            fh, keep_cache = self.core.open(inode, flags)
        else:
            async with self._writing(inode):
                if flags & os.O_TRUNC:
                    fh, keep_cache = await _in_thread(self.core.open, inode, flags)
                else:
                    fh, keep_cache = self.core.open(inode, flags)
        direct = self._direct(flags) and not self.core.write_clears_privileges(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=direct)

    @_translated
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, inode = self.core.create(parent_inode, name, mode, flags, _caller(ctx))
        direct = self._direct(flags) and not inode.mode & (stat.S_ISUID | stat.S_ISGID)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct), _attributes(inode)

    def _direct(self, flags: int) -> bool:
        """Write-only handles bypass the page cache (FOPEN_DIRECT_IO) where that is safe.

        Their data goes to the daemon once instead of also through the page
        cache, and the kernel has no written pages to drop when the file's
        mtime changes (which made the next open of a just-written 1 GiB file
        take ~150 ms; docs/tuning.md).  A write-only handle cannot be read or
        mmap'ed, so nothing is lost.
        """
        return self.direct_writes and flags & os.O_ACCMODE == os.O_WRONLY

    @_translated
    async def read(self, fh, off, size):
        around = None if self.pusher is None else functools.partial(self._push_around, off, size)
        return await _now_or_in_thread(self.core.read, fh, off, size, around=around)

    def _push_around(self, off: int, size: int, run) -> None:
        """Offer the other pages of the chunks a short read fetched to the kernel's cache (readaround.py)."""
        self.pusher.offer(run.ino, functools.partial(run.pages, PAGE_SIZE, off, off + size))

    def _writing(self, ino: int) -> contextlib.AbstractAsyncContextManager:
        """Around anything that lets ``ino``'s bytes change: no read-around push lands meanwhile."""
        return self.pusher.hold(ino) if self.pusher is not None else contextlib.nullcontext()

    @_translated
    async def write(self, fh, off, buf):
        return await _now_or_in_thread(self.core.write, fh, off, buf)

    @_translated
    async def flush(self, fh):
        if await _now_or_in_thread(self.core.flush, fh):
            self._refresh_blocks(fh)

    @_translated
    async def fsync(self, fh, datasync):
        if await _now_or_in_thread(self.core.fsync, fh, datasync):
            self._refresh_blocks(fh)

    def _refresh_blocks(self, fh: int) -> None:
        """After a commit, drop the kernel's cached attributes of a file that may hold holes.

        They may carry an st_blocks taken while its data was uncommitted (which
        counts in full), say from the futimens ``cp -p`` sends before close.
        Invalidating attributes only never waits for writeback.
        """
        ino = self.core.holey_inode(fh)
        if ino is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:
            log.debug("cannot invalidate the attributes of inode %d: %s", ino, exc)

    @_translated
    async def release(self, fh):
        await _now_or_in_thread(self.core.release, fh)

    @_translated
    async def opendir(self, inode, ctx):
        return self.core.opendir(inode)

    @_translated
    async def readdir(self, fh, start_id, token):
        while True:
            batch = self.core.readdir(fh, start_id)
            if not batch:
                return
            for entry in batch:
                if not pyfuse3.readdir_reply(token, entry.name, _attributes(entry.attr), entry.next_id):
                    return
                if entry.counted:
                    self.core.remember(entry.attr.ino)
                start_id = entry.next_id

    @_translated
    async def releasedir(self, fh):
        pass

    @_translated
    async def fsyncdir(self, fh, datasync):
        await _in_thread(self.core.fsyncdir, fh)

    @_translated
    async def statfs(self, ctx):
        out = pyfuse3.StatvfsData()
        for key, value in self.core.statfs().items():
            setattr(out, key, value)
        return out

    @_translated
    async def setxattr(self, inode, name, value, ctx):
        self.core.setxattr(inode, name, value)  # pyfuse3 checks XATTR_CREATE/REPLACE through getxattr

    @_translated
    async def getxattr(self, inode, name, ctx):
        value = self.core.find_xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @_translated
    async def listxattr(self, inode, ctx):
        return self.core.listxattr(inode)

    @_translated
    async def removexattr(self, inode, name, ctx):
        self.core.removexattr(inode, name)


# -- running -------------------------------------------------------------------------


def mount_options(store_path: str, options) -> set[str]:
    """The option set for pyfuse3.init: the caller's, plus what the core relies on."""
    opts = set(options or ())
    opts.add("default_permissions")
    if not any(o.startswith("fsname=") for o in opts):
        opts.add(f"fsname={os.path.abspath(store_path)}")
    if not any(o.startswith("subtype=") for o in opts):
        opts.add("subtype=chunkfs")
    return opts


async def _serve_until_unmounted(handle_signals: bool) -> None:
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_terminate_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("got %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


class KernelCache:
    """Tells the kernel about namespace changes it did not make itself (control requests: fs/tools.py).

    Called from a request thread of the control channel, never from a FUSE
    handler, holding no lock: the notification blocks until the kernel has
    dropped the entry, which may wait for a request on that directory.
    """

    def entry(self, parent: int, name: bytes, deleted: int = 0) -> None:
        """Drop the kernel's entry ``name`` of ``parent``; with ``deleted``, tell it the inode is gone too.

        The kernel refuses the latter for a directory with entries it still
        uses (a process inside the removed tree): then the entry is only
        dropped, which is what matters, since the next lookup asks us.
        """
        for gone in ((deleted, 0) if deleted else (0,)):
            try:
                pyfuse3.invalidate_entry(parent, name, gone)
                return
            except OSError as exc:  # ENOENT: the kernel did not know the name; nothing to drop
                log.debug("cannot invalidate entry %r of inode %d (deleted %d): %s", name, parent, gone, exc)

    def attributes(self, ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:
            log.debug("cannot invalidate the attributes of inode %d: %s", ino, exc)


def run(store, mountpoint: str, options=frozenset(), *, debug: bool = False,
        ready: Callable[[], None] | None = None, handle_signals: bool = False,
        filedata_factory=None, file_id_for=None, writeback_cache: bool = False,
        read_around: bool = True, chunking: str = "inline", control: Callable[[FsCore, KernelCache], object] | None = None) -> None:
    """Mount ``store`` on ``mountpoint`` and serve until unmounted; see the module docstring.

    ``control(core, kernel_cache)``, if given, starts the control channel
    before the mount appears and returns an object whose ``stop()`` is
    called before the core closes (daemon.py: control_server.py).
    """
    opts = mount_options(store.path, options)
    if debug:
        opts.add("debug")
    try:
        core = FsCore(store, readonly="ro" in opts, atime="noatime" if "noatime" in opts else "relatime",
                      filedata_factory=filedata_factory, file_id_for=file_id_for, background_gc=True,
                      chunking=chunking)
    except BaseException:
        store.close()
        raise
    server = None
    try:
        server = control(core, KernelCache()) if control is not None else None
        operations = Operations(core, writeback_cache, read_around=read_around)
        _mount(operations, mountpoint, opts)
        try:
            if ready is not None:
                ready()
            trio.run(_serve_until_unmounted, handle_signals)
        finally:
            if server is not None:
                server.stop()  # before the session closes: a request may still notify the kernel
            if operations.pusher is not None:
                operations.pusher.close()
            if operations.trace is not None:
                operations.trace.write()
            pyfuse3.close(unmount=True)
    finally:
        try:
            if server is not None:
                server.stop()
            core.close()
        finally:
            store.close()
    log.info("%s unmounted; everything committed", mountpoint)


def _mount(operations: Operations, mountpoint: str, opts: set[str]) -> None:
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: mountpoint is not a directory")
    stderr_offset = _stderr_file_offset()
    try:
        pyfuse3.init(operations, mountpoint, opts)
    except RuntimeError as exc:
        reason = _libfuse_reason(stderr_offset)
        if not reason:
            raise MountError(f"cannot mount on {mountpoint}: {exc} (see the libfuse message above)") from None
        if "/dev/fuse" in reason and "Permission denied" in reason:
            reason += " (this user may not use FUSE here: mount as root, or ask an administrator for access)"
        raise MountError(f"cannot mount on {mountpoint}: {reason}") from None


_LIBFUSE_LINE = re.compile(r"^(fuse|fusermount\d?): ")
_STDERR_FD = 2  # libfuse writes to C's stderr, whatever Python's sys.stderr is


def _stderr_file_offset() -> int | None:
    """Where the next line on stderr lands, if stderr is a file (a background daemon's log)."""
    try:
        st = os.fstat(_STDERR_FD)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _libfuse_reason(offset: int | None) -> str:
    """What libfuse or fusermount3 wrote to stderr since ``offset``: why the mount failed.

    They write straight to file descriptor 2, which in a background daemon is
    its log: read it back, so the reason reaches the user's terminal through
    the readiness pipe instead of staying in a log nobody looks at.
    """
    if offset is None:
        return ""
    try:
        with open(f"/proc/self/fd/{_STDERR_FD}", "rb") as fh:
            fh.seek(offset)
            text = fh.read(16384).decode(errors="replace")
    except OSError:
        return ""
    return "; ".join(line.strip() for line in text.splitlines() if _LIBFUSE_LINE.match(line))


def main(argv: list[str] | None = None) -> int:
    """Foreground mount for tests and debugging: python -m chunkfs.fuse_adapter STORE MOUNTPOINT."""
    parser = argparse.ArgumentParser(prog="python -m chunkfs.fuse_adapter")
    parser.add_argument("store")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", default="", help="comma-separated mount options")
    parser.add_argument("--debug", action="store_true", help="log every FUSE request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .store import ChunkStore  # noqa: PLC0415

    options = {o for o in args.options.split(",") if o}
    read_around = "noreadaround" not in options
    options.discard("noreadaround")
    try:
        store = ChunkStore.open(args.store, readonly="ro" in options)
        run(store, args.mountpoint, options, debug=args.debug, handle_signals=True, read_around=read_around,
            ready=lambda: log.info("mounted %s on %s", args.store, args.mountpoint))
    except ChunkfsError as exc:
        print(f"chunkfs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
