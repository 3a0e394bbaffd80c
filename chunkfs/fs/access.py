"""Permission checks as the kernel makes them, for requests that do not come through the kernel.

Requests through the mount are checked by the kernel (``default_permissions``):
the core never checks permissions itself.  ``chunkfs clone``, ``snapshot``,
``rmtree`` and ``du`` come through the control channel instead (control.py),
so the core checks for them, on the caller's credentials, what the kernel
would check for the equivalent system calls: search permission on every
directory of a path, read permission on what is copied or listed, write and
search permission on a directory that gains or loses an entry, the sticky
bit.  The checks follow the kernel's ``generic_permission`` (fs/namei.c):
owner, POSIX ACL (``posix_acl_permission``, fs/posix_acl.c), group and
other bits, then the capabilities that override them.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field

import lmdb

from ..errors import FSError, PathError
from . import acl
from .namespace import ROOT_INO, Inode, Namespace, check_name

MAY_EXEC, MAY_WRITE, MAY_READ = 1, 2, 4

# Capability bits (linux/capability.h) the checks consult.
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID = 0, 1, 2, 3, 4
CAP_SETFCAP, CAP_SYS_ADMIN, CAP_MKNOD = 31, 21, 27


@dataclass(frozen=True)
class Credentials:
    """Who asks: filesystem uid and gid, supplementary groups, effective capabilities (a bit mask)."""

    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)
    caps: int = 0

    def has(self, cap: int) -> bool:
        return bool(self.caps >> cap & 1)

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    @classmethod
    def of_process(cls, pid: int, uid: int, gid: int) -> "Credentials":
        """The credentials of a running process, from ``/proc/PID/status`` (its fs ids, groups, CapEff).

        ``uid`` and ``gid`` are what the socket said (SO_PEERCRED); a process
        whose status disagrees (it exited and the pid was reused, or changed
        ids since it connected) gets nothing but those ids.
        """
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            uids, gids = fields["Uid"].split(), fields["Gid"].split()
            fsuid, fsgid = int(uids[3]), int(gids[3])
            if int(uids[1]) != uid or int(gids[1]) != gid:
                return cls(uid, gid)
            groups = frozenset(int(g) for g in fields.get("Groups", "").split())
            return cls(fsuid, fsgid, groups, int(fields["CapEff"].strip(), 16))
        except (OSError, KeyError, ValueError, IndexError):
            return cls(uid, gid)

    @classmethod
    def root(cls) -> "Credentials":
        return cls(0, 0, frozenset(), (1 << 41) - 1)


def _acl_allows(entries: list[acl.AclEntry], inode: Inode, cred: Credentials, want: int) -> bool:
    """posix_acl_permission: the first matching entry decides, named and group entries through the mask."""
    mask = next((e.perm for e in entries if e.tag == acl.MASK), 7)
    group_found = False
    for e in entries:
        if e.tag == acl.USER_OBJ and inode.uid == cred.uid:
            return e.perm & want == want
        if e.tag == acl.USER and e.id == cred.uid:
            return e.perm & mask & want == want
        if (e.tag == acl.GROUP_OBJ and cred.in_group(inode.gid)) or (e.tag == acl.GROUP and cred.in_group(e.id)):
            group_found = True
            if e.perm & want == want:  # the first group entry granting it decides, through the mask
                return e.perm & mask & want == want
        if e.tag == acl.OTHER:
            return not group_found and e.perm & want == want
    return False


def _mode_allows(ns: Namespace, txn: lmdb.Transaction, inode: Inode, cred: Credentials, want: int) -> bool:
    mode = inode.mode
    if inode.uid == cred.uid:
        return (mode >> 6) & want == want
    if mode & 0o070:
        raw = ns.xattr(txn, inode.ino, acl.ACCESS)
        if raw is not None:
            try:
                return _acl_allows(acl.parse(raw), inode, cred, want)
            except FSError:
                pass  # a damaged ACL: fall back to the mode bits, as they were set from it
    if cred.in_group(inode.gid):
        return (mode >> 3) & want == want
    return mode & want == want


def allowed(ns: Namespace, txn: lmdb.Transaction, inode: Inode, cred: Credentials, want: int) -> bool:
    """generic_permission: mode bits and ACL, then CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH."""
    if _mode_allows(ns, txn, inode, cred, want):
        return True
    if inode.is_dir:
        if cred.has(CAP_DAC_OVERRIDE):
            return True
        return not want & MAY_WRITE and cred.has(CAP_DAC_READ_SEARCH)
    if cred.has(CAP_DAC_OVERRIDE) and (not want & MAY_EXEC or inode.mode & 0o111):
        return True
    return want == MAY_READ and cred.has(CAP_DAC_READ_SEARCH)


def require(ns: Namespace, txn: lmdb.Transaction, inode: Inode, cred: Credentials, want: int) -> None:
    if not allowed(ns, txn, inode, cred, want):
        raise FSError(errno.EACCES)


def owns(inode: Inode, cred: Credentials) -> bool:
    """inode_owner_or_capable: the owner, or CAP_FOWNER."""
    return inode.uid == cred.uid or cred.has(CAP_FOWNER)


def may_delete(ns: Namespace, txn: lmdb.Transaction, directory: Inode, victim: Inode, cred: Credentials) -> None:
    """may_delete: write and search permission on the directory, and the sticky bit's rule."""
    require(ns, txn, directory, cred, MAY_WRITE | MAY_EXEC)
    if directory.mode & stat.S_ISVTX and not (owns(victim, cred) or owns(directory, cred)):
        raise FSError(errno.EPERM)


@dataclass(frozen=True)
class Resolved:
    """A path looked up from the root: its directory, its last name (b"" for the root) and its inode."""

    parent: Inode
    name: bytes
    inode: Inode | None  # None: the last name does not exist


def resolve(ns: Namespace, txn: lmdb.Transaction, path: bytes, cred: Credentials) -> Resolved:
    """Look ``path`` (relative to the root, no symlinks, no ``..``) up as the kernel's path walk would.

    Every directory passed through needs search permission (EACCES); a
    component that is not a directory is ENOTDIR.  The caller resolved
    symlinks and ``..`` already (the client sends a canonical path); one
    found here means the tree changed meanwhile, and is refused.  Errors
    name the path up to where the walk stopped (PathError).
    """
    parts = [p for p in path.split(b"/") if p and p != b"."]
    root = ns.need_dir(txn, ROOT_INO)
    if not parts:
        return Resolved(root, b"", root)
    directory, walked = root, b""
    for i, name in enumerate(parts):
        if name == b"..":
            raise PathError(errno.EINVAL, path, "a path given to the daemon must not contain '..'")
        try:
            check_name(name)
        except FSError as exc:
            raise PathError(exc.errno, walked + b"/" + name) from None
        if not directory.is_dir:
            raise PathError(errno.ENOTDIR, walked)
        if not allowed(ns, txn, directory, cred, MAY_EXEC):
            raise PathError(errno.EACCES, walked or b"/")
        walked += b"/" + name
        entry = ns.lookup(txn, directory.ino, name)
        child = ns.get(txn, entry.ino) if entry is not None else None
        if i == len(parts) - 1:
            return Resolved(directory, name, child)
        if child is None:
            raise PathError(errno.ENOENT, walked)
        if child.is_symlink:
            raise PathError(errno.ELOOP, walked, "a symbolic link appeared in the path meanwhile")
        directory = child
    raise AssertionError("unreachable")


def normal_path(path: bytes) -> bytes:
    """``path`` from the root as messages show it: ``/a/b``, ``/`` for the root."""
    return b"/" + b"/".join(p for p in path.split(b"/") if p and p != b".")


def join_path(parent: bytes, name: bytes) -> bytes:
    return (b"" if parent == b"/" else parent) + b"/" + name
