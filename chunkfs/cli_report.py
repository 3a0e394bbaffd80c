"""What the ``chunkfs`` command prints for people: the stats table and the one-line gc report."""

from __future__ import annotations

from .settings import format_size

NO_FIGURE = "–"  # a percentage that would mean nothing (no data yet, or overhead outweighing it)


def format_stats(s: dict) -> str:
    def both(n: int) -> str:
        return f"{format_size(n)} ({n:,} bytes)"

    def pct(value: float | None) -> str:
        return NO_FIGURE if value is None else f"{value:.1f}%"

    def ratio(value: float | None) -> str:
        return NO_FIGURE if value is None else f"{value:.2f}x"

    dictionary = f"dictionary {s['dictionary']}" if s["dictionary"] else "no dictionary yet"
    behind = f"; {s['compression_behind']} behind the writers" if s.get("compression_behind") else ""
    mounted = f" (mounted on {', '.join(s['mountpoints'])})" if s["mountpoints"] else ""
    rows = [
        ("store", s["store"] + mounted),
        ("files", f"{s['files']:,}"),
        ("logical bytes", both(s["logical_bytes"])),
        ("after dedup", f"{both(s['stored_bytes'])}, dedup ratio {ratio(s['dedup_ratio'])}"),
        ("compressed", f"{both(s['packed_bytes'])}, compression ratio {ratio(s['compression_ratio'])} "
                       f"({s['compression']}{behind}, {dictionary})"),
        ("savings", f"{pct(s['savings_pct'])} (dedup {pct(s['dedup_savings_pct'])}, then compression "
                    f"{pct(s['compression_savings_pct'])})"),
        ("chunks", f"{s['unique_chunks']:,} unique, {s['chunk_refs']:,} references "
                   f"({s['chunker']}, average {format_size(s['avg_chunk_size'])})"),
        ("disk bytes", f"{both(s['disk_bytes'])}, savings {pct(s['disk_savings_pct'])}"),
        ("reserve", f"{both(s['reserve_bytes'])} held back so deletes still work on a full disk"),
        ("garbage", f"{both(s['garbage_bytes'])} (reclaim with 'chunkfs gc')"),
        ("replaced", f"{s['retired_refs']:,} references of replaced or deleted big files, dropped in the "
                     "background when the mount is quiet (now: 'chunkfs gc')"),
        ("to compress", f"{both(s['compression_waiting_bytes'])} stored raw or without a dictionary until "
                        "compressed behind the writers (now: 'chunkfs compress')"),
    ]
    rows += _object_store_rows(s.get("object_store"))
    return "\n".join(f"{name + ':':<15}{value}" for name, value in rows)


def _object_store_rows(o: dict | None) -> list[tuple[str, str]]:
    if not o:
        return []
    r = o.get("requests", {})
    cache = o.get("cache", {})
    rows = [
        ("pack data", o["data"] + (f" at {o['endpoint']}" if o.get("endpoint") else "")),
        ("objects", f"{o['objects']:,} packs, {format_size(o['bucket_bytes'])} in the bucket"),
        ("upload backlog", f"{o['upload_backlog_packs']:,} sealed packs, {format_size(o['upload_backlog_bytes'])} "
                           "not yet in the bucket (open pack included)"),
        ("pack cache", f"{format_size(cache.get('bytes', 0))} of {format_size(cache.get('capacity', 0))}"),
        ("requests", f"{r.get('put', 0):,} PUT, {r.get('get', 0):,} GET, {r.get('delete', 0):,} DELETE, "
                     f"{r.get('list', 0):,} LIST, {r.get('errors', 0):,} failed (this mount)"),
    ]
    if o.get("last_error"):
        rows.append(("last error", o["last_error"]))
    return rows


def count_of(n: int, noun: str) -> str:
    """``1 pack``, ``3 packs``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def format_gc(r: dict) -> str:
    def packs(n: int) -> str:
        return count_of(n, "pack")

    line = (f"gc: removed {packs(r['packs_removed'])} ({r['packs_rewritten']} rewritten), "
            f"moved {format_size(r['bytes_moved'])} in {r['chunks_moved']:,} live chunks, "
            f"reclaimed {format_size(r['bytes_reclaimed'])}")
    if r["packs_left"]:
        their = "its" if r["packs_left"] == 1 else "their"
        line += (f"; {packs(r['packs_left'])} with {format_size(r['dead_bytes_left'])} dead left as is "
                 f"(a rewrite would free under {r['threshold']:.0%} of {their} disk space)")
    return line
