"""chunkfs's S3 backend against its local backend, on a SeaweedFS started on loopback.

Store level (the library, no FUSE): sequential write (ingest + sync: durable
on the local disk, as fsync promises), the same until everything is in the
bucket (``ChunkStore.flush``), cold sequential read (S3: empty pack cache and
a fresh open; local: the packs' pages dropped from the page cache), and the
requests per GiB written and read.  Medians of ``--runs`` runs; ratios are
S3 / local from the same run.

    python -m benchmarks.object_store [--size-mib 512] [--runs 3]

With ``--mount``, the same comparison through mounts, and against S3QL and
JuiceFS on the same SeaweedFS: benchmarks/object_store_mount.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from seaweedfs import SeaweedServer  # noqa: E402

from chunkfs.store import ChunkStore, data_location  # noqa: E402

MIB = 1 << 20


def drop_page_cache(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_all(store: ChunkStore, name: str) -> int:
    total = 0
    with store.open_reader(name) as reader:
        while chunk := reader.read(4 * MIB):
            total += len(chunk)
    return total


def one_run(root: Path, data: dict | None, content: bytes) -> dict:
    path = root / ("s3" if data else "local")
    shutil.rmtree(path, ignore_errors=True)
    out = {}
    with ChunkStore.create(path, data=data) as store:
        started = time.perf_counter()
        store.ingest("big", content)
        store.sync()
        out["write_s"] = time.perf_counter() - started
        store.flush()
        out["write_uploaded_s"] = time.perf_counter() - started
        if data:
            out["puts"] = store.stats()["object_store"]["requests"]["put"]
    if data:
        shutil.rmtree(path / "bucket" / "cache", ignore_errors=True)
    else:
        drop_page_cache(path / "packs")
    with ChunkStore.open(path, readonly=True) as store:
        started = time.perf_counter()
        assert read_all(store, "big") == len(content)
        out["read_s"] = time.perf_counter() - started
        if data:
            out["gets"] = store.packs.backend.bucket.stats()["requests"]["get"]  # this open's own requests
    return out


def main(argv=None) -> int:
    if "--mount" in (sys.argv[1:] if argv is None else argv):
        from benchmarks.object_store_mount import main as mounted  # noqa: PLC0415

        return mounted(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    content = b"".join(rng.randbytes(MIB) for _ in range(args.size_mib))
    gib = len(content) / (1 << 30)
    with tempfile.TemporaryDirectory(prefix="chunkfs-s3-bench-") as tmp:
        root = Path(tmp)
        server = SeaweedServer(root / "weed").start()
        os.environ.update(server.env())
        try:
            results = {"local": [], "s3": []}
            for run in range(args.runs):
                bucket = f"bench-{run}"
                server.client().create_bucket(Bucket=bucket)
                results["local"].append(one_run(root, None, content))
                results["s3"].append(one_run(root, data_location(f"s3://{bucket}/b", server.endpoint), content))
        finally:
            server.stop()
    med = {kind: {k: statistics.median(r[k] for r in runs) for k in runs[0] if runs[0][k] is not None}
           for kind, runs in results.items()}
    mbps = {kind: {"write_MBps": args.size_mib / m["write_s"], "write_uploaded_MBps": args.size_mib / m["write_uploaded_s"],
                   "cold_read_MBps": args.size_mib / m["read_s"]} for kind, m in med.items()}
    report = {
        "size_mib": args.size_mib, "runs": args.runs, "median": med, "throughput": mbps,
        "ratio_s3_to_local": {k: round(mbps["s3"][k] / mbps["local"][k], 2) for k in mbps["s3"]},
        "puts_per_gib": round(med["s3"]["puts"] / gib, 1),
        "gets_per_gib_cold_read": round(med["s3"]["gets"] / gib, 1) if "gets" in med["s3"] else None,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
