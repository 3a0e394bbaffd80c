"""Garbage collection: compact packs whose dead space is worth more than copying their live records.

It copies the live records of such a pack into the active pack and commits
them as pending, makes the copies durable, commits their new locations,
makes that durable, and only then removes the old pack (invariant 3).  A
crash at any point leaves the old pack still referenced, with the copies
unregistered (recovery truncates them) or pending (recovery makes them dead
space), or the old pack referenced no more (recovery removes its file):
_recovery.py.  A pack with nothing live is dropped and removed without a
flush: recovery also drops the record of a wholly dead pack whose file is gone.

Which packs are worth it is decided on what the disk really holds, not on
the index's dead bytes: a record is punched out of its pack when it dies
(``Ledger(on_dead=packs.punch)``), so most of a dead record's bytes are
already back before gc runs; what is left is the partly used 4 KiB blocks at
each end of it and its record header, about one block per dead record.
Rewriting a pack gives back its disk blocks less what its live records take
again in the active pack, and costs its live bytes in writes.  A pack is
rewritten only when that gain is at least ``min_dead_fraction`` of the
blocks it holds; at the default 0.5 the gain is at least what the copies
take, so every run moves no more bytes than it gives back
(docs/tuning.md, "Garbage collection", has the measurements).  A pack with
nothing live is removed whatever the threshold: that costs no copying.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _index as ix
from . import _packs as pack_files
from ..errors import PackMissingError, StoreFullError
from ..hashing import checksum_of
from ._compression import DecodeError
from ._ledger import adjust_pack, chunk_key, get_record
from ._packs import HEADER_SIZE, Location, record_size

log = logging.getLogger(__name__)

DEFAULT_MIN_DEAD_FRACTION = 0.5  # of a pack's disk blocks; at 0.5 or more, gc moves no more than it frees
BLOCK = 4096  # the allocation unit the estimates round to
SLACK = 2 * BLOCK  # what copies may take beyond their bytes: the block they end in, a new pack's header


@dataclass
class GCReport:
    threshold: float = DEFAULT_MIN_DEAD_FRACTION
    packs_removed: int = 0  # every pack gc deleted, with or without copying
    packs_rewritten: int = 0  # of those, the ones whose live records were copied forward first
    chunks_moved: int = 0
    bytes_moved: int = 0  # record bytes written by the copies
    bytes_reclaimed: int = 0  # disk bytes given back: blocks held before less blocks held after
    packs_left: int = 0  # packs with dead records, left alone as not dead enough on disk
    dead_bytes_left: int = 0  # the index's dead bytes in them (mostly punched out already)
    skipped_corrupt: list[int] = field(default_factory=list)
    stopped_full: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True, slots=True)
class PackSpace:
    """One pack's space as gc weighs it: what copying it would cost and give back."""

    pack: int
    live: int  # bytes of live records: what compacting writes again
    dead: int  # bytes of dead records, by the index
    kept: int  # disk bytes its records that are not dead would take once copied (0: nothing to copy)
    held: int  # disk bytes the pack holds now

    @property
    def reclaimable(self) -> int:
        return max(self.held - self.kept, 0)

    @property
    def dead_fraction(self) -> float:
        """The share of the pack's disk blocks that compacting it would give back."""
        return self.reclaimable / self.held if self.held else 1.0

    def worth_compacting(self, min_dead_fraction: float) -> bool:
        return self.dead > 0 and (self.kept == 0 or min_dead_fraction <= 0
                                  or self.dead_fraction >= min_dead_fraction)


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _space(store, pack: int, end: int, live: int, dead: int, stat: bool = True) -> PackSpace | None:
    """The pack's space; with ``stat=False`` an upper bound on what it holds (no system call)."""
    size = end
    if stat:
        try:
            size, held = store.packs.usage(pack)
        except PackMissingError:
            return None  # a lost pack: fsck's business, not gc's
    else:
        held = _round_up(end) + BLOCK  # the most it can hold within its indexed end (an extent block)
    not_dead = max(size, end) - dead - HEADER_SIZE  # live, pending, and appended since the last commit
    kept = _round_up(not_dead) + SLACK if not_dead > 0 else 0
    return PackSpace(pack, live, dead, kept, held)


def survey(store, min_dead_fraction: float) -> tuple[list[PackSpace], list[PackSpace]]:
    """Packs with dead records: those worth compacting (cheapest first), and those left alone.

    One index record per pack, and one stat per pack that the index alone
    cannot rule out (a pack whose dead bytes are too few even if none was
    punched needs no stat).
    """
    chosen, left = [], []
    with store.index.read() as txn:
        records = [(ix.KEYPACK.unpack(k)[0], *ix.PACK.unpack(v)) for k, v in txn.cursor(db=store.index.packs)]
    for pack, end, live, dead in records:
        if not dead:
            continue
        bound = _space(store, pack, end, live, dead, stat=False)
        if pack != store.packs.active and not bound.worth_compacting(min_dead_fraction):
            left.append(bound)
            continue
        space = _space(store, pack, end, live, dead)
        if space is not None:
            (chosen if space.worth_compacting(min_dead_fraction) else left).append(space)
    chosen.sort(key=lambda s: (s.live, s.pack))  # wholly dead packs first: they cost no copying
    return chosen, left


def reclaimable_bytes(store, min_dead_fraction: float) -> int:
    """Disk bytes a gc at ``min_dead_fraction`` would give back now (cheap: no chunk data read)."""
    return sum(space.reclaimable for space in survey(store, min_dead_fraction)[0])


def collect_garbage(store, min_dead_fraction: float = DEFAULT_MIN_DEAD_FRACTION,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    report = GCReport(threshold=min_dead_fraction)
    candidates, left = survey(store, min_dead_fraction)
    report.packs_left = len(left)
    report.dead_bytes_left = sum(space.dead for space in left)
    for done, surveyed in enumerate(candidates, 1):
        try:
            _compact(store, surveyed.pack, min_dead_fraction, report)
        except StoreFullError as exc:
            log.warning("gc stopped early: %s", exc)
            report.stopped_full = True
            break
        if progress:
            progress(done, len(candidates))
    return report.as_dict()


def _current(store, pack: int) -> PackSpace | None:
    with store.index.read() as txn:
        raw = txn.get(ix.KEYPACK.pack(pack), db=store.index.packs)
    return None if raw is None else _space(store, pack, *ix.PACK.unpack(raw))


def _held(store, packs: set) -> int:
    """Disk bytes the given packs hold (a removed one holds none: its blocks are the disk's again)."""
    total = 0
    for pack in packs - {None}:
        try:
            total += store.packs.usage(pack)[1]
        except PackMissingError:
            pass
    return total


class _CorruptLive(Exception):
    """A live record failed verification: leave its pack alone for fsck."""


def _compact(store, pack: int, min_dead_fraction: float, report: GCReport) -> None:
    """Copy a pack's live records forward, commit their new places, then remove the pack.

    A chunk keeps its id (its record header goes along), so only its chunk
    record's location changes: no manifest is touched.  The store's lock is
    held while records are copied and committed, never across a disk flush
    (writers and the event loop's metadata changes wait for that lock): the
    copies are registered as pending in one commit, flushed with the lock
    released, and moved in a second commit, which checks again that each
    chunk is still where it was copied from.  A pack with nothing live costs
    no copy and no flush at all.
    """
    with store._lock:
        space = _current(store, pack)  # writers may have changed it since the survey
        pinned = any(pin.location.pack == pack for pin in store.ledger.pins.values())
        if space is None or pinned or not space.worth_compacting(min_dead_fraction):
            # pinned: a writer in flight may still reference records in it
            if space is not None and space.dead:
                report.packs_left += 1
                report.dead_bytes_left += space.dead
            return
        if pack == store.packs.active:
            store.packs.retire_active()  # stop appending to it; compact it now
        touched = {pack, store.packs.active}  # copies go to the active pack, or to one _make_room starts
        held_before = _held(store, touched)
        live = _live_records(store, pack)
        if not live:
            # No flush: if the unlink reaches the disk before this commit, recovery drops the record of
            # a wholly dead pack whose file is gone (_recovery.py); the other way round it removes the file.
            store.write_txn(lambda txn: _drop_dead_pack(store, txn, pack), frees=True)
        else:
            moves = _copy_live(store, pack, live, report)
            if moves is None:
                return
    if live:
        if not _move(store, pack, moves):
            return
        touched.add(store.packs.active)
        store.sync()  # the moves are durable before the old pack goes (packs first, then the index)
    store.packs.remove(pack)  # its blocks go back once reads already on their way are done with it
    report.packs_removed += 1
    report.packs_rewritten += bool(live)
    report.chunks_moved += len(live)
    report.bytes_moved += sum(record_size(loc.length) for _, loc in live)
    report.bytes_reclaimed += held_before - _held(store, touched)


Move = tuple[int, Location, Location]  # chunk id, where it was, where its copy is


def _copy_live(store, pack: int, live: list[tuple[int, Location]], report: GCReport) -> list[Move] | None:
    """Under the store's lock: copy the live records forward and commit the copies as pending.

    Pending, a copy is accounted for whatever happens next: a crash leaves
    it to recovery, which makes it dead space, as it does for any chunk in
    flight.  None if a live record fails verification (the pack is left for fsck).
    """
    moves: list[Move] = []
    _make_room(store, sum(record_size(loc.length) for _, loc in live))
    try:
        for chunk, loc in live:
            header, data = store.packs.read_record(loc)
            if header is None or len(data) != loc.length or header.fault(chunk, loc.length) \
                    or not _intact(store, header, data):
                log.error("gc: chunk id %d in pack %08x fails verification; leaving the pack for fsck", chunk, pack)
                raise _CorruptLive
            moves.append((chunk, loc, store.packs.append(chunk, data, header)))  # as it is, header and all
        store.write_txn(lambda txn: _register_copies(store, txn, moves), frees=True)
    except _CorruptLive:
        report.skipped_corrupt.append(pack)
        _abandon_copies(store, [new for _, _, new in moves])
        return None
    except BaseException:
        _abandon_copies(store, [new for _, _, new in moves])
        raise
    return moves


def _move(store, pack: int, moves: list[Move], carry_waiting: bool = True) -> bool:
    """Flush the copies (no lock held), then commit their new places; False if the pack is left after all.

    gc and compression behind the writers (_recompress.py) both end a pack's rewrite here; only gc's copies
    take over what waited for compression in the old pack (``carry_waiting``)."""
    moved = False
    try:
        store.packs.sync()  # the copies are durable before the index points at them
        with store._lock:
            if not any(pin.location.pack == pack for pin in store.ledger.pins.values()):
                moved = store.write_txn(lambda txn: _relocate(store, txn, pack, moves, carry_waiting), frees=True)
            # else a writer pinned one of its chunks meanwhile: the pack waits for the next run
    finally:
        if not moved:
            _drop_copies(store, moves)
    return moved


def _intact(store, header, data) -> bool:
    """Whether a record's bytes give its chunk back (a compressed one is decompressed to check)."""
    if header.compressed:
        try:
            data = store.codec.decode(header.codec, header.dictionary, data, header.raw)
        except DecodeError:
            return False
    return checksum_of(data) == header.checksum


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


def _live_records(store, pack: int) -> list[tuple[int, Location]]:
    """(chunk id, location) of every record of ``pack`` a chunk record points at."""
    live = []
    with store.index.read() as txn:
        for loc, header in store.packs.scan(pack):
            rec = get_record(txn, store.index, header.chunk)
            if rec is not None and rec.location == loc:
                live.append((header.chunk, loc))
    return live


def _register_copies(store, txn, moves: list[Move]):
    for chunk, _, new in moves:
        txn.put(ix.KEYPENDING.pack(new.pack, new.record_offset), ix.PENDING.pack(chunk, new.length),
                db=store.index.pending)
    return None, []


def _relocate(store, txn, pack: int, moves: list[Move], carry_waiting: bool = True):
    """Point each chunk still at its old place to its copy (its stored length may differ: a recompressed one);
    a copy of a chunk that died meanwhile is dead."""
    for chunk, old, new in moves:
        txn.delete(ix.KEYPENDING.pack(new.pack, new.record_offset), db=store.index.pending)
        rec = get_record(txn, store.index, chunk)
        if rec is not None and rec.location == old:
            rec.location = new
            txn.put(chunk_key(chunk), rec.encode(), db=store.index.chunks)
            adjust_pack(txn, store.index.packs, new.pack, live=record_size(new.length))
            if new.length != old.length:
                store.ledger.count(txn, "packed_bytes", new.length - old.length)
        else:
            adjust_pack(txn, store.index.packs, new.pack, dead=record_size(new.length))
    if carry_waiting:
        _carry_waiting(store, txn, pack, moves)
    _drop_dead_pack(store, txn, pack)
    return True, []


def _carry_waiting(store, txn, pack: int, moves: list[Move]) -> None:
    """Records waiting for compression (_recompress.py) go on waiting in the pack their copies went to."""
    db = store.index.recompress
    old = txn.get(ix.KEYPACK.pack(pack), db=db) if db is not None and moves else None
    if old is None:
        return
    moved = sum(new.length for _, _, new in moves)
    raw, undictionaried = (min(n, moved) for n in ix.WAITING.unpack(old))
    key = ix.KEYPACK.pack(moves[-1][2].pack)  # every copy of a compaction goes to one pack (_make_room)
    was = txn.get(key, db=db)
    was_raw, was_undictionaried = ix.WAITING.unpack(was) if was is not None else (0, 0)
    txn.put(key, ix.WAITING.pack(was_raw + raw, was_undictionaried + undictionaried), db=db)


def _drop_copies(store, moves: list[Move]) -> None:
    """Registered copies that will not be used are dead space (if this fails, the next open makes them so)."""
    def account(txn):
        for _, _, new in moves:
            txn.delete(ix.KEYPENDING.pack(new.pack, new.record_offset), db=store.index.pending)
            adjust_pack(txn, store.index.packs, new.pack, dead=record_size(new.length))
        return None, []

    try:
        store.write_txn(account, frees=True)
    except Exception as exc:  # noqa: BLE001 (they stay pending: recovery at the next open)
        log.warning("gc: could not account for unused copies (%s)", exc)
        return
    for _, _, new in moves:
        store.packs.punch(new)


def _drop_dead_pack(store, txn, pack: int):
    txn.delete(ix.KEYPACK.pack(pack), db=store.index.packs)
    if store.index.recompress is not None:
        txn.delete(ix.KEYPACK.pack(pack), db=store.index.recompress)  # what waited in it went with it
    return None, []


def _abandon_copies(store, copies: list[Location]) -> None:
    """Copies made by a compaction that did not commit are dead space: account for them.

    The transaction also advances the active pack's indexed end over them
    (every write transaction does), keeping each pack's accounting exact.
    """
    if not copies:
        return

    def account(txn):
        for loc in copies:
            adjust_pack(txn, store.index.packs, loc.pack, dead=record_size(loc.length))
        return None, []

    try:
        store.write_txn(account, frees=True)
    except Exception as exc:  # they lie beyond the indexed end: the next open truncates them
        log.warning("gc: could not account for abandoned copies (%s)", exc)
        return
    for loc in copies:
        store.packs.punch(loc)
