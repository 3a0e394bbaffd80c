"""Index bytes per unique chunk and per manifest entry (issue 14, "metadata that grows with unique data only").

Builds a store of ``--chunks`` unique chunks through the library (one file
per ``--per-file`` chunks of random bytes, cut by the fixed chunker so the
chunk count is exact), then copies the LMDB environment with compaction
(``env.copy(path, compact=True)``, which drops free pages but keeps each
page as full as it was) and divides pages (branch + leaf + overflow, times
the page size) by counts: the ``chunks`` and ``lookup`` databases (a chunk's
record and its address lookup entry) by the unique chunks, the
``manifests`` database (runs of entries) by the manifest entries, as the
store counts them (its ``chunk_refs`` counter).

    python -m benchmarks.index_size --chunks 200000
    python -m benchmarks.index_size --tiny          # seconds: what tests/test_benchmark_quick.py runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import tempfile
import time

import lmdb

from chunkfs import ChunkStore

CHUNK = 1024  # small chunks: 200,000 of them are 195 MiB of data


def build(path: str, chunks: int, per_file: int, seed: int) -> dict:
    rng = random.Random(seed)
    started = time.monotonic()
    with ChunkStore.create(path, chunker="fixed", avg_size=CHUNK) as store:
        for n in range(0, chunks, per_file):
            count = min(per_file, chunks - n)
            store.ingest(f"file-{n // per_file:06d}", rng.randbytes(count * CHUNK))
        stats = store.stats()
    return {"build_s": round(time.monotonic() - started, 1), "live": stats}


def compacted_figures(store_path: str) -> dict:
    """Per-database page bytes and entries of a compacted copy of the store's index."""
    with tempfile.TemporaryDirectory() as copy_dir:
        env = lmdb.open(os.path.join(store_path, "meta"), readonly=True, max_dbs=64, lock=False)
        try:
            env.copy(copy_dir, compact=True)
        finally:
            env.close()
        env = lmdb.open(copy_dir, readonly=True, max_dbs=64, lock=False)
        try:
            out = {}
            with env.begin() as txn:
                for name in ("chunks", "lookup", "manifests", "files", "pending", "packs", "counters"):
                    st = txn.stat(env.open_db(name.encode(), txn=txn, create=False))
                    pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                    out[name] = {"entries": st["entries"], "bytes": pages * st["psize"]}
                raw = txn.get(b"chunk_refs", db=env.open_db(b"counters", txn=txn, create=False))
                out["manifest_entries"] = struct.unpack("<Q", raw)[0] if raw else 0
            return out
        finally:
            env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--per-file", type=int, default=100, help="chunks per file (manifest entries per file)")
    parser.add_argument("--tiny", action="store_true", help="2,000 chunks: a smoke run")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    chunks = 2_000 if args.tiny else args.chunks
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "store")
        built = build(path, chunks, args.per_file, args.seed)
        dbs = compacted_figures(path)
    chunks, entries = dbs["chunks"]["entries"], dbs["manifest_entries"]
    result = {
        "chunks": chunks,
        "entries": entries,
        "manifest_runs": dbs["manifests"]["entries"],
        "index_bytes_per_chunk": round((dbs["chunks"]["bytes"] + dbs["lookup"]["bytes"]) / max(chunks, 1), 1),
        "index_bytes_per_entry": round(dbs["manifests"]["bytes"] / max(entries, 1), 1),
        "live_index_bytes_per_chunk": built["live"]["index_bytes_per_chunk"],
        "live_index_bytes_per_entry": built["live"]["index_bytes_per_entry"],
        "build_s": built["build_s"],
        "databases": dbs,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['chunks']} unique chunks, {result['entries']} manifest entries in "
              f"{result['manifest_runs']} runs (built in {result['build_s']} s)")
        print(f"compacted index: {result['index_bytes_per_chunk']} bytes per chunk, "
              f"{result['index_bytes_per_entry']} bytes per manifest entry")
        print(f"live index:      {result['live_index_bytes_per_chunk']} bytes per chunk, "
              f"{result['live_index_bytes_per_entry']} bytes per manifest entry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
