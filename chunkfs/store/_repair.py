"""Repairing a store's chunk level: manifests first, then everything that follows from them.

Manifests are what files *are*, so they are the source of truth: refcounts,
chunk records, pack accounting and counters are recomputed from them, in one
write transaction, on a store whose lock fsck holds (nothing is mounted).

A chunk whose bytes are gone (its pack is missing, its record is truncated
or not where the index says, or its bytes do not hash to its address) cannot
be repaired.  Every manifest entry naming it is pointed at a *tombstone*
instead: a chunk record at ``ledger.LOST_PACK`` under a derived address that
no real data hashes to.  The file keeps its size and every other byte;
reading the lost range fails with EIO (never zeros), the next fsck lists the
range as ``lost-data``, and deleting or overwriting the whole file releases
the tombstone.  The derived address (not the lost chunk's own) keeps new
data with the same content from deduplicating against a chunk that has no
bytes.  A gap between manifest entries is a hole and reads as zeros, unless
the file record says the file held more data bytes than its entries do:
then entries went missing, where is unknown, and every gap of that file gets
a tombstone, for the same reason: data nobody deleted must not read as zeros.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import lmdb

from . import _index as ix
from ..hashing import address_of
from ._ledger import LOST_PACK, ChunkRecord
from ._packs import HEADER_SIZE, RECORD, RECORD_MAGIC, Location, record_size

log = logging.getLogger(__name__)

NO_CHECKSUM = bytes(16)
MAX_TOMBSTONE = 1 << 30  # a tombstone covers at most this much: manifest lengths are 32-bit


def tombstone_address(address: bytes) -> bytes:
    """Where references to the lost chunk ``address`` point after a repair."""
    return hashlib.sha256(b"chunkfs lost chunk\0" + address).digest()


def gap_address(fkey: int, offset: int) -> bytes:
    """A tombstone for bytes a manifest does not cover at all."""
    return hashlib.sha256(b"chunkfs lost range\0" + ix.KEY64x2.pack(fkey, offset)).digest()


def lost_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` as (offset, length) pieces a manifest entry can hold (lengths are 32-bit)."""
    return [(o, min(MAX_TOMBSTONE, end - o)) for o in range(start, end, MAX_TOMBSTONE)]


def mark_lost_tail(index: ix.Index, txn: lmdb.Transaction, key: bytes, size: int) -> bool:
    """Grow the store file ``key`` to ``size`` bytes, the new tail a lost range (reads fail with EIO).

    For a file whose recorded size says more bytes exist than its contents
    hold: those bytes are gone, and must not read as zeros or vanish silently.
    Returns whether it changed anything.
    """
    raw = txn.get(key, db=index.files)
    if raw is None:
        fkey, old, count, data = ix.next_id(txn, index.counters, "next_fkey"), 0, 0, 0
        ix.add_counter(txn, index.counters, "files", 1)
    else:
        fkey, old, count, data = ix.FILE.unpack(raw)
    if size <= old:
        return False
    for offset, length in lost_pieces(old, size):
        address = gap_address(fkey, offset)
        txn.put(ix.KEY64x2.pack(fkey, offset), ix.MANIFEST.pack(address, length), db=index.manifests)
        txn.put(address, ChunkRecord(1, Location(LOST_PACK, 0, length), NO_CHECKSUM).encode(), db=index.chunks)
        count, data = count + 1, data + length
    txn.put(key, ix.FILE.pack(fkey, size, count, data), db=index.files)
    ix.add_counter(txn, index.counters, "logical_bytes", size - old)
    return True


def repair_store(store, bad_chunks: dict[bytes, str]) -> list[str]:
    """Fix the chunk level; ``bad_chunks`` (address -> why) are those whose bytes a check found unusable.

    Returns one line per kind of change made.
    """
    bad = dict(bad_chunks)
    lines = fix_record_headers(store, bad)

    def fix(txn: lmdb.Transaction):
        done: Counter = Counter()
        _Repair(store, txn, bad, done).run()
        return done, []

    done = store.write_txn(fix, frees=True)
    store.sync()
    return lines + [f"{what}: {n}" for what, n in sorted(done.items())]


class _Repair:
    def __init__(self, store, txn: lmdb.Transaction, bad: dict[bytes, str], done: Counter):
        self.store, self.txn, self.bad, self.done = store, txn, bad, done
        self.db = store.index

    def run(self) -> None:
        for fkey, key, size, data in self._files():
            self._fix_manifest(fkey, key, size, data)
        self._drop_orphan_manifests()
        refs, lengths = self._recount()
        self._fix_chunk_records(refs, lengths)
        self._fix_packs()
        self._fix_counters()

    # -- manifests ----------------------------------------------------------------------

    def _files(self) -> list[tuple[int, bytes, int, int]]:
        out = []
        for key, value in self.txn.cursor(db=self.db.files):
            fkey, size, _, data = ix.FILE.unpack(value)
            out.append((fkey, key, size, data))
        return out

    def _entries(self, fkey: int) -> list[tuple[int, bytes, int]]:
        out = []
        with self.txn.cursor(db=self.db.manifests) as cur:
            if cur.set_range(ix.KEY64x2.pack(fkey, 0)):
                for key, value in cur:
                    key_fkey, offset = ix.KEY64x2.unpack(key)
                    if key_fkey != fkey:
                        break
                    address, length = ix.MANIFEST.unpack(value)
                    out.append((offset, address, length))
        return out

    def _lost(self, address: bytes) -> bool:
        return address in self.bad or self.txn.get(address, db=self.db.chunks) is None

    def _fix_manifest(self, fkey: int, key: bytes, size: int, recorded_data: int) -> None:
        """Entries in [0, size) again: tombstones for lost chunks, overlapping entries dropped.

        If the entries hold fewer bytes than the file record says, some went
        missing and every gap (hole) of the file is marked lost.
        """
        old = self._entries(fkey)
        new: list[tuple[int, bytes, int]] = []
        covered = 0
        missing = sum(length for _, _, length in old) < recorded_data
        for offset, address, length in old:
            if offset < covered:
                self.done["overlapping manifest entries dropped"] += 1
                continue
            if offset > covered and missing:
                new += [(o, gap_address(fkey, o), n) for o, n in lost_pieces(covered, offset)]
                self.done["manifest gaps marked lost"] += 1
            if self._lost(address):
                address = tombstone_address(address)
                self.done["references to lost chunks pointed at tombstones"] += 1
            new.append((offset, address, length))
            covered = offset + length
        if covered < size and missing:
            new += [(o, gap_address(fkey, o), n) for o, n in lost_pieces(covered, size)]
            self.done["manifest gaps marked lost"] += 1
        size = max(size, covered)
        if new != old:
            for offset, _, _ in old:
                self.txn.delete(ix.KEY64x2.pack(fkey, offset), db=self.db.manifests)
            for offset, address, length in new:
                self.txn.put(ix.KEY64x2.pack(fkey, offset), ix.MANIFEST.pack(address, length),
                             db=self.db.manifests)
        record = ix.FILE.pack(fkey, size, len(new), sum(length for _, _, length in new))
        if self.txn.get(key, db=self.db.files) != record:
            self.txn.put(key, record, db=self.db.files)
            self.done["file records corrected"] += 1

    def _drop_orphan_manifests(self) -> None:
        fkeys = {fkey for fkey, _, _, _ in self._files()}
        stale = [key for key in self.txn.cursor(db=self.db.manifests).iternext(values=False)
                 if ix.KEY64x2.unpack(key)[0] not in fkeys]
        for key in stale:
            self.txn.delete(key, db=self.db.manifests)
        if stale:
            self.done["manifest entries of no file dropped"] += len(stale)

    def _recount(self) -> tuple[Counter, dict[bytes, int]]:
        refs: Counter = Counter()
        lengths: dict[bytes, int] = {}
        for value in self.txn.cursor(db=self.db.manifests).iternext(keys=False):
            address, length = ix.MANIFEST.unpack(value)
            refs[address] += 1
            lengths[address] = length
        return refs, lengths

    # -- chunk records --------------------------------------------------------------------

    def _fix_chunk_records(self, refs: Counter, lengths: dict[bytes, int]) -> None:
        records = [(a, ChunkRecord.decode(v)) for a, v in self.txn.cursor(db=self.db.chunks)]
        for address, rec in records:
            count = refs.get(address, 0)
            if address in self.bad or count == 0:
                self.txn.delete(address, db=self.db.chunks)
                what = "tombstones released" if rec.location.pack == LOST_PACK else "unusable or unreferenced " \
                    "chunk records dropped"
                self.done[what] += 1
            elif rec.refcount != count:
                rec.refcount = count
                self.txn.put(address, rec.encode(), db=self.db.chunks)
                self.done["refcounts corrected"] += 1
        recorded = {a for a, _ in records if a not in self.bad and refs.get(a, 0)}
        for address in refs.keys() - recorded:
            tomb = ChunkRecord(refs[address], Location(LOST_PACK, 0, lengths[address]), NO_CHECKSUM)
            self.txn.put(address, tomb.encode(), db=self.db.chunks)
            self.done["tombstones created"] += 1

    # -- packs ------------------------------------------------------------------------------

    def _fix_packs(self) -> None:
        """Recompute each pack's accounting from the chunk records; forget packs that are gone."""
        present = set(self.store.packs.existing())
        live: Counter = Counter()
        live_end: Counter = Counter()
        for value in self.txn.cursor(db=self.db.chunks).iternext(keys=False):
            loc = ChunkRecord.decode(value).location
            if loc.pack != LOST_PACK:
                live[loc.pack] += record_size(loc.length)
                live_end[loc.pack] = max(live_end[loc.pack], loc.offset + loc.length)
        pending = self._fix_pending(present)
        for key, value in list(self.txn.cursor(db=self.db.packs)):
            pack = ix.KEYPACK.unpack(key)[0]
            if pack not in present:
                self.txn.delete(key, db=self.db.packs)
                self.done["records of missing packs dropped"] += 1
                continue
            end = self._pack_end(pack, ix.PACK.unpack(value)[0], live_end[pack])
            dead = end - HEADER_SIZE - live[pack] - pending[pack]
            record = ix.PACK.pack(end, live[pack], max(dead, 0))
            if record != value:
                self.txn.put(key, record, db=self.db.packs)
                self.done["pack accounting corrected"] += 1

    def _fix_pending(self, present: set[int]) -> Counter:
        pending: Counter = Counter()
        for key, value in list(self.txn.cursor(db=self.db.pending)):
            pack, _ = ix.KEYPENDING.unpack(key)
            if pack in present and self.txn.get(ix.KEYPACK.pack(pack), db=self.db.packs) is not None:
                pending[pack] += record_size(ix.PENDING.unpack(value)[1])
            else:
                self.txn.delete(key, db=self.db.pending)
        return pending

    def _pack_end(self, pack: int, end: int, live_end: int) -> int:
        """The pack's indexed end: never before a live record, never past its last whole record."""
        size = self.store.packs.size(pack)
        if size < end:
            end = max(_whole_records_end(self.store.packs, pack, size), live_end, HEADER_SIZE)
            if end < size:
                self.store.packs.truncate(pack, end)  # a partial record nothing references
            self.done["truncated packs cut back to their last whole record"] += 1
        return max(end, live_end)

    # -- counters -------------------------------------------------------------------------------

    def _fix_counters(self) -> None:
        files = sizes = unique = stored = highest_fkey = 0
        for value in self.txn.cursor(db=self.db.files).iternext(keys=False):
            fkey, size, _, _ = ix.FILE.unpack(value)
            files, sizes, highest_fkey = files + 1, sizes + size, max(highest_fkey, fkey)
        for value in self.txn.cursor(db=self.db.chunks).iternext(keys=False):
            loc = ChunkRecord.decode(value).location
            if loc.pack != LOST_PACK:
                unique, stored = unique + 1, stored + loc.length
        packs = [ix.KEYPACK.unpack(k)[0] for k in self.txn.cursor(db=self.db.packs).iternext(values=False)]
        for name, value in (("files", files), ("logical_bytes", sizes), ("unique_chunks", unique),
                            ("stored_bytes", stored)):
            self._set_counter(name, value)
        self._raise_counter("next_fkey", highest_fkey + 1)
        self._raise_counter("next_pack", max(packs, default=0) + 1)

    def _set_counter(self, name: str, value: int) -> None:
        if ix.get_counter(self.txn, self.db.counters, name) != value:
            self.txn.put(name.encode(), ix.U64.pack(value), db=self.db.counters)
            self.done["counters corrected"] += 1

    def _raise_counter(self, name: str, at_least: int) -> None:
        if ix.get_counter(self.txn, self.db.counters, name) < at_least:
            self._set_counter(name, at_least)


def _whole_records_end(packs, pack: int, size: int) -> int:
    """End of the last whole record of a truncated pack, if only its tail is partial; else ``size``."""
    end = HEADER_SIZE
    for loc, _ in packs.scan(pack):
        end = loc.offset + loc.length
    return end if end + RECORD.size > size or _claims_past(packs, pack, end, size) else size


def _claims_past(packs, pack: int, offset: int, size: int) -> bool:
    magic, length, _ = packs.read_record_header(Location(pack, offset + RECORD.size, 0))
    return magic == RECORD_MAGIC and offset + RECORD.size + length > size


def fix_record_headers(store, bad: dict[bytes, str]) -> list[str]:
    """Rewrite damaged record headers where the pack's own records show they belong; keep chunks that verify.

    A flipped byte in a record header makes the chunk look missing and stops
    every walk of its pack there.  If the pack's records, walked from the
    start, end exactly where the index puts the damaged one, the header can
    only be that chunk's: rewrite it, and if the bytes behind it still hash
    to the address, the chunk was never lost.
    """
    fixed = kept = 0
    for address in sorted(bad):
        with store.index.read() as txn:
            raw = txn.get(address, db=store.index.chunks)
        if raw is None:
            continue
        loc = ChunkRecord.decode(raw).location
        if loc.pack == LOST_PACK or loc.pack not in store.packs.existing():
            continue
        if not _damaged_header_of(store, loc, address) or not _walk_ends_at(store, loc):
            continue
        store.packs.write_record_header(loc, address)
        fixed += 1
        data = store.packs.read(loc)
        if len(data) == loc.length and address_of(data) == address:
            del bad[address]
            kept += 1
    if not fixed:
        return []
    log.info("fsck: rewrote %d damaged record headers; %d of those chunks verify and are kept", fixed, kept)
    return [f"damaged pack record headers rewritten: {fixed} (chunks intact and kept: {kept})"]


def _damaged_header_of(store, loc: Location, address: bytes, max_diff: int = 2) -> bool:
    """The header at ``loc`` is this chunk's with a byte or two damaged (not another record's)."""
    expected = RECORD.pack(RECORD_MAGIC, loc.length, address)
    actual = store.packs.read_record_header_bytes(loc)
    if len(actual) != len(expected):
        return False
    diff = sum(a != b for a, b in zip(actual, expected))
    return 0 < diff <= max_diff


def _walk_ends_at(store, loc: Location) -> bool:
    end = HEADER_SIZE
    for record, _ in store.packs.scan(loc.pack):
        if record.record_offset >= loc.record_offset:
            break
        end = record.offset + record.length
    return end == loc.record_offset and loc.offset + loc.length <= store.packs.size(loc.pack)
