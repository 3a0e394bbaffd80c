"""What ``ChunkStore.stats`` reports: logical, stored, packed and disk bytes, and the ratios between them.

The counters come from the index (kept exact by every commit, so this costs
a few reads, no scan of chunk data); disk bytes are what ``du`` would count.
"""

from __future__ import annotations

import os

from . import _index as ix
from . import _reserve as reserve
from ..settings import format_compression
from ._compression import BACKGROUND_LEVEL
from ._recompress import waiting_bytes


def _savings(stored: int, logical: int) -> float | None:
    """Percent of ``logical`` bytes not stored; None (no figure) for a store without data."""
    return round(100.0 * (1 - stored / logical), 2) if logical > 0 else None


def _per(total: int, count: int) -> float:
    return round(total / count, 1) if count else 0.0


def store_stats(store) -> dict:
    """``ChunkStore.stats``: the counters kept exact in every commit, plus what the store occupies on disk."""
    with store.index.read() as txn:
        c = store.index.counters
        names = ("files", "logical_bytes", "stored_bytes", "packed_bytes", "unique_chunks", "chunk_refs")
        out = {name: ix.get_counter(txn, c, name) for name in names}
        dead = live = 0
        with txn.cursor(db=store.index.packs) as cur:
            for _, v in cur:
                _, pack_live, pack_dead = ix.PACK.unpack(v)
                live, dead = live + pack_live, dead + pack_dead
        pages = {name: ix.db_bytes(txn, getattr(store.index, name)) for name in ix.STORE_DATABASES}
        out["compression_waiting_bytes"] = waiting_bytes(store, txn)
        out["retired_refs"] = sum(store.manifest_index.retired_keys(txn).values())
    out["index_bytes"] = sum(pages.values())
    out["index_bytes_per_chunk"] = _per(pages["chunks"] + pages["lookup"], out["unique_chunks"])
    out["index_bytes_per_entry"] = _per(pages["manifests"], out["chunk_refs"])
    logical = out["logical_bytes"]
    out["savings_pct"] = _savings(out["packed_bytes"], logical)
    out["dedup_savings_pct"] = _savings(out["stored_bytes"], logical)
    out["compression_savings_pct"] = _savings(out["packed_bytes"], out["stored_bytes"])
    out["dedup_ratio"] = round(logical / out["stored_bytes"], 3) if out["stored_bytes"] else None
    out["compression_ratio"] = round(out["stored_bytes"] / out["packed_bytes"], 3) if out["packed_bytes"] else None
    out["compression"] = format_compression(store.codec.codec, store.codec.level)
    # a mount compresses behind the writers, at its own level (_recompress.py); None where new chunks are
    # compressed as they are written
    out["compression_behind"] = format_compression(store.codec.codec, BACKGROUND_LEVEL) \
        if store.codec.behind and store.codec.enabled else None
    out["dictionary"] = store.codec.dict_id
    out["garbage_bytes"] = dead
    out["disk_bytes"] = disk_bytes(store)
    out["reserve_bytes"] = reserve.held_bytes(store.path)
    # Index, pack headers and block rounding cost tens of KiB whatever the data: while they outweigh
    # the data (disk > 2 x logical), a percentage would be a huge negative that says nothing.
    out["disk_savings_pct"] = _savings(out["disk_bytes"], logical) if out["disk_bytes"] <= 2 * logical else None
    out["chunker"] = store.settings.chunker
    out["avg_chunk_size"] = store.settings.avg_size
    backend = store.packs.backend.stats()
    if backend:
        out["object_store"] = backend
    return out


def disk_bytes(store) -> int:
    """Bytes the store occupies: its directory's allocated blocks, as ``du`` counts, and its packs', less
    the space reserve (``stats`` reports that apart)."""
    total = store.packs.disk_bytes()
    for root, dirs, files in os.walk(store.path):
        if root == store.path:
            if "packs" in dirs:
                dirs.remove("packs")  # counted by the backend (wherever it keeps them)
            files = [name for name in files if name != reserve.RESERVE_NAME]
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
