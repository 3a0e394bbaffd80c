"""chunkfs clone, snapshot, rmtree and du on a real mount, through the command line and the daemon's control
socket: full tree comparisons, independence, immutability through system calls, permission refusals for an
unprivileged user, kill -9 in the middle of a clone, and du's unique bytes against what deleting frees."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pwd  # noqa: F401 (imported before a child drops to nobody, who cannot read the stdlib under /root)
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import chunkfs.control  # noqa: F401 (as pwd above)
from chunkfs import cli
from chunkfs.fs import ROOT_INO, Caller, FsCore
from chunkfs.fs import acl
from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore
from conftest import CLI, MountedFS, assert_one_line_error, cli_env, force_unmount, fuse_available, run_cli, wait_until

pytestmark = pytest.mark.mount

NOBODY = 65534


# -- comparing trees ---------------------------------------------------------------------------------------


def metadata(root: Path) -> tuple[dict, set]:
    """Per path: type, mode, owner, size, times, device, xattrs, symlink target; and the hard-link groups."""
    out, by_ino = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""] if dirpath == str(root) else [*dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                        st.st_mtime_ns, st.st_atime_ns, st.st_rdev, xattrs,
                        os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                        st.st_nlink if stat.S_ISDIR(st.st_mode) else None)
            if not stat.S_ISDIR(st.st_mode):
                by_ino.setdefault(st.st_ino, set()).add(rel)
    return out, {frozenset(group) for group in by_ino.values() if len(group) > 1}


def contents(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    meta_a, groups_a = metadata(a)
    meta_b, groups_b = metadata(b)  # times first: reading the contents updates atimes
    assert meta_a.keys() == meta_b.keys()
    for rel in meta_a:
        assert meta_a[rel] == meta_b[rel], rel
    assert groups_a == groups_b
    assert contents(a) == contents(b)


def build_tree(top: Path, outside: Path) -> None:
    """Every kind of inode, owner, mode, time, xattr and ACL cp -a keeps, and hard links in and out."""
    (top / "dir" / "deep").mkdir(parents=True)
    (top / "big").write_bytes(os.urandom(3 << 20))
    (top / "dir" / "copy-of-big").write_bytes((top / "big").read_bytes())  # dedup within
    (top / "empty").write_bytes(b"")
    with open(top / "sparse", "wb") as fh:
        fh.truncate(50 << 20)
        fh.seek(40 << 20)
        fh.write(b"tail")
    (top / "dir" / "deep" / "small").write_text("small file\n")
    os.link(top / "big", top / "dir" / "big-link")  # a hard link group inside the tree
    (outside).write_bytes(b"linked from outside too")
    os.link(outside, top / "dir" / "shared-link")  # its other name is outside the tree
    os.symlink("../big", top / "dir" / "symlink")
    os.symlink("/nowhere", top / "dangling")
    os.mkfifo(top / "fifo", 0o640)
    os.mknod(top / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(top / "dir" / "deep" / "small", 0o4711)
    os.chmod(top / "dir" / "deep", 0o1777)
    os.chown(top / "dir" / "deep" / "small", 1234, 5678)
    os.chown(top / "dir" / "symlink", 4321, 8765, follow_symlinks=False)
    os.setxattr(top / "big", "user.colour", b"blue")
    os.setxattr(top / "dir", "trusted.note", b"root only")
    entries = [acl.AclEntry(acl.USER_OBJ, 6), acl.AclEntry(acl.USER, 4, 1000), acl.AclEntry(acl.GROUP_OBJ, 4),
               acl.AclEntry(acl.MASK, 4), acl.AclEntry(acl.OTHER, 0)]
    os.setxattr(top / "empty", acl.ACCESS.decode(), acl.encode(entries))
    os.setxattr(top / "dir", acl.DEFAULT.decode(), acl.encode(entries))
    for i, path in enumerate(sorted(top.rglob("*"), reverse=True)):  # deepest first: setting times of a
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i),  # file keeps
                 follow_symlinks=False)  # its directory's
    os.utime(top, ns=(1_600_000_000_000_000_007, 1_500_000_000_000_000_007))


def fsck_clean(fs: MountedFS) -> None:
    """fsck finds no damage (refcounts exact), and no notice either once the kernel has forgotten the inodes
    of removed trees (it may hold a removed directory a moment longer: a notice on a mounted store)."""
    reports = []

    def clean() -> bool:
        result = run_cli("fsck", "--json", fs.store, check=False)
        reports.append(json.loads(result.stdout))
        assert result.returncode == 0 and reports[-1]["status"] == "clean", result.stdout
        return not reports[-1]["findings"]

    assert wait_until(clean, timeout=20, interval=0.5), json.dumps(reports[-1], indent=2)


def stats_json(fs: MountedFS) -> dict:
    return json.loads(run_cli("stats", "--json", fs.mountpoint).stdout)


# -- clone -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_clone_equals_its_source_and_costs_no_data(mounted_fs):
    fs = mounted_fs
    build_tree(fs / "src", fs / "outside")
    before = stats_json(fs)
    result = run_cli("clone", fs / "src", fs / "copy")
    assert result.stdout.startswith(f"cloned {fs / 'src'} to {fs / 'copy'}: 6 files, 3 directories, 4 other, "
                                    "1 hard links, 56.0 MiB without copying data")
    after = stats_json(fs)
    assert after["stored_bytes"] == before["stored_bytes"]
    assert after["logical_bytes"] > before["logical_bytes"] + (53 << 20)
    assert_same_tree(fs / "src", fs / "copy")
    assert os.stat(fs / "copy" / "dir" / "shared-link").st_nlink == 1  # its outside name is not in the copy
    assert os.getxattr(fs / "copy" / "dir", "trusted.note") == b"root only"
    fsck_clean(fs)


@pytest.mark.slow
def test_clone_into_a_directory_and_refusals_are_one_line(mounted_fs, mount_factory, tmp_path):
    fs = mounted_fs
    (fs / "file").write_bytes(b"data")
    (fs / "dir").mkdir()
    run_cli("clone", fs / "file", fs / "dir")  # into it, under the source's name, as cp does
    assert (fs / "dir" / "file").read_bytes() == b"data"
    err = assert_one_line_error(run_cli("clone", fs / "file", fs / "dir", check=False), contains="File exists")
    assert str(fs / "dir" / "file") in err
    assert_one_line_error(run_cli("clone", fs / "absent", fs / "x", check=False),
                          contains=f"{fs / 'absent'}: No such file or directory")
    assert_one_line_error(run_cli("clone", fs / "file", fs / "absent" / "x", check=False),
                          contains="No such file or directory")
    assert_one_line_error(run_cli("clone", tmp_path, fs / "x", check=False), contains="not on a mounted chunkfs")
    other = mount_factory("other")
    assert_one_line_error(run_cli("clone", fs / "file", other / "x", check=False), contains="same chunkfs mount")
    assert_one_line_error(run_cli("rmtree", fs.mountpoint, check=False), contains="cannot remove the root")


@pytest.mark.slow
def test_a_clone_and_its_source_stay_independent(mounted_fs):
    fs = mounted_fs
    data = os.urandom(2 << 20)
    (fs / "a").mkdir()
    (fs / "a" / "f").write_bytes(data)
    run_cli("clone", fs / "a", fs / "b")
    with open(fs / "a" / "f", "r+b") as fh:  # overwrite in the middle, append, on the source
        fh.seek(1 << 20)
        fh.write(b"S" * 5000)
        fh.seek(0, 2)
        fh.write(b"appended")
    with open(fs / "b" / "f", "r+b") as fh:  # and truncate the copy
        fh.truncate(1000)
    (fs / "b" / "new").write_text("only in the copy")
    os.chmod(fs / "b", 0o700)
    expected_a = data[:1 << 20] + b"S" * 5000 + data[(1 << 20) + 5000:] + b"appended"
    for _ in range(2):
        assert (fs / "a" / "f").read_bytes() == expected_a
        assert (fs / "b" / "f").read_bytes() == data[:1000]
        assert not (fs / "a" / "new").exists() and stat.S_IMODE(os.stat(fs / "a").st_mode) == 0o755
        fs.remount()
    fsck_clean(fs)


@pytest.mark.slow
def test_a_file_being_written_is_cloned_as_of_its_last_commit(mounted_fs):
    fs = mounted_fs
    (fs / "log").write_bytes(b"first version\n")
    # The writer is another process: a descriptor of this one would be closed in every child it spawns (close
    # on exec), and each close of a descriptor of a FUSE file is a flush, which commits.
    writer = subprocess.Popen([sys.executable, "-c", "import sys\n"
                               f"f = open({str(fs / 'log')!r}, 'ab', buffering=0)\n"
                               "f.write(b'not committed until close\\n')\n"
                               "print('written', flush=True)\nsys.stdin.readline()\nf.close()\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "written\n"
        run_cli("clone", fs / "log", fs / "copy")
    finally:
        writer.communicate("\n", timeout=30)
    assert writer.returncode == 0
    assert (fs / "copy").read_bytes() == b"first version\n"
    assert (fs / "log").read_bytes() == b"first version\nnot committed until close\n"


# -- snapshots ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_snapshot_refuses_every_change(mounted_fs):
    fs = mounted_fs
    (fs / "data" / "sub").mkdir(parents=True)
    (fs / "data" / "file").write_bytes(b"kept as is")
    os.setxattr(fs / "data" / "file", "user.k", b"v")
    (fs / "elsewhere").write_text("x")
    result = run_cli("snapshot", fs / "data", "monday")
    assert "at " + str(fs / ".snapshots" / "monday") in result.stdout
    snap = fs / ".snapshots" / "monday"
    f = snap / "file"
    before = os.stat(f)
    changes = {
        "open for writing": lambda: open(f, "r+b"),
        "open to append": lambda: open(f, "ab"),
        "O_TRUNC": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "truncate": lambda: os.truncate(f, 0),
        "chmod": lambda: os.chmod(f, 0o777),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (1, 1)),
        "setxattr": lambda: os.setxattr(f, "user.k", b"w"),
        "removexattr": lambda: os.removexattr(f, "user.k"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(snap / "sub"),
        "mkdir": lambda: os.mkdir(snap / "new"),
        "create": lambda: open(snap / "sub" / "new", "wb"),
        "mknod": lambda: os.mkfifo(snap / "fifo"),
        "symlink": lambda: os.symlink("x", snap / "link"),
        "link into": lambda: os.link(fs / "elsewhere", snap / "link"),
        "link out": lambda: os.link(f, fs / "link"),
        "rename within": lambda: os.rename(f, snap / "moved"),
        "rename out": lambda: os.rename(f, fs / "moved"),
        "rename in": lambda: os.rename(fs / "elsewhere", snap / "sub" / "in"),
        "rename the snapshot": lambda: os.rename(snap, fs / ".snapshots" / "tuesday"),
        "remove the snapshot": lambda: shutil.rmtree(snap),
        "create in the snapshot directory": lambda: os.mkdir(fs / ".snapshots" / "mine"),
        "rename the snapshot directory": lambda: os.rename(fs / ".snapshots", fs / "snaps"),
    }
    for what, change in changes.items():
        with pytest.raises(OSError) as info:
            change()
        assert info.value.errno in (errno.EPERM, errno.EROFS), (what, info.value)
    assert f.read_bytes() == b"kept as is" and os.getxattr(f, "user.k") == b"v"
    after = os.stat(f)
    assert (after.st_mode, after.st_size, after.st_mtime_ns, after.st_atime_ns, after.st_nlink) == \
        (before.st_mode, before.st_size, before.st_mtime_ns, before.st_atime_ns, before.st_nlink)
    (fs / "data" / "file").write_bytes(b"changed at the source")
    assert f.read_bytes() == b"kept as is"
    listed = run_cli("snapshot", "--list", fs.mountpoint).stdout.split()
    assert listed[-3:] == ["root", "directory", "monday"]
    assert json.loads(run_cli("snapshot", "--list", "--json", fs / "data").stdout)[0]["name"] == "monday"
    run_cli("snapshot", "--delete", fs.mountpoint, "monday", "--wait")
    assert os.listdir(fs / ".snapshots") == []
    fsck_clean(fs)


# -- permissions for an unprivileged user ----------------------------------------------------------------


def as_user(uid: int, *argv) -> subprocess.CompletedProcess:
    """``chunkfs ARGV`` run by ``uid`` (its own group, no other): forked from this process, whose modules are
    loaded already (the venv's Python lives under /root, which that user cannot enter)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run the command line, never return to pytest
        code = 99
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.chdir("/")
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            code = cli.main([str(a) for a in argv])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with open(out_r, "rb") as out, open(err_r, "rb") as err:
        stdout, stderr = out.read().decode(), err.read().decode()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), stdout, stderr)


@pytest.fixture
def public_mount():
    """A mount with allow_other in a directory every user may traverse; ``make(options)``."""
    if not fuse_available():
        pytest.skip("/dev/fuse is absent")
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    root = Path(tempfile.mkdtemp(prefix="chunkfs-clone-", dir="/tmp"))
    root.chmod(0o755)
    made = []

    def make(options=("allow_other",), name="fs") -> MountedFS:
        fs = MountedFS(root, name, list(options), [])
        made.append(fs)
        fs.mount()
        return fs

    try:
        yield make
    finally:
        problems = [p for fs in made for p in fs.teardown()]
        shutil.rmtree(root, ignore_errors=True)
    assert not problems, problems


def test_an_unprivileged_user_may_do_only_what_the_kernel_would_let_them(public_mount):
    fs = public_mount()
    m = fs.mountpoint
    (m / "pub" / "closed").mkdir(parents=True)
    (m / "pub" / "readable").write_bytes(b"r" * 100_000)
    (m / "pub" / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(m / "pub" / "setuid", 0o4755)
    (m / "pub" / "closed" / "secret").write_text("root's")
    os.chmod(m / "pub" / "closed", 0o700)
    (m / "home").mkdir()
    os.chown(m / "home", NOBODY, NOBODY)

    def refused(argv, contains, code=1):
        result = as_user(NOBODY, *argv)
        assert_one_line_error(result, code, contains)

    refused(["clone", m / "pub", m / "home" / "pub"], f"{m / 'pub' / 'closed'}: Permission denied")
    refused(["clone", m / "pub" / "readable", m / "pub" / "mine"], f"{m / 'pub' / 'mine'}: Permission denied")
    refused(["du", m / "pub"], f"{m / 'pub' / 'closed'}: Permission denied")
    refused(["rmtree", m / "pub"], "Permission denied")
    assert not (m / "home" / "pub").exists() and (m / "pub" / "closed" / "secret").exists()

    done = as_user(NOBODY, "clone", m / "pub" / "setuid", m / "home" / "tool")
    assert done.returncode == 0, done.stderr
    st = os.stat(m / "home" / "tool")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o755)  # as cp -a by nobody
    os.chmod(m / "pub" / "closed", 0o755)
    assert as_user(NOBODY, "clone", m / "pub", m / "home" / "pub").returncode == 0
    assert (m / "home" / "pub" / "closed" / "secret").read_text() == "root's"
    assert as_user(NOBODY, "rmtree", "--wait", m / "home" / "pub").returncode == 0

    run_cli("snapshot", m / "pub", "roots")
    assert as_user(NOBODY, "snapshot", m / "home", "nobodys").returncode == 0
    refused(["snapshot", "--delete", m, "roots"], "only its owner or root")
    assert as_user(NOBODY, "snapshot", "--delete", m, "nobodys").returncode == 0
    assert [s["name"] for s in json.loads(as_user(NOBODY, "snapshot", "--list", "--json", m).stdout)] == ["roots"]
    fsck_clean(fs)


def test_without_allow_other_other_users_cannot_use_the_control_channel(public_mount):
    fs = public_mount(options=())
    (fs / "f").write_text("x")
    assert_one_line_error(as_user(NOBODY, "du", fs / "f"), contains="not open to other users")


# -- crash in the middle of a clone ---------------------------------------------------------------------


def populate(store_path: Path, dirs: int, files: int) -> None:
    """Many small files, made in-process before mounting (far faster than through the kernel)."""
    with ChunkStore.open(store_path) as store:
        core = FsCore(store)
        who = Caller(0, 0, 0)
        for d in range(dirs):
            directory = core.mkdir(ROOT_INO, b"d%03d" % d, 0o755, who).ino
            for i in range(files):
                fh, _ = core.create(directory, b"f%05d" % i, 0o644, os.O_WRONLY, who)
                core.write(fh, 0, b"%d/%d " % (d, i) * 20)
                core.flush(fh)
                core.release(fh)
        core.close()


def inode_count(store: ChunkStore) -> int:
    with store.read_txn() as txn:
        return store.fs_tables.counter(txn, "fs_inodes")


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_clone_leaves_no_clone(mount_factory):
    fs = mount_factory(mount=False)
    populate(fs.store, 40, 1000)
    fs.mount()
    with ChunkStore.open(fs.store, readonly=True) as watcher:
        start = inode_count(watcher)
        clone = subprocess.Popen(CLI + ["clone", str(fs.mountpoint), str(fs / "copy")], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=cli_env())
        assert wait_until(lambda: inode_count(watcher) > start + 1000 or clone.poll() is not None, timeout=60)
        os.kill(fs.pid, signal.SIGKILL)
        mid_clone = clone.poll() is None
        out, err = clone.communicate(timeout=30)
    fs.allow_daemon_death()
    assert mid_clone, "the clone finished before the daemon was killed: make the tree bigger"
    assert clone.returncode == 1 and "Traceback" not in err, err
    force_unmount(fs.mountpoint)
    fs.mount()
    assert not (fs / "copy").exists()
    assert wait_until(lambda: "deleted a detached tree" in fs.log_text(), timeout=60)
    assert stats_json(fs)["files"] == 40 * 1000
    fsck_clean(fs)
    run_cli("clone", fs / "d007", fs / "copy")  # and a clone after all that works
    assert_same_tree(fs / "d007", fs / "copy")


# -- rmtree --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rmtree_returns_at_once_and_the_space_comes_back(mount_factory):
    fs = mount_factory(mount=False)
    populate(fs.store, 10, 1000)
    fs.mount()
    (fs / "d000" / "big").write_bytes(os.urandom(8 << 20))
    stored = stats_json(fs)["stored_bytes"]
    started = time.monotonic()
    result = run_cli("rmtree", fs / "d000")
    assert "being freed in the background" in result.stdout or "is freed" in result.stdout
    assert not (fs / "d000").exists() and time.monotonic() - started < 30
    assert wait_until(lambda: stats_json(fs)["files"] == 9000, timeout=60)
    assert stats_json(fs)["stored_bytes"] <= stored - (8 << 20)
    fsck_clean(fs)
    # kill -9 while a tree is being deleted: the next mount goes on with it
    for d in range(2, 6):
        os.rename(fs / f"d{d:03d}", fs / "d001" / f"d{d:03d}")
    run_cli("rmtree", fs / "d001")
    os.kill(fs.pid, signal.SIGKILL)
    fs.allow_daemon_death()
    force_unmount(fs.mountpoint)
    fs.mount()
    assert not (fs / "d001").exists()
    assert wait_until(lambda: stats_json(fs)["files"] == 4000, timeout=60)
    fsck_clean(fs)


@pytest.mark.slow
def test_rmtree_of_a_file_with_another_name_keeps_that_name(mounted_fs):
    fs = mounted_fs
    (fs / "a").write_bytes(b"both names")
    os.link(fs / "a", fs / "b")
    assert os.stat(fs / "b").st_nlink == 2
    run_cli("rmtree", fs / "a")
    assert not (fs / "a").exists()
    assert os.stat(fs / "b").st_nlink == 1 and (fs / "b").read_bytes() == b"both names"
    fsck_clean(fs)


# -- du --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_du_unique_bytes_are_what_deleting_frees(mount_factory):
    fs = mount_factory()
    build_tree(fs / "tree", fs / "outside")
    (fs / "tree" / "unique").write_bytes(os.urandom(4 << 20))
    (fs / "other").write_bytes((fs / "tree" / "dir" / "deep" / "small").read_bytes() * 1000)  # shares little
    shutil.copyfile(fs / "tree" / "big", fs / "big-copy-outside")  # shares all of big
    run_cli("clone", fs / "tree" / "dir", fs / "dir-clone")  # shares the dir's files
    usage = {u["path"]: u for u in json.loads(run_cli("du", "--json", "-d", "1", fs / "tree").stdout)}
    top = usage[str(fs / "tree")]
    assert set(usage) == {str(fs / "tree"), str(fs / "tree" / "dir")}
    assert top["logical_bytes"] == (3 << 20) * 2 + (50 << 20) + (4 << 20) + len("small file\n") + \
        len("linked from outside too")
    assert top["shared_bytes"] >= 3 << 20 and top["unique_bytes"] >= 4 << 20
    assert top["unique_bytes"] + top["shared_bytes"] == top["stored_bytes"]
    text = run_cli("du", fs / "tree").stdout.splitlines()
    assert text[0].split() == ["logical", "stored", "unique", "shared", "path"] and text[1].endswith(str(fs / "tree"))
    fs.unmount()
    with ChunkStore.open(fs.store) as store:
        before = store.stats()
    packs_before = pack_bytes(fs.store)
    fs.mount()
    subprocess.run(["rm", "-rf", str(fs / "tree")], check=True)
    fs.unmount()  # every unlinked inode is purged by now
    with ChunkStore.open(fs.store) as store:
        store.gc(min_dead_fraction=0)
        after = store.stats()
        assert check_store(store).clean
    assert before["stored_bytes"] - after["stored_bytes"] == top["unique_bytes"]
    assert after["garbage_bytes"] == 0
    freed = packs_before - pack_bytes(fs.store)  # chunk bytes, record headers, block rounding
    assert top["unique_bytes"] - (64 << 10) <= freed <= top["unique_bytes"] * 1.02 + (256 << 10), (freed, top)


def pack_bytes(store: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in (store / "packs").iterdir())


# -- the control channel itself ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_of_a_clone_cancels_it(mount_factory):
    fs = mount_factory(mount=False)
    populate(fs.store, 30, 1000)
    fs.mount()
    with ChunkStore.open(fs.store, readonly=True) as watcher:
        start = inode_count(watcher)
        clone = subprocess.Popen(CLI + ["clone", str(fs.mountpoint), str(fs / "copy")], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=cli_env())
        assert wait_until(lambda: inode_count(watcher) > start or clone.poll() is not None, timeout=60)
        assert clone.poll() is None, "the clone finished before it could be interrupted: make the tree bigger"
        clone.send_signal(signal.SIGINT)
        out, err = clone.communicate(timeout=30)
        assert clone.returncode == 130 and err.strip() == "chunkfs: interrupted", (clone.returncode, err)
        assert wait_until(lambda: inode_count(watcher) == start, timeout=60)
    assert not (fs / "copy").exists()
    assert "clone by uid 0 refused: cancelled" in fs.log_text()
    fsck_clean(fs)


def test_the_control_socket_refuses_what_is_not_a_request(mounted_fs):
    import socket

    from chunkfs import control, mounts

    entry = mounts.chunkfs_mount_at(str(mounted_fs.mountpoint))
    path = control.socket_path(entry.store, 0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    for request in (b"not json\n", b'{"v": 99, "op": "du"}\n', b'{"v": 1, "op": "frobnicate"}\n'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            sock.sendall(request)
            answer = json.loads(control.read_line(sock))
        assert answer["ok"] is False and answer["errno"] in (errno.EPROTO, errno.EINVAL), answer
    mounted_fs.unmount()
    assert not os.path.exists(path)  # removed at unmount
