"""Copies by metadata: a file or a whole tree cloned like ``cp -a``, without reading a byte of its data.

A regular file's contents are an immutable list of chunks (its manifest), so
a copy is a new manifest naming the same chunks, each with one more
reference (``ChunkStore.clone_files``); a later write to either side commits
a new manifest for that side only, so the two never affect each other.
Everything else ``cp -a`` keeps is copied too: mode, owner and group (as far
as the caller may give them away, as ``cp -a`` run by that user would),
atime and mtime, xattrs and ACLs, symlink targets, device numbers, and hard
links between files of the tree (a file with two names in the source has two
names in the copy; its names outside the tree are not followed).  ctime and
the birth time are the time of the copy, as for any new inode.

Each file is copied as of one commit, in the same transaction that reads its
inode: uncommitted writes of a file open elsewhere are not in the copy (close
or fsync it first), so a copy of a tree being written is consistent per file.

A tree is copied in bounded transactions (at most 1,024 inodes or about
65,536 chunk references each: tens of milliseconds), so requests through the
mount get the write lock in between.  Until the last
transaction, the copy's top directory has no name and is marked as an
orphan: a crash, a failure or a cancelled request leaves no partial copy in
sight, and the orphan tree is deleted in the background, at once or at the
next mount (reaper.py).  The last transaction names it.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lmdb

from ..errors import FSError, PathError
from .access import (CAP_CHOWN, CAP_MKNOD, CAP_SETFCAP, CAP_SYS_ADMIN, MAY_EXEC, MAY_READ, MAY_WRITE, Credentials,
                     allowed, join_path)
from .namespace import DENSE, FIRST_ENTRY_ID, IMMUTABLE, ROOT_INO, Inode, check_mutable

BATCH_INODES = 1024  # inodes per transaction: tens of milliseconds of holding the write lock
BATCH_CHUNKS = 65536  # manifest entries per transaction (estimated from file sizes): big files make small batches
LISTING_PAGE = 256  # directory entries read per read transaction
DROPPED_ON_LOST_OWNER = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX  # as cp -a does when it cannot chown


class CloneCancelled(FSError):
    """The request was cancelled: its client went away, or the filesystem is being unmounted."""

    def __init__(self) -> None:
        super().__init__(errno.ECANCELED, "cancelled")


@dataclass(frozen=True)
class _Item:
    """One directory entry to copy: its source inode, the copied directory it goes to, and its path."""

    src: int
    dst_parent: int
    name: bytes
    path: bytes


@dataclass
class CloneResult:
    """What a clone made (figures for the user)."""

    ino: int = 0  # the copy's top inode
    files: int = 0
    directories: int = 0
    others: int = 0  # symlinks, devices, FIFOs, sockets
    bytes: int = 0  # logical bytes of the regular files
    hard_links: int = 0  # extra names of files with several names in the tree
    seconds: float = 0.0

    def add(self, other: "CloneResult") -> None:
        for name in ("files", "directories", "others", "bytes", "hard_links"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {"files": self.files, "directories": self.directories, "others": self.others,
                "bytes": self.bytes, "hard_links": self.hard_links, "seconds": round(self.seconds, 3)}


@dataclass
class _Batch:
    """What one batch's transaction made; applied to the clone's state only once it committed."""

    linked: dict[int, int] = field(default_factory=dict)
    subdirs: dict[int, int] = field(default_factory=dict)
    to_visit: list[tuple[int, int, bytes]] = field(default_factory=list)
    counts: CloneResult = field(default_factory=CloneResult)


class TreeClone:
    """One clone request: :meth:`run` copies ``src`` to ``name`` in directory ``dst_parent``.

    ``snapshot``: every copy is made immutable, and write permission on the
    destination directory is not asked for (it is the snapshot directory,
    which nothing writes through the mount).  ``skip(parent, name, inode)``
    leaves entries out (the snapshot directory, when the root is copied).
    ``should_stop()`` is asked between transactions.
    """

    def __init__(self, core, cred: Credentials, src: Inode, src_path: bytes, dst_parent: int, name: bytes, *,
                 snapshot: bool = False, should_stop: Callable[[], bool] = lambda: False,
                 skip: Callable[[int, bytes, Inode], bool] = lambda parent, name, inode: False):
        self.core, self.ns, self.store = core, core.ns, core.store
        self.cred, self.src, self.src_path = cred, src, src_path
        self.dst_parent, self.name = dst_parent, name
        self.snapshot, self.should_stop, self.skip = snapshot, should_stop, skip
        self.linked: dict[int, int] = {}  # source inode with several names -> its copy
        self.subdirs: dict[int, int] = {}  # copied directory -> subdirectories it got
        self.to_visit: list[tuple[int, int, bytes]] = []  # (source directory, its copy, its path)
        self.result = CloneResult()
        self._avg_chunk = max(1, self.store.settings.avg_size)

    def run(self) -> CloneResult:
        started = time.monotonic()
        with self.store.read_txn() as txn:
            self._target(txn, self.ns.need_dir(txn, self.dst_parent), write_check=True)
            self._check_source(txn, self.src, self.src_path)
        self.result.ino = self._copy_tree() if self.src.is_dir else self._copy_single()
        self.result.seconds = time.monotonic() - started
        return self.result

    # -- the destination -------------------------------------------------------------------

    def _target(self, txn: lmdb.Transaction, parent: Inode, write_check: bool = False) -> Inode:
        """The destination directory, checked: live, writable by the caller, the new name free."""
        if parent.nlink == 0:
            raise FSError(errno.ENOENT)
        if not self.snapshot:
            check_mutable(parent)
            if write_check and not allowed(self.ns, txn, parent, self.cred, MAY_WRITE | MAY_EXEC):
                raise FSError(errno.EACCES)
        if self.ns.lookup(txn, self.dst_parent, self.name) is not None:
            raise FSError(errno.EEXIST)
        return parent

    def _name(self, txn: lmdb.Transaction, ino: int, is_dir: bool) -> None:
        """Give the copy its name in the destination directory (the last step, in its own transaction)."""
        parent = self._target(txn, self.ns.need_dir(txn, self.dst_parent))
        self.ns.link(txn, self.dst_parent, self.name, ino)
        parent.nlink += is_dir
        parent.touch(time.time_ns())
        self.ns.put(txn, parent)

    # -- one file -----------------------------------------------------------------------------

    def _copy_single(self) -> int:
        """A file, symlink or special file: one transaction makes and names the copy."""
        def plan(txn: lmdb.Transaction) -> list:
            batch.counts = CloneResult()
            ids = _Ids(self.ns, txn, 1)
            inode, pairs = self._make(txn, self.ns.need(txn, self.src.ino), self.dst_parent, batch, ids)
            ids.done()
            batch.counts.ino = inode.ino
            self._name(txn, inode.ino, is_dir=False)
            return pairs

        batch = _Batch()
        self.store.clone_files(plan)
        self.result.add(batch.counts)
        return batch.counts.ino

    # -- a tree -------------------------------------------------------------------------------

    def _copy_tree(self) -> int:
        root = self._write(self._make_root)
        try:
            self.result.directories += 1
            self.to_visit.append((self.src.ino, root, self.src_path))
            self._copy_descendants()
            self._write(lambda txn: self._name_root(txn, root))
        except BaseException:
            self.core.reaper.add(root)  # the unnamed partial copy goes, in the background
            raise
        return root

    def _write(self, fn: Callable[[lmdb.Transaction], object]):
        return self.store.write_txn(lambda txn: (fn(txn), []))

    def _make_root(self, txn: lmdb.Transaction) -> int:
        """The copy's top directory: no name, link count 0 and an orphan mark until the last transaction."""
        self._target(txn, self.ns.need_dir(txn, self.dst_parent))
        ids = _Ids(self.ns, txn, 1)
        inode, _ = self._make(txn, self.ns.need(txn, self.src.ino), self.dst_parent, _Batch(), ids)
        ids.done()
        inode.nlink = 0
        self.ns.put(txn, inode)
        self.ns.mark_orphan(txn, inode.ino)
        return inode.ino

    def _name_root(self, txn: lmdb.Transaction, root: int) -> None:
        inode = self.ns.need(txn, root)
        inode.nlink = 2 + self.subdirs.get(root, 0)
        self.ns.put(txn, inode)
        self.ns.clear_orphan(txn, root)
        self._name(txn, root, is_dir=True)

    def _copy_descendants(self) -> None:
        items: list[_Item] = []
        weight = 0
        while self.to_visit:
            src_dir, dst_dir, path = self.to_visit.pop()
            after = 0
            while True:
                if self.should_stop():
                    raise CloneCancelled()
                after, page = self._list(src_dir, dst_dir, path, after)
                if after is None:
                    break
                for item, size in page:
                    items.append(item)
                    weight += 1 + size // self._avg_chunk * BATCH_INODES // BATCH_CHUNKS
                    if weight >= BATCH_INODES:
                        self._copy_batch(items)
                        items, weight = [], 0
            if not self.to_visit and items:  # a subdirectory to visit may still be in the batch
                self._copy_batch(items)
                items, weight = [], 0

    def _list(self, src_dir: int, dst_dir: int, path: bytes, after: int) -> tuple[int | None, list]:
        """The next page of a source directory: (last entry id or None at the end, [(item, size)])."""
        out = []
        with self.store.read_txn() as txn:
            entries = self.ns.entries(txn, src_dir, after=after, limit=LISTING_PAGE)
            for entry in entries:
                child = self.ns.get(txn, entry.ino)
                if child is None or self.skip(src_dir, entry.name, child):
                    continue
                child_path = join_path(path, entry.name)
                self._check_source(txn, child, child_path)
                out.append((_Item(entry.ino, dst_dir, entry.name, child_path), child.size if child.is_reg else 0))
        return (entries[-1].entry_id if entries else None), out

    def _check_source(self, txn: lmdb.Transaction, inode: Inode, path: bytes) -> None:
        """What ``cp -a`` run by the caller would need: read (and search) permission; mknod for devices."""
        want = MAY_READ | MAY_EXEC if inode.is_dir else MAY_READ if inode.is_reg else 0
        if want and not allowed(self.ns, txn, inode, self.cred, want):
            raise PathError(errno.EACCES, path)
        if (stat.S_ISCHR(inode.mode) or stat.S_ISBLK(inode.mode)) and not self.cred.has(CAP_MKNOD):
            raise PathError(errno.EPERM, path)

    def _copy_batch(self, items: list[_Item]) -> None:
        """Copy the inodes of ``items`` and name them in their copied directories, in one transaction."""
        def plan(txn: lmdb.Transaction) -> list:
            batch.__init__()  # the transaction may run again (map growth): start over each time
            ids = _Ids(self.ns, txn, len(items))
            pairs = []
            for item in items:
                src = self.ns.get(txn, item.src)
                if src is None:  # deleted since it was listed
                    continue
                copy = None if src.is_dir else batch.linked.get(item.src) or self.linked.get(item.src)
                if copy is not None:
                    self._add_name(txn, copy)
                    batch.counts.hard_links += 1
                else:
                    inode, more = self._make(txn, src, item.dst_parent, batch, ids)
                    pairs += more
                    copy = inode.ino
                    if src.is_dir:
                        batch.subdirs[item.dst_parent] = batch.subdirs.get(item.dst_parent, 0) + 1
                        batch.to_visit.append((item.src, copy, item.path))
                    elif src.nlink > 1:
                        batch.linked[item.src] = copy
                self.ns.link(txn, item.dst_parent, item.name, copy, next(ids.entries))
            ids.done()
            for directory, n in batch.subdirs.items():
                inode = self.ns.need(txn, directory)
                if inode.nlink:  # not the top directory, which gets its count when it is named
                    inode.nlink += n
                    self.ns.put(txn, inode)
            return pairs

        batch = _Batch()
        self.store.clone_files(plan)
        self.linked.update(batch.linked)
        for directory, n in batch.subdirs.items():
            self.subdirs[directory] = self.subdirs.get(directory, 0) + n
        self.to_visit += reversed(batch.to_visit)
        self.result.add(batch.counts)

    # -- one inode -----------------------------------------------------------------------------

    def _make(self, txn: lmdb.Transaction, src: Inode, parent: int, batch: _Batch,
              ids: "_Ids") -> tuple[Inode, list]:
        """A new inode copying ``src`` (not named yet), numbered from ``ids``; and the contents to copy."""
        uid, gid, mode = self._owner(src)
        now = time.time_ns()
        inode = Inode(next(ids.inos), mode, 2 if src.is_dir else 1, uid, gid, src.rdev, src.size, src.atime_ns,
                      src.mtime_ns, now, now, parent if src.is_dir else 0,
                      flags=(IMMUTABLE if self.snapshot else 0) | (src.flags & DENSE))  # the same contents
        self.ns.put(txn, inode)
        ids.made += 1
        for name in self.ns.xattr_names(txn, src.ino):
            if self._may_copy_xattr(name):
                self.ns.set_xattr(txn, inode.ino, name, self.ns.xattr(txn, src.ino, name))
        counts = batch.counts
        pairs = []
        if src.is_reg:
            pairs.append((self.core.file_id_for(src.ino), self.core.file_id_for(inode.ino)))
            counts.files += 1
            counts.bytes += src.size
        elif src.is_dir:
            counts.directories += 1
        else:
            counts.others += 1
            if src.is_symlink:
                self.ns.set_target(txn, inode.ino, self.ns.target(txn, src.ino))
        return inode, pairs

    def _add_name(self, txn: lmdb.Transaction, ino: int) -> None:
        inode = self.ns.need(txn, ino)
        inode.nlink += 1
        self.ns.put(txn, inode)

    def _owner(self, src: Inode) -> tuple[int, int, int]:
        """(uid, gid, mode) of a copy: kept, unless the caller may not give it away (then as ``cp -a``)."""
        uid, gid, mode = src.uid, src.gid, src.mode
        if self.cred.has(CAP_CHOWN):
            return uid, gid, mode
        kept = True
        if uid != self.cred.uid:
            uid, kept = self.cred.uid, False
        if not self.cred.in_group(gid):
            gid, kept = self.cred.gid, False
        return uid, gid, mode if kept else mode & ~DROPPED_ON_LOST_OWNER

    def _may_copy_xattr(self, name: bytes) -> bool:
        """Only what the caller could set: ``trusted.*`` needs CAP_SYS_ADMIN, file capabilities CAP_SETFCAP."""
        if name.startswith(b"trusted."):
            return self.cred.has(CAP_SYS_ADMIN)
        if name == b"security.capability":
            return self.cred.has(CAP_SETFCAP)
        return True


class _Ids:
    """Inode numbers and entry ids for a batch, reserved at once (ids are never reused: unused ones are gaps)."""

    def __init__(self, ns, txn: lmdb.Transaction, n: int):
        self.ns, self.txn = ns, txn
        self.inos = iter(ns.reserve(txn, "next_ino", n, ROOT_INO + 1))
        self.entries = iter(ns.reserve(txn, "next_entry", n, FIRST_ENTRY_ID))
        self.made = 0

    def done(self) -> None:
        """Count the inodes made (once per batch)."""
        self.ns.add_inodes(self.txn, self.made)
        self.made = 0
