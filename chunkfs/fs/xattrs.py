"""Extended attributes of every namespace the kernel passes, with POSIX ACLs kept in step with modes.

A mixin of :class:`chunkfs.fs.core.FsCore`: it uses the core's namespace and
transaction helpers.  Names and values are opaque bytes stored in the
``xattrs`` database, except the two ACL names (see acl.py), whose writes
also change the inode's mode.  The kernel checks who may set which
namespace (``trusted.*`` needs CAP_SYS_ADMIN, ``user.*`` only on regular
files and directories) under ``default_permissions``.
"""

from __future__ import annotations

import errno
import os
import time

import lmdb

from ..errors import FSError
from . import acl
from .namespace import Inode, Namespace, check_mutable

XATTR_NAME_MAX = 255


class XattrOps:
    """getxattr/listxattr/setxattr/removexattr for FsCore."""

    ns: Namespace

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.find_xattr(ino, name)
        if value is None:
            raise FSError(errno.ENODATA)
        return value

    def find_xattr(self, ino: int, name: bytes) -> bytes | None:
        """getxattr() with None for a missing attribute (ENOENT for a missing inode).

        Most getxattr requests ask for an attribute that is not there: the
        kernel's security.capability check before every write and chown, and
        its ACL reads.  None lets the adapter answer ENODATA without raising
        and translating an exception on the way.
        """
        with self._read() as txn:
            value = self.ns.xattr(txn, ino, name)
            if value is None and not self.ns.exists(txn, ino):
                raise FSError(errno.ENOENT)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        with self._read() as txn:
            self.ns.need(txn, ino)
            return self.ns.xattr_names(txn, ino)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """Set an attribute; ``flags`` may hold os.XATTR_CREATE or os.XATTR_REPLACE."""
        _check_name(name)

        def put(txn: lmdb.Transaction) -> None:
            inode = self.ns.need(txn, ino)
            check_mutable(inode)
            exists = self.ns.xattr(txn, ino, name) is not None
            if flags & os.XATTR_CREATE and exists:
                raise FSError(errno.EEXIST)
            if flags & os.XATTR_REPLACE and not exists:
                raise FSError(errno.ENODATA)
            if name == acl.ACCESS:
                self._set_access_acl(txn, inode, value)
            elif name == acl.DEFAULT:
                self._set_default_acl(txn, inode, value)
            else:
                self.ns.set_xattr(txn, ino, name, value)
            inode.ctime_ns = time.time_ns()
            self.ns.put(txn, inode)

        self._write(put)

    def removexattr(self, ino: int, name: bytes) -> None:
        _check_name(name)

        def remove(txn: lmdb.Transaction) -> None:
            inode = self.ns.need(txn, ino)
            check_mutable(inode)
            if not self.ns.remove_xattr(txn, ino, name):
                raise FSError(errno.ENODATA)
            inode.ctime_ns = time.time_ns()
            self.ns.put(txn, inode)

        self._write(remove, frees=True)

    # -- ACLs ------------------------------------------------------------------------

    def _set_access_acl(self, txn: lmdb.Transaction, inode: Inode, value: bytes) -> None:
        """Store an access ACL and set the mode bits it implies; one equal to the mode is not stored."""
        entries = acl.parse(value)
        if entries:
            inode.mode = (inode.mode & ~0o777) | acl.permission_bits(entries)
        if not entries or acl.is_minimal(entries):
            self.ns.remove_xattr(txn, inode.ino, acl.ACCESS)
        else:
            self.ns.set_xattr(txn, inode.ino, acl.ACCESS, value)

    def _set_default_acl(self, txn: lmdb.Transaction, inode: Inode, value: bytes) -> None:
        if not inode.is_dir:
            raise FSError(errno.EACCES)  # as the kernel answers for a default ACL on a non-directory
        if acl.parse(value):
            self.ns.set_xattr(txn, inode.ino, acl.DEFAULT, value)
        else:
            self.ns.remove_xattr(txn, inode.ino, acl.DEFAULT)

    def _chmod_acl(self, txn: lmdb.Transaction, inode: Inode) -> None:
        """chmod changed the mode: rewrite the access ACL's owner, mask and other entries to match."""
        raw = self.ns.xattr(txn, inode.ino, acl.ACCESS)
        if raw is not None:
            self.ns.set_xattr(txn, inode.ino, acl.ACCESS, acl.chmod(raw, inode.mode))

    def _inherit_acls(self, txn: lmdb.Transaction, parent: int, mode: int) -> tuple[int, bytes | None, bytes | None]:
        """(mode, access ACL, default ACL) of a new inode in ``parent``; ACLs None when not inherited."""
        default = self.ns.xattr(txn, parent, acl.DEFAULT)
        if default is None:
            return mode, None, None
        mode, access = acl.inherit(default, mode)
        return mode, access, default


def _check_name(name: bytes) -> None:
    if not name:
        raise FSError(errno.EINVAL)
    if len(name) > XATTR_NAME_MAX:
        raise FSError(errno.ERANGE)
