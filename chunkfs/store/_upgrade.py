"""``chunkfs upgrade``: convert a format-version-1 store to the current format, in place and crash-safe.

The new store is built beside the old one, in ``STORE/.upgrade/`` (its own
``meta/``, ``packs/`` and settings file), by reading the old store with the
frozen version-1 reader (_v1.py) and writing through the public store API
only (``put_chunks``, ``commit_file``, ``write_txn``, ``fs_tables``), so the
writing side follows whatever the current format is.  Chunk boundaries are
kept exactly: each file's chunks are put in order and committed as they were.

One file is the commit point: ``STORE/.upgrade/READY``, created (and
fsync'ed, with its directory) only after the new store is complete and
synced.  Then the old ``meta/`` and ``packs/`` move aside to
``STORE/.upgrade-old/``, the new ones (and the new store's compression
``dictionaries/``, if it trained one) move into place, the old ones are
removed, and the new settings file is renamed over ``chunkfs.json``.

* No READY: the old store is untouched; whatever is in ``.upgrade/`` is a
  partial build, removed by the next ``chunkfs upgrade``.
* READY: the upgrade is committed; every later step checks what is already
  done, so the next ``chunkfs upgrade`` finishes it (opening the store
  refuses until then, naming ``chunkfs upgrade``).

See docs/store-format.md, "Upgrading from format 1".
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormatVersionError, IndexCorruptError, NotAStoreError, StoreError, StoreLockedError
from ..settings import FORMAT_VERSION, SETTINGS_NAME, UPGRADE_DIR, UPGRADE_READY, write_settings
from . import _v1 as v1
from ._fileids import FileId
from ._handles import take_lock
from ._manifests import TO_END, ChunkRef, Patch, hole_ref
from ._store import ChunkStore

OLD_DIR = ".upgrade-old"
# What the new store replaces; staging/, reserve and lock stay.  The new store compresses, so it may have
# trained a dictionary its records name (a format-1 store has none: its dictionaries/ is only ever new).
MOVED = ("meta", "packs", "dictionaries")
PUT_BATCH_BYTES = 8 * 1024 * 1024  # chunk bytes read before one put_chunks call
COMMIT_CHUNKS = 4096  # chunks per commit of one file, so a huge file's refs never pile up
TABLE_BATCH = 10_000  # filesystem records per write transaction
PAUSE_ENV = "CHUNKFS_UPGRADE_PAUSE_AT"  # tests: stop at a named point, to be killed there

Progress = Callable[[int, int], None]  # (bytes done, bytes in all) of file contents copied


@dataclass(frozen=True)
class UpgradeReport:
    store: str
    from_version: int
    to_version: int
    files: int = 0
    chunks: int = 0
    logical_bytes: int = 0
    action: str = "upgraded"  # or "finished" (an interrupted upgrade) or "current" (nothing to do)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def upgrade_store(path: str | os.PathLike, progress: Progress | None = None) -> UpgradeReport:
    """Upgrade the store at ``path`` to the current format, or finish an interrupted upgrade."""
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, SETTINGS_NAME)):
        raise NotAStoreError(f"{path}: not a chunkfs store (no {SETTINGS_NAME})")
    lock_fd = _take_lock(path)
    try:
        if os.path.exists(os.path.join(path, UPGRADE_DIR, UPGRADE_READY)):
            _finish(path)
            return UpgradeReport(path, v1.VERSION, FORMAT_VERSION, action="finished")
        _discard(os.path.join(path, UPGRADE_DIR))  # a build that never reached its commit point
        version = v1.read_raw_settings(path)["format_version"]
        if version == FORMAT_VERSION:
            return UpgradeReport(path, version, version, action="current")
        if version > FORMAT_VERSION:
            raise FormatVersionError(f"{path}: store format version {version} is newer than this chunkfs "
                                     f"supports ({FORMAT_VERSION}); upgrade chunkfs")
        if version != v1.VERSION:
            raise FormatVersionError(f"{path}: no upgrade from store format version {version}")
        report = _build(path, progress)
        _commit(path)
        _finish(path)
        return report
    finally:
        os.close(lock_fd)


def _take_lock(path: str) -> int:
    """The store's own lock (as ChunkStore and a mount take it), so a mounted store is refused."""
    try:
        return take_lock(path)[0]  # the pid stays: the store's next open flushes what a dead writer left
    except StoreLockedError as exc:
        raise StoreLockedError(f"{exc}; unmount it before 'chunkfs upgrade'") from None


# -- building the new store ------------------------------------------------------------


def _build(path: str, progress: Progress | None) -> UpgradeReport:
    """Write the whole new store into STORE/.upgrade and sync it; the old store is only read."""
    new_dir = os.path.join(path, UPGRADE_DIR)
    raw = v1.read_raw_settings(path)
    try:
        with v1.V1Store(path) as old, _create_like(new_dir, raw) as new:
            files = old.files()
            total = sum(f.size for f in files)
            copied = chunks = 0
            for f in files:
                chunks += _FileCopier(old, new, f).run(lambda n: progress and progress(copied + n, total))
                copied += f.size
                if progress:
                    progress(copied, total)
                _pause_point("copying")
            _copy_fs_tables(old, new)
            settings = dataclasses.replace(new.settings, uuid=raw["uuid"], created=raw["created"])
        write_settings(new_dir, settings)  # the store's identity carries over
        for sub in MOVED:
            if os.path.isdir(os.path.join(new_dir, sub)):
                _fsync_dir(os.path.join(new_dir, sub))
        _fsync_dir(new_dir)
        _fsync_dir(path)
    except BaseException:
        _discard(new_dir)
        raise
    _pause_point("built")
    return UpgradeReport(path, v1.VERSION, FORMAT_VERSION, len(files), chunks, total)


def _create_like(new_dir: str, raw: dict) -> ChunkStore:
    """A new, empty store with the old one's chunker settings (so chunk boundaries stay valid)."""
    if raw.get("chunker") == "fixed":
        return ChunkStore.create(new_dir, chunker="fixed", avg_size=raw["avg_size"])
    return ChunkStore.create(new_dir, chunker=raw.get("chunker", "fastcdc"), min_size=raw["min_size"],
                             avg_size=raw["avg_size"], max_size=raw["max_size"])


_ZERO_ADDRESSES: dict[int, bytes] = {}


def _is_zero_chunk(entry: v1.V1Entry) -> bool:
    address = _ZERO_ADDRESSES.get(entry.length)
    if address is None:
        address = _ZERO_ADDRESSES[entry.length] = hashlib.sha256(bytes(entry.length)).digest()
    return entry.address == address


def _new_chunk(old: v1.V1Store, entry: v1.V1Entry, file_id: FileId) -> bytes | ChunkRef:
    """What one version-1 chunk becomes in the new store: bytes to put, or a ready reference.

    Version 1 stored holes as all-zero chunks of the chunker's maximum size;
    format 2 keeps holes as gaps (``hole_ref``), so such a chunk becomes a hole.
    """
    if _is_zero_chunk(entry):
        return hole_ref(entry.length)
    return old.read_chunk(entry.address, file_id)


class _FileCopier:
    """Copies one file's manifest chunk by chunk, committing every COMMIT_CHUNKS chunks."""

    def __init__(self, old: v1.V1Store, new: ChunkStore, f: v1.V1File):
        self.old, self.new, self.f = old, new, f
        self.items: list[bytes | ChunkRef] = []  # in file order: bytes not yet put, or refs
        self.item_bytes = 0  # of bytes in self.items
        self.refs: list[ChunkRef] = []  # put and pinned, not yet committed
        self.committed = 0  # the new file's size so far
        self.chunks = 0

    def run(self, advance: Callable[[int], None]) -> int:
        end = 0
        self._commit()  # the file exists (and is empty) from here on, as in version 1
        for entry in self.old.entries(self.f.fkey):
            if entry.offset != end:
                raise IndexCorruptError(f"{self.old.path}: manifest of file {self.f.file_id!r} has a gap at {end}")
            end += entry.length
            if entry.lost:  # data an earlier fsck --repair found gone stays lost, never zeros
                self._commit()
                self.new.write_txn(lambda txn: (self.new.mark_lost_tail(txn, self.f.file_id, end), []))
                self.committed = end
                continue
            item = _new_chunk(self.old, entry, self.f.file_id)
            self.items.append(item)
            self.item_bytes += len(item) if isinstance(item, bytes) else 0
            if self.item_bytes >= PUT_BATCH_BYTES:
                self._put()
                advance(end)
            if len(self.refs) + len(self.items) >= COMMIT_CHUNKS:
                self._commit()
        if end != self.f.size:
            raise IndexCorruptError(f"{self.old.path}: file {self.f.file_id!r} holds {end} of {self.f.size} bytes")
        self._commit()
        return self.chunks

    def _put(self) -> None:
        data = [item for item in self.items if isinstance(item, bytes)]
        put = iter(self.new.put_chunks(data) if data else [])
        self.refs += [next(put) if isinstance(item, bytes) else item for item in self.items]
        self.items.clear()
        self.item_bytes = 0

    def _commit(self) -> None:
        self._put()
        size = self.committed + sum(ref.length for ref in self.refs)
        self.new.commit_file(self.f.file_id, [Patch(self.committed, TO_END, self.refs)], size)
        self.chunks += len(self.refs)
        self.committed, self.refs = size, []


def _copy_fs_tables(old: v1.V1Store, new: ChunkStore) -> None:
    """The filesystem's own databases (layouts unchanged) and counters, record for record."""
    tables = new.fs_tables
    for name in v1.FS_DATABASES:
        db = getattr(tables, name)
        records = old.table(name)
        while batch := [record for _, record in zip(range(TABLE_BATCH), records)]:
            def put(txn, batch=batch):
                for key, value in batch:
                    txn.put(key, value, db=db, append=True)  # keys come in order
                return None, []

            new.write_txn(put)
    counters = {name: old.counter(name) for name in v1.FS_COUNTERS}

    def set_counters(txn):
        for name, value in counters.items():
            if value:
                tables.set_counter(txn, name, value)
        return None, []

    new.write_txn(set_counters)


# -- the commit point and what follows -------------------------------------------------


def _commit(path: str) -> None:
    """Create READY durably: from here on the upgrade is done, only renames are left."""
    new_dir = os.path.join(path, UPGRADE_DIR)
    fd = os.open(os.path.join(new_dir, UPGRADE_READY), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"upgrade from store format {v1.VERSION} to {FORMAT_VERSION} committed\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(new_dir)
    _pause_point("committed")


def _finish(path: str) -> None:
    """Put the committed new store in place; every step is skipped if already done (idempotent)."""
    new_dir, old_dir = os.path.join(path, UPGRADE_DIR), os.path.join(path, OLD_DIR)
    for name in MOVED:
        staged, current = os.path.join(new_dir, name), os.path.join(path, name)
        if not os.path.exists(staged):
            continue  # moved in already
        if os.path.exists(current):  # still the old one
            os.makedirs(old_dir, mode=0o700, exist_ok=True)
            os.rename(current, os.path.join(old_dir, name))
            _fsync_dir(old_dir)
            _fsync_dir(path)
            _pause_point(f"aside-{name}")
        os.rename(staged, current)
        _fsync_dir(path)
        _pause_point(f"in-{name}")
    if os.path.exists(old_dir):
        shutil.rmtree(old_dir)
        _fsync_dir(path)
        _pause_point("old-removed")
    staged_settings = os.path.join(new_dir, SETTINGS_NAME)
    if os.path.exists(staged_settings):
        os.rename(staged_settings, os.path.join(path, SETTINGS_NAME))
        _fsync_dir(path)
        _pause_point("settings")
    _discard(new_dir)
    _fsync_dir(path)


def _discard(directory: str) -> None:
    if os.path.lexists(directory):
        try:
            shutil.rmtree(directory)
        except OSError as exc:
            raise StoreError(f"{directory}: cannot remove a leftover of an upgrade ({exc.strerror})") from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_point(name: str) -> None:
    """For the crash tests: with CHUNKFS_UPGRADE_PAUSE_AT=name, say so and wait here to be killed."""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"chunkfs upgrade: paused at {name}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
