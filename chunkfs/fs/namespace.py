"""The namespace's records in LMDB: inodes, directory entries, xattrs, symlinks, orphans.

Every function here works inside a transaction the caller opened, so that one
filesystem operation (say, a rename over an existing file) changes all the
records it touches atomically.  Nothing here keeps state in memory or knows
about open files: that is the core's job (core.py, handles.py).  Record
layouts are defined below.

Directory entries live in two databases that mirror each other:

* ``dirents``  parent + name -> child, entry id   (lookup by name)
* ``dirorder`` parent + entry id -> child, name   (listing in creation order)

Entry ids come from one counter and are never reused, so an entry id is a
stable readdir cookie: a listing resumed after id N sees exactly the entries
with larger ids that still exist.  Entries created meanwhile get larger ids
(listed later, never twice); removed ones simply vanish (nothing shifts, so
nothing is skipped).

Record layouts (the store keeps these databases but never reads them):

=========  ==========================================  ===================================================
database   key                                         value
=========  ==========================================  ===================================================
inodes     ino (u64 BE)                                INODE: mode, nlink, uid, gid, rdev, size, times, parent
dirents    parent ino (u64 BE) + name                  DIRENT: child ino, entry id
dirorder   parent ino (u64 BE) + entry id (u64 BE)     DIRORDER (child ino) + name
xattrs     ino (u64 BE) + name                         value
symlinks   ino (u64 BE)                                target
orphans    ino (u64 BE)                                empty: nlink 0 but still open or looked up
=========  ==========================================  ===================================================

``INODE``'s mode word holds the file type and permission bits in its low 16
bits and the inode's flags above them (``IMMUTABLE``: a snapshot's inode,
which no operation may change; see snapshots.py).  ``INODE`` times are
nanoseconds since the epoch (signed); ``parent`` is the
containing directory of a directory (for ``..``), 0 for other types, whose
parents are the dirents naming them.  A regular file's contents are the store
file ``chunkfs.fs.openfile.file_id_for(ino)``.  Entry ids come from the
``next_entry`` counter, inode numbers from ``next_ino`` (neither is ever
reused); ``fs_inodes`` counts live inode records.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

import struct

import lmdb

from ..errors import FSError, IndexCorruptError
from ..store import FsTables

ROOT_INO = 1
NAME_MAX = 255
FIRST_ENTRY_ID = 3  # 1 and 2 are the cookies after "." and ".."
INODE_COUNTER = "fs_inodes"

INODE = struct.Struct("<IIIIQQqqqqQ")  # mode|flags, nlink, uid, gid, rdev, size, atime/mtime/ctime/btime ns, parent
MODE_BITS = 0xFFFF  # S_IFMT and permission bits; the inode's flags live above them
FLAG_SHIFT = 16
IMMUTABLE = 1  # a flag: the inode belongs to a read-only snapshot
DENSE = 2  # a flag: at its last commit the file had no holes, so st_blocks follows its size (fs/blocks.py)
DIRENT = struct.Struct("<QQ")  # child ino, entry id
DIRORDER = struct.Struct("<Q")  # child ino; the entry's name follows
KEY64 = struct.Struct(">Q")
KEY64x2 = struct.Struct(">QQ")


@dataclass
class Inode:
    """One inode record, decoded; mutate it and :meth:`Namespace.put` it back."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    btime_ns: int = 0
    parent: int = 0
    blocks: int | None = field(default=None, compare=False)  # st_blocks, set by the core; not stored
    flags: int = 0  # IMMUTABLE...

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def immutable(self) -> bool:
        return bool(self.flags & IMMUTABLE)

    def encode(self) -> bytes:
        return INODE.pack(self.mode | self.flags << FLAG_SHIFT, self.nlink, self.uid, self.gid, self.rdev, self.size,
                          self.atime_ns, self.mtime_ns, self.ctime_ns, self.btime_ns, self.parent)

    @classmethod
    def decode(cls, ino: int, raw: bytes) -> "Inode":
        try:
            values = INODE.unpack(raw)
        except Exception:
            raise IndexCorruptError(f"inode {ino}: malformed record") from None
        word = values[0]  # positional, blocks (not stored) then flags: every stat decodes one
        return cls(ino, word & MODE_BITS, *values[1:], None, word >> FLAG_SHIFT)

    def note_density(self, data_bytes: int) -> None:
        """Set or clear DENSE for contents of ``data_bytes`` stored bytes (in the commit that stores them)."""
        if data_bytes >= self.size:
            self.flags |= DENSE
        else:
            self.flags &= ~DENSE

    def touch(self, now: int, modified: bool = True) -> None:
        """Set ctime (and, if the contents changed, mtime) to ``now``."""
        self.ctime_ns = now
        if modified:
            self.mtime_ns = now


def check_mutable(*inodes: Inode | None) -> None:
    """EPERM for a change to a snapshot's inode, as for an immutable file on ext4 (``chattr +i``)."""
    for inode in inodes:
        if inode is not None and inode.flags & IMMUTABLE:
            raise FSError(errno.EPERM, "read-only snapshot")


@dataclass(frozen=True)
class Entry:
    entry_id: int
    name: bytes
    ino: int


def check_name(name: bytes) -> None:
    """Refuse names the kernel would not let through a local filesystem either."""
    if len(name) > NAME_MAX:
        raise FSError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise FSError(errno.EINVAL)


def _key(ino: int, tail: bytes = b"") -> bytes:
    return KEY64.pack(ino) + tail


class Namespace:
    """Typed access to the filesystem databases the store keeps for us (:class:`chunkfs.store.FsTables`)."""

    def __init__(self, tables: FsTables):
        self.index = tables

    # -- inodes ------------------------------------------------------------------

    def get(self, txn: lmdb.Transaction, ino: int) -> Inode | None:
        raw = txn.get(_key(ino), db=self.index.inodes)
        return None if raw is None else Inode.decode(ino, raw)

    def exists(self, txn: lmdb.Transaction, ino: int) -> bool:
        return txn.get(_key(ino), db=self.index.inodes) is not None

    def need(self, txn: lmdb.Transaction, ino: int) -> Inode:
        """The inode, or ENOENT (the kernel may ask about an inode already purged)."""
        inode = self.get(txn, ino)
        if inode is None:
            raise FSError(errno.ENOENT)
        return inode

    def need_dir(self, txn: lmdb.Transaction, ino: int) -> Inode:
        inode = self.need(txn, ino)
        if not inode.is_dir:
            raise FSError(errno.ENOTDIR)
        return inode

    def put(self, txn: lmdb.Transaction, inode: Inode) -> None:
        txn.put(_key(inode.ino), inode.encode(), db=self.index.inodes)

    def allocate(self, txn: lmdb.Transaction, mode: int, uid: int, gid: int, now: int,
                 rdev: int = 0, parent: int = 0) -> Inode:
        """A new inode with nlink 1 (2 for a directory), not yet linked anywhere."""
        ino = self.index.next_id(txn, "next_ino", first=ROOT_INO + 1)
        nlink = 2 if stat.S_ISDIR(mode) else 1
        inode = Inode(ino, mode, nlink, uid, gid, rdev, 0, now, now, now, now, parent)
        self.put(txn, inode)
        self.index.add_counter(txn, INODE_COUNTER, 1)
        return inode

    def reserve(self, txn: lmdb.Transaction, counter: str, n: int, first: int) -> range:
        """``n`` consecutive ids of ``counter`` (``next_ino``, ``next_entry``) at once, for a batch of copies.

        Ids are never reused, so ids reserved and left unused are only a gap.
        """
        start = max(self.index.counter(txn, counter), first)
        self.index.set_counter(txn, counter, start + n)
        return range(start, start + n)

    def add_inodes(self, txn: lmdb.Transaction, n: int) -> None:
        """Count ``n`` inodes stored with :meth:`put` under numbers from :meth:`reserve`."""
        self.index.add_counter(txn, INODE_COUNTER, n)

    def ensure_root(self, txn: lmdb.Transaction, uid: int, gid: int, now: int) -> bool:
        """Create the root directory if absent; True if it was created."""
        if self.get(txn, ROOT_INO) is not None:
            return False
        root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, 2, uid, gid, 0, 0, now, now, now, now, ROOT_INO)
        self.put(txn, root)
        self.index.add_counter(txn, INODE_COUNTER, 1)
        return True

    def remove(self, txn: lmdb.Transaction, ino: int) -> None:
        """Delete an inode record with its xattrs, symlink target, orphan mark and staged record."""
        if txn.delete(_key(ino), db=self.index.inodes):
            self.index.add_counter(txn, INODE_COUNTER, -1)
        txn.delete(_key(ino), db=self.index.symlinks)
        txn.delete(_key(ino), db=self.index.orphans)
        if self.index.staged is not None:
            txn.delete(_key(ino), db=self.index.staged)  # fs/behind.py: its changes die with it
        for name in self.xattr_names(txn, ino):
            txn.delete(_key(ino, name), db=self.index.xattrs)

    def count(self, txn: lmdb.Transaction) -> int:
        return self.index.counter(txn, INODE_COUNTER)

    # -- directory entries ---------------------------------------------------------

    def lookup(self, txn: lmdb.Transaction, parent: int, name: bytes) -> Entry | None:
        raw = txn.get(_key(parent, name), db=self.index.dirents)
        if raw is None:
            return None
        child, entry_id = DIRENT.unpack(raw)
        return Entry(entry_id, name, child)

    def link(self, txn: lmdb.Transaction, parent: int, name: bytes, child: int, entry_id: int = 0) -> Entry:
        """Add the entry ``name`` -> ``child``; the caller checked it does not exist.

        ``entry_id``: one from :meth:`reserve` (else a new one is allocated).
        """
        entry_id = entry_id or self.index.next_id(txn, "next_entry", first=FIRST_ENTRY_ID)
        txn.put(_key(parent, name), DIRENT.pack(child, entry_id), db=self.index.dirents)
        txn.put(KEY64x2.pack(parent, entry_id), DIRORDER.pack(child) + name, db=self.index.dirorder)
        return Entry(entry_id, name, child)

    def unlink(self, txn: lmdb.Transaction, parent: int, entry: Entry) -> None:
        txn.delete(_key(parent, entry.name), db=self.index.dirents)
        txn.delete(KEY64x2.pack(parent, entry.entry_id), db=self.index.dirorder)

    def retarget(self, txn: lmdb.Transaction, parent: int, entry: Entry, child: int) -> None:
        """Point an existing entry at another inode, keeping its place in the listing."""
        txn.put(_key(parent, entry.name), DIRENT.pack(child, entry.entry_id), db=self.index.dirents)
        txn.put(KEY64x2.pack(parent, entry.entry_id), DIRORDER.pack(child) + entry.name,
                db=self.index.dirorder)

    def entries(self, txn: lmdb.Transaction, parent: int, after: int = 0, limit: int = -1) -> list[Entry]:
        """Entries of ``parent`` with entry id greater than ``after``, in id order."""
        out: list[Entry] = []
        for entry in self._iter_entries(txn, parent, after):
            out.append(entry)
            if len(out) == limit:
                break
        return out

    def is_empty(self, txn: lmdb.Transaction, ino: int) -> bool:
        return not self.entries(txn, ino, limit=1)

    def _iter_entries(self, txn: lmdb.Transaction, parent: int, after: int) -> Iterator[Entry]:
        head = DIRORDER.size
        with txn.cursor(db=self.index.dirorder) as cur:
            if not cur.set_range(KEY64x2.pack(parent, after + 1)):
                return
            for key, value in cur:
                key_parent, entry_id = KEY64x2.unpack(key)
                if key_parent != parent:
                    return
                yield Entry(entry_id, value[head:], DIRORDER.unpack_from(value)[0])

    # -- symlinks ------------------------------------------------------------------

    def set_target(self, txn: lmdb.Transaction, ino: int, target: bytes) -> None:
        txn.put(_key(ino), target, db=self.index.symlinks)

    def target(self, txn: lmdb.Transaction, ino: int) -> bytes:
        raw = txn.get(_key(ino), db=self.index.symlinks)
        if raw is None:
            raise FSError(errno.EINVAL)  # readlink of a non-symlink
        return raw

    # -- extended attributes -----------------------------------------------------

    def xattr(self, txn: lmdb.Transaction, ino: int, name: bytes) -> bytes | None:
        return txn.get(_key(ino, name), db=self.index.xattrs)

    def set_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes, value: bytes) -> None:
        txn.put(_key(ino, name), value, db=self.index.xattrs)

    def remove_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes) -> bool:
        return txn.delete(_key(ino, name), db=self.index.xattrs)

    def xattr_names(self, txn: lmdb.Transaction, ino: int) -> list[bytes]:
        prefix = _key(ino)
        names = []
        with txn.cursor(db=self.index.xattrs) as cur:
            if not cur.set_range(prefix):
                return names
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                names.append(key[len(prefix):])
        return names

    # -- orphans -----------------------------------------------------------------

    def mark_orphan(self, txn: lmdb.Transaction, ino: int) -> None:
        """Record an inode whose last name is gone but which is still open or looked up."""
        txn.put(_key(ino), b"", db=self.index.orphans)

    def clear_orphan(self, txn: lmdb.Transaction, ino: int) -> None:
        """The inode got a name after all (the top of a finished clone)."""
        txn.delete(_key(ino), db=self.index.orphans)

    def orphans(self, txn: lmdb.Transaction) -> list[int]:
        with txn.cursor(db=self.index.orphans) as cur:
            return [KEY64.unpack(k)[0] for k in cur.iternext(keys=True, values=False)]
