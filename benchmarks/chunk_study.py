"""Chunk-size study (issue 6 item 5): savings, on-disk overhead and throughput per average chunk size.

    python -m benchmarks.chunk_study --quick                     # 8K..1M, savings + throughput
    python -m benchmarks.chunk_study --tiny --runs 1             # seconds
    python -m benchmarks.chunk_study --quick --sizes 16K,64K --no-throughput

Savings come from the dedup harness (``benchmarks.run --peers none
--chunkfs-avg SIZES``: every workload, chunkfs's Python API, du of the store);
throughput from ``benchmarks.throughput --avg-size SIZE`` for each size.  The
FastCDC minimum and maximum are mkfs's defaults (avg/4 and avg*4).  Writes
chunk-study.md / .json / .png into --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import run as dedup_run  # noqa: E402
from benchmarks import throughput  # noqa: E402
from benchmarks.common import savings_pct  # noqa: E402

DEFAULT_SIZES = "8K,16K,32K,64K,128K,1M"
DEFAULT_OPS = "seq_write,cold_read,random_read,untar"
UNITS = {"K": 1024, "M": 1024 * 1024}


def size_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chunk_study", description=__doc__.split("\n")[0])
    scale = ap.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="quick scales of both benchmarks (the default)")
    scale.add_argument("--tiny", action="store_true", help="tiny scales: seconds")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"average chunk sizes (default {DEFAULT_SIZES})")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs per size (default 3)")
    ap.add_argument("--ops", default=DEFAULT_OPS, help=f"throughput operations (default {DEFAULT_OPS})")
    ap.add_argument("--no-throughput", action="store_true", help="savings and overhead only")
    ap.add_argument("--savings-json", help="reuse this results.json of an earlier `benchmarks.run "
                                           "--chunkfs-avg` run instead of running it again")
    ap.add_argument("--reuse", action="store_true",
                    help="only rebuild the report from the throughput-SIZE/ results already in --out")
    ap.add_argument("--out", help="results directory (default benchmarks/results/<date>-chunk-study)")
    ap.add_argument("--work-dir")
    return ap.parse_args(argv)


def _avg_of(result: dict) -> int | None:
    return result.get("settings", {}).get("store_avg_chunk_size")


def savings_rows(doc: dict, sizes: list[int]) -> dict[int, dict]:
    """Per size: savings per workload, and on-disk overhead beyond the unique chunk bytes."""
    rows: dict[int, dict] = {}
    for size in sizes:
        # the first chunkfs result at this configured size for each workload (the default run may repeat one)
        per_wl: dict[str, dict] = {}
        for r in doc["results"]:
            if r["tool"].startswith("chunkfs") and r["status"] == "ok" and _avg_of(r) == size:
                per_wl.setdefault(r["workload"], r)
        if not per_wl:
            continue
        data = sum(r["data_bytes"] for r in per_wl.values())
        stored = sum(r["settings"].get("store_stored_bytes", 0) for r in per_wl.values())
        chunks = sum(r["settings"].get("store_unique_chunks", 0) for r in per_wl.values())
        logical = sum(r["logical_bytes"] for r in per_wl.values())
        rows[size] = {
            "savings_pct": {wl: r["savings_pct"] for wl, r in per_wl.items()},
            "chunking_alone_pct": {wl: _chunking_alone(r) for wl, r in per_wl.items()},
            "total_savings_pct": round(100 * (1 - data / logical), 2) if logical else None,
            "overhead_pct": round(100 * (data - stored) / stored, 2) if stored else None,
            "overhead_bytes_per_chunk": round((data - stored) / chunks) if chunks else None,
            "unique_chunks": chunks,
            "unique_wl_overhead_pct": _overhead_pct(per_wl.get("unique")),
            "unique_wl_overhead_bytes_per_chunk": _overhead_per_chunk(per_wl.get("unique")),
            "ingest_mb_s": {wl: r["mb_per_s"] for wl, r in per_wl.items()},
        }
    return rows


def _chunking_alone(r: dict) -> float | None:
    """Result.chunking_alone_pct from a results.json entry (older files do not hold the field)."""
    stored = r["settings"].get("store_stored_bytes")
    return None if stored is None else savings_pct(stored, r["logical_bytes"])


def _overhead_pct(r: dict | None) -> float | None:
    stored = r and r["settings"].get("store_stored_bytes")
    return round(100 * (r["data_bytes"] - stored) / stored, 2) if stored else None


def _overhead_per_chunk(r: dict | None) -> int | None:
    chunks = r and r["settings"].get("store_unique_chunks")
    return round((r["data_bytes"] - r["settings"]["store_stored_bytes"]) / chunks) if chunks else None


def _label(size: int) -> str:
    return f"{size // (1024 * 1024)}M" if size >= 1024 * 1024 else f"{size // 1024}K"


def markdown(meta: dict, workloads: list[dict], rows: dict, tp: dict) -> str:
    wl_names = [w["name"] for w in workloads]
    ideal = {w["name"]: w["ideal_pct"] for w in workloads}
    sizes = sorted(rows)
    lines = ["# chunkfs chunk-size study", "", f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- savings from: `{meta['savings_command']}`", "",
             "## Savings (%) by average chunk size (min = avg/4, max = avg×4)", "",
             "| workload | ideal | " + " | ".join(_label(s) for s in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for wl in wl_names:
        lines.append(f"| {wl} | {'n/a' if ideal[wl] is None else ideal[wl]} | "
                     + " | ".join(f"{rows[s]['savings_pct'].get(wl, float('nan')):.1f}" for s in sizes) + " |")
    lines.append("| **all workloads (bytes-weighted)** | | "
                 + " | ".join(f"**{rows[s]['total_savings_pct']:.1f}**" for s in sizes) + " |")
    lines += ["", "## Savings from chunking alone (%)", "",
              "1 − unique chunk bytes / logical bytes: what the chunker finds before any byte of index, "
              "pack header or block rounding, an upper bound on the on-disk savings at that size.", "",
              "| workload | ideal | " + " | ".join(_label(s) for s in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for wl in wl_names:
        cells = (rows[s]["chunking_alone_pct"].get(wl) for s in sizes)
        lines.append(f"| {wl} | {'n/a' if ideal[wl] is None else ideal[wl]} | "
                     + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines += ["", "## On-disk overhead", "",
              "Bytes the store occupies beyond the unique chunk bytes it holds (pack record headers, LMDB "
              "index and manifests, block rounding), summed over all workloads.", "",
              "| | " + " | ".join(_label(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes),
              "| overhead (% of unique chunk bytes) | " + " | ".join(f"{rows[s]['overhead_pct']:.2f}" for s in sizes)
              + " |",
              "| overhead per chunk (bytes) | " + " | ".join(str(rows[s]["overhead_bytes_per_chunk"]) for s in sizes)
              + " |",
              "| overhead on the unique-data workload (%) | "
              + " | ".join(str(rows[s]["unique_wl_overhead_pct"]) for s in sizes) + " |",
              "| overhead per chunk on the unique-data workload (bytes) | "
              + " | ".join(str(rows[s]["unique_wl_overhead_bytes_per_chunk"]) for s in sizes) + " |",
              "| unique chunks (all workloads) | " + " | ".join(str(rows[s]["unique_chunks"]) for s in sizes) + " |",
              "| API ingest MB/s, unique data | "
              + " | ".join(str(rows[s]["ingest_mb_s"].get("unique", "")) for s in sizes) + " |"]
    if tp:
        ops = [op for op in throughput.OPS if any(op in t["summary"] for t in tp.values())]
        tsizes = sorted(tp)
        lines += ["", "## Throughput through the mount (ratio vs plain directory, median of runs)", "",
                  "| operation | " + " | ".join(_label(s) for s in tsizes) + " |", "|---|" + "---|" * len(tsizes)]
        for op in ops:
            cells = []
            for s in tsizes:
                row = tp[s]["summary"].get(op)
                runs = ", ".join(f"{x:.2f}" for x in row["ratios"]) if row else ""
                cells.append("" if row is None else f"{row['ratio_median']:.2f} ({runs})")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        absolute = [("seq_write", "chunkfs_mb_s", "chunkfs seq write MB/s"),
                    ("cold_read", "chunkfs_mb_s", "chunkfs cold read MB/s"),
                    ("random_read", "chunkfs_iops", "chunkfs random 4 KiB read IOPS"),
                    ("untar", "chunkfs_seconds", "chunkfs untar seconds (median)")]
        for op, key, label in absolute:
            cells = []
            for s in tsizes:
                row = tp[s]["summary"].get(op)
                value = None if row is None else row.get(key)
                if isinstance(value, list):
                    value = round(sorted(value)[len(value) // 2], 2)
                cells.append("" if value is None else str(value))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("| daemon peak RSS (MiB) | " + " | ".join(str(tp[s]["summary"]["rss"]["peak_mib"]) for s in tsizes)
                     + " |")
        lines.append("| append 4 KiB: store growth (bytes) | "
                     + " | ".join(str(tp[s]["summary"]["append"]["disk_bytes_growth"][0]) for s in tsizes) + " |")
        lines += ["", f"Throughput: `{meta['throughput_command']}` per size; cells are median (per run)."]
    return "\n".join(lines) + "\n"


def chart(path: str, workloads: list[dict], rows: dict, tp: dict) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed")
        return False
    sizes = sorted(rows)
    xs = [s / 1024 for s in sizes]
    panels = 4 if tp else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.8 * panels, 3.4))
    ax = axes[0]
    for w in workloads:
        ys = [rows[s]["savings_pct"].get(w["name"], float("nan")) for s in sizes]
        ax.plot(xs, ys, "o-", markersize=3, label=w["name"])
    ax.set_title("savings (%)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1]
    ax.plot(xs, [rows[s]["overhead_pct"] for s in sizes], "o-", color="#c44e52")
    ax.set_title("on-disk overhead (% of unique bytes)", fontsize=9)
    if tp:
        ax = axes[2]
        tsizes = sorted(tp)
        for op in throughput.OPS:
            ys = [tp[s]["summary"].get(op, {}).get("ratio_median", float("nan")) for s in tsizes]
            if any(y == y for y in ys):
                ax.plot([s / 1024 for s in tsizes], ys, "o-", markersize=3, label=op)
        ax.set_title("throughput vs plain dir (ratio, median)", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[3]
        for op, label in (("seq_write", "seq write"), ("cold_read", "cold read")):
            ys = [tp[s]["summary"].get(op, {}).get("chunkfs_mb_s", float("nan")) for s in tsizes]
            ax.plot([s / 1024 for s in tsizes], ys, "o-", markersize=3, label=label)
        ax.set_title("chunkfs through the mount (MB/s)", fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("average chunk size (KiB)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    scale = "tiny" if args.tiny else "quick"
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"{dt.date.today().isoformat()}-chunk-study")
    os.makedirs(out, exist_ok=True)
    size_texts = [s.strip() for s in args.sizes.split(",") if s.strip()]
    sizes = [size_bytes(s) for s in size_texts]
    work = ["--work-dir", args.work_dir] if args.work_dir else []
    savings_cmd = [f"--{scale}", "--peers", "none", "--no-install", "--chunkfs-avg", ",".join(size_texts),
                   "--out", os.path.join(out, "savings"), *work]
    if args.reuse and not args.savings_json:
        args.savings_json = os.path.join(out, "savings", "results.json")
    if args.savings_json:
        savings_json = args.savings_json
        savings_command = f"(reused {savings_json})"
    else:
        dedup_run.main(savings_cmd)
        savings_json = os.path.join(out, "savings", "results.json")
        savings_command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in savings_cmd)
    with open(savings_json) as fh:
        doc = json.load(fh)
    rows = savings_rows(doc, sizes)
    tp: dict[int, dict] = {}
    tp_args = [f"--{scale}", "--runs", str(args.runs), "--ops", args.ops, *work]
    if not args.no_throughput:
        for text, size in zip(size_texts, sizes):
            tp_out = os.path.join(out, f"throughput-{text}")
            if not args.reuse:
                throughput.main([*tp_args, "--avg-size", text, "--out", tp_out])
            with open(os.path.join(tp_out, "throughput.json")) as fh:
                tp[size] = json.load(fh)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.chunk_study " + " ".join(shlex.quote(a) for a in argv_list),
            "savings_command": savings_command,
            "throughput_command": "python -m benchmarks.throughput " + " ".join(tp_args) + " --avg-size SIZE"}
    with open(os.path.join(out, "chunk-study.json"), "w") as fh:
        json.dump({"meta": meta, "savings": {str(k): v for k, v in rows.items()},
                   "throughput": {str(k): v["summary"] for k, v in tp.items()}}, fh, indent=2)
        fh.write("\n")
    made = chart(os.path.join(out, "chunk-study.png"), doc["workloads"], rows, tp)
    text = markdown(meta, doc["workloads"], rows, tp) + ("\n![chunk-size study](chunk-study.png)\n" if made else "")
    with open(os.path.join(out, "chunk-study.md"), "w") as fh:
        fh.write(text)
    print(text)
    print(f"results: {out}/chunk-study.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
