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
from ..hashing import address_of
from ._ledger import LOST_PACK, ChunkRecord
from ._packs import HEADER_SIZE, RECORD_MAGIC, Location, record_size
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
        self.refs: Counter = Counter()
        self.problems: dict[bytes, tuple[str, str]] = {}  # address -> (kind, message)
        self.missing_packs: dict[int, list[bytes]] = {}
        self.tombstones: set[bytes] = set()
        self.live_at: dict[Location, bytes] = {}
        self.unique = self.stored = 0

    def run(self, verify_data: bool) -> None:
        self._load_files()
        self._check_manifests()
        self._check_chunks()
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

    def _check_manifests(self) -> None:
        """Every file's entries lie in [0, size) without overlaps; recounts the references to every address.

        Gaps between entries are holes, so an entry that went missing looks
        like one: the file record's count of data bytes is what tells them apart.
        """
        total = self._entries("manifests")
        current, covered, count, data, broken = None, 0, 0, 0, False
        seen = set()
        for n, (key, value) in enumerate(self.txn.cursor(db=self.db.manifests), 1):
            fkey, offset = ix.KEY64x2.unpack(key)
            address, length = ix.MANIFEST.unpack(value)
            self.refs[address] += 1
            if fkey != current:
                if current is not None:
                    self._end_file(current, covered, count, data, broken)
                    seen.add(current)
                current, covered, count, data, broken = fkey, 0, 0, 0, False
            if offset < covered and not broken:
                broken = True
                self._add_file("broken-manifest", fkey, f"its chunks overlap at offset {offset}")
            covered, count, data = max(covered, offset + length), count + 1, data + length
            if n % PROGRESS_EVERY == 0:
                self.progress("manifests", n, total)
        if current is not None:
            self._end_file(current, covered, count, data, broken)
            seen.add(current)
        for fkey in self.files.keys() - seen:
            self._end_file(fkey, 0, 0, 0, False)
        self.progress("manifests", total, total)

    def _end_file(self, fkey: int, covered: int, count: int, data: int, broken: bool) -> None:
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

    # -- chunk records -----------------------------------------------------------------

    def _check_chunks(self) -> None:
        total = self._entries("chunks")
        present_packs = set(self.store.packs.existing())
        for n, (address, value) in enumerate(self.txn.cursor(db=self.db.chunks), 1):
            rec = ChunkRecord.decode(value)
            self._check_refcount(address, rec)
            if rec.location.pack == LOST_PACK:
                self.tombstones.add(address)
            else:
                self.unique, self.stored = self.unique + 1, self.stored + rec.location.length
                self.live_at[rec.location] = address
                self._check_location(address, rec.location, present_packs)
            if n % PROGRESS_EVERY == 0:
                self.progress("chunks", n, total)
        self.report.chunks_checked = total
        for address, count in self.refs.items():
            if self.txn.get(address, db=self.db.chunks) is None:
                self._problem(address, "missing-chunk",
                              f"chunk {address.hex()} is referenced {count} times but has no record")
        self.progress("chunks", total, total)

    def _check_refcount(self, address: bytes, rec: ChunkRecord) -> None:
        refs = self.refs.get(address, 0)
        if refs == 0:
            self.report.add("orphan-chunk", f"chunk {address.hex()} has refcount {rec.refcount} but no file "
                            "references it", f"chunk:{address.hex()}")
        elif rec.refcount != refs:
            self.report.add("refcount-mismatch", f"chunk {address.hex()}: refcount {rec.refcount}, "
                            f"referenced {refs} times", f"chunk:{address.hex()}")

    def _check_location(self, address: bytes, loc: Location, present_packs: set[int]) -> None:
        if loc.pack not in present_packs:
            self.missing_packs.setdefault(loc.pack, []).append(address)
            self.report.bad_chunks[address] = f"pack {loc.pack:08x} is missing"
            return
        magic, length, stored_address = self.store.packs.read_record_header(loc)
        if magic != RECORD_MAGIC or length != loc.length or stored_address != address:
            self._problem(address, "bad-record", f"chunk {address.hex()}: pack {loc.pack:08x} holds no "
                          f"record of it at offset {loc.record_offset}")
        elif loc.offset + loc.length > self.store.packs.size(loc.pack):
            self._problem(address, "truncated-chunk", f"chunk {address.hex()}: its bytes run past the end of "
                          f"pack {loc.pack:08x}")

    def _problem(self, address: bytes, kind: str, message: str) -> None:
        if address not in self.problems:
            self.problems[address] = (kind, message)
            self.report.bad_chunks[address] = message

    # -- counters and packs -----------------------------------------------------------

    def _check_counters(self) -> None:
        sizes = sum(size for _, size, _, _ in self.files.values())
        actual = {"files": len(self.files), "logical_bytes": sizes,
                  "unique_chunks": self.unique, "stored_bytes": self.stored}
        for name, value in actual.items():
            recorded = ix.get_counter(self.txn, self.db.counters, name)
            if recorded != value:
                self.report.add("counter-mismatch", f"counter {name} is {recorded}, a recount gives {value}",
                                f"counter:{name}")
        self._check_next_id("next_fkey", max(self.files, default=0))
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
        for loc, address in self.store.packs.scan(pack):
            if loc.record_offset >= end:
                break
            offset = loc.offset + loc.length
            if self.live_at.get(loc) == address:
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
        """Re-hash every stored chunk with SHA-256, in pack order: the only check that catches any corruption."""
        todo = sorted((loc.pack, loc.offset, loc.length, address) for loc, address in self.live_at.items()
                      if address not in self.report.bad_chunks)
        total = sum(length for _, _, length, _ in todo)
        done = 0
        for n, (pack, offset, length, address) in enumerate(todo, 1):
            data = self.store.packs.read(Location(pack, offset, length))
            if len(data) != length:
                self._problem(address, "truncated-chunk", f"chunk {address.hex()}: only {len(data)} of "
                              f"{length} bytes are readable")
            elif address_of(data) != address:
                self._problem(address, "corrupt-chunk", f"chunk {address.hex()}: the SHA-256 of its bytes "
                              "does not match its address")
            done += length
            if n % 64 == 0:
                self.progress("verify", done, total)
        self.report.bytes_verified = done
        self.progress("verify", total, total)

    # -- who is hurt ----------------------------------------------------------------------

    def _report_chunk_damage(self) -> None:
        """Name every file that uses a damaged or lost chunk, with the byte ranges it loses."""
        lost_in_packs = {a for addresses in self.missing_packs.values() for a in addresses}
        wanted = set(self.problems) | lost_in_packs | self.tombstones
        if not wanted:
            return
        uses = self._uses(wanted)
        for address, (kind, message) in sorted(self.problems.items(), key=lambda item: item[1]):
            self.report.add(kind, message, f"chunk:{address.hex()}", self._files(uses, [address]))
        for pack, addresses in sorted(self.missing_packs.items()):
            self.report.add("missing-pack", f"pack {pack:08x} is missing: {len(addresses)} chunks are gone",
                            f"pack:{pack:08x}", self._files(uses, addresses))
        for damage in self._files(uses, self.tombstones):
            self.report.add("lost-data", f"{damage.name}: bytes {_short(damage)} are lost; reading them "
                            "fails with EIO", f"lost:{damage.name}", [damage])

    def _uses(self, wanted: set[bytes]) -> dict[bytes, dict[int, list[tuple[int, int]]]]:
        """address -> fkey -> byte ranges, for the addresses in ``wanted``: one more pass over manifests."""
        uses: dict[bytes, dict[int, list[tuple[int, int]]]] = {}
        for key, value in self.txn.cursor(db=self.db.manifests):
            address, length = ix.MANIFEST.unpack(value)
            if address in wanted:
                fkey, offset = ix.KEY64x2.unpack(key)
                uses.setdefault(address, {}).setdefault(fkey, []).append((offset, offset + length))
        return uses

    def _files(self, uses, addresses) -> list[FileDamage]:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for address in addresses:
            for fkey, spans in uses.get(address, {}).items():
                ranges.setdefault(fkey, []).extend(spans)
        out = []
        for fkey, spans in ranges.items():
            name, paths = self.namer(decode_file_id(self.files[fkey][0]) if fkey in self.files else None)
            out.append(FileDamage(name, paths, merge_ranges(spans)))
        return sorted(out, key=lambda d: d.name)


def _short(damage: FileDamage) -> str:
    return format_ranges(damage.ranges, limit=4)
