"""Throughput of a mounted chunkfs as ratios against a plain directory on the same disk, in the same run.

    python -m benchmarks.throughput                 # quick scale (1 GiB file, Django tree), 3 runs
    python -m benchmarks.throughput --huge          # 4 GiB file: the peak-RSS target of issue 4
    python -m benchmarks.throughput --tiny --runs 2 # seconds: what CI runs (tests/test_benchmark_quick.py)
    python -m benchmarks.throughput --avg-size 64K --ops seq_write,cold_read --runs 1

Every operation runs on a plain directory and on a chunkfs mount (mounted
through this checkout's CLI), one right after the other (the order alternates
between runs), and the figure is the ratio plain time / chunkfs time (1.0 =
as fast as the plain disk).  Each run uses a fresh store; the headline is the
median of the per-run ratios, and every run is kept in throughput.json.  Cold
operations drop the page cache (``echo 3 > /proc/sys/vm/drop_caches``) and run
on a freshly mounted chunkfs, so neither the kernel nor the daemon's chunk cache
holds the data.  Needs root (drop_caches) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python benchmarks/throughput.py` too, and this checkout's chunkfs first
    sys.path.insert(0, REPO)

from benchmarks.common import MB, Timer, ToolError, run  # noqa: E402

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
IO_BLOCK = 1 * MiB
RANDOM_BLOCK = 4 * KiB

SCALES: dict[str, dict] = {
    # file_size: the sequential file; random_reads: 4 KiB preads; tree: "django" (a release sdist, ~10k files,
    # downloaded once into benchmarks/cache/) or "generated" (network-free, tree_files small files)
    "tiny": dict(file_size=32 * MiB, random_reads=2000, tree="generated", tree_files=600),
    "quick": dict(file_size=1 * GiB, random_reads=20000, tree="django", tree_files=0),
    "huge": dict(file_size=4 * GiB, random_reads=20000, tree="django", tree_files=0),
}
DJANGO_RELEASE = "5.2.18"

# Ratio operations, in the order they are reported, with issue 4's targets (None: no target).
OPS: dict[str, tuple[str, float | None]] = {
    "seq_write": ("sequential write (committed: write + fsync + close)", 0.5),
    "cold_read": ("cold sequential read (remount + drop_caches), the mount's default read-ahead", 0.5),
    "cold_read_ra": ("cold sequential read, the other read-ahead (1 MiB, or 128 KiB if that is the default)", 0.5),
    "random_read": ("4 KiB random reads, cold", 0.35),
    "untar": ("untar of the small-files tree (+ sync -f)", 0.4),
    "rsync": ("rsync -a of the small-files tree (+ sync -f)", 0.4),
    "find_stat": ("find + stat over the tree, cold", None),
    # derived from untar / rsync (not separate --ops): the command alone, before its sync -f
    "untar_nosync": ("untar alone (its sync -f left out)", None),
    "rsync_nosync": ("rsync -a alone (its sync -f left out)", None),
}
DERIVED_OPS = ("untar_nosync", "rsync_nosync")
RSS_TARGET = 300 * MiB  # issue 4: peak daemon RSS while writing and reading 4 GiB files
APPEND_MAX_CHUNKS = 4  # issue 4: appending 4 KiB grows the store by less than 4 average chunks...
APPEND_MAX_FRACTION = 0.05  # ...and takes less than 5% of the time of writing the file


# -- small system helpers -------------------------------------------------------------------------

def _cli() -> list[str]:
    """This checkout's CLI, run with this interpreter (not whatever `chunkfs` is first on PATH)."""
    return [sys.executable, "-m", "chunkfs.cli"]


def _env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes; False if not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def syncfs(path: str) -> None:
    """syncfs(2) of the filesystem holding ``path`` (``sync -f``)."""
    run(["sync", "-f", path])


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


# -- the chunkfs mount ----------------------------------------------------------------------------

class ChunkfsMount:
    """One store, mounted and unmounted through the CLI as often as the cold tests need.

    ``peaks`` collects the daemon's VmHWM of every mount session (read just before unmounting).
    """

    def __init__(self, store: str, mnt: str, avg_size: str | None, mount_opts: str | None):
        self.store, self.mnt, self.mount_opts = store, mnt, mount_opts
        self.pid: int | None = None
        self.peaks: dict[str, int] = {}
        shutil.rmtree(store, ignore_errors=True)
        os.makedirs(mnt, exist_ok=True)
        run([*_cli(), "mkfs", store, *(["--avg-size", avg_size] if avg_size else [])], env=_env())
        with open(os.path.join(store, "chunkfs.json")) as fh:
            self.avg_size = json.load(fh)["avg_size"]

    def mount(self) -> None:
        opts = ["-o", self.mount_opts] if self.mount_opts else []
        run([*_cli(), "mount", self.store, self.mnt, *opts], env=_env(), timeout=300)
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
        if self.pid is not None:
            peak = vmhwm(self.pid)
            if peak is not None:
                self.peaks[session] = peak
        run([*_cli(), "umount", self.mnt, "--timeout", "600"], env=_env(), timeout=700)
        self.pid = None

    def stats(self) -> dict:
        return json.loads(run([*_cli(), "stats", self.mnt, "--json"], env=_env()).stdout)

    def set_readahead(self, kb: int) -> int | None:
        """Raise the mount's read-ahead via /sys/class/bdi/<mountpoint -d MNT>/read_ahead_kb; read back."""
        dev = run(["mountpoint", "-d", self.mnt]).stdout.strip()
        path = f"/sys/class/bdi/{dev}/read_ahead_kb"
        try:
            with open(path, "w") as fh:
                fh.write(f"{kb}\n")
            with open(path) as fh:
                return int(fh.read())
        except OSError:
            return None

    def readahead(self) -> int | None:
        dev = run(["mountpoint", "-d", self.mnt]).stdout.strip()
        try:
            with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as fh:
                return int(fh.read())
        except OSError:
            return None

    def cleanup(self) -> None:
        """Unmount if still mounted (never leave a daemon), then remove the store."""
        if os.path.ismount(self.mnt):
            subprocess.run([*_cli(), "umount", self.mnt, "--timeout", "600"], env={**os.environ, **_env()},
                           capture_output=True, timeout=700)
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        shutil.rmtree(self.store, ignore_errors=True)
        if not os.path.ismount(self.mnt):
            shutil.rmtree(self.mnt, ignore_errors=True)


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


def warm(path: str) -> None:
    """Read a file or tree so the source side of a copy is in the page cache for both targets alike."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for f in files:
        if os.path.islink(f):
            continue
        with open(f, "rb") as fh:
            while fh.read(IO_BLOCK):
                pass


# -- the tree of small files ----------------------------------------------------------------------

def tree_tar(scale: dict, work: str, seed: int) -> tuple[str, str]:
    """(tar path, description): a Django release sdist as a plain tar, or a generated tree (network-free)."""
    if scale["tree"] == "django":
        from benchmarks.releases import ReleaseUnavailable, release_tars
        cache = os.environ.get("CHUNKFS_BENCH_CACHE", os.path.join(REPO, "benchmarks", "cache"))
        try:
            [tar] = release_tars("django", (DJANGO_RELEASE,), cache)
            return tar, f"Django {DJANGO_RELEASE} sdist ({os.path.getsize(tar) / MB:.0f} MB tar)"
        except ReleaseUnavailable as exc:
            print(f"Django release unavailable ({exc}); using a generated tree", file=sys.stderr)
    count = scale["tree_files"] or 10000
    rng = random.Random(f"chunkfs-throughput:{seed}:tree")
    src = os.path.join(work, "gen-tree")
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    for i in range(count):
        d = os.path.join(src, f"pkg{i % 37:02d}", f"mod{i % 7}")
        os.makedirs(d, exist_ok=True)
        size = int(rng.lognormvariate(8.5, 1.0))  # median ~5 KB, like source files
        body = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
        with open(os.path.join(d, f"file{i}.py"), "wb") as fh:
            fh.write(body)
    tar = os.path.join(work, "gen-tree.tar")
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname="tree")
    shutil.rmtree(src)
    return tar, f"generated tree of {count} text files ({os.path.getsize(tar) / MB:.1f} MB tar)"


def count_entries(top: str) -> int:
    return 1 + sum(len(ds) + len(fs) for _, ds, fs in os.walk(top))


# -- one run -----------------------------------------------------------------------------------

def one_run(k: int, args, scale: dict, data: memoryview, tar_path: str, src_tree: str, work: str,
            log) -> dict:
    """Every operation on the plain directory and on a fresh chunkfs store; returns raw seconds and extras."""
    plain = os.path.join(work, "plain")
    shutil.rmtree(plain, ignore_errors=True)
    os.makedirs(plain)
    fs = ChunkfsMount(os.path.join(work, "store"), os.path.join(work, "mnt"), args.avg_size, args.mount_opts)
    targets = {"plain": plain, "chunkfs": fs.mnt}
    syncs = {"plain": [plain], "chunkfs": [fs.mnt, fs.store]}
    # Alternate which side goes first, so neither always meets a disk still busy with the other's writeback.
    order = ["plain", "chunkfs"] if k % 2 == 0 else ["chunkfs", "plain"]
    ops = args.ops
    res: dict = {"run": k + 1, "order": order, "seconds": {}, "extra": {}}
    size = len(data)
    head = bytes(data[:IO_BLOCK])
    entries = count_entries(src_tree)
    cold_ok = True

    def pair(op: str, fn, cold: bool = False) -> None:
        nonlocal cold_ok
        out = {}
        for side in order:
            if cold:
                cold_ok &= drop_caches()  # syncs first
            else:
                os.sync()  # untimed: neither side meets writeback the step before left dirty
            value = fn(side, targets[side])
            if isinstance(value, dict):
                res["extra"].setdefault(op, {})[side] = value
                if "command_seconds" in value:  # untar / rsync: also the ratio without the final syncfs
                    res["seconds"].setdefault(op + "_nosync", {})[side] = value["command_seconds"]
                value = value["seconds"]
            out[side] = value
        res["seconds"][op] = out
        log(f"  run {k + 1} {op:<13} plain {out['plain']:8.3f} s  chunkfs {out['chunkfs']:8.3f} s  "
            f"ratio {out['plain'] / out['chunkfs']:.3f}")

    try:
        fs.mount()
        big = "big.bin"
        # --- write session: sequential write, 4 KiB append, untar, rsync
        pair("seq_write", lambda side, top: seq_write(os.path.join(top, big), data))
        res["extra"]["append"] = append_test(fs, plain, big, res["seconds"]["seq_write"], order)
        log(f"  run {k + 1} append        " + _append_line(res["extra"]["append"]))
        size += RANDOM_BLOCK
        if {"untar", "rsync", "find_stat"} & set(ops):
            warm(tar_path)
            pair("untar", lambda side, top: untar(tar_path, os.path.join(top, "untar"), syncs[side]))
        if "rsync" in ops:
            warm(src_tree)
            pair("rsync", lambda side, top: rsync(src_tree, os.path.join(top, "rsync"), syncs[side]))
        res["extra"]["store_after_writes"] = fs.stats()
        fs.umount("write")

        # --- cold sessions: a fresh mount for each, caches dropped before each side.  The two sequential
        # read sessions swap places every run: the plain side's second "cold" read in a row tends to be
        # faster (the VM's disk is cached by its host), and that must not always favour the same variant.
        seq_sessions = [op for op in ("cold_read", "cold_read_ra") if op in ops]
        for op in (seq_sessions if k % 2 == 0 else seq_sessions[::-1]):
            fs.mount()
            default_kb = fs.readahead()
            res["extra"]["readahead_default_kb"] = default_kb
            if op == "cold_read_ra":
                res["extra"]["readahead_variant_kb"] = fs.set_readahead(variant_readahead(args, default_kb))
            pair(op, lambda side, top: cold_read(os.path.join(top, big), size, head), cold=True)
            fs.umount(op)
        if "random_read" in ops:
            fs.mount()
            pair("random_read", lambda side, top: random_read(os.path.join(top, big), size - RANDOM_BLOCK,
                                                              scale["random_reads"], args.seed + k), cold=True)
            fs.umount("random_read")
        if "find_stat" in ops:
            fs.mount()
            pair("find_stat", lambda side, top: find_stat(os.path.join(top, "untar"), entries), cold=True)
            fs.umount("find_stat")
            counts = {s: v["entries"] for s, v in res["extra"]["find_stat"].items()}
            if counts["plain"] != counts["chunkfs"]:
                raise ToolError(f"find saw {counts} entries: the trees differ")
    finally:
        fs.cleanup()
        shutil.rmtree(plain, ignore_errors=True)
    res["rss_peak_bytes"] = fs.peaks
    res["cold_caches_dropped"] = cold_ok
    log(f"  run {k + 1} daemon peak RSS (VmHWM) by session: "
        + ", ".join(f"{s} {v / MiB:.0f} MiB" for s, v in fs.peaks.items()))
    return res


def append_test(fs: ChunkfsMount, plain: str, name: str, seq_seconds: dict, order: list[str]) -> dict:
    """Append 4 KiB to the committed file (write + fsync + close); store growth from `chunkfs stats`."""
    payload = os.urandom(RANDOM_BLOCK)
    before = fs.stats()
    out: dict = {"avg_chunk_size": fs.avg_size}
    for side in order:
        path = os.path.join(plain if side == "plain" else fs.mnt, name)
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


# -- summary, report --------------------------------------------------------------------------

def summarize(runs: list[dict], file_size: int) -> dict:
    """Median of the per-run ratios (plain seconds / chunkfs seconds), with every run's ratio and speed."""
    summary: dict = {}
    for op, (_, target) in OPS.items():
        pairs = [r["seconds"][op] for r in runs if op in r["seconds"]]
        if not pairs:
            continue
        ratios = [p["plain"] / p["chunkfs"] for p in pairs]
        row = {"ratio_median": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
               "plain_seconds": [round(p["plain"], 4) for p in pairs],
               "chunkfs_seconds": [round(p["chunkfs"], 4) for p in pairs], "target": target,
               "met": None if target is None else statistics.median(ratios) >= target}
        if op in ("seq_write", "cold_read", "cold_read_ra"):
            row["plain_mb_s"] = round(file_size / MB / statistics.median(row["plain_seconds"]), 1)
            row["chunkfs_mb_s"] = round(file_size / MB / statistics.median(row["chunkfs_seconds"]), 1)
        if op == "random_read":
            iops = {s: [r["extra"]["random_read"][s]["iops"] for r in runs] for s in ("plain", "chunkfs")}
            row["plain_iops"] = round(statistics.median(iops["plain"]))
            row["chunkfs_iops"] = round(statistics.median(iops["chunkfs"]))
            row["tool"] = runs[0]["extra"]["random_read"]["plain"]["tool"]
        summary[op] = row
    appends = [r["extra"]["append"] for r in runs]
    frac = statistics.median(a["fraction_of_seq_write"] for a in appends)
    growth = statistics.median(a["growth_avg_chunks"] for a in appends)
    summary["append"] = {
        "chunkfs_ms": [round(a["chunkfs_seconds"] * 1000, 2) for a in appends],
        "chunkfs_steps_ms": [a["chunkfs_steps_ms"] for a in appends],
        "plain_ms": [round(a["plain_seconds"] * 1000, 2) for a in appends],
        "fraction_of_seq_write_median": frac, "growth_avg_chunks_median": growth,
        "disk_bytes_growth": [a.get("disk_bytes_growth") for a in appends],
        "stored_bytes_growth": [a.get("stored_bytes_growth") for a in appends],
        "met": frac < APPEND_MAX_FRACTION and growth < APPEND_MAX_CHUNKS}
    peaks = [max(r["rss_peak_bytes"].values()) for r in runs if r["rss_peak_bytes"]]
    by_session: dict[str, int] = {}
    for r in runs:
        for s, v in r["rss_peak_bytes"].items():
            by_session[s] = max(by_session.get(s, 0), v)
    summary["rss"] = {"peak_mib": round(max(peaks) / MiB, 1) if peaks else None,
                      "per_run_mib": [round(p / MiB, 1) for p in peaks],
                      "by_session_mib": {s: round(v / MiB, 1) for s, v in by_session.items()},
                      "target_mib": RSS_TARGET // MiB,
                      "met": (max(peaks) <= RSS_TARGET) if peaks else None,
                      "target_applies": file_size >= 4 * GiB}
    return summary


def _readahead_label(op: str, label: str, runs: list[dict]) -> str:
    """The cold read rows name the read-ahead each run really had (read back from sysfs)."""
    key = {"cold_read": "readahead_default_kb", "cold_read_ra": "readahead_variant_kb"}.get(op)
    if key is None:
        return label
    values = sorted({r["extra"].get(key) for r in runs}, key=str)
    head = "cold sequential read" + (" (remount + drop_caches)" if op == "cold_read" else "")
    which = "mount default" if op == "cold_read" else "set after mounting"
    return f"{head}, read-ahead {'/'.join(str(v) for v in values)} KiB ({which})"


def _fmt_target(row: dict) -> str:
    if row.get("target") is None:
        return "–"
    return f"≥ {row['target']:.2f} ({'met' if row['met'] else 'NOT met'})"


def markdown(meta: dict, summary: dict, runs: list[dict]) -> str:
    lines = ["# chunkfs throughput against a plain directory on the same disk", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- machine: {meta['machine'].get('nproc')} CPUs ({meta['machine'].get('cpu', '')}), "
             f"{meta['machine'].get('mem_gib')} GiB RAM, kernel {meta['machine'].get('kernel')}, "
             f"disk {meta['disk']} (read-ahead {meta.get('plain_read_ahead_kb')} KiB), "
             f"pyfuse3 {meta['machine'].get('pyfuse3')}, libfuse "
             f"{meta['machine'].get('libfuse')}, {meta['machine'].get('fio')}",
             f"- chunkfs commit: {meta['git_commit']}; store: avg chunk {meta['avg_chunk_size'] // KiB} KiB, "
             f"mount options: {meta['mount_opts'] or 'defaults'}",
             f"- scale: {meta['scale']} (file {meta['file_size'] / MiB:.0f} MiB, "
             f"{meta['random_reads']} random reads, tree: {meta['tree']}), {len(runs)} runs",
             f"- load average at start / end: {meta['load_start']} / {meta.get('load_end', '?')}", "",
             "| operation | ratio (median) | ratio per run | plain | chunkfs | target (issue 4) |",
             "|---|---|---|---|---|---|"]
    for op, (label, _) in OPS.items():
        row = summary.get(op)
        if row is None:
            continue
        label = _readahead_label(op, label, runs)
        if "plain_mb_s" in row:
            speeds = f"{row['plain_mb_s']} MB/s", f"{row['chunkfs_mb_s']} MB/s"
        elif "plain_iops" in row:
            speeds = f"{row['plain_iops']} IOPS", f"{row['chunkfs_iops']} IOPS"
        else:
            speeds = (f"{statistics.median(row['plain_seconds']):.2f} s",
                      f"{statistics.median(row['chunkfs_seconds']):.2f} s")
        lines.append(f"| {label} | **{row['ratio_median']:.2f}** | "
                     f"{', '.join(f'{x:.2f}' for x in row['ratios'])} | {speeds[0]} | {speeds[1]} | "
                     f"{_fmt_target(row)} |")
    a, rss = summary["append"], summary["rss"]
    lines += ["", "## Append 4 KiB to the committed file (open + write + fsync + close)", "",
              f"- chunkfs: {', '.join(f'{x:.1f}' for x in a['chunkfs_ms'])} ms "
              f"(median {100 * a['fraction_of_seq_write_median']:.2f}% of the sequential write; target < 5%); "
              f"plain: {', '.join(f'{x:.1f}' for x in a['plain_ms'])} ms",
              "- chunkfs steps (ms): " + "; ".join(", ".join(f"{k} {v:.1f}" for k, v in st.items())
                                                   for st in a["chunkfs_steps_ms"]),
              f"- store growth (du of the store, from `chunkfs stats`): "
              f"{', '.join(str(x) for x in a['disk_bytes_growth'])} bytes = median "
              f"{a['growth_avg_chunks_median']} average chunks (target < 4); unique chunk bytes: "
              f"{', '.join(str(x) for x in a['stored_bytes_growth'])}",
              f"- {'met' if a['met'] else 'NOT met'}", "",
              "## Daemon peak RSS (VmHWM, read before each unmount)", "",
              f"- peak {rss['peak_mib']} MiB over all runs (per run: "
              f"{', '.join(str(x) for x in rss['per_run_mib'])}); by session: "
              + ", ".join(f"{s} {v} MiB" for s, v in rss["by_session_mib"].items()),
              f"- target ≤ {rss['target_mib']} MiB while writing and reading 4 GiB files: "
              + ("met" if rss["met"] else "NOT met") + ("" if rss["target_applies"] else
                                                        " at this file size (the target is for --huge)"),
              "", "## How it was measured", "", *(f"- {n}" for n in NOTES)]
    if not all(r["cold_caches_dropped"] for r in runs):
        lines.append("- WARNING: the page cache could not be dropped (not root): cold figures are warm")
    return "\n".join(lines) + "\n"


NOTES = [
    "ratio = plain seconds / chunkfs seconds for the same operation, run back to back in the same run "
    "(1.0 = as fast as the plain directory); the headline is the median of the per-run ratios. "
    "Which side goes first alternates between runs.",
    "Each run uses a fresh store (mkfs), mounted with this checkout's `chunkfs mount`; the plain directory is "
    "on the same filesystem as the store.",
    "sequential write: 1 MiB write() calls from a buffer of random bytes (unique data, nothing dedups), then "
    "fsync and close, all timed. chunkfs's fsync makes its packs and index durable.",
    "cold reads: chunkfs is unmounted and mounted again before each cold test (so the daemon's chunk cache is "
    "empty), and `sync; echo 3 > /proc/sys/vm/drop_caches` runs before each side. Sequential reads use 1 MiB "
    "read() calls; one session reads at the mount's default read-ahead, the other after writing another "
    "value (1024, or 128 if the default is 1024) to /sys/class/bdi/<mountpoint -d MNT>/read_ahead_kb; the "
    "two sessions swap order every run (the plain side keeps its block device's read-ahead, shown in the "
    "machine line).",
    "random reads: fio, `--rw=randread --bs=4k --ioengine=psync --norandommap --invalidate=0`, a fixed number "
    "of reads over the file (same seed for both sides in a run); ratio = chunkfs IOPS / plain IOPS. Buffered "
    "reads (O_DIRECT is not available through this FUSE mount), so the kernel's read-ahead applies to both.",
    "untar: `tar -xf` of the tree's tar (read from the page cache) into an empty directory, then `sync -f` of "
    "the target (for chunkfs also of the store's filesystem, so its packs reach the disk as the plain files "
    "do). rsync: `rsync -a` of the unpacked tree (page cache warm) into an empty directory, same syncs. "
    "syncfs flushes everything dirty on that filesystem, other users' writes too, so the rows 'alone' give "
    "the ratio of the commands without it. Before each side of every timed operation that is not cold, an "
    "untimed `sync` writes back what earlier steps left dirty (the 1 GiB files, the other side's tree), so "
    "neither side pays for the other's writeback.",
    "find + stat: `find DIR -printf '%i %s %m %T@\\n'` (one lstat per entry) over the untarred tree, cold.",
    "append: open with O_APPEND, write 4 KiB, fsync, close (all timed, and each step apart); the store's growth is "
    "the change of `chunkfs stats --json` disk_bytes (du of the store directory) across the append.",
    "peak RSS: VmHWM of the daemon (pid from the store's lock file) read just before each unmount; the write "
    "session covers the sequential write, the append, untar and rsync.",
    "The machine has 2 cores shared with other engineers' test runs: ratios move between runs; compare only "
    "figures from the same run, and look at the per-run column before trusting a median.",
]


def write_chart(path: str, meta: dict, summary: dict) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    ops = [op for op in OPS if op in summary]
    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    for i, op in enumerate(ops):
        row = summary[op]
        ax.bar(i, row["ratio_median"], 0.6, color="#4c72b0")
        ax.plot([i] * len(row["ratios"]), row["ratios"], "o", color="black", markersize=3)
        if row["target"] is not None:
            ax.hlines(row["target"], i - 0.35, i + 0.35, colors="#c44e52", linewidth=2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(ops)), [op.replace("_", " ") for op in ops], rotation=15, fontsize=8)
    ax.set_ylabel("speed vs plain directory (ratio)")
    ax.set_title(f"chunkfs throughput, {meta['scale']} scale, avg chunk {meta['avg_chunk_size'] // KiB} KiB, "
                 f"{meta['date'][:10]}\nbars: median; dots: runs; red: issue 4 target", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True


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
    args = ap.parse_args(argv)
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
    try:
        log(f"throughput ({scale_name}): generating {scale['file_size'] / MiB:.0f} MiB of random data, tree")
        data = memoryview(_random_bytes(scale["file_size"], args.seed))
        tar_path, meta["tree"] = tree_tar(scale, work, args.seed)
        src_tree = os.path.join(work, "src-tree")
        os.makedirs(src_tree)
        run(["tar", "-xf", tar_path, "-C", src_tree])
        for k in range(args.runs):
            log(f"run {k + 1}/{args.runs} (load {_load()})")
            runs.append(one_run(k, args, scale, data, tar_path, src_tree, work, log))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_end"] = _load()
    meta["avg_chunk_size"] = runs[0]["extra"]["append"]["avg_chunk_size"]
    summary = summarize(runs, scale["file_size"])
    with open(os.path.join(out, "throughput.json"), "w") as fh:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, fh, indent=2)
        fh.write("\n")
    chart = write_chart(os.path.join(out, "throughput.png"), meta, summary)
    text = markdown(meta, summary, runs) + ("\n![throughput](throughput.png)\n" if chart else "")
    with open(os.path.join(out, "throughput.md"), "w") as fh:
        fh.write(text)
    log(text)
    log(f"results: {out}/throughput.md")
    return 0


def _random_bytes(n: int, seed: int) -> bytearray:
    """n unique random bytes (nothing in them dedups); os.urandom: ~300 MB/s here, untimed."""
    buf = bytearray(n)
    view = memoryview(buf)
    for off in range(0, n, 64 * MiB):
        view[off:off + 64 * MiB] = os.urandom(min(64 * MiB, n - off))
    return buf


if __name__ == "__main__":
    sys.exit(main())
