"""The filesystem as plain Python: every operation the FUSE adapter forwards, on top of the store.

The namespace lives in the store's LMDB environment (namespace.py), so each
operation is one write transaction and survives a crash of the daemon as a
whole or not at all.  File contents go through the data path (openfile.py)
via the open-file table (handles.py).  This module knows nothing of pyfuse3:
it raises :class:`chunkfs.errors.FSError` with the errno the kernel should
see, and the adapter translates.

Permission checks are the kernel's: the filesystem is always mounted with
``default_permissions`` (and FUSE_POSIX_ACL), under which the kernel checks
mode bits and ACLs, sticky directories, ownership for chmod/chown/utimens,
xattr namespaces, and clears set-id bits on writes and chown.  What the
kernel leaves to us, and this package does: name length (ENAMETOOLONG),
existence and type errors, empty-directory checks, the umask, set-group-ID
directory inheritance, ACL inheritance and mode/ACL consistency (acl.py,
xattrs.py), link counts, and timestamps.

Lifetime of an inode: it lives while a directory entry names it.  When the
last name goes, it is marked in the ``orphans`` database (same transaction)
and purged, contents included, once the kernel has forgotten it and no
handle has it open.  A crash leaves the orphan mark, and the next mount
purges it.

atime policy ("relatime"): opening a regular file for reading sets its atime
to now if the atime is not newer than its mtime or ctime, or is more than a
day old; directories' atimes change only through utimens.  With
``atime="noatime"`` (or on a read-only mount) reads never change atime.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import lmdb

from ..errors import FSError
from . import acl
from .behind import CHUNKING_MODES
from .blocks import BlockCounter
from .handles import FileDataFactory, OpenFiles, OpenInode
from .namespace import ROOT_INO, Entry, Inode, Namespace, check_mutable, check_name
from .reaper import TreeReaper
from .recovery import recover_at_mount
from .rename import RENAME_EXCHANGE, RENAME_NOREPLACE, Rename, drop_link
from .fileops import FileOps
from .xattrs import XattrOps

log = logging.getLogger(__name__)

T = TypeVar("T")
READDIR_BATCH = 128
S_IFMT_KNOWN = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK)


class Caller(NamedTuple):
    """Who asks: the subset of pyfuse3's RequestContext the core uses."""

    uid: int
    gid: int
    umask: int = 0o022


@dataclass
class SetAttr:
    """The attributes a setattr request changes; None leaves one alone."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


@dataclass(frozen=True)
class DirEntry:
    """One readdir result; ``counted`` is False for "." and "..", which add no lookup."""

    name: bytes
    attr: Inode
    next_id: int
    counted: bool = True


def _now() -> int:
    return time.time_ns()


def _default_data_path() -> tuple[FileDataFactory, Callable[[int], bytes]]:
    from .openfile import FileData, file_id_for  # noqa: PLC0415 (written alongside this module)

    return FileData, file_id_for


class FsCore(FileOps, XattrOps):
    """One mounted filesystem's logic.  Metadata calls are cheap; data calls block (use threads)."""

    def __init__(self, store, *, root_uid: int | None = None, root_gid: int | None = None,
                 readonly: bool = False, atime: str = "relatime",
                 filedata_factory: FileDataFactory | None = None,
                 file_id_for: Callable[[int], bytes] | None = None,
                 background_gc: bool = False, chunking: str = "inline"):
        if atime not in ("relatime", "noatime"):
            raise ValueError("atime must be 'relatime' or 'noatime'")
        if chunking not in CHUNKING_MODES:
            raise ValueError(f"chunking must be one of {', '.join(CHUNKING_MODES)}")
        if filedata_factory is None or file_id_for is None:
            default_factory, default_id = _default_data_path()
            filedata_factory = filedata_factory or default_factory
            file_id_for = file_id_for or default_id
        self.store = store
        self.readonly = readonly or store.readonly
        self.atime = "noatime" if self.readonly else atime
        self.ns = Namespace(store.fs_tables)
        self.files = OpenFiles(store, self.ns, filedata_factory, chunk_behind=chunking == "behind",
                               on_closed=self._closed_in_background)
        self.file_id_for = file_id_for
        self.block_counter = BlockCounter(store, file_id_for, self.files)
        self._lookups: dict[int, int] = {}
        self.reaper = TreeReaper(self)  # deletes detached trees (rmtree, interrupted clones) in the background
        uid = os.getuid() if root_uid is None else root_uid
        gid = os.getgid() if root_gid is None else root_gid
        if not store.readonly:
            self._write_always(lambda txn: self.ns.ensure_root(txn, uid, gid, _now()))
        self.recovery = recover_at_mount(self)  # stale staging, orphans; one log line (fs/recovery.py)
        self.gc_worker = store.start_background_gc() if background_gc and not self.readonly else None

    # -- transactions ---------------------------------------------------------------

    def _write_always(self, fn: Callable[[lmdb.Transaction], T], frees: bool = False) -> T:
        return self.store.write_txn(lambda txn: (fn(txn), []), frees=frees)

    def _write(self, fn: Callable[[lmdb.Transaction], T], frees: bool = False) -> T:
        """Run a namespace change in one write transaction (EROFS on a read-only mount).

        ``frees``: the change removes something (unlink, rmdir, rename over a
        file, removexattr), so it may still run on a full disk.
        """
        if self.readonly:
            raise FSError(errno.EROFS)
        return self._write_always(fn, frees)

    def _read(self):
        return self.store.read_txn()

    # -- lookup counts and inode lifetime -----------------------------------------

    def remember(self, ino: int) -> None:
        """The kernel now holds one more reference (lookup, create, readdirplus entry...)."""
        with self.files.lock:
            self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, pairs: list[tuple[int, int]]) -> None:
        """The kernel dropped references; purge inodes nobody can reach any more."""
        for ino, count in pairs:
            with self.files.lock:
                left = self._lookups.get(ino, 0) - count
                if left > 0:
                    self._lookups[ino] = left
                    continue
                self._lookups.pop(ino, None)
            self.purge_if_unreachable(ino)

    def orphaned(self, ino: int) -> None:
        """``ino`` lost its last name: purge it now, or when the kernel forgets it and its last handle closes."""
        self.files.mark_unlinked(ino)
        self.purge_if_unreachable(ino)

    def _closed_in_background(self, oi: OpenInode) -> None:
        """The committer closed a staged file after its last handle had gone: purge it if it was unlinked."""
        if oi.unlinked:
            self.purge_if_unreachable(oi.ino)

    def purge_if_unreachable(self, ino: int) -> None:
        with self.files.lock:
            if self._lookups.get(ino) or self.files.is_open(ino):
                return
        with self._read() as txn:
            inode = self.ns.get(txn, ino)
        if inode is not None and inode.nlink == 0:
            self._purge(inode)

    def _purge(self, inode: Inode) -> None:
        """Delete an unlinked inode, its records and stored contents in one transaction.

        A directory that still has entries is the top of a detached tree (an
        interrupted ``rmtree`` or clone): the reaper deletes what is below it
        first, in the background, and purges it last.
        """
        ino = inode.ino

        def drop(txn: lmdb.Transaction) -> bool:
            if inode.is_dir and not self.ns.is_empty(txn, ino):
                return False
            self.ns.remove(txn, ino)
            return True

        if inode.is_reg:
            self.store.delete(self.file_id_for(ino), hook=drop, missing_ok=True)
        elif not self._write_always(drop, frees=True):
            self.reaper.add(ino)

    def purge_orphans(self) -> int:
        """Purge every orphan no handle or lookup holds; at mount, that is all of them."""
        with self._read() as txn:
            orphans = self.ns.orphans(txn)
        for ino in orphans:
            self.purge_if_unreachable(ino)
        return len(orphans)

    def close(self) -> None:
        """Unmounted: commit every open file, then purge orphans (the kernel holds nothing now)."""
        if self.gc_worker is not None:
            self.gc_worker.stop()  # before the final commits, and long before the store closes
        self.reaper.stop()  # a tree half deleted stays detached: the next mount goes on with it
        self.files.stop_committer()  # what it had not committed yet, commit_all does
        self.files.commit_all()
        with self.files.lock:
            self._lookups.clear()
        if not self.store.readonly:
            self.purge_orphans()

    # -- attributes -----------------------------------------------------------------

    def _current(self, inode: Inode, txn: lmdb.Transaction | None = None) -> Inode:
        """Apply what open files know and LMDB does not yet: size and time of uncommitted writes.

        ``txn``: the read transaction ``inode`` came from, which st_blocks reuses (a stat is one transaction).
        """
        overlay = self.files.overlay(inode.ino)
        if overlay is not None:
            inode.size, changed = overlay
            if changed is not None:
                inode.mtime_ns = changed
                inode.ctime_ns = max(inode.ctime_ns, changed)
        if inode.is_reg:
            inode.blocks = self.block_counter.of(inode, txn)
        return inode

    def holey_inode(self, fh: int) -> int | None:
        """The inode of ``fh`` if the kernel must forget its attributes after a commit (fs/blocks.py)."""
        return self.block_counter.holey_inode(fh)

    def getattr(self, ino: int) -> Inode:
        with self._read() as txn:
            return self._current(self.ns.need(txn, ino), txn)

    def lookup(self, parent: int, name: bytes) -> Inode:
        inode = self.find(parent, name)
        if inode is None:
            raise FSError(errno.ENOENT)
        return inode

    def find(self, parent: int, name: bytes) -> Inode | None:
        """lookup() with None for a missing name: the kernel asks before every create, so no exception."""
        if name == b"." or name == b"..":
            return self._dot_lookup(parent, name)
        check_name(name)
        with self._read() as txn:
            entry = self.ns.lookup(txn, parent, name)
            if entry is None:
                self.ns.need_dir(txn, parent)  # ENOENT or ENOTDIR for a bad parent
                return None
            inode = self.ns.need(txn, entry.ino)  # an entry exists only in a directory: no parent check
            self.remember(inode.ino)
            return self._current(inode, txn)

    def _dot_lookup(self, parent: int, name: bytes) -> Inode:
        with self._read() as txn:
            directory = self.ns.need_dir(txn, parent)
            ino = parent if name == b"." else directory.parent or ROOT_INO
            inode = self.ns.need(txn, ino)
            self.remember(ino)
            return self._current(inode, txn)

    def setattr(self, ino: int, changes: SetAttr, fh: int | None = None) -> Inode:
        """chmod/chown/utimens/truncate; a size change blocks (call from a worker thread)."""
        if changes.size is not None:
            with self._read() as txn:
                check_mutable(self.ns.need(txn, ino))
            self._truncate(ino, changes.size, fh)
        if (changes.mode is None and changes.uid is None and changes.gid is None and changes.atime_ns is None
                and changes.mtime_ns is None and changes.ctime_ns is None):
            return self.getattr(ino)
        if changes.mtime_ns is not None:
            self.files.forget_times(ino)  # before: a write racing with this one keeps its later time
        return self._current(self._write(lambda txn: self._apply_attrs(txn, ino, changes)))

    def _apply_attrs(self, txn: lmdb.Transaction, ino: int, c: SetAttr) -> Inode:
        inode = self.ns.need(txn, ino)
        check_mutable(inode)
        if c.mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | (c.mode & 0o7777)
            self._chmod_acl(txn, inode)
        if c.uid is not None:
            inode.uid = c.uid
        if c.gid is not None:
            inode.gid = c.gid
        if c.atime_ns is not None:
            inode.atime_ns = c.atime_ns
        if c.mtime_ns is not None:
            inode.mtime_ns = c.mtime_ns
        inode.ctime_ns = c.ctime_ns if c.ctime_ns is not None else _now()
        self.ns.put(txn, inode)
        return inode

    def _truncate(self, ino: int, size: int, fh: int | None) -> None:
        if self.readonly:
            raise FSError(errno.EROFS)
        if size < 0:
            raise FSError(errno.EINVAL)
        oi = self.files.handle(fh).inode if fh is not None else None
        if oi is not None and oi.ino == ino:  # ftruncate: part of that open file's data, committed with it
            self.files.truncate(oi, size)
            return
        # truncate(2) by path: through a private handle (sharing the file's data if it is open), committed
        # now.  Holding a handle also keeps a release racing with us (close() returns before the kernel's
        # RELEASE) from dropping the truncation as uncommitted data.
        fh = self.open(ino, os.O_WRONLY)[0]
        try:
            oi = self.files.handle(fh).inode
            self.files.truncate(oi, size)
            self.files.commit(oi)
        finally:
            self.files.release(fh)

    def readlink(self, ino: int) -> bytes:
        with self._read() as txn:
            return self.ns.target(txn, ino)

    # -- creating -------------------------------------------------------------------

    def _create(self, parent: int, name: bytes, mode: int, caller: Caller, rdev: int = 0,
                target: bytes | None = None) -> Inode:
        check_name(name)

        def make(txn: lmdb.Transaction) -> Inode:
            directory = self.live_dir(txn, parent)
            check_mutable(directory)
            if self.ns.lookup(txn, parent, name) is not None:
                raise FSError(errno.EEXIST)
            now = _now()
            new_mode, gid = self._new_mode_and_group(directory, mode, caller)
            access = default = None
            if target is None:
                new_mode, access, default = self._inherit_acls(txn, parent, new_mode)
                if default is None:
                    new_mode &= ~caller.umask
            inode = self.ns.allocate(txn, new_mode, caller.uid, gid, now, rdev, parent if stat.S_ISDIR(mode) else 0)
            if access is not None:
                self.ns.set_xattr(txn, inode.ino, acl.ACCESS, access)
            if default is not None and inode.is_dir:
                self.ns.set_xattr(txn, inode.ino, acl.DEFAULT, default)
            if target is not None:
                self.ns.set_target(txn, inode.ino, target)
                inode.size = len(target)
                self.ns.put(txn, inode)
            self.ns.link(txn, parent, name, inode.ino)
            directory.nlink += inode.is_dir
            directory.touch(now)
            self.ns.put(txn, directory)
            return inode

        inode = self._write(make)
        self.remember(inode.ino)
        return inode

    def live_dir(self, txn: lmdb.Transaction, ino: int) -> Inode:
        directory = self.ns.need_dir(txn, ino)
        if directory.nlink == 0:
            raise FSError(errno.ENOENT)  # removed while someone still sits in it
        return directory

    @staticmethod
    def _new_mode_and_group(directory: Inode, mode: int, caller: Caller) -> tuple[int, int]:
        """Mode (before umask or ACL) and group of a new inode: set-group-ID directories pass theirs on."""
        gid = caller.gid
        if directory.mode & stat.S_ISGID:
            gid = directory.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return mode, gid

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Inode:
        return self._create(parent, name, stat.S_IFDIR | (mode & 0o7777), caller)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Inode:
        """Regular files, FIFOs, sockets and device nodes (as metadata only)."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind == stat.S_IFDIR:
            raise FSError(errno.EPERM)
        if kind not in S_IFMT_KNOWN:
            raise FSError(errno.EINVAL)
        keep_rdev = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        return self._create(parent, name, kind | (mode & 0o7777), caller, rdev=keep_rdev)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Inode:
        if not target:
            raise FSError(errno.ENOENT)
        if len(target) >= 4096:
            raise FSError(errno.ENAMETOOLONG)
        return self._create(parent, name, stat.S_IFLNK | 0o777, caller, target=target)

    def create(self, parent: int, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[int, Inode]:
        """Create and open a regular file: (file handle, attributes)."""
        inode = self._create(parent, name, stat.S_IFREG | (mode & 0o7777), caller)
        fh = self._open_inode(inode, flags, lambda: 0, created=True)[0]  # nothing to read back: it is new
        return fh, inode

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        check_name(name)

        def add(txn: lmdb.Transaction) -> Inode:
            inode = self.ns.need(txn, ino)
            if inode.is_dir:
                raise FSError(errno.EPERM)
            if inode.nlink == 0:
                raise FSError(errno.ENOENT)
            directory = self.live_dir(txn, parent)
            check_mutable(inode, directory)
            if self.ns.lookup(txn, parent, name) is not None:
                raise FSError(errno.EEXIST)
            now = _now()
            self.ns.link(txn, parent, name, ino)
            inode.nlink += 1
            inode.ctime_ns = now
            directory.touch(now)
            self.ns.put(txn, inode)
            self.ns.put(txn, directory)
            return inode

        inode = self._write(add)
        self.remember(ino)
        return self._current(inode)

    # -- removing -------------------------------------------------------------------

    def unlink(self, parent: int, name: bytes) -> None:
        self._remove(parent, name, want_dir=False)

    def rmdir(self, parent: int, name: bytes) -> None:
        if name == b".":
            raise FSError(errno.EINVAL)
        if name == b"..":
            raise FSError(errno.ENOTEMPTY)
        self._remove(parent, name, want_dir=True)

    def _remove(self, parent: int, name: bytes, want_dir: bool) -> None:
        check_name(name)

        def remove(txn: lmdb.Transaction) -> Inode:
            directory = self.ns.need_dir(txn, parent)
            entry = self.ns.lookup(txn, parent, name)
            if entry is None:
                raise FSError(errno.ENOENT)
            victim = self.ns.need(txn, entry.ino)
            if want_dir and not victim.is_dir:
                raise FSError(errno.ENOTDIR)
            if not want_dir and victim.is_dir:
                raise FSError(errno.EISDIR)
            check_mutable(directory, victim)
            if victim.is_dir and not self.ns.is_empty(txn, victim.ino):
                raise FSError(errno.ENOTEMPTY)
            now = _now()
            self.ns.unlink(txn, parent, entry)
            directory.nlink -= victim.is_dir
            directory.touch(now)
            self.ns.put(txn, directory)
            drop_link(self.ns, txn, victim, now)
            return victim

        victim = self._write(remove, frees=True)
        if victim.nlink == 0:
            self.orphaned(victim.ino)

    # -- rename -----------------------------------------------------------------------

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        """rename(2) and renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FSError(errno.EINVAL)
        check_name(old_name)
        check_name(new_name)
        victim = self._write(lambda txn: Rename(self.ns, txn, old_parent, old_name, new_parent,
                                                new_name, flags).run(), frees=True)
        if victim is not None and victim.nlink == 0:
            self.orphaned(victim.ino)

    # -- directories --------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        with self._read() as txn:
            self.ns.need_dir(txn, ino)
        return ino

    def readdir(self, ino: int, start_id: int) -> list[DirEntry]:
        """The next batch of entries after cookie ``start_id`` (empty at the end).

        Cookies 1 and 2 follow "." and ".."; real entries use their entry ids.
        """
        out: list[DirEntry] = []
        with self._read() as txn:
            directory = self.ns.need_dir(txn, ino)
            if start_id < 1:
                out.append(DirEntry(b".", directory, 1, counted=False))
            if start_id < 2:
                parent = self.ns.get(txn, directory.parent or ROOT_INO) or directory
                out.append(DirEntry(b"..", parent, 2, counted=False))
            for entry in self.ns.entries(txn, ino, after=max(start_id, 2), limit=READDIR_BATCH):
                child = self.ns.get(txn, entry.ino)
                if child is not None:
                    out.append(DirEntry(entry.name, child, entry.entry_id))
            return [DirEntry(e.name, self._current(e.attr, txn), e.next_id, e.counted) for e in out]

    def fsyncdir(self, ino: int) -> None:
        self.store.sync()

    # -- the filesystem as a whole --------------------------------------------------------

    def statfs(self) -> dict[str, int]:
        """Space from the disk holding the store; inode counts from the namespace."""
        disk = os.statvfs(self.store.path)
        with self._read() as txn:
            used = self.ns.count(txn)
        free_inodes = disk.f_bavail * disk.f_frsize // 1024  # ~1 KiB of metadata per inode at most
        return {
            "f_bsize": disk.f_bsize, "f_frsize": disk.f_frsize, "f_blocks": disk.f_blocks,
            "f_bfree": disk.f_bfree, "f_bavail": disk.f_bavail, "f_files": used + free_inodes,
            "f_ffree": free_inodes, "f_favail": free_inodes, "f_namemax": 255,
        }


__all__ = ["Caller", "DirEntry", "Entry", "FsCore", "Inode", "SetAttr", "RENAME_EXCHANGE", "RENAME_NOREPLACE"]
