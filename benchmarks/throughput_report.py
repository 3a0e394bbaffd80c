"""What the throughput benchmark reports: the operations and issue 4's targets, the summary of the runs,
and the markdown table and chart made from it.

Every figure is a ratio of times taken in the same run.  Each run measures
three sides: the plain directory, chunkfs, and (unless --no-passthrough) the
plain pyfuse3 passthrough of benchmarks/passthrough.py.  chunkfs ÷ plain is the
figure issue 4 sets targets for; passthrough ÷ plain is the floor that any
Python FUSE filesystem meets on this machine in this run; chunkfs ÷
passthrough is what chunkfs's own work costs on top of that floor.
"""

from __future__ import annotations

import statistics

from benchmarks.common import MB

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024

# Ratio operations, in the order they are reported, with issue 4's targets (None: no target).
OPS: dict[str, tuple[str, float | None]] = {
    "seq_write": ("sequential write (committed: write + fsync + close)", 0.5),
    "cold_read": ("cold sequential read (remount + drop_caches), the mount's default read-ahead", 0.5),
    "cold_read_ra": ("cold sequential read, the other read-ahead (1 MiB, or 128 KiB if that is the default)", 0.5),
    "random_read": ("4 KiB random reads, cold", 0.35),
    "untar": ("untar of the small-files tree (+ sync -f)", 0.4),
    "rsync": ("rsync -a of the small-files tree (+ sync -f)", 0.4),
    "find_stat": ("find + stat over the tree, cold", None),
    "overwrite": ("overwrite of the file with new bytes (O_TRUNC, write, fsync, close)", None),
    "rewrite": ("rewrite of the file in place (no O_TRUNC, write, fsync, close)", None),
    "sqlite": ("SQLite: 10,000 inserts in 100 transactions, rollback journal and WAL, VACUUM", None),
    "git": ("git: init, 10 commits, gc, fsck, 2 clones, repack", None),
    # derived from untar / rsync (not separate --ops): the command alone, before its sync -f
    "untar_nosync": ("untar alone (its sync -f left out)", None),
    "rsync_nosync": ("rsync -a alone (its sync -f left out)", None),
}
DERIVED_OPS = ("untar_nosync", "rsync_nosync")
RSS_TARGET = 300 * MiB  # issue 4: peak daemon RSS while writing and reading 4 GiB files
APPEND_MAX_CHUNKS = 4  # issue 4: appending 4 KiB grows the store by less than 4 average chunks...
APPEND_MAX_FRACTION = 0.05  # ...and takes less than 5% of the time of writing the file
# What issue 4 says its plain pyfuse3 passthrough reached (ratio to the plain disk), beside its targets:
# target / this figure is the share of the passthrough's speed the target asks of chunkfs.
ISSUE_PASSTHROUGH = {"seq_write": 0.74, "cold_read": 0.69, "cold_read_ra": 0.69, "random_read": 0.41,
                     "untar": 0.47}


# -- summary, report --------------------------------------------------------------------------

def summarize(runs: list[dict], file_size: int) -> dict:
    """Median of the per-run ratios (plain seconds / chunkfs seconds), with every run's ratio and speed;
    with the passthrough measured, also its ratio to plain and chunkfs's ratio to it."""
    summary: dict = {}
    for op, (_, target) in OPS.items():
        pairs = [r["seconds"][op] for r in runs if op in r["seconds"]]
        if not pairs:
            continue
        row = _ratio_row(pairs, "plain", "chunkfs")
        row.update(target=target, met=None if target is None else row["ratio_median"] >= target)
        if all("passthrough" in p for p in pairs):
            row["passthrough"] = _ratio_row(pairs, "plain", "passthrough")
            row["vs_passthrough"] = _ratio_row(pairs, "passthrough", "chunkfs")
            if target is not None and op in ISSUE_PASSTHROUGH:
                row["target_share_of_passthrough"] = round(target / ISSUE_PASSTHROUGH[op], 3)
        if all("baseline" in p for p in pairs):  # --baseline: this checkout against an earlier one, run by run
            row["vs_baseline"] = _ratio_row(pairs, "baseline", "chunkfs")
        if all("passthrough-xattrs" in p for p in pairs):  # --xattr-passthrough: the floor with xattrs kept
            row["vs_xattr_passthrough"] = _ratio_row(pairs, "passthrough-xattrs", "chunkfs")
        if all("chunkfs-none" in p for p in pairs):  # --uncompressed-side: compression on against off
            row["vs_uncompressed"] = _ratio_row(pairs, "chunkfs-none", "chunkfs")
        sides = [s for s in ("plain", "chunkfs", "passthrough") if all(s in p for p in pairs)]
        row["by_side"] = _by_side(pairs)
        if op in ("seq_write", "cold_read", "cold_read_ra", "overwrite", "rewrite"):
            for side in sides:
                row[f"{side}_mb_s"] = round(file_size / MB / statistics.median(p[side] for p in pairs), 1)
        if op == "random_read":
            for side in sides:
                row[f"{side}_iops"] = round(statistics.median(r["extra"]["random_read"][side]["iops"]
                                                              for r in runs))
            row["tool"] = runs[0]["extra"]["random_read"]["plain"]["tool"]
        summary[op] = row
    summary["compression_ratio"] = [r["extra"].get("store_after_writes", {}).get("compression_ratio") for r in runs]
    appends = [r["extra"]["append"] for r in runs]
    frac = statistics.median(a["fraction_of_seq_write"] for a in appends)
    growth = statistics.median(a["growth_avg_chunks"] for a in appends)
    summary["append"] = {
        "chunkfs_ms": [round(a["chunkfs_seconds"] * 1000, 2) for a in appends],
        "chunkfs_steps_ms": [a["chunkfs_steps_ms"] for a in appends],
        "plain_ms": [round(a["plain_seconds"] * 1000, 2) for a in appends],
        "fraction_of_seq_write_median": frac, "growth_avg_chunks_median": growth,
        "disk_bytes_growth": [a.get("disk_bytes_growth") for a in appends],
        "stored_bytes_growth": [a.get("stored_bytes_growth") for a in appends],
        "met": frac < APPEND_MAX_FRACTION and growth < APPEND_MAX_CHUNKS}
    peaks = [max(r["rss_peak_bytes"].values()) for r in runs if r["rss_peak_bytes"]]
    by_session: dict[str, int] = {}
    for r in runs:
        for s, v in r["rss_peak_bytes"].items():
            by_session[s] = max(by_session.get(s, 0), v)
    summary["rss"] = {"peak_mib": round(max(peaks) / MiB, 1) if peaks else None,
                      "per_run_mib": [round(p / MiB, 1) for p in peaks],
                      "by_session_mib": {s: round(v / MiB, 1) for s, v in by_session.items()},
                      "target_mib": RSS_TARGET // MiB,
                      "met": (max(peaks) <= RSS_TARGET) if peaks else None,
                      "target_applies": file_size >= 4 * GiB}
    return summary


PEERS = ("passthrough-xattrs", "s3ql", "juicefs", "baseline", "chunkfs-none")  # other filesystems run beside chunkfs when installed (benchmarks/mounts.py)
SIDES = ("chunkfs", "passthrough", *PEERS)


def _by_side(pairs: list[dict]) -> dict:
    """Every FUSE side: its ratio to the plain directory and to the passthrough, over the runs it took part
    in (a peer left out of a run after failing there has fewer; ``runs`` says how many)."""
    out = {}
    for side in SIDES:
        took_part = [p for p in pairs if side in p]
        if not took_part:
            continue
        row = {"runs": len(took_part), "seconds_median": round(statistics.median(p[side] for p in took_part), 4),
               "vs_plain": _ratio_row(took_part, "plain", side)["ratio_median"]}
        if all("passthrough" in p for p in took_part):
            vs = _ratio_row(took_part, "passthrough", side)
            row["vs_passthrough"], row["vs_passthrough_runs"] = vs["ratio_median"], vs["ratios"]
        out[side] = row
    return out


def _ratio_row(pairs: list[dict], base: str, side: str) -> dict:
    """base seconds / side seconds per run (above 1: ``side`` was faster), their median, and the times."""
    ratios = [p[base] / p[side] for p in pairs]
    return {"ratio_median": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
            f"{base}_seconds": [round(p[base], 4) for p in pairs],
            f"{side}_seconds": [round(p[side], 4) for p in pairs]}


def _readahead_label(op: str, label: str, runs: list[dict]) -> str:
    """The cold read rows name the read-ahead each run really had (read back from sysfs)."""
    key = {"cold_read": "readahead_default_kb", "cold_read_ra": "readahead_variant_kb"}.get(op)
    if key is None:
        return label
    values = sorted({r["extra"].get(key) for r in runs}, key=str)
    head = "cold sequential read" + (" (remount + drop_caches)" if op == "cold_read" else "")
    which = "mount default" if op == "cold_read" else "set after mounting"
    return f"{head}, read-ahead {'/'.join(str(v) for v in values)} KiB ({which})"


def _fmt_target(row: dict) -> str:
    if row.get("target") is None:
        return "–"
    return f"≥ {row['target']:.2f} ({'met' if row['met'] else 'NOT met'})"


def _speed(row: dict, side: str) -> str:
    """A side's own speed in the unit that suits the operation: MB/s, IOPS, or seconds (median)."""
    if f"{side}_mb_s" in row:
        return f"{row[f'{side}_mb_s']} MB/s"
    if f"{side}_iops" in row:
        return f"{row[f'{side}_iops']} IOPS"
    seconds = row.get(f"{side}_seconds") or row["passthrough"][f"{side}_seconds"]
    return f"{statistics.median(seconds):.2f} s"


def _per_run(row: dict) -> str:
    return ", ".join(f"{x:.2f}" for x in row["ratios"])


def markdown(meta: dict, summary: dict, runs: list[dict]) -> str:
    lines = ["# chunkfs throughput against a plain directory on the same disk", "",
             f"- date: {meta['date']}", f"- command: `{meta['command']}`",
             f"- machine: {meta['machine'].get('nproc')} CPUs ({meta['machine'].get('cpu', '')}), "
             f"{meta['machine'].get('mem_gib')} GiB RAM, kernel {meta['machine'].get('kernel')}, "
             f"disk {meta['disk']} (read-ahead {meta.get('plain_read_ahead_kb')} KiB), "
             f"pyfuse3 {meta['machine'].get('pyfuse3')}, libfuse "
             f"{meta['machine'].get('libfuse')}, {meta['machine'].get('fio')}",
             f"- chunkfs commit: {meta['git_commit']}; store: avg chunk {meta['avg_chunk_size'] // KiB} KiB, "
             f"mount options: {meta['mount_opts'] or 'defaults'}",
             f"- scale: {meta['scale']} (file {meta['file_size'] / MiB:.0f} MiB of "
             f"{meta.get('file_data', 'random')} data, "
             f"{meta['random_reads']} random reads, tree: {meta['tree']}), {len(runs)} runs",
             f"- load average at start / end: {meta['load_start']} / {meta.get('load_end', '?')}", "",
             "| operation | ratio (median) | ratio per run | plain | chunkfs | target (issue 4) |",
             "|---|---|---|---|---|---|"]
    rows = [(op, _readahead_label(op, label, runs), summary[op]) for op, (label, _) in OPS.items() if op in summary]
    for _, label, row in rows:
        lines.append(f"| {label} | **{row['ratio_median']:.2f}** | {_per_run(row)} | {_speed(row, 'plain')} | "
                     f"{_speed(row, 'chunkfs')} | {_fmt_target(row)} |")
    if any("passthrough" in row for _, _, row in rows):
        lines += ["", "## Against a plain pyfuse3 passthrough, measured in the same runs", "",
                  "benchmarks/passthrough.py forwards every request to a directory on the same disk and does "
                  "nothing else: its ratio to the plain directory is what any Python FUSE filesystem reaches "
                  "on this machine today, and chunkfs ÷ passthrough is what chunkfs's own work costs on top. "
                  "Issue 4 set its targets beside the passthrough figures it quotes (0.74 sequential write, "
                  "0.69 cold read with 1 MiB read-ahead, 0.47 untar, 0.41 random reads); the last column is "
                  "target ÷ that figure, the share of the passthrough's speed the target asks of chunkfs.", "",
                  "| operation | passthrough ÷ plain (median) | per run | passthrough | chunkfs ÷ passthrough "
                  "(median) | per run | the target as a share of the issue's passthrough |",
                  "|---|---|---|---|---|---|---|"]
        for _, label, row in rows:
            if "passthrough" not in row:
                continue
            pt, vs = row["passthrough"], row["vs_passthrough"]
            share = row.get("target_share_of_passthrough")
            lines.append(f"| {label} | {pt['ratio_median']:.2f} | {_per_run(pt)} | {_speed(row, 'passthrough')} | "
                         f"**{vs['ratio_median']:.2f}** | {_per_run(vs)} | "
                         f"{'–' if share is None else f'{share:.2f}'} |")
    lines += _peers_table(rows, meta)
    lines += _xattr_passthrough_table(rows)
    lines += _baseline_table(rows, meta)
    lines += _uncompressed_table(rows, summary)
    a, rss = summary["append"], summary["rss"]
    lines += ["", "## Append 4 KiB to the committed file (open + write + fsync + close)", "",
              f"- chunkfs: {', '.join(f'{x:.1f}' for x in a['chunkfs_ms'])} ms "
              f"(median {100 * a['fraction_of_seq_write_median']:.2f}% of the sequential write; target < 5%); "
              f"plain: {', '.join(f'{x:.1f}' for x in a['plain_ms'])} ms",
              "- chunkfs steps (ms): " + "; ".join(", ".join(f"{k} {v:.1f}" for k, v in st.items())
                                                   for st in a["chunkfs_steps_ms"]),
              f"- store growth (du of the store, from `chunkfs stats`): "
              f"{', '.join(str(x) for x in a['disk_bytes_growth'])} bytes = median "
              f"{a['growth_avg_chunks_median']} average chunks (target < 4); unique chunk bytes: "
              f"{', '.join(str(x) for x in a['stored_bytes_growth'])}",
              f"- {'met' if a['met'] else 'NOT met'}", "",
              "## Daemon peak RSS (VmHWM, read before each unmount)", "",
              f"- peak {rss['peak_mib']} MiB over all runs (per run: "
              f"{', '.join(str(x) for x in rss['per_run_mib'])}); by session: "
              + ", ".join(f"{s} {v} MiB" for s, v in rss["by_session_mib"].items()),
              f"- target ≤ {rss['target_mib']} MiB while writing and reading 4 GiB files: "
              + ("met" if rss["met"] else "NOT met") + ("" if rss["target_applies"] else
                                                        " at this file size (the target is for --huge)"),
              "", "## How it was measured", "", *(f"- {n}" for n in NOTES)]
    if not all(r["cold_caches_dropped"] for r in runs):
        lines.append("- WARNING: the page cache could not be dropped (not root): cold figures are warm")
    return "\n".join(lines) + "\n"


def _paired_table(rows: list, key: str, other: str, title: str, intro: str) -> list[str]:
    """chunkfs against one more side of the same runs: the ``key`` ratio rows (``other`` seconds ÷ chunkfs's)."""
    if not any(key in row for _, _, row in rows):
        return []
    lines = ["", f"## {title}, measured in the same runs", "", intro, "",
             f"| operation | chunkfs ÷ {other} speed (median) | per run | {other} | chunkfs |", "|---|---|---|---|---|"]
    for _, label, row in rows:
        vs = row.get(key)
        if vs is not None:
            lines.append(f"| {label} | **{vs['ratio_median']:.2f}** | {_per_run(vs)} | "
                         f"{statistics.median(vs[f'{other}_seconds']):.2f} s | "
                         f"{statistics.median(vs['chunkfs_seconds']):.2f} s |")
    return lines


def _xattr_passthrough_table(rows: list) -> list[str]:
    """With --xattr-passthrough: chunkfs against the passthrough that keeps xattrs, as chunkfs does."""
    return _paired_table(
        rows, "vs_xattr_passthrough", "passthrough-xattrs", "Against the passthrough that forwards xattrs",
        "A pyfuse3 filesystem that answers getxattr is asked getxattr(security.capability) before every "
        "write(2) (pyfuse3 cannot negotiate FUSE_HANDLE_KILLPRIV_V2, which would spare it); the plain "
        "passthrough answers ENOSYS once and is spared. passthrough-xattrs seconds ÷ chunkfs seconds:")


def _baseline_table(rows: list, meta: dict) -> list[str]:
    """With --baseline: this checkout against the earlier one, paired run by run (above 1: this one is faster)."""
    base = meta.get("peers", {}).get("baseline", {})
    return _paired_table(
        rows, "vs_baseline", "baseline", f"Against the baseline checkout ({base.get('commit', '?')})",
        "baseline seconds ÷ chunkfs seconds, per run and median: below 0.95 is more than 5 % slower.")


def _uncompressed_table(rows: list, summary: dict) -> list[str]:
    """With --uncompressed-side: chunkfs (compressing, the default) against the same checkout with
    --compression none, paired run by run (above 1: compressing was faster)."""
    if not any("vs_uncompressed" in row for _, _, row in rows):
        return []
    lines = ["", "## Compression on against off, measured in the same runs", "",
             "chunkfs-none (this checkout, mkfs --compression none) seconds ÷ chunkfs (zstd, the default) "
             "seconds, per run and median: above 1, the compressing store was faster; issue 15 asks for at "
             "least 0.9 on the sequential write and the cold sequential read.", "",
             "| operation | compression on ÷ off, speed (median) | per run | off | on |", "|---|---|---|---|---|"]
    for op, label, row in rows:
        vs = row.get("vs_uncompressed")
        if vs is not None:
            lines.append(f"| {label} | **{vs['ratio_median']:.2f}** | {_per_run(vs)} | "
                         f"{statistics.median(vs['chunkfs-none_seconds']):.2f} s | "
                         f"{statistics.median(vs['chunkfs_seconds']):.2f} s |")
    ratios = summary.get("compression_ratio")
    if ratios:
        lines += ["", f"The chunkfs side's store after the write session (`chunkfs stats`): compression ratio "
                      f"{', '.join(str(r) for r in ratios)} (per run)."]
    return lines


def _peers_table(rows: list, meta: dict) -> list[str]:
    """Every FUSE filesystem of the run against the passthrough: speed ratio (above 1: faster) and median time."""
    sides = [side for side in SIDES if side != "passthrough" and any(side in row["by_side"] for _, _, row in rows)]
    if not any("vs_passthrough" in row["by_side"].get("chunkfs", {}) for _, _, row in rows):
        return []
    out = ["", "## Every filesystem against the passthrough (speed ratio, median; median seconds)", "",
           "passthrough seconds ÷ the filesystem's seconds, run by run (1.0: as fast as the passthrough). "
           + "; ".join(f"{name}: {', '.join(f'{k} {v}' for k, v in cfg.items())}"
                       for name, cfg in meta.get("peers", {}).items()), "",
           "| operation | passthrough | " + " | ".join(sides) + " |", "|---|---|" + "---|" * len(sides)]
    for _, label, row in rows:
        pt = row["by_side"].get("passthrough")
        if pt is None:
            continue
        cells = []
        for side in sides:
            cell = row["by_side"].get(side)
            fewer = "" if cell is None or cell["runs"] == len(row["ratios"]) else f", {cell['runs']} runs"
            cells.append("–" if cell is None else
                         f"{'**' if side == 'chunkfs' else ''}{cell['vs_passthrough']:.2f}"
                         f"{'**' if side == 'chunkfs' else ''} ({cell['seconds_median']:.2f} s{fewer})")
        out.append(f"| {label} | {pt['seconds_median']:.2f} s | " + " | ".join(cells) + " |")
    return out


NOTES = [
    "ratio = plain seconds / chunkfs seconds for the same operation, run back to back in the same run "
    "(1.0 = as fast as the plain directory); the headline is the median of the per-run ratios. "
    "Which side goes first rotates between runs.",
    "Each run uses a fresh store (mkfs), mounted with this checkout's `chunkfs mount`; the plain directory is "
    "on the same filesystem as the store.",
    "sequential write: 1 MiB write() calls from a buffer of random bytes (unique data, nothing dedups or "
    "compresses; with --file-data text, slices of the tree's tar: compresses, does not dedup), then "
    "fsync and close, all timed. chunkfs's fsync makes its packs and index durable.",
    "cold reads: chunkfs is unmounted and mounted again before each cold test (so the daemon's chunk cache is "
    "empty), and `sync; echo 3 > /proc/sys/vm/drop_caches` runs before each side. Sequential reads use 1 MiB "
    "read() calls; one session reads at the mount's default read-ahead, the other after writing another "
    "value (1024, or 128 if the default is 1024) to /sys/class/bdi/<mountpoint -d MNT>/read_ahead_kb; the "
    "two sessions swap order every run (the plain side keeps its block device's read-ahead, shown in the "
    "machine line).",
    "random reads: fio, `--rw=randread --bs=4k --ioengine=psync --norandommap --invalidate=0`, a fixed number "
    "of reads over the file (same seed for both sides in a run); ratio = chunkfs IOPS / plain IOPS. Buffered "
    "reads (O_DIRECT is not available through this FUSE mount), so the kernel's read-ahead applies to both.",
    "untar: `tar -xf` of the tree's tar (read from the page cache) into an empty directory, then `sync -f` of "
    "the target (for chunkfs also of the store's filesystem, so its packs reach the disk as the plain files "
    "do). rsync: `rsync -a` of the unpacked tree (page cache warm) into an empty directory, same syncs. "
    "syncfs flushes everything dirty on that filesystem, other users' writes too, so the rows 'alone' give "
    "the ratio of the commands without it. Before each side of every timed operation that is not cold, an "
    "untimed `sync` writes back what earlier steps left dirty (the 1 GiB files, the other side's tree), so "
    "neither side pays for the other's writeback. Then, before every side of every operation, three file "
    "sizes of memory are touched and freed, untimed: this VM hands freed memory back to its host, and a "
    "1 GiB page-cache write took 0.22 s on just-freed pages and 1.2 s on pages freed 8 s earlier, so a "
    "side's time depended on how long ago someone freed memory.",
    "passthrough: benchmarks/passthrough.py (a plain pyfuse3 passthrough over a directory on the same disk, "
    "the same timeouts and default_permissions as chunkfs, no writeback cache) runs every operation too, as "
    "the third side of each run (the order of the three rotates between runs). It is mounted afresh for "
    "every cold session as chunkfs is, with the same read-ahead; it has no cache of its own to empty. "
    "`--no-passthrough` leaves it out.",
    "find + stat: `find DIR -printf '%i %s %m %T@\\n'` (one lstat per entry) over the untarred tree, cold.",
    "append: open with O_APPEND, write 4 KiB, fsync, close (all timed, and each step apart); the store's growth is "
    "the change of `chunkfs stats --json` disk_bytes (du of the store directory) across the append.",
    "peak RSS: VmHWM of the daemon (pid from the store's lock file) read just before each unmount; the write "
    "session covers the sequential write, the append, untar and rsync.",
    "The machine has 2 cores shared with other engineers' test runs: ratios move between runs; compare only "
    "figures from the same run, and look at the per-run column before trusting a median.",
]


def write_chart(path: str, meta: dict, summary: dict) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    ops = [op for op in OPS if op in summary]
    sides = [side for side in SIDES if any(side in summary[op].get("by_side", {}) for op in ops)]
    colors = {"chunkfs": "#4c72b0", "passthrough": "#aaaaaa", "s3ql": "#dd8452", "juicefs": "#55a868",
              "chunkfs-none": "#8fb0e0"}
    fig, ax = plt.subplots(figsize=(max(8.0, 0.75 * len(ops) * len(sides) / 2), 4.0))
    width = 0.8 / len(sides)
    labeled: set[str] = set()
    for j, side in enumerate(sides):
        for i, op in enumerate(ops):
            row = summary[op]
            cell = row["by_side"].get(side)
            if cell is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            label = None if side in labeled else {"passthrough": "plain pyfuse3 passthrough"}.get(side, side)
            labeled.add(side)
            ax.bar(x, cell["vs_plain"], width, color=colors.get(side, "#8172b3"), label=label)
            if side == "chunkfs":
                ax.plot([x] * len(row["ratios"]), row["ratios"], "o", color="black", markersize=2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(ops)), [op.replace("_", " ") for op in ops], rotation=20, fontsize=8)
    ax.set_ylabel("speed vs plain directory (ratio)")
    ax.set_title(f"FUSE filesystems against a plain directory, {meta['scale']} scale, chunkfs avg chunk "
                 f"{meta['avg_chunk_size'] // KiB} KiB, {meta['date'][:10]}\nbars: median of the runs; "
                 "dots: chunkfs's runs", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True


def write_compression_chart(path: str, meta: dict, summary: dict) -> bool:
    """With --uncompressed-side: compression on ÷ off per operation (median bar, a dot per run), the 0.9
    line issue 15 asks for; False if there is nothing to draw or matplotlib is missing."""
    ops = [op for op in OPS if op in summary and "vs_uncompressed" in summary[op]]
    if not ops:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(ops)), 3.6))
    for i, op in enumerate(ops):
        vs = summary[op]["vs_uncompressed"]
        ax.bar(i, vs["ratio_median"], 0.6, color="#4c72b0")
        ax.plot([i] * len(vs["ratios"]), vs["ratios"], "o", color="black", markersize=3)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.9, color="red", linewidth=1.0, label="issue 15: ≥ 0.9 (write, cold read)")
    ax.set_xticks(range(len(ops)), [op.replace("_", " ") for op in ops], rotation=20, fontsize=8)
    ax.set_ylabel("speed, compression on ÷ off")
    ax.set_title(f"zstd (the default) against --compression none, paired run by run: {meta.get('file_data', 'random')} "
                 f"data, {meta['scale']} scale, {meta['date'][:10]}\nbars: median; dots: runs", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True
