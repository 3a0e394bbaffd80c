"""The throughput benchmark's profiling mode (``--profile``): where the time of each write-side operation goes.

For every operation of the write session (sequential write, overwrite,
rewrite, untar, rsync, SQLite, git) chunkfs and the passthrough are mounted
afresh with a request trace on (chunkfs.reqtrace: each request's kind and the
time the daemon took to answer it), and chunkfs's daemon is sampled by py-spy
(``py-spy record --threads --idle``, 200 Hz) while the operation runs, if
py-spy is installed (``pip install py-spy``; it needs root).  The report
(profile.md, profile.json beside the results) gives per operation:

* the operation's wall time, the daemon's busy time (the sum of its request
  times) and the requests that took most of it, for chunkfs and the
  passthrough side by side: the difference of the counts shows requests one
  side needs and the other does not, the difference of the times what each
  costs;
* per chunkfs thread, how many samples were busy (not waiting) and the
  deepest chunkfs function in them: where the daemon's own CPU goes.

The mounting per operation changes what is cached, so the times of a
profiling run are not the benchmark's figures: use it to find out why, then
measure without it.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from chunkfs.reqtrace import ENV as TRACE_ENV

SAMPLE_HZ = 200
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "WorkerThread._work (trio/_core/_thread_cache.py:211",
               "get_events", "Condition.wait", "Event.wait", "sleep", "select", "_wait_for_tstate_lock")
TOP = 8


def py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return local if os.access(local, os.X_OK) else shutil.which("py-spy")


class Profiler:
    """Trace files and py-spy samples of one benchmark run, written under ``out``/profile/."""

    def __init__(self, out: str):
        self.dir = os.path.join(out, "profile")
        os.makedirs(self.dir, exist_ok=True)
        self.spy = py_spy()
        self.ops: dict[str, dict] = {}
        self._proc: subprocess.Popen | None = None

    def trace_env(self, side: str, op: str, run: int) -> dict:
        return {TRACE_ENV: self._path(side, op, run, "trace.json")}

    def _path(self, side: str, op: str, run: int, what: str) -> str:
        return os.path.join(self.dir, f"run{run}-{op}-{side}.{what}")

    def start(self, pid: int | None, op: str, run: int) -> None:
        if self.spy is None or pid is None:
            return
        self._proc = subprocess.Popen([self.spy, "record", "-r", str(SAMPLE_HZ), "--threads", "--idle",
                                       "--nonblocking", "-f", "raw", "-o", self._path("chunkfs", op, run, "raw"),
                                       "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches before the operation starts

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def record(self, op: str, run: int, wall: dict) -> None:
        """After the sides' unmount (the traces are written then): keep what this run of ``op`` showed."""
        entry = {"wall_seconds": {k: round(v, 3) for k, v in wall.items()}, "trace": {}}
        for side in ("chunkfs", "passthrough"):
            try:
                with open(self._path(side, op, run, "trace.json")) as fh:
                    entry["trace"][side] = json.load(fh)
            except (OSError, ValueError):
                pass
        raw = self._path("chunkfs", op, run, "raw")
        if os.path.exists(raw):
            entry["py_spy"] = busy_by_thread(raw)
        self.ops.setdefault(op, {})[f"run{run}"] = entry

    def write(self) -> str:
        with open(os.path.join(self.dir, "profile.json"), "w") as fh:
            json.dump(self.ops, fh, indent=1)
        text = report(self.ops, self.spy is not None)
        with open(os.path.join(self.dir, "profile.md"), "w") as fh:
            fh.write(text)
        return text


def busy_by_thread(raw_path: str) -> dict:
    """From py-spy's raw output: per thread, samples, busy samples and the deepest chunkfs frames of the busy ones."""
    threads: dict[str, dict] = {}
    with open(raw_path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n, frames = int(count), stack.split(";")
            name = frames[0].split(":", 1)[-1].strip() if ":" in frames[0] else frames[0]
            t = threads.setdefault(name, {"samples": 0, "busy": 0, "where": collections.Counter()})
            t["samples"] += n
            if any(idle in frames[-1] for idle in IDLE_LEAVES):
                continue
            t["busy"] += n
            ours = [f for f in frames if "chunkfs/" in f]
            t["where"][(ours[-1] if ours else frames[-1]).split(" (")[0]] += n
    return {name: {"samples": t["samples"], "busy": t["busy"], "where": dict(t["where"].most_common(TOP))}
            for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["busy"])}


def report(ops: dict, sampled: bool) -> str:
    lines = ["# Where the time goes: the throughput benchmark's profiling mode", "",
             "Per operation and run: wall time of each side; the daemon's busy time (sum of its request times) "
             "and its costliest requests (count, total seconds, median µs, how many went to a worker thread) for "
             "chunkfs and the passthrough"
             + ("; per chunkfs thread, busy samples of all samples at %d Hz and the chunkfs functions they were in."
                % SAMPLE_HZ if sampled else "; py-spy is not installed, so no samples."), ""]
    for op, by_run in ops.items():
        for run, entry in by_run.items():
            wall = ", ".join(f"{k} {v:.2f} s" for k, v in entry["wall_seconds"].items())
            lines += [f"## {op}, {run}: {wall}", ""]
            for side, tr in entry["trace"].items():
                kinds = list(tr["requests"].items())[:TOP]
                lines.append(f"- {side}: daemon busy {tr['busy_seconds']:.2f} s; "
                             + "; ".join(f"{k} {v['count']}× {v['seconds']:.2f} s (median {v['median_us']:.0f} µs"
                                         + (f", {v['threaded']} in threads" if v.get("threaded") else "") + ")"
                                         for k, v in kinds))
            for name, t in entry.get("py_spy", {}).items():
                if t["busy"]:
                    lines.append(f"- thread {name}: busy {t['busy']} of {t['samples']} samples: "
                                 + ", ".join(f"{k} {v}" for k, v in t["where"].items()))
            lines.append("")
    return "\n".join(lines)
