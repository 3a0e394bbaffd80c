"""Repairing a store's chunk level: manifests first, then everything that follows from them.

Manifests are what files *are*, so they are the source of truth: refcounts,
chunk records, the address lookup, pack accounting and counters are
recomputed from them, in one write transaction, on a store whose lock fsck
holds (nothing is mounted).

A chunk whose bytes are gone (its pack is missing, its record is truncated
or not where the index says, or its bytes do not hash to its address) cannot
be repaired.  Its chunk record becomes a *tombstone*, under the same chunk
id, so every manifest entry naming it stays as it is: a record at
``ledger.LOST_PACK`` whose address is derived from the lost one, which no
real data hashes to, and which is not in the lookup, so new data with the
same content is stored again instead of deduplicating against a chunk that
has no bytes.  The file keeps its size and every other byte; reading the
lost range fails with EIO (never zeros), the next fsck lists the range as
``lost-data``, and deleting or overwriting the whole file releases the
tombstone.  A manifest entry naming a chunk id that has no record at all
gets a tombstone the same way.  A gap between runs is a hole and reads as
zeros, unless the file record says the file held more data bytes than its
entries do: then entries went missing, where is unknown, and every gap of
that file gets a tombstone of its own, for the same reason: data nobody
deleted must not read as zeros.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import lmdb

from . import _index as ix
from ..errors import IndexCorruptError
from ..hashing import address_of
from ._ledger import LOST_PACK, ChunkRecord, chunk_key, get_record, put_record
from ._manifests import Extent, decode_run
from ._packs import HEADER_SIZE, RECORD, RECORD_MAGIC, Location, RecordHeader, record_size

log = logging.getLogger(__name__)

MAX_TOMBSTONE = 1 << 30  # a tombstone covers at most this much: manifest lengths are 32-bit


def tombstone_address(address: bytes) -> bytes:
    """The address a lost chunk's record takes when it becomes a tombstone."""
    return hashlib.sha256(b"chunkfs lost chunk\0" + address).digest()


def gap_address(fkey: int, offset: int) -> bytes:
    """A tombstone's address for bytes a manifest does not cover at all."""
    return hashlib.sha256(b"chunkfs lost range\0" + ix.KEY64x2.pack(fkey, offset)).digest()


def unknown_address(chunk: int) -> bytes:
    """A tombstone's address for a chunk id that has no record (its address is unknown)."""
    return hashlib.sha256(b"chunkfs lost chunk id\0" + ix.KEYCHUNK.pack(chunk)).digest()


def lost_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` as (offset, length) pieces a manifest entry can hold (lengths are 32-bit)."""
    return [(o, min(MAX_TOMBSTONE, end - o)) for o in range(start, end, MAX_TOMBSTONE)]


def _tombstones(store, txn, fkey: int, start: int, end: int) -> list[Extent]:
    """New tombstones (one reference each) covering ``[start, end)`` of file ``fkey``."""
    pieces = lost_pieces(start, end)
    out = []
    for chunk, (offset, length) in zip(store.ledger.new_chunk_ids_in(txn, len(pieces)), pieces):
        put_record(txn, store.index, chunk, ChunkRecord(gap_address(fkey, offset), 1, Location(LOST_PACK, 0, length), length))
        out.append(Extent(offset, length, chunk))
    return out


def mark_lost_tail(store, txn: lmdb.Transaction, key: bytes, size: int) -> bool:
    """Grow the store file ``key`` to ``size`` bytes, the new tail a lost range (reads fail with EIO).

    For a file whose recorded size says more bytes exist than its contents
    hold: those bytes are gone, and must not read as zeros or vanish silently.
    Returns whether it changed anything.
    """
    index = store.index
    raw = txn.get(key, db=index.files)
    if raw is None:
        fkey, old, count, data = ix.next_id(txn, index.counters, "next_fkey"), 0, 0, 0
        ix.add_counter(txn, index.counters, "files", 1)
    else:
        fkey, old, count, data = ix.FILE.unpack(raw)
    if size <= old:
        return False
    lost = _tombstones(store, txn, fkey, old, size)
    store.manifest_index.write_runs(txn, fkey, lost)  # after every run of the file: no merge needed
    count, data = count + len(lost), data + size - old
    txn.put(key, ix.FILE.pack(fkey, size, count, data), db=index.files)
    ix.add_counter(txn, index.counters, "logical_bytes", size - old)
    ix.add_counter(txn, index.counters, "chunk_refs", len(lost))
    return True


def repair_store(store, bad_chunks: dict[int, str]) -> list[str]:
    """Fix the chunk level; ``bad_chunks`` (chunk id -> why) are those whose bytes a check found unusable.

    Returns one line per kind of change made.
    """
    bad = dict(bad_chunks)
    lines = fix_record_headers(store, bad)

    def fix(txn: lmdb.Transaction):
        done: Counter = Counter()
        _Repair(store, txn, bad, done).run()
        return done, []

    done = store.write_txn(fix, frees=True)
    store.sync(full=True)  # packs flushed, sync log emptied: a replay must not undo a rewritten header
    return lines + [f"{what}: {n}" for what, n in sorted(done.items())]


class _Repair:
    def __init__(self, store, txn: lmdb.Transaction, bad: dict[int, str], done: Counter):
        self.store, self.txn, self.bad, self.done = store, txn, bad, done
        self.db = store.index

    def run(self) -> None:
        for fkey, key, size, data in self._files():
            self._fix_manifest(fkey, key, size, data)
        self._drop_orphan_manifests()
        refs, lengths = self._recount()
        self._fix_chunk_records(refs, lengths)
        self._fix_lookup()
        self._fix_packs()
        self._fix_counters(sum(refs.values()))

    # -- manifests ----------------------------------------------------------------------

    def _files(self) -> list[tuple[int, bytes, int, int]]:
        out = []
        for key, value in self.txn.cursor(db=self.db.files):
            fkey, size, _, data = ix.FILE.unpack(value)
            out.append((fkey, key, size, data))
        return out

    def _entries(self, fkey: int) -> tuple[list[Extent], bool]:
        """The file's entries in order, and whether any of its runs was unreadable (and left out)."""
        out: list[Extent] = []
        damaged = False
        with self.txn.cursor(db=self.db.manifests) as cur:
            if cur.set_range(ix.KEY64x2.pack(fkey, 0)):
                for key, value in cur:
                    key_fkey, start = ix.KEY64x2.unpack(key)
                    if key_fkey != fkey:
                        break
                    try:
                        out += decode_run(start, value)
                    except IndexCorruptError:
                        damaged = True
        return out, damaged

    def _fix_manifest(self, fkey: int, key: bytes, size: int, recorded_data: int) -> None:
        """Entries in [0, size) again: overlapping entries dropped, gaps marked lost if entries went missing.

        If the entries hold fewer bytes than the file record says, some went
        missing and every gap (hole) of the file is marked lost.
        """
        old, damaged = self._entries(fkey)
        new: list[Extent] = []
        covered = 0
        missing = sum(e.length for e in old) < recorded_data
        for e in old:
            if e.offset < covered:
                self.done["overlapping manifest entries dropped"] += 1
                continue
            if e.offset > covered and missing:
                new += _tombstones(self.store, self.txn, fkey, covered, e.offset)
                self.done["manifest gaps marked lost"] += 1
            new.append(e)
            covered = e.end
        if covered < size and missing:
            new += _tombstones(self.store, self.txn, fkey, covered, size)
            self.done["manifest gaps marked lost"] += 1
        size = max(size, covered)
        if new != old or damaged:
            self.store.manifest_index.delete_runs(self.txn, fkey)
            self.store.manifest_index.write_runs(self.txn, fkey, new)
            if damaged:
                self.done["damaged manifest runs dropped"] += 1
        record = ix.FILE.pack(fkey, size, len(new), sum(e.length for e in new))
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
            self.done["manifest runs of no file dropped"] += len(stale)

    def _recount(self) -> tuple[Counter, dict[int, int]]:
        refs: Counter = Counter()
        lengths: dict[int, int] = {}
        for _, start, value in self.store.manifest_index.runs(self.txn):
            for e in decode_run(start, value):  # every run decodes now: _fix_manifest dropped the others
                refs[e.chunk] += 1
                lengths[e.chunk] = e.length
        return refs, lengths

    # -- chunk records --------------------------------------------------------------------

    def _fix_chunk_records(self, refs: Counter, lengths: dict[int, int]) -> None:
        records = [(ix.KEYCHUNK.unpack(k)[0], ChunkRecord.decode(v)) for k, v in self.txn.cursor(db=self.db.chunks)]
        for chunk, rec in records:
            count = refs.get(chunk, 0)
            if count == 0:
                self.txn.delete(chunk_key(chunk), db=self.db.chunks)
                if not rec.lost:
                    self.txn.delete(ix.lookup_key(rec.address, chunk), db=self.db.lookup)
                self.done["tombstones released" if rec.lost else "unreferenced chunk records dropped"] += 1
                continue
            if chunk in self.bad and not rec.lost:
                self.txn.delete(ix.lookup_key(rec.address, chunk), db=self.db.lookup)  # never a dedup hit again
                rec.address = tombstone_address(rec.address)
                rec.location = Location(LOST_PACK, 0, rec.location.length)
                self.done["unusable chunks marked lost"] += 1
            elif rec.refcount == count:
                continue
            else:
                self.done["refcounts corrected"] += 1
            rec.refcount = count
            self.txn.put(chunk_key(chunk), rec.encode(), db=self.db.chunks)
        recorded = {chunk for chunk, _ in records}
        for chunk in refs.keys() - recorded:
            tomb = ChunkRecord(unknown_address(chunk), refs[chunk], Location(LOST_PACK, 0, lengths[chunk]),
                               lengths[chunk])
            put_record(self.txn, self.db, chunk, tomb)
            self.done["tombstones created"] += 1

    def _fix_lookup(self) -> None:
        """The lookup again: one entry per stored chunk (not per tombstone), nothing else."""
        want = set()
        for key, value in self.txn.cursor(db=self.db.chunks):
            rec = ChunkRecord.decode(value)
            if not rec.lost:
                want.add(ix.lookup_key(rec.address, ix.KEYCHUNK.unpack(key)[0]))
        have = set(self.txn.cursor(db=self.db.lookup).iternext(values=False))
        for key in have - want:
            self.txn.delete(key, db=self.db.lookup)
        for key in want - have:
            self.txn.put(key, b"", db=self.db.lookup)
        if have != want:
            self.done["address lookup entries corrected"] += len(have ^ want)

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

    def _fix_counters(self, entries: int) -> None:
        files = sizes = unique = stored = packed = highest_fkey = highest_chunk = 0
        for value in self.txn.cursor(db=self.db.files).iternext(keys=False):
            fkey, size, _, _ = ix.FILE.unpack(value)
            files, sizes, highest_fkey = files + 1, sizes + size, max(highest_fkey, fkey)
        for key, value in self.txn.cursor(db=self.db.chunks):
            highest_chunk = max(highest_chunk, ix.KEYCHUNK.unpack(key)[0])
            rec = ChunkRecord.decode(value)
            loc = rec.location
            if loc.pack != LOST_PACK:
                unique, stored, packed = unique + 1, stored + rec.raw, packed + loc.length
        packs = [ix.KEYPACK.unpack(k)[0] for k in self.txn.cursor(db=self.db.packs).iternext(values=False)]
        for name, value in (("files", files), ("logical_bytes", sizes), ("unique_chunks", unique),
                            ("stored_bytes", stored), ("packed_bytes", packed), ("chunk_refs", entries)):
            self._set_counter(name, value)
        self._raise_counter("next_fkey", highest_fkey + 1)
        self._raise_counter("next_pack", max(packs, default=0) + 1)
        if not self.store.ledger.ids.wrapped:  # a wrapped counter hands out free ids below the highest
            self._raise_counter("next_chunk", highest_chunk + 1)
            self.store.ledger.ids.raise_to(highest_chunk + 1)

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
    header = packs.read_record_header(Location(pack, offset + RECORD.size, 0))
    return header is not None and header.magic == RECORD_MAGIC and offset + RECORD.size + header.stored > size


def fix_record_headers(store, bad: dict[int, str]) -> list[str]:
    """Rewrite damaged record headers where the pack's own records show they belong; keep chunks that verify.

    A flipped byte in a record header makes the chunk look missing (or its
    reads fail their checksum) and can stop every walk of its pack there.
    If the pack's records, walked from the start, end exactly where the
    index puts the damaged one, the header can only be that chunk's: rewrite
    it, and if the bytes behind it still hash to the address, the chunk was
    never lost.
    """
    fixed = kept = 0
    for chunk in sorted(bad):
        with store.index.read() as txn:
            rec = get_record(txn, store.index, chunk)
        if rec is None or rec.lost or rec.location.pack not in store.packs.existing():
            continue
        loc = rec.location
        expected = _expected_header(store, chunk, loc, rec.address)
        if expected is None or not _walk_ends_at(store, loc):
            continue
        store.packs.write_record_header(loc, expected)
        fixed += 1
        data = store.packs.read(loc)
        if len(data) == loc.length and address_of(data) == rec.address:
            del bad[chunk]
            kept += 1
    if not fixed:
        return []
    log.info("fsck: rewrote %d damaged record headers; %d of those chunks verify and are kept", fixed, kept)
    return [f"damaged pack record headers rewritten: {fixed} (chunks intact and kept: {kept})"]


def _expected_header(store, chunk: int, loc: Location, address: bytes, max_diff: int = 2) -> RecordHeader | None:
    """The header the record at ``loc`` should have, if it is this chunk's with a little damage; else None.

    Its checksum is the one of the bytes if they hash to the address (so a
    damaged checksum is fixed); otherwise the one it holds (never a checksum
    that would make damaged bytes pass).
    """
    actual = store.packs.read_record_header_bytes(loc)
    if len(actual) != RECORD.size:
        return None
    data = store.packs.read(loc)
    intact = len(data) == loc.length and address_of(data) == address
    stored = RecordHeader.parse(actual)
    if stored.compressed:  # its bytes are not the chunk's: no way to tell which field is damaged
        return None
    expected = RecordHeader.of(chunk, data) if intact else stored._replace(
        magic=RECORD_MAGIC, codec=0, dictionary=0, stored=loc.length, raw=loc.length, chunk=chunk)
    fields = sum(a != b for a, b in zip(actual[:-8], expected.pack()[:-8]))  # all but the checksum
    if expected.pack() == actual or fields > max_diff:
        return None
    return expected


def _walk_ends_at(store, loc: Location) -> bool:
    end = HEADER_SIZE
    for record, _ in store.packs.scan(loc.pack):
        if record.record_offset >= loc.record_offset:
            break
        end = record.offset + record.length
    return end == loc.record_offset and loc.offset + loc.length <= store.packs.size(loc.pack)
