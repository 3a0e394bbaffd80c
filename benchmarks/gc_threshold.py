"""What gc's threshold does: bytes moved, bytes reclaimed and disk held, for a few thresholds.

    python -m benchmarks.gc_threshold                       # ~150 MB store, 6 rounds
    python -m benchmarks.gc_threshold --mib 40 --rounds 6 --pack-mib 8   # quicker, same shape

The same workload runs once per threshold, on a fresh store each time (the
same random seed, so the same bytes): a store of unique data in files of
mixed sizes, then rounds of edits (a file stored again with a few bytes
changed), deletes and new files, each round followed by ``ChunkStore.gc`` at
the threshold.  Per threshold it prints the bytes every gc moved and
reclaimed in total, and what the packs hold on disk at the end beside the
live bytes they must hold.  Threshold 0 rewrites every pack holding a dead
record (what gc did before issue 14); "removal only" rewrites none and only
removes packs with nothing live.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from chunkfs.settings import format_size
import chunkfs.store._packs as pack_files
from chunkfs.store import ChunkStore

MIB = 1 << 20
REMOVAL_ONLY = 2.0  # no pack can give back more than all of it: only wholly dead packs go


def workload(store: ChunkStore, seed: int, mib: int, rounds: int, threshold: float) -> dict:
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    serial = 0

    def put(name: str) -> None:
        size = rng.choice((MIB, 4 * MIB)) if rng.random() < 0.3 else rng.randrange(2000, 200_000)
        store.ingest(name, rng.randbytes(size))
        sizes[name] = size

    while sum(sizes.values()) < mib * MIB:
        serial += 1
        put(f"f{serial}")
    totals = {"moved": 0, "reclaimed": 0, "rewritten": 0, "gc_seconds": 0.0}
    for _ in range(rounds):
        names = sorted(sizes)
        for name in rng.sample(names, len(names) // 10):  # a tenth edited
            content = bytearray(store.read(name))
            at = rng.randrange(len(content))
            content[at: at + 100] = rng.randbytes(100)
            store.ingest(name, bytes(content))
        for name in rng.sample(names, len(names) // 10):  # a tenth deleted, as many new
            store.delete(name)
            del sizes[name]
            serial += 1
            put(f"f{serial}")
        started = time.monotonic()
        report = store.gc(threshold)
        totals["gc_seconds"] += time.monotonic() - started
        totals["moved"] += report["bytes_moved"]
        totals["reclaimed"] += report["bytes_reclaimed"]
        totals["rewritten"] += report["packs_rewritten"]
    totals["disk"] = store.packs.disk_bytes()
    totals["stored"] = store.stats()["stored_bytes"]
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=150, help="unique data to start with (MiB)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pack-mib", type=int, default=pack_files.PACK_TARGET_SIZE // MIB,
                        help="pack size (a smaller store needs smaller packs to have as many)")
    parser.add_argument("--thresholds", default="0,0.25,0.5,0.75,removal",
                        help="comma-separated; 'removal' removes wholly dead packs only")
    args = parser.parse_args(argv)
    pack_files.PACK_TARGET_SIZE = args.pack_mib * MIB
    print(f"{args.mib} MiB of unique data in {args.pack_mib} MiB packs, {args.rounds} rounds of 10% edited, 10% deleted, 10% new; "
          "gc after each round")
    print(f"{'threshold':>10} {'packs rewritten':>16} {'bytes moved':>12} {'bytes reclaimed':>16} "
          f"{'moved/reclaimed':>16} {'packs on disk':>14} {'over live':>10} {'gc time':>8}")
    for text in args.thresholds.split(","):
        threshold = REMOVAL_ONLY if text == "removal" else float(text)
        with tempfile.TemporaryDirectory(prefix="gc-threshold-") as tmp, \
                ChunkStore.create(f"{tmp}/store") as store:
            t = workload(store, args.seed, args.mib, args.rounds, threshold)
        ratio = f"{t['moved'] / t['reclaimed']:.2f}" if t["reclaimed"] else "-"
        print(f"{text:>10} {t['rewritten']:>16} {format_size(t['moved']):>12} "
              f"{format_size(t['reclaimed']):>16} {ratio:>16} {format_size(t['disk']):>14} "
              f"{(t['disk'] / t['stored'] - 1) * 100:>9.1f}% {t['gc_seconds']:>7.1f}s")


if __name__ == "__main__":
    main()
