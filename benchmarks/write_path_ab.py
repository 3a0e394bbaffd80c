"""Paired A/B measurements of the write path (issue 20): this checkout against an earlier one, round by round.

    python -m benchmarks.write_path_ab sync --baseline CHECKOUT       # 400 x (ingest 32 KiB + sync), in-process
    python -m benchmarks.write_path_ab gc --baseline CHECKOUT         # gc of half-dead packs while a writer ingests
    python -m benchmarks.write_path_ab gc-dead --baseline CHECKOUT    # the same, every pack wholly dead
    python -m benchmarks.write_path_ab rewrite --baseline CHECKOUT    # 256 MiB rewritten in place, then committed
    python -m benchmarks.write_path_ab fsync --baseline CHECKOUT      # 4 KiB write + fsync of a 2 MiB file, mounted
    python -m benchmarks.write_path_ab sqlite --baseline CHECKOUT --rounds 16   # benchmarks/apps.py's SQLite, mounted

CHECKOUT is another checkout of chunkfs (a clone at an earlier commit).  Each round runs both sides one
after the other, the first alternating, each in a fresh process (in-process kinds) or on a fresh mount
(fsync, sqlite) with that side's chunkfs first on the path; the report gives every round's figures, the medians
and, per round, baseline ÷ this checkout (above 1: this one is faster).  On a shared machine only the
paired ratios mean anything, and only with enough rounds.  ``fsync`` and ``sqlite`` need root and /dev/fuse.
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

# -- the measurements, run in a child process whose chunkfs is the side's ----------------------------


def _sync(work: str) -> dict:
    """An application's fsync after each small change: ingest 32 KiB, sync, 400 times."""
    import time  # noqa: PLC0415

    from chunkfs.store import ChunkStore  # noqa: PLC0415

    store = ChunkStore.create(os.path.join(work, "s"), compression="none")
    store.ingest("warm", os.urandom(MIB))
    store.sync()
    times = []
    for i in range(400):
        data = os.urandom(32 * 1024)
        t = time.perf_counter()
        store.ingest(f"f{i % 50}", data)
        store.sync()
        times.append(time.perf_counter() - t)
    store.close()
    times.sort()
    return {"median_ms": statistics.median(times) * 1e3, "p90_ms": times[int(len(times) * 0.9)] * 1e3}


def _gc(work: str, kind: str = "half") -> dict:
    """gc of 384 MiB whose packs are half (or wholly) dead, while a writer ingests 1 MiB files and a probe commits."""
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    from chunkfs.store import ChunkStore  # noqa: PLC0415

    store = ChunkStore.create(os.path.join(work, "s"), compression="none")
    for i in range(384):
        store.ingest(f"f{i}", os.urandom(MIB))
    for i in range(384) if kind == "dead" else range(0, 384, 2):
        store.delete(f"f{i}")
    store.sync()
    stop, waits, written = threading.Event(), [], [0]

    def writer():
        k = 1000
        while not stop.is_set():
            store.ingest(f"w{k}", os.urandom(MIB))
            k += 1
            written[0] += MIB

    def probe():  # a metadata change, as the event loop makes them: one small write transaction
        while not stop.is_set():
            t = time.perf_counter()
            store.write_txn(lambda txn: (None, []))
            waits.append(time.perf_counter() - t)
            time.sleep(0.002)

    threads = [threading.Thread(target=writer), threading.Thread(target=probe)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before, t0 = written[0], time.perf_counter()
    report = store.gc(min_dead_fraction=0)
    seconds, during = time.perf_counter() - t0, written[0] - before
    stop.set()
    for t in threads:
        t.join()
    store.close()
    return {"gc_s": seconds, "probe_max_wait_ms": max(waits) * 1e3, "writer_mb_s": during / MIB / seconds,
            "packs_removed": report["packs_removed"], "packs_rewritten": report["packs_rewritten"]}


def _rewrite(work: str) -> dict:
    """A committed 256 MiB file rewritten in place with 1 MiB writes, then committed and synced."""
    import time  # noqa: PLC0415

    from chunkfs.fs.openfile import FileData  # noqa: PLC0415
    from chunkfs.store import ChunkStore  # noqa: PLC0415

    size = 256 * MIB
    store = ChunkStore.create(os.path.join(work, "s"))
    gc = store.start_background_gc()
    old, new = os.urandom(size), os.urandom(size)
    fd = FileData(store, 5, 0)
    for pos in range(0, size, MIB):
        fd.write(pos, old[pos:pos + MIB])
    fd.commit()
    fd.close()
    store.sync()
    os.sync()
    fd = FileData(store, 5, size)
    staging = os.path.join(store.staging_dir, f"{5:016x}")
    t0 = time.perf_counter()
    for pos in range(0, size, MIB):
        fd.write(pos, new[pos:pos + MIB])
    t1 = time.perf_counter()
    staged = os.stat(staging).st_blocks * 512 if os.path.exists(staging) else 0
    fd.commit()
    store.sync()
    t2 = time.perf_counter()
    fd.close()
    gc.stop()
    store.close()
    return {"writes_s": t1 - t0, "commit_s": t2 - t1, "total_s": t2 - t0, "staged_mib": staged / MIB}


CHILD = {"sync": _sync, "gc": _gc, "gc-dead": lambda work: _gc(work, "dead"), "rewrite": _rewrite}

# -- the sides ------------------------------------------------------------------------------------------


def _in_process(kind: str, checkout: str, work: str) -> dict:
    env = {**os.environ, "PYTHONPATH": checkout}
    proc = subprocess.run([sys.executable, HERE, "--child", kind, "--work-dir", work], env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"write_path_ab: {kind} failed in {checkout}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sqlite(checkout: str, work: str, before_mib: int = 0) -> dict:
    """The SQLite workload of benchmarks/apps.py on a fresh mount of the side's chunkfs.

    With ``before_mib``, a file of that many MiB is written and fsync'ed first (untimed), as the
    throughput benchmark's sequential write comes before its SQLite workload in the same mount.
    """
    sys.path.insert(0, REPO)
    from benchmarks import apps  # noqa: PLC0415

    env = {**os.environ, "PYTHONPATH": checkout}
    cli = [sys.executable, "-P", "-m", "chunkfs.cli"]  # -P: the side's chunkfs, not the current directory's
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    subprocess.run([*cli, "mkfs", store], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "mount", store, mnt], env=env, check=True, capture_output=True)
    try:
        if before_mib:
            with open(os.path.join(mnt, "big"), "wb") as fh:
                for _ in range(before_mib):
                    fh.write(os.urandom(MIB))
                os.fsync(fh.fileno())
        subprocess.run(["sync"], check=True)
        return {"seconds": apps.sqlite(mnt, 2)["seconds"]}
    finally:
        subprocess.run([*cli, "umount", mnt], env=env, check=True, capture_output=True)


def _fsync(checkout: str, work: str) -> dict:
    """On a fresh mount: a 2 MiB file, then 300 x (a 4 KiB write at a random page + fsync), as a database does."""
    import random  # noqa: PLC0415
    import time  # noqa: PLC0415

    env = {**os.environ, "PYTHONPATH": checkout}
    cli = [sys.executable, "-P", "-m", "chunkfs.cli"]  # -P: the side's chunkfs, not the current directory's
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    subprocess.run([*cli, "mkfs", store], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "mount", store, mnt], env=env, check=True, capture_output=True)
    try:
        rng, times = random.Random(1), []
        fd = os.open(os.path.join(mnt, "db"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, os.urandom(2 * MIB))
            os.fsync(fd)
            for _ in range(300):
                os.pwrite(fd, rng.randbytes(4096), rng.randrange(512) * 4096)
                t = time.perf_counter()
                os.fsync(fd)
                times.append(time.perf_counter() - t)
        finally:
            os.close(fd)
    finally:
        subprocess.run([*cli, "umount", mnt], env=env, check=True, capture_output=True)
    times.sort()
    return {"fsync_median_ms": statistics.median(times) * 1e3, "fsync_p90_ms": times[int(len(times) * 0.9)] * 1e3}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=[*CHILD, "fsync", "sqlite"])
    ap.add_argument("--baseline", metavar="CHECKOUT", help="the earlier checkout of chunkfs to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work-dir", default=None, help="scratch directory (default: $TMPDIR)")
    ap.add_argument("--before-mib", type=int, default=0, help="sqlite: write and fsync a file this big first")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILD[args.kind](args.work_dir)))
        return
    if not args.baseline:
        ap.error("--baseline CHECKOUT is required")
    sides = {"baseline": os.path.abspath(args.baseline), "this": REPO}
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for n in range(args.rounds):
        for side in (list(sides) if n % 2 == 0 else list(sides)[::-1]):
            work = tempfile.mkdtemp(prefix="chunkfs-ab-", dir=args.work_dir)
            try:
                if args.kind == "sqlite":
                    got = _sqlite(sides[side], work, args.before_mib)
                elif args.kind == "fsync":
                    got = _fsync(sides[side], work)
                else:
                    got = _in_process(args.kind, sides[side], work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results[side].append(got)
            print(f"round {n + 1} {side:8} " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), flush=True)
    for key in results["this"][0]:
        base = [r[key] for r in results["baseline"]]
        this = [r[key] for r in results["this"]]
        ratios = [b / t for b, t in zip(base, this) if t]
        print(f"{key}: baseline median {statistics.median(base):.2f}, this median {statistics.median(this):.2f}"
              + (f"; baseline ÷ this per round {', '.join(f'{r:.2f}' for r in ratios)}, median "
                 f"{statistics.median(ratios):.2f}" if ratios else ""))


if __name__ == "__main__":
    main()
