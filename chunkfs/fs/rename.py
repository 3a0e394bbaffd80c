"""rename(2) and renameat2(2): every check and every record change of one rename, in one transaction.

The kernel's VFS already refuses most bad renames (a directory into its own
subtree, a file over a directory, across mounts), but the core must be right
on its own too: it is tested in-process, and a wrong link count or a
directory cycle in LMDB would outlive any mount.
"""

from __future__ import annotations

import errno
import time

import lmdb

from ..errors import FSError
from .namespace import ROOT_INO, Inode, Namespace, check_mutable

RENAME_NOREPLACE = 1  # the values of <linux/fs.h>, as the kernel passes them
RENAME_EXCHANGE = 2


class Rename:
    """One rename request, checked and applied inside one write transaction."""

    def __init__(self, ns: Namespace, txn: lmdb.Transaction, old_parent: int, old_name: bytes,
                 new_parent: int, new_name: bytes, flags: int):
        self.ns, self.txn, self.flags = ns, txn, flags
        self.old_parent, self.new_parent = old_parent, new_parent
        self.dirs = {old_parent: ns.need_dir(txn, old_parent)}
        self.dirs[new_parent] = self.dirs.get(new_parent) or ns.need_dir(txn, new_parent)
        if self.dirs[new_parent].nlink == 0:
            raise FSError(errno.ENOENT)  # the target directory was removed
        self.src = ns.lookup(txn, old_parent, old_name)
        if self.src is None:
            raise FSError(errno.ENOENT)
        self.dst = ns.lookup(txn, new_parent, new_name)
        self.new_name = new_name
        self.now = time.time_ns()

    def run(self) -> Inode | None:
        """Apply the rename; returns the replaced inode, if one lost a name."""
        moved = self.ns.need(self.txn, self.src.ino)
        check_mutable(*self.dirs.values(), moved)
        if self.flags & RENAME_EXCHANGE:
            if self.dst is None:
                raise FSError(errno.ENOENT)
            other = self.ns.need(self.txn, self.dst.ino)
            check_mutable(other)
            self._exchange(moved, other)
            return None
        if self.dst is not None and self.flags & RENAME_NOREPLACE:
            raise FSError(errno.EEXIST)
        if self.dst is not None and self.dst.ino == moved.ino:
            return None  # both names are links to one inode: POSIX says do nothing
        victim = self.ns.need(self.txn, self.dst.ino) if self.dst is not None else None
        if victim is not None:
            check_mutable(victim)
            self._check_replaceable(moved, victim)
        self._check_not_into_itself(moved, self.old_parent, self.new_parent)
        self.ns.unlink(self.txn, self.old_parent, self.src)
        if self.dst is None:
            self.ns.link(self.txn, self.new_parent, self.new_name, moved.ino)
        else:
            self.ns.retarget(self.txn, self.new_parent, self.dst, moved.ino)
            self.dirs[self.new_parent].nlink -= victim.is_dir
        self._reparent(moved, self.old_parent, self.new_parent)
        self._save(moved)
        if victim is not None:
            drop_link(self.ns, self.txn, victim, self.now)
        return victim

    def _check_replaceable(self, moved: Inode, victim: Inode) -> None:
        if moved.is_dir and not victim.is_dir:
            raise FSError(errno.ENOTDIR)
        if victim.is_dir and not moved.is_dir:
            raise FSError(errno.EISDIR)
        if victim.is_dir and not self.ns.is_empty(self.txn, victim.ino):
            raise FSError(errno.ENOTEMPTY)

    def _check_not_into_itself(self, moved: Inode, old_parent: int, new_parent: int) -> None:
        """A directory cannot move below itself (EINVAL, as on every POSIX filesystem)."""
        if not moved.is_dir or old_parent == new_parent:
            return
        ino, hops = new_parent, 0
        while ino != ROOT_INO and hops < 1 << 16:
            if ino == moved.ino:
                raise FSError(errno.EINVAL)
            ino = self.ns.need(self.txn, ino).parent or ROOT_INO
            hops += 1

    def _exchange(self, a: Inode, b: Inode) -> None:
        if a.ino == b.ino:
            return
        self._check_not_into_itself(a, self.old_parent, self.new_parent)
        self._check_not_into_itself(b, self.new_parent, self.old_parent)
        self.ns.retarget(self.txn, self.old_parent, self.src, b.ino)
        self.ns.retarget(self.txn, self.new_parent, self.dst, a.ino)
        self._reparent(a, self.old_parent, self.new_parent)
        self._reparent(b, self.new_parent, self.old_parent)
        self._save(a, b)

    def _reparent(self, inode: Inode, old: int, new: int) -> None:
        inode.ctime_ns = self.now
        if inode.is_dir and old != new:
            inode.parent = new
            self.dirs[old].nlink -= 1
            self.dirs[new].nlink += 1

    def _save(self, *inodes: Inode) -> None:
        for directory in self.dirs.values():
            directory.touch(self.now)
        for inode in (*self.dirs.values(), *inodes):
            self.ns.put(self.txn, inode)


def drop_link(ns: Namespace, txn: lmdb.Transaction, inode: Inode, now: int) -> None:
    """One name of ``inode`` is gone; at zero, mark it an orphan in the same transaction."""
    inode.nlink = 0 if inode.is_dir else inode.nlink - 1
    inode.ctime_ns = now
    ns.put(txn, inode)
    if inode.nlink == 0:
        ns.mark_orphan(txn, inode.ino)
