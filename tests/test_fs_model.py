"""Random namespace operations on FsCore against a plain-Python model of the tree.

After every step the test compares every directory listing, type and link
count with the model, and checks the LMDB records against each other: the
two directory indexes mirror each other, every inode's nlink is what the
entries imply, every directory's parent pointer is right, orphans are
exactly the unlinked inodes, and the inode counter matches the records.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chunkfs.fs import namespace as nsrec
from chunkfs.store import _index as ix
from chunkfs.errors import FSError
from chunkfs.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, Caller, FsCore
from chunkfs.store import ChunkStore

USER = Caller(0, 0, 0o022)
NAMES = st.sampled_from([b"a", b"b", b"c", b"d"])
FLAGS = st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])


class Model:
    """The tree as dicts: node -> {name: node} for directories, node -> kind for all."""

    def __init__(self):
        self.kind = {ROOT_INO: "d"}
        self.children = {ROOT_INO: {}}
        self.parent = {ROOT_INO: ROOT_INO}

    def dirs(self) -> list[int]:
        return sorted(self.children)

    def links(self, node: int) -> int:
        if self.kind[node] == "d":
            return 2 + sum(self.kind[c] == "d" for c in self.children[node].values())
        return sum(node == c for kids in self.children.values() for c in kids.values())

    def below(self, node: int, ancestor: int) -> bool:
        """True if ``node`` is ``ancestor`` or inside it."""
        while True:
            if node == ancestor:
                return True
            if node == ROOT_INO:
                return False
            node = self.parent[node]

    def rename_error(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int) -> int | None:
        """The errno FsCore's rename must give, or None for success (same order of checks)."""
        src = self.children[p1].get(n1)
        dst = self.children[p2].get(n2)
        if src is None:
            return errno.ENOENT
        if flags & RENAME_EXCHANGE:
            if dst is None:
                return errno.ENOENT
            if src != dst and p1 != p2 and (
                    (self.kind[src] == "d" and self.below(p2, src))
                    or (self.kind[dst] == "d" and self.below(p1, dst))):
                return errno.EINVAL
            return None
        if dst is not None and flags & RENAME_NOREPLACE:
            return errno.EEXIST
        if dst is not None and dst == src:
            return None
        if dst is not None:
            if self.kind[src] == "d" and self.kind[dst] != "d":
                return errno.ENOTDIR
            if self.kind[dst] == "d" and self.kind[src] != "d":
                return errno.EISDIR
            if self.kind[dst] == "d" and self.children[dst]:
                return errno.ENOTEMPTY
        if self.kind[src] == "d" and p1 != p2 and self.below(p2, src):
            return errno.EINVAL
        return None

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int) -> None:
        src, dst = self.children[p1][n1], self.children[p2].get(n2)
        if flags & RENAME_EXCHANGE:
            self.children[p1][n1], self.children[p2][n2] = dst, src
            for node, new_parent in ((src, p2), (dst, p1)):
                if self.kind[node] == "d":
                    self.parent[node] = new_parent
            return
        if dst == src:
            return
        del self.children[p1][n1]
        self.children[p2][n2] = src
        if self.kind[src] == "d":
            self.parent[src] = p2
        if dst is not None and self.kind[dst] == "d":
            del self.children[dst]


def errno_of(fn, *args) -> int | None:
    try:
        fn(*args)
    except FSError as exc:
        return exc.errno
    return None


class NamespaceMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="chunkfs-model-")
        self.store = ChunkStore.create(os.path.join(self.tmp, "store"))
        self.fs = FsCore(self.store, root_uid=0, root_gid=0)
        self.model = Model()

    def teardown(self):
        self.fs.close()
        self.store.close()
        shutil.rmtree(self.tmp)

    def _dir(self, data) -> int:
        return data.draw(st.sampled_from(self.model.dirs()))

    def _expect_create(self, parent: int, name: bytes, fn, kind: str) -> None:
        expected = errno.EEXIST if name in self.model.children[parent] else None
        try:
            inode = fn()
        except FSError as exc:
            assert exc.errno == expected, (exc, expected)
            return
        assert expected is None
        self.model.kind[inode.ino] = kind
        self.model.children[parent][name] = inode.ino
        if kind == "d":
            self.model.children[inode.ino] = {}
            self.model.parent[inode.ino] = parent

    @rule(data=st.data(), name=NAMES)
    def mkdir(self, data, name):
        parent = self._dir(data)
        self._expect_create(parent, name, lambda: self.fs.mkdir(parent, name, 0o755, USER), "d")

    @rule(data=st.data(), name=NAMES)
    def mknod(self, data, name):
        parent = self._dir(data)
        self._expect_create(parent, name, lambda: self.fs.mknod(parent, name, stat.S_IFREG | 0o644, 0, USER), "f")

    @rule(data=st.data(), name=NAMES)
    def link(self, data, name):
        files = sorted(n for n, k in self.model.kind.items() if k == "f" and self.model.links(n))
        if not files:
            return
        target, parent = data.draw(st.sampled_from(files)), self._dir(data)
        expected = errno.EEXIST if name in self.model.children[parent] else None
        assert errno_of(self.fs.link, target, parent, name) == expected
        if expected is None:
            self.model.children[parent][name] = target

    @rule(data=st.data(), name=NAMES)
    def unlink(self, data, name):
        parent = self._dir(data)
        node = self.model.children[parent].get(name)
        expected = errno.ENOENT if node is None else errno.EISDIR if self.model.kind[node] == "d" else None
        assert errno_of(self.fs.unlink, parent, name) == expected
        if expected is None:
            del self.model.children[parent][name]

    @rule(data=st.data(), name=NAMES)
    def rmdir(self, data, name):
        parent = self._dir(data)
        node = self.model.children[parent].get(name)
        expected = (errno.ENOENT if node is None else errno.ENOTDIR if self.model.kind[node] != "d"
                    else errno.ENOTEMPTY if self.model.children[node] else None)
        assert errno_of(self.fs.rmdir, parent, name) == expected
        if expected is None:
            del self.model.children[parent][name]
            del self.model.children[node]

    @rule(data=st.data(), n1=NAMES, n2=NAMES, flags=FLAGS)
    def rename(self, data, n1, n2, flags):
        p1, p2 = self._dir(data), self._dir(data)
        expected = self.model.rename_error(p1, n1, p2, n2, flags)
        assert errno_of(self.fs.rename, p1, n1, p2, n2, flags) == expected
        if expected is None:
            self.model.rename(p1, n1, p2, n2, flags)

    @rule()
    def kernel_forgets_everything(self):
        self.fs.forget([(ino, 1 << 30) for ino in list(self.fs._lookups)])

    @invariant()
    def tree_matches_model(self):
        for directory, kids in self.model.children.items():
            listed = {e.name: e.attr for e in self.fs.readdir(directory, 2)}
            assert {name: a.ino for name, a in listed.items()} == kids
            for name, attr in listed.items():
                assert attr.nlink == self.model.links(kids[name]), (directory, name)
                assert stat.S_ISDIR(attr.mode) == (self.model.kind[kids[name]] == "d")
            assert self.fs.lookup(directory, b"..").ino == self.model.parent[directory]
            assert self.fs.getattr(directory).nlink == self.model.links(directory)

    @invariant()
    def records_are_consistent(self):
        check_namespace_records(self.fs)


def check_namespace_records(fs: FsCore) -> None:
    """Cross-check every namespace database of a store against the others."""
    db = fs.store.index
    with db.read() as txn:
        dirents = {(nsrec.KEY64.unpack(k[:8])[0], k[8:]): nsrec.DIRENT.unpack(v) for k, v in txn.cursor(db=db.dirents)}
        order = {nsrec.KEY64x2.unpack(k): (nsrec.DIRORDER.unpack_from(v)[0], v[8:]) for k, v in txn.cursor(db=db.dirorder)}
        inodes = {nsrec.KEY64.unpack(k)[0]: fs.ns.get(txn, nsrec.KEY64.unpack(k)[0]) for k in txn.cursor(db=db.inodes).iternext(values=False)}
        orphans = set(fs.ns.orphans(txn))
        assert fs.ns.count(txn) == len(inodes)
    assert {(p, eid): (child, name) for (p, name), (child, eid) in dirents.items()} == order
    names = {}
    for (parent, _), (child, _) in dirents.items():
        names.setdefault(child, []).append(parent)
    for ino, inode in inodes.items():
        parents = names.get(ino, [])
        if inode.is_dir:
            subdirs = sum(inodes[c].is_dir for (p, _), (c, _) in dirents.items() if p == ino)
            expected = 2 + subdirs if (parents or ino == ROOT_INO) else 0
            assert inode.nlink == expected, (ino, inode.nlink, expected)
            if parents:
                assert parents == [inode.parent]
        else:
            assert inode.nlink == len(parents), (ino, inode.nlink, parents)
        assert (inode.nlink == 0) == (ino in orphans)
    assert orphans <= set(inodes)


NamespaceMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
TestNamespace = NamespaceMachine.TestCase
