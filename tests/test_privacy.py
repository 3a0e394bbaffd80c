"""Private by default: the store holds every user's data, so nothing in it is readable by others.

Other users are played by ``nobody`` through ``setpriv`` running plain tools
(cat, ls): the venv's Python lives under /root, which nobody cannot enter.
The stores and mountpoints here live in a directory everyone may traverse,
so that only chunkfs's own permissions stand in the way.
(tests/test_posix_mount.py::test_permissions_for_an_unprivileged_user covers
more of what the kernel enforces on an ``allow_other`` mount.)
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import MountedFS, fuse_available

pytestmark = pytest.mark.mount

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(NOBODY + list(cmd), capture_output=True, text=True, timeout=30, cwd="/")


@pytest.fixture
def public_mounts():
    """``make(options) -> MountedFS`` in a world-traversable directory; all torn down afterwards."""
    if not fuse_available():
        pytest.skip("/dev/fuse is absent")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    root = Path(tempfile.mkdtemp(prefix="chunkfs-privacy-", dir="/tmp"))
    root.chmod(0o755)
    made: list[MountedFS] = []

    def make(options=(), name: str = "fs") -> MountedFS:
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


@pytest.fixture
def open_umask():
    """umask 0 for this test (the CLI and the daemon inherit it): chunkfs must not rely on the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(store: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(store.stat().st_mode)}
    for path in store.rglob("*"):
        out[str(path.relative_to(store))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_everything_in_the_store_is_private(public_mounts, open_umask):
    fs = public_mounts()
    (fs / "closed").write_bytes(os.urandom(100_000))
    held = os.open(fs / "held", os.O_CREAT | os.O_RDWR, 0o644)  # staged: random writes, still open
    try:
        os.pwrite(held, b"x" * 5000, 70_000)
        os.pwrite(held, b"y" * 5000, 10)
        modes = _modes(fs.store)
    finally:
        os.close(held)
    for expected in ("chunkfs.json", "lock", "chunkfs.log", "meta", "meta/data.mdb", "meta/lock.mdb", "packs",
                     "staging"):
        assert expected in modes, f"{expected} missing from {sorted(modes)}"
    assert any(name.startswith("packs/") for name in modes) and any(n.startswith("staging/") for n in modes)
    exposed = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not exposed, f"readable or writable by others: {exposed}"

    fs.log.rename(fs.store / "chunkfs.log.1")  # logrotate: the daemon reopens the log on its next line
    fs.unmount()
    assert stat.S_IMODE(fs.log.stat().st_mode) == 0o600


def test_other_users_cannot_read_the_store(public_mounts):
    fs = public_mounts()
    (fs / "secret").write_bytes(b"the quarterly numbers " * 1000)
    fs.unmount()
    pack = next((fs.store / "packs").iterdir())
    for cmd in (["ls", str(fs.store)], ["cat", str(pack)], ["cat", str(fs.store / "meta" / "data.mdb")],
                ["cat", str(fs.log)]):
        result = as_nobody(*cmd)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (cmd, result)
    assert as_nobody("ls", str(fs.store.parent)).returncode == 0  # the control: the parent is open


def test_without_allow_other_other_users_see_nothing(public_mounts):
    fs = public_mounts()
    (fs / "public").write_text("hello")
    os.chmod(fs / "public", 0o644)
    for cmd in (["ls", str(fs.mountpoint)], ["cat", str(fs / "public")]):
        result = as_nobody(*cmd)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (cmd, result)


def test_allow_other_keeps_per_file_permissions(public_mounts):
    fs = public_mounts(["allow_other"])
    m = fs.mountpoint
    (m / "private").write_text("root's secret")
    os.chmod(m / "private", 0o600)
    (m / "closed").mkdir(mode=0o700)
    (m / "closed" / "inside").write_text("also secret")
    os.chmod(m / "closed" / "inside", 0o644)
    (m / "public").write_text("hello")
    os.chmod(m / "public", 0o644)
    (m / "open").mkdir(mode=0o755)
    (m / "open" / "listed").write_text("")

    denied = {"read a 0600 file": ["cat", str(m / "private")], "list a 0700 directory": ["ls", str(m / "closed")],
              "read inside a 0700 directory": ["cat", str(m / "closed" / "inside")],
              "write a 0644 file": ["sh", "-c", f"echo x >> {m / 'public'}"],
              "create in a 0755 directory": ["touch", str(m / "open" / "new")]}
    for what, cmd in denied.items():
        result = as_nobody(*cmd)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (what, result)
    assert as_nobody("cat", str(m / "public")).stdout == "hello"
    assert as_nobody("ls", str(m / "open")).stdout.split() == ["listed"]
    assert (m / "public").read_text() == "hello"
