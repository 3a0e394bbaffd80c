"""Load on the HTTP upload service (issue 18): N concurrent clients uploading the versions workload.

    python -m benchmarks.service_load             # 16 clients, 64 versions of an 8 MiB document, 3 runs
    python -m benchmarks.service_load --quick     # 4 clients, 16 versions of 1 MiB, 1 run: seconds (CI)

Each run measures, back to back (the order alternates between runs):

* **library**: a fresh store, ``ChunkStore.ingest`` of every file in turn from
  one thread of this process: the baseline;
* **service**: a fresh store served by ``python -m examples.upload_service``
  (uvicorn, 127.0.0.1); N ``curl`` processes, each uploading its share of the
  files (round robin) over one connection, all at once; then N ``curl``
  processes downloading every file back, each a different share.

curl is the client so that the load generator costs little CPU beside the
server on a small machine.  Reported per run and as medians: requests/s, MB/s
in (uploads) and out (downloads), p50/p99 latency per request, the savings of
both stores (``stats()``: equal, since the same files make the same chunks),
and the headline ratio service MB/s in / library MB/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

from chunkfs import ChunkStore

from . import workloads
from .common import MB, REPO, Timer

MiB = workloads.MiB
SCALES = {  # the versions workload's knobs (workloads.make_versions), and the clients
    "quick": dict(doc_size=1 * MiB, versions=15, edits=2, clients=4, runs=1),
    "moderate": dict(doc_size=8 * MiB, versions=63, edits=4, clients=16, runs=3),
    "large": dict(doc_size=16 * MiB, versions=127, edits=8, clients=16, runs=3),
}
CURL_FORMAT = "%{http_code} %{time_total} %{size_upload} %{size_download} %header{etag}\\n"


class LoadError(RuntimeError):
    """A request failed or a server misbehaved: the run is invalid."""


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def library_ingest(files: list[tuple[str, str]], store_dir: str) -> dict:
    """The baseline: every file ingested in turn by one thread; seconds, CPU seconds, the store's stats."""
    with ChunkStore.create(store_dir) as store:
        cpu = _cpu_seconds()
        with Timer() as timer:
            for file_id, path in files:
                with open(path, "rb") as fh:
                    store.ingest(file_id, fh)
        cpu = _cpu_seconds() - cpu
        stats = store.stats()
    return {"seconds": timer.seconds, "cpu_seconds": round(cpu, 3), "stats": stats}


class Server:
    """The upload service in its own process, as its README starts it."""

    def __init__(self, store_dir: str, log_path: str):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "examples.upload_service", store_dir, "--create", "--port", "0",
                 "--log-level", "warning", "--no-access-log"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"serving .* on (http://\S+)", self._log())
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise LoadError(f"the service did not start: {self._log()[-2000:]}")

    def _log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=60) as answer:
            return json.load(answer)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise LoadError("the service did not stop on SIGTERM") from None
        problems = [line for line in self._log().splitlines() if "Traceback" in line or "ERROR" in line]
        if code != 0 or problems:
            raise LoadError(f"the service exited {code}; log: {problems[:5]}")


def run_clients(commands: list[list[str]]) -> tuple[float, list[list[str]]]:
    """Start every curl at once; the wall time until the last one ends, and each one's -w lines."""
    with Timer() as timer:
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cmd in commands]
        outputs = [p.communicate() for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise LoadError(f"curl exited {proc.returncode}: {err.decode(errors='replace').strip()[:300]}")
    return timer.seconds, [out.decode().split() for out, _ in outputs]


def _requests(lines: list[list[str]]) -> list[dict]:
    out = []
    for words in lines:
        for i in range(0, len(words), 5):
            code, seconds, up, down, etag = words[i:i + 5]
            out.append(dict(code=int(code), seconds=float(seconds), up=int(float(up)), down=int(float(down)),
                            etag=etag))
    return out


def service_load(files: list[tuple[str, str]], clients: int, store_dir: str, log_path: str) -> dict:
    """Uploads by ``clients`` curls at once, then downloads; throughput, latencies, the store's stats."""
    server = Server(store_dir, log_path)
    try:
        base = ["curl", "-sS", "--no-progress-meter", "-H", "Expect:", "-w", CURL_FORMAT]
        shares = [files[k::clients] for k in range(clients)]
        uploads = [base + [a for file_id, path in share for a in ("-T", path, "-o", "/dev/null",
                                                                   f"{server.url}/files/{file_id}")]
                   for share in shares if share]
        server_cpu, clients_cpu = _process_cpu_seconds(server.proc.pid), _cpu_seconds(resource.RUSAGE_CHILDREN)
        up_seconds, up_lines = run_clients(uploads)
        server_cpu = _process_cpu_seconds(server.proc.pid) - server_cpu
        clients_cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - clients_cpu
        up = _requests(up_lines)
        rotated = [files[(k + 1) % clients::clients] if clients > 1 else files for k in range(clients)]
        downloads = [base + [a for file_id, _ in share for a in ("-o", "/dev/null", f"{server.url}/files/{file_id}")]
                     for share in rotated if share]
        down_seconds, down_lines = run_clients(downloads)
        down = _requests(down_lines)
        stats = server.stats()
    finally:
        server.stop()
    _check(files, up, down)
    upload = _summary(up, up_seconds, "up")
    upload.update(server_cpu_seconds=round(server_cpu, 3), clients_cpu_seconds=round(clients_cpu, 3))
    return {"upload": upload, "download": _summary(down, down_seconds, "down"), "stats": stats, "clients": clients}


def _check(files: list[tuple[str, str]], up: list[dict], down: list[dict]) -> None:
    """Every upload stored (201), every download whole and of an uploaded version (its ETag)."""
    sizes = sorted(os.path.getsize(path) for _, path in files)
    if sorted(r["up"] for r in up) != sizes or any(r["code"] != 201 for r in up):
        raise LoadError(f"uploads failed: {sorted({r['code'] for r in up})}")
    etags = {r["etag"] for r in up}
    if sorted(r["down"] for r in down) != sizes or any(r["code"] != 200 or r["etag"] not in etags for r in down):
        raise LoadError(f"downloads failed: {sorted({r['code'] for r in down})}")


def _summary(requests: list[dict], seconds: float, direction: str) -> dict:
    latencies = sorted(r["seconds"] for r in requests)
    moved = sum(r[direction] for r in requests)
    return {"requests": len(requests), "seconds": round(seconds, 3),
            "requests_per_s": round(len(requests) / seconds, 1), "mb_per_s": round(moved / MB / seconds, 1),
            "bytes": moved, "p50_ms": round(1000 * _quantile(latencies, 0.50), 1),
            "p99_ms": round(1000 * _quantile(latencies, 0.99), 1)}


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile (p99 of a few dozen requests is their maximum)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def one_run(k: int, files: list[tuple[str, str]], logical: int, clients: int, work: str, log=print) -> dict:
    order = ["library", "service"] if k % 2 == 0 else ["service", "library"]
    result: dict = {"order": order}
    for side in order:
        store_dir = os.path.join(work, f"store-{side}-{k}")
        if side == "library":
            result["library"] = library_ingest(files, store_dir)
            result["library"]["mb_per_s"] = round(logical / MB / result["library"]["seconds"], 1)
        else:
            result["service"] = service_load(files, clients, store_dir, os.path.join(work, f"service-{k}.log"))
        shutil.rmtree(store_dir, ignore_errors=True)
    lib, svc = result["library"], result["service"]
    result["ratio_in"] = round(svc["upload"]["mb_per_s"] / lib["mb_per_s"], 3)
    gb = logical / 1e9  # CPU seconds per GB stored: what the work costs, whatever else the machine runs
    result["cpu_s_per_gb"] = {"library": round(lib["cpu_seconds"] / gb, 2),
                              "server": round(svc["upload"]["server_cpu_seconds"] / gb, 2),
                              "clients": round(svc["upload"]["clients_cpu_seconds"] / gb, 2)}
    keys = ("logical_bytes", "stored_bytes", "unique_chunks", "savings_pct")
    result["savings_equal"] = all(lib["stats"][key] == svc["stats"][key] for key in keys)
    log(f"run {k + 1}: library {lib['mb_per_s']} MB/s; service in {svc['upload']['mb_per_s']} MB/s "
        f"({svc['upload']['requests_per_s']} req/s, p50 {svc['upload']['p50_ms']} ms, "
        f"p99 {svc['upload']['p99_ms']} ms), "
        f"out {svc['download']['mb_per_s']} MB/s; ratio {result['ratio_in']}; CPU s/GB library "
        f"{result['cpu_s_per_gb']['library']}, server {result['cpu_s_per_gb']['server']}; savings "
        f"{lib['stats']['savings_pct']} % / {svc['stats']['savings_pct']} %"
        f"{'' if result['savings_equal'] else ' (DIFFER)'}")
    return result


def summarise(runs: list[dict]) -> dict:
    def median(path):
        values = []
        for run in runs:
            value = run
            for key in path:
                value = value[key]
            values.append(value)
        return round(statistics.median(values), 3)

    return {
        "ratio_in": median(["ratio_in"]), "ratios_in": [r["ratio_in"] for r in runs],
        "library_mb_per_s": median(["library", "mb_per_s"]),
        **{f"{d}_{m}": median(["service", d, m]) for d in ("upload", "download")
           for m in ("mb_per_s", "requests_per_s", "p50_ms", "p99_ms")},
        **{f"cpu_s_per_gb_{side}": median(["cpu_s_per_gb", side]) for side in ("library", "server", "clients")},
        "library_savings_pct": runs[0]["library"]["stats"]["savings_pct"],
        "service_savings_pct": runs[0]["service"]["stats"]["savings_pct"],
        "savings_equal": all(r["savings_equal"] for r in runs),
    }


def report_markdown(doc: dict) -> str:
    meta, s = doc["meta"], doc["summary"]
    lines = [f"# Upload service under load ({meta['scale']}, {meta['date']})", "",
             f"{meta['clients']} curl clients; versions workload: {meta['files']} files, "
             f"{meta['logical_bytes'] / MB:.0f} MB; {len(doc['runs'])} run(s); commit {meta['commit']}.", "",
             "| | library ingest | service in (PUT) | service out (GET) |", "| --- | --- | --- | --- |",
             f"| MB/s (median) | {s['library_mb_per_s']} | {s['upload_mb_per_s']} | {s['download_mb_per_s']} |",
             f"| requests/s | | {s['upload_requests_per_s']} | {s['download_requests_per_s']} |",
             f"| p50 / p99 latency, ms | | {s['upload_p50_ms']} / {s['upload_p99_ms']} | "
             f"{s['download_p50_ms']} / {s['download_p99_ms']} |",
             f"| savings % | {s['library_savings_pct']} | {s['service_savings_pct']} | |",
             f"| CPU s per GB stored | {s['cpu_s_per_gb_library']} | {s['cpu_s_per_gb_server']} server + "
             f"{s['cpu_s_per_gb_clients']} curl | |", "",
             f"Service in / library: **{s['ratio_in']}** (per run: {', '.join(map(str, s['ratios_in']))}); "
             f"savings equal in every run: {'yes' if s['savings_equal'] else 'NO'}.", ""]
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.service_load", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 clients, 16 versions of 1 MiB, 1 run: for CI")
    ap.add_argument("--scale", choices=sorted(SCALES), help="moderate (the default) or large")
    ap.add_argument("--clients", type=int, help="concurrent clients (default: the scale's)")
    ap.add_argument("--runs", type=int, help="runs (default: the scale's); the headline is their median")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="results directory (default benchmarks/results/<date>-service-<scale>)")
    ap.add_argument("--work-dir", help="scratch directory for the workload and the stores (default: $TMPDIR)")
    args = ap.parse_args(argv)
    args.scale = "quick" if args.quick else (args.scale or "moderate")
    return args


def _commit() -> str:
    proc = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def main(argv: list[str] | None = None, log=print) -> int:
    args = parse_args(argv)
    scale = SCALES[args.scale]
    clients, runs = args.clients or scale["clients"], args.runs or scale["runs"]
    if shutil.which("curl") is None:
        log("service_load: curl is not installed (scripts/bootstrap.sh installs it)")
        return 1
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"{date}-service-{args.scale}")
    work = tempfile.mkdtemp(prefix="chunkfs-service-load-", dir=args.work_dir)
    try:
        wl = workloads.make_versions(work, scale, args.seed)
        files = [(f"versions/{name}", os.path.join(wl.path, name)) for name in wl.files]
        log(f"versions workload: {len(files)} files, {wl.logical_bytes / MB:.0f} MB (ideal savings {wl.ideal_pct} %); "
            f"{clients} clients, {runs} run(s)")
        results = [one_run(k, files, wl.logical_bytes, clients, work, log) for k in range(runs)]
    except LoadError as exc:
        log(f"service_load: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"scale": args.scale, "date": date, "clients": clients, "files": len(files),
            "logical_bytes": wl.logical_bytes, "ideal_pct": wl.ideal_pct, "commit": _commit(), "cpus": os.cpu_count()}
    doc = {"meta": meta, "summary": summarise(results), "runs": results}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "service-load.json"), "w") as fh:
        json.dump(doc, fh, indent=2)
    with open(os.path.join(out, "service-load.md"), "w") as fh:
        fh.write(report_markdown(doc))
    s = doc["summary"]
    log(f"median: service in {s['upload_mb_per_s']} MB/s = {s['ratio_in']} x library ingest "
        f"({s['library_mb_per_s']} MB/s); out {s['download_mb_per_s']} MB/s; savings equal: {s['savings_equal']}")
    log(f"results: {out}/service-load.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
