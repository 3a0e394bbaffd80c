"""Every verb, run by a user who lacks the rights it needs, says so: "permission denied", and where.

The unprivileged user is ``nobody`` (conftest.Nobody).  A store made by root
is 0700, so to nobody it must read as "permission denied (the store belongs
to root)", never as "not a chunkfs store"; a mount nobody may not make fails
with the reason libfuse or fusermount3 gave, on the user's terminal rather
than only in the daemon's log; and unmounting root's mount says whose it is.
"""

from __future__ import annotations

import os
import stat

import pytest

from conftest import (MountedFS, assert_one_line_error, fuse_available, is_mounted, kill_process, run_cli,
                      store_holder)


@pytest.fixture
def roots_store(public_dir):
    """A store made by root, holding one file, in a directory everyone may traverse."""
    store = public_dir / "store"
    run_cli("mkfs", store)
    run_cli("ingest", store, "report", "-", input="numbers\n")
    return store


STORE_VERBS = [
    ("stats", []), ("ls", []), ("cat", ["report"]), ("ingest", ["other", "/etc/hostname"]),
    ("rm", ["report"]), ("gc", []), ("mount", ["{public}/mnt"]),
]


@pytest.mark.parametrize(("verb", "extra"), STORE_VERBS, ids=[v for v, _ in STORE_VERBS])
def test_a_verb_on_someone_elses_store_says_permission_denied(nobody, roots_store, public_dir, verb, extra):
    (public_dir / "mnt").mkdir()
    args = [a.format(public=public_dir) for a in extra]
    line = assert_one_line_error(nobody.cli(verb, roots_store, *args), contains="permission denied")
    assert str(roots_store) in line and "belongs to root" in line, line
    assert "not a chunkfs store" not in line


def test_fsck_of_someone_elses_store_says_permission_denied(nobody, roots_store):
    line = assert_one_line_error(nobody.cli("fsck", roots_store), code=8, contains="permission denied")
    assert str(roots_store) in line, line


def test_a_store_under_a_closed_directory_says_permission_denied(nobody, tmp_path):
    store = tmp_path / "store"  # tmp_path's parents are private to root
    run_cli("mkfs", store)
    line = assert_one_line_error(nobody.cli("ls", store), contains="permission denied")
    assert str(store) in line and "no such directory" not in line


def test_mkfs_where_the_user_may_not_write_says_permission_denied(nobody, public_dir):
    line = assert_one_line_error(nobody.cli("mkfs", public_dir / "store"), contains="permission denied")
    assert str(public_dir / "store") in line
    assert not (public_dir / "store").exists()


def test_ingest_of_a_file_the_user_may_not_read_says_permission_denied(nobody, public_dir):
    home = nobody.mkdir(public_dir / "home")
    assert nobody.cli("mkfs", home / "store").returncode == 0
    secret = public_dir / "secret"
    secret.write_text("root's")
    secret.chmod(0o600)
    line = assert_one_line_error(nobody.cli("ingest", home / "store", "f", secret), contains="permission denied")
    assert str(secret) in line


# -- mounting and unmounting ---------------------------------------------------------------------


def _own_store_and_mountpoint(nobody, public_dir):
    home = nobody.mkdir(public_dir / "home")
    result = nobody.cli("mkfs", home / "store")
    assert result.returncode == 0, result.stderr
    return home / "store", nobody.mkdir(home / "mnt")


@pytest.mark.mount
def test_mount_without_access_to_dev_fuse_says_why(nobody, public_dir):
    if not fuse_available() or os.stat("/dev/fuse").st_mode & stat.S_IROTH:
        pytest.skip("needs a /dev/fuse that other users may not open")
    store, mnt = _own_store_and_mountpoint(nobody, public_dir)
    line = assert_one_line_error(nobody.cli("mount", store, mnt), contains="/dev/fuse: Permission denied")
    assert "see the libfuse message" not in line
    assert not is_mounted(mnt) and store_holder(store) is None


@pytest.mark.mount
def test_a_mount_fusermount3_refuses_says_why(nobody, public_dir):
    """allow_other is root's to grant (user_allow_other): fusermount3's reason reaches the terminal."""
    if not fuse_available():
        pytest.skip("/dev/fuse is absent")
    with open("/etc/fuse.conf") as fh:
        if any(line.strip() == "user_allow_other" for line in fh):
            pytest.skip("/etc/fuse.conf allows allow_other to every user")
    store, mnt = _own_store_and_mountpoint(nobody, public_dir)
    result = nobody.cli("mount", "-o", "allow_other", store, mnt, fuse_for_everyone=True)
    line = assert_one_line_error(result, contains="user_allow_other")
    assert line.startswith(f"chunkfs: cannot mount on {mnt}: fusermount3: ")
    assert store_holder(store) is None


@pytest.mark.slow
@pytest.mark.mount
def test_a_user_mounts_and_unmounts_where_fuse_is_open_to_users(nobody, public_dir):
    store, mnt = _own_store_and_mountpoint(nobody, public_dir)
    script = ('set -e; chunkfs() { "$0" -m chunkfs.cli "$@"; }; '
              'chunkfs mount "$1" "$2"; echo hello > "$2/greeting"; findmnt -n -o FSTYPE "$2"; chunkfs umount -q "$2"; '
              'chunkfs mount "$1" "$2"; cat "$2/greeting"; chunkfs umount -q "$2"')
    try:
        result = nobody.run("bash", "-c", script, nobody.python, store, mnt, fuse_for_everyone=True)
    finally:
        kill_process(store_holder(store))  # the daemon of a failed run would keep its namespace alive
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["fuse.chunkfs", "hello"]
    log = (store / "chunkfs.log").read_text()
    assert "ERROR" not in log and "Traceback" not in log, log


@pytest.fixture
def roots_mount(public_dir):
    """Root's chunkfs mount, on a mountpoint everyone may traverse."""
    if not fuse_available():
        pytest.skip("/dev/fuse is absent")
    fs = MountedFS(public_dir, "roots", [], [])
    fs.mount()
    yield fs
    problems = fs.teardown()
    assert not problems, problems


@pytest.mark.mount
def test_umount_of_someone_elses_mount_says_permission_denied(nobody, roots_mount):
    mnt = roots_mount.mountpoint
    line = assert_one_line_error(nobody.cli("umount", mnt), contains="permission denied")
    assert line == f"chunkfs: cannot unmount {mnt}: permission denied (mounted by another user, root)"
    assert roots_mount.mounted


@pytest.mark.mount
def test_stats_of_someone_elses_mount_says_permission_denied(nobody, roots_mount):
    line = assert_one_line_error(nobody.cli("stats", roots_mount.mountpoint), contains="permission denied")
    assert str(roots_mount.store) in line
