"""One command for the dedup benchmark: generate workloads, run chunkfs and peers, write tables and charts.

    python -m benchmarks.run --quick                 # all workloads, chunkfs + every peer
    python -m benchmarks.run --tiny --peers none     # CI: seconds, no network, chunkfs only
    python benchmarks/run.py --workloads pool,prefix --peers borg,bup --chunkfs-avg 16K,64K

Workload data goes to a scratch directory (removed afterwards unless
--keep-work); results go to --out (default benchmarks/results/<date>-<scale>).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python benchmarks/run.py`, and the repo's chunkfs over any installed one
    sys.path.insert(0, REPO)

from benchmarks import chunkfs_bench, peers, report, workloads  # noqa: E402
from benchmarks.common import MB, Result  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few minutes on 2 cores")
    size.add_argument("--tiny", action="store_true", help="seconds; for CI (no release download)")
    ap.add_argument("--out", help="results directory (default benchmarks/results/<date>-<scale>)")
    ap.add_argument("--workloads", help=f"comma list from: {','.join(workloads.ALL)} (default: all; "
                                         "tiny leaves out the release archives)")
    ap.add_argument("--peers", default=",".join(peers.PEERS),
                    help=f"comma list from: {','.join(peers.PEERS)}, or 'none' (default: all)")
    ap.add_argument("--chunkfs-avg", default="",
                    help="extra chunkfs runs at these average chunk sizes, e.g. 16K,64K "
                         "(the store's default size always runs)")
    ap.add_argument("--chunkfs-compression", default="none,nodict,dict",
                    help="how chunkfs stores chunks, one run each: none (no compression), nodict (zstd without "
                         "a dictionary), dict (zstd with the store dictionary: the default, named plain "
                         "'chunkfs'); a comma list (default: all three)")
    ap.add_argument("--peer-compression", choices=("on", "off"), default="on",
                    help="peers with their compression on (borg zstd, restic auto, casync zstd, bup's zlib, "
                         "zfs-fuse zstd, lz4 or its default, whichever it has; the default) or off where they "
                         "can turn it off (the dedup-only comparison)")
    ap.add_argument("--no-chunkfs", action="store_true", help="peers only")
    ap.add_argument("--mount", action="store_true",
                    help="also measure chunkfs through a mount (cp -a into it; needs `chunkfs mount`)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work-dir", help="where workloads and repositories are written (default: $TMPDIR)")
    ap.add_argument("--keep-work", action="store_true", help="keep generated workloads afterwards")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing peers")
    ap.add_argument("--throughput", action="store_true",
                    help="afterwards also run the mount throughput benchmark (benchmarks/throughput.py) at the "
                         "matching scale (tiny -> --tiny, quick -> --quick, full -> --huge) into OUT/throughput/; "
                         "needs root and /dev/fuse")
    ap.add_argument("--throughput-runs", type=int, default=3, help="runs of the throughput benchmark (default 3)")
    return ap.parse_args(argv)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]


def _variants(text: str) -> list[str]:
    """The chunkfs compression variants asked for ('none' is one of them, not an empty list)."""
    return [t.strip() for t in text.split(",") if t.strip()]


class Progress:
    """Log lines that do not fight with a tqdm bar (plain prints when tqdm is absent)."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="run", leave=False, file=sys.stderr,
                            disable=not sys.stderr.isatty())
            self._write = tqdm.write
        except ImportError:
            self.bar, self._write = None, print

    def log(self, line: str) -> None:
        self._write(line)
        sys.stdout.flush()

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "chunkfs"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "no commit") + (" + uncommitted changes in chunkfs/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM"


def _meta(args, scale_name: str) -> dict:
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(), "python": platform.python_version(),
            "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in args.argv),
            "scale": scale_name, "scale_params": {k: v for k, v in workloads.SCALES[scale_name].items()},
            "peer_compression": args.peer_compression,
            "seed": args.seed, "git_commit": _git_commit(), "versions": {}, "skipped": []}


def _tools(args, ready: dict) -> list[tuple[str, object]]:
    """(name, measure(workload, scratch) -> Result) for every tool of this run, chunkfs first."""
    tools: list[tuple[str, object]] = []
    if not args.no_chunkfs:
        for variant in _variants(args.chunkfs_compression):
            if variant != "dict":
                tools.append((chunkfs_bench.label(None, variant),
                              lambda wl, s, v=variant: chunkfs_bench.measure_api(wl, s, None, v)))
        for avg in [None, *_split(args.chunkfs_avg)]:
            if avg is None and "dict" not in _variants(args.chunkfs_compression):
                continue
            tools.append((chunkfs_bench.label(avg), lambda wl, s, a=avg: chunkfs_bench.measure_api(wl, s, a)))
            if args.mount:
                tools.append((chunkfs_bench.label(avg) + "-mount",
                              lambda wl, s, a=avg: chunkfs_bench.measure_mount(wl, s, a)))
    for name, peer in ready.items():
        tools.append((name, lambda wl, s, p=peer: peers.measure(p, wl, s)))
    return tools


def run_all(args, scale_name: str, names: list[str], scratch: str, meta: dict, save=lambda wl, res: None):
    """Generate each workload in turn, run every tool on it, then drop it (full scale is large).

    ``save`` is called after each workload, so an interrupted long run keeps what it measured.
    """
    ready = peers.setup_peers(_split(args.peers), scratch, install=not args.no_install,
                              log=lambda ln: (meta["skipped"].append(ln), print(ln)),
                              compress=args.peer_compression == "on")
    meta["versions"].update({n: p.version_string for n, p in ready.items()})
    tools = _tools(args, ready)
    if not args.no_chunkfs:
        import_error = chunkfs_bench.api_unavailable()
        for name, _ in tools:
            if name.startswith("chunkfs"):
                meta["versions"][name] = import_error or _chunkfs_version()
    done_wl, results = [], []
    progress = Progress(len(names) * len(tools))
    try:
        for name in names:
            wl = _generate(name, scratch, scale_name, args, progress, meta)
            if wl is None:
                continue
            done_wl.append(wl)
            for tool, fn in tools:
                progress.step(f"{name}: {tool}")
                result: Result = fn(wl, scratch)
                results.append(result)
                progress.log(result.line())
            if not args.keep_work:
                shutil.rmtree(wl.path, ignore_errors=True)
            save(done_wl, results)
    finally:
        progress.close()
        for peer in ready.values():
            peer.teardown()
    return done_wl, results


def _chunkfs_version() -> str:
    import chunkfs
    return f"chunkfs {getattr(chunkfs, '__version__', '?')}"


def _generate(name, scratch, scale_name, args, progress, meta):
    start = time.perf_counter()
    try:
        wl = workloads.generate(name, os.path.join(scratch, "data"), scale_name, args.seed, _cache_dir())
    except workloads.WorkloadSkipped as exc:
        line = f"skip workload {name}: {exc}"
        meta["skipped"].append(line)
        progress.log(line)
        return None
    ideal = "n/a" if wl.ideal_pct is None else f"{wl.ideal_pct:.2f}%"
    progress.log(f"== {name}: {len(wl.files)} files, {wl.logical_bytes / MB:.1f} MB, ideal {ideal} "
                 f"(generated in {time.perf_counter() - start:.1f} s)")
    return wl


def _cache_dir() -> str:
    return os.environ.get("CHUNKFS_BENCH_CACHE", os.path.join(REPO, "benchmarks", "cache"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    scale_name = "quick" if args.quick else "tiny" if args.tiny else "full"
    names = _split(args.workloads) if args.workloads else list(workloads.DEFAULT_WORKLOADS[scale_name])
    unknown = [n for n in names if n not in workloads.ALL]
    bad_peers = [p for p in _split(args.peers) if p not in peers.PEERS]
    bad_peers += [v for v in _variants(args.chunkfs_compression) if v not in chunkfs_bench.COMPRESSION_VARIANTS]
    if unknown or bad_peers:
        print(f"unknown workload(s), peer(s) or compression variant(s): {', '.join(unknown + bad_peers)}",
              file=sys.stderr)
        return 2
    out = args.out or os.path.join(REPO, "benchmarks", "results",
                                   f"{dt.date.today().isoformat()}-{scale_name}")
    os.makedirs(out, exist_ok=True)
    meta = _meta(args, scale_name)
    scratch = tempfile.mkdtemp(prefix="chunkfs-bench-", dir=args.work_dir)
    def save(done_wl, results):
        report.write_json(os.path.join(out, "results.json"), meta, done_wl, results)
        report.write_markdown(os.path.join(out, "results.md"), meta, done_wl, results, [])

    try:
        done_wl, results = run_all(args, scale_name, names, scratch, meta, save)
    finally:
        if not args.keep_work:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"work kept in {scratch}")
    charts = report.write_charts(out, meta, done_wl, results)
    report.write_json(os.path.join(out, "results.json"), meta, done_wl, results)
    report.write_markdown(os.path.join(out, "results.md"), meta, done_wl, results, charts)
    print(f"results: {out}/results.md")
    if args.throughput:
        return _throughput(args, scale_name, out)
    return 0


def _throughput(args, scale_name: str, out: str) -> int:
    """The mount throughput benchmark at the scale matching this run (see benchmarks/throughput.py)."""
    from benchmarks import throughput
    flag = {"tiny": "--tiny", "quick": "--quick", "full": "--huge"}[scale_name]
    argv = [flag, "--runs", str(args.throughput_runs), "--out", os.path.join(out, "throughput"),
            *(["--work-dir", args.work_dir] if args.work_dir else [])]
    print(f"throughput: python -m benchmarks.throughput {' '.join(argv)}")
    return throughput.main(argv)


if __name__ == "__main__":
    sys.exit(main())
