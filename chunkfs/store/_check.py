"""Checking a store against its own invariants, independently of the code that keeps them.

Everything here is recomputed from scratch (refcounts from manifests, pack
accounting from the records in the pack files, counters from the records)
and compared with what the index says, so a bug in the bookkeeping of
``_ledger.py`` shows up here instead of being trusted.  The checks are
read-only and run in one LMDB read transaction (a consistent snapshot), so
they work on a store opened ``readonly=True`` while a daemon has it mounted.

Damage to chunk data is reported per chunk (or per missing pack) together
with every file that uses it, by path when the store holds a filesystem,
and the byte ranges of those files that cannot be read.  If the store holds
a filesystem, chunkfs/fsck.py checks it in the same snapshot.

Chunks whose data an earlier ``--repair`` found gone are *tombstones*
(``ledger.LOST_PACK``): they are not damage any more but ``lost-data``,
listed per file.  Repairs live in ``_repair.py`` (and, for the namespace, chunkfs/repair_namespace.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import lmdb

from . import _index as ix
from ..errors import IndexCorruptError
from ..hashing import address_of, checksum_of
from ._compression import DecodeError
from ._ledger import ChunkRecord
from ._manifests import decode_run
from ._packs import HEADER_SIZE, Location, record_size
from ._report import CheckReport, FileDamage, Progress, format_ranges, merge_ranges
from ._fileids import FileId, decode_file_id

PROGRESS_EVERY = 4096

# Names a store file for people: (name, paths) from its id (None: a chunk no file uses).
FileNamer = Callable[[FileId | None], tuple[str, tuple[str, ...]]]


def check_records(store, txn: lmdb.Transaction, report: CheckReport, namer: FileNamer,
                  progress: Progress, verify_data: bool) -> None:
    """Recount the store's own records in ``txn`` and add every finding to ``report``."""
    _StoreCheck(store, txn, report, namer, progress).run(verify_data)


class _StoreCheck:
    """One pass over each database; chunk damage is collected first and reported with its files last."""

    def __init__(self, store, txn, report: CheckReport, namer: FileNamer, progress: Progress):
        self.store, self.txn, self.report, self.namer, self.progress = store, txn, report, namer, progress
        self.db = store.index
        self.files: dict[int, tuple[bytes, int, int, int]] = {}  # fkey -> (files key, size, chunks, data bytes)
        self.refs: Counter = Counter()  # chunk id -> references from manifests
        self.entries = 0
        self.problems: dict[int, tuple[str, str, str]] = {}  # chunk id -> (kind, message, subject)
        self.missing_packs: dict[int, list[int]] = {}
        self.tombstones: set[int] = set()
        self.live_at: dict[Location, tuple[int, bytes]] = {}  # location -> (chunk id, address)
        self.unique = self.stored = self.packed = self.highest_chunk = 0
        self.raw_of: dict[int, int] = {}  # chunk id -> raw length, for compressed records

    def run(self, verify_data: bool) -> None:
        self._load_files()
        self._check_manifests()
        self._check_chunks()
        self._check_lookup()
        self._check_counters()
        self._check_packs()
        if verify_data:
            self._verify_data()
        self._report_chunk_damage()

    def _entries(self, name: str) -> int:
        return self.txn.stat(getattr(self.db, name))["entries"]

    # -- files and manifests --------------------------------------------------------

    def _load_files(self) -> None:
        for key, value in self.txn.cursor(db=self.db.files):
            fkey, size, count, data = ix.FILE.unpack(value)
            self.files[fkey] = (key, size, count, data)
        self.report.files_checked = len(self.files)
        self.retired = self.store.manifest_index.retired_keys(self.txn)  # set aside, dropped in the background

    def _check_manifests(self) -> None:
        """Every file's entries lie in [0, size) without overlaps; recounts the references to every chunk.

        Gaps between runs are holes, so an entry that went missing looks
        like one: the file record's count of data bytes is what tells them apart.
        """
        total = self._entries("manifests")
        current, covered, count, data, broken = None, 0, 0, 0, False
        seen = set()
        for n, (fkey, start, value) in enumerate(self.store.manifest_index.runs(self.txn), 1):
            if fkey != current:
                if current is not None:
                    self._end_file(current, covered, count, data, broken)
                    seen.add(current)
                current, covered, count, data, broken = fkey, 0, 0, 0, False
            try:
                run = decode_run(start, value)
            except IndexCorruptError:
                if not broken and fkey in self.files:
                    self._add_file("broken-manifest", fkey, f"its manifest run at offset {start} is damaged")
                broken = True
                continue
            for e in run:
                self.refs[e.chunk] += 1
            if start < covered and not broken:
                broken = True
                self._add_file("broken-manifest", fkey, f"its chunks overlap at offset {start}")
            covered, count = max(covered, run[-1].end), count + len(run)
            data += sum(e.length for e in run)
            self.entries += len(run)
            if n % PROGRESS_EVERY == 0:
                self.progress("manifests", n, total)
        if current is not None:
            self._end_file(current, covered, count, data, broken)
            seen.add(current)
        for fkey in self.files.keys() - seen:
            self._end_file(fkey, 0, 0, 0, False)
        self.progress("manifests", total, total)

    def _end_file(self, fkey: int, covered: int, count: int, data: int, broken: bool) -> None:
        if fkey in self.retired:
            return  # a replaced or deleted file's manifest: its references still count until they are dropped
        if fkey not in self.files:
            self.report.add("orphan-manifest", f"{count} manifest entries of file key {fkey} belong to no file",
                            f"fkey:{fkey}")
            return
        _, size, recorded, recorded_data = self.files[fkey]
        if not broken and covered > size:
            self._add_file("size-mismatch", fkey, f"its chunks cover {covered} bytes, its size is {size}")
        if not broken and data < recorded_data:
            self._add_file("broken-manifest", fkey, f"its chunks hold {data} bytes, its record says "
                           f"{recorded_data}: entries are missing")
        if recorded != count or recorded_data != data:
            self._add_file("count-mismatch", fkey, f"records {recorded} chunks of {recorded_data} bytes, its "
                           f"manifest has {count} of {data}")

    def _add_file(self, kind: str, fkey: int, what: str) -> None:
        name, paths = self.namer(decode_file_id(self.files[fkey][0]))
        self.report.add(kind, f"file {name}: {what}", f"fkey:{fkey}", [FileDamage(name, paths)])

    # -- chunk records and the lookup --------------------------------------------------

    def _check_chunks(self) -> None:
        total = self._entries("chunks")
        present_packs = set(self.store.packs.existing())
        unlisted = 0
        for n, (key, value) in enumerate(self.txn.cursor(db=self.db.chunks), 1):
            chunk = ix.KEYCHUNK.unpack(key)[0]
            rec = ChunkRecord.decode(value)
            self.highest_chunk = max(self.highest_chunk, chunk)
            self._check_refcount(chunk, rec)
            if rec.lost:
                self.tombstones.add(chunk)
            else:
                self.unique, self.stored = self.unique + 1, self.stored + rec.raw
                self.packed += rec.location.length
                self.live_at[rec.location] = (chunk, rec.address)
                self._check_location(chunk, rec, present_packs)
                if self.txn.get(ix.lookup_key(rec.address, chunk), db=self.db.lookup) is None:
                    unlisted += 1
            if n % PROGRESS_EVERY == 0:
                self.progress("chunks", n, total)
        self.report.chunks_checked = total
        for chunk, count in self.refs.items():
            if self.txn.get(ix.KEYCHUNK.pack(chunk), db=self.db.chunks) is None:
                self._problem(chunk, "missing-chunk", f"chunk id {chunk} is referenced {count} times but has "
                              "no record", f"chunk-id:{chunk}")
        if unlisted:
            self.report.add("bad-lookup", f"{unlisted} chunks are missing from the address lookup (new copies of "
                            "their bytes would not be deduplicated)", "lookup:missing")
        self.progress("chunks", total, total)

    def _check_refcount(self, chunk: int, rec: ChunkRecord) -> None:
        refs = self.refs.get(chunk, 0)
        if refs == 0:
            self.report.add("orphan-chunk", f"chunk {rec.address.hex()} has refcount {rec.refcount} but no file "
                            "references it", f"chunk:{rec.address.hex()}")
        elif rec.refcount != refs:
            self.report.add("refcount-mismatch", f"chunk {rec.address.hex()}: refcount {rec.refcount}, "
                            f"referenced {refs} times", f"chunk:{rec.address.hex()}")

    def _check_location(self, chunk: int, rec: ChunkRecord, present_packs: set[int]) -> None:
        loc, address = rec.location, rec.address
        if loc.pack not in present_packs:
            self.missing_packs.setdefault(loc.pack, []).append(chunk)
            self.report.bad_chunks[chunk] = f"pack {loc.pack:08x} is missing"
            return
        header = self.store.packs.read_record_header(loc)
        why = "the pack ends inside its record header" if header is None else header.fault(chunk, loc.length)
        if not why and header.compressed:
            self.raw_of[chunk] = rec.raw
            if header.raw != rec.raw:
                why = f"its record header says {header.raw} raw bytes, the index {rec.raw}"
            elif header.dictionary and self.store.codec.dictionaries.get(header.dictionary) is None:
                self._problem(chunk, "missing-dictionary", f"chunk {address.hex()}: its record names compression "
                              f"dictionary {header.dictionary}, which the store does not have",
                              f"chunk:{address.hex()}")
                return
        elif not why and header.raw != rec.raw:
            why = f"its record header says {header.raw} raw bytes, the index {rec.raw}"
        if why:
            self._problem(chunk, "bad-record", f"chunk {address.hex()}: pack {loc.pack:08x} holds no record "
                          f"of it at offset {loc.record_offset} ({why})", f"chunk:{address.hex()}")
        elif loc.offset + loc.length > self.store.packs.size(loc.pack):
            self._problem(chunk, "truncated-chunk", f"chunk {address.hex()}: its bytes run past the end of "
                          f"pack {loc.pack:08x}", f"chunk:{address.hex()}")

    def _check_lookup(self) -> None:
        """Every lookup entry names a stored chunk whose address has its prefix (the other way: _check_chunks)."""
        wrong = 0
        for key in self.txn.cursor(db=self.db.lookup).iternext(values=False):
            chunk = ix.KEYCHUNK.unpack_from(key, len(key) - ix.KEYCHUNK.size)[0]
            raw = self.txn.get(ix.KEYCHUNK.pack(chunk), db=self.db.chunks)
            rec = ChunkRecord.decode(raw) if raw is not None else None
            if rec is None or rec.lost or ix.lookup_key(rec.address, chunk) != key:
                wrong += 1
        if wrong:
            self.report.add("bad-lookup", f"{wrong} address lookup entries name no stored chunk or the wrong one",
                            "lookup:wrong")

    def _problem(self, chunk: int, kind: str, message: str, subject: str) -> None:
        if chunk not in self.problems:
            self.problems[chunk] = (kind, message, subject)
            self.report.bad_chunks[chunk] = message

    # -- counters and packs -----------------------------------------------------------

    def _check_counters(self) -> None:
        sizes = sum(size for _, size, _, _ in self.files.values())
        actual = {"files": len(self.files), "logical_bytes": sizes, "chunk_refs": self.entries,
                  "unique_chunks": self.unique, "stored_bytes": self.stored,
                  "packed_bytes": self.packed}
        for name, value in actual.items():
            recorded = ix.get_counter(self.txn, self.db.counters, name)
            if recorded != value:
                self.report.add("counter-mismatch", f"counter {name} is {recorded}, a recount gives {value}",
                                f"counter:{name}")
        self._check_next_id("next_fkey", max(self.files, default=0))
        if not ix.get_counter(self.txn, self.db.counters, "chunk_ids_wrapped"):  # else ids below it are reused
            self._check_next_id("next_chunk", max(self.highest_chunk, max(self.refs, default=0)))
        packs = [ix.KEYPACK.unpack(k)[0] for k in self.txn.cursor(db=self.db.packs).iternext(values=False)]
        self._check_next_id("next_pack", max(packs, default=0))

    def _check_next_id(self, name: str, highest: int) -> None:
        value = ix.get_counter(self.txn, self.db.counters, name)
        if highest and value <= highest:
            self.report.add("counter-mismatch", f"counter {name} is {value} but {highest} is already in use",
                            f"counter:{name}")

    def _check_packs(self) -> None:
        """Each pack's live, dead and pending records add up to its indexed end."""
        pending = {ix.KEYPENDING.unpack(k) for k in self.txn.cursor(db=self.db.pending).iternext(values=False)}
        present = set(self.store.packs.existing())
        for key, value in self.txn.cursor(db=self.db.packs):
            pack = ix.KEYPACK.unpack(key)[0]
            self.report.packs_checked += 1
            if pack in present:
                self._check_pack(pack, *ix.PACK.unpack(value), pending)

    def _check_pack(self, pack: int, end: int, live: int, dead: int, pending: set) -> None:
        size = self.store.packs.size(pack)
        if size < end:
            self.report.add("truncated-pack", f"pack {pack:08x} is {size} bytes, the index expects {end}",
                            f"pack:{pack:08x}")
        found_live = found_other = 0
        offset = HEADER_SIZE
        for loc, header in self.store.packs.scan(pack):
            if loc.record_offset >= end:
                break
            offset = loc.offset + loc.length
            owner = self.live_at.get(loc)
            if owner is not None and owner[0] == header.chunk:
                found_live += record_size(loc.length)
            elif (pack, loc.record_offset) not in pending:
                found_other += record_size(loc.length)
        readable = size >= end and offset >= end
        if found_live != live and readable:
            self.report.add("pack-accounting", f"pack {pack:08x}: live bytes {live} recorded, {found_live} found",
                            f"pack:{pack:08x}")
        if offset < end and size >= end:
            self.report.add("bad-record", f"pack {pack:08x}: records from offset {offset} are unreadable",
                            f"pack:{pack:08x}")
        self.report.garbage_bytes += found_other
        if found_other != dead and readable:
            self.report.add("pack-accounting", f"pack {pack:08x}: dead bytes {dead} recorded, {found_other} "
                            "found", f"pack:{pack:08x}")

    # -- chunk data ------------------------------------------------------------------------

    def _verify_data(self) -> None:
        """Re-hash every stored chunk with SHA-256, in pack order, and check its record header's xxh3.

        The only check that catches any corruption of the bytes; a header
        whose checksum alone is wrong (the bytes hash to the address) is a
        damaged header, which a repair rewrites.
        """
        todo = sorted((loc.pack, loc.offset, loc.length, chunk, address)
                      for loc, (chunk, address) in self.live_at.items() if chunk not in self.report.bad_chunks)
        total = sum(length for _, _, length, _, _ in todo)
        done = 0
        for n, (pack, offset, length, chunk, address) in enumerate(todo, 1):
            header, data = self.store.packs.read_record(Location(pack, offset, length))
            subject = f"chunk:{address.hex()}"
            if header is None or len(data) != length:
                self._problem(chunk, "truncated-chunk", f"chunk {address.hex()}: only {len(data)} of "
                              f"{length} bytes are readable", subject)
            elif header.compressed:
                self._verify_compressed(chunk, address, header, data, subject)
            elif address_of(data) != address:
                self._problem(chunk, "corrupt-chunk", f"chunk {address.hex()}: the SHA-256 of its bytes "
                              "does not match its address", subject)
            elif checksum_of(data) != header.checksum:
                self._problem(chunk, "bad-record", f"chunk {address.hex()}: the checksum in its record header "
                              "does not match its bytes (which are intact)", subject)
            done += length
            if n % 64 == 0:
                self.progress("verify", done, total)
        self.report.bytes_verified = done
        self.progress("verify", total, total)

    def _verify_compressed(self, chunk: int, address: bytes, header, data, subject: str) -> None:
        try:
            raw = self.store.codec.decode(header.codec, header.dictionary, data, self.raw_of.get(chunk, header.raw))
        except DecodeError as exc:
            self._problem(chunk, "corrupt-chunk", f"chunk {address.hex()}: its compressed record is damaged: {exc}",
                          subject)
            return
        if address_of(raw) != address:
            self._problem(chunk, "corrupt-chunk", f"chunk {address.hex()}: the SHA-256 of its decompressed bytes "
                          "does not match its address", subject)
        elif checksum_of(raw) != header.checksum:
            self._problem(chunk, "bad-record", f"chunk {address.hex()}: the checksum in its record header does "
                          "not match its bytes (which are intact)", subject)

    # -- who is hurt ----------------------------------------------------------------------

    def _report_chunk_damage(self) -> None:
        """Name every file that uses a damaged or lost chunk, with the byte ranges it loses."""
        lost_in_packs = {c for chunks in self.missing_packs.values() for c in chunks}
        wanted = set(self.problems) | lost_in_packs | self.tombstones
        if not wanted:
            return
        uses = self._uses(wanted)
        for chunk, (kind, message, subject) in sorted(self.problems.items(), key=lambda item: item[1]):
            self.report.add(kind, message, subject, self._files(uses, [chunk]))
        for pack, chunks in sorted(self.missing_packs.items()):
            self.report.add("missing-pack", f"pack {pack:08x} is missing: {len(chunks)} chunks are gone",
                            f"pack:{pack:08x}", self._files(uses, chunks))
        for damage in self._files(uses, self.tombstones):
            self.report.add("lost-data", f"{damage.name}: bytes {_short(damage)} are lost; reading them "
                            "fails with EIO", f"lost:{damage.name}", [damage])

    def _uses(self, wanted: set[int]) -> dict[int, dict[int, list[tuple[int, int]]]]:
        """chunk id -> fkey -> byte ranges, for the chunks in ``wanted``: one more pass over manifests."""
        uses: dict[int, dict[int, list[tuple[int, int]]]] = {}
        for fkey, start, value in self.store.manifest_index.runs(self.txn):
            try:
                run = decode_run(start, value)
            except IndexCorruptError:
                continue
            for e in run:
                if e.chunk in wanted:
                    uses.setdefault(e.chunk, {}).setdefault(fkey, []).append((e.offset, e.end))
        return uses

    def _files(self, uses, chunks) -> list[FileDamage]:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for chunk in chunks:
            for fkey, spans in uses.get(chunk, {}).items():
                ranges.setdefault(fkey, []).extend(spans)
        out = []
        for fkey, spans in ranges.items():
            name, paths = self.namer(decode_file_id(self.files[fkey][0]) if fkey in self.files else None)
            out.append(FileDamage(name, paths, merge_ranges(spans)))
        return sorted(out, key=lambda d: d.name)


def _short(damage: FileDamage) -> str:
    return format_ranges(damage.ranges, limit=4)
