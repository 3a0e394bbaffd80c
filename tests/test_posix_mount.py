"""POSIX semantics through a real mount: every namespace operation with os.* calls and its errno.

Each test gets its own store mounted by ``chunkfs mount`` (the ``mounted_fs``
fixture in conftest.py: daemon mode, always unmounted, daemon log checked for
tracebacks and ERROR lines at teardown).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from conftest import wait_until

pytestmark = pytest.mark.mount

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
NOBODY = 65534


def oserror(fn, *args, **kwargs) -> int:
    """The errno ``fn`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def renameat2(old, new, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write(path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# -- files, directories, names ---------------------------------------------------------------


@pytest.mark.slow
def test_file_contents_and_attributes(mounted_fs):
    path = mounted_fs / "f"
    data = os.urandom(300_000)
    write(path, data)
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert (st.st_size, st.st_nlink, st.st_uid) == (len(data), 1, os.getuid())
    assert st.st_blocks == (len(data) + 511) // 512
    assert read(path) == data
    with open(path, "ab") as fh:
        fh.write(b"tail")
    assert read(path) == data + b"tail"
    with open(path, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"MIDDLE")
    assert read(path)[995:1011] == data[995:1000] + b"MIDDLE" + data[1006:1011]
    write(path, b"short")  # O_TRUNC
    assert read(path) == b"short" and os.stat(path).st_blocks == 1


@pytest.mark.slow
def test_read_only_open_with_o_trunc_truncates_as_on_ext4(mounted_fs):
    path = mounted_fs / "f"
    write(path, os.urandom(100_000))
    assert read(path)[:10]  # its pages are in the page cache now
    fd = os.open(path, os.O_RDONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0 and os.read(fd, 100) == b""
    finally:
        os.close(fd)
    assert os.stat(path).st_size == 0 and read(path) == b""


@pytest.mark.slow
def test_truncate_extends_with_zeros_and_shrinks(mounted_fs):
    path = mounted_fs / "t"
    write(path, b"0123456789")
    os.truncate(path, 4)
    assert read(path) == b"0123"
    with open(path, "r+b") as fh:
        os.ftruncate(fh.fileno(), 8)
        assert os.fstat(fh.fileno()).st_size == 8
    assert read(path) == b"0123" + bytes(4)
    os.truncate(path, 0)
    assert os.stat(path).st_size == 0 and os.stat(path).st_blocks == 0
    assert oserror(os.truncate, mounted_fs.mountpoint, 0) == errno.EISDIR


@pytest.mark.slow
def test_directories_and_their_errors(mounted_fs):
    d = mounted_fs / "d"
    os.mkdir(d)
    os.mkdir(d / "sub")
    write(d / "file", b"x")
    assert sorted(os.listdir(d)) == ["file", "sub"]
    assert os.stat(d).st_nlink == 3
    assert oserror(os.mkdir, d) == errno.EEXIST
    assert oserror(os.open, d / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert oserror(os.rmdir, d) == errno.ENOTEMPTY
    assert oserror(os.rmdir, d / "file") == errno.ENOTDIR
    assert oserror(os.unlink, d / "sub") == errno.EISDIR
    assert oserror(os.stat, d / "missing") == errno.ENOENT
    assert oserror(os.unlink, d / "missing") == errno.ENOENT
    assert oserror(os.stat, d / "file" / "x") == errno.ENOTDIR
    assert oserror(os.mkdir, d / "missing" / "x") == errno.ENOENT
    assert oserror(open, d, "rb+") == errno.EISDIR
    os.unlink(d / "file")
    os.rmdir(d / "sub")
    os.rmdir(d)
    assert os.listdir(mounted_fs.mountpoint) == []


@pytest.mark.slow
def test_name_length_limit(mounted_fs):
    ok, long = "n" * 255, "n" * 256
    write(mounted_fs / ok, b"x")
    os.mkdir(mounted_fs / ("d" * 255))
    assert oserror(open, mounted_fs / long, "wb") == errno.ENAMETOOLONG
    assert oserror(os.mkdir, mounted_fs / long) == errno.ENAMETOOLONG
    assert oserror(os.stat, mounted_fs / long) == errno.ENAMETOOLONG
    assert oserror(os.rename, mounted_fs / ok, mounted_fs / long) == errno.ENAMETOOLONG
    assert oserror(os.symlink, "t", mounted_fs / long) == errno.ENAMETOOLONG
    assert os.statvfs(mounted_fs.mountpoint).f_namemax == 255


@pytest.mark.slow
def test_hard_links(mounted_fs):
    a, b = mounted_fs / "a", mounted_fs / "b"
    write(a, b"shared")
    os.link(a, b)
    assert os.stat(a).st_nlink == 2 and os.stat(a).st_ino == os.stat(b).st_ino
    with open(b, "ab") as fh:
        fh.write(b"!")
    assert read(a) == b"shared!"
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and read(b) == b"shared!"
    assert oserror(os.link, b, b) == errno.EEXIST
    os.mkdir(mounted_fs / "d")
    assert oserror(os.link, mounted_fs / "d", mounted_fs / "dlink") == errno.EPERM


@pytest.mark.slow
def test_symlinks(mounted_fs):
    write(mounted_fs / "target", b"via link")
    os.symlink("target", mounted_fs / "link")
    os.symlink("nowhere/at/all", mounted_fs / "dangling")
    assert os.readlink(mounted_fs / "link") == "target"
    st = os.lstat(mounted_fs / "link")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target")
    assert read(mounted_fs / "link") == b"via link"
    assert oserror(os.stat, mounted_fs / "dangling") == errno.ENOENT
    assert oserror(os.readlink, mounted_fs / "target") == errno.EINVAL
    assert oserror(os.symlink, "x", mounted_fs / "link") == errno.EEXIST


@pytest.mark.slow
def test_mknod_fifo_and_device(mounted_fs):
    fifo = mounted_fs / "fifo"
    os.mkfifo(fifo, 0o640)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)
    os.write(writer, b"through the pipe")
    assert os.read(reader, 100) == b"through the pipe"
    os.close(writer)
    os.close(reader)
    if os.geteuid() == 0:
        dev = mounted_fs / "null"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        st = os.stat(dev)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    sock_ok = subprocess.run(["mknod", str(mounted_fs / "p2"), "p"]).returncode == 0
    assert sock_ok and stat.S_ISFIFO(os.stat(mounted_fs / "p2").st_mode)


# -- rename -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rename_semantics_and_errors(mounted_fs):
    m = mounted_fs.mountpoint
    write(m / "a", b"A")
    write(m / "b", b"B")
    os.rename(m / "a", m / "b")
    assert read(m / "b") == b"A" and not (m / "a").exists()
    os.mkdir(m / "d1")
    os.mkdir(m / "d2")
    write(m / "d1" / "inside", b"i")
    os.rename(m / "d1", m / "d2")  # over an empty directory
    assert os.listdir(m / "d2") == ["inside"] and not (m / "d1").exists()
    os.mkdir(m / "full")
    write(m / "full" / "x", b"")
    os.mkdir(m / "e")
    assert oserror(os.rename, m / "e", m / "full") == errno.ENOTEMPTY
    assert oserror(os.rename, m / "e", m / "b") == errno.ENOTDIR
    assert oserror(os.rename, m / "b", m / "e") == errno.EISDIR
    assert oserror(os.rename, m / "d2", m / "d2" / "sub") == errno.EINVAL
    assert oserror(os.rename, m / "missing", m / "x") == errno.ENOENT
    os.rename(m / "e", m / "full" / "e")
    assert os.stat(m / "full").st_nlink == 3 and os.stat(m).st_nlink == 4


@pytest.mark.slow
def test_renameat2_noreplace_and_exchange(mounted_fs):
    m = mounted_fs.mountpoint
    write(m / "a", b"A")
    os.mkdir(m / "d")
    write(m / "d" / "b", b"B")
    with pytest.raises(OSError) as info:
        renameat2(m / "a", m / "d" / "b", RENAME_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    renameat2(m / "a", m / "c", RENAME_NOREPLACE)
    assert read(m / "c") == b"A"
    renameat2(m / "c", m / "d" / "b", RENAME_EXCHANGE)
    assert read(m / "c") == b"B" and read(m / "d" / "b") == b"A"
    with pytest.raises(OSError) as info:
        renameat2(m / "c", m / "none", RENAME_EXCHANGE)
    assert info.value.errno == errno.ENOENT
    os.mkdir(m / "e")
    renameat2(m / "c", m / "e", RENAME_EXCHANGE)  # a file and a directory swap places
    assert os.path.isdir(m / "c") and read(m / "e") == b"B"


@pytest.mark.slow
def test_rename_across_mounts_is_exdev(mount_factory):
    one, two = mount_factory("one"), mount_factory("two")
    write(one / "f", b"x")
    assert oserror(os.rename, one / "f", two / "f") == errno.EXDEV
    assert oserror(os.link, one / "f", two / "f") == errno.EXDEV


# -- attributes ----------------------------------------------------------------------------------


def test_chmod_chown_and_nanosecond_times(mounted_fs):
    path = mounted_fs / "f"
    write(path, b"x")
    os.chmod(path, 0o4750)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o4750
    os.chown(path, 1234, 5678)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(path, ns=(1_111_111_111_123_456_789, 1_222_222_222_987_654_321))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_111_111_111_123_456_789, 1_222_222_222_987_654_321)
    ctime = st.st_ctime_ns
    os.chmod(path, 0o600)
    assert os.stat(path).st_ctime_ns >= ctime
    os.utime(path)  # now
    assert os.stat(path).st_mtime_ns > 1_222_222_222_987_654_321


@pytest.mark.slow
def test_mtime_after_write_and_utime_before_close(mounted_fs):
    path = mounted_fs / "f"
    with open(path, "wb") as fh:
        fh.write(b"data")
        fh.flush()
        os.utime(path, ns=(5_000_000_000, 5_000_000_000))  # like cp -p / rsync, before close
    assert os.stat(path).st_mtime_ns == 5_000_000_000
    mounted_fs.remount()
    assert os.stat(path).st_mtime_ns == 5_000_000_000 and read(path) == b"data"


def test_setgid_directory_inheritance(mounted_fs):
    d = mounted_fs / "shared"
    os.mkdir(d)
    os.chown(d, 0, 4321)
    os.chmod(d, 0o2775)
    write(d / "f", b"")
    os.mkdir(d / "sub")
    assert os.stat(d / "f").st_gid == 4321 and os.stat(d / "sub").st_gid == 4321
    assert os.stat(d / "sub").st_mode & stat.S_ISGID


def test_new_files_get_umask_applied(mounted_fs):
    old = os.umask(0o027)
    try:
        os.mkdir(mounted_fs / "d", 0o777)
        fd = os.open(mounted_fs / "f", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(mounted_fs / "d").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(mounted_fs / "f").st_mode) == 0o640


def test_statfs_reports_real_numbers(mounted_fs):
    for i in range(5):
        write(mounted_fs / f"f{i}", b"x")
    vfs = os.statvfs(mounted_fs.mountpoint)
    assert vfs.f_blocks > 0 and 0 < vfs.f_bavail <= vfs.f_bfree <= vfs.f_blocks
    assert vfs.f_files - vfs.f_ffree == 6  # root and five files
    assert shutil.disk_usage(mounted_fs.mountpoint).total > 0


# -- extended attributes and ACLs ----------------------------------------------------------------


def test_xattrs_in_all_namespaces(mounted_fs):
    path = mounted_fs / "f"
    write(path, b"")
    assert oserror(os.getxattr, path, "user.missing") == errno.ENODATA
    assert oserror(os.removexattr, path, "user.missing") == errno.ENODATA
    os.setxattr(path, "user.a", b"1")
    os.setxattr(path, "trusted.t", b"\0\xff")
    os.setxattr(path, "security.s", b"sec")
    assert sorted(os.listxattr(path)) == ["security.s", "trusted.t", "user.a"]
    assert os.getxattr(path, "trusted.t") == b"\0\xff"
    assert oserror(os.setxattr, path, "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert oserror(os.setxattr, path, "user.b", b"2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(path, "user.a", b"2", os.XATTR_REPLACE)
    os.setxattr(path, "user.big", b"v" * 65536)
    assert os.getxattr(path, "user.a") == b"2" and len(os.getxattr(path, "user.big")) == 65536
    os.removexattr(path, "user.a")
    assert "user.a" not in os.listxattr(path)
    os.symlink("f", mounted_fs / "link")
    os.setxattr(mounted_fs / "link", "trusted.l", b"on the link", follow_symlinks=False)
    assert os.getxattr(mounted_fs / "link", "trusted.l", follow_symlinks=False) == b"on the link"
    assert "trusted.l" not in os.listxattr(path)


def test_acl_round_trip(mounted_fs):
    path, d = mounted_fs / "f", mounted_fs / "d"
    write(path, b"")
    os.mkdir(d)
    subprocess.run(["setfacl", "-m", "u:nobody:rw,g:adm:r", str(path)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rx", str(d)], check=True)
    out = subprocess.run(["getfacl", "-cp", str(path)], check=True, capture_output=True, text=True).stdout
    assert "user:nobody:rw-" in out and "group:adm:r--" in out and "mask::rw-" in out
    out = subprocess.run(["getfacl", "-cp", str(d)], check=True, capture_output=True, text=True).stdout
    assert "default:user:nobody:r-x" in out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664  # group bits show the mask
    os.chmod(path, 0o640)
    out = subprocess.run(["getfacl", "-cp", str(path)], check=True, capture_output=True, text=True).stdout
    assert "mask::r--" in out and "user:nobody:rw-\t#effective:r--" in out
    write(d / "inherits", b"")
    out = subprocess.run(["getfacl", "-cp", str(d / "inherits")], check=True, capture_output=True,
                         text=True).stdout
    assert "user:nobody:r-x\t#effective:r--" in out
    subprocess.run(["setfacl", "-b", str(path)], check=True)
    out = subprocess.run(["getfacl", "-cp", str(path)], check=True, capture_output=True, text=True).stdout
    assert "nobody" not in out


# -- open files ------------------------------------------------------------------------------------


def test_unlinked_open_file_stays_usable_until_closed(mounted_fs):
    path = mounted_fs / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"x" * 100_000)
    os.fsync(fd)
    other = os.open(path, os.O_RDONLY)
    os.unlink(path)
    assert not path.exists() and os.fstat(fd).st_nlink == 0
    os.pwrite(fd, b"still writable", 100_000)
    assert os.pread(other, 14, 100_000) == b"still writable"
    os.close(other)
    os.close(fd)
    assert wait_until(lambda: mounted_fs.stats()["logical_bytes"] == 0, timeout=10), \
        "the contents of an unlinked file were not released after its last close"


def test_concurrent_handles_see_each_others_writes(mounted_fs):
    path = mounted_fs / "f"
    with open(path, "wb") as w, open(path, "rb") as r:
        w.write(b"first")
        w.flush()
        assert r.read() == b"first"
        assert os.stat(path).st_size == 5


def test_fsync_and_fdatasync(mounted_fs):
    fd = os.open(mounted_fs / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(mounted_fs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert read(mounted_fs / "f") == b"durable"


# -- directories under change ---------------------------------------------------------------------


@pytest.mark.slow
def test_readdir_while_creating_and_removing(mounted_fs):
    d = mounted_fs / "d"
    os.mkdir(d)
    total = 3000
    for i in range(total):
        os.mknod(d / f"f{i:05d}", stat.S_IFREG | 0o644)
    seen, removed = [], set()
    with os.scandir(d) as it:
        for n, entry in enumerate(it):
            seen.append(entry.name)
            if n % 10 == 0:  # remove one entry from the end, add one
                victim = f"f{total - 1 - n // 10:05d}"
                if victim not in seen:
                    os.unlink(d / victim)
                    removed.add(victim)
                os.mknod(d / f"new{n:05d}", stat.S_IFREG | 0o644)
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    survivors = {f"f{i:05d}" for i in range(total)} - removed
    assert survivors <= set(seen), f"skipped: {sorted(survivors - set(seen))[:5]}"


@pytest.mark.slow
def test_rm_rf_of_ten_thousand_entries(mounted_fs):
    d = mounted_fs / "big"
    os.mkdir(d)
    for i in range(10_000):
        os.mknod(d / f"entry-{i:05d}", stat.S_IFREG | 0o644)
    assert len(os.listdir(d)) == 10_000
    subprocess.run(["rm", "-rf", str(d)], check=True)
    assert not d.exists() and os.listdir(mounted_fs.mountpoint) == []
    assert os.statvfs(mounted_fs.mountpoint).f_files - os.statvfs(mounted_fs.mountpoint).f_ffree < 50


# -- persistence ------------------------------------------------------------------------------------


def test_everything_persists_across_remount(mounted_fs):
    m = mounted_fs.mountpoint
    os.makedirs(m / "a" / "b")
    data = os.urandom(1_500_000)
    write(m / "a" / "b" / "file", data)
    os.link(m / "a" / "b" / "file", m / "hard")
    os.symlink("a/b/file", m / "sym")
    os.mkfifo(m / "fifo")
    os.setxattr(m / "a", "user.k", b"v")
    os.utime(m / "hard", ns=(1, 2))
    os.chmod(m / "a", 0o711)
    before = {p: os.lstat(m / p) for p in ("a", "a/b", "a/b/file", "hard", "sym", "fifo")}
    mounted_fs.remount()
    for p, st in before.items():
        now = os.lstat(m / p)
        for field in ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns"):
            assert getattr(now, field) == getattr(st, field), (p, field)
    assert hashlib.sha256(read(m / "hard")).digest() == hashlib.sha256(data).digest()
    assert os.readlink(m / "sym") == "a/b/file" and os.getxattr(m / "a", "user.k") == b"v"
    write(m / "new", b"")
    assert os.stat(m / "new").st_ino > max(st.st_ino for st in before.values())


def test_read_only_mount_refuses_writes(mounted_fs):
    write(mounted_fs / "f", b"kept")
    mounted_fs.remount("ro")
    assert read(mounted_fs / "f") == b"kept"
    assert oserror(open, mounted_fs / "g", "wb") == errno.EROFS
    assert oserror(os.mkdir, mounted_fs / "d") == errno.EROFS
    assert oserror(os.unlink, mounted_fs / "f") == errno.EROFS


# -- permissions as an unprivileged user -------------------------------------------------------------

NOBODY_SCRIPT = textwrap.dedent("""
    import errno, json, os, sys
    os.chdir(sys.argv[1])  # the mount's parents are private to root: enter first, then drop privileges
    os.setgroups([])
    os.setgid(%(id)d)
    os.setuid(%(id)d)
    results = {}
    def attempt(name, fn, *args):
        try:
            fn(*args)
            results[name] = 0
        except OSError as exc:
            results[name] = exc.errno
    attempt("read_private", lambda: open("private").read())
    attempt("write_readonly", lambda: open("public", "a"))
    attempt("read_public", lambda: open("public").read())
    attempt("create_in_rootdir", lambda: open("rootdir/new", "w"))
    attempt("chmod_not_owner", os.chmod, "public", 0o777)
    attempt("chown_to_self", os.chown, "public", %(id)d, %(id)d)
    attempt("utime_not_owner", os.utime, "public", (1, 1))
    attempt("create_in_sticky", lambda: open("sticky/mine", "w").close())
    attempt("unlink_other_in_sticky", os.unlink, "sticky/roots")
    attempt("unlink_own_in_sticky", os.unlink, "sticky/mine")
    attempt("setxattr_trusted", os.setxattr, "sticky", "trusted.x", b"1")
    attempt("mkdir_in_rootdir", os.mkdir, "rootdir/sub")
    attempt("read_acl_granted", lambda: open("granted").read())
    attempt("write_acl_granted", lambda: open("granted", "a").close())
    print(json.dumps(results))
""")


def test_permissions_for_an_unprivileged_user(mount_factory):
    fs = mount_factory(options=["allow_other"])
    m = fs.mountpoint
    write(m / "private", b"secret")
    os.chmod(m / "private", 0o600)
    write(m / "public", b"hello")
    os.chmod(m / "public", 0o644)
    os.mkdir(m / "rootdir", 0o755)
    os.mkdir(m / "sticky")
    os.chmod(m / "sticky", 0o1777)
    write(m / "sticky" / "roots", b"")
    os.chmod(m / "sticky" / "roots", 0o666)
    write(m / "granted", b"via ACL")
    os.chmod(m / "granted", 0o600)
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(m / "granted")], check=True)
    script = NOBODY_SCRIPT % {"id": NOBODY}
    out = subprocess.run([sys.executable, "-c", script, str(m)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {
        "read_private": errno.EACCES, "write_readonly": errno.EACCES, "read_public": 0,
        "create_in_rootdir": errno.EACCES, "chmod_not_owner": errno.EPERM, "chown_to_self": errno.EPERM,
        "utime_not_owner": errno.EPERM, "create_in_sticky": 0, "unlink_other_in_sticky": errno.EPERM,
        "unlink_own_in_sticky": 0, "setxattr_trusted": errno.EPERM, "mkdir_in_rootdir": errno.EACCES,
        "read_acl_granted": 0, "write_acl_granted": errno.EACCES,
    }
    assert os.stat(m / "sticky").st_nlink == 2 and os.listdir(m / "sticky") == ["roots"]


def test_unlinked_file_reopened_through_proc(mounted_fs):
    path = mounted_fs / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"kept alive")
    os.unlink(path)
    again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    assert os.read(again, 100) == b"kept alive"
    os.close(again)
    assert wait_until(lambda: mounted_fs.stats()["files"] == 0, timeout=10)
