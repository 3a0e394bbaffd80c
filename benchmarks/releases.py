"""Real data: consecutive source releases fetched from PyPI with pip, cached under benchmarks/cache/.

Release archives are the case real users have (backups of versioned trees), and
the one where tar headers (mtimes) interrupt otherwise shared content, so they
test what the synthetic workloads cannot.  The ideal is unknown for real data;
whole-file dedup over the unpacked trees is recorded as a floor any chunker
should reach.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile

DOWNLOAD_TIMEOUT = 300


class ReleaseUnavailable(Exception):
    """The release could not be fetched (no network, no pip, package gone)."""


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if shutil.which(name):
            return [name]
    raise ReleaseUnavailable("no pip found to download release archives")


def _download(package: str, version: str, cache_dir: str) -> str:
    """Fetch the sdist (never a wheel) into the cache; return the .tar.gz path."""
    cached = _find_sdist(package, version, cache_dir)
    if cached:
        return cached
    cmd = [*_pip_command(), "download", "--no-binary", ":all:", "--no-deps", "--quiet",
           "--disable-pip-version-check", "-d", cache_dir, f"{package}=={version}"]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=DOWNLOAD_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ReleaseUnavailable(f"pip download {package}=={version} timed out") from exc
    found = _find_sdist(package, version, cache_dir)
    if proc.returncode != 0 or not found:
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        why = (errors or proc.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
        raise ReleaseUnavailable(f"pip download {package}=={version} failed: {why.strip()}")
    return found


def _find_sdist(package: str, version: str, cache_dir: str) -> str | None:
    """The cached sdist, whatever capitalisation the index gave its file name."""
    want = f"{package}-{version}.tar.gz".lower()
    for name in os.listdir(cache_dir):
        if name.lower() == want:
            return os.path.join(cache_dir, name)
    return None


def _decompress(gz_path: str) -> str:
    """Gunzip to a plain .tar beside the download (cached), streaming."""
    tar_path = gz_path[: -len(".gz")]
    if os.path.exists(tar_path):
        return tar_path
    tmp = tar_path + ".partial"
    with gzip.open(gz_path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.replace(tmp, tar_path)
    return tar_path


def release_tars(package: str, versions: tuple[str, ...], cache_dir: str) -> list[str]:
    """Plain .tar files of the given releases, downloading what the cache lacks."""
    os.makedirs(cache_dir, exist_ok=True)
    return [_decompress(_download(package, v, cache_dir)) for v in versions]


def unpack_tree(tar_path: str, dest: str) -> None:
    """Extract a release (mtimes kept, as a user's unpacked tree would have them)."""
    with tarfile.open(tar_path) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest)


def whole_file_dedup_pct(top: str, files: list[str]) -> float | None:
    """Savings if only identical whole files were shared: a floor, not the ideal."""
    total = unique = 0
    seen: set[bytes] = set()
    for rel in files:
        path = os.path.join(top, rel)
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        total += size
        if digest.digest() not in seen:
            seen.add(digest.digest())
            unique += size
    return round(100.0 * (1 - unique / total), 2) if total else None
