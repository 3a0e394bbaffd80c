"""Paired A/B of the read and stat paths' CPU: this checkout against an earlier one, in-process.

    python -m benchmarks.read_path_ab --baseline CHECKOUT [--rounds 3]

Through a mount, cold reads move by 20 % or more between runs on this machine (two chunkfs sides reading
the same records differ that much in one run: docs/benchmarks.md), far more than a few microseconds of CPU
per request.  This measures the CPU of the same requests without FUSE and without the disk: each side
mounts its own fresh store (its own ``chunkfs mkfs``/``mount``, so the store has that side's format), writes
a file of random bytes (256 MiB, ``--file-mib``) and untars the Django tree, unmounts, and then a child process with that
side's chunkfs opens the store in its filesystem core (``FsCore``, no chunk cache, the packs in the page
cache) and times, median of 5 passes each:

- ``random_us``: 20,000 reads of 4 KiB at random offsets (the FUSE adapter's call, ``nowait`` where it has one);
- ``seq128k_ms``: the file read in 128 KiB requests (the kernel's read-ahead requests);
- ``stat_us``: per entry of the tree, readdir + lookup + getattr (what ``find`` costs the daemon).

Each round runs both sides, the first alternating; the report gives baseline ÷ this checkout per round
(above 1: this checkout is faster).  Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

MIB = 1 << 20
HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
PASSES = 5


def _build(checkout: str, work: str, tar_path: str, size: int) -> str:
    """A store made and filled through a mount of the side's chunkfs; returns its path."""
    env = {**os.environ, "PYTHONPATH": checkout}
    cli = [sys.executable, "-P", "-m", "chunkfs.cli"]  # -P: the side's chunkfs, not the current directory's
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    _cli_run([*cli, "mkfs", store, "--compression", "none"] if _has_compression(checkout)
             else [*cli, "mkfs", store], env)
    _cli_run([*cli, "mount", store, mnt], env)
    try:
        with open(os.path.join(mnt, "f"), "wb") as fh:
            for _ in range(size // MIB):
                fh.write(os.urandom(MIB))
        os.makedirs(os.path.join(mnt, "t"))
        subprocess.run(["tar", "-xf", tar_path, "-C", os.path.join(mnt, "t")], check=True)
    finally:
        _cli_run([*cli, "umount", mnt], env)
    return store


def _cli_run(command: list[str], env: dict[str, str]) -> None:
    """Run a chunkfs command; if it fails, stop with what it printed (a busy mount says so)."""
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"read_path_ab: {' '.join(command[3:])} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")


def _has_compression(checkout: str) -> bool:
    """Whether the side's mkfs knows --compression (the sides compare the engine, not the codec)."""
    return os.path.exists(os.path.join(checkout, "chunkfs", "store", "_compression.py"))


def _measure(store_path: str) -> dict:
    """In the child: the three timings on the side's FsCore over ``store_path``."""
    import random  # noqa: PLC0415
    import stat  # noqa: PLC0415
    import time  # noqa: PLC0415

    from chunkfs.errors import WouldBlock  # noqa: PLC0415
    from chunkfs.fs.core import FsCore  # noqa: PLC0415
    from chunkfs.store import ChunkStore  # noqa: PLC0415

    store = ChunkStore.open(store_path, cache_size=0)
    core = FsCore(store, root_uid=0, root_gid=0)
    ino = core.lookup(1, b"f").ino
    size = core.getattr(ino).size
    fh = core.open(ino, os.O_RDONLY)[0]
    old_api = hasattr(core, "read_now_around")  # before issue 20's nowait reads

    def read(offset: int, length: int) -> None:
        if old_api:
            if core.read_now_around(fh, offset, length) is None:
                core.read(fh, offset, length)
            return
        try:
            core.read(fh, offset, length, nowait=True)
        except WouldBlock:
            core.read(fh, offset, length)

    rng = random.Random(1)
    offsets = [rng.randrange(size - 4096) & ~4095 for _ in range(20000)]

    def random_reads() -> None:
        for offset in offsets:
            read(offset, 4096)

    def sequential() -> None:
        for offset in range(0, size, 128 * 1024):
            read(offset, 128 * 1024)

    top = core.lookup(1, b"t").ino
    entries = [0]

    def walk() -> None:
        count, stack = 0, [top]
        while stack:
            directory = stack.pop()
            dh, start = core.opendir(directory), 0
            while batch := core.readdir(dh, start):
                for entry in batch:
                    start = entry.next_id
                    if entry.name in (b".", b".."):
                        continue
                    inode = core.getattr(core.lookup(directory, entry.name).ino)
                    count += 1
                    if stat.S_ISDIR(inode.mode):
                        stack.append(inode.ino)
        entries[0] = count

    def timed(fn) -> float:
        fn()  # warm: the packs and the index in the page cache
        times = []
        for _ in range(PASSES):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    result = {"random_us": timed(random_reads) / len(offsets) * 1e6,
              "seq128k_ms": timed(sequential) * 1e3}
    result["stat_us"] = timed(walk) / entries[0] * 1e6
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", metavar="CHECKOUT", help="the earlier checkout of chunkfs to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--file-mib", type=int, default=256, help="size of the file read (default 256)")
    ap.add_argument("--work-dir", default=None, help="scratch directory (default: $TMPDIR)")
    ap.add_argument("--child", metavar="STORE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child)))
        return
    if not args.baseline:
        ap.error("--baseline CHECKOUT is required")
    sys.path.insert(0, REPO)
    from benchmarks.inputs import tree_tar  # noqa: PLC0415

    scratch = tempfile.mkdtemp(prefix="chunkfs-read-ab-", dir=args.work_dir)
    try:
        tar_path, _ = tree_tar({"tree": "django", "tree_files": 0}, scratch, 1)
        sides = {"baseline": os.path.abspath(args.baseline), "this": REPO}
        stores = {side: _build(checkout, os.path.join(scratch, side), tar_path, args.file_mib * MIB)
                  for side, checkout in sides.items()}
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for n in range(args.rounds):
            for side in (list(sides) if n % 2 == 0 else list(sides)[::-1]):
                proc = subprocess.run([sys.executable, "-P", HERE, "--child", stores[side]],
                                      env={**os.environ, "PYTHONPATH": sides[side]},
                                      capture_output=True, text=True, timeout=3600)
                if proc.returncode != 0:
                    raise SystemExit(f"read_path_ab: {side} failed: {proc.stderr.strip()[-500:]}")
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                results[side].append(got)
                print(f"round {n + 1} {side:8} " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key in results["this"][0]:
        base = [r[key] for r in results["baseline"]]
        this = [r[key] for r in results["this"]]
        ratios = [b / t for b, t in zip(base, this)]
        print(f"{key}: baseline median {statistics.median(base):.2f}, this median {statistics.median(this):.2f}; "
              f"baseline ÷ this per round {', '.join(f'{r:.2f}' for r in ratios)}, median "
              f"{statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
