"""Repairing a filesystem's namespace, once the chunk level is consistent (ChunkStore.repair_records ran first).

The policy, in the order it runs (docs/fsck.md says the same for users):

1. A missing root directory is recreated (mode 0755, owned by root).
2. Entries: the lookup records (``dirents``) are the truth for names; a
   listing record (``dirorder``) that disagrees is dropped and rewritten from
   them, and a listing record whose lookup record is missing gives its name
   back.  Entries in something that is not a directory, or naming an inode
   that does not exist, are dropped.  A directory keeps only the name the
   walk from the root finds first.
3. Inodes the root does not reach: *orphans* (link count 0 or marked in
   ``orphans``: unlinked while open when the filesystem stopped) are purged
   with their contents, as the next mount would do, and so is everything
   named only below an orphan directory (a tree ``chunkfs rmtree`` was
   deleting, a clone that did not finish); nobody can name them again, so
   they are not relinked.  Any other unreachable inode lost its
   name to damage, not to an unlink: it is moved to ``/lost+found`` as
   ``#<ino>`` (a directory with everything below it), like e2fsck does.
4. Link counts, directories' ``..``, orphan marks, and regular files' sizes
   (set to the size of their stored contents) are recomputed; records of
   inodes that do not exist and stored contents of no regular file are
   dropped; the inode and entry counters are raised past every id in use.
"""

from __future__ import annotations

import stat
import time
from collections import Counter

import lmdb

from .fs.namespace import DENSE, DIRENT, DIRORDER, FIRST_ENTRY_ID, KEY64, KEY64x2, ROOT_INO, Entry, Inode, Namespace
from .fs.openfile import file_id_for
from .fs.paths import Link, NamespaceTree
from .fsck_namespace import INODE_COUNTER, inode_of_file_id, stored_size
from .store import ChunkStore, FileId

LOST_FOUND = b"lost+found"


def repair_namespace(store) -> list[str]:
    """Fix the namespace; returns one line per kind of change made."""

    def fix(txn: lmdb.Transaction):
        done: Counter = Counter()
        result = _NamespaceRepair(store, txn, done).run()
        return (result, done), []

    (purge, stray_contents), done = store.write_txn(fix, frees=True)
    for ino, inode in sorted(purge.items()):
        purge_inode(store, ino, inode)
        done["orphan inodes purged"] += 1
    for file_id in stray_contents:
        store.delete(file_id, missing_ok=True)
        done["stored contents of no file deleted"] += 1
    store.sync()
    return [f"{what}: {n}" for what, n in sorted(done.items())]


def purge_inode(store: ChunkStore, ino: int, inode: Inode) -> None:
    """Delete an orphan: its entries (if a directory), records and stored contents, in one transaction."""
    ns = Namespace(store.fs_tables)

    def drop(txn: lmdb.Transaction) -> None:
        for entry in ns.entries(txn, ino):
            ns.unlink(txn, ino, entry)
        ns.remove(txn, ino)

    store.delete(file_id_for(ino), hook=drop, missing_ok=True)  # contents too, whatever its type


class _NamespaceRepair:
    def __init__(self, store: ChunkStore, txn: lmdb.Transaction, done: Counter):
        self.store, self.txn, self.done = store, txn, done
        self.db = store.fs_tables
        self.ns = Namespace(self.db)
        self.now = time.time_ns()

    def load(self) -> NamespaceTree:
        return NamespaceTree.load(self.db, self.txn)

    def run(self) -> tuple[dict[int, Inode], list[FileId]]:
        """Returns the orphans to purge and the ids of stored contents to delete, for after the commit."""
        self._raise_id_counters()
        self._ensure_root()
        self._fix_mirror()
        self._drop_bad_entries(self.load())
        purge = self._reconnect()
        tree = self.load()
        self._fix_inodes(tree, purge)
        self._drop_strays(tree)
        self._set_counter(INODE_COUNTER, len(tree.inodes))
        return purge, self._stray_contents(tree, purge)

    def _unlink(self, link: Link) -> None:
        self.ns.unlink(self.txn, link.parent, Entry(link.entry_id, link.name, link.child))

    # -- counters -------------------------------------------------------------------------

    def _set_counter(self, name: str, value: int) -> None:
        if self.db.counter(self.txn, name) != value:
            self.db.set_counter(self.txn, name, value)
            self.done["counters corrected"] += 1

    def _raise_id_counters(self) -> None:
        """Before anything allocates: ids must never be handed out twice."""
        inos = [KEY64.unpack(k)[0] for k in self.txn.cursor(db=self.db.inodes).iternext(values=False)]
        entries = [KEY64x2.unpack(k)[1] for k in self.txn.cursor(db=self.db.dirorder).iternext(values=False)]
        entries += [DIRENT.unpack(v)[1] for v in self.txn.cursor(db=self.db.dirents).iternext(keys=False)]
        for name, highest, first in (("next_ino", max(inos, default=ROOT_INO), ROOT_INO + 1),
                                     ("next_entry", max(entries, default=0), FIRST_ENTRY_ID)):
            if self.db.counter(self.txn, name) <= highest:
                self._set_counter(name, max(highest + 1, first))

    # -- entries ------------------------------------------------------------------------------

    def _ensure_root(self) -> None:
        if self.ns.get(self.txn, ROOT_INO) is not None:
            return
        now = self.now
        self.ns.put(self.txn, Inode(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, now, now, now, now, ROOT_INO))
        self.done["root directory recreated"] += 1

    def _fix_mirror(self) -> None:
        """Make ``dirorder`` mirror ``dirents`` again (see the module docstring, step 2)."""
        head = DIRORDER.size
        for key, value in list(self.txn.cursor(db=self.db.dirorder)):
            parent, entry_id = KEY64x2.unpack(key)
            child, name = DIRORDER.unpack_from(value)[0], value[head:]
            raw = self.txn.get(KEY64.pack(parent) + name, db=self.db.dirents)
            if raw is None:
                self.txn.put(KEY64.pack(parent) + name, DIRENT.pack(child, entry_id), db=self.db.dirents)
                self.done["names restored from listing records"] += 1
            elif DIRENT.unpack(raw) != (child, entry_id):
                self.txn.delete(key, db=self.db.dirorder)
        for key, value in list(self.txn.cursor(db=self.db.dirents)):
            parent, name = KEY64.unpack_from(key)[0], key[KEY64.size:]
            child, entry_id = DIRENT.unpack(value)
            want = DIRORDER.pack(child) + name
            raw = self.txn.get(KEY64x2.pack(parent, entry_id), db=self.db.dirorder)
            if raw == want:
                continue
            if raw is not None:  # another entry has this id: give this one a new id
                entry_id = self.db.next_id(self.txn, "next_entry", first=FIRST_ENTRY_ID)
                self.txn.put(key, DIRENT.pack(child, entry_id), db=self.db.dirents)
            self.txn.put(KEY64x2.pack(parent, entry_id), want, db=self.db.dirorder)
            self.done["listing records rewritten"] += 1

    def _drop_bad_entries(self, tree: NamespaceTree) -> None:
        for link in tree.links:
            if not tree.valid(link):
                self._unlink(link)
                self.done["dangling entries dropped"] += 1
        for ino in tree.reached:
            if tree.is_dir(ino):
                for link in tree.live_names(ino):
                    if link != tree.reached[ino]:
                        self._unlink(link)
                        self.done["extra names of directories dropped"] += 1

    # -- what the root does not reach -------------------------------------------------------------

    def _reconnect(self) -> dict[int, Inode]:
        """Purge-or-relink every unreachable inode (step 3); returns the orphans to purge."""
        purge: dict[int, Inode] = {}
        while True:
            tree = self.load()
            pending = [ino for ino in sorted(tree.inodes) if ino not in tree.reached and ino not in purge]
            if not pending:
                return purge
            progressed = False
            for ino in pending:
                names = [lk for lk in tree.names.get(ino, ()) if tree.valid(lk)]
                if any(lk.parent not in purge for lk in names):
                    continue  # named in an unreachable directory: resolved with that directory
                in_detached_tree = bool(names)  # named only in orphans: below an rmtree or unfinished clone
                for link in tree.names.get(ino, ()):
                    self._unlink(link)
                inode = tree.inodes[ino]
                if inode.nlink == 0 or ino in tree.orphan_marks or in_detached_tree:
                    purge[ino] = inode
                else:
                    self._to_lost_found(ino, inode)
                progressed = True
            if not progressed:  # directories naming each other, cut off from the root: cut the cycle
                victim = next((ino for ino in pending if tree.is_dir(ino)), pending[0])
                for link in tree.names.get(victim, ()):
                    self._unlink(link)
                self.done["directory cycles cut"] += 1

    def _lost_found(self) -> int:
        entry = self.ns.lookup(self.txn, ROOT_INO, LOST_FOUND)
        if entry is not None:
            inode = self.ns.get(self.txn, entry.ino)
            if inode is not None and inode.is_dir:
                return entry.ino
        name = LOST_FOUND if entry is None else LOST_FOUND + b".fsck"
        found = self.ns.lookup(self.txn, ROOT_INO, name)
        if found is not None:
            return found.ino
        inode = self.ns.allocate(self.txn, stat.S_IFDIR | 0o700, 0, 0, self.now, parent=ROOT_INO)
        self.ns.link(self.txn, ROOT_INO, name, inode.ino)
        self.done["/lost+found created"] += 1
        return inode.ino

    def _to_lost_found(self, ino: int, inode: Inode) -> None:
        directory = self._lost_found()
        name, n = f"#{ino}".encode(), 0
        while self.ns.lookup(self.txn, directory, name) is not None:
            n += 1
            name = f"#{ino}.{n}".encode()
        self.ns.link(self.txn, directory, name, ino)
        self.done["inodes moved to /lost+found"] += 1

    # -- per inode ---------------------------------------------------------------------------------

    def _fix_inodes(self, tree: NamespaceTree, purge: dict[int, Inode]) -> None:
        for ino, inode in tree.inodes.items():
            if ino in purge:
                self._mark_orphan(ino, inode, tree)
                continue
            before = inode.encode()
            inode.nlink = self._expected_nlink(tree, ino, inode)
            if inode.is_dir:
                link = tree.reached.get(ino)
                inode.parent = ROOT_INO if link is None else link.parent
            if inode.is_reg:
                self._fix_size(ino, inode)
            if inode.encode() != before:
                self.ns.put(self.txn, inode)
                self.done["inodes corrected (link count, '..', size or no-holes mark)"] += 1
            if ino in tree.orphan_marks:
                self.txn.delete(KEY64.pack(ino), db=self.db.orphans)
                self.done["orphan marks of named inodes dropped"] += 1

    def _fix_size(self, ino: int, inode: Inode) -> None:
        """Contents longer than the inode says: they were committed, show them.  Shorter: mark the rest lost."""
        stored = stored_size(self.store, self.txn, ino)
        if inode.size > stored and self.store.mark_lost_tail(self.txn, file_id_for(ino), inode.size):
            self.done["file tails marked lost (size beyond the stored contents)"] += 1
        else:
            inode.size = stored
        if inode.flags & DENSE and self.store.data_bytes(file_id_for(ino), self.txn) < inode.size:
            inode.flags &= ~DENSE  # st_blocks must count the holes it has now

    def _mark_orphan(self, ino: int, inode: Inode, tree: NamespaceTree) -> None:
        """Purged after the commit; if that is interrupted, the next mount purges it."""
        if inode.nlink:
            inode.nlink = 0
            self.ns.put(self.txn, inode)
        if ino not in tree.orphan_marks:
            self.ns.mark_orphan(self.txn, ino)

    @staticmethod
    def _expected_nlink(tree: NamespaceTree, ino: int, inode: Inode) -> int:
        if not inode.is_dir:
            return len(tree.live_names(ino))
        return 2 + sum(1 for lk in tree.children.get(ino, ())
                       if tree.is_dir(lk.child) and tree.reached.get(lk.child) == lk)

    # -- records of nothing --------------------------------------------------------------------------

    def _drop_strays(self, tree: NamespaceTree) -> None:
        for db_name in ("xattrs", "symlinks", "orphans"):
            db = getattr(self.db, db_name)
            stale = [k for k in self.txn.cursor(db=db).iternext(values=False)
                     if KEY64.unpack_from(k)[0] not in tree.inodes]
            for key in stale:
                self.txn.delete(key, db=db)
            if stale:
                self.done[f"stray {db_name} records dropped"] += len(stale)

    def _stray_contents(self, tree: NamespaceTree, purge: dict[int, Inode]) -> list[FileId]:
        out = []
        for file_id in self.store.list_files(txn=self.txn):
            ino = inode_of_file_id(file_id)
            if ino is None or ino in purge:
                continue
            inode = tree.inodes.get(ino)
            if inode is None or not inode.is_reg:
                out.append(file_id)
        return out
