"""The FUSE mounts the throughput benchmark measures: chunkfs, and the plain passthrough beside it.

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
        os.makedirs(mnt, exist_ok=True)

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

    def __init__(self, store: str, mnt: str, avg_size: str | None, mount_opts: str | None):
        super().__init__(mnt)
        self.store, self.mount_opts = store, mount_opts
        shutil.rmtree(store, ignore_errors=True)
        run([*chunkfs_cli(), "mkfs", store, *(["--avg-size", avg_size] if avg_size else [])], env=checkout_env())
        with open(os.path.join(store, "chunkfs.json")) as fh:
            self.avg_size = json.load(fh)["avg_size"]

    def mount(self) -> None:
        opts = ["-o", self.mount_opts] if self.mount_opts else []
        run([*chunkfs_cli(), "mount", self.store, self.mnt, *opts], env=checkout_env(), timeout=300)
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

    def __init__(self, backing: str, mnt: str):
        super().__init__(mnt)
        self.backing = backing
        shutil.rmtree(backing, ignore_errors=True)
        os.makedirs(backing)
        self.proc: subprocess.Popen | None = None

    def mount(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.passthrough", self.backing, self.mnt],
                                     cwd=REPO, env={**os.environ, **checkout_env()}, stdin=subprocess.DEVNULL,
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
