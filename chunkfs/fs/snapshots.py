"""Read-only snapshots: immutable clones kept in one directory, ``.snapshots`` at the root of the mount.

A snapshot is a clone (clone.py) whose every inode carries the IMMUTABLE
flag (namespace.py); the core refuses any change to such an inode with EPERM,
as Linux does for a file with ``chattr +i``: writing, truncating, chmod,
chown, utimens, xattrs, and any entry made, removed or renamed in, out of or
inside a snapshot's directories (``check_mutable``).  Reading keeps even the
atime as it was.

The snapshot directory is made at the first snapshot, owned by the owner of
the mount's root, mode 0755, and immutable too: every user can list it and
read the snapshots as their permissions allow, nobody can add, rename or
remove anything in it through the mount.  ``chunkfs snapshot`` adds to it,
and a snapshot is removed with ``chunkfs snapshot --delete`` (or ``chunkfs
rmtree``) by its owner (the owner of its top inode) or root.  Copying the
root of the mount leaves the snapshot directory out, so that snapshots never
contain snapshots.
"""

from __future__ import annotations

import errno
import stat
import time

import lmdb

from ..errors import FSError
from .namespace import IMMUTABLE, ROOT_INO, Inode, Namespace

SNAPSHOT_DIR = b".snapshots"


def is_snapshot_dir(parent: int, name: bytes, inode: Inode) -> bool:
    return parent == ROOT_INO and name == SNAPSHOT_DIR and inode.is_dir and inode.immutable


def snapshot_dir(ns: Namespace, txn: lmdb.Transaction) -> Inode | None:
    """The snapshot directory, None before the first snapshot; EEXIST if a user's ``.snapshots`` is in the way."""
    entry = ns.lookup(txn, ROOT_INO, SNAPSHOT_DIR)
    if entry is None:
        return None
    inode = ns.get(txn, entry.ino)
    if inode is None or not is_snapshot_dir(ROOT_INO, SNAPSHOT_DIR, inode):
        raise FSError(errno.EEXIST, "/.snapshots exists and is not chunkfs's snapshot directory; rename it first")
    return inode


def ensure_snapshot_dir(ns: Namespace, txn: lmdb.Transaction) -> tuple[Inode, bool]:
    """The snapshot directory, made if absent (in the caller's transaction); also says if it was made."""
    found = snapshot_dir(ns, txn)
    if found is not None:
        return found, False
    root = ns.need_dir(txn, ROOT_INO)
    now = time.time_ns()
    inode = ns.allocate(txn, stat.S_IFDIR | 0o755, root.uid, root.gid, now, parent=ROOT_INO)
    inode.flags = IMMUTABLE
    ns.put(txn, inode)
    ns.link(txn, ROOT_INO, SNAPSHOT_DIR, inode.ino)
    root.nlink += 1
    root.touch(now)
    ns.put(txn, root)
    return inode, True


def list_snapshots(ns: Namespace, txn: lmdb.Transaction) -> list[dict]:
    """Every snapshot: name, owner, creation time (ns), type, size of a file."""
    directory = snapshot_dir(ns, txn)
    if directory is None:
        return []
    out = []
    for entry in ns.entries(txn, directory.ino):
        inode = ns.get(txn, entry.ino)
        if inode is None:
            continue
        out.append({"name": entry.name, "uid": inode.uid, "gid": inode.gid, "created_ns": inode.btime_ns,
                    "type": "directory" if inode.is_dir else "file" if inode.is_reg else "other"})
    return out
