"""Recovery at open and garbage collection: the two places that repair packs.

Recovery runs every time a store is opened for writing.  It relies on the
ledger's accounting (see ledger.py) so that it never scans chunk data:

1. A pack file the index does not know is the leftover of a crash while a pack
   was being created or compacted: remove it.
2. Bytes beyond a pack's indexed end were appended after the last commit and
   nothing refers to them: truncate them away.
3. Every ``pending`` record names a chunk that was in flight when the previous
   owner died: it is dead space now (or, if a chunk record points at it, live).

Garbage collection compacts packs: it copies the live records of packs that
hold dead space into the active pack, makes the copies durable, commits their
new locations, and only then removes the old pack (invariant 3).  A crash at
any point leaves either the old pack (still referenced) or an unregistered
new one that recovery step 1 removes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from . import index as ix
from . import packs as pack_files
from .errors import StoreFullError
from .hashing import checksum_of
from .ledger import ChunkRecord, adjust_pack
from .packs import HEADER_SIZE, RECORD, Location, record_size

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    removed_packs: list[int] = field(default_factory=list)
    truncated_bytes: int = 0
    missing_packs: list[int] = field(default_factory=list)
    pending_resolved: int = 0

    @property
    def clean(self) -> bool:
        return not (self.removed_packs or self.truncated_bytes or self.missing_packs or self.pending_resolved)


def recover(store) -> RecoveryReport:
    report = RecoveryReport()
    packs = store.packs
    with store.index.read() as txn:
        registered = {ix.KEYPACK.unpack(k)[0]: ix.PACK.unpack(v) for k, v in txn.cursor(db=store.index.packs)}
    on_disk = set(packs.existing())
    for pack in sorted(on_disk - registered.keys()):
        log.warning("removing pack %08x that no commit refers to (left by an interrupted write)", pack)
        packs.remove(pack)
        report.removed_packs.append(pack)
    short = set()
    for pack, (end, _, _) in sorted(registered.items()):
        if pack not in on_disk:
            log.error("pack %08x is missing: run 'chunkfs fsck'", pack)
            report.missing_packs.append(pack)
            continue
        size = packs.size(pack)
        if size > end:
            packs.truncate(pack, end)
            report.truncated_bytes += size - end
        elif size < end:  # appending there would write over what the index still points at
            log.error("pack %08x is truncated (%d of %d bytes): run 'chunkfs fsck'", pack, size, end)
            short.add(pack)
    report.pending_resolved = store.write_txn(lambda txn: (_resolve_pending(store, txn), []))
    last = max((p for p in registered if p in on_disk and p not in short), default=None)
    if last is not None:
        packs.start(last)
        if packs.needs_roll():
            packs.retire_active()  # full: the next put allocates a new pack
    if not report.clean:  # debug: a mount sums recovery up in one INFO line (chunkfs/fs/recovery.py)
        log.debug("recovery: %s", report)
    return report


def _resolve_pending(store, txn) -> int:
    """Turn every pending record into dead space (or drop it, if it did get committed)."""
    resolved = 0
    with txn.cursor(db=store.index.pending) as cur:
        items = list(cur)
    for key, value in items:
        pack, rec_offset = ix.KEYPENDING.unpack(key)
        address, length = ix.PENDING.unpack(value)
        loc = Location(pack, rec_offset + RECORD.size, length)
        raw = txn.get(address, db=store.index.chunks)
        committed = raw is not None and ChunkRecord.decode(raw).location == loc
        if not committed and txn.get(ix.KEYPACK.pack(pack), db=store.index.packs) is not None:
            adjust_pack(txn, store.index.packs, pack, dead=record_size(length))
        txn.delete(key, db=store.index.pending)
        resolved += 1
    return resolved


@dataclass
class GCReport:
    packs_removed: int = 0
    chunks_moved: int = 0
    bytes_reclaimed: int = 0
    skipped_corrupt: list[int] = field(default_factory=list)
    stopped_full: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def collect_garbage(store, min_dead_fraction: float = 0.0,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    report = GCReport()
    candidates = _candidates(store, min_dead_fraction)  # wholly dead packs first: they cost no copying
    for done, pack in enumerate(candidates, 1):
        with store._lock:
            if any(pin.location.pack == pack for pin in store.ledger.pins.values()):
                continue  # a writer in flight may still reference records in it
            if pack == store.packs.active:
                store.packs.retire_active()  # stop appending to it; compact it now
            try:
                _compact(store, pack, report)
            except StoreFullError as exc:
                log.warning("gc stopped early: %s", exc)
                report.stopped_full = True
                break
        if progress:
            progress(done, len(candidates))
    return report.as_dict()


def _candidates(store, min_dead_fraction: float) -> list[int]:
    out = []
    with store.index.read() as txn:
        for key, value in txn.cursor(db=store.index.packs):
            end, live, dead = ix.PACK.unpack(value)
            used = end - HEADER_SIZE
            if dead and (used <= 0 or dead / used >= min_dead_fraction):
                out.append((live, ix.KEYPACK.unpack(key)[0]))
    return [pack for _, pack in sorted(out)]


class _CorruptLive(Exception):
    """A live record failed verification: leave its pack alone for fsck."""


def _compact(store, pack: int, report: GCReport) -> None:
    """Copy a pack's live records forward, commit their new places, then remove the pack."""
    moves: list[tuple[bytes, Location]] = []
    live = _live_records(store, pack)
    if live:
        _make_room(store, sum(record_size(loc.length) for _, loc, _ in live))
    try:
        for address, loc, checksum in live:
            data = store.packs.read(loc)
            if len(data) != loc.length or checksum_of(data) != checksum:
                log.error("gc: chunk %s in pack %08x fails verification; leaving the pack for fsck",
                          address.hex(), pack)
                raise _CorruptLive
            moves.append((address, store.packs.append(address, data)))
        store.packs.sync()  # the copies are durable before the index points at them
        old_size = store.packs.size(pack)
        store.write_txn(lambda txn: _relocate(store, txn, pack, moves), frees=True)
    except _CorruptLive:
        report.skipped_corrupt.append(pack)
        _abandon_copies(store, moves)
        return
    except BaseException:
        _abandon_copies(store, moves)
        raise
    store.index.sync()
    store.packs.remove(pack)
    report.packs_removed += 1
    report.chunks_moved += len(moves)
    report.bytes_reclaimed += old_size - sum(record_size(loc.length) for _, loc in moves)


def _make_room(store, needed: int) -> None:
    """Choose the one pack all copies of a compaction go to, before copying any.

    Starting a new pack is a commit, and every commit advances the active
    pack's indexed end: a roll between two copies would put the copies made
    so far inside the old pack's indexed end while neither live, dead nor
    pending, and a crash before the relocating commit would leave that pack's
    accounting wrong for good (tests/test_crash.py::test_gc_killed_at_every_step).
    Copies beyond the indexed end are harmless: recovery truncates them.
    """
    packs = store.packs
    if packs.active is not None and packs.active_end > HEADER_SIZE \
            and packs.active_end + needed > pack_files.PACK_TARGET_SIZE:
        # Commit while it is still active, so that its indexed end covers chunks other
        # writers appended and have not committed yet; past the end, recovery would cut them.
        store.write_txn(lambda txn: (None, []), frees=True)
        packs.retire_active()
    store._ensure_active_pack(frees=True)  # compaction gives back more than it takes


def _live_records(store, pack: int) -> list[tuple[bytes, Location, bytes]]:
    live = []
    with store.index.read() as txn:
        for loc, address in store.packs.scan(pack):
            raw = txn.get(address, db=store.index.chunks)
            if raw is not None and ChunkRecord.decode(raw).location == loc:
                live.append((address, loc, ChunkRecord.decode(raw).checksum))
    return live


def _relocate(store, txn, pack: int, moves: list[tuple[bytes, Location]]):
    for address, new in moves:
        rec = ChunkRecord.decode(txn.get(address, db=store.index.chunks))
        txn.put(address, ChunkRecord(rec.refcount, new, rec.checksum).encode(), db=store.index.chunks)
        adjust_pack(txn, store.index.packs, new.pack, live=record_size(new.length))
    txn.delete(ix.KEYPACK.pack(pack), db=store.index.packs)
    return None, []


def _abandon_copies(store, moves: list[tuple[bytes, Location]]) -> None:
    """Copies made by a compaction that did not commit are dead space: account for them.

    The transaction also advances the active pack's indexed end over them
    (every write transaction does), keeping each pack's accounting exact.
    """
    if not moves:
        return

    def account(txn):
        for _, loc in moves:
            adjust_pack(txn, store.index.packs, loc.pack, dead=record_size(loc.length))
        return None, []

    try:
        store.write_txn(account, frees=True)
    except Exception as exc:  # they lie beyond the indexed end: the next open truncates them
        log.warning("gc: could not account for abandoned copies (%s)", exc)
        return
    for _, loc in moves:
        store.packs.punch(loc)
