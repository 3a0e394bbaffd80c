"""clone, snapshot, rmtree and du in the core, in-process: permissions as the kernel checks them, immutability
of every mutating call, du's arithmetic, and interrupted clones.  (tests/test_clone_mount.py runs the same
through a real mount and the control socket.)"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from chunkfs.errors import ChunkfsError, FSError, PathError
from chunkfs.fs import RENAME_EXCHANGE, ROOT_INO, Caller, FsCore, SetAttr
from chunkfs.fs import acl
from chunkfs.fs.access import CAP_DAC_OVERRIDE, Credentials
from chunkfs.fs.clone import CloneCancelled
from chunkfs.fs.tools import TreeOps
from chunkfs.fsck import check_store
from chunkfs.repair_namespace import repair_namespace
from chunkfs.store import ChunkStore

ROOT = Credentials.root()
ALICE = Credentials(1000, 1000, frozenset({1000, 50}))
BOB = Credentials(1001, 1001, frozenset({1001}))
AS_ROOT = Caller(0, 0, 0)


@pytest.fixture
def store(tmp_path):
    s = ChunkStore.create(tmp_path / "store", avg_size="4K")
    yield s
    s.close()


@pytest.fixture
def fs(store):
    core = FsCore(store, root_uid=0, root_gid=0)
    yield core
    core.close()


@pytest.fixture
def ops(fs):
    return TreeOps(fs)


def forget_all(fs: FsCore) -> None:
    """What the kernel does eventually: forget every inode it looked up (so unlinked ones are purged)."""
    fs.forget([(ino, n) for ino, n in list(fs._lookups.items())])


def write(fs: FsCore, parent: int, name: bytes, data: bytes, mode: int = 0o644, who: Caller = AS_ROOT) -> int:
    fh, inode = fs.create(parent, name, mode, os.O_WRONLY, who)
    fs.write(fh, 0, data)
    fs.flush(fh)
    fs.release(fh)
    return inode.ino


def read(fs: FsCore, ino: int) -> bytes:
    fh, _ = fs.open(ino, os.O_RDONLY)
    try:
        return bytes(fs.read(fh, 0, fs.getattr(ino).size + 1))
    finally:
        fs.release(fh)


def lookup(fs: FsCore, path: bytes) -> int:
    ino = ROOT_INO
    for part in path.strip(b"/").split(b"/"):
        ino = fs.lookup(ino, part).ino
    return ino


def errno_of(fn, *args) -> int:
    with pytest.raises(ChunkfsError) as info:
        fn(*args)
    return info.value.errno


def tree(fs: FsCore) -> dict[bytes, int]:
    """/a: f (0644, 40 KB), sub/ (g, h = hard link of f), s -> f."""
    a = fs.mkdir(ROOT_INO, b"a", 0o755, AS_ROOT).ino
    sub = fs.mkdir(a, b"sub", 0o755, AS_ROOT).ino
    f = write(fs, a, b"f", os.urandom(40_000))
    g = write(fs, sub, b"g", b"gg" * 5000)
    fs.link(f, sub, b"h")
    fs.symlink(a, b"s", b"f", AS_ROOT)
    return {b"a": a, b"sub": sub, b"f": f, b"g": g}


# -- clone ---------------------------------------------------------------------------------------------


def test_clone_copies_everything_and_shares_chunks(fs, ops, store):
    t = tree(fs)
    fs.setxattr(t[b"f"], b"user.colour", b"blue")
    fs.setattr(t[b"f"], SetAttr(uid=7, gid=8, mode=0o4750, atime_ns=10**18, mtime_ns=2 * 10**18))
    stored = store.stats()["stored_bytes"]
    result = ops.clone(ROOT, b"/a", b"/b")
    assert (result["files"], result["directories"], result["others"], result["hard_links"]) == (2, 2, 1, 1)
    assert store.stats()["stored_bytes"] == stored
    f, h = lookup(fs, b"b/f"), lookup(fs, b"b/sub/h")
    assert f == h and f != t[b"f"]  # the hard link group is kept, inside the copy
    attr = fs.getattr(f)
    assert (attr.uid, attr.gid, attr.mode, attr.atime_ns, attr.mtime_ns, attr.nlink) == \
        (7, 8, stat.S_IFREG | 0o4750, 10**18, 2 * 10**18, 2)
    assert fs.getxattr(f, b"user.colour") == b"blue"
    assert read(fs, f) == read(fs, t[b"f"])
    assert fs.readlink(lookup(fs, b"b/s")) == b"f"
    assert fs.getattr(lookup(fs, b"b")).nlink == 3 and fs.getattr(lookup(fs, b"b/sub")).nlink == 2
    assert check_store(store).clean


def test_a_clone_is_independent_of_its_source(fs, ops):
    t = tree(fs)
    before = read(fs, t[b"f"])
    ops.clone(ROOT, b"/a/f", b"/copy")
    copy = lookup(fs, b"copy")
    fh, _ = fs.open(t[b"f"], os.O_WRONLY)
    fs.write(fh, 100, b"changed")
    fs.flush(fh)
    fs.release(fh)
    assert read(fs, copy) == before
    fs.setattr(copy, SetAttr(size=10))
    assert read(fs, t[b"f"])[100:107] == b"changed" and read(fs, copy) == before[:10]


def test_a_file_open_with_uncommitted_writes_is_cloned_as_of_its_last_commit(fs, ops):
    ino = write(fs, ROOT_INO, b"busy", b"committed")
    fh, _ = fs.open(ino, os.O_WRONLY)
    fs.write(fh, 0, b"UNCOMMITTED, LONGER")
    ops.clone(ROOT, b"/busy", b"copy")
    fs.flush(fh)
    fs.release(fh)
    assert read(fs, lookup(fs, b"copy")) == b"committed"
    assert read(fs, ino) == b"UNCOMMITTED, LONGER"


def test_clone_refuses_what_the_caller_may_not_do(fs, ops):
    t = tree(fs)
    home = fs.mkdir(ROOT_INO, b"home", 0o755, AS_ROOT).ino
    fs.setattr(home, SetAttr(uid=1000, gid=1000))
    fs.setattr(t[b"g"], SetAttr(mode=0o600))  # root's, unreadable to others
    with pytest.raises(PathError) as info:
        ops.clone(ALICE, b"/a", b"/home/a")
    assert info.value.errno == errno.EACCES and info.value.path == b"/a/sub/g"
    fs.setattr(t[b"g"], SetAttr(mode=0o644))
    assert errno_of(ops.clone, ALICE, b"/a", b"/x") == errno.EACCES  # / is root's 0755: not writable
    fs.setattr(t[b"sub"], SetAttr(mode=0o711))  # searchable, not listable
    assert errno_of(ops.clone, ALICE, b"/a", b"/home/x") == errno.EACCES
    assert ops.clone(ALICE, b"/a/sub/g", b"/home/g")["files"] == 1  # a file in it, by name: fine
    assert errno_of(ops.clone, ALICE, b"/a/sub/g", b"/home/g") == errno.EEXIST
    assert errno_of(ops.clone, ALICE, b"/nothing", b"/home/n") == errno.ENOENT
    assert fs.find(home, b"a") is None and fs.find(home, b"x") is None


def test_a_users_clone_is_theirs_as_with_cp_a(fs, ops):
    home = fs.mkdir(ROOT_INO, b"home", 0o777, AS_ROOT).ino
    suid = write(fs, ROOT_INO, b"suid", b"#!", mode=0o4755)
    fs.setattr(suid, SetAttr(gid=50))
    fs.setxattr(suid, b"trusted.secret", b"x")
    fs.setxattr(suid, b"user.note", b"y")
    ops.clone(ALICE, b"/suid", b"/home/copy")
    attr = fs.getattr(lookup(fs, b"home/copy"))
    assert (attr.uid, attr.gid, stat.S_IMODE(attr.mode)) == (1000, 50, 0o755)  # group kept (a member)
    assert fs.listxattr(attr.ino) == [b"user.note"]
    fs.mknod(ROOT_INO, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), AS_ROOT)
    assert errno_of(ops.clone, ALICE, b"/null", b"/home/null") == errno.EPERM
    assert ops.clone(ROOT, b"/null", b"/home/null")["others"] == 1
    assert fs.getattr(lookup(fs, b"home/null")).rdev == os.makedev(1, 3)


def test_acls_are_checked_as_the_kernel_does(fs, ops):
    home = fs.mkdir(ROOT_INO, b"home", 0o777, AS_ROOT).ino
    secret = write(fs, ROOT_INO, b"secret", b"s", mode=0o600)
    entries = [acl.AclEntry(acl.USER_OBJ, 6), acl.AclEntry(acl.USER, 4, 1000), acl.AclEntry(acl.GROUP_OBJ, 0),
               acl.AclEntry(acl.MASK, 4), acl.AclEntry(acl.OTHER, 0)]
    fs.setxattr(secret, acl.ACCESS, acl.encode(entries))
    assert ops.clone(ALICE, b"/secret", b"/home/a")["files"] == 1  # her named entry grants read
    assert errno_of(ops.clone, BOB, b"/secret", b"/home/b") == errno.EACCES
    entries[3].perm = 0  # a mask without read takes it away again
    fs.setxattr(secret, acl.ACCESS, acl.encode(entries))
    assert errno_of(ops.clone, ALICE, b"/secret", b"/home/c") == errno.EACCES
    readable_by_override = Credentials(1001, 1001, caps=1 << CAP_DAC_OVERRIDE)
    assert ops.clone(readable_by_override, b"/secret", b"/home/d")["files"] == 1


@pytest.mark.slow
def test_a_cancelled_clone_leaves_nothing_and_is_deleted(fs, ops, store):
    for i in range(3000):
        write(fs, ROOT_INO, b"f%d" % i, b"%d" % i * 100)
    forget_all(fs)
    files = store.stats()["files"]
    calls = []
    with pytest.raises(CloneCancelled):
        ops.clone(ROOT, b"/", b"/copy", should_stop=lambda: calls.append(1) or len(calls) > 8)
    assert fs.find(ROOT_INO, b"copy") is None
    _wait_reaped(fs)
    assert store.stats()["files"] == files
    assert check_store(store).clean


def _wait_reaped(fs: FsCore) -> None:
    import time

    deadline = time.monotonic() + 30
    while fs.reaper.pending():
        assert time.monotonic() < deadline, "the reaper did not finish"
        time.sleep(0.01)


@pytest.mark.slow
def test_an_interrupted_clone_is_purged_at_the_next_mount_or_by_repair(tmp_path):
    path = tmp_path / "store"
    with ChunkStore.create(path, avg_size="4K") as store:
        core = FsCore(store, root_uid=0, root_gid=0)
        d = core.mkdir(ROOT_INO, b"d", 0o755, AS_ROOT).ino
        for i in range(3000):
            write(core, d, b"f%d" % i, os.urandom(3000))
        forget_all(core)
        files = store.stats()["files"]
        core.reaper.stop()  # as if the daemon died: nothing deletes the partial copy
        calls = []
        with pytest.raises(CloneCancelled):
            TreeOps(core).clone(ROOT, b"/d", b"/copy", should_stop=lambda: calls.append(1) or len(calls) > 8)
        assert store.stats()["files"] > files
        report = check_store(store, in_use=False)
        kinds = {f.kind for f in report.findings}
        assert kinds == {"orphan-inode"}, kinds
        assert {f.kind for f in check_store(store, in_use=True).findings} == {"detached-tree"}
        core.close()  # an unmount purges orphans, but the reaper is stopped: the tree stays detached
    for repair in (False, True):
        with ChunkStore.open(path) as store:
            if repair:
                repair_namespace(store)
            else:
                core = FsCore(store, root_uid=0, root_gid=0)  # a mount: recovery hands the tree to the reaper
                _wait_reaped(core)
                core.close()
            assert store.stats()["files"] == files
            assert check_store(store).clean


# -- snapshots -----------------------------------------------------------------------------------------


def test_every_change_to_a_snapshot_fails_with_eperm(fs, ops):
    t = tree(fs)
    fs.setxattr(t[b"f"], b"user.k", b"v")
    ops.snapshot(ROOT, b"/a", b"s1")
    snaps = lookup(fs, b".snapshots")
    top, f, sub = lookup(fs, b".snapshots/s1"), lookup(fs, b".snapshots/s1/f"), lookup(fs, b".snapshots/s1/sub")
    atime = fs.getattr(f).atime_ns
    assert read(fs, f) == read(fs, t[b"f"]) and fs.getattr(f).atime_ns == atime  # reading changes nothing
    outside = fs.mkdir(ROOT_INO, b"out", 0o755, AS_ROOT).ino
    other = write(fs, outside, b"o", b"o")
    calls = {
        "write open": lambda: fs.open(f, os.O_WRONLY),
        "read-write open": lambda: fs.open(f, os.O_RDWR),
        "truncating open": lambda: fs.open(f, os.O_RDONLY | os.O_TRUNC),
        "truncate": lambda: fs.setattr(f, SetAttr(size=0)),
        "chmod": lambda: fs.setattr(f, SetAttr(mode=0o777)),
        "chown": lambda: fs.setattr(f, SetAttr(uid=5)),
        "utimens": lambda: fs.setattr(top, SetAttr(mtime_ns=1)),
        "setxattr": lambda: fs.setxattr(f, b"user.k", b"w"),
        "removexattr": lambda: fs.removexattr(f, b"user.k"),
        "create": lambda: fs.create(sub, b"new", 0o644, os.O_WRONLY, AS_ROOT),
        "mkdir": lambda: fs.mkdir(top, b"new", 0o755, AS_ROOT),
        "mknod": lambda: fs.mknod(top, b"fifo", stat.S_IFIFO | 0o644, 0, AS_ROOT),
        "symlink": lambda: fs.symlink(top, b"l", b"x", AS_ROOT),
        "link into": lambda: fs.link(other, sub, b"l"),
        "link from": lambda: fs.link(f, outside, b"l"),
        "unlink": lambda: fs.unlink(top, b"f"),
        "rmdir": lambda: fs.rmdir(top, b"sub"),
        "rename within": lambda: fs.rename(top, b"f", top, b"g"),
        "rename out": lambda: fs.rename(top, b"f", outside, b"f"),
        "rename in": lambda: fs.rename(outside, b"o", sub, b"o"),
        "rename over": lambda: fs.rename(outside, b"o", top, b"f"),
        "exchange": lambda: fs.rename(outside, b"o", top, b"f", RENAME_EXCHANGE),
        "remove snapshot": lambda: fs.rmdir(snaps, b"s1"),
        "rename snapshot": lambda: fs.rename(snaps, b"s1", snaps, b"s2"),
        "rename snapshot dir": lambda: fs.rename(ROOT_INO, b".snapshots", ROOT_INO, b"x"),
        "create in snapshot dir": lambda: fs.mkdir(snaps, b"mine", 0o755, AS_ROOT),
    }
    for what, call in calls.items():
        assert errno_of(call) == errno.EPERM, what
    assert read(fs, f) == read(fs, t[b"f"]) and fs.getxattr(f, b"user.k") == b"v"
    assert sorted(e.name for e in fs.readdir(top, 0))[2:] == [b"f", b"s", b"sub"]


def test_snapshots_are_listed_and_removed_by_their_owner_or_root(fs, ops):
    home = fs.mkdir(ROOT_INO, b"home", 0o755, AS_ROOT).ino
    fs.setattr(home, SetAttr(uid=1000, gid=1000))
    ops.snapshot(ALICE, b"/home", b"hers")
    ops.snapshot(ROOT, b"/home", b"roots")  # root keeps owners: this one is Alice's too
    ops.snapshot(ROOT, b"/", b"whole")
    assert [(s["name"], s["uid"]) for s in ops.snapshots(BOB)] == [(b"hers", 1000), (b"roots", 1000),
                                                                   (b"whole", 0)]
    assert fs.find(lookup(fs, b".snapshots/whole"), b".snapshots") is None  # never snapshots in snapshots
    assert errno_of(ops.delete_snapshot, BOB, b"hers") == errno.EPERM
    assert errno_of(ops.rmtree, BOB, b"/.snapshots/hers") == errno.EPERM
    assert errno_of(ops.snapshot, ALICE, b"/home", b"hers") == errno.EEXIST
    assert errno_of(ops.rmtree, ALICE, b"/.snapshots") == errno.EPERM  # the directory: root only
    assert ops.delete_snapshot(ALICE, b"hers", wait=True)["deleted"]
    assert ops.rmtree(ROOT, b"/.snapshots/whole", wait=True)["deleted"]
    assert [s["name"] for s in ops.snapshots(ALICE)] == [b"roots"]


def test_a_users_own_snapshot_directory_is_not_taken_over(fs, ops):
    fs.mkdir(ROOT_INO, b".snapshots", 0o777, AS_ROOT)
    with pytest.raises(FSError) as info:
        ops.snapshot(ROOT, b"/", b"s")
    assert info.value.errno == errno.EEXIST and "not chunkfs's snapshot directory" in str(info.value)


# -- rmtree --------------------------------------------------------------------------------------------


def test_rmtree_detaches_at_once_and_deletes_in_the_background(fs, ops, store):
    t = tree(fs)
    for i in range(300):
        write(fs, t[b"sub"], b"n%d" % i, os.urandom(2000))
    forget_all(fs)
    assert ops.rmtree(ROOT, b"/a")["path"] == b"/a"
    assert fs.find(ROOT_INO, b"a") is None and fs.getattr(ROOT_INO).nlink == 2
    _wait_reaped(fs)
    assert store.stats()["files"] == 0 and store.stats()["stored_bytes"] == 0
    assert check_store(store).clean


def test_rmtree_needs_what_rm_rf_needs(fs, ops):
    t = tree(fs)
    fs.setattr(ROOT_INO, SetAttr(mode=0o1777))  # sticky, like /tmp
    fs.setattr(t[b"a"], SetAttr(uid=1000, gid=1000))
    assert errno_of(ops.rmtree, BOB, b"/a") == errno.EACCES  # he may not empty /a
    write(fs, ROOT_INO, b"hers", b"x", who=Caller(1000, 1000))
    assert errno_of(ops.rmtree, BOB, b"/hers") == errno.EPERM  # sticky: neither his nor his directory
    assert errno_of(ops.rmtree, ALICE, b"/a") == errno.EACCES  # hers, but /a/sub (root's 0755) cannot be emptied
    fs.setattr(t[b"sub"], SetAttr(mode=0o777))
    assert ops.rmtree(ALICE, b"/a", wait=True)["deleted"]
    assert errno_of(ops.rmtree, ROOT, b"/") == errno.EBUSY
    assert errno_of(ops.rmtree, ROOT, b"/a") == errno.ENOENT


# -- du ------------------------------------------------------------------------------------------------


def test_du_counts_unique_and_shared_bytes_from_the_index(fs, ops, store):
    a = fs.mkdir(ROOT_INO, b"a", 0o755, AS_ROOT).ino
    only = os.urandom(50_000)
    shared = os.urandom(30_000)
    write(fs, a, b"only", only)
    write(fs, a, b"twice", only)  # duplicates inside: still unique to /a
    write(fs, a, b"shared", shared)
    write(fs, ROOT_INO, b"elsewhere", shared)
    linked = write(fs, a, b"linked", os.urandom(20_000))
    fs.link(linked, ROOT_INO, b"also-outside")  # survives deleting /a
    top, = ops.du(ROOT, b"/a")
    assert top["logical_bytes"] == 150_000 and top["files"] == 4
    assert top["stored_bytes"] == 100_000
    assert top["unique_bytes"] == 50_000 and top["shared_bytes"] == 50_000
    whole = {u["path"]: u for u in ops.du(ROOT, b"/", depth=1)}
    assert set(whole) == {b"/", b"/a"}
    assert whole[b"/"]["unique_bytes"] == whole[b"/"]["stored_bytes"] == store.stats()["stored_bytes"]
    assert whole[b"/"]["logical_bytes"] == 180_000  # the hard-linked file once
    fs.setattr(a, SetAttr(mode=0o700))
    assert errno_of(ops.du, ALICE, b"/a") == errno.EACCES == errno_of(ops.du, ALICE, b"/")
    assert ops.du(ALICE, b"/elsewhere")[0]["unique_bytes"] == 0
