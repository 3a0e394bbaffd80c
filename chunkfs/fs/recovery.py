"""Mount-time recovery: clean up what a crashed mount left, before the first request is served.

The policy (docs/crash-safety.md) follows from invariant 4 of the design
brief, "closed means committed; fsync means durable":

* Whatever an application closed or fsync'ed was committed to the store
  before ``close()``/``fsync()`` returned, so it is in LMDB and the packs.
  Opening the store already repaired the store's own crash windows (pack
  tails beyond the indexed end, packs no commit refers to, pending records:
  ``chunkfs/store/_recovery.py``), without scanning chunk data.
* Chunking behind the writer (``-o chunking=behind``, fs/behind.py) is the
  exception: a big file closed or fsync'ed there has a staged record naming
  its changes in its staging file.  Those files are committed first, as the
  mount would have done (``replay_staged``), whatever mode this mount uses.
* Any other staging file left in ``STORE/staging`` holds only writes that were never
  committed: nobody was promised they would survive.  They are discarded, and
  the log names each inode, how many bytes went, and its path when it can be
  found cheaply.  Replaying them could resurrect a half-written state that no
  application ever saw as a whole, so they are not recovered.
* Inodes that were unlinked while still open (``orphans``) are purged with
  their contents: their last name was gone before the crash.

If anything was done, the mount logs one INFO line summing it up; a clean
store logs nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import lmdb

from ..errors import ChunkfsError
from ..store import ChunkStore, FsTables
from . import behind
from .namespace import DIRENT, KEY64, ROOT_INO, Namespace

log = logging.getLogger(__name__)

PATH_SCAN_BUDGET = 200_000  # directory entries read to name discarded files; beyond, only inodes are logged


@dataclass
class MountRecovery:
    """What recovery found and did at one mount."""

    store_repairs: str = ""  # the store's own recovery at open, summarized ("" if clean)
    replayed: list[int] = field(default_factory=list)  # inodes whose staged changes were committed
    discarded: list[tuple[int, int, str | None]] = field(default_factory=list)  # (ino, bytes, path)
    orphans_purged: int = 0

    @property
    def clean(self) -> bool:
        return not (self.store_repairs or self.replayed or self.discarded or self.orphans_purged)

    def summary(self) -> str:
        parts = []
        if self.store_repairs:
            parts.append(f"store: {self.store_repairs}")
        if self.replayed:
            parts.append(f"committed the staged writes of {len(self.replayed)} closed or fsync'ed file(s)")
        if self.discarded:
            lost = sum(size for _, size, _ in self.discarded)
            parts.append(f"discarded uncommitted writes of {len(self.discarded)} file(s), {lost} bytes")
        if self.orphans_purged:
            parts.append(f"purged {self.orphans_purged} file(s) unlinked while open")
        return "; ".join(parts)


def recover_at_mount(core) -> MountRecovery:
    """Discard stale staging, purge orphans, and log one summary line; call before serving."""
    result = MountRecovery(store_repairs=core.store.recovery.describe() if core.store.recovery else "")
    if core.store.readonly:
        waiting = behind.records(core.store.fs_tables)
        if waiting:
            log.warning("%d file(s) have staged writes a crash left (chunking behind the writer); this read-only "
                        "mount shows them as last committed, and the next writable mount commits them", len(waiting))
        return result
    result.replayed, kept = replay_staged(core)
    found = discard_stale_staging(core.store, keep=kept)
    staged = {ino: size for ino, size in found if size}
    paths = resolve_paths(core.ns, core.store.fs_tables, set(staged)) if staged else {}
    for ino, size in sorted(staged.items()):
        path = paths.get(ino)
        if path is not None:  # discard_stale_staging logged inode and size; this names the file
            log.warning("inode %d, whose uncommitted writes were discarded, is %s", ino, path)
        result.discarded.append((ino, size, path))
    result.orphans_purged = core.purge_orphans()
    if not result.clean:
        log.info("recovered after an unclean shutdown: %s", result.summary())
    return result


def resolve_paths(ns: Namespace, index: FsTables, inos: set[int],
                  budget: int = PATH_SCAN_BUDGET) -> dict[int, str]:
    """Paths (from the mount's root) of the inodes in ``inos``, as far as a bounded scan finds them.

    Files do not record their parent, so this reads directory entries until
    every inode is named or ``budget`` entries were read: after a crash a
    few staged files are typical, and naming them is worth one pass over a
    moderate namespace, but never an unbounded one at mount time.
    """
    names: dict[int, tuple[int, bytes]] = {}
    with index.read() as txn:
        with txn.cursor(db=index.dirents) as cur:
            for n, (key, value) in enumerate(cur):
                if n >= budget or len(names) == len(inos):
                    break
                child = DIRENT.unpack(value)[0]
                if child in inos and child not in names:
                    names[child] = (KEY64.unpack(key[:KEY64.size])[0], key[KEY64.size:])
        return {ino: _join(ns, txn, parent, name, budget) for ino, (parent, name) in names.items()}


def _join(ns: Namespace, txn: lmdb.Transaction, parent: int, name: bytes, budget: int) -> str:
    """Walk up from ``parent`` (directories know their parent) to build a path."""
    parts = [name]
    seen = {parent}
    while parent != ROOT_INO:
        directory = ns.get(txn, parent)
        if directory is None or not directory.parent or directory.parent in seen:
            parts.append(b"?")
            break
        own = _name_in(ns, txn, directory.parent, parent, budget)
        parts.append(own if own is not None else b"?")
        parent = directory.parent
        seen.add(parent)
    return "/" + "/".join(p.decode("utf-8", "replace") for p in reversed(parts))


def _name_in(ns: Namespace, txn: lmdb.Transaction, directory: int, child: int, budget: int) -> bytes | None:
    for entry in ns.entries(txn, directory, limit=budget):
        if entry.ino == child:
            return entry.name
    return None


def replay_staged(core) -> tuple[list[int], set[int]]:
    """Commit the changes staged records name (fs/behind.py); returns the inodes committed, and those kept.

    A record whose file is gone (unlinked, or its staging file lost) is
    dropped with a log line.  One that cannot be committed now (a full disk)
    stays, with its staging file, for the next mount, and the file reads as
    its last commit meanwhile.
    """
    committed, kept = [], set()
    for ino, state in behind.records(core.store.fs_tables):
        with core.store.read_txn() as txn:
            inode = core.ns.get(txn, ino)
            size = core.store.size(core.file_id_for(ino), txn=txn, default=0)
        if inode is None or not inode.is_reg or inode.nlink == 0 or size != state.committed:
            _drop_record(core, ino, "its file was deleted" if inode is None or inode.nlink == 0 else
                         f"its file changed since (stored size {size}, the record's base {state.committed})")
            continue
        try:
            oi = core.files.adopt_staged(ino, size, state)
        except FileNotFoundError:
            _drop_record(core, ino, "its staging file is missing: the writes it named are lost", error=True)
            continue
        try:
            core.files.settle(oi)
            committed.append(ino)
        except ChunkfsError as exc:
            log.error("inode %d: could not commit its staged writes (%s); the next mount tries again", ino, exc)
            core.files.close_inode(oi)
            kept.add(ino)
    return committed, kept


def _drop_record(core, ino: int, why: str, error: bool = False) -> None:
    (log.error if error else log.warning)("inode %d: dropping its staged record: %s", ino, why)
    core.store.write_txn(lambda txn: (behind.drop_record(txn, core.store.fs_tables, ino), []))


def discard_stale_staging(store: ChunkStore, keep: frozenset[int] | set[int] = frozenset()) -> list[tuple[int, int]]:
    """Remove staging files an unclean shutdown left; returns (inode, bytes staged) for each.

    The policy (docs/filesystem.md): whatever an application fsync'ed, or
    closed, was committed to the store before those calls returned, so a
    staging file left behind only holds writes nobody was promised were kept.
    They are discarded, and the log names each inode and how much went.
    """
    found = []
    for name in sorted(os.listdir(store.staging_dir)):
        path = os.path.join(store.staging_dir, name)
        try:
            ino = int(name, 16)
            staged = os.stat(path).st_blocks * 512
        except (ValueError, FileNotFoundError):
            continue
        if ino in keep:
            continue
        os.unlink(path)
        if staged:
            log.warning("inode %d: discarding %d bytes of uncommitted writes left by an unclean shutdown", ino, staged)
        found.append((ino, staged))
    return found
