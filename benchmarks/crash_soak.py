"""Kill -9 the chunkfs daemon at random moments of a busy workload and check that nothing promised is lost.

    python -m benchmarks.crash_soak --rounds 1000            # the long mode
    python -m benchmarks.crash_soak --rounds 50 --seed 7     # what CI runs (tests/test_crash.py)
    python -m benchmarks.crash_soak --s3 --rounds 50 --object-store-kills 20   # packs in a SeaweedFS bucket

One store is reused across rounds.  Each round:

1. the workload (benchmarks/crash_workload.py) runs in its own process inside
   the daemon-mode mount and journals what it does;
2. after a random delay the daemon gets SIGKILL; the dead mount is removed
   with ``fusermount3 -uz``;
3. the store *as the crash left it* passes ``check_store`` (opened read-only,
   before any recovery): the on-disk state is consistent without repair;
   (apart from orphan inodes, which the next mount purges);
4. recovery, then gc: on odd rounds this process recovers the store as a
   mount would (``ChunkStore.open`` and ``FsCore``), on even rounds the
   remounting daemon recovers it and gc runs after a clean unmount; either
   way ``check_store`` is clean and, after
   ``store.gc(min_dead_fraction=0)``, no unreferenced bytes are left (``garbage_bytes == 0``);
   ``chunkfs fsck`` is run too when this chunkfs has that verb;
5. the remount succeeds and every path holds one of the states the journal
   allows: exactly its last durable state (fsync'ed or closed, or a returned
   namespace call) unless it was being changed at the kill
   (``crash_workload.allowed_states``); sizes match contents; nothing extra;
6. the daemon log has no ERROR line and no traceback.

With ``--s3`` the store keeps its packs in a bucket of a SeaweedFS started
for the run (tests/seaweedfs.py), mounted with ``upload_interval=1`` so that
uploads are under way at most kills.  In ``--object-store-kills`` of the
rounds, spread evenly, SeaweedFS itself gets SIGKILL during the workload and
is started again a moment later, before the daemon is killed.  At the end the
store is unmounted (which uploads everything), restored from the bucket alone
into an empty directory with ``chunkfs restore``, mounted read-only, and must
hold exactly what the last round verified.

Needs /dev/fuse and fusermount3; mounts through this checkout's CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from benchmarks import crash_workload as cw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_LOG_LINE = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL)\b")
# check_store findings a crash legitimately leaves until the next mount's recovery repairs them
CRASH_LEFTOVERS = {"orphan-inode"}  # unlinked while open: purged at mount
CHECKS = ("pre-recovery check_store clean but for orphans", "recovery + check_store clean", "gc leaves 0 garbage bytes",
          "remount ok", "durable files byte-identical, uncertain ones in an allowed state", "no stray paths",
          "no ERROR in daemon log")


class CrashCheckFailed(AssertionError):
    pass


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def cli(*args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", *map(str, args)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise CrashCheckFailed(f"chunkfs {' '.join(map(str, args))} exited {result.returncode}: {result.stderr}")
    return result


def _mounted(path: str) -> bool:
    from chunkfs import mounts  # noqa: PLC0415

    return mounts.mount_at(path) is not None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _nonempty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return False


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _history(journal: list[dict], paths: list[str]) -> str:
    """The journal lines of this round that concern ``paths``, each with the operation it belonged to."""
    out, op = [], "?"
    for rec in journal:
        if rec.get("k") == "op":
            op = rec["op"]
        elif rec.get("p") in paths:
            out.append(f"  {op}: {rec['k']} {rec['p']} {str(rec['h'])[:12]}")
    return "journal:\n" + "\n".join(out[-30:])


@dataclass
class RoundResult:
    number: int
    kill_after: float
    journal_lines: int
    durable: int
    uncertain: int
    recovery: str
    seconds: float


@dataclass
class Summary:
    rounds: list[RoundResult] = field(default_factory=list)
    fsck_cli: bool = False
    object_store_kills: int = 0
    restored_paths: int | None = None

    def line(self) -> str:
        n = len(self.rounds)
        durable = sum(r.durable for r in self.rounds)
        uncertain = sum(r.uncertain for r in self.rounds)
        recovered = sum(1 for r in self.rounds if r.recovery)
        total = sum(r.seconds for r in self.rounds)
        checks = ", ".join(CHECKS + (("chunkfs fsck clean",) if self.fsck_cli else ()))
        store = "" if self.restored_paths is None else \
            (f" (packs in an object store, itself killed in {self.object_store_kills} of the rounds; "
             f"restored from the bucket alone at the end: all {self.restored_paths} paths identical)")
        return (f"crash test: {n} rounds of SIGKILL in {total:.0f} s{store}; each round checked: {checks}; "
                f"{durable} checks of a durable path (exact contents) and {uncertain} of an uncertain one "
                f"(an allowed state) passed; the remount logged a recovery in {recovered} rounds")


class CrashRig:
    """A store, a mountpoint and the kill / recover / verify cycle; see the module docstring."""

    def __init__(self, workdir: str, seed: int = 0, max_kill_delay: float = 0.8, log=print,
                 object_store=None, object_store_kills: frozenset[int] = frozenset(), mount_options: str = ""):
        """``object_store``: a started tests/seaweedfs.py SeaweedServer to keep the packs in;
        ``object_store_kills``: the round numbers in which it is killed too; ``mount_options``: ``-o`` of every mount."""
        self.dir = workdir
        self.object_store = object_store
        self.object_store_kills = object_store_kills
        self.data_url = object_store.url("crash-soak") if object_store is not None else None
        self.store = os.path.join(workdir, "store")
        self.mnt = os.path.join(workdir, "mnt")
        self.root = os.path.join(self.mnt, "w")
        self.rng = random.Random(seed)
        self.seed = seed
        self.mount_options = mount_options
        self.max_kill_delay = max_kill_delay
        self.log = log
        self.state: dict[str, str | None] = {}  # the verified contents of the workload root
        self.pid: int | None = None
        self.log_offset = 0
        self.summary = Summary(fsck_cli=cli("fsck", "--help", check=False).returncode == 0)

    # -- mounting ---------------------------------------------------------------------

    def setup(self) -> None:
        os.makedirs(self.mnt, exist_ok=True)
        if not os.path.exists(os.path.join(self.store, "chunkfs.json")):
            where = [] if self.object_store is None else \
                ["--data", self.data_url, "--endpoint", self.object_store.endpoint]
            cli("mkfs", self.store, *where)
        self.mount()
        os.makedirs(self.root, exist_ok=True)
        self.state = cw.snapshot(self.root)

    def mount(self) -> None:
        from chunkfs import mounts  # noqa: PLC0415

        options = [self.mount_options] if self.mount_options else []
        if self.object_store is not None:
            options.append("upload_interval=1")
        cli("mount", self.store, self.mnt, *(["-o", ",".join(options)] if options else []))
        self.pid = mounts.lock_holder(self.store)
        if self.pid is None:
            raise CrashCheckFailed("no daemon holds the store after mounting")

    def unmount(self) -> None:
        cli("umount", self.mnt)
        self.pid = None

    def cleanup(self) -> None:
        """Leave nothing mounted and no daemon running, whatever state things are in."""
        if self.pid is not None and not _gone(self.pid) and _mounted(self.mnt):
            cli("umount", self.mnt, "--timeout", "30", check=False)
        for flags in (["-u"], ["-uz"]):
            if _mounted(self.mnt):
                subprocess.run(["fusermount3", *flags, self.mnt], capture_output=True, check=False)
        if self.pid is not None and not _gone(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            _wait(lambda: _gone(self.pid), 10)
        self.pid = None

    # -- one round --------------------------------------------------------------------------

    def round(self, number: int) -> RoundResult:
        started = time.monotonic()
        journal_path = os.path.join(self.dir, f"journal-{number}.jsonl")
        kill_after = self._run_and_kill(number, journal_path)
        self._remove_dead_mount()
        self._check_as_crashed()
        in_process = number % 2 == 1
        if in_process:
            self._recover_and_gc()
        self.mount()
        recovery = self._recovery_line()
        journal = cw.read_journal(journal_path)
        durable, uncertain = self._verify(journal)
        if not in_process:
            self.unmount()
            self._recover_and_gc()
            self.mount()
        self._check_log()
        self._prune_journals(number)
        return RoundResult(number, kill_after, len(journal), durable, uncertain, recovery,
                           time.monotonic() - started)

    def _prune_journals(self, number: int, keep: int = 5) -> None:
        """Keep the journals of the last few rounds: a failure may stem from an earlier one."""
        try:
            os.unlink(os.path.join(self.dir, f"journal-{number - keep}.jsonl"))
        except FileNotFoundError:
            pass

    def _run_and_kill(self, number: int, journal_path: str) -> float:
        seed = self.seed * 100_000 + number
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.crash_workload", self.root, journal_path,
                                 str(seed)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if not _wait(lambda: _nonempty(journal_path) or proc.poll() is not None, 30):  # first line: "ready"
                raise CrashCheckFailed("the workload did not start within 30 s")
            if proc.poll() is not None:
                raise CrashCheckFailed(f"the workload died before the kill: {proc.stderr.read()}")
            delay = self.rng.uniform(0.0, self.max_kill_delay)
            time.sleep(delay)
            if number in self.object_store_kills:
                self._kill_object_store_for_a_moment()
            if proc.poll() is not None:
                raise CrashCheckFailed(f"the workload failed before the kill: {proc.stderr.read()}")
            os.kill(self.pid, signal.SIGKILL)
            if not _wait(lambda: _gone(self.pid), 10):
                raise CrashCheckFailed(f"daemon {self.pid} survived SIGKILL")
            self.pid = None
            try:
                proc.wait(timeout=15)  # its next call fails with ENOTCONN
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return delay
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()

    def _kill_object_store_for_a_moment(self) -> None:
        """SIGKILL SeaweedFS while the workload writes, start it again, let the workload go on a little."""
        self.object_store.kill()
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.object_store.start()
        time.sleep(self.rng.uniform(0.0, self.max_kill_delay))

    def _remove_dead_mount(self) -> None:
        subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True, check=False)
        if not _wait(lambda: not _mounted(self.mnt), 10):
            raise CrashCheckFailed(f"{self.mnt} still mounted after fusermount3 -uz")

    def _check_as_crashed(self) -> None:
        """The store as the kill left it, before any repair, is already consistent."""
        from chunkfs.fsck import check_store  # noqa: PLC0415
        from chunkfs.store import ChunkStore  # noqa: PLC0415

        with ChunkStore.open(self.store, readonly=True) as store:
            report = check_store(store)
        unexpected = [f for f in report.findings if f.kind not in CRASH_LEFTOVERS]
        if unexpected:
            raise CrashCheckFailed(f"check_store before recovery: {unexpected}")

    def _recover_and_gc(self) -> None:
        """Recover as a mount would (in this process), then gc; both leave check_store clean."""
        from chunkfs.fs import FsCore  # noqa: PLC0415
        from chunkfs.fsck import check_store  # noqa: PLC0415
        from chunkfs.store import ChunkStore  # noqa: PLC0415

        with ChunkStore.open(self.store) as store:
            FsCore(store).close()  # the mount's own recovery: stale staging, orphans (fs/recovery.py)
            report = check_store(store)
            if not report.clean:
                raise CrashCheckFailed(f"check_store after recovery: {report.findings}")
            store.gc(min_dead_fraction=0)
            report = check_store(store)
            if not report.clean or report.garbage_bytes:
                raise CrashCheckFailed(f"check_store after gc: {report.findings}, "
                                       f"{report.garbage_bytes} garbage bytes")
        if self.summary.fsck_cli:
            result = cli("fsck", self.store, check=False)
            if result.returncode != 0:
                raise CrashCheckFailed(f"chunkfs fsck exited {result.returncode}: {result.stdout}{result.stderr}")

    def _verify(self, journal: list[dict]) -> tuple[int, int]:
        allowed = cw.allowed_states(self.state, journal)
        actual = cw.snapshot(self.root)
        self._check_sizes()
        wrong = []
        for path in sorted(allowed.keys() | actual.keys()):
            ok = allowed.get(path, {None})
            if actual.get(path) not in ok:
                wrong.append(f"{path}: found {actual.get(path)}, allowed {sorted(map(str, ok))}")
        if wrong:
            raise CrashCheckFailed("after the kill:\n  " + "\n  ".join(wrong[:20]) + "\n"
                                   + _history(journal, [w.split(":")[0] for w in wrong[:3]]))
        self.state = actual
        durable = sum(1 for path, ok in allowed.items() if len(ok) == 1 and ok != {None})
        return durable, sum(1 for ok in allowed.values() if len(ok) > 1)

    def _check_sizes(self) -> None:
        for top, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(top, name)
                with open(path, "rb") as fh:
                    size = len(fh.read())
                if os.stat(path).st_size != size:
                    raise CrashCheckFailed(f"{path}: st_size {os.stat(path).st_size}, contents {size} bytes")

    def _log_lines(self) -> list[str]:
        try:
            with open(os.path.join(self.store, "chunkfs.log"), errors="replace") as fh:
                fh.seek(self.log_offset)
                text = fh.read()
        except FileNotFoundError:
            return []
        return text.splitlines()

    def _recovery_line(self) -> str:
        lines = [ln for ln in self._log_lines() if "recovered after an unclean shutdown" in ln]
        return lines[-1].split(": ", 2)[-1] if lines else ""

    def _check_log(self) -> None:
        bad = [ln for ln in self._log_lines() if BAD_LOG_LINE.search(ln)]
        if bad:
            raise CrashCheckFailed("daemon log:\n  " + "\n  ".join(bad[:20]))
        with open(os.path.join(self.store, "chunkfs.log"), "rb") as fh:
            self.log_offset = fh.seek(0, os.SEEK_END)

    # -- many rounds ------------------------------------------------------------------------

    def run(self, rounds: int) -> Summary:
        self.setup()
        for number in range(1, rounds + 1):
            result = self.round(number)
            self.summary.rounds.append(result)
            self.summary.object_store_kills += number in self.object_store_kills
            what = "the object store and the daemon" if number in self.object_store_kills else "the daemon"
            self.log(f"round {number}: {what} killed after {result.kill_after:.2f} s, {result.journal_lines} journal "
                     f"lines, {result.durable} durable + {result.uncertain} uncertain paths ok"
                     + (f"; recovery: {result.recovery}" if result.recovery else "")
                     + f" ({result.seconds:.1f} s)")
        self.unmount()
        if self.object_store is not None:
            self.verify_restore()
        return self.summary

    def verify_restore(self) -> None:
        """The bucket alone, restored into an empty directory and mounted read-only, holds the last state."""
        from chunkfs import mounts  # noqa: PLC0415

        restored, mnt = os.path.join(self.dir, "restored"), os.path.join(self.dir, "restored-mnt")
        shutil.rmtree(restored, ignore_errors=True)
        os.makedirs(mnt, exist_ok=True)
        cli("restore", restored, "--data", self.data_url, "--endpoint", self.object_store.endpoint)
        cli("mount", restored, mnt, "-o", "ro")
        try:
            found = cw.snapshot(os.path.join(mnt, "w"))
        finally:
            pid = mounts.lock_holder(restored)
            cli("umount", mnt, check=False)
            if pid is not None:
                _wait(lambda: _gone(pid), 30)
        if found != self.state:
            wrong = sorted(p for p in found.keys() | self.state.keys() if found.get(p) != self.state.get(p))
            raise CrashCheckFailed(f"the store restored from the bucket differs in {len(wrong)} paths: {wrong[:10]}")
        self.summary.restored_paths = len(found)
        shutil.rmtree(restored, ignore_errors=True)


def spread(count: int, rounds: int) -> frozenset[int]:
    """``count`` round numbers out of 1..``rounds``, evenly spaced."""
    count = min(count, rounds)
    return frozenset(1 + (i * rounds) // count for i in range(count)) if count > 0 else frozenset()


def start_object_store(workdir: str):
    """A SeaweedFS for ``--s3`` (tests/seaweedfs.py), its credentials in this process's environment."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from seaweedfs import SeaweedServer  # noqa: PLC0415

    server = SeaweedServer(os.path.join(workdir, "seaweedfs")).start()
    os.environ.update(server.env())
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crash_soak", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--dir", default=None, help="work directory (default: a new one under /tmp)")
    parser.add_argument("--max-kill-delay", type=float, default=0.8, help="seconds of workload before the kill")
    parser.add_argument("--s3", action="store_true", help="keep the packs in a SeaweedFS bucket started for the run")
    parser.add_argument("--object-store-kills", type=int, default=0,
                        help="with --s3: in this many rounds, kill SeaweedFS during the workload too")
    parser.add_argument("--mount-options", default="", metavar="OPTS",
                        help="chunkfs mount -o for every mount (e.g. chunking=behind)")
    parser.add_argument("--json", action="store_true", help="print the per-round results as JSON at the end")
    args = parser.parse_args(argv)
    workdir = args.dir or f"/tmp/chunkfs-crash-soak-{os.getpid()}"
    os.makedirs(workdir, exist_ok=True)
    server = start_object_store(workdir) if args.s3 else None
    rig = CrashRig(workdir, seed=args.seed, max_kill_delay=args.max_kill_delay, object_store=server,
                   object_store_kills=spread(args.object_store_kills, args.rounds) if server else frozenset(),
                   mount_options=args.mount_options)
    print(f"crash soak: seed {args.seed}, work directory {workdir}")
    try:
        summary = rig.run(args.rounds)
    except CrashCheckFailed as exc:
        print(f"FAILED in round {len(rig.summary.rounds) + 1} (seed {args.seed}): {exc}")
        return 1
    finally:
        rig.cleanup()
        if server is not None:
            server.stop()
            server.remove_sockets()
    print(summary.line())
    if args.json:
        print(json.dumps([r.__dict__ for r in summary.rounds], indent=1))
    if args.dir is None:  # a failure keeps it for diagnosis; a success leaves nothing behind
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
