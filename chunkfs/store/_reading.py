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
import threading
from collections.abc import Callable
from typing import TypeVar

from ..errors import ChunkCorruptError, ChunkFreedError, InvalidArgument, PackIOError, PackMissingError, WouldBlock
from ..hashing import address_of, checksum_of
from ._backend import IOV_BATCH
from ._cache import ChunkCache
from ._fileids import FileId
from ._index import Index
from ._ledger import LOST_PACK, Ledger
from ._manifests import ManifestEntry, ManifestIndex
from ._packs import Location, PackFiles

log = logging.getLogger("chunkfs.store")

Place = tuple[Location, bytes]  # where a chunk lies and its xxh3 checksum
T = TypeVar("T")
READ_ATTEMPTS = 3  # lock-free tries of a read whose file keeps changing under it, before one under the lock


class ChunkReader:
    """Finds, reads and verifies chunks for every read of the store."""

    def __init__(self, index: Index, ledger: Ledger, manifests: ManifestIndex, packs: PackFiles,
                 cache: ChunkCache, verify: str, commit_lock: threading.RLock):
        self.index, self.ledger, self.manifests, self.packs = index, ledger, manifests, packs
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

    def read_chunks(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes]]:
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

    def _read_chunks_once(self, file_id: FileId, offset: int, length: int) -> tuple[int, list[bytes]]:
        with self.index.read() as txn:
            fkey, size, _, _ = self.manifests.file_record(txn, file_id)
            end = min(offset + length, size)
            entries = self.manifests.covering(txn, fkey, offset, end)
            chunks = [self.cache.get(e.address) for e in entries]
            places = [None if c is not None else self.ledger.locate(txn, e.address) for e, c in zip(entries, chunks)]
        fetched: dict[bytes, bytes] = {}
        for i, (entry, found) in enumerate(zip(entries, places)):
            if chunks[i] is None:  # fetched once even where the range repeats a chunk
                chunks[i] = fetched.get(entry.address) or self.fetch(entry.address, found, file_id)
                fetched[entry.address] = chunks[i]
        start = min(entries[0].offset, offset) if entries else offset
        return start, _with_holes(start, end, entries, chunks)

    def get_chunk(self, address: bytes, file_id: FileId | None = None) -> bytes:
        """A chunk's bytes, verified; raises ChunkCorruptError rather than return wrong bytes."""
        data = self.cache.get(address)
        if data is not None:
            return data
        with self.index.read() as txn:
            found = self.ledger.locate(txn, address)
        return self.fetch(address, found, file_id)

    def fetch(self, address: bytes, found: tuple[Location, bytes] | None, file_id) -> bytes:
        """Read and verify the chunk ``found`` (location, checksum) says is at ``address``, and cache it."""
        if found is None:
            raise ChunkCorruptError(address, "no such chunk in the index", file_id)
        try:
            data = self._read_verified(address, found[0], found[1], file_id, quiet=True)
        except ChunkCorruptError:
            # gc may have moved the chunk (or the caller's file changed) since it
            # was located: look again, and only a failure at a stable place counts
            with self.index.read() as txn:
                again = self.ledger.locate(txn, address)
            if again is None:  # it was there when the caller looked: freed since, not damaged
                raise ChunkFreedError(address, "freed while being read", file_id) from None
            data = self._read_verified(address, again[0], again[1], file_id)
        self.cache.put(address, data)
        return data

    def _read_verified(self, address: bytes, loc: Location, checksum: bytes, file_id,
                       quiet: bool = False) -> bytes:
        def corrupt(reason: str) -> ChunkCorruptError:
            return ChunkCorruptError(address, reason, file_id) if quiet else self._corrupt(address, reason, file_id)

        if loc.pack == LOST_PACK:
            raise corrupt("its data was lost ('chunkfs fsck --repair' found it gone)")
        try:
            data = self.packs.read(loc)
        except PackMissingError:
            raise corrupt(f"pack {loc.pack:08x} is missing") from None
        except PackIOError as exc:
            raise corrupt(str(exc)) from None
        if len(data) != loc.length:
            raise corrupt(f"pack {loc.pack:08x} is truncated")
        if self.verify == "xxh3" and checksum_of(data) != checksum:
            raise corrupt("xxh3 checksum mismatch")
        if self.verify == "sha256" and address_of(data) != address:
            raise corrupt("SHA-256 mismatch")
        return data

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
            places = [self.ledger.locate(txn, e.address) for e in entries]
        return self.read_entries(file_id, entries, places, offset, end, nowait)

    def read_entries(self, file_id: FileId, entries: list[ManifestEntry], places: list[Place | None],
                     offset: int, end: int, nowait: bool = False) -> memoryview:
        """Bytes ``[offset, end)`` laid out from manifest ``entries`` already looked up (those covering
        the range, in file order) and where each lies; zeros between them (holes).  For a reader that
        holds them pinned (_versions.py) as much as for read_span."""
        if end <= offset:
            return memoryview(b"")
        base = min(entries[0].offset, offset) if entries else offset
        top = max(entries[-1].offset + entries[-1].length, end) if entries else end
        buf = memoryview(bytearray(top - base))  # zeros: what the holes between entries read as

        def view(i: int) -> memoryview:
            return buf[entries[i].offset - base : entries[i].offset - base + entries[i].length]

        first: dict[bytes, int] = {}  # address -> index of its first entry: a repeated chunk is read once
        for i, entry in enumerate(entries):
            first.setdefault(entry.address, i)
        for run in _runs([i for i, e in enumerate(entries) if first[e.address] == i], places):
            views = [view(i) for i in run]
            if not self._read_run([entries[i] for i in run], [places[i] for i in run], views, nowait):
                if nowait:
                    raise WouldBlock(f"file {file_id!r}: a chunk needs a second look")
                for i, dst in zip(run, views):
                    dst[:] = self.fetch(entries[i].address, places[i], file_id)
        for i, entry in enumerate(entries):
            if first[entry.address] != i:
                view(i)[:] = view(first[entry.address])
        return buf[offset - base : end - base]

    def _read_run(self, entries: list[ManifestEntry], places: list[Place | None],
                  views: list[memoryview], nowait: bool) -> bool:
        """Read and verify one run in place; False if any of it needs the one-chunk path."""
        if any(p is None or p[0].pack == LOST_PACK or p[0].length != e.length for e, p in zip(entries, places)):
            return False
        try:
            if not self.packs.read_run([p[0] for p in places], views, nowait):
                return False
        except (PackMissingError, PackIOError, ChunkCorruptError):  # gone or unreadable: the one-chunk path says which
            return False
        return all(_verified(self.verify, e.address, p[1], v) for e, p, v in zip(entries, places, views))




def _runs(indices: list[int], places: list[Place | None]):
    """``indices`` (entries to read, in file order) grouped into runs of records back to back in one pack.

    An entry the index does not know, or whose pack was lost, is a run of its
    own (the one-chunk path reports it).
    """
    run: list[int] = []
    last: Location | None = None
    for i in indices:
        loc = places[i][0] if places[i] is not None else None
        follows = (loc is not None and last is not None and loc.pack == last.pack
                   and loc.record_offset == last.offset + last.length and len(run) < IOV_BATCH)
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


def _verified(mode: str, address: bytes, checksum: bytes, data: memoryview) -> bool:
    if mode == "xxh3":
        return checksum_of(data) == checksum
    if mode == "sha256":
        return address_of(data) == address
    return True


def _with_holes(start: int, end: int, entries: list[ManifestEntry], chunks: list[bytes]) -> list[bytes]:
    """``chunks`` laid from ``start``, with zeros where holes lie between them (and up to ``end``)."""
    out: list[bytes] = []
    pos = start
    for entry, data in zip(entries, chunks):
        if entry.offset > pos:
            out.append(bytes(entry.offset - pos))
        out.append(data)
        pos = entry.offset + entry.length
    if pos < end:
        out.append(bytes(end - pos))
    return out
