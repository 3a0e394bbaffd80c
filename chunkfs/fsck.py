"""Checking a store against its own invariants, independently of the code that keeps them.

Everything here is recomputed from scratch (refcounts from manifests, pack
accounting from the records in the pack files) and compared with what the
index says, so a bug in the bookkeeping of ``ledger.py`` shows up here
instead of being trusted.  The checks are read-only; they work on a store
opened ``readonly=True`` while another process has it mounted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import index as ix
from .hashing import address_of
from .ledger import ChunkRecord
from .packs import HEADER_SIZE, RECORD_MAGIC, Location, record_size


@dataclass(frozen=True)
class Finding:
    kind: str  # e.g. "refcount-mismatch", "missing-chunk", "corrupt-chunk"
    message: str


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    chunks_checked: int = 0
    files_checked: int = 0
    garbage_bytes: int = 0

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, kind: str, message: str) -> None:
        self.findings.append(Finding(kind, message))


Progress = Callable[[str, int], None]


def check_store(store, verify_data: bool = False, progress: Progress | None = None) -> CheckReport:
    """Recount and cross-check manifests, chunk records, packs and counters."""
    report = CheckReport()
    with store.index.read() as txn:
        refs = _check_manifests(store, txn, report)
        _check_chunks(store, txn, refs, report)
        _check_counters(store, txn, report)
        _check_packs(store, txn, report)
        if verify_data:
            _verify_data(store, txn, report, progress)
    return report


def _check_manifests(store, txn, report: CheckReport) -> Counter:
    """Every file's manifest tiles [0, size); returns the recounted references per address."""
    refs: Counter = Counter()
    by_fkey: dict[int, list[tuple[int, int, bytes]]] = {}
    for key, value in txn.cursor(db=store.index.manifests):
        fkey, offset = ix.KEY64x2.unpack(key)
        address, length = ix.MANIFEST.unpack(value)
        by_fkey.setdefault(fkey, []).append((offset, length, address))
        refs[address] += 1
    seen = set()
    for key, value in txn.cursor(db=store.index.files):
        fkey, size, count = ix.FILE.unpack(value)
        seen.add(fkey)
        entries = by_fkey.get(fkey, [])
        report.files_checked += 1
        name = key[1:].decode("utf-8", "replace") if key[:1] == b"s" else key[1:].hex()
        expected = 0
        for offset, length, _ in entries:
            if offset != expected:
                report.add("broken-manifest", f"file {name}: manifest has a gap or overlap at offset {expected}")
                break
            expected += length
        else:
            if expected != size:
                report.add("size-mismatch", f"file {name}: manifest covers {expected} bytes, file size is {size}")
        if count != len(entries):
            report.add("count-mismatch", f"file {name}: records {count} chunks, manifest has {len(entries)}")
    for fkey in by_fkey.keys() - seen:
        report.add("orphan-manifest", f"manifest entries for file key {fkey} belong to no file")
    return refs


def _check_chunks(store, txn, refs: Counter, report: CheckReport) -> None:
    recorded = {}
    for address, value in txn.cursor(db=store.index.chunks):
        rec = ChunkRecord.decode(value)
        recorded[address] = rec
        report.chunks_checked += 1
        if rec.refcount != refs.get(address, 0):
            report.add("refcount-mismatch",
                       f"chunk {address.hex()}: refcount {rec.refcount}, referenced {refs.get(address, 0)} times")
        _check_location(store, address, rec.location, report)
    for address in refs.keys() - recorded.keys():
        report.add("missing-chunk", f"chunk {address.hex()} is referenced {refs[address]} times but not stored")


def _check_location(store, address: bytes, loc: Location, report: CheckReport) -> None:
    try:
        magic, length, stored_address = store.packs.read_record_header(loc)
    except FileNotFoundError:
        report.add("missing-pack", f"chunk {address.hex()}: pack {loc.pack:08x} is missing")
        return
    if magic != RECORD_MAGIC or length != loc.length or stored_address != address:
        report.add("bad-record", f"chunk {address.hex()}: no matching record at pack {loc.pack:08x} offset {loc.offset}")
    elif loc.offset + loc.length > store.packs.size(loc.pack):
        report.add("truncated-chunk", f"chunk {address.hex()}: pack {loc.pack:08x} is truncated")


def _check_counters(store, txn, report: CheckReport) -> None:
    c = store.index.counters
    files = sizes = 0
    for _, value in txn.cursor(db=store.index.files):
        files += 1
        sizes += ix.FILE.unpack(value)[1]
    unique = stored = 0
    for _, value in txn.cursor(db=store.index.chunks):
        unique += 1
        stored += ChunkRecord.decode(value).location.length
    for name, actual in (("files", files), ("logical_bytes", sizes), ("unique_chunks", unique), ("stored_bytes", stored)):
        recorded = ix.get_counter(txn, c, name)
        if recorded != actual:
            report.add("counter-mismatch", f"counter {name} is {recorded}, recount gives {actual}")


def _check_packs(store, txn, report: CheckReport) -> None:
    """Each pack's live, dead and pending records add up to its indexed end."""
    live_at = {ChunkRecord.decode(v).location: a for a, v in txn.cursor(db=store.index.chunks)}
    pending = {ix.KEYPENDING.unpack(k) for k, _ in txn.cursor(db=store.index.pending)}
    for key, value in txn.cursor(db=store.index.packs):
        pack = ix.KEYPACK.unpack(key)[0]
        end, live, dead = ix.PACK.unpack(value)
        try:
            size = store.packs.size(pack)
        except FileNotFoundError:
            continue  # reported per chunk as missing-pack
        if size < end:
            report.add("truncated-pack", f"pack {pack:08x} is {size} bytes, the index expects {end}")
        found_live = found_other = 0
        offset = HEADER_SIZE
        for loc, address in store.packs.scan(pack):
            if loc.record_offset >= end:
                break
            offset = loc.offset + loc.length
            if live_at.get(loc) == address:
                found_live += record_size(loc.length)
            elif (pack, loc.record_offset) not in pending:
                found_other += record_size(loc.length)
        if found_live != live:
            report.add("pack-accounting", f"pack {pack:08x}: live bytes {live} recorded, {found_live} found")
        if offset < end and size >= end:
            report.add("bad-record", f"pack {pack:08x}: unreadable records from offset {offset}")
        report.garbage_bytes += found_other
        if found_other != dead and size >= end and offset >= end:
            report.add("pack-accounting", f"pack {pack:08x}: dead bytes {dead} recorded, {found_other} found")


def _verify_data(store, txn, report: CheckReport, progress: Progress | None) -> None:
    """Re-hash every stored chunk with SHA-256: the only check that catches any corruption."""
    for n, (address, value) in enumerate(txn.cursor(db=store.index.chunks), 1):
        loc = ChunkRecord.decode(value).location
        try:
            data = store.packs.read(loc)
        except FileNotFoundError:
            continue
        if len(data) != loc.length:
            report.add("truncated-chunk", f"chunk {address.hex()}: only {len(data)} of {loc.length} bytes readable")
        elif address_of(data) != address:
            report.add("corrupt-chunk", f"chunk {address.hex()}: SHA-256 of its bytes does not match its address")
        if progress:
            progress("verify", n)
