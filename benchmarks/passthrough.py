"""A plain pyfuse3 passthrough filesystem: the floor any pyfuse3 filesystem stands on, measured in the same run.

    python -m benchmarks.passthrough [--xattrs] BACKING_DIR MOUNTPOINT     # foreground; fusermount3 -u to stop

Issue 4 states its throughput targets next to what "a plain pyfuse3
passthrough filesystem, which does no dedup at all" reached (0.74 sequential
write, 0.47 untar, ...).  Those reference figures move by 2x from run to run
and from machine to machine: on a machine where every FUSE round trip is
expensive, untar through *any* Python FUSE daemon is slow, and chunkfs's ratio
against the plain disk says little on its own.  So the throughput benchmark
mounts this passthrough beside chunkfs and runs every operation on it too: the
ratio chunkfs / passthrough is what chunkfs's own code costs.

It is written to be the cheapest honest pyfuse3 filesystem, in the same shape
as chunkfs's adapter (trio, ``default_permissions``, the same entry and
attribute timeouts, no writeback cache), and does each request with one or two
system calls on the event loop, like pyfuse3's own example filesystems.  It is
a benchmark reference, not a filesystem to use: an inode is known by the last
path it was seen at, so renaming a directory leaves its children's paths stale
(nothing the benchmark does renames a directory), and nothing is ever
forgotten.  It lives in benchmarks/, not in the chunkfs package, because only
chunkfs's adapter may import pyfuse3 there.

``--xattrs`` also forwards extended attributes.  Without them the kernel
asks once, gets ENOSYS and never asks again; with them it asks
``getxattr("security.capability")`` before every write(2), to learn whether
the write must drop file capabilities.  pyfuse3 cannot negotiate
``FUSE_HANDLE_KILLPRIV_V2``, the flag that would let the kernel skip the
question, so every pyfuse3 filesystem that keeps xattrs (chunkfs keeps ACLs
and user xattrs) pays one more round trip per write: ``--xattrs`` measures
that floor.
"""

from __future__ import annotations

import errno
import functools
import inspect
import itertools
import os
import stat
import sys
import time

import pyfuse3
import trio

from chunkfs.reqtrace import RequestTrace

TIMEOUT = 60.0  # as chunkfs.fuse_adapter.TIMEOUT: the kernel caches entries and attributes as long
BLKSIZE = 128 * 1024  # as chunkfs's st_blksize
_STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


TRACE = RequestTrace.from_environment()  # CHUNKFS_REQUEST_TRACE=FILE: the same request trace as chunkfs's


def _errno_only(method):
    """Any OSError becomes the FUSEError the kernel understands: any other exception would kill the daemon."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        finally:
            if TRACE is not None:
                TRACE.record(name, time.perf_counter() - start, len(args[3]) if name == "write" else 0)
    return wrapper


class Passthrough(pyfuse3.Operations):
    """Every request forwarded to the same call on ``backing``."""

    enable_writeback_cache = False

    def __init__(self, backing: str):
        super().__init__()
        self.backing = os.path.abspath(backing)
        self.root_ino = os.lstat(self.backing).st_ino
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.backing}
        self.listings: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self.dir_handles = itertools.count(1)

    # -- names and attributes

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _entry(self, path: str, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        """Attributes of ``path``, remembering its inode number so later requests find it."""
        st = st or os.lstat(path)
        attr = pyfuse3.EntryAttributes()
        for field in _STAT_FIELDS:
            setattr(attr, field, getattr(st, field))
        attr.st_ino = pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino
        self.paths[attr.st_ino] = path
        attr.st_blksize = BLKSIZE
        attr.entry_timeout = attr.attr_timeout = TIMEOUT
        return attr

    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(self._child(parent_inode, name))

    async def getattr(self, inode, ctx=None):
        return self._entry(self._path(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            if fh is not None:
                os.ftruncate(fh, attr.st_size)
            else:
                os.truncate(path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1,
                     follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            old = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else old.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns),
                     follow_symlinks=False)
        return self._entry(path)

    async def statfs(self, ctx):
        st = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                      "f_favail", "f_namemax"):
            setattr(out, field, getattr(st, field))
        return out

    # -- the namespace

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        os.mkdir(path, stat.S_IMODE(mode))
        os.chown(path, ctx.uid, ctx.gid)
        return self._entry(path)

    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        os.symlink(os.fsdecode(target), path)
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        return self._entry(path)

    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._child(new_parent_inode, new_name)
        os.link(self._path(inode), path)
        return self._entry(path)

    async def unlink(self, parent_inode, name, ctx):
        os.unlink(self._child(parent_inode, name))

    async def rmdir(self, parent_inode, name, ctx):
        os.rmdir(self._child(parent_inode, name))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_NOREPLACE / EXCHANGE: not needed here
        new = self._child(parent_inode_new, name_new)
        os.rename(self._child(parent_inode_old, name_old), new)
        self._entry(new)

    async def opendir(self, inode, ctx):
        """The whole listing is read once per open: readdir's offsets then index a stable list."""
        top = self._path(inode)
        with os.scandir(top) as it:
            entries = [(os.fsencode(e.name), self._entry(e.path)) for e in it]
        handle = next(self.dir_handles)
        self.listings[handle] = entries
        return handle

    async def readdir(self, fh, start_id, token):
        entries = self.listings[fh]
        for index in range(start_id, len(entries)):
            name, attr = entries[index]
            if not pyfuse3.readdir_reply(token, name, attr, index + 1):
                break

    async def releasedir(self, fh):
        self.listings.pop(fh, None)

    # -- file data: the file handle is the backing file descriptor

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=os.open(self._path(inode), flags & ~os.O_CREAT))

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, stat.S_IMODE(mode))
        os.fchown(fd, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fd), self._entry(path, os.fstat(fd))

    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        (os.fdatasync if datasync else os.fsync)(fh)

    async def release(self, fh):
        os.close(fh)


class XattrPassthrough(Passthrough):
    """The passthrough that also forwards extended attributes (``--xattrs``, module docstring)."""

    async def getxattr(self, inode, name, ctx):
        return os.getxattr(self._path(inode), os.fsdecode(name), follow_symlinks=False)

    async def listxattr(self, inode, ctx):
        return [os.fsencode(name) for name in os.listxattr(self._path(inode), follow_symlinks=False)]

    async def setxattr(self, inode, name, value, ctx):
        os.setxattr(self._path(inode), os.fsdecode(name), value, follow_symlinks=False)

    async def removexattr(self, inode, name, ctx):
        os.removexattr(self._path(inode), os.fsdecode(name), follow_symlinks=False)


for _cls in (Passthrough, XattrPassthrough):
    for _name, _method in list(vars(_cls).items()):
        if inspect.iscoroutinefunction(_method):
            setattr(_cls, _name, _errno_only(_method))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    xattrs = "--xattrs" in args
    if xattrs:
        args.remove("--xattrs")
    if len(args) != 2:
        print("usage: python -m benchmarks.passthrough [--xattrs] BACKING_DIR MOUNTPOINT", file=sys.stderr)
        return 2
    backing, mountpoint = args
    os.umask(0)  # the kernel already applied the caller's umask to every mode it sends
    ops = XattrPassthrough(backing) if xattrs else Passthrough(backing)
    pyfuse3.init(ops, mountpoint, {"fsname=passthrough", "subtype=passthrough", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        if TRACE is not None:
            TRACE.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
