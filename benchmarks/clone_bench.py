"""Issue 17's benchmark: clone, du and rmtree of a big tree inside a mount, against ``cp -a`` of it.

    python -m benchmarks.clone_bench                 # 10,000 files, 2 GiB (the issue's scale)
    python -m benchmarks.clone_bench --quick         # 2,000 files, 256 MiB
    python -m benchmarks.clone_bench --files 500 --size 64M --runs 2

A tree of random files (sizes spread from 1 KiB to several times the mean,
one directory per 100 files) is written into a fresh chunkfs mount with
``cp -a``; then, in the same session, each of these is timed ``--runs``
times (wall clock of the command, Python start included) and the median
quoted:

* ``cp -a`` of the tree to another name inside the mount (reads and re-hashes
  every byte: the baseline; the page cache is dropped first), then at once
  ``chunkfs clone`` of it, run after run: the median of the per-run ratios is
  the headline (the daemon's own part of the clone, as the command reports
  it, and its CPU time are recorded too);
* the store's growth per clone (``stats``: disk bytes, which include the
  LMDB index) as a share of the tree's logical size;
* ``chunkfs du`` of the tree, and of the whole mount with ``--depth 1``;
* ``chunkfs rmtree`` of a clone (return time), and how long until the
  background deletion finished (``--wait`` on another clone);
* ``cp`` of one big file inside the mount against ``chunkfs clone`` of it
  (``cp`` cannot be metadata-only: pyfuse3 has no copy_file_range, docs/usage.md).

Results are printed as JSON and a Markdown table (``--out FILE`` writes the
JSON too).  Numbers go to docs/benchmarks.md, never into tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ToolError, checkout_env, chunkfs_cli, run
from benchmarks.mounts import ChunkfsMount

GiB = 1 << 30


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def make_tree(root: str, files: int, total: int, seed: int) -> int:
    """``files`` random files adding up to about ``total`` bytes, 100 per directory; returns the bytes."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.5) for _ in range(files)]
    scale = total / sum(weights)
    written = 0
    for i, weight in enumerate(weights):
        directory = os.path.join(root, f"d{i // 100:03d}")
        os.makedirs(directory, exist_ok=True)
        size = max(1024, int(weight * scale))
        with open(os.path.join(directory, f"f{i:05d}"), "wb") as fh:
            for start in range(0, size, 8 << 20):  # random: no chunk repeats anywhere
                fh.write(rng.randbytes(min(8 << 20, size - start)))
        written += size
    return written


def timed(cmd: list[str]) -> float:
    return timed_output(cmd)[0]


def timed_output(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = run(cmd, env=checkout_env(), timeout=3600)
    return time.perf_counter() - started, proc.stdout


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, ValueError, IndexError):
        return 0.0


def settle(mount: ChunkfsMount, files: int, timeout: float = 300.0) -> None:
    """Wait until the store holds ``files`` files again (the daemon purged the removed ones)."""
    deadline = time.monotonic() + timeout
    while mount.stats()["files"] > files and time.monotonic() < deadline:
        time.sleep(0.5)


def drop_caches() -> None:
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        pass


def measure(args) -> dict:
    cli = chunkfs_cli()
    work = args.work_dir or tempfile.mkdtemp(prefix="chunkfs-clone-bench-")
    plain = os.path.join(work, "plain")
    mount = ChunkfsMount(os.path.join(work, "store"), os.path.join(work, "mnt"), None, None)
    out: dict = {"files": args.files, "runs": args.runs}
    try:
        out["logical_bytes"] = make_tree(plain, args.files, args.size, args.seed)
        mount.mount()
        src = os.path.join(mount.mnt, "src")
        out["setup_cp_into_mount_s"] = timed(["cp", "-a", plain, src])
        base = mount.stats()
        cp_times, clone_times, daemon_times, daemon_cpu, growth = [], [], [], [], []
        for n in range(args.runs):  # interleaved, so that both see the same load on this shared machine
            drop_caches()
            cp_times.append(timed(["cp", "-a", src, os.path.join(mount.mnt, "cp")]))
            before, cpu = mount.stats(), cpu_seconds(mount.pid)
            seconds, said = timed_output([*cli, "clone", src, os.path.join(mount.mnt, f"clone{n}")])
            daemon_cpu.append(cpu_seconds(mount.pid) - cpu)
            clone_times.append(seconds)
            daemon_times.append(float(said.rsplit(" in ", 1)[1].split()[0]))  # "... in 0.42 s": the daemon's part
            after = mount.stats()
            growth.append(after["disk_bytes"] - before["disk_bytes"])
            assert after["stored_bytes"] == before["stored_bytes"], "a clone stored chunk data"
            run(["rm", "-rf", os.path.join(mount.mnt, "cp")])
            settle(mount, after["files"] - args.files)  # the daemon purges what rm removed: let it finish
        out["cp_a_s"], out["clone_s"], out["clone_daemon_s"] = cp_times, clone_times, daemon_times
        out["clone_daemon_cpu_s"] = daemon_cpu
        out["clone_speedup_median"] = statistics.median(c / k for c, k in zip(cp_times, clone_times))
        out["growth_bytes"] = growth
        out["growth_pct_of_logical_median"] = 100 * statistics.median(growth) / out["logical_bytes"]
        out["index_bytes_after_clones"] = mount.stats()["index_bytes"] - base["index_bytes"]
        out["du_tree_s"] = [timed([*cli, "du", src]) for _ in range(args.runs)]
        out["du_mount_depth1_s"] = [timed([*cli, "du", "-d", "1", mount.mnt]) for _ in range(args.runs)]
        out["rmtree_return_s"] = [timed([*cli, "rmtree", "-q", os.path.join(mount.mnt, f"clone{n}")])
                                  for n in range(args.runs - 1)]
        extra = os.path.join(mount.mnt, "clone-wait")
        run([*cli, "clone", "-q", src, extra], env=checkout_env())
        out["rmtree_wait_s"] = timed([*cli, "rmtree", "-q", "--wait", extra])
        out.update(big_file(mount, cli, args))
    finally:
        mount.cleanup()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return out


def big_file(mount: ChunkfsMount, cli: list[str], args) -> dict:
    """cp of one big file inside the mount, against a clone of it."""
    path = os.path.join(mount.mnt, "big")
    with open(path, "wb") as fh:
        for _ in range(args.big // (8 << 20)):
            fh.write(os.urandom(8 << 20))
    cp, clone = [], []
    for n in range(args.runs):
        drop_caches()
        cp.append(timed(["cp", path, f"{path}.cp{n}"]))
        clone.append(timed([*cli, "clone", "-q", path, f"{path}.clone{n}"]))
    return {"big_file_bytes": args.big // (8 << 20) * (8 << 20), "big_cp_s": cp, "big_clone_s": clone}


def table(r: dict) -> str:
    med = statistics.median
    rows = [
        ("tree", f"{r['files']:,} files, {r['logical_bytes'] / GiB:.2f} GiB"),
        ("`cp -a` inside the mount", f"{med(r['cp_a_s']):.2f} s"),
        ("`chunkfs clone`", f"{med(r['clone_s']):.2f} s ({r['clone_speedup_median']:.0f}× faster: median of the "
                            "per-run ratios)"),
        ("of which the daemon's work", f"{med(r['clone_daemon_s']):.2f} s, {med(r['clone_daemon_cpu_s']):.2f} s "
                                       "of its CPU (the rest: starting the command)"),
        ("store growth per clone", f"{med(r['growth_bytes']) / (1 << 20):.1f} MiB "
                                   f"({r['growth_pct_of_logical_median']:.2f} % of the tree)"),
        ("`chunkfs du` of the tree", f"{med(r['du_tree_s']):.2f} s"),
        ("`chunkfs du -d 1` of the mount", f"{med(r['du_mount_depth1_s']):.2f} s"),
        ("`chunkfs rmtree` returns after", f"{med(r['rmtree_return_s']):.2f} s"),
        ("`chunkfs rmtree --wait` (all deleted)", f"{r['rmtree_wait_s']:.2f} s"),
        (f"`cp` of a {r['big_file_bytes'] / GiB:.1f} GiB file", f"{med(r['big_cp_s']):.2f} s"),
        ("`chunkfs clone` of it", f"{med(r['big_clone_s']):.2f} s"),
    ]
    runs = f"medians of {r['runs']} runs" if r["runs"] > 1 else "one run"
    return "\n".join([f"| {runs} | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clone_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=parse_size, default=2 * GiB, help="total size of the tree (default 2G)")
    parser.add_argument("--big", type=parse_size, default=1 * GiB, help="the big file for cp vs clone (1G)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 files, 256 MiB, a 256 MiB big file")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--work-dir")
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.size, args.big = 2000, 256 << 20, 256 << 20
    args.runs = max(2, args.runs)
    try:
        result = measure(args)
    except ToolError as exc:
        print(f"clone_bench: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    print()
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
