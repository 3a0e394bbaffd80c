"""Compression behind the writers: chunks stored raw at write time, compressed later by a pass over sealed packs.

Why: compressing text at zstd level 3 costs about as much CPU as chunking
and hashing it together, and a mount's writers share the machine's cores
with the FUSE loop, so inline compression cannot be hidden; and chunks
written before the store has a dictionary are compressed without one, for
good.  Compressing behind (as NetApp's and Windows' post-process dedup do)
keeps the writer to the cheap probe: a chunk the probe calls compressible is
stored raw and counted as *waiting* in its pack's ``recompress`` record
(_index.py).  A pass, run by the background worker when the store has been
idle for a while (_gcworker.py) or at once by ``chunkfs compress``, rewrites
each pack with waiting records, one at a time: the waiting records are
compressed at ``BACKGROUND_LEVEL`` with the store's current dictionary, and
records compressed without a dictionary are compressed again once there is
one.  Only the pack's live records are copied; the rest is dropped with it.

The rewrite is compaction's crash-safe protocol (_compaction.py): the new
records are encoded without the store's lock, then, under it, appended to
the active pack and registered as pending in one commit; the copies are
flushed with the lock released; a second commit points each chunk still at
its old place to its copy (a chunk that moved or died meanwhile leaves its
copy as dead space) and drops the old pack's records, and only once that is
durable is the old pack removed.  A crash at any step leaves the old pack
referenced, the copies pending or beyond the indexed end (recovery makes
them dead space or truncates them): nothing is lost.  A chunk keeps its id,
address and checksum (of its raw bytes), so manifests, refcounts and dedup
do not change; only its chunk record's location and stored length do.

The tally of waiting bytes per pack is an upper bound: records that die
while waiting stay counted until their pack is rewritten or dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _index as ix
from ..errors import StoreFullError
from ._compaction import _abandon_copies, _intact, _live_records, _make_room, _move, _register_copies
from ._packs import CODEC_RAW, CODEC_ZSTD, RECORD_MAGIC, Location, RecordHeader, record_size

log = logging.getLogger(__name__)

MAX_ROUNDS = 16  # passes of a wait before it gives up on writers that keep adding waiting records


@dataclass
class RecompressReport:
    packs_rewritten: int = 0
    chunks_compressed: int = 0  # records written compressed that were raw or compressed without a dictionary
    bytes_before: int = 0  # stored bytes of those records before
    bytes_after: int = 0  # ... and after
    packs_skipped: int = 0  # left for a later pass (a writer held one of their chunks, or they changed meanwhile)
    skipped_corrupt: list[int] = field(default_factory=list)
    stopped_full: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class WaitingTally:
    """Waiting bytes per pack noted by writers under the store's lock, written by the next write transaction.

    A record is appended before any transaction refers to it, and every
    write transaction writes the tally, so a pack's record is up to date by
    the time a chunk in it is committed.
    """

    def __init__(self, index: ix.Index):
        self.index = index
        self._tally: dict[int, list[int]] = {}

    def note(self, pack: int, raw: int = 0, undictionaried: int = 0) -> None:
        counts = self._tally.setdefault(pack, [0, 0])
        counts[0] += raw
        counts[1] += undictionaried

    def write(self, txn) -> None:
        """Add the tally to the packs' records (repeatable: the tally is cleared only by :meth:`written`)."""
        db = self.index.recompress
        if not self._tally or db is None:
            return
        for pack, (raw, undictionaried) in self._tally.items():
            key = ix.KEYPACK.pack(pack)
            old = txn.get(key, db=db)
            was = ix.WAITING.unpack(old) if old is not None else (0, 0)
            txn.put(key, ix.WAITING.pack(was[0] + raw, was[1] + undictionaried), db=db)

    def written(self) -> None:
        self._tally.clear()


def waiting_entries(store, txn) -> dict[int, tuple[int, int]]:
    """pack -> (raw bytes waiting, bytes compressed without a dictionary)."""
    db = store.index.recompress
    if db is None:
        return {}
    return {ix.KEYPACK.unpack(k)[0]: ix.WAITING.unpack(v) for k, v in txn.cursor(db=db)}


def waiting_bytes(store, txn) -> int:
    """Stored bytes the pass would compress now (an upper bound: some may have died since)."""
    with_dictionary = store.codec.dict_id != 0
    return sum(raw + (undictionaried if with_dictionary else 0)
               for raw, undictionaried in waiting_entries(store, txn).values())


def packs_waiting(store, include_active: bool = False) -> list[int]:
    """Packs the pass has work in, oldest first (the active one only when asked: writers append to it)."""
    if not store.codec.enabled:
        return []
    with_dictionary = store.codec.dict_id != 0
    with store.index.read() as txn:
        entries = waiting_entries(store, txn)
    return sorted(pack for pack, (raw, undictionaried) in entries.items()
                  if (raw or (undictionaried and with_dictionary))
                  and (include_active or pack != store.packs.active))


def compress_waiting(store, stop: Callable[[], bool] = lambda: False, pause: float = 0.0,
                     include_active: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Rewrite every pack with waiting records; with ``include_active``, until none is left (a wait).
    ``progress(done, total)`` after each pack (total: the packs of this round)."""
    report = RecompressReport()
    if store.readonly or not store.codec.enabled:
        return report.as_dict()
    for _ in range(MAX_ROUNDS if include_active else 1):
        todo = packs_waiting(store, include_active)
        if not todo:
            break
        for done, pack in enumerate(todo):
            if progress:
                progress(done, len(todo))
            if stop() or store.index.low_space:
                return report.as_dict()
            try:
                with store.maintenance_lock:
                    _recompress_pack(store, pack, report)
            except StoreFullError as exc:
                log.warning("compression behind the writers paused: %s", exc)
                report.stopped_full = True
                return report.as_dict()
            if pause:
                time.sleep(pause)
    return report.as_dict()


Copy = tuple[int, Location, tuple]  # chunk id, where it is, its new pack record (chunk id, stored, header)
Move = tuple[int, Location, Location]


def _recompress_pack(store, pack: int, report: RecompressReport) -> None:
    if not _seal(store, pack):
        return
    live = _live_records(store, pack)
    copies, recoded = _encode(store, pack, live, report)
    if copies is None:
        return
    if not recoded:  # nothing compresses better (the waiting records died): forget the tally, keep the pack
        store.write_txn(lambda txn: (_forget(store, txn, pack), []))
        return
    moves = _copy(store, pack, copies)
    if moves is None:
        report.packs_skipped += 1
        return
    if not _move(store, pack, moves, carry_waiting=False):
        report.packs_skipped += 1
        return
    store.sync()  # the moves are durable before the old pack goes (packs first, then the index)
    store.packs.remove(pack)
    report.packs_rewritten += 1
    for (_, old, _), (_, _, record) in zip(moves, copies):
        header = record[2]
        if header.codec != CODEC_RAW and old.length != header.stored:
            report.chunks_compressed += 1
            report.bytes_before += old.length
            report.bytes_after += header.stored


def _seal(store, pack: int) -> bool:
    """Under the lock: whether the pack is there to rewrite; the active one is sealed first."""
    with store._lock:
        with store.index.read() as txn:
            exists = txn.get(ix.KEYPACK.pack(pack), db=store.index.packs) is not None
        if not exists:  # dropped by gc or recovery: its tally goes with it
            store.write_txn(lambda txn: (_forget(store, txn, pack), []))
            return False
        if pack == store.packs.active:
            store.write_txn(lambda txn: (None, []))  # its indexed end covers what writers appended so far
            store.packs.retire_active()
    return True


def _forget(store, txn, pack: int) -> None:
    txn.delete(ix.KEYPACK.pack(pack), db=store.index.recompress)


def _encode(store, pack: int, live: list[tuple[int, Location]],
            report: RecompressReport) -> tuple[list[Copy] | None, int]:
    """Without the lock: each live record as its copy will hold it, and how many compress better."""
    codec = store.codec
    copies: list[Copy] = []
    samples, headers = [], []
    for chunk, loc in live:
        header, data = store.packs.read_record(loc)
        if header is None or len(data) != loc.length or header.fault(chunk, loc.length) \
                or not _intact(store, header, data):
            log.error("compression: chunk id %d in pack %08x fails verification; leaving the pack for fsck",
                      chunk, pack)
            report.skipped_corrupt.append(pack)
            return None, 0
        headers.append((chunk, loc, header, data))
        if header.codec == CODEC_RAW and not codec.hopeless(data):
            samples.append(data)
    codec.observe(samples)  # a store whose writers never fed the sample (written before it was opened)
    codec.wait()  # a dictionary being trained is the one these records should get
    recoded = 0
    for chunk, loc, header, data in headers:
        new = _recode(codec, header, data)
        if new is None:
            copies.append((chunk, loc, (chunk, data, header)))
            continue
        kind, dict_id, stored = new
        copies.append((chunk, loc, (chunk, stored, RecordHeader(RECORD_MAGIC, kind, dict_id, len(stored),
                                                                header.raw, chunk, header.checksum))))
        recoded += 1
    return copies, recoded


def _recode(codec, header: RecordHeader, data: bytes) -> tuple[int, int, bytes] | None:
    """The record compressed at the background level with the current dictionary; None to copy it as it is."""
    if header.codec == CODEC_RAW:
        if codec.hopeless(data):
            return None
        raw = data
    elif header.codec == CODEC_ZSTD and header.dictionary == 0 and codec.dict_id:
        raw = codec.decode(header.codec, 0, data, header.raw)
    else:
        return None
    kind, dict_id, stored = codec.recompress(raw)
    if kind == CODEC_RAW or len(stored) >= len(data):
        return None
    return kind, dict_id, bytes(stored)


def _copy(store, pack: int, copies: list[Copy]) -> list[Move] | None:
    """Under the lock: append the copies and register them as pending in one commit; None to leave the pack."""
    with store._lock:
        if any(pin.location.pack == pack for pin in store.ledger.pins.values()):
            return None  # a writer in flight references records in it: the next pass
        if set(_live_records(store, pack)) != {(chunk, loc) for chunk, loc, _ in copies}:
            return None  # a chunk committed or died since the records were read: the next pass
        _make_room(store, sum(record_size(len(record[1])) for _, _, record in copies))
        moves: list[Move] = []
        try:
            for chunk, loc, record in copies:
                moves.append((chunk, loc, store.packs.append(*record)))
            tally = store.waiting
            for (_, _, record), (_, _, new) in zip(copies, moves):
                header = record[2]
                if header.codec == CODEC_ZSTD and header.dictionary == 0:
                    tally.note(new.pack, undictionaried=header.stored)  # again once there is a dictionary
            store.write_txn(lambda txn: _register_copies(store, txn, moves), frees=True)
        except BaseException:
            _abandon_copies(store, [new for _, _, new in moves])
            raise
    return moves
