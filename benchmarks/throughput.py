"""Throughput of a mounted chunkfs as ratios against a plain directory on the same disk, in the same run.

    python -m benchmarks.throughput                 # quick scale (1 GiB file, Django tree), 3 runs
    python -m benchmarks.throughput --huge          # 4 GiB file: the peak-RSS target of issue 4
    python -m benchmarks.throughput --tiny --runs 2 # seconds: what CI runs (tests/test_benchmark_quick.py)
    python -m benchmarks.throughput --avg-size 64K --ops seq_write,cold_read --runs 1

Every operation runs on a plain directory, on a chunkfs mount (mounted
through this checkout's CLI) and on a plain pyfuse3 passthrough
(benchmarks/passthrough.py: the floor of any Python FUSE filesystem here), one
right after the other (the order rotates between runs), and the figure is the
ratio plain time / chunkfs time (1.0 = as fast as the plain disk), with
passthrough time / chunkfs time beside it (throughput_report.py).  Each run
uses a fresh store; the headline is the median of the per-run ratios, and
every run is kept in throughput.json.  Cold
operations drop the page cache (``echo 3 > /proc/sys/vm/drop_caches``) and run
on a freshly mounted chunkfs, so neither the kernel nor the daemon's chunk cache
holds the data.  Needs root (drop_caches) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import mmap
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python benchmarks/throughput.py` too, and this checkout's chunkfs first
    sys.path.insert(0, REPO)

from benchmarks.common import Timer, ToolError, run  # noqa: E402
from benchmarks import apps  # noqa: E402
from benchmarks.mounts import ChunkfsMount, PassthroughMount, find_peers  # noqa: E402
from benchmarks.inputs import count_entries, git_tree, random_bytes, text_bytes, tree_tar, warm  # noqa: E402
from benchmarks.profiling import Profiler  # noqa: E402
from benchmarks.throughput_report import (DERIVED_OPS, OPS, markdown, summarize,  # noqa: E402,F401 (OPS: API)
                                          write_chart, write_compression_chart)

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
IO_BLOCK = 1 * MiB
RANDOM_BLOCK = 4 * KiB
WARM_FACTOR = 3  # a side's turn takes up to 3 file sizes of fresh pages: FUSE's page cache, backing file, staging

SCALES: dict[str, dict] = {
    # file_size: the sequential file; random_reads: 4 KiB preads; tree: "django" (a release sdist, ~10k files,
    # downloaded once into benchmarks/cache/) or "generated" (network-free, tree_files small files)
    # git_files: the files of the tree the git workflow commits (apps.py)
    "tiny": dict(file_size=32 * MiB, random_reads=2000, tree="generated", tree_files=600, git_files=150),
    "quick": dict(file_size=1 * GiB, random_reads=20000, tree="django", tree_files=0, git_files=1500),
    "huge": dict(file_size=4 * GiB, random_reads=20000, tree="django", tree_files=0, git_files=1500),
}
WRITE_OPS = ("seq_write", "overwrite", "rewrite", "untar", "rsync", "sqlite", "git")  # profiled one by one


# -- small system helpers -------------------------------------------------------------------------

def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes; False if not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def warm_free_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it again, so the next side's writes find free pages the
    hypervisor still backs.  This VM reports free memory back to its host (virtio-balloon free page
    reporting): a page freed a few seconds ago and then reused costs a host fault, and a 1 GiB write
    into the page cache took 0.22 s on just-freed pages and 1.2 s on pages freed 8 s earlier (the same
    bytes, all system time).  Without this, a side's time depended on how long ago someone freed memory."""
    block = bytes(MiB)
    with mmap.mmap(-1, nbytes) as m:
        for off in range(0, nbytes - MiB + 1, MiB):
            m[off:off + MiB] = block


def syncfs(path: str) -> None:
    """syncfs(2) of the filesystem holding ``path`` (``sync -f``)."""
    run(["sync", "-f", path])


def machine() -> dict:
    """What the figures were taken on: cores, memory, disk, kernel, FUSE versions."""
    info = {"kernel": platform.release(), "nproc": os.cpu_count(), "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1)}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        import pyfuse3
        info["pyfuse3"] = pyfuse3.__version__
    except Exception:  # noqa: BLE001 - informational only
        info["pyfuse3"] = "not importable"
    proc = subprocess.run(["fusermount3", "--version"], capture_output=True, text=True)
    info["libfuse"] = (proc.stdout + proc.stderr).strip().split(":")[-1].strip() or "unknown"
    proc = subprocess.run(["fio", "--version"], capture_output=True, text=True) if shutil.which("fio") else None
    info["fio"] = proc.stdout.strip() if proc else "not installed"
    return info


def disk_of(path: str) -> str:
    proc = subprocess.run(["df", "-h", "--output=source,fstype,size", path], capture_output=True, text=True)
    lines = proc.stdout.split("\n")
    return " ".join(lines[1].split()) if len(lines) > 1 else "unknown"


def plain_readahead_kb(path: str) -> int | None:
    """read_ahead_kb of the device under ``path`` (the plain side's read-ahead)."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def git_commit() -> str:
    out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "chunkfs"], capture_output=True,
                           text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + (" + uncommitted changes in chunkfs/" if dirty else "")


# -- the operations (each returns seconds, or a dict with "seconds") -------------------------------

def variant_readahead(args, default_kb: int | None) -> int:
    """Read-ahead of the cold_read_ra session: --readahead-kb, else 1 MiB, or 128 KiB (the FUSE kernel
    default) when the mount already defaults to 1 MiB, so the two sessions always compare two settings."""
    if args.readahead_kb is not None:
        return args.readahead_kb
    return 128 if default_kb == 1024 else 1024


def seq_write(path: str, data: memoryview) -> float:
    """Write ``data`` front to back in 1 MiB writes; committed = fsync + close inside the timing."""
    with Timer() as t:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for off in range(0, len(data), IO_BLOCK):
                view = data[off:off + IO_BLOCK]
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return t.seconds


def cold_read(path: str, expect_size: int, head: bytes) -> float:
    """Read the whole file in 1 MiB reads; checks the size and the first MiB (outside nothing: it is cheap)."""
    buf = bytearray(IO_BLOCK)
    total = 0
    with Timer() as t:
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    break
                if total == 0 and bytes(buf[:len(head)]) != head:
                    raise ToolError(f"{path}: first MiB read back differs from what was written")
                total += n
        finally:
            os.close(fd)
    if total != expect_size:
        raise ToolError(f"{path}: read {total} bytes, expected {expect_size}")
    return t.seconds


def random_read(path: str, size: int, count: int, seed: int) -> dict:
    """``count`` 4 KiB reads at random aligned offsets: fio (psync engine) if installed, else a pread loop."""
    if shutil.which("fio"):
        cmd = ["fio", "--name=randread", f"--filename={path}", "--rw=randread", f"--bs={RANDOM_BLOCK}",
               "--ioengine=psync", f"--size={size}", f"--io_size={count * RANDOM_BLOCK}", "--norandommap",
               "--randrepeat=0", f"--randseed={seed}", "--invalidate=0", "--output-format=json"]
        with Timer() as t:
            proc = run(cmd, timeout=3600)
        job = json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"][0]["read"]
        seconds = job["runtime"] / 1000.0 or t.seconds
        return {"seconds": seconds, "iops": round(job["iops"]), "reads": job["total_ios"],
                "clat_mean_us": round(job["clat_ns"]["mean"] / 1000, 1), "tool": "fio psync",
                "wall_seconds": round(t.seconds, 3)}
    rng = random.Random(seed)
    blocks = size // RANDOM_BLOCK
    offsets = [rng.randrange(blocks) * RANDOM_BLOCK for _ in range(count)]
    with Timer() as t:
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in offsets:
                if len(os.pread(fd, RANDOM_BLOCK, off)) != RANDOM_BLOCK:
                    raise ToolError(f"{path}: short read at {off}")
        finally:
            os.close(fd)
    return {"seconds": t.seconds, "iops": round(count / t.seconds), "reads": count, "tool": "python pread loop"}


def untar(tar_path: str, dest: str, sync_paths: list[str]) -> dict:
    os.makedirs(dest, exist_ok=True)
    return _then_sync(["tar", "-xf", tar_path, "-C", dest], sync_paths)


def rsync(src: str, dest: str, sync_paths: list[str]) -> dict:
    return _then_sync(["rsync", "-a", src.rstrip("/") + "/", dest], sync_paths)


def _then_sync(cmd: list[str], sync_paths: list[str]) -> dict:
    """Run ``cmd``, then ``sync -f`` each path; the command's own time is kept apart, because syncfs also
    flushes whatever else (other users' work) has dirtied the same filesystem."""
    with Timer() as t:
        run(cmd, timeout=3600)
        t_cmd = time.perf_counter() - t.start
        for p in sync_paths:
            syncfs(p)
    return {"seconds": t.seconds, "command_seconds": t_cmd, "sync_seconds": t.seconds - t_cmd}


def find_stat(top: str, expect: int | None) -> dict:
    """``find`` printing a stat field of every entry (one lstat each), output discarded."""
    with Timer() as t:
        out = run(["find", top, "-printf", "%i %s %m %T@\n"], timeout=3600).stdout
    entries = out.count("\n")
    if expect is not None and entries != expect:
        raise ToolError(f"find over {top} saw {entries} entries, expected {expect}")
    return {"seconds": t.seconds, "entries": entries}


# -- one run -----------------------------------------------------------------------------------

def one_run(k: int, args, scale: dict, data: memoryview, tar_path: str, src_tree: str, work: str,
            log, inputs: dict) -> dict:
    """Every operation on the plain directory, a fresh chunkfs store, the passthrough (unless
    --no-passthrough) and each peer found; returns raw seconds and extras."""
    plain = os.path.join(work, "plain")
    shutil.rmtree(plain, ignore_errors=True)
    os.makedirs(plain)
    fs = ChunkfsMount(os.path.join(work, "store"), os.path.join(work, "mnt"), args.avg_size, args.mount_opts)
    mounts = {"chunkfs": fs}
    targets = {"plain": plain, "chunkfs": fs.mnt}
    syncs = {"plain": [plain], "chunkfs": [fs.mnt, fs.store]}
    if args.passthrough:
        pt = mounts["passthrough"] = PassthroughMount(os.path.join(work, "pt-backing"), os.path.join(work, "pt-mnt"))
        targets["passthrough"], syncs["passthrough"] = pt.mnt, [pt.backing]
    for name, factory in inputs["peers"].items():
        peer = mounts[name] = factory(os.path.join(work, f"{name}-fs"), os.path.join(work, f"{name}-mnt"))
        targets[name], syncs[name] = peer.mnt, [peer.mnt, peer.work]
    # Rotate which side goes first, so none always meets a disk still busy with another's writeback.
    sides = list(targets)
    order = sides[k % len(sides):] + sides[:k % len(sides)]
    ops = args.ops
    res: dict = {"run": k + 1, "order": order, "seconds": {}, "extra": {}}
    size = len(data)
    head = bytes(data[:IO_BLOCK])
    entries = count_entries(src_tree)
    cold_ok = True

    profiler = inputs.get("profiler")

    def each_side(op: str, fn, cold: bool = False) -> None:
        if profiler is not None and op in WRITE_OPS:
            _profiled(op, lambda: measure(op, fn, cold))
        else:
            measure(op, fn, cold)

    def measure(op: str, fn, cold: bool) -> None:
        nonlocal cold_ok
        out = {}
        for side in list(order):
            for m in mounts.values():
                m.settle()  # untimed: a side's work after its calls returned is its own, not the next side's
            if cold:
                cold_ok &= drop_caches()  # syncs first
            else:
                os.sync()  # untimed: no side meets writeback the step before left dirty
            warm_free_memory(WARM_FACTOR * len(data))  # untimed, after the caches were dropped: they stay cold
            if side in inputs["peers"]:
                value = _peer_side(op, side, fn)
                if value is None:
                    continue
            else:
                value = fn(side, targets[side])
            if isinstance(value, dict):
                res["extra"].setdefault(op, {})[side] = value
                if "command_seconds" in value:  # untar / rsync: also the ratio without the final syncfs
                    res["seconds"].setdefault(op + "_nosync", {})[side] = value["command_seconds"]
                value = value["seconds"]
            out[side] = value
        res["seconds"][op] = out
        log(f"  run {k + 1} {op:<13} " + "  ".join(f"{side} {out[side]:8.3f} s" for side in sides if side in out)
            + f"  ratio {out['plain'] / out['chunkfs']:.3f}"
            + (f", to the passthrough {out['passthrough'] / out['chunkfs']:.3f}" if "passthrough" in out else ""))

    def _peer_side(op: str, side: str, fn):
        """A peer's turn, watched: one that fails or hangs (past --peer-timeout its daemon is killed, which
        fails the waiting call) is dropped for the rest of the run with one line, and the run goes on."""
        peer = mounts[side]
        watchdog = threading.Timer(args.peer_timeout, peer.abort)
        watchdog.start()
        try:
            return fn(side, targets[side])
        except (OSError, ToolError, subprocess.SubprocessError) as exc:
            reason = f"hung for {args.peer_timeout:.0f} s" if peer.aborted else f"failed: {exc}"
            log(f"  run {k + 1} {op}: {side} {reason}; left out of the rest of this run")
            res["extra"].setdefault("peer_failures", {})[side] = f"{op}: {reason}"
            order.remove(side)
            mounts.pop(side).cleanup()
            return None
        finally:
            watchdog.cancel()

    def _profiled(op: str, measured) -> None:
        """--profile: chunkfs and the passthrough mounted afresh with the request trace on, py-spy on chunkfs."""
        traced = [s for s in ("chunkfs", "passthrough") if s in mounts]
        for side in traced:
            mounts[side].umount("write")
            mounts[side].env = profiler.trace_env(side, op, k + 1)
            mounts[side].mount()
        profiler.start(fs.pid, op, k + 1)
        try:
            measured()
        finally:
            profiler.stop()
            for side in traced:
                mounts[side].umount(f"profile-{op}")
                mounts[side].env = {}
                mounts[side].mount()
        profiler.record(op, k + 1, res["seconds"][op])

    def session(name: str):
        """A fresh mount of every FUSE side for one cold session, all at the same read-ahead."""
        variant = (lambda default_kb: variant_readahead(args, default_kb)) if name == "cold_read_ra" else None
        return _Session(mounts, name, variant, res["extra"])

    try:
        for m in mounts.values():
            m.mount()
        big = "big.bin"
        # --- write session: sequential write, 4 KiB append, untar, rsync
        each_side("seq_write", lambda side, top: seq_write(os.path.join(top, big), data))
        res["extra"]["append"] = append_test(fs, targets, big, res["seconds"]["seq_write"], order)
        log(f"  run {k + 1} append        " + _append_line(res["extra"]["append"]))
        size += RANDOM_BLOCK
        if {"untar", "rsync", "find_stat"} & set(ops):
            warm(tar_path)
            each_side("untar", lambda side, top: untar(tar_path, os.path.join(top, "untar"), syncs[side]))
        if "rsync" in ops:
            warm(src_tree)
            each_side("rsync", lambda side, top: rsync(src_tree, os.path.join(top, "rsync"), syncs[side]))
        if "sqlite" in ops:
            each_side("sqlite", lambda side, top: apps.sqlite(top, args.seed + k))
        if "git" in ops:
            warm(inputs["git_tree"])
            each_side("git", lambda side, top: apps.git(os.path.join(top, "git"), inputs["git_tree"], args.seed + k))
        # Last in the session: the gigabytes these two leave dead are given back by the background gc, which
        # must not run under the operations above.
        if "overwrite" in ops:  # new bytes through O_TRUNC: the old contents die during the write
            each_side("overwrite", lambda side, top: apps.overwrite(os.path.join(top, big), inputs["other_data"]))
            size, head = len(data), bytes(inputs["other_data"][:IO_BLOCK])
        if "rewrite" in ops:  # the first contents again, written over the file in place
            each_side("rewrite", lambda side, top: apps.rewrite(os.path.join(top, big), data))
            head = bytes(data[:IO_BLOCK])
        # the steady state, untimed: what the writers stored raw compressed, as an idle mount does by itself
        res["extra"]["compressed_after_writes"] = fs.compress()
        res["extra"]["store_after_writes"] = fs.stats()
        for m in mounts.values():
            m.umount("write")
        if {"overwrite", "rewrite"} & set(ops):  # untimed: the cold sessions must not meet the background gc
            res["extra"]["gc_after_writes"] = fs.gc()  # giving back the gigabytes those two left dead

        # --- cold sessions: a fresh mount for each, caches dropped before each side.  The two sequential
        # read sessions swap places every run: the plain side's second "cold" read in a row tends to be
        # faster (the VM's disk is cached by its host), and that must not always favour the same variant.
        seq_sessions = [op for op in ("cold_read", "cold_read_ra") if op in ops]
        for op in (seq_sessions if k % 2 == 0 else seq_sessions[::-1]):
            with session(op):
                each_side(op, lambda side, top: cold_read(os.path.join(top, big), size, head), cold=True)
        if "random_read" in ops:
            with session("random_read"):
                each_side("random_read", lambda side, top: random_read(
                    os.path.join(top, big), size - RANDOM_BLOCK, scale["random_reads"], args.seed + k), cold=True)
        if "find_stat" in ops:
            with session("find_stat"):
                each_side("find_stat", lambda side, top: find_stat(os.path.join(top, "untar"), entries), cold=True)
            counts = {s: v["entries"] for s, v in res["extra"]["find_stat"].items()}
            if len(set(counts.values())) != 1:
                raise ToolError(f"find saw {counts} entries: the trees differ")
    finally:
        for m in mounts.values():
            m.cleanup()
        shutil.rmtree(plain, ignore_errors=True)
    res["rss_peak_bytes"] = fs.peaks
    if args.passthrough:
        res["passthrough_rss_peak_bytes"] = mounts["passthrough"].peaks
    res["cold_caches_dropped"] = cold_ok
    log(f"  run {k + 1} daemon peak RSS (VmHWM) by session: "
        + ", ".join(f"{s} {v / MiB:.0f} MiB" for s, v in fs.peaks.items()))
    return res


class _Session:
    """Mount every FUSE side for one cold session, all at one read-ahead: chunkfs's default, or for the
    variant session (``variant``: chunkfs's default -> the one to set) that one.  Records what each
    mount's read-ahead really was."""

    def __init__(self, mounts: dict, name: str, variant, extra: dict):
        self.mounts, self.name, self.variant, self.extra = mounts, name, variant, extra

    def __enter__(self):
        for m in self.mounts.values():
            m.mount()
        default_kb = self.mounts["chunkfs"].readahead()
        self.extra["readahead_default_kb"] = default_kb
        want = default_kb if self.variant is None else self.variant(default_kb)
        got = {}
        for side, m in self.mounts.items():
            keep = want is None or (side == "chunkfs" and self.variant is None)  # chunkfs's default stays
            got[side] = m.readahead() if keep else m.set_readahead(want)
        self.extra[f"readahead_{'variant' if self.variant else 'default'}_kb_by_side"] = got
        if self.variant is not None:
            self.extra["readahead_variant_kb"] = got["chunkfs"]
        return self

    def __exit__(self, *exc):
        for m in self.mounts.values():
            m.umount(self.name)
        return False


def append_test(fs: ChunkfsMount, targets: dict, name: str, seq_seconds: dict, order: list[str]) -> dict:
    """Append 4 KiB to the committed file (write + fsync + close) on every side; chunkfs's store growth
    from `chunkfs stats`."""
    payload = os.urandom(RANDOM_BLOCK)
    fs.settle()  # with chunking=behind the write's chunks may still be on their way: the growth is the append's
    before = fs.stats()
    out: dict = {"avg_chunk_size": fs.avg_size}
    for side in order:
        path = os.path.join(targets[side], name)
        # open, write, fsync and close timed apart: on FUSE the open of a file just written can be the
        # expensive step (the kernel drops the file's cached pages when it opens without keep_cache)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            t1 = time.perf_counter()
            os.write(fd, payload)
            t2 = time.perf_counter()
            os.fsync(fd)
            t3 = time.perf_counter()
        finally:
            os.close(fd)
        t4 = time.perf_counter()
        out[f"{side}_seconds"] = t4 - t0
        out[f"{side}_steps_ms"] = {"open": round(1000 * (t1 - t0), 2), "write": round(1000 * (t2 - t1), 2),
                                   "fsync": round(1000 * (t3 - t2), 2), "close": round(1000 * (t4 - t3), 2)}
    after = fs.stats()
    for key in ("disk_bytes", "stored_bytes", "unique_chunks", "garbage_bytes"):
        if key in before and key in after:
            out[f"{key}_growth"] = after[key] - before[key]
    out["growth_avg_chunks"] = round(out.get("disk_bytes_growth", 0) / fs.avg_size, 2)
    out["stored_growth_avg_chunks"] = round(out.get("stored_bytes_growth", 0) / fs.avg_size, 2)
    out["fraction_of_seq_write"] = round(out["chunkfs_seconds"] / seq_seconds["chunkfs"], 5)
    return out


def _append_line(a: dict) -> str:
    steps = ", ".join(f"{k} {v:.1f}" for k, v in a["chunkfs_steps_ms"].items())
    return (f"chunkfs {a['chunkfs_seconds'] * 1000:.1f} ms ({steps}; {100 * a['fraction_of_seq_write']:.2f}% of "
            f"the write), plain {a['plain_seconds'] * 1000:.1f} ms; store du +{a.get('disk_bytes_growth', 0)} B "
            f"({a['growth_avg_chunks']} avg chunks), unique chunk bytes +{a.get('stored_bytes_growth', 0)} B")


# -- main ----------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 GiB file, Django tree (the default)")
    size.add_argument("--tiny", action="store_true", help="32 MiB file, generated tree: seconds, for CI")
    size.add_argument("--huge", action="store_true", help="4 GiB file (the issue's peak-RSS target)")
    ap.add_argument("--runs", type=int, default=3, help="runs (default 3; the headline is their median)")
    ap.add_argument("--out", help="results directory (default benchmarks/results/<date>-throughput-<scale>)")
    ap.add_argument("--work-dir", help="scratch directory for the plain side and the store (default: $TMPDIR; "
                                       "both sides are always on the same filesystem)")
    ap.add_argument("--avg-size", help="the store's average chunk size (mkfs --avg-size; default: mkfs's)")
    ap.add_argument("--mount-opts", help="extra `chunkfs mount -o` options")
    ap.add_argument("--readahead-kb", type=int,
                    help="read-ahead of the cold_read_ra session (default: 1024, or 128 if the mount's own "
                         "default is already 1024)")
    ap.add_argument("--ops", default=",".join(o for o in OPS if o not in DERIVED_OPS),
                    help=f"comma list from {','.join(o for o in OPS if o not in DERIVED_OPS)} "
                         "(seq_write and the append always run)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-passthrough", dest="passthrough", action="store_false",
                    help="leave out the plain pyfuse3 passthrough (benchmarks/passthrough.py) run beside chunkfs")
    ap.add_argument("--peers", default="s3ql,juicefs",
                    help="other FUSE filesystems run beside chunkfs, those of s3ql,juicefs that are installed "
                         "(default: both), or 'none'")
    ap.add_argument("--baseline", metavar="CHECKOUT",
                    help="another checkout of chunkfs (a git worktree of an earlier commit) run as one more side, "
                         "'baseline': is this checkout slower than that one, run by run?")
    ap.add_argument("--xattr-passthrough", action="store_true",
                    help="one more side: the passthrough forwarding extended attributes, which the kernel then "
                         "asks getxattr(security.capability) before every write, as it asks chunkfs")
    ap.add_argument("--uncompressed-side", action="store_true",
                    help="one more side, 'chunkfs-none': this checkout's chunkfs made with mkfs --compression none "
                         "(same chunk size and mount options), paired run by run with the chunkfs side (which "
                         "compresses): what compression costs")
    ap.add_argument("--file-data", choices=("random", "text"), default="random",
                    help="the bytes of the sequential file (and of the overwrite): random (nothing compresses or "
                         "dedups; the default) or text (slices of the tree's tar: compresses like source code, "
                         "does not dedup)")
    ap.add_argument("--peer-timeout", type=float, default=600.0,
                    help="seconds a peer may take for one operation before it counts as hung (default 600)")
    ap.add_argument("--s3ql-bin", help="bin directory of an S3QL install (default: benchmarks/cache/s3ql-venv/bin)")
    ap.add_argument("--s3ql-source", help="an S3QL source checkout to build benchmarks/cache/s3ql-venv from")
    ap.add_argument("--profile", action="store_true",
                    help="profiling mode: each write-side operation in a fresh mount of chunkfs and the passthrough "
                         "with the request trace on, py-spy on chunkfs (profile/profile.md in --out); its times "
                         "are not the benchmark's")
    args = ap.parse_args(argv)
    args.peers = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(args.peers) - {"s3ql", "juicefs"}:
        ap.error("--peers takes s3ql, juicefs or none")
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in args.ops if o not in OPS or o in DERIVED_OPS]
    if bad:
        ap.error(f"unknown operation(s): {', '.join(bad)}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main(argv: list[str] | None = None, log=print) -> int:
    args = parse_args(argv)
    scale_name = "tiny" if args.tiny else "huge" if args.huge else "quick"
    scale = SCALES[scale_name]
    if not os.path.exists("/dev/fuse"):
        print("throughput benchmark needs a FUSE mount: no /dev/fuse", file=sys.stderr)
        return 1
    out = args.out or os.path.join(REPO, "benchmarks", "results",
                                   f"{dt.date.today().isoformat()}-throughput-{scale_name}")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="chunkfs-throughput-", dir=args.work_dir)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.throughput " + " ".join(shlex.quote(a) for a in argv_list),
            "scale": scale_name, "file_size": scale["file_size"], "random_reads": scale["random_reads"],
            "machine": machine(), "disk": disk_of(work), "plain_read_ahead_kb": plain_readahead_kb(work),
            "git_commit": git_commit(),
            "mount_opts": args.mount_opts, "ops": args.ops, "load_start": _load()}
    runs: list[dict] = []
    cache = os.environ.get("CHUNKFS_BENCH_CACHE", os.path.join(REPO, "benchmarks", "cache"))
    inputs: dict = {"peers": find_peers(args.peers, args.s3ql_bin, args.s3ql_source, cache, log,
                                        args.baseline,
                                        (args.avg_size, args.mount_opts) if args.uncompressed_side else None,
                                        args.xattr_passthrough),
                    "profiler": Profiler(out) if args.profile else None}
    meta["peers"] = {name: factory.settings() for name, factory in inputs["peers"].items()}
    try:
        log(f"throughput ({scale_name}): generating {scale['file_size'] / MiB:.0f} MiB of {args.file_data} data, tree")
        tar_path, meta["tree"] = tree_tar(scale, work, args.seed)
        if args.file_data == "text":
            make = lambda seed: text_bytes(scale["file_size"], seed, tar_path)  # noqa: E731
        else:
            make = lambda seed: random_bytes(scale["file_size"], seed)  # noqa: E731
        meta["file_data"] = args.file_data
        data = memoryview(make(args.seed))
        if "overwrite" in args.ops:
            inputs["other_data"] = memoryview(make(args.seed + 1))
        src_tree = os.path.join(work, "src-tree")
        os.makedirs(src_tree)
        run(["tar", "-xf", tar_path, "-C", src_tree])
        inputs["git_tree"] = git_tree(src_tree, os.path.join(work, "git-tree"), scale["git_files"])
        for k in range(args.runs):
            log(f"run {k + 1}/{args.runs} (load {_load()})")
            runs.append(one_run(k, args, scale, data, tar_path, src_tree, work, log, inputs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if inputs["profiler"] is not None:
        inputs["profiler"].write()
        log(f"profile: {out}/profile/profile.md")
    meta["load_end"] = _load()
    meta["avg_chunk_size"] = runs[0]["extra"]["append"]["avg_chunk_size"]
    summary = summarize(runs, scale["file_size"])
    with open(os.path.join(out, "throughput.json"), "w") as fh:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, fh, indent=2)
        fh.write("\n")
    chart = write_chart(os.path.join(out, "throughput.png"), meta, summary)
    text = markdown(meta, summary, runs) + ("\n![throughput](throughput.png)\n" if chart else "")
    if write_compression_chart(os.path.join(out, "compression.png"), meta, summary):
        text += "\n![compression on against off](compression.png)\n"
    with open(os.path.join(out, "throughput.md"), "w") as fh:
        fh.write(text)
    log(text)
    log(f"results: {out}/throughput.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
