"""Checking a filesystem's namespace: entries, link counts, orphans, sizes, against each other and the store.

Runs inside the store check's read transaction, over a
:class:`chunkfs.fs.paths.NamespaceTree` walked from the root.  What it
expects (see docs/filesystem.md):

* every entry sits in an existing directory and names an existing inode,
  and its ``dirents`` record and ``dirorder`` record say the same;
* every inode the root does not reach is an orphan (link count 0, marked in
  ``orphans``): a file unlinked while open, or lies below such a directory (a
  tree ``chunkfs rmtree`` is deleting, a clone not finished).  On a mounted
  store that is normal (a notice); on an unmounted one it is left by a crash;
* a non-directory's link count is the number of its names; a directory's is
  2 plus its subdirectories; a directory has one name, and its ``parent``
  is the directory holding it;
* a regular file's size is the size of its stored contents, and stored
  contents belong to a regular file.
"""

from __future__ import annotations

import stat

import lmdb

from .fs.namespace import DENSE, DIRENT, DIRORDER, KEY64, KEY64x2, ROOT_INO, Inode
from .fs.openfile import file_id_for
from .fs.paths import Link, NamespaceTree
from .store import CheckReport, ChunkStore, FileDamage, FileId, Progress

INODE_COUNTER = "fs_inodes"


def check_namespace(store, txn: lmdb.Transaction, tree: NamespaceTree, report: CheckReport,
                    progress: Progress, in_use: bool = False) -> None:
    """Add every namespace finding to ``report``; ``in_use``: a daemon has the store mounted."""
    _NamespaceCheck(store, txn, tree, report, in_use).run(progress)


def kind_of(inode: Inode) -> str:
    return {stat.S_IFDIR: "directory", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}.get(
        stat.S_IFMT(inode.mode), "special file")


def inode_of_file_id(file_id: FileId | None) -> int | None:
    """The inode whose contents a store file holds, if its id has that shape (see ``file_id_for``)."""
    if isinstance(file_id, bytes) and len(file_id) == 8:
        return int.from_bytes(file_id, "big")
    return None


def stored_size(store: ChunkStore, txn: lmdb.Transaction, ino: int) -> int:
    """Size of an inode's stored contents (0 if it has none)."""
    return store.size(file_id_for(ino), txn=txn, default=0)


class _NamespaceCheck:
    def __init__(self, store: ChunkStore, txn: lmdb.Transaction, tree: NamespaceTree, report: CheckReport,
                 in_use: bool):
        self.store, self.db = store, store.fs_tables
        self.txn, self.tree, self.report, self.in_use = txn, tree, report, in_use
        self.detached = tree.detached()

    def run(self, progress: Progress) -> None:
        total = len(self.tree.inodes)
        if not self.tree.is_dir(ROOT_INO):
            self.report.add("missing-root", "the root directory (inode 1) is missing", "ino:1")
        self._check_entries()
        for n, (ino, inode) in enumerate(sorted(self.tree.inodes.items()), 1):
            self._check_inode(ino, inode)
            if n % 4096 == 0:
                progress("namespace", n, total)
        self.report.inodes_checked = total
        self._check_contents()
        self._check_strays()
        self._check_counters()
        progress("namespace", total, total)

    def _file(self, ino: int) -> FileDamage:
        name, paths = self.tree.describe(ino)
        return FileDamage(name, paths)

    # -- directory entries -----------------------------------------------------------

    def _check_entries(self) -> None:
        for link in self.tree.links:
            where = self.tree.entry_path(link)
            subject = f"dirent:{link.parent}:{link.name.hex()}"
            if not self.tree.is_dir(link.parent):
                self.report.add("dangling-dirent", f"entry {where} sits in inode {link.parent}, which is not "
                                "an existing directory", subject)
            elif link.child not in self.tree.inodes:
                self.report.add("dangling-dirent", f"entry {where} names inode {link.child}, which does not "
                                "exist", subject)
        for parent, name in sorted(self._mirror_mismatches()):
            where = self.tree.entry_path(Link(parent, name, 0, 0))
            self.report.add("dirorder-mismatch", f"entry {where}: its lookup and listing records disagree",
                            f"dirorder:{parent}:{name.hex()}")

    def _mirror_mismatches(self) -> set[tuple[int, bytes]]:
        """(parent, name) of entries whose ``dirents`` and ``dirorder`` records do not mirror each other."""
        bad = set()
        head = DIRORDER.size
        for key, value in self.txn.cursor(db=self.db.dirorder):
            parent, entry_id = KEY64x2.unpack(key)
            child, name = DIRORDER.unpack_from(value)[0], value[head:]
            raw = self.txn.get(KEY64.pack(parent) + name, db=self.db.dirents)
            if raw is None or DIRENT.unpack(raw) != (child, entry_id):
                bad.add((parent, name))
        for link in self.tree.links:
            raw = self.txn.get(KEY64x2.pack(link.parent, link.entry_id), db=self.db.dirorder)
            if raw is None or raw != DIRORDER.pack(link.child) + link.name:
                bad.add((link.parent, link.name))
        return bad

    # -- inodes ---------------------------------------------------------------------------

    def _check_inode(self, ino: int, inode: Inode) -> None:
        if ino not in self.tree.reached:
            self._check_unreached(ino, inode)
            return
        names = self.tree.live_names(ino)
        if inode.is_dir and len(names) > 1:
            self.report.add("dir-hard-link", f"directory {self.tree.dir_path(ino)} also has the name(s) "
                            + ", ".join(self.tree.entry_path(lk) for lk in names if lk != self.tree.reached[ino]),
                            f"ino:{ino}", [self._file(ino)])
        expected = self._expected_nlink(ino, inode, names)
        if inode.nlink != expected:
            self.report.add("link-count", f"{kind_of(inode)} {self.tree.describe(ino)[0]}: link count "
                            f"{inode.nlink}, should be {expected}", f"ino:{ino}", [self._file(ino)])
        if inode.is_dir:
            link = self.tree.reached[ino]
            parent = ROOT_INO if link is None else link.parent
            if inode.parent != parent:
                self.report.add("bad-parent", f"directory {self.tree.dir_path(ino)}: '..' is inode "
                                f"{inode.parent}, should be {parent}", f"ino:{ino}", [self._file(ino)])
        if ino in self.tree.orphan_marks:
            self.report.add("stale-orphan-mark", f"{self.tree.describe(ino)[0]} has a name but is marked as "
                            "unlinked (a mount would purge it)", f"ino:{ino}", [self._file(ino)])
        if inode.is_reg:
            self._check_size(ino, inode)

    def _expected_nlink(self, ino: int, inode: Inode, names: list[Link]) -> int:
        if not inode.is_dir:
            return len(names)
        subdirs = sum(1 for lk in self.tree.children.get(ino, ())
                      if self.tree.is_dir(lk.child) and self.tree.reached.get(lk.child) == lk)
        return 2 + subdirs

    def _check_unreached(self, ino: int, inode: Inode) -> None:
        what = f"inode {ino} ({kind_of(inode)}, {inode.size} bytes)"
        if ino in self.detached:
            if self.in_use:
                self.report.add("detached-tree", f"{what} lies in a tree being deleted in the background "
                                "(chunkfs rmtree) or a clone not finished yet", f"ino:{ino}")
            else:
                self.report.add("orphan-inode", f"{what} lies in a tree whose deletion (chunkfs rmtree) or "
                                "copy (chunkfs clone) was interrupted; the next mount deletes it, and so does "
                                "repair", f"ino:{ino}")
            return
        if inode.nlink == 0 or ino in self.tree.orphan_marks:
            if self.in_use and inode.nlink == 0 and ino in self.tree.orphan_marks:
                self.report.add("open-unlinked", f"{what} is unlinked but still open", f"ino:{ino}")
            else:
                self.report.add("orphan-inode", f"{what} has no name: it was unlinked while open when the "
                                "filesystem stopped; repair purges it", f"ino:{ino}")
        else:
            self.report.add("lost-inode", f"{what} has link count {inode.nlink} but no name the root reaches; "
                            "repair moves it to /lost+found", f"ino:{ino}")

    def _check_size(self, ino: int, inode: Inode) -> None:
        size = stored_size(self.store, self.txn, ino)
        if inode.size != size:
            self.report.add("inode-size-mismatch", f"file {self.tree.describe(ino)[0]}: size {inode.size}, its "
                            f"stored contents are {size} bytes", f"ino:{ino}", [self._file(ino)])
        if inode.flags & DENSE and self.store.data_bytes(file_id_for(ino), self.txn) < inode.size:
            self.report.add("dense-mark", f"file {self.tree.describe(ino)[0]} is marked as having no holes "
                            "and has some", f"ino:{ino}", [self._file(ino)])

    # -- records of inodes that do not exist ---------------------------------------------------

    def _check_contents(self) -> None:
        """Stored contents keyed like an inode's must belong to an existing regular file."""
        for file_id in self.store.list_files(txn=self.txn):
            ino = inode_of_file_id(file_id)
            if ino is None:
                continue
            inode = self.tree.inodes.get(ino)
            if inode is None or not inode.is_reg:
                what = "no inode" if inode is None else f"a {kind_of(inode)}"
                self.report.add("orphan-contents", f"stored file hex:{file_id.hex()} holds the "
                                f"contents of inode {ino}, which is {what}", f"contents:{ino}")

    def _check_strays(self) -> None:
        for db_name in ("xattrs", "symlinks", "orphans"):
            seen = set()
            for key in self.txn.cursor(db=getattr(self.db, db_name)).iternext(values=False):
                ino = KEY64.unpack_from(key)[0]
                if ino not in self.tree.inodes and ino not in seen:
                    seen.add(ino)
                    self.report.add("stray-record", f"{db_name} record(s) of inode {ino}, which does not exist",
                                    f"{db_name}:{ino}")

    def _check_counters(self) -> None:
        recorded = self.db.counter(self.txn, INODE_COUNTER)
        if recorded != len(self.tree.inodes):
            self.report.add("counter-mismatch", f"counter {INODE_COUNTER} is {recorded}, there are "
                            f"{len(self.tree.inodes)} inodes", f"counter:{INODE_COUNTER}")
        highest_ino = max(self.tree.inodes, default=0)
        highest_entry = max(self._entry_ids(), default=0)
        for name, highest in (("next_ino", highest_ino), ("next_entry", highest_entry)):
            value = self.db.counter(self.txn, name)
            if highest > ROOT_INO and value <= highest:
                self.report.add("counter-mismatch", f"counter {name} is {value} but {highest} is already in "
                                "use", f"counter:{name}")

    def _entry_ids(self):
        yield from (lk.entry_id for lk in self.tree.links)
        for key in self.txn.cursor(db=self.db.dirorder).iternext(values=False):
            yield KEY64x2.unpack(key)[1]
