"""Chunking behind the writer (``-o chunking=behind``, chunkfs/fs/behind.py) through a real mount.

fsync then kill -9, close then kill -9, an unmount right after close, a clone
and ``chunkfs sync`` right after close, SQLite and rsync on the mount, a store
whose packs are in SeaweedFS (kill after fsync; the bucket alone has a file
chunked after its close), and the SIGKILL rounds of the crash test
(test_crash.py) with this mode on.  The fs
core's side is in test_chunking_behind.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

MiB = 1024 * 1024


# -- mounted ----------------------------------------------------------------------------------------


@pytest.fixture
def behind_fs(mount_factory):
    return mount_factory(options=["chunking=behind"])


@pytest.mark.mount
@pytest.mark.parametrize("durable", ["fsync", "close"])
def test_kill_9_after_fsync_or_close_loses_nothing(behind_fs, durable):
    data = random.Random(3).randbytes(5 * MiB + 123)
    fd = os.open(behind_fs / "f", os.O_CREAT | os.O_WRONLY, 0o640)
    os.write(fd, data)
    if durable == "fsync":
        os.fsync(fd)
        held = fd
    else:
        os.close(fd)
        held = None
    behind_fs.kill()
    if held is not None:
        try:
            os.close(held)
        except OSError:
            pass
    behind_fs.mount()
    assert (behind_fs / "f").read_bytes() == data
    assert os.stat(behind_fs / "f").st_mode & 0o777 == 0o640
    log = behind_fs.log_text()
    assert "committed the staged writes of 1 closed or fsync'ed file(s)" in log, log[-2000:]
    assert behind_fs.stats()["logical_bytes"] == len(data)


@pytest.mark.mount
def test_unmount_right_after_close_commits_everything(behind_fs):
    data = os.urandom(4 * MiB)
    (behind_fs / "f").write_bytes(data)
    behind_fs.unmount()
    behind_fs.mount()  # the default mode
    assert (behind_fs / "f").read_bytes() == data
    assert os.listdir(behind_fs.store / "staging") == []
    assert behind_fs.stats()["logical_bytes"] == len(data)
    assert "recovered" not in behind_fs.log_text()


@pytest.mark.mount
def test_clone_and_sync_right_after_close_see_the_new_contents(behind_fs):
    data = os.urandom(3 * MiB)
    (behind_fs / "f").write_bytes(data)
    run_cli("clone", behind_fs / "f", behind_fs / "copy")
    assert (behind_fs / "copy").read_bytes() == data
    (behind_fs / "g").write_bytes(data[::-1])
    run_cli("sync", behind_fs.mountpoint)
    stats = behind_fs.stats()
    assert stats["logical_bytes"] == 3 * len(data)
    assert stats["stored_bytes"] <= 2 * len(data) + MiB  # the clone shares its chunks


@pytest.mark.mount
def test_sqlite_and_rsync_on_a_behind_mount(behind_fs, tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks.apps import sqlite  # noqa: PLC0415

    result = sqlite(str(behind_fs.mountpoint), seed=1)  # checks row counts and PRAGMA integrity_check
    assert result["seconds"] > 0
    tree = tmp_path / "tree"
    rng = random.Random(9)
    for i in range(12):
        (tree / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 3}" / f"f{i}").write_bytes(rng.randbytes(rng.choice((1000, 300_000, 2 * MiB))))
    for _ in range(2):  # the second copy finds every file in place
        subprocess.run(["rsync", "-a", f"{tree}/", f"{behind_fs / 'copy'}/"], check=True, timeout=120)
    behind_fs.remount("chunking=behind")
    for path in tree.rglob("f*"):
        copy = behind_fs / "copy" / path.relative_to(tree)
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest(), copy


@pytest.mark.mount
@pytest.mark.slow
def test_sigkill_rounds_with_chunking_behind(tmp_path, capsys):
    """The crash test's rounds (test_crash.py) on a mount that chunks behind the writer."""
    sys.path.insert(0, str(REPO))
    from benchmarks.crash_soak import CrashRig  # noqa: PLC0415

    rounds = int(os.environ.get("CHUNKFS_CRASH_ROUNDS_BEHIND", "12"))
    rig = CrashRig(str(tmp_path), seed=int(os.environ.get("CHUNKFS_CRASH_SEED", "20250101")), max_kill_delay=0.6,
                   log=lambda line: None, mount_options="chunking=behind")
    try:
        summary = rig.run(rounds)
    finally:
        rig.cleanup()
        with capsys.disabled():
            print("\n" + rig.summary.line())
    assert len(summary.rounds) == rounds


@pytest.mark.mount
def test_staged_files_reach_the_bucket_of_a_store_in_an_object_store(seaweed, bucket_url, mount_factory, tmp_path):
    """With the packs in SeaweedFS: a kill after fsync loses nothing, and `chunkfs sync` uploads what was staged."""
    fs = mount_factory(options=["chunking=behind"], mkfs_args=["--data", bucket_url, "--endpoint", seaweed.endpoint])
    fsynced, closed = os.urandom(3 * MiB), os.urandom(20 * MiB)
    fd = os.open(fs / "fsynced", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, fsynced)
    os.fsync(fd)
    fs.kill()
    try:
        os.close(fd)
    except OSError:  # ENOTCONN: the daemon is gone
        pass
    fs.mount()
    assert (fs / "fsynced").read_bytes() == fsynced
    (fs / "closed").write_bytes(closed)
    run_cli("sync", fs.mountpoint)
    assert fs.stats()["object_store"]["upload_backlog_packs"] == 0
    restored, mnt = tmp_path / "restored", tmp_path / "restored-mnt"
    run_cli("restore", restored, "--data", bucket_url, "--endpoint", seaweed.endpoint, "--replica")
    mnt.mkdir()
    run_cli("mount", restored, mnt, "-o", "ro")
    try:
        assert (mnt / "closed").read_bytes() == closed, "the bucket alone has the file chunked after its close"
        assert (mnt / "fsynced").read_bytes() == fsynced
    finally:
        run_cli("umount", mnt)
