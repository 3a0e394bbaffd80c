"""Exact refcounts and the life cycle of every chunk record in a pack.

A record in a pack is, at any moment, in exactly one of four states, and the
per-pack accounting in the ``packs`` database adds them up::

    header + live + dead + pending records  ==  indexed end of the pack

* **unregistered**: appended after the last index commit.  Nothing refers to
  it; a crash now leaves it beyond the pack's indexed end, where recovery
  truncates it away without looking.
* **pending**: written (or orphaned by a refcount dropping to zero) while a
  writer holds a *pin* on it, and recorded in the ``pending`` database.  If
  the process dies, recovery finds these records there, not by scanning packs.
* **live**: referenced by one or more manifest entries (refcount > 0).
* **dead**: unreferenced and unpinned; space that garbage collection reclaims
  by compacting the pack.

Pins are what keep invariant 3 of the design brief ("never delete a blob a
write in flight is about to reference"): a writer pins every chunk it will
reference, whether it wrote it or found it already stored, until it commits or
abandons the write.  A refcount that drops to zero on a pinned chunk moves it
to *pending*, not *dead*.

All methods that take ``txn`` only *read* the in-memory pin table and return
actions to apply after the transaction commits: the index may re-run a
transaction (map growth), so nothing in memory may change inside one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lmdb

from . import _index as ix
from ..errors import IndexCorruptError, StoreFullError
from ._chunkids import ChunkIds
from ._packs import HEADER_SIZE, Location, record_size

Action = Callable[[], None]

# The pack of a *tombstone*: a chunk record ``chunkfs fsck --repair`` puts where a
# chunk's data was found gone, so that files keep their size and reads of the
# lost range fail with EIO.  Never a real pack (ids count up from 1); tombstones
# are in no pack's accounting, no counter and not in the lookup.
LOST_PACK = 0xFFFFFFFF


@dataclass(slots=True)
class Pin:
    chunk: int  # its chunk id, handed out when its bytes were first written
    location: Location
    raw: int  # the chunk's length (the location's is what its record stores: less if compressed)
    pins: int
    committed: bool  # a chunk record exists for it
    registered: bool  # a pending record exists for it

    # The actions that follow a commit; bound methods, because a big file's
    # commit makes one per chunk and a closure with its own dict costs more.
    def now_registered(self) -> None:
        self.registered = True

    def now_committed(self) -> None:
        self.committed, self.registered = True, False

    def now_pending(self) -> None:
        self.committed, self.registered = False, True


@dataclass(slots=True)
class ChunkRecord:
    address: bytes
    refcount: int
    location: Location
    raw: int  # the chunk's length; the location's is its stored (maybe compressed) length

    @classmethod
    def decode(cls, raw: bytes) -> "ChunkRecord":
        address, refcount, length, pack, offset = ix.CHUNK.unpack_from(raw)
        raw_length = ix.CHUNK_RAW.unpack_from(raw, ix.CHUNK.size)[0] if len(raw) > ix.CHUNK.size else length
        return cls(address, refcount, Location(pack, offset, length), raw_length)

    def encode(self) -> bytes:
        loc = self.location
        record = ix.CHUNK.pack(self.address, self.refcount, loc.length, loc.pack, loc.offset)
        return record if self.raw == loc.length else record + ix.CHUNK_RAW.pack(self.raw)

    @property
    def lost(self) -> bool:
        return self.location.pack == LOST_PACK


_REFCOUNT_AT = 32  # the refcount's offset in a chunk record (ix.CHUNK: address, then refcount)


def chunk_key(chunk: int) -> bytes:
    return ix.KEYCHUNK.pack(chunk)


def get_record(txn: lmdb.Transaction, index: ix.Index, chunk: int) -> ChunkRecord | None:
    raw = txn.get(ix.KEYCHUNK.pack(chunk), db=index.chunks)
    return ChunkRecord.decode(raw) if raw is not None else None


def put_record(txn: lmdb.Transaction, index: ix.Index, chunk: int, rec: ChunkRecord) -> None:
    """Write a chunk record; a new one in id order costs no search (LMDB's append)."""
    key, value = ix.KEYCHUNK.pack(chunk), rec.encode()
    if not txn.put(key, value, append=True, db=index.chunks):
        txn.put(key, value, db=index.chunks)


def find_chunk(txn: lmdb.Transaction, index: ix.Index, address: bytes,
               cursor: lmdb.Cursor | None = None) -> tuple[int, ChunkRecord] | None:
    """The stored chunk whose address is ``address``: every lookup entry under its prefix, confirmed."""
    prefix = address[:ix.LOOKUP_PREFIX]
    cur = cursor or txn.cursor(db=index.lookup)
    try:
        if not cur.set_range(prefix):
            return None
        for key in cur.iternext(values=False):
            if key[:ix.LOOKUP_PREFIX] != prefix:
                return None
            chunk = ix.KEYCHUNK.unpack_from(key, len(key) - ix.KEYCHUNK.size)[0]
            rec = get_record(txn, index, chunk)
            if rec is not None and rec.address == address and not rec.lost:
                return chunk, rec
        return None
    finally:
        if cursor is None:
            cur.close()


def pack_record(txn: lmdb.Transaction, db, pack: int) -> list[int]:
    raw = txn.get(ix.KEYPACK.pack(pack), db=db)
    if raw is None:
        raise IndexCorruptError(f"pack {pack:08x} is not in the index")
    return list(ix.PACK.unpack(raw))


def adjust_pack(txn, db, pack: int, end: int | None = None, live: int = 0, dead: int = 0) -> None:
    rec = pack_record(txn, db, pack)
    if end is not None:
        rec[0] = max(rec[0], end)
    rec[1] += live
    rec[2] += dead
    txn.put(ix.KEYPACK.pack(pack), ix.PACK.pack(*rec), db=db)


def new_pack_record(txn, db, pack: int) -> None:
    txn.put(ix.KEYPACK.pack(pack), ix.PACK.pack(HEADER_SIZE, 0, 0), db=db)


class Ledger:
    def __init__(self, index: ix.Index, on_dead: Callable[[Location], None] | None = None):
        self.ix = index
        self.pins: dict[bytes, Pin] = {}
        self.unregistered: set[bytes] = set()  # pinned, written, not yet recorded as pending
        self.registered_end: tuple[int | None, int] = (None, 0)  # active pack end the index knows
        self.on_dead = on_dead  # after commit: give a dead record's disk blocks back
        self._tally: _Tally | None = None
        self.ids = ChunkIds(index)

    # -- chunk ids ------------------------------------------------------------------

    def new_chunk_ids(self, count: int, txn: lmdb.Transaction | None = None) -> Sequence[int]:
        """``count`` chunk ids no chunk holds, for chunks about to be written (under the store's lock).

        Every write transaction saves the counter (_chunkids.py says why that
        is enough); ``txn``, the write transaction the caller is in, if any.
        """
        return self.ids.take(count, (pin.chunk for pin in self.pins.values()), txn)

    def new_chunk_ids_in(self, txn, count: int) -> Sequence[int]:
        """:meth:`new_chunk_ids` inside a write transaction, which saves the counter at once."""
        ids = self.new_chunk_ids(count, txn)
        self.ids.save(txn)  # again at the next commit: the write is the same
        return ids

    # -- per-transaction totals ----------------------------------------------------

    def begin_tally(self) -> None:
        """Sum pack and counter changes in memory until :meth:`flush_tally` (same transaction).

        A commit of a big file changes the same few pack records and counters
        once per chunk; writing each sum once makes such a commit several
        times cheaper.
        """
        self._tally = _Tally()

    def flush_tally(self, txn) -> None:
        tally, self._tally = self._tally, None
        if tally is not None:
            tally.write(txn, self.ix)

    def drop_tally(self) -> None:
        self._tally = None

    def _adjust(self, txn, pack: int, live: int = 0, dead: int = 0) -> None:
        if self._tally is not None:
            sums = self._tally.packs.setdefault(pack, [0, 0])
            sums[0] += live
            sums[1] += dead
        else:
            adjust_pack(txn, self.ix.packs, pack, live=live, dead=dead)

    def count(self, txn, name: str, delta: int) -> None:
        """Add ``delta`` to a store counter, once per transaction where a tally is open."""
        if not delta:
            return
        if self._tally is not None:
            self._tally.counters[name] = self._tally.counters.get(name, 0) + delta
        else:
            ix.add_counter(txn, self.ix.counters, name, delta)

    # -- lookups ------------------------------------------------------------

    def record(self, txn, chunk: int) -> ChunkRecord | None:
        return get_record(txn, self.ix, chunk)

    def find(self, txn, address: bytes, cursor: lmdb.Cursor | None = None) -> tuple[int, ChunkRecord] | None:
        """(chunk id, record) of the stored chunk with this address; None if there is none."""
        return find_chunk(txn, self.ix, address, cursor)

    def locate(self, txn, address: bytes) -> tuple[int, Location] | None:
        """(chunk id, location) of a chunk by its address: pinned, or stored."""
        pin = self.pins.get(address)
        if pin is not None:
            return pin.chunk, pin.location
        found = self.find(txn, address)
        return (found[0], found[1].location) if found else None

    # -- in every write transaction ------------------------------------------

    def register_unwritten(self, txn, active_pack: int | None, active_end: int,
                           committing: frozenset = frozenset()) -> list[Action]:
        """Record every unregistered pinned chunk as pending, then advance the pack's indexed end.

        Runs in every write transaction, so it touches only what changed since
        the last one: a chmod while a huge file streams in must not walk its pins.
        Chunks in ``committing`` get a chunk record in this same transaction,
        so a pending record for them would only be deleted again.
        """
        actions: list[Action] = self.ids.save(txn)
        for address in self.unregistered:
            pin = self.pins.get(address)
            if pin is not None and not pin.committed and not pin.registered and address not in committing:
                self._put_pending(txn, address, pin)
                actions.append(pin.now_registered)
        if self.unregistered:
            done = set(self.unregistered)
            actions.append(lambda: self.unregistered.difference_update(done))
        if active_pack is not None and self.registered_end != (active_pack, active_end):
            adjust_pack(txn, self.ix.packs, active_pack, end=active_end)
            actions.append(lambda: setattr(self, "registered_end", (active_pack, active_end)))
        return actions

    def _put_pending(self, txn, address: bytes, pin: Pin) -> None:
        if self._tally is not None:
            self._tally.pending_put.add(address)
        loc = pin.location
        key = ix.KEYPENDING.pack(loc.pack, loc.record_offset)
        txn.put(key, ix.PENDING.pack(pin.chunk, loc.length), db=self.ix.pending)

    def _drop_pending(self, txn, loc: Location) -> None:
        txn.delete(ix.KEYPENDING.pack(loc.pack, loc.record_offset), db=self.ix.pending)

    # -- reference counting ---------------------------------------------------

    def incref(self, txn, address: bytes, actions: list[Action]) -> int:
        """Count one more reference to the pinned chunk ``address``; returns its chunk id.

        A writer references only chunks it pinned (put_chunk), so the pin says
        which chunk id it is; the first reference writes its chunk record and
        its lookup entry.
        """
        pin = self.pins.get(address)
        if pin is None:
            raise IndexCorruptError(f"chunk {address.hex()} referenced without being pinned")
        chunk = pin.chunk
        rec = self.record(txn, chunk)
        if rec is not None:
            if rec.refcount >= ix.MAX_REFCOUNT:
                raise StoreFullError(f"chunk {address.hex()} is referenced {rec.refcount} times, the most a "
                                     "chunk can be")
            rec.refcount += 1
            txn.put(chunk_key(chunk), rec.encode(), db=self.ix.chunks)
            return chunk
        loc = pin.location
        put_record(txn, self.ix, chunk, ChunkRecord(address, 1, loc, pin.raw))
        txn.put(ix.lookup_key(address, chunk), b"", db=self.ix.lookup)
        if pin.registered or self._tally is None or address in self._tally.pending_put:
            self._drop_pending(txn, loc)  # else there is none to drop (a big commit skips the search)
        self._adjust(txn, loc.pack, live=record_size(loc.length))
        self.count(txn, "unique_chunks", 1)
        self.count(txn, "stored_bytes", pin.raw)
        self.count(txn, "packed_bytes", loc.length)
        actions.append(pin.now_committed)
        return chunk

    def add_references(self, txn, uses: dict[int, int]) -> None:
        """More references to committed chunks (copies of manifests), ``uses`` = {chunk id: how many more}.

        Only the refcount changes, so it is patched in the stored record
        without decoding the rest; ids are visited in key order, so a big
        clone walks the chunk table's pages once instead of at random.
        """
        db, at = self.ix.chunks, _REFCOUNT_AT
        for chunk in sorted(uses):
            key = ix.KEYCHUNK.pack(chunk)
            raw = txn.get(key, db=db)
            if raw is None:
                raise IndexCorruptError(f"chunk id {chunk} is referenced but has no record")
            refcount = ix.U32.unpack_from(raw, at)[0] + uses[chunk]
            if refcount > ix.MAX_REFCOUNT:
                raise StoreFullError(f"chunk {raw[:32].hex()} would be referenced {refcount} times, "
                                     f"more than a chunk can be ({ix.MAX_REFCOUNT})")
            txn.put(key, raw[:at] + ix.U32.pack(refcount) + raw[at + 4:], db=db)

    def decref(self, txn, chunk: int) -> list[Action]:
        rec = self.record(txn, chunk)
        if rec is None or rec.refcount <= 0:
            raise IndexCorruptError(f"refcount of chunk id {chunk} would go below zero")
        rec.refcount -= 1
        if rec.refcount:
            txn.put(chunk_key(chunk), rec.encode(), db=self.ix.chunks)
            return []
        loc = rec.location
        txn.delete(chunk_key(chunk), db=self.ix.chunks)
        if rec.lost:  # a tombstone fsck left for lost data: no bytes, not counted, not in the lookup
            return []
        txn.delete(ix.lookup_key(rec.address, chunk), db=self.ix.lookup)
        self.count(txn, "unique_chunks", -1)
        self.count(txn, "stored_bytes", -rec.raw)
        self.count(txn, "packed_bytes", -loc.length)
        size = record_size(loc.length)
        pin = self.pins.get(rec.address)
        if pin is not None and pin.chunk == chunk:  # a writer is about to reference it again: keep the bytes
            self._put_pending(txn, rec.address, pin)
            self._adjust(txn, loc.pack, live=-size)
            return [pin.now_pending]
        self._adjust(txn, loc.pack, live=-size, dead=size)
        return self._died(loc)

    def _died(self, loc: Location) -> list[Action]:
        return [lambda: self.on_dead(loc)] if self.on_dead else []

    # -- pins -------------------------------------------------------------------

    def pin_existing(self, address: bytes, chunk: int, rec: ChunkRecord) -> None:
        self.pins[address] = Pin(chunk, rec.location, rec.raw, 1, committed=True, registered=False)

    def pin_new(self, address: bytes, chunk: int, loc: Location, raw: int) -> None:
        self.pins[address] = Pin(chunk, loc, raw, 1, committed=False, registered=False)
        self.unregistered.add(address)

    def add_pin(self, address: bytes) -> bool:
        pin = self.pins.get(address)
        if pin is None:
            return False
        pin.pins += 1
        return True

    def unpin(self, txn, addresses: list[bytes]) -> list[Action]:
        """Drop one pin per address; chunks left unreferenced and unpinned become dead."""
        counts: dict[bytes, int] = {}
        for a in addresses:
            counts[a] = counts.get(a, 0) + 1
        actions: list[Action] = []
        gone = []
        for address, n in counts.items():
            pin = self.pins[address]
            if pin.pins > n:
                actions.append(_decrement(pin, n))
                continue
            gone.append(address)
            if txn.get(chunk_key(pin.chunk), db=self.ix.chunks) is None:
                loc = pin.location
                self._drop_pending(txn, loc)
                self._adjust(txn, loc.pack, dead=record_size(loc.length))
                actions += self._died(loc)
        actions.append(_remover(self.pins, gone))
        return actions


class _Tally:
    """Pack and counter changes of one transaction, written once at its end."""

    def __init__(self) -> None:
        self.packs: dict[int, list[int]] = {}  # pack -> [live delta, dead delta]
        self.counters: dict[str, int] = {}
        self.pending_put: set[bytes] = set()  # pending records written in this transaction

    def write(self, txn, index: ix.Index) -> None:
        for pack, (live, dead) in self.packs.items():
            if live or dead:
                adjust_pack(txn, index.packs, pack, live=live, dead=dead)
        for name, delta in self.counters.items():
            if delta:
                ix.add_counter(txn, index.counters, name, delta)


def _decrement(pin: Pin, n: int) -> Action:
    def apply() -> None:
        pin.pins -= n
    return apply


def _remover(table: dict, keys: list[bytes]) -> Action:
    def apply() -> None:
        for key in keys:
            table.pop(key, None)
    return apply
