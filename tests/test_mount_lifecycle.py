"""Mount and unmount as users do it: background daemon, foreground, signals, bad input, mount(8), fstab.

Every unmount here is checked the way the brief demands after S3QL's hang: the
daemon process must actually exit, not just log that it is done.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import (CLI, FUSE_SKIP_REASON, REPO, assert_one_line_error, cli_env, fuse_available, is_mounted,
                      mount_entry, process_gone, run_cli, store_holder, wait_process_gone, wait_until)

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not fuse_available(), reason=FUSE_SKIP_REASON)]


def read_back(fs, name: str) -> bytes:
    return (fs / name).read_bytes()


# -- the normal lifecycle ---------------------------------------------------------------------------


def test_background_mount_returns_when_ready(mount_factory):
    fs = mount_factory(mount=False)
    fs.mount()  # asserts the mount table already shows the mount when the command returns
    assert fs.pid != os.getpid() and not process_gone(fs.pid)
    assert os.listdir(fs.mountpoint) == []  # served at once, no retry needed
    (fs / "hello").write_text("hi")
    assert (fs / "hello").read_text() == "hi"


@pytest.mark.slow
def test_umount_waits_for_the_daemon_to_exit(mount_factory):
    fs = mount_factory()
    data = os.urandom(3 << 20)
    (fs / "big").write_bytes(data)
    pid = fs.pid
    fs.unmount()  # asserts: not mounted, daemon pid gone, store lock free, the moment umount returns
    assert process_gone(pid)
    fs.mount()
    assert read_back(fs, "big") == data


@pytest.mark.slow
def test_repeated_mount_cycles_always_exit(mount_factory):
    fs = mount_factory(mount=False)
    for i in range(4):
        fs.mount()
        (fs / f"f{i}").write_text(str(i))
        fs.unmount()
    fs.mount()
    assert sorted(os.listdir(fs.mountpoint)) == ["f0", "f1", "f2", "f3"]


@pytest.mark.slow
def test_foreground_mount_logs_to_stderr(mount_factory):
    fs = mount_factory(mount=False)
    proc = subprocess.Popen(CLI + ["mount", "-f", str(fs.store), str(fs.mountpoint)], cwd=REPO, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: is_mounted(fs.mountpoint) or proc.poll() is not None, 30)
        assert is_mounted(fs.mountpoint), proc.communicate()[1]
        assert store_holder(fs.store) == proc.pid  # served by the foreground process itself
        (fs / "f").write_text("foreground")
        run_cli("umount", fs.mountpoint)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "mounted" in err and "daemon done" in err
    assert "Traceback" not in err and " ERROR " not in err
    assert not fs.log.exists()  # -f logs to stderr, not to the store's log file
    fs.mount()
    assert read_back(fs, "f") == b"foreground"


@pytest.mark.slow
def test_foreground_mount_stops_on_ctrl_c(mount_factory):
    fs = mount_factory(mount=False)
    proc = subprocess.Popen(CLI + ["mount", "-f", str(fs.store), str(fs.mountpoint)], cwd=REPO, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: is_mounted(fs.mountpoint) or proc.poll() is not None, 30)
        (fs / "f").write_bytes(b"x" * 100_000)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not is_mounted(fs.mountpoint)
    fs.mount()
    assert read_back(fs, "f") == b"x" * 100_000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_unmounts_cleanly_with_data_committed(mount_factory, sig):
    fs = mount_factory()
    data = os.urandom(2 << 20)
    (fs / "closed").write_bytes(data)
    (fs / "dir").mkdir()
    os.symlink("closed", fs / "dir" / "link")
    pid = fs.pid
    os.kill(pid, sig)
    assert wait_process_gone(pid, 30), f"daemon did not exit after {sig.name}"
    assert not is_mounted(fs.mountpoint)
    assert store_holder(fs.store) is None
    fs.mount()
    assert read_back(fs, "closed") == data
    assert os.readlink(fs / "dir" / "link") == "closed"


@pytest.mark.slow
def test_sigterm_with_a_file_open_detaches_and_exits_at_last_close(mount_factory):
    fs = mount_factory()
    pid = fs.pid
    fs.expect_log()  # the busy detach is a WARNING, not an error
    with open(fs / "open", "wb") as fh:
        fh.write(b"a" * 100_000)
        fh.flush()
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not is_mounted(fs.mountpoint), 10), "busy mount was not detached"
        fh.write(b"b" * 100_000)  # the open file keeps working: no application sees an error
        fh.flush()
        assert not process_gone(pid), "daemon exited while a file was still open"
    assert wait_process_gone(pid, 30), "daemon did not exit after the last open file was closed"
    assert "detached it lazily" in fs.log_text()
    fs.mount()
    assert read_back(fs, "open") == b"a" * 100_000 + b"b" * 100_000


@pytest.fixture
def fusectl():
    """fusectl at /sys/fs/fuse/connections (systemd mounts it at boot; mount it here if missing)."""
    path = "/sys/fs/fuse/connections"
    mounted_here = False
    if mount_entry(path) is None:
        if os.geteuid() != 0:
            pytest.skip("fusectl is not mounted and mounting it needs root")
        subprocess.run(["mount", "-t", "fusectl", "none", path], check=True, capture_output=True)
        mounted_here = True
    yield path
    if mounted_here:
        subprocess.run(["umount", path], check=False, capture_output=True)


@pytest.mark.slow
def test_second_signal_stops_at_once_with_data_committed(mount_factory, fusectl):
    fs = mount_factory()
    pid = fs.pid
    fd = os.open(fs / "open", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"written before the signals")
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not is_mounted(fs.mountpoint), 10)
        os.kill(pid, signal.SIGTERM)
        assert wait_process_gone(pid, 30), "daemon did not stop on the second SIGTERM"
        with pytest.raises(OSError) as err:
            os.write(fd, b"too late")
        assert err.value.errno == errno.ENOTCONN
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    fs.mount()
    assert read_back(fs, "open") == b"written before the signals"


def test_umount_of_a_busy_mount_says_so(mount_factory):
    fs = mount_factory()
    (fs / "d").mkdir()
    sleeper = subprocess.Popen(["sleep", "60"], cwd=fs / "d")
    try:
        line = assert_one_line_error(run_cli("umount", fs.mountpoint, check=False), contains="busy")
        assert "fuser" in line
        assert is_mounted(fs.mountpoint) and not process_gone(fs.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    fs.unmount()


@pytest.mark.slow
def test_lazy_umount_exits_when_the_last_file_closes(mount_factory):
    fs = mount_factory()
    pid = fs.pid
    fh = open(fs / "f", "wb")  # noqa: SIM115 (held open across the unmount on purpose)
    try:
        fh.write(b"a" * 1000)
        proc = subprocess.Popen(CLI + ["umount", "--lazy", str(fs.mountpoint)], cwd=REPO, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_until(lambda: not is_mounted(fs.mountpoint), 10)
        fh.write(b"b" * 1000)  # the detached filesystem still serves its open files
        fh.flush()
        assert proc.poll() is None and not process_gone(pid)  # umount waits for the daemon
    finally:
        fh.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert process_gone(pid)
    fs.mount()
    assert read_back(fs, "f") == b"a" * 1000 + b"b" * 1000


@pytest.mark.slow
def test_umount_after_the_daemon_died(mount_factory):
    fs = mount_factory()
    fs.allow_daemon_death()
    (fs / "kept").write_text("committed before the crash")
    os.kill(fs.pid, signal.SIGKILL)
    assert wait_process_gone(fs.pid, 10)
    run_cli("umount", fs.mountpoint)  # a dead mount (ENOTCONN) still unmounts, with no daemon to wait for
    assert not is_mounted(fs.mountpoint)
    fs.mount()
    assert read_back(fs, "kept") == b"committed before the crash"


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_read_only_mount(mount_factory):
    fs = mount_factory()
    (fs / "f").write_text("data")
    fs.remount("ro")
    assert "ro" in _kernel_options(fs.mountpoint)
    assert read_back(fs, "f") == b"data"
    with pytest.raises(OSError) as err:
        (fs / "g").write_text("no")
    assert err.value.errno == 30  # EROFS


def test_log_options_and_store_options(mount_factory, tmp_path):
    log = tmp_path / "custom.log"
    fs = mount_factory(options=[f"log_file={log}", "log_level=debug", "cache_size=8M", "verify=sha256",
                                "noatime"])
    (fs / "f").write_text("x")
    assert "noatime" in _kernel_options(fs.mountpoint)
    fs.unmount()
    text = log.read_text()
    assert " DEBUG " in text and "daemon done" in text
    assert not fs.log.exists()


def test_default_permissions_and_fsname_in_mount_table(mounted_fs):
    assert "default_permissions" in _kernel_options(mounted_fs.mountpoint)
    assert mount_entry(mounted_fs.mountpoint) == ("fuse.chunkfs", str(mounted_fs.store))


@pytest.mark.slow
def test_store_path_with_spaces_commas_and_non_ascii(tmp_path):
    store, mnt = tmp_path / "my store, v2 % ü", tmp_path / "mnt dir ü"
    run_cli("mkfs", store)
    mnt.mkdir()
    run_cli("mount", store, mnt)
    try:
        assert mount_entry(mnt)[0] == "fuse.chunkfs"
        (mnt / "f").write_text("odd paths")
        stats = json.loads(run_cli("stats", "--json", mnt).stdout)
        assert stats["store"] == str(store) and stats["mountpoints"] == [str(mnt)]
        assert_one_line_error(run_cli("mount", store, tmp_path, check=False), contains="already mounted")
    finally:
        run_cli("umount", mnt)
    assert store_holder(store) is None
    assert "Traceback" not in (store / "chunkfs.log").read_text()


def _kernel_options(mountpoint) -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        fields = line.split()
        if fields[4] == str(mountpoint):
            sep = fields.index("-")
            return set(fields[5].split(",")) | set(fields[sep + 3].split(","))
    return set()


# -- bad input: one line, non-zero exit, nothing mounted, no daemon left ------------------------------


@pytest.fixture
def targets(tmp_path):
    store = tmp_path / "store"
    run_cli("mkfs", store)
    (tmp_path / "mnt").mkdir()
    return store, tmp_path / "mnt"


def assert_nothing_mounted(store, mountpoint):
    assert not is_mounted(mountpoint)
    assert store_holder(store) is None, "a daemon still holds the store"


def test_mount_not_a_store(tmp_path, targets):
    _, mnt = targets
    (tmp_path / "plain").mkdir()
    assert_one_line_error(run_cli("mount", tmp_path / "plain", mnt, check=False), contains="not a chunkfs store")
    assert not is_mounted(mnt)


def test_mount_store_already_mounted(mount_factory, tmp_path):
    fs = mount_factory()
    other = tmp_path / "other-mnt"
    other.mkdir()
    assert_one_line_error(run_cli("mount", fs.store, other, check=False), contains="already mounted")
    assert not is_mounted(other) and is_mounted(fs.mountpoint)


def test_mount_store_locked_by_another_process(targets):
    store, mnt = targets
    code = "import sys; from chunkfs import ChunkStore; s = ChunkStore.open(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], cwd=REPO, env=cli_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = assert_one_line_error(run_cli("mount", store, mnt, check=False), contains="in use")
        assert str(holder.pid) in line
        assert not is_mounted(mnt)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    # the failed attempt left the daemon's log behind, with the reason and no traceback
    assert "Traceback" not in (store / "chunkfs.log").read_text()


def test_mount_missing_mountpoint(tmp_path, targets):
    store, _ = targets
    assert_one_line_error(run_cli("mount", store, tmp_path / "absent", check=False), contains="does not exist")
    assert_nothing_mounted(store, tmp_path / "absent")


def test_mount_mountpoint_is_a_file(tmp_path, targets):
    store, _ = targets
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_cli("mount", store, tmp_path / "file", check=False), contains="not a directory")


@pytest.mark.slow
def test_mount_nonempty_mountpoint(targets):
    store, mnt = targets
    (mnt / "underneath").write_text("x")
    assert_one_line_error(run_cli("mount", store, mnt, check=False), contains="not empty")
    assert_nothing_mounted(store, mnt)
    run_cli("mount", store, mnt, "-o", "nonempty")
    try:
        assert is_mounted(mnt) and os.listdir(mnt) == []
    finally:
        run_cli("umount", mnt)
    assert (mnt / "underneath").read_text() == "x"


@pytest.mark.parametrize("where, contains", [
    (lambda store, tmp: store, "on itself"),
    (lambda store, tmp: store / "staging", "inside the store"),
    (lambda store, tmp: store / "meta", "inside the store"),
    (lambda store, tmp: tmp, "store"),  # the store lies inside the mountpoint: the mount would hide it
])
def test_mount_inside_the_store_is_refused(tmp_path, targets, where, contains):
    store, _ = targets
    mountpoint = where(store, tmp_path)
    for options in ([], ["-o", "nonempty"]):  # with nonempty, nothing else would stop it
        line = assert_one_line_error(run_cli("mount", store, mountpoint, *options, check=False), contains=contains)
        assert "not empty" not in line
        assert_nothing_mounted(store, mountpoint)


def test_mount_inside_the_store_through_a_symlink_is_refused(tmp_path, targets):
    store, _ = targets
    (tmp_path / "link").symlink_to(store / "staging")
    assert_one_line_error(run_cli("mount", store, tmp_path / "link", check=False), contains="inside the store")
    assert_nothing_mounted(store, store / "staging")


def test_mount_already_a_mountpoint(mount_factory, tmp_path):
    fs = mount_factory()
    store2 = tmp_path / "store2"
    run_cli("mkfs", store2)
    assert_one_line_error(run_cli("mount", store2, fs.mountpoint, check=False), contains="already a mountpoint")
    assert store_holder(store2) is None


@pytest.mark.parametrize("option, contains", [
    ("bogus", "unknown mount option 'bogus'"),
    ("log_level=loud", "log_level"),
    ("cache_size=big", "cache_size: not a size: 'big'"),
    ("cache_size=-5M", "cache_size: not a size: '-5M' (a size cannot be negative)"),
    ("verify=md5", "verify"),
    ("max_read=4096", "not supported"),
    ("nodefault_permissions", "not supported"),
    ("fsname=x", "fsname"),
    ("upload_interval=0", "upload_interval must be a number of seconds from 1 to 86400"),
    ("backlog_wait=soon", "backlog_wait must be a number of seconds from 0 to 3600"),
    ("request_timeout=0.1", "request_timeout must be a number of seconds from 0.5 to 3600"),
])
def test_mount_bad_option(targets, option, contains):
    store, mnt = targets
    assert_one_line_error(run_cli("mount", store, mnt, "-o", f"noatime,{option}", check=False), contains=contains)
    assert_nothing_mounted(store, mnt)


def test_mount_unwritable_log_file(tmp_path, targets):
    store, mnt = targets
    assert_one_line_error(run_cli("mount", store, mnt, "-o", f"log_file={tmp_path}/no/such/dir/x.log",
                                  check=False), contains="log file")
    assert_nothing_mounted(store, mnt)


# -- mount(8) and fstab ------------------------------------------------------------------------------


HELPER_LINKS = ("/sbin/mount.fuse.chunkfs", "/sbin/mount.chunkfs")


@pytest.fixture
def mount_helper(tmp_path):
    """Install mount.chunkfs for mount(8), which only looks in /sbin, and remove it afterwards."""
    if os.geteuid() != 0:
        pytest.skip("installing a mount(8) helper into /sbin needs root")
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not installed")
    for link in HELPER_LINKS:
        if os.path.lexists(link):
            pytest.skip(f"{link} already exists; not replacing an installed helper")
    wrapper = tmp_path / "mount.chunkfs"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} -m chunkfs.mount_helper "$@"
        """))
    wrapper.chmod(0o755)
    made = []
    try:
        for link in HELPER_LINKS:
            os.symlink(wrapper, link)
            made.append(link)
        yield wrapper
    finally:
        for link in made:
            os.unlink(link)


def _mount8(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize("fstype", ["fuse.chunkfs", "chunkfs"])
def test_mount_t_fuse_chunkfs(mount_helper, mount_factory, fstype):
    fs = mount_factory(mount=False)
    result = _mount8("-t", fstype, fs.store, fs.mountpoint, "-o", "defaults,noatime,_netdev,nofail")
    assert result.returncode == 0, result.stderr
    assert mount_entry(fs.mountpoint) == ("fuse.chunkfs", str(fs.store))
    assert "noatime" in _kernel_options(fs.mountpoint)
    fs.pid = store_holder(fs.store)
    (fs / "via-mount8").write_text("ok")
    fs.unmount()
    fs.mount()
    assert read_back(fs, "via-mount8") == b"ok"


def test_mount_t_reports_failure(mount_helper, targets):
    store, mnt = targets
    (mnt / "x").write_text("x")
    result = _mount8("-t", "fuse.chunkfs", store, mnt)
    assert result.returncode == 32
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert_nothing_mounted(store, mnt)


def test_fstab_line(mount_helper, mount_factory, tmp_path):
    fs = mount_factory(mount=False)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\n{fs.store} {fs.mountpoint} fuse.chunkfs "
                     "noauto,nofail,_netdev,x-systemd.requires=local-fs.target,log_level=info,ro 0 0\n")
    result = _mount8("-T", fstab, fs.mountpoint)
    assert result.returncode == 0, result.stderr
    assert mount_entry(fs.mountpoint) == ("fuse.chunkfs", str(fs.store))
    assert "ro" in _kernel_options(fs.mountpoint)
    fs.pid = store_holder(fs.store)
    fs.unmount()


@pytest.mark.slow
def test_umount8_unmounts_and_daemon_exits(mount_helper, mount_factory):
    fs = mount_factory()
    pid = fs.pid
    (fs / "f").write_text("umount(8)")
    result = subprocess.run(["umount", str(fs.mountpoint)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert wait_process_gone(pid, 30), "daemon did not exit after umount(8)"
    fs.mount()
    assert read_back(fs, "f") == b"umount(8)"


# -- the helper's own conventions (no mount needed) ---------------------------------------------------


def _helper(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chunkfs.mount_helper", *map(str, args)], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_helper_fake_and_verbose(targets):
    store, mnt = targets
    result = _helper(store, mnt, "-f", "-v", "-o", "rw,defaults,noauto,x-systemd.automount,noatime")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"mount.chunkfs: would mount {store} on {mnt} ")
    assert "noatime" in result.stdout and "ignoring" in result.stdout and "mounting" not in result.stdout
    assert not is_mounted(mnt)
    failed = _helper(store, tmp_path_absent(mnt), "-f", "-v")  # fake mode says nothing it would not do
    assert failed.returncode == 32 and failed.stdout == "" and "does not exist" in failed.stderr


def tmp_path_absent(mnt):
    return mnt.parent / "absent"


@pytest.mark.slow
def test_helper_sloppy_drops_unknown_options(targets):
    store, mnt = targets
    assert _helper(store, mnt, "-f", "-o", "whatever=1").returncode == 32
    assert _helper(store, mnt, "-f", "-s", "-o", "whatever=1").returncode == 0


def test_helper_usage_errors(targets):
    store, mnt = targets
    assert _helper(store).returncode == 1
    result = _helper(store, mnt, "-t", "ext4")
    assert result.returncode == 1 and "unsupported type" in result.stderr
