"""The read path of the store: verified chunks, one at a time or laid out as a file range.

Two ways in, one policy.  Short reads fetch whole chunks through the LRU
cache of verified chunks (``read_chunks``, ``get_chunk``); long reads
(``read_span``) read straight into one buffer laid out as the file is, one
scatter ``preadv`` per run of records lying back to back in a pack, verified
in place, and bypass the cache.  Anything unexpected in a run (a checksum
mismatch, a truncated pack, a chunk gc moved) sends its chunks down the
one-chunk path, which looks again and reports.  A chunk that fails
verification raises ChunkCorruptError naming the file and the address, and
logs the same line: wrong bytes are never returned.  Holes (gaps between
manifest entries) read as zeros without touching a pack.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from ..errors import ChunkCorruptError, ChunkFreedError, InvalidArgument, PackIOError, PackMissingError, WouldBlock
from ..hashing import address_of, checksum_of
from ..pools import LazyPool
from ._backend import IOV_BATCH
from ._cache import ChunkCache
from ._compression import Codec, DecodeError
from ._fileids import FileId
from ._index import CHUNK, KEYCHUNK, Index
from ._ledger import LOST_PACK, ChunkRecord, Ledger
from ._manifests import Extent, ManifestIndex
from ._packs import CHECKSUM_AT, RECORD, Location, PackFiles, RecordHeader, header_is

log = logging.getLogger("chunkfs.store")
T = TypeVar("T")
# A run whose compressed records hold at least this many raw bytes is decompressed by two threads.
PARALLEL_DECODE = 256 * 1024
_DECODER = LazyPool(1, "chunkfs-decompress")
READ_ATTEMPTS = 3  # lock-free tries of a read whose file keeps changing under it, before one under the lock


class Place(NamedTuple):
    """Where a chunk lies, what its address is, and its chunk id (which its record header must name)."""

    location: Location
    address: bytes
    chunk: int


def _place(chunk: int, rec: ChunkRecord | None) -> Place | None:
    return Place(rec.location, rec.address, chunk) if rec is not None else None


def _places(txn, index: Index, entries: list[Extent]) -> list[Place | None]:
    """Where each entry's chunk lies: one get per entry, decoded straight into a Place (every read does this)."""
    out: list[Place | None] = []
    db, key, unpack = index.chunks, KEYCHUNK.pack, CHUNK.unpack_from
    for e in entries:
        raw = txn.get(key(e.chunk), db=db)
        if raw is None:
            out.append(None)
        else:
            address, _, length, pack, offset = unpack(raw)
            out.append(Place(Location(pack, offset, length), address, e.chunk))
    return out


class ChunkReader:
    """Finds, reads and verifies chunks for every read of the store."""

    def __init__(self, index: Index, ledger: Ledger, manifests: ManifestIndex, packs: PackFiles,
                 cache: ChunkCache, verify: str, commit_lock: threading.RLock, codec: Codec):
        self.index, self.ledger, self.manifests, self.packs = index, ledger, manifests, packs
        self.codec = codec  # decodes compressed records
        self.cache, self.verify = cache, verify
        self.commit_lock = commit_lock  # the store's: no commit frees a chunk while it is held

    def _consistent(self, read: Callable[..., T], *args) -> T:
        """``read(*args)``, again if another thread freed a chunk under it (ChunkFreedError).

        Reads take no lock: one looks at the manifest in a read transaction, then
        reads the chunks it names.  If the file is replaced or deleted in
        between, a chunk may be freed (and its disk blocks punched out) before
        its bytes are read; the read then starts over on the file as it is now.
        After a few tries it runs under the store's lock, where no commit can
        free anything, so a file that never stops changing cannot starve it.
        Each try is one manifest snapshot: the bytes are all of one version.
        """
        for _ in range(READ_ATTEMPTS):
            try:
                return read(*args)
            except ChunkFreedError:
                continue
        with self.commit_lock:
            return read(*args)

    def read_chunks(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes | memoryview]]:
        """The verified chunks that hold ``[offset, offset+length)``, in order, and where the first begins.

        One read transaction finds the chunks and where they lie (a fresh one
        costs microseconds, a good part of a 4 KiB random read's CPU).  The
        whole chunks are what the FUSE adapter pushes into the kernel's page
        cache after a short read (readaround.py).  A hole in the range comes
        as zeros, only as much of it as the range covers.
        """
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        return self._consistent(self._read_chunks_once, file_id, offset, length)

    def _read_chunks_once(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes | memoryview]]:
        with self.index.read() as txn:
            fkey, size, _, _ = self.manifests.file_record(txn, file_id)
            end = min(offset + length, size)
            entries = self.manifests.covering(txn, fkey, offset, end)
            places = _places(txn, self.index, entries)
        if len(entries) == 1 and entries[0].offset <= offset and entries[0].end >= end:  # a read inside one chunk
            found, entry = places[0], entries[0]
            data = self.cache.get(found.address) if found is not None else None
            return entry.offset, [data if data is not None else self.fetch(found, file_id, entry.chunk)]
        chunks: list[bytes | None] = [self.cache.get(p.address) if p is not None else None for p in places]
        fetched: dict[int, bytes] = {}
        for i, (entry, found) in enumerate(zip(entries, places)):
            if chunks[i] is None:  # fetched once even where the range repeats a chunk
                chunks[i] = fetched.get(entry.chunk) or self.fetch(found, file_id, entry.chunk)
                fetched[entry.chunk] = chunks[i]
        start = min(entries[0].offset, offset) if entries else offset
        return start, _with_holes(start, end, entries, chunks)

    def get_chunk(self, address: bytes, file_id: FileId | None = None) -> bytes | memoryview:
        """A chunk's bytes, verified; raises ChunkCorruptError rather than return wrong bytes."""
        data = self.cache.get(address)
        if data is not None:
            return data
        with self.index.read() as txn:
            found = self.ledger.locate(txn, address)
        if found is None:
            raise ChunkCorruptError(address, "no such chunk in the index", file_id)
        chunk, loc = found
        return self.fetch(Place(loc, address, chunk), file_id, chunk)

    def fetch(self, found: Place | None, file_id, chunk: int) -> bytes | memoryview:
        """Read and verify the chunk ``found`` says is where, and cache it."""
        if found is None:
            raise self._corrupt(b"", f"chunk id {chunk} has no record in the index", file_id)
        try:
            data = self._read_verified(found, file_id, quiet=True)
        except ChunkCorruptError:
            # gc may have moved the chunk (or the caller's file changed) since it
            # was located: look again, and only a failure at a stable place counts
            with self.index.read() as txn:
                again = _place(found.chunk, self.ledger.record(txn, found.chunk))
                if again is None or again.address != found.address:  # gone (its id may even hold another chunk)
                    hit = self.ledger.locate(txn, found.address)  # stored again, or pinned and not committed yet
                    again = Place(hit[1], found.address, hit[0]) if hit is not None else None
            if again is None:  # it was there when the caller looked: freed since, not damaged
                raise ChunkFreedError(found.address, "freed while being read", file_id) from None
            data = self._read_verified(again, file_id)
        self.cache.put(found.address, data)
        return data

    def _read_verified(self, place: Place, file_id, quiet: bool = False) -> bytes | memoryview:
        """The chunk's bytes from its record, checked: a view into the one buffer read, or decompressed."""
        loc = place.location
        raw = b""
        if loc.pack != LOST_PACK:
            try:
                raw = self.packs.read_record_bytes(loc)
            except PackMissingError:
                raise self._failed(place, f"pack {loc.pack:08x} is missing", file_id, quiet) from None
            except PackIOError as exc:
                raise self._failed(place, str(exc), file_id, quiet) from None
            data = memoryview(raw)[RECORD.size:]
            # the common case, a raw record that verifies, costs one comparison of header bytes and a checksum
            if len(data) == loc.length and header_is(raw, place.chunk, loc.length) \
                    and _verifies(self.verify, place, raw[CHECKSUM_AT : RECORD.size], data):
                return data
        return self._checked_slowly(place, raw, file_id, quiet)

    def _checked_slowly(self, place: Place, raw: bytes, file_id, quiet: bool) -> bytes | memoryview:
        """A compressed record's bytes, decoded and checked; or the error saying what is wrong with it."""
        loc = place.location
        if loc.pack == LOST_PACK:
            raise self._failed(place, "its data was lost ('chunkfs fsck --repair' found it gone)", file_id, quiet)
        header, data = RecordHeader.parse(raw), memoryview(raw)[RECORD.size:]
        if header is None or len(data) != loc.length:
            raise self._failed(place, f"pack {loc.pack:08x} is truncated", file_id, quiet)
        if header.compressed and not header.fault(place.chunk, loc.length):
            try:
                data = self.codec.decode(header.codec, header.dictionary, data, header.raw)
            except DecodeError as exc:
                raise self._failed(place, f"its compressed record is damaged: {exc}", file_id, quiet) from None
        why = _fault(self.verify, place, header, data)
        if why:
            raise self._failed(place, why, file_id, quiet)
        return data

    def _failed(self, place: Place, reason: str, file_id, quiet: bool) -> ChunkCorruptError:
        """The error for a chunk that cannot be read; logged unless ``quiet`` (the caller looks again first)."""
        if quiet:
            return ChunkCorruptError(place.address, reason, file_id)
        return self._corrupt(place.address, reason, file_id)

    def _corrupt(self, address: bytes, reason: str, file_id) -> ChunkCorruptError:
        exc = ChunkCorruptError(address, reason, file_id)
        log.error("%s", exc)
        return exc

    def read_span(self, file_id: FileId, offset: int, length: int, nowait: bool = False) -> memoryview:
        """Bytes ``[offset, offset+length)`` of a stored file (short at its end), verified, in a new buffer."""
        return self._consistent(self._read_span_once, file_id, offset, length, nowait)

    def _read_span_once(self, file_id: FileId, offset: int, length: int, nowait: bool) -> memoryview:
        with self.index.read() as txn:
            fkey, size, _, _ = self.manifests.file_record(txn, file_id)
            end = min(offset + length, size)
            entries = self.manifests.covering(txn, fkey, offset, end)
            places = _places(txn, self.index, entries)
        return self.read_entries(file_id, entries, places, offset, end, nowait)

    def places(self, txn, entries: list[Extent]) -> list[Place | None]:
        """Where each entry's chunk lies, in ``txn`` (for a reader that holds them: _versions.py)."""
        return _places(txn, self.index, entries)

    def read_entries(self, file_id: FileId, entries: list[Extent], places: list[Place | None],
                     offset: int, end: int, nowait: bool = False) -> memoryview:
        """Bytes ``[offset, end)`` laid out from manifest ``entries`` already looked up (those covering
        the range, in file order) and where each lies; zeros between them (holes)."""
        if end <= offset:
            return memoryview(b"")
        base = min(entries[0].offset, offset) if entries else offset
        top = max(entries[-1].end, end) if entries else end
        buf = memoryview(bytearray(top - base))  # zeros: what the holes between entries read as

        def view(i: int) -> memoryview:
            entry = entries[i]
            return buf[entry.offset - base : entry.offset + entry.length - base]

        first: dict[int, int] = {}  # chunk id -> index of its first entry: a repeated chunk is read once
        for i, entry in enumerate(entries):
            first.setdefault(entry.chunk, i)
        for run in _runs([i for i, e in enumerate(entries) if first[e.chunk] == i], places):
            views = [view(i) for i in run]
            if not self._read_run([entries[i] for i in run], [places[i] for i in run], views, nowait):
                if nowait:
                    raise WouldBlock(f"file {file_id!r}: a chunk needs a second look")
                for i, dst in zip(run, views):
                    dst[:] = self.fetch(places[i], file_id, entries[i].chunk)
        for i, entry in enumerate(entries):
            if first[entry.chunk] != i:
                view(i)[:] = view(first[entry.chunk])
        return buf[offset - base : end - base]

    def _read_run(self, entries: list[Extent], places: list[Place | None],
                  views: list[memoryview], nowait: bool) -> bool:
        """Read and verify one run in place, each chunk against its own record header; False if any of
        it needs the one-chunk path.  Every long read passes here: a loop, not a pass per check."""
        # raw records land in the caller's buffer; compressed ones in scratch, then decompress into it
        targets: list[memoryview] = []
        compressed: list[int] = []
        for n, (entry, place, view) in enumerate(zip(entries, places, views)):
            if place is None or place.location.pack == LOST_PACK:
                return False
            if place.location.length == entry.length:
                targets.append(view)
            else:
                targets.append(memoryview(bytearray(place.location.length)))
                compressed.append(n)
        try:
            headers = self.packs.read_run([p.location for p in places], targets, nowait)
        except (PackMissingError, PackIOError, ChunkCorruptError):  # gone or unreadable: the one-chunk path says which
            return False
        if headers is None:
            return False
        size = RECORD.size
        if compressed and not self._decode_all([(headers[n * size : (n + 1) * size], places[n], targets[n], views[n])
                                                for n in compressed]):
            return False
        mode = self.verify
        at = 0
        for place, data, target in zip(places, views, targets):  # anything wrong: the one-chunk path says what
            header = headers[at : at + size]
            at += size
            if target is data and not header_is(header, place.chunk, place.location.length):
                return False
            if mode == "xxh3":
                if checksum_of(data) != header[CHECKSUM_AT:]:
                    return False
            elif mode == "sha256" and address_of(data) != place.address:
                return False
        return True

    def _decode_all(self, records: list[tuple[bytes, Place, memoryview, memoryview]]) -> bool:
        """Decompress a run's compressed records into their slices of the caller's buffer; False if any
        is not what its place says.  A big run is split with a helper thread (zstd releases the GIL), so
        one long read decompresses on both cores, as a long write compresses (_compression.py)."""
        def decode(part: list[tuple[bytes, Place, memoryview, memoryview]]) -> bool:
            return all([self._decode_into(header, place, stored, into) for header, place, stored, into in part])

        if len(records) < 2 or sum(len(r[3]) for r in records) < PARALLEL_DECODE or (os.cpu_count() or 1) < 2:
            return decode(records)
        half = len(records) // 2
        other = _DECODER.submit(decode, records[half:])
        mine = decode(records[:half])
        return other.result() and mine

    def _decode_into(self, header: bytes, place: Place, stored: memoryview, into: memoryview) -> bool:
        """Decompress a compressed record of a run into its slice of the caller's buffer; False if it is not one."""
        parsed = RecordHeader.parse(header)
        if parsed.fault(place.chunk, place.location.length) or not parsed.compressed or parsed.raw != len(into):
            return False
        try:
            self.codec.decode_into(parsed.dictionary, stored, into)
        except DecodeError:
            return False
        return True


def _fault(mode: str, place: Place, header: RecordHeader, data) -> str | None:
    """Why the record read for ``place`` is not its chunk's bytes; None if they verify.

    The header must be the chunk's own (a read that landed on another record
    is caught even with verification off), then the bytes must match the
    header's xxh3 (default) or hash to the address (``sha256``).
    """
    why = header.fault(place.chunk, place.location.length)
    if why:
        return why
    if mode == "xxh3" and checksum_of(data) != header.checksum:
        return "xxh3 checksum mismatch"
    if mode == "sha256" and address_of(data) != place.address:
        return "SHA-256 mismatch"
    return None


def _verifies(mode: str, place: Place, checksum: bytes, data) -> bool:
    """Whether ``data``, from a record whose header is its chunk's, matches ``checksum`` (or the address)."""
    if mode == "xxh3":
        return checksum_of(data) == checksum
    return mode != "sha256" or address_of(data) == place.address


def _runs(indices: list[int], places: list[Place | None]):
    """``indices`` (entries to read, in file order) grouped into runs of records back to back in one pack.

    An entry the index does not know, or whose pack was lost, is a run of its
    own (the one-chunk path reports it).  A run reads a header and the bytes
    of each record, two buffers each, so it has fewer than IOV_BATCH records.
    """
    run: list[int] = []
    last: Location | None = None
    for i in indices:
        loc = places[i].location if places[i] is not None else None
        follows = (loc is not None and last is not None and loc.pack == last.pack
                   and loc.record_offset == last.offset + last.length and len(run) < IOV_BATCH - 1)
        if run and not follows:
            yield run
            run = []
        run.append(i)
        last = loc if loc is not None and loc.pack != LOST_PACK else None
        if last is None:
            yield run
            run = []
    if run:
        yield run


def _with_holes(start: int, end: int, entries: list[Extent], chunks: list[bytes]) -> list[bytes]:
    """``chunks`` laid from ``start``, with zeros where holes lie between them (and up to ``end``)."""
    out: list[bytes] = []
    pos = start
    for entry, data in zip(entries, chunks):
        if entry.offset > pos:
            out.append(bytes(entry.offset - pos))
        out.append(data)
        pos = entry.end
    if pos < end:
        out.append(bytes(end - pos))
    return out
