"""The filesystem core in-process (no mount): namespace, errno of every error case, open files, orphans."""

from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from chunkfs.errors import ChunkfsError, FSError, StoreFullError, WouldBlock
from chunkfs.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, Caller, FsCore, SetAttr
from chunkfs.fs.openfile import FileData, file_id_for
from chunkfs.store import ChunkStore
from conftest import drop_pack_pages

USER = Caller(uid=1000, gid=1000, umask=0o022)
ROOT = ROOT_INO


@pytest.fixture
def store(tmp_path):
    s = ChunkStore.create(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def fs(store):
    core = FsCore(store, root_uid=0, root_gid=0)
    yield core
    core.close()


def errno_of(fn, *args) -> int:
    with pytest.raises(ChunkfsError) as info:
        fn(*args)
    return info.value.errno


def write_file(fs: FsCore, parent: int, name: bytes, data: bytes = b"") -> int:
    fh, inode = fs.create(parent, name, 0o644, os.O_WRONLY, USER)
    if data:
        assert fs.write(fh, 0, data) == len(data)
    fs.flush(fh)
    fs.release(fh)
    return inode.ino


def read_file(fs: FsCore, ino: int) -> bytes:
    fh, _ = fs.open(ino, os.O_RDONLY)
    try:
        return fs.read(fh, 0, fs.getattr(ino).size + 1)
    finally:
        fs.release(fh)


def names(fs: FsCore, ino: int) -> list[bytes]:
    out, cookie = [], 0
    while batch := fs.readdir(ino, cookie):
        out += [e.name for e in batch]
        cookie = batch[-1].next_id
    return out


# -- basics ---------------------------------------------------------------------------


def test_root_exists_with_stable_attributes(fs):
    root = fs.getattr(ROOT)
    assert stat.S_ISDIR(root.mode) and stat.S_IMODE(root.mode) == 0o755
    assert (root.nlink, root.uid, root.gid) == (2, 0, 0)
    assert fs.lookup(ROOT, b"..").ino == ROOT and fs.lookup(ROOT, b".").ino == ROOT


def test_mkdir_counts_links_and_dot_entries(fs):
    d = fs.mkdir(ROOT, b"d", 0o777, USER)
    assert stat.S_IMODE(d.mode) == 0o755  # umask applied
    assert (d.nlink, d.uid, d.gid) == (2, 1000, 1000)
    assert fs.getattr(ROOT).nlink == 3
    sub = fs.mkdir(d.ino, b"sub", 0o700, USER)
    assert fs.getattr(d.ino).nlink == 3
    assert fs.lookup(sub.ino, b"..").ino == d.ino
    assert names(fs, d.ino) == [b".", b"..", b"sub"]


def test_every_create_refuses_an_existing_name(fs):
    write_file(fs, ROOT, b"x")
    ino = fs.lookup(ROOT, b"x").ino
    assert errno_of(fs.create, ROOT, b"x", 0o644, os.O_WRONLY, USER) == errno.EEXIST
    assert errno_of(fs.mkdir, ROOT, b"x", 0o755, USER) == errno.EEXIST
    assert errno_of(fs.mknod, ROOT, b"x", stat.S_IFIFO | 0o644, 0, USER) == errno.EEXIST
    assert errno_of(fs.symlink, ROOT, b"x", b"target", USER) == errno.EEXIST
    assert errno_of(fs.link, ino, ROOT, b"x") == errno.EEXIST


def test_name_length_limit(fs):
    ok, long = b"n" * 255, b"n" * 256
    write_file(fs, ROOT, ok)
    assert fs.lookup(ROOT, ok).size == 0
    ino = fs.lookup(ROOT, ok).ino
    for call in [(fs.lookup, ROOT, long), (fs.create, ROOT, long, 0o644, 0, USER),
                 (fs.mkdir, ROOT, long, 0o755, USER), (fs.symlink, ROOT, long, b"t", USER),
                 (fs.link, ino, ROOT, long), (fs.rename, ROOT, ok, ROOT, long),
                 (fs.unlink, ROOT, long), (fs.rmdir, ROOT, long)]:
        assert errno_of(*call) == errno.ENAMETOOLONG, call[0].__name__


def test_lookup_errors(fs):
    ino = write_file(fs, ROOT, b"f")
    assert errno_of(fs.lookup, ROOT, b"missing") == errno.ENOENT
    assert errno_of(fs.lookup, ino, b"x") == errno.ENOTDIR
    assert errno_of(fs.getattr, 999_999) == errno.ENOENT
    assert errno_of(fs.mkdir, ino, b"x", 0o755, USER) == errno.ENOTDIR


def test_remove_errors(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    write_file(fs, d, b"f")
    assert errno_of(fs.unlink, ROOT, b"d") == errno.EISDIR
    assert errno_of(fs.rmdir, d, b"f") == errno.ENOTDIR
    assert errno_of(fs.rmdir, ROOT, b"d") == errno.ENOTEMPTY
    assert errno_of(fs.rmdir, ROOT, b"missing") == errno.ENOENT
    assert errno_of(fs.unlink, ROOT, b"missing") == errno.ENOENT
    assert errno_of(fs.rmdir, d, b".") == errno.EINVAL
    fs.unlink(d, b"f")
    fs.rmdir(ROOT, b"d")
    assert fs.getattr(ROOT).nlink == 2
    assert names(fs, ROOT) == [b".", b".."]


def test_removed_directory_refuses_new_entries(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    fs.rmdir(ROOT, b"d")
    assert fs.getattr(d).nlink == 0  # still looked up, so still there
    assert errno_of(fs.create, d, b"f", 0o644, 0, USER) == errno.ENOENT
    write_file(fs, ROOT, b"f")
    assert errno_of(fs.rename, ROOT, b"f", d, b"f") == errno.ENOENT
    assert errno_of(fs.link, fs.lookup(ROOT, b"f").ino, d, b"g") == errno.ENOENT
    assert names(fs, d) == [b".", b".."]


# -- ownership, modes, times -----------------------------------------------------------


def test_setgid_directory_is_inherited(fs):
    d = fs.mkdir(ROOT, b"shared", 0o2775, Caller(0, 50, 0o002))
    assert d.mode & stat.S_ISGID and d.gid == 50
    f = fs.create(d.ino, b"f", 0o664, 0, USER)[1]
    sub = fs.mkdir(d.ino, b"sub", 0o755, USER)
    assert (f.gid, sub.gid) == (50, 50)
    assert not f.mode & stat.S_ISGID and sub.mode & stat.S_ISGID


def test_setattr_mode_owner_and_nanosecond_times(fs):
    ino = write_file(fs, ROOT, b"f", b"abc")
    before = fs.getattr(ino).ctime_ns
    a = fs.setattr(ino, SetAttr(mode=0o4751, uid=7, gid=8, atime_ns=1_234_567_891, mtime_ns=-5))
    assert a.mode == stat.S_IFREG | 0o4751 and (a.uid, a.gid) == (7, 8)
    assert (a.atime_ns, a.mtime_ns) == (1_234_567_891, -5)
    assert a.ctime_ns >= before
    assert fs.setattr(ino, SetAttr(ctime_ns=42)).ctime_ns == 42


def test_parent_times_change_on_create_and_remove(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    fs.setattr(d, SetAttr(mtime_ns=0, ctime_ns=0))
    write_file(fs, d, b"f")
    assert fs.getattr(d).mtime_ns > 0
    fs.setattr(d, SetAttr(mtime_ns=0, ctime_ns=0))
    fs.unlink(d, b"f")
    assert fs.getattr(d).mtime_ns > 0


def test_relatime_on_read_open(store):
    fs = FsCore(store)
    ino = write_file(fs, ROOT, b"f", b"data")
    fs.setattr(ino, SetAttr(atime_ns=1, mtime_ns=2))
    read_file(fs, ino)
    atime = fs.getattr(ino).atime_ns
    assert atime > 2
    read_file(fs, ino)  # atime is now newer than mtime and recent: unchanged
    assert fs.getattr(ino).atime_ns == atime
    fs.close()
    quiet = FsCore(store, atime="noatime")
    quiet.setattr(ino, SetAttr(atime_ns=1))
    read_file(quiet, ino)
    assert quiet.getattr(ino).atime_ns == 1
    quiet.close()


def test_symlink_and_special_files(fs):
    s = fs.symlink(ROOT, b"s", b"../somewhere", USER)
    assert stat.S_ISLNK(s.mode) and s.size == len(b"../somewhere")
    assert fs.readlink(s.ino) == b"../somewhere"
    f = write_file(fs, ROOT, b"f")
    assert errno_of(fs.readlink, f) == errno.EINVAL
    fifo = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o640, 0, USER)
    dev = fs.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), USER)
    assert stat.S_ISFIFO(fifo.mode) and stat.S_ISCHR(dev.mode) and dev.rdev == os.makedev(1, 3)
    assert errno_of(fs.mknod, ROOT, b"dir", stat.S_IFDIR | 0o755, 0, USER) == errno.EPERM
    assert errno_of(fs.open, fifo.ino, os.O_RDONLY) == errno.EINVAL
    assert errno_of(fs.open, ROOT, os.O_RDONLY) == errno.EISDIR


def test_statfs_counts_inodes(fs):
    before = fs.statfs()
    write_file(fs, ROOT, b"a")
    fs.mkdir(ROOT, b"b", 0o755, USER)
    after = fs.statfs()
    assert after["f_files"] - after["f_ffree"] == before["f_files"] - before["f_ffree"] + 2 == 3
    assert after["f_blocks"] > 0 and after["f_namemax"] == 255


# -- hard links ---------------------------------------------------------------------


def test_hard_links_count_and_share_contents(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    ino = write_file(fs, ROOT, b"a", b"shared bytes")
    assert fs.link(ino, d, b"b").nlink == 2
    assert fs.lookup(d, b"b").ino == ino
    fs.unlink(ROOT, b"a")
    assert fs.getattr(ino).nlink == 1
    assert read_file(fs, ino) == b"shared bytes"
    assert errno_of(fs.link, d, ROOT, b"dirlink") == errno.EPERM


# -- rename ---------------------------------------------------------------------------


def test_rename_moves_and_replaces(fs, store):
    a = write_file(fs, ROOT, b"a", b"new")
    b = write_file(fs, ROOT, b"b", b"old")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert fs.lookup(ROOT, b"b").ino == a
    assert errno_of(fs.lookup, ROOT, b"a") == errno.ENOENT
    assert fs.getattr(b).nlink == 0
    fs.forget([(b, 10)])
    assert errno_of(fs.getattr, b) == errno.ENOENT
    assert not store.exists(file_id_for(b))
    assert read_file(fs, a) == b"new"


def test_rename_directories_updates_link_counts_and_parent(fs):
    d1 = fs.mkdir(ROOT, b"d1", 0o755, USER).ino
    d2 = fs.mkdir(ROOT, b"d2", 0o755, USER).ino
    sub = fs.mkdir(d1, b"sub", 0o755, USER).ino
    fs.rename(d1, b"sub", d2, b"moved")
    assert (fs.getattr(d1).nlink, fs.getattr(d2).nlink) == (2, 3)
    assert fs.lookup(sub, b"..").ino == d2
    fs.mkdir(ROOT, b"empty", 0o755, USER)
    fs.rename(ROOT, b"d1", ROOT, b"empty")  # over an empty directory
    assert fs.getattr(ROOT).nlink == 4  # d2, empty(=d1), and root's own two
    assert fs.lookup(ROOT, b"empty").ino == d1


def test_rename_errors(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    sub = fs.mkdir(d, b"sub", 0o755, USER).ino
    write_file(fs, sub, b"f")
    write_file(fs, ROOT, b"file")
    fs.mkdir(ROOT, b"full", 0o755, USER)
    write_file(fs, fs.lookup(ROOT, b"full").ino, b"x")
    assert errno_of(fs.rename, ROOT, b"missing", ROOT, b"x") == errno.ENOENT
    assert errno_of(fs.rename, ROOT, b"d", sub, b"loop") == errno.EINVAL
    assert errno_of(fs.rename, ROOT, b"d", ROOT, b"file") == errno.ENOTDIR
    assert errno_of(fs.rename, ROOT, b"file", ROOT, b"d") == errno.EISDIR
    assert errno_of(fs.rename, ROOT, b"d", ROOT, b"full") == errno.ENOTEMPTY
    assert errno_of(fs.rename, ROOT, b"file", ROOT, b"d", RENAME_NOREPLACE) == errno.EEXIST
    assert errno_of(fs.rename, ROOT, b"file", ROOT, b"nope", RENAME_EXCHANGE) == errno.ENOENT
    assert errno_of(fs.rename, ROOT, b"file", ROOT, b"x", RENAME_EXCHANGE | RENAME_NOREPLACE) == errno.EINVAL
    assert errno_of(fs.rename, ROOT, b"file", ROOT, b"x", 4) == errno.EINVAL


def test_rename_noreplace_and_links_to_one_inode(fs):
    a = write_file(fs, ROOT, b"a")
    fs.link(a, ROOT, b"b")
    fs.rename(ROOT, b"a", ROOT, b"b")  # both names are one inode: nothing happens
    assert names(fs, ROOT) == [b".", b"..", b"a", b"b"] and fs.getattr(a).nlink == 2
    fs.rename(ROOT, b"a", ROOT, b"c", RENAME_NOREPLACE)
    assert fs.lookup(ROOT, b"c").ino == a


def test_rename_exchange_swaps_across_directories(fs):
    d1 = fs.mkdir(ROOT, b"d1", 0o755, USER).ino
    d2 = fs.mkdir(ROOT, b"d2", 0o755, USER).ino
    f = write_file(fs, d1, b"x", b"file")
    sub = fs.mkdir(d2, b"y", 0o755, USER).ino
    fs.rename(d1, b"x", d2, b"y", RENAME_EXCHANGE)
    assert fs.lookup(d1, b"x").ino == sub and fs.lookup(d2, b"y").ino == f
    assert (fs.getattr(d1).nlink, fs.getattr(d2).nlink) == (3, 2)
    assert fs.lookup(sub, b"..").ino == d1
    assert errno_of(fs.rename, ROOT, b"d1", d1, b"x", RENAME_EXCHANGE) == errno.EINVAL


# -- readdir ----------------------------------------------------------------------------


def test_readdir_cookies_survive_concurrent_changes(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    for i in range(600):
        fs.mknod(d, b"f%04d" % i, stat.S_IFREG | 0o644, 0, USER)
    seen: list[bytes] = []
    removed: set[bytes] = set()
    cookie, round_ = 0, 0
    while batch := fs.readdir(d, cookie):
        batch = batch[:50]
        seen += [e.name for e in batch]
        cookie = batch[-1].next_id
        if round_ >= 10:
            continue  # stop mutating, or a listing that keeps up would never end
        for i in range(round_ * 7, round_ * 7 + 5):  # remove entries not listed yet, add new ones
            name = b"f%04d" % (599 - i)
            if name not in seen:
                fs.unlink(d, name)
                removed.add(name)
            fs.mknod(d, b"new%03d-%d" % (round_, i), stat.S_IFREG | 0o644, 0, USER)
        round_ += 1
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    survivors = {b"f%04d" % i for i in range(600)} - removed
    assert survivors <= set(seen), "an entry that stayed was skipped"
    assert not removed & set(seen)


def test_rm_rf_while_listing(fs):
    d = fs.mkdir(ROOT, b"big", 0o755, USER).ino
    for i in range(2000):
        fs.mknod(d, b"%05d" % i, stat.S_IFREG | 0o644, 0, USER)
    cookie = 0
    while batch := fs.readdir(d, cookie):
        for e in batch:
            if e.counted:
                fs.unlink(d, e.name)
        cookie = batch[-1].next_id
    fs.rmdir(ROOT, b"big")
    assert names(fs, ROOT) == [b".", b".."]


# -- file data and open handles ----------------------------------------------------------


def test_handles_share_data_and_size_before_commit(fs):
    fh1, inode = fs.create(ROOT, b"f", 0o644, os.O_RDWR, USER)
    fh2, _ = fs.open(inode.ino, os.O_RDONLY)
    fs.write(fh1, 0, b"hello world")
    assert fs.read(fh2, 6, 100) == b"world"
    assert fs.getattr(inode.ino).size == 11  # uncommitted, yet visible
    fs.flush(fh1)
    fs.release(fh1)
    fs.release(fh2)
    assert fs.getattr(inode.ino).size == 11
    assert read_file(fs, inode.ino) == b"hello world"


def test_truncate_with_and_without_open_handle(fs):
    ino = write_file(fs, ROOT, b"f", b"0123456789")
    assert fs.setattr(ino, SetAttr(size=4)).size == 4
    assert read_file(fs, ino) == b"0123"
    fh, _ = fs.open(ino, os.O_RDWR)
    assert fs.setattr(ino, SetAttr(size=8), fh).size == 8
    assert fs.read(fh, 0, 100) == b"0123\0\0\0\0"
    fs.release(fh)
    assert read_file(fs, ino) == b"0123\0\0\0\0"
    d = fs.mkdir(ROOT, b"d", 0o755, USER).ino
    assert errno_of(fs.setattr, d, SetAttr(size=0)) == errno.EISDIR


def test_write_time_is_committed_unless_utimens_followed(fs):
    fh, inode = fs.create(ROOT, b"f", 0o644, os.O_WRONLY, USER)
    fs.write(fh, 0, b"x" * 100)
    fs.setattr(inode.ino, SetAttr(mtime_ns=1_000_000_000))  # like rsync/cp -p before close
    fs.flush(fh)
    fs.release(fh)
    a = fs.getattr(inode.ino)
    assert (a.size, a.mtime_ns) == (100, 1_000_000_000)
    fh, _ = fs.open(inode.ino, os.O_WRONLY)
    fs.write(fh, 100, b"y")
    fs.release(fh)  # release alone commits too
    assert fs.getattr(inode.ino).mtime_ns > 1_000_000_000 and fs.getattr(inode.ino).size == 101


def test_flush_reports_commit_failure(store):
    class Failing(FileData):
        def commit(self, hook=None, nowait=False):
            raise StoreFullError("disk full")

    fs = FsCore(store, filedata_factory=Failing, file_id_for=file_id_for)
    fh, _ = fs.create(ROOT, b"f", 0o644, os.O_WRONLY, USER)
    fs.write(fh, 0, b"data")
    assert errno_of(fs.flush, fh) == errno.ENOSPC
    assert errno_of(fs.fsync, fh, False) == errno.ENOSPC
    fs.release(fh)  # logs, never raises
    fs.close()


def test_unlinked_open_file_lives_until_last_release(fs, store):
    fh, inode = fs.create(ROOT, b"f", 0o644, os.O_RDWR, USER)
    fs.write(fh, 0, b"before")
    fs.flush(fh)
    fs.unlink(ROOT, b"f")
    fs.forget([(inode.ino, 1)])  # the kernel forgets the name, but the handle holds the inode
    fs.write(fh, 6, b" after")
    assert fs.read(fh, 0, 100) == b"before after"
    assert fs.getattr(inode.ino).nlink == 0
    fs.release(fh)
    assert errno_of(fs.getattr, inode.ino) == errno.ENOENT
    assert not store.exists(file_id_for(inode.ino))
    with store.index.read() as txn:
        assert fs.ns.orphans(txn) == []


def test_orphans_left_by_a_crash_are_purged_at_mount(tmp_path):
    store = ChunkStore.create(tmp_path / "s")
    fs = FsCore(store)
    fh, inode = fs.create(ROOT, b"f", 0o644, os.O_RDWR, USER)
    fs.write(fh, 0, b"x" * 5000)
    fs.flush(fh)
    fs.unlink(ROOT, b"f")
    fs.files.inode(inode.ino).data.close()  # the process dies here: no release, no forget
    store.close()
    store = ChunkStore.open(tmp_path / "s")
    assert store.exists(file_id_for(inode.ino))
    fs = FsCore(store)
    assert errno_of(fs.getattr, inode.ino) == errno.ENOENT
    assert not store.exists(file_id_for(inode.ino))
    assert store.stats()["logical_bytes"] == 0
    fs.close()
    store.close()


def test_namespace_and_data_persist_with_stable_inode_numbers(tmp_path):
    store = ChunkStore.create(tmp_path / "s")
    fs = FsCore(store)
    d = fs.mkdir(ROOT, b"dir", 0o750, USER).ino
    f = write_file(fs, d, b"file", b"contents" * 1000)
    fs.link(f, ROOT, b"hard")
    fs.symlink(d, b"link", b"file", USER)
    fs.setxattr(f, b"user.k", b"v")
    fs.close()
    store.close()
    store = ChunkStore.open(tmp_path / "s")
    fs = FsCore(store)
    assert fs.lookup(ROOT, b"dir").ino == d and fs.lookup(d, b"file").ino == f
    assert fs.getattr(f).nlink == 2 and fs.getattr(ROOT).nlink == 3
    assert read_file(fs, f) == b"contents" * 1000
    assert fs.readlink(fs.lookup(d, b"link").ino) == b"file"
    assert fs.getxattr(f, b"user.k") == b"v"
    assert write_file(fs, ROOT, b"new") > fs.lookup(d, b"link").ino  # numbers are never reused
    fs.close()
    store.close()


# -- xattrs and ACLs -----------------------------------------------------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
ACCESS, DEFAULT = b"system.posix_acl_access", b"system.posix_acl_default"


def make_acl(*entries) -> bytes:
    out = struct.pack("<I", 2)
    for tag, perm, *ident in entries:
        out += struct.pack("<HHI", tag, perm, ident[0] if ident else 0xFFFFFFFF)
    return out


def test_xattrs(fs):
    ino = write_file(fs, ROOT, b"f")
    assert errno_of(fs.getxattr, ino, b"user.missing") == errno.ENODATA
    assert errno_of(fs.removexattr, ino, b"user.missing") == errno.ENODATA
    fs.setxattr(ino, b"user.a", b"1")
    fs.setxattr(ino, b"trusted.b", b"\0binary\xff")
    acl = make_acl((ACL_USER_OBJ, 6), (ACL_USER, 4, 99), (ACL_GROUP_OBJ, 4), (ACL_MASK, 4), (ACL_OTHER, 0))
    fs.setxattr(ino, b"system.posix_acl_access", acl)
    assert sorted(fs.listxattr(ino)) == [b"system.posix_acl_access", b"trusted.b", b"user.a"]
    assert fs.getxattr(ino, b"system.posix_acl_access") == acl
    assert errno_of(fs.setxattr, ino, b"user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(fs.setxattr, ino, b"user.c", b"2", os.XATTR_REPLACE) == errno.ENODATA
    fs.setxattr(ino, b"user.a", b"2", os.XATTR_REPLACE)
    assert fs.getxattr(ino, b"user.a") == b"2"
    fs.removexattr(ino, b"user.a")
    assert fs.listxattr(ino) == [b"system.posix_acl_access", b"trusted.b"]
    fs.setxattr(ino, b"user.big", b"v" * 65536)
    assert len(fs.getxattr(ino, b"user.big")) == 65536
    fs.unlink(ROOT, b"f")
    fs.forget([(ino, 1)])
    assert errno_of(fs.listxattr, ino) == errno.ENOENT
    with fs.store.index.read() as txn:
        assert fs.ns.xattr_names(txn, ino) == []


def test_read_only_core_refuses_changes(store):
    FsCore(store).close()
    fs = FsCore(store, readonly=True)
    assert errno_of(fs.mkdir, ROOT, b"d", 0o755, USER) == errno.EROFS
    assert errno_of(fs.setxattr, ROOT, b"user.x", b"1") == errno.EROFS
    assert fs.getattr(ROOT).ino == ROOT
    fs.close()


def test_forget_of_unknown_inode_is_harmless(fs):
    fs.forget([(123456, 3), (ROOT, 1)])
    assert fs.getattr(ROOT).ino == ROOT


def test_namespace_errors_are_fserror(fs):
    with pytest.raises(FSError):
        fs.lookup(ROOT, b"nothing")


def test_open_with_o_trunc_truncates(fs):
    ino = write_file(fs, ROOT, b"f", b"old contents")
    fh, _ = fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    assert fs.getattr(ino).size == 0
    fs.write(fh, 0, b"new")
    fs.release(fh)
    assert read_file(fs, ino) == b"new"
    fh, _ = fs.open(ino, os.O_RDONLY | os.O_TRUNC)  # Linux truncates here too (ext4 does)
    assert fs.getattr(ino).size == 0 and fs.read(fh, 0, 10) == b""
    fs.release(fh)
    assert read_file(fs, ino) == b""


def test_access_acl_sets_mode_and_chmod_rewrites_acl(fs):
    ino = write_file(fs, ROOT, b"f")  # 0644
    fs.setxattr(ino, ACCESS, make_acl((ACL_USER_OBJ, 6), (ACL_USER, 7, 99), (ACL_GROUP_OBJ, 4),
                                      (ACL_MASK, 7), (ACL_OTHER, 0)))
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o670  # group bits are the mask
    fs.setattr(ino, SetAttr(mode=0o640))
    assert fs.getxattr(ino, ACCESS) == make_acl((ACL_USER_OBJ, 6), (ACL_USER, 7, 99), (ACL_GROUP_OBJ, 4),
                                                (ACL_MASK, 4), (ACL_OTHER, 0))
    fs.setxattr(ino, ACCESS, make_acl((ACL_USER_OBJ, 7), (ACL_GROUP_OBJ, 5), (ACL_OTHER, 1)))
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o751
    assert ACCESS not in fs.listxattr(ino)  # says no more than the mode: not stored
    assert errno_of(fs.setxattr, ino, ACCESS, b"\x02\0\0\0\1") == errno.EINVAL
    assert errno_of(fs.setxattr, ino, ACCESS, make_acl((ACL_USER_OBJ, 6), (ACL_USER, 4, 1),
                                                       (ACL_GROUP_OBJ, 4), (ACL_OTHER, 0))) == errno.EINVAL
    assert errno_of(fs.setxattr, ino, DEFAULT, make_acl((ACL_USER_OBJ, 6), (ACL_GROUP_OBJ, 4),
                                                        (ACL_OTHER, 0))) == errno.EACCES


def test_default_acl_is_inherited_without_umask(fs):
    d = fs.mkdir(ROOT, b"shared", 0o755, USER).ino
    default = make_acl((ACL_USER_OBJ, 7), (ACL_USER, 7, 99), (ACL_GROUP_OBJ, 5), (ACL_MASK, 7), (ACL_OTHER, 0))
    fs.setxattr(d, DEFAULT, default)
    f = fs.create(d, b"f", 0o666, os.O_WRONLY, Caller(1000, 1000, 0o077))[1]
    assert stat.S_IMODE(f.mode) == 0o660  # umask ignored; the mask (rwx) limited by mode 0666 gives rw
    assert fs.getxattr(f.ino, ACCESS) == make_acl((ACL_USER_OBJ, 6), (ACL_USER, 7, 99), (ACL_GROUP_OBJ, 5),
                                                  (ACL_MASK, 6), (ACL_OTHER, 0))
    sub = fs.mkdir(d, b"sub", 0o777, USER)
    assert stat.S_IMODE(sub.mode) == 0o770
    assert fs.getxattr(sub.ino, DEFAULT) == default and ACCESS in fs.listxattr(sub.ino)
    link = fs.symlink(d, b"link", b"f", USER)
    assert fs.listxattr(link.ino) == [] and stat.S_IMODE(link.mode) == 0o777
    plain = fs.mkdir(ROOT, b"plain", 0o777, Caller(0, 0, 0o027))
    assert stat.S_IMODE(plain.mode) == 0o750 and fs.listxattr(plain.ino) == []


def test_close_commits_files_still_open(tmp_path):
    store = ChunkStore.create(tmp_path / "s")
    fs = FsCore(store)
    fh, inode = fs.create(ROOT, b"f", 0o644, os.O_WRONLY, USER)
    fs.write(fh, 0, b"never flushed")
    fs.close()  # unmounted with the file still open (a lazy unmount, say)
    store.close()
    with ChunkStore.open(tmp_path / "s") as store:
        fs = FsCore(store)
        assert fs.getattr(inode.ino).size == 13 and read_file(fs, inode.ino) == b"never flushed"
        fs.close()


def test_explicit_mtime_survives_a_commit_that_began_before_it(fs, store):
    """rsync --inplace: a handle's release commit races with utimensat; the explicit time must win."""
    ino = write_file(fs, ROOT, b"f", b"old")
    writer, _ = fs.open(ino, os.O_WRONLY)
    reader, _ = fs.open(ino, os.O_RDONLY)
    fs.write(writer, 0, b"new")
    fs.flush(writer)
    oi = fs.files.handle(reader).inode
    real_commit = oi.data.commit
    explicit = 1_000_000_000 * 1_234_567

    def commit_with_utimens_in_between(hook=None, nowait=False):
        # the release of `reader` has begun its commit; utimensat lands now
        fs.setattr(ino, SetAttr(mtime_ns=explicit))
        return real_commit(hook, nowait)

    fs.write(writer, 0, b"NEW")  # leaves a pending write time for the release to store
    oi.data.commit = commit_with_utimens_in_between
    fs.release(reader)
    oi.data.commit = real_commit
    fs.release(writer)
    assert fs.getattr(ino).mtime_ns == explicit
    assert read_file(fs, ino) == b"NEW"


def read_now(fs, fh: int, offset: int, length: int):
    """The event loop's read (``nowait``): the bytes, or None where the data path leaves it to a thread."""
    try:
        return fs.read(fh, offset, length, nowait=True)
    except WouldBlock:
        return None


def read_now_around(fs, fh: int, offset: int, length: int):
    """``read_now`` with the chunk run the read offered for read-around (None if it offered none)."""
    runs = []
    try:
        data = fs.read(fh, offset, length, nowait=True, around=runs.append)
    except WouldBlock:
        return None
    return data, (runs[0] if runs else None)


def test_read_now_serves_short_reads_of_clean_big_files(fs, store):
    """Short reads run on the event loop (nowait), waiting for the disk if need be;
    long reads of big files run there only from memory, else they are left to a thread (WouldBlock)."""
    data = os.urandom(600 * 1024)  # above the small-file limit
    ino = write_file(fs, ROOT, b"big", data)
    if not drop_pack_pages(store.path):
        pytest.skip("this filesystem keeps its files' pages in memory")
    fh, _ = fs.open(ino, os.O_RDONLY)
    try:
        short = store.settings.min_size
        assert read_now(fs, fh, 300_001, short) == data[300_001:300_001 + short]
        assert read_now(fs, fh, len(data) - 10, 4096) == data[-10:]
        assert read_now(fs, fh, 0, 128 * 1024) is None  # its chunks are on disk only
        assert fs.read(fh, 0, 128 * 1024) == data[:128 * 1024]
        assert read_now(fs, fh, 1, 128 * 1024) == data[1:128 * 1024 + 1]  # now they are in memory
        assert read_now_around(fs, fh, 1, 128 * 1024)[1] is None  # no read-around for long reads
        writer, _ = fs.open(ino, os.O_WRONLY)
        fs.write(writer, 0, b"x")  # an uncommitted change: a long read leaves it to a thread
        assert read_now(fs, fh, 1, 128 * 1024) is None
        assert fs.read(fh, 0, 2) == b"x" + data[1:2]
        fs.release(writer)
    finally:
        fs.release(fh)


def test_read_now_never_waits_for_another_thread(fs):
    """A file held by another thread (say a long commit) or being streamed answers WouldBlock, not a stall."""
    import threading
    ino = write_file(fs, ROOT, b"f", b"x" * 5000)
    fh, _ = fs.open(ino, os.O_RDWR)
    try:
        data = fs.files.handle(fh).inode.data
        held, release = threading.Event(), threading.Event()

        def hold():
            with data._lock:
                held.set()
                release.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        held.wait(10)
        try:
            assert read_now(fs, fh, 0, 100) is None
        finally:
            release.set()
            t.join()
        assert read_now(fs, fh, 0, 100) == b"x" * 100
        fs.write(fh, 5000, b"y" * 100)  # an append: the file streams until committed
        assert read_now(fs, fh, 4950, 100) is None
        assert fs.read(fh, 4950, 100) == b"x" * 50 + b"y" * 50
    finally:
        fs.release(fh)
