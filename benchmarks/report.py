"""Write a run's results: results.json (everything), results.md (tables) and PNG charts.

The JSON keeps every raw number (du before and after, seconds, tool
settings) so later documents can be regenerated without re-running; the
Markdown is what a person reads and what docs/benchmarks.md quotes.
"""

from __future__ import annotations

import json
import os

from .common import MB, savings_pct

NOTES = [
    "Savings = 1 − (du of the repository after ingest − du of the same repository empty) / logical bytes. "
    "The empty repository's fixed cost is left out so small scales do not distort; results.json keeps the "
    "raw figure (`raw_savings_pct`) with it included.",
    "du counts allocated blocks (st_blocks), so per-file block rounding and metadata are included.",
    "Ingest = wall-clock time of the tool's ingest command(s) up to a committed state (borg create, restic backup, "
    "casync make, bup index + save, zfs-fuse cp -a + sync + zpool export, chunkfs ingest + sync + close); "
    "MB/s = logical bytes / 10^6 / seconds. The machine's 2 cores are shared with other work: timings are noisy, "
    "compare only figures from the same run.",
    "Source files are read from the page cache for every tool alike (the workload was just written).",
    "Peers run as separate processes, so their time includes process start-up (a fraction of a second: it "
    "dominates the smallest workloads); chunkfs's API figures run in-process.",
]


NOTE_LABELS = {"whole_file_dedup_pct": "savings (%) from whole-file dedup alone (a floor, not the ideal):"}


def tool_order(results: list) -> list[str]:
    """chunkfs variants first, then peers in the order they ran."""
    names: list[str] = []
    for r in results:
        if r.tool not in names:
            names.append(r.tool)
    return sorted(names, key=lambda n: (not n.startswith("chunkfs"), names.index(n)))


def _cell(results: list, workload: str, tool: str, attr: str) -> str:
    for r in results:
        if r.workload == workload and r.tool == tool:
            if r.status != "ok":
                return r.status
            value = getattr(r, attr)
            return "–" if value is None else f"{value:.1f}"
    return ""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _savings_table(workloads: list, results: list, tools: list[str]) -> list[str]:
    rows = []
    for wl in workloads:
        ideal = "n/a" if wl.ideal_pct is None else f"{wl.ideal_pct:.1f}"
        rows.append([wl.name, f"{wl.logical_bytes / MB:.0f}", ideal,
                     *(_cell(results, wl.name, t, "savings_pct") for t in tools)])
    return _table(["workload", "logical MB", "ideal %", *(f"{t} %" for t in tools)], rows)


def _best_peer(results: list, workload: str):
    peers = [r for r in results if r.workload == workload and not r.tool.startswith("chunkfs")
             and r.savings_pct is not None]
    return max(peers, key=lambda r: r.savings_pct, default=None)


def _against_best_peer(workloads: list, results: list, tools: list[str]) -> list[str]:
    """Split each chunkfs (API) figure into what its chunker found and what its metadata cost,
    beside the best peer: where even the floor (chunking alone and one address per chunk) is
    below that peer, no index or packing change can close the gap at that chunk size."""
    api = [t for t in tools if any(r.tool == t and r.chunking_alone_pct is not None for r in results)]
    if not api:
        return []
    rows = []
    for wl in workloads:
        cells = []
        for tool in api:
            r = next((r for r in results if r.workload == wl.name and r.tool == tool), None)
            alone = r.chunking_alone_pct if r is not None else None
            cells.append("–" if alone is None else f"{alone:.2f} / {r.address_floor_pct:.2f} / {r.savings_pct:.2f}")
        best = _best_peer(results, wl.name)
        ideal = "n/a" if wl.ideal_pct is None else f"{wl.ideal_pct:.2f}"
        rows.append([wl.name, ideal, *cells, "–" if best is None else f"{best.tool} {best.savings_pct:.2f}"])
    return ["## chunkfs against the best peer (%)", "",
            "Each chunkfs cell is *chunking alone / floor / on disk*. Chunking alone is 1 − unique chunk "
            "bytes / logical bytes: the savings before any byte of index, manifest, pack header or block "
            "rounding. The floor also counts the one record every layout of this design must keep, a "
            "32-byte SHA-256 address per unique chunk. Where the floor is below the best peer, no index or "
            "packing change closes the gap at that chunk size.", "",
            *_table(["workload", "ideal", *(f"{t} %" for t in api), "best peer"], rows),
            ""]


def _dedup_and_compression(workloads: list, results: list, tools: list[str]) -> list[str]:
    """Each chunkfs (API) figure split like ``chunkfs stats``: what dedup saves (unique chunk bytes), what
    compression saves on top (the bytes the pack records hold), and the du of the whole store."""
    api = [t for t in tools if any(r.tool == t and "store_packed_bytes" in r.settings for r in results)]
    if not api:
        return []
    rows = []
    for wl in workloads:
        cells = []
        for tool in api:
            r = next((r for r in results if r.workload == wl.name and r.tool == tool and r.status == "ok"), None)
            if r is None:
                cells.append("–")
                continue
            packed = savings_pct(r.settings["store_packed_bytes"], r.logical_bytes)
            dictionary = r.settings.get("store_dictionary") or "–"
            cells.append(f"{r.chunking_alone_pct:.1f} / {packed:.1f} / {r.savings_pct:.1f} ({dictionary})")
        rows.append([wl.name, *cells])
    return ["## chunkfs: dedup and compression apart (%)", "",
            "Each cell is *after dedup / after compression / on disk (dictionary)*: 1 − unique chunk bytes / "
            "logical, 1 − bytes the pack records hold / logical, and the du figure of the savings table; "
            "the dictionary the store used last (– for none).", "",
            *_table(["workload", *(f"{t} %" for t in api)], rows), ""]


def _speed_table(workloads: list, results: list, tools: list[str]) -> list[str]:
    rows = [[wl.name, *(_cell(results, wl.name, t, "mb_per_s") for t in tools)] for wl in workloads]
    return _table(["workload", *(f"{t} MB/s" for t in tools)], rows)


def _avg_chunk(results: list, tool: str) -> str:
    """Average chunk size measured on the unique-data workload, where no chunk is shared or
    cut short by a file end: logical bytes / chunks the tool reports."""
    for r in results:
        if r.tool == tool and r.workload == "unique" and r.status == "ok":
            count = next((r.settings[k] for k in ("store_unique_chunks", "unique_chunks", "unique_blobs")
                          if r.settings.get(k)), None)
            if count:
                return f"{r.logical_bytes / count / 1024:.0f} KiB"
    return "not reported"


def _tools_table(meta: dict, results: list, tools: list[str]) -> list[str]:
    rows = []
    for tool in tools:
        settings = next((r.settings for r in results if r.tool == tool and r.status == "ok"), {})
        chunker = settings.get("chunker", "")
        if tool.startswith("chunkfs") and "store_avg_chunk_size" in settings:
            chunker = f"{settings.get('store_chunker')}, configured avg {settings['store_avg_chunk_size'] // 1024} KiB"
        rows.append([tool, meta.get("versions", {}).get(tool, ""), chunker, _avg_chunk(results, tool),
                     settings.get("compression", "")])
    return _table(["tool", "version", "chunking", "avg chunk on unique data", "compression"], rows)


def _zfs_alloc(results: list) -> list[str]:
    """zfs-fuse's headline is the du of its pool file; its own ALLOC (live blocks only) is lower,
    because copy-on-write leaves freed blocks in the file until zfs reuses them.  Show both."""
    rows = []
    for r in results:
        alloc = r.settings.get("zpool_alloc_bytes") if r.status == "ok" else None
        if alloc is not None and r.logical_bytes:
            rows.append([r.workload, f"{r.savings_pct:.1f}", f"{100 * (1 - alloc / r.logical_bytes):.1f}"])
    if not rows:
        return []
    return ["## zfs-fuse: pool file du vs zpool ALLOC", "",
            "ALLOC counts live blocks only (rounded by zpool to 3 digits); the pool file also holds blocks "
            "copy-on-write has freed but not reused. The savings table uses du, like every other tool.", "",
            *_table(["workload", "savings by du %", "savings by ALLOC %"], rows), ""]


def _problems(meta: dict, results: list) -> list[str]:
    lines = [f"- {line}" for line in meta.get("skipped", [])]
    lines += [f"- {r.tool} on {r.workload}: {r.status}: {r.message}" for r in results if r.status != "ok"]
    return lines or ["- none"]


def _workload_lines(workloads: list) -> list[str]:
    lines = []
    for wl in workloads:
        extra = "".join(f"; {NOTE_LABELS.get(k, k)} {v}" for k, v in wl.notes.items())
        unique = "unknown (real data)" if wl.unique_bytes is None else f"{wl.unique_bytes / MB:.1f} MB unique"
        lines.append(f"- **{wl.name}**: {wl.description}; {len(wl.files)} files, "
                     f"{wl.logical_bytes / MB:.1f} MB logical, {unique}{extra}")
    return lines


def write_markdown(path: str, meta: dict, workloads: list, results: list, charts: list[str]) -> None:
    tools = tool_order(results)
    lines = ["# chunkfs benchmark: dedup savings and ingest speed", "",
             f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- command: `{meta['command']}`", f"- scale: {meta['scale']}, seed {meta['seed']}",
             f"- chunkfs commit: {meta.get('git_commit', 'unknown')}",
             f"- peers' compression: {meta.get('peer_compression', 'off')}", "",
             "## Savings (%)", "", *_savings_table(workloads, results, tools), "",
             *_against_best_peer(workloads, results, tools),
             *_dedup_and_compression(workloads, results, tools),
             "## Ingest speed (MB/s)", "", *_speed_table(workloads, results, tools), "",
             "## Tools and settings", "", *_tools_table(meta, results, tools), "",
             *_zfs_alloc(results),
             "## Workloads", "", *_workload_lines(workloads), "",
             "## Skipped or failed", "", *_problems(meta, results), "",
             "## How to read this", "", *(f"- {n}" for n in NOTES), ""]
    lines += [f"![{os.path.splitext(c)[0]}]({c})" for c in charts]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def write_json(path: str, meta: dict, workloads: list, results: list) -> None:
    doc = {"meta": meta, "workloads": [w.to_json() for w in workloads],
           "results": [r.to_json() for r in results]}
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False)
        fh.write("\n")


# -- charts ------------------------------------------------------------------------------------

def write_charts(out_dir: str, meta: dict, workloads: list, results: list, log=print) -> list[str]:
    """Grouped bar charts (savings with the ideal marked, and ingest MB/s); [] if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("charts skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    tools = tool_order(results)
    if not tools or not workloads:
        return []
    made = []
    for name, attr, ylabel, with_ideal in (("savings.png", "savings_pct", "savings (%)", True),
                                           ("ingest.png", "mb_per_s", "ingest (MB/s)", False)):
        fig = _grouped_bars(plt, workloads, results, tools, attr, ylabel, with_ideal)
        fig.suptitle(f"chunkfs benchmark ({meta['scale']} scale, {meta['date'][:10]})", fontsize=10)
        fig.savefig(os.path.join(out_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(name)
    return made


def _grouped_bars(plt, workloads, results, tools, attr, ylabel, with_ideal):
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.25 * len(workloads) * (len(tools) + 1))), 4.5))
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        values = []
        for wl in workloads:
            r = next((r for r in results if r.workload == wl.name and r.tool == tool), None)
            v = getattr(r, attr) if r is not None else None
            values.append(float("nan") if v is None else v)
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(workloads))]
        ax.bar(xs, values, width, label=tool)
    if with_ideal:
        labelled = False
        for k, wl in enumerate(workloads):
            if wl.ideal_pct is not None:
                ax.hlines(wl.ideal_pct, k - 0.45, k + 0.45, colors="black", linewidth=2,
                          label=None if labelled else "ideal")
                labelled = True
        ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(workloads)), [wl.name for wl in workloads], rotation=15)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
