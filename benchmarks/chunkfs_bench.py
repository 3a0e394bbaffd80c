"""chunkfs on the same workloads: through its Python API, and (once the CLI has it) through a mount.

chunkfs's figure is the du of its whole store directory (packs, LMDB,
settings, staging), exactly like the peers' repositories, never a sum of chunk
lengths: metadata and packing overhead are part of what a user pays.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import time

from .common import Result, Timer, ToolError, checkout_env, chunkfs_cli, du_bytes, failed, run, skipped

MOUNT_TIMEOUT = 3 * 3600


# How chunkfs stores chunks in a run: the store's default (zstd with the store dictionary), zstd with no
# dictionary, or not compressed at all.  The tool names in the tables carry the suffix.
COMPRESSION_VARIANTS = {"dict": "", "nodict": "-nodict", "none": "-none"}


def label(avg_size: str | None, compression: str = "dict") -> str:
    """Tool name in the tables: ``chunkfs`` at the store's defaults, ``chunkfs-none`` without compression,
    ``chunkfs-nodict`` with zstd but no dictionary, ``chunkfs@64K`` at another average chunk size."""
    return ("chunkfs" if avg_size is None else f"chunkfs@{avg_size}") + COMPRESSION_VARIANTS[compression]


def api_unavailable() -> str | None:
    """Why the chunkfs API cannot be used here, or None if it can."""
    try:
        importlib.import_module("chunkfs").ChunkStore
    except (ImportError, AttributeError) as exc:
        return f"chunkfs API not importable ({exc})"
    return None


def measure_api(workload, scratch: str, avg_size: str | None = None, compression: str = "dict") -> Result:
    """Ingest every file of the workload with ``ChunkStore.ingest`` into a fresh store; du the store.

    The timed part covers ingest and the final sync/close, so the figure
    includes making the data durable, as the peers' commits do (and waiting
    for a dictionary being trained).  ``compression`` is a key of
    :data:`COMPRESSION_VARIANTS`.
    """
    tool = label(avg_size, compression)
    why = api_unavailable()
    if why:
        return skipped(tool, workload.name, why)
    from chunkfs import ChunkStore

    store_dir = os.path.join(scratch, f"{tool}-{workload.name}")
    shutil.rmtree(store_dir, ignore_errors=True)
    kwargs = {} if avg_size is None else {"avg_size": avg_size}
    if compression == "none":
        kwargs["compression"] = "none"
    try:
        store = ChunkStore.create(store_dir, chunker="fastcdc", **kwargs)
        if compression == "nodict":  # an ablation for the tables (no option of the store): what the dictionary adds
            store.codec.use_dictionary = False
        try:
            empty = du_bytes(store_dir)
            with Timer() as timer:
                _ingest_all(store, workload)
            stats = store.stats()
        finally:
            start = time.perf_counter()
            store.close()
            close_seconds = time.perf_counter() - start
        return Result(tool=tool, workload=workload.name, logical_bytes=workload.logical_bytes,
                      disk_bytes=du_bytes(store_dir), empty_bytes=empty,
                      seconds=timer.seconds + close_seconds, settings=_settings(stats, compression))
    except Exception as exc:  # noqa: BLE001 - any store failure is a failed cell, not a crashed run
        return failed(tool, workload.name, f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def _ingest_all(store, workload) -> None:
    for rel in workload.files:
        with open(os.path.join(workload.path, rel), "rb") as fh:
            store.ingest(rel, fh)
    sync = getattr(store, "sync", None)
    if sync:
        sync()


def _settings(stats: dict, variant: str) -> dict:
    """What the store reports about itself, kept beside the du-based figure for comparison."""
    keys = ("chunker", "avg_chunk_size", "files", "logical_bytes", "stored_bytes", "packed_bytes", "unique_chunks",
            "savings_pct", "dedup_savings_pct", "compression_savings_pct", "compression_ratio", "dictionary",
            "disk_bytes")
    out = {f"store_{k}": stats[k] for k in keys if k in stats}
    if stats.get("unique_chunks"):
        out["measured_avg_chunk_bytes"] = round(stats["stored_bytes"] / stats["unique_chunks"])
    codec = stats.get("compression", "none")
    if codec == "none":
        out["compression"] = "none (--compression none)"
    elif variant == "dict":
        out["compression"] = (f"{codec} per chunk with the store dictionary, trained once 4 MiB of compressible "
                              "chunks were seen (the defaults)")
    else:
        out["compression"] = f"{codec} per chunk, no dictionary"
    return out


# -- through the mount ----------------------------------------------------------------------


def mount_unavailable() -> str | None:
    """Why ``chunkfs mount`` cannot be benchmarked here, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "mount not available: no /dev/fuse"
    try:
        proc = subprocess.run([*chunkfs_cli(), "mount", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=60, env={**os.environ, **checkout_env()})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount not available: {exc}"
    if proc.returncode != 0:
        return "mount not available: `chunkfs mount --help` failed"
    return None


def measure_mount(workload, scratch: str, avg_size: str | None = None) -> Result:
    """``cp -a`` the workload into a mounted chunkfs, ``sync``, unmount; du the store.

    Uses the CLI of the design brief (mkfs / mount / umount); skips with "mount
    not available" where ``chunkfs mount`` is absent.  Mounting is not timed
    (as zfs-fuse's import is not); unmount is, because it waits until
    everything is committed, as zfs-fuse's export does.
    """
    tool = label(avg_size) + "-mount"
    why = mount_unavailable()
    if why:
        return skipped(tool, workload.name, why)
    store_dir = os.path.join(scratch, f"{tool}-{workload.name}")
    mnt = store_dir + ".mnt"
    for path in (store_dir, mnt):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(mnt)
    mounted = False
    try:
        run([*chunkfs_cli(), "mkfs", store_dir, *(["--avg-size", avg_size] if avg_size else [])], env=checkout_env())
        empty = du_bytes(store_dir)
        run([*chunkfs_cli(), "mount", store_dir, mnt], env=checkout_env())  # daemon start-up is not ingest: untimed
        mounted = True
        with Timer() as timer:
            run(["cp", "-a", f"{workload.path}/.", mnt], timeout=MOUNT_TIMEOUT)
            run(["sync"])
        with Timer() as compressing:  # what the writers stored raw, compressed now (an idle mount does it itself)
            run([*chunkfs_cli(), "compress", mnt], env=checkout_env(), timeout=MOUNT_TIMEOUT)
        with Timer() as unmounting:
            run([*chunkfs_cli(), "umount", mnt], env=checkout_env(), timeout=MOUNT_TIMEOUT)
            mounted = False
        return Result(tool=tool, workload=workload.name, logical_bytes=workload.logical_bytes,
                      disk_bytes=du_bytes(store_dir), empty_bytes=empty, seconds=timer.seconds + unmounting.seconds,
                      settings={"path": "cp -a into the mount, sync, chunkfs compress (untimed), umount",
                                "compress_seconds": round(compressing.seconds, 2),
                                "compression": "mkfs defaults (zstd, behind the writers: raw, then level 6 "
                                               "with the store dictionary)"})
    except (ToolError, OSError, subprocess.SubprocessError) as exc:
        return failed(tool, workload.name, str(exc))
    finally:
        if mounted:
            run([*chunkfs_cli(), "umount", mnt], env=checkout_env(), check=False)
        shutil.rmtree(store_dir, ignore_errors=True)
        if not os.path.ismount(mnt):  # never recurse into a mount that refused to go
            shutil.rmtree(mnt, ignore_errors=True)
