"""The store's metadata in the bucket: index copies by generation, the settings, and restoring from them.

The index is copied with LMDB's online compacting copy (a consistent
snapshot taken inside one read transaction, while writers go on), and
uploaded as ``PREFIX/meta/index/<generation>.mdb`` where the generation is
the time in milliseconds, so names sort by age.  ``KEEP_GENERATIONS`` are
kept.  ``PREFIX/meta/settings.json`` is the store's settings file as
written at mkfs.  Files of the store directory that records need and that
never change once written (the compression dictionaries) are *published*
as ``PREFIX/meta/<path>`` (``meta/dictionaries/0001.zdict``) before any
record names them (S3Backend.publish).  With these and the pack objects, :func:`restore_store`
rebuilds a working store directory on a machine that has nothing else, and
:func:`refresh_replica` brings a read-only replica to the latest generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable

from ..errors import NotAStoreError, ObjectStoreError, StoreExistsError
from ..settings import SETTINGS_NAME
from ._bucket import META_FILES, META_INDEX_DIR, META_SETTINGS, Bucket

KEEP_GENERATIONS = 3
INDEX_FILE = "data.mdb"  # what LMDB names its data file in the index directory
PUBLISHED_DIRS = ("dictionaries",)  # the store directory's subdirectories whose files are published
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def write_atomically(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def copy_if_changed(copy_index: Callable[[int], None], path: str, state_dir: str) -> bool:
    """Write a compact copy of the index to ``path``; False if it equals the last one uploaded."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        copy_index(fd)
    finally:
        os.close(fd)
    digest = _md5_file(path)
    try:
        with open(os.path.join(state_dir, "index.md5"), encoding="ascii") as fh:
            return fh.read().strip() != digest
    except OSError:
        return True


def _md5_file(path: str) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
    return md5.hexdigest()


def generations(bucket: Bucket) -> list[str]:
    """Index generations in the bucket, oldest first."""
    names = [name[len(META_INDEX_DIR):-4] for name, _ in bucket.listing(META_INDEX_DIR) if name.endswith(".mdb")]
    return sorted(names)


def upload_index(bucket: Bucket, index_copy: str, store_dir: str) -> str:
    """Upload the settings and an index copy as a new generation; drop the oldest beyond the limit."""
    with open(os.path.join(store_dir, SETTINGS_NAME), "rb") as fh:
        bucket.put(META_SETTINGS, fh.read())
    generation = f"{time.time_ns() // 1_000_000:016d}"
    fd = os.open(index_copy, os.O_RDONLY | os.O_CLOEXEC)
    try:
        bucket.put_file(f"{META_INDEX_DIR}{generation}.mdb", fd, os.fstat(fd).st_size)  # streamed, not held
    finally:
        os.close(fd)
    write_atomically(os.path.join(os.path.dirname(index_copy), "index.md5"), _md5_file(index_copy).encode())
    for old in generations(bucket)[:-KEEP_GENERATIONS]:
        bucket.delete(f"{META_INDEX_DIR}{old}.mdb")
    return generation


def published_key(name: str) -> str:
    """The object name of a published file (``name``: its path relative to the store directory)."""
    return META_FILES + name


def published_files(bucket: Bucket) -> dict[str, str]:
    """Path relative to the store directory -> MD5 (the ETag) of every published file in the bucket.

    Only plain names in :data:`PUBLISHED_DIRS` count: a restore never writes
    anywhere else in the store directory, whatever the bucket holds.
    """
    found: dict[str, str] = {}
    for directory in PUBLISHED_DIRS:
        under = f"{META_FILES}{directory}/"
        for key, _, etag in bucket.listing_etags(under):
            if _PLAIN_NAME.match(key[len(under):]):
                found[key[len(META_FILES):]] = etag
    return found


def download_published(bucket: Bucket, store_dir: str) -> int:
    """Put every published file that the store directory lacks (or holds different) there; how many."""
    count = 0
    for name, etag in sorted(published_files(bucket).items()):
        path = os.path.join(store_dir, name)
        if os.path.exists(path) and _md5_file(path) == etag:
            continue
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomically(path, bucket.get(published_key(name)))
        count += 1
    return count


def check_empty_location(bucket: Bucket) -> None:
    """mkfs: refuse a bucket prefix that already holds a store (restore it instead)."""
    bucket.check()
    if bucket.get_or_none(META_SETTINGS) is not None or any(True for _ in bucket.listing("packs/")):
        raise StoreExistsError(f"{bucket.location.describe()} already holds chunkfs data: "
                               "use 'chunkfs restore' to make a store of it, or choose another prefix")


def _latest(bucket: Bucket) -> str:
    found = generations(bucket)
    if not found:
        raise NotAStoreError(f"{bucket.location.describe()}: no copy of the index in the bucket "
                             "(nothing to restore: was the store ever unmounted or synced?)")
    return found[-1]


def download_index(bucket: Bucket, meta_dir: str) -> str:
    """Put the latest index generation into ``meta_dir`` as LMDB's data file; return the generation."""
    generation = _latest(bucket)
    os.makedirs(meta_dir, mode=0o700, exist_ok=True)
    write_atomically(os.path.join(meta_dir, INDEX_FILE), bucket.get(f"{META_INDEX_DIR}{generation}.mdb"))
    try:
        os.unlink(os.path.join(meta_dir, "lock.mdb"))  # readers of the old copy are gone with it
    except FileNotFoundError:
        pass
    return generation


def restore_store(path: str, bucket: Bucket, data: dict) -> tuple[dict, str]:
    """Make a store directory at ``path`` from the bucket alone; return (settings dict, generation).

    ``data`` is the data location to record in the new settings file (the
    bucket may be reached through another endpoint from this machine).
    """
    bucket.check()
    raw = bucket.get_or_none(META_SETTINGS)
    if raw is None:
        raise NotAStoreError(f"{bucket.location.describe()}: no chunkfs store here (no {META_SETTINGS})")
    try:
        settings = json.loads(raw)
    except ValueError:
        raise ObjectStoreError(f"{bucket.location.describe()}: {META_SETTINGS} is damaged") from None
    if os.path.exists(path) and os.listdir(path):
        raise StoreExistsError(f"{path}: already exists and is not empty")
    os.makedirs(path, mode=0o700, exist_ok=True)
    for sub in ("meta", "packs", "staging"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    download_published(bucket, path)  # the dictionaries compressed records name
    generation = download_index(bucket, os.path.join(path, "meta"))
    settings["data"] = data
    write_atomically(os.path.join(path, SETTINGS_NAME), (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
    return settings, generation


def refresh_replica(path: str, bucket: Bucket) -> str:
    """Bring a read-only replica's index to the latest generation in the bucket.

    The dictionaries the writer trained since come first (the new index may
    name records that need them).  The cached pack ranges go: the writer may
    have rewritten a pack's tail (recovery after a crash) since they were fetched.
    """
    download_published(bucket, path)
    generation = download_index(bucket, os.path.join(path, "meta"))
    cache = os.path.join(path, "bucket", "cache")
    if os.path.isdir(cache):
        for name in os.listdir(cache):
            if name != ".lock":
                os.unlink(os.path.join(cache, name))
    return generation
