"""Garbage collection: compact packs that hold dead space.

It copies the live records of packs that hold dead space into the active
pack, makes the copies durable, commits their new locations, and only then
removes the old pack (invariant 3).  A crash at any point leaves either the
old pack (still referenced) or an unregistered new one that recovery
(_recovery.py, step 1) removes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _index as ix
from . import _packs as pack_files
from ..errors import StoreFullError
from ..hashing import checksum_of
from ._ledger import ChunkRecord, adjust_pack
from ._packs import HEADER_SIZE, Location, record_size

log = logging.getLogger(__name__)


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


def _dead_packs(store, min_dead_fraction: float) -> list[tuple[int, int, int]]:
    """(live bytes, dead bytes, pack) of every pack at least ``min_dead_fraction`` dead."""
    out = []
    with store.index.read() as txn:
        for key, value in txn.cursor(db=store.index.packs):
            end, live, dead = ix.PACK.unpack(value)
            used = end - HEADER_SIZE
            if dead and (used <= 0 or dead / used >= min_dead_fraction):
                out.append((live, dead, ix.KEYPACK.unpack(key)[0]))
    return out


def _candidates(store, min_dead_fraction: float) -> list[int]:
    return [pack for _, _, pack in sorted(_dead_packs(store, min_dead_fraction))]


def garbage_bytes(store, min_dead_fraction: float) -> int:
    """Dead bytes that a gc at ``min_dead_fraction`` would reclaim (cheap: one record per pack)."""
    return sum(dead for _, dead, _ in _dead_packs(store, min_dead_fraction))


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
