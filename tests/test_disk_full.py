"""A full disk: ENOSPC reaches the application, the mount survives, nothing committed is harmed.

The store lives on a small tmpfs and is mounted in daemon mode (the log goes
outside the tmpfs, so it can say what happened).  Needs root (mount -t tmpfs)
and /dev/fuse.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from chunkfs import mounts
from chunkfs.errors import StoreFullError
from chunkfs.fs import Caller, FsCore
from chunkfs.fs.namespace import ROOT_INO
from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore
from conftest import fuse_available, kill_process, process_gone, run_cli, wait_until

MiB = 1024 * 1024


class SmallDisk:
    """A store on a tmpfs of ``size`` bytes, mounted by ``chunkfs mount``."""

    def __init__(self, tmp_path: Path, size: str):
        self.disk, self.mnt, self.log = tmp_path / "disk", tmp_path / "mnt", tmp_path / "daemon.log"
        self.store = self.disk / "store"
        self.disk.mkdir()
        self.mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.disk)],
                       check=True)
        self.pid: int | None = None
        run_cli("mkfs", self.store)

    def mount(self) -> None:
        run_cli("mount", self.store, self.mnt, "-o", f"log_file={self.log}")
        self.pid = mounts.lock_holder(str(self.store))

    def unmount(self) -> None:
        run_cli("umount", self.mnt)
        assert process_gone(self.pid)
        self.pid = None

    def free_bytes(self) -> int:
        st = os.statvfs(self.disk)
        return st.f_bavail * st.f_frsize

    def check(self) -> None:
        with ChunkStore.open(self.store, readonly=True) as store:
            report = check_store(store)
        assert report.clean, report.findings

    def teardown(self) -> None:
        if mounts.mount_at(str(self.mnt)) is not None and self.pid and not process_gone(self.pid):
            run_cli("umount", self.mnt, "--timeout", "30", check=False)
        for flags in (["-u"], ["-uz"]):
            if mounts.mount_at(str(self.mnt)) is not None:
                subprocess.run(["fusermount3", *flags, str(self.mnt)], capture_output=True)
        kill_process(self.pid)
        subprocess.run(["umount", str(self.disk)], check=False)


@pytest.fixture
def small_disk(tmp_path):  # tests using it need a real mount
    if not fuse_available():
        pytest.skip("/dev/fuse is absent")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = SmallDisk(tmp_path, "12M")
    try:
        disk.mount()
        yield disk
    finally:
        disk.teardown()


def _fill(path: Path, backwards: bool) -> set[int]:
    """Write until the disk is full; the errnos write() and close() reported.

    Forwards, the data streams into packs as it arrives; backwards, it is
    staged first (not a stream), so the staging area is what fills up.
    """
    errors = set()
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for i in (reversed(range(32)) if backwards else range(32)):
            os.pwrite(fd, os.urandom(MiB), i * MiB)
    except OSError as exc:
        errors.add(exc.errno)
    try:
        os.close(fd)
    except OSError as exc:
        errors.add(exc.errno)
    return errors


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


@pytest.mark.slow
@pytest.mark.mount
@pytest.mark.parametrize("backwards", [False, True], ids=["streamed", "staged"])
def test_full_disk(small_disk, backwards):
    m = small_disk.mnt
    early = {f"early{i}": os.urandom(300_000) for i in range(3)}
    for name, data in early.items():
        (m / name).write_bytes(data)

    assert _fill(m / "big", backwards) == {errno.ENOSPC}  # write() or close() says so, nothing else

    assert not process_gone(small_disk.pid) and mounts.mount_at(str(m)) is not None, "the mount died"
    for name, data in early.items():
        assert (m / name).read_bytes() == data
    assert sorted(os.listdir(m)) == ["big", "early0", "early1", "early2"]
    assert (m / "more").exists() is False

    # Deleting gives the space back; the kernel's RELEASE of "big" may still be on its way, and until the
    # daemon has dropped its staged bytes even an unlink may find the disk full: retry for a while.
    assert wait_until(lambda: _unlink(m / "big"), timeout=20), "could not delete on a full disk"
    assert wait_until(lambda: small_disk.free_bytes() > 4 * MiB, timeout=30), \
        f"space did not come back: {small_disk.free_bytes()} bytes free"
    again = os.urandom(2 * MiB)
    (m / "after").write_bytes(again)
    assert (m / "after").read_bytes() == again

    small_disk.unmount()
    small_disk.check()
    small_disk.mount()
    for name, data in list(early.items()) + [("after", again)]:
        assert (m / name).read_bytes() == data
    small_disk.unmount()
    log = small_disk.log.read_text()
    assert "Traceback" not in log
    assert "No space left" in log or "no space left" in log


@pytest.mark.mount
@pytest.mark.parametrize("backwards", [False, True], ids=["streamed", "staged"])
def test_only_enospc_reaches_the_application(small_disk, backwards):
    """A streamed write that hits a full disk used to fail close() with EIO (fixed in dac1f76)."""
    assert _fill(small_disk.mnt / "big", backwards) == {errno.ENOSPC}


@pytest.mark.mount
def test_full_disk_keeps_metadata_working(small_disk):
    """With the disk full, metadata operations that free space still work, and the store stays consistent."""
    m = small_disk.mnt
    (m / "d").mkdir()
    for i in range(5):
        (m / "d" / f"f{i}").write_bytes(os.urandom(200_000))
    _fill(m / "big", backwards=False)
    assert os.stat(m / "d" / "f0").st_size == 200_000
    os.rename(m / "d" / "f1", m / "d" / "g1")
    assert wait_until(lambda: _unlink(m / "d" / "f2"), timeout=20)
    assert sorted(os.listdir(m / "d")) == ["f0", "f3", "f4", "g1"]
    small_disk.unmount()
    small_disk.check()


def test_reading_on_a_full_disk_skips_the_atime_update(tmp_path, monkeypatch):
    """Opening for reading updates atime (relatime); on a full disk that must not make open() fail."""
    with ChunkStore.create(tmp_path / "store") as store:
        core = FsCore(store)
        fh, inode = core.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, Caller(0, 0))
        core.write(fh, 0, b"committed")
        core.flush(fh)
        core.release(fh)

        def full(*args, **kwargs):
            raise StoreFullError("no space left on device")

        monkeypatch.setattr(store, "write_txn", full)
        fh, _ = core.open(inode.ino, os.O_RDONLY)
        assert core.read(fh, 0, 100) == b"committed"
        core.release(fh)
        monkeypatch.undo()
        core.close()
