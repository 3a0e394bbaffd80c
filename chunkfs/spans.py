"""Long reads straight into one buffer: the store's path for the kernel's read-ahead requests.

A sequential reader of a mounted file sends 128 KiB to 1 MiB read requests,
each covering some 4 to 33 chunks.  Fetching them as chunk objects (one
``pread`` each, a cache entry each, then a join into the reply) costs a copy
and some microseconds of Python per chunk on top of the reading itself.  Here
the chunks of a request are read into one buffer laid out as the file is:
every run of records that lie back to back in one pack (a file written front
to back is stored that way) comes in with one ``preadv`` that scatters the
chunk bytes into place and the record headers between them into a scratch
buffer; each chunk is then verified where it landed, and the caller gets a
view of the bytes it asked for.  pyfuse3 replies from any buffer, so the
bytes are copied twice in all, out of the page cache and into the kernel's
reply, as a passthrough filesystem copies them.

Long reads skip the chunk cache: they are sequential, and the kernel keeps
the file's pages (and the packs' pages) itself; filling the cache would only
push out the chunks short random reads come back to.

Anything unexpected in a run (a truncated pack, a checksum mismatch, a chunk
gc moved meanwhile, a lost pack) sends its chunks through the store's
one-chunk path, which looks again and logs a corrupt chunk; so this module
never decides that a chunk is corrupt.  With ``nowait`` it never waits for
the disk either: WouldBlock instead, and the caller retries in a thread.
Part of the store layer; only the store calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ChunkCorruptError, WouldBlock
from .hashing import address_of, checksum_of
from .ledger import LOST_PACK
from .manifests import ManifestEntry
from .packs import IOV_BATCH, Location

if TYPE_CHECKING:
    from .store import ChunkStore, FileId

Place = tuple[Location, bytes]  # where a chunk lies and its xxh3 checksum


def read_span(store: "ChunkStore", file_id: "FileId", offset: int, length: int,
              nowait: bool = False) -> memoryview:
    """Bytes ``[offset, offset+length)`` of a stored file (short at its end), verified, in a new buffer."""
    with store.index.read() as txn:
        entries = store._manifest_in(txn, file_id, offset, offset + length)
        places = [store.ledger.locate(txn, e.address) for e in entries]
    return read_entries(store, file_id, entries, places, offset, length, nowait)


def read_entries(store: "ChunkStore", file_id: "FileId", entries: list[ManifestEntry], places: list[Place | None],
                 offset: int, length: int, nowait: bool = False) -> memoryview:
    """``read_span`` of manifest ``entries`` already looked up (those covering the range, in file order)
    and where each lies: for a reader that holds them pinned (versions.py)."""
    if not entries:
        return memoryview(b"")
    base = entries[0].offset
    buf = memoryview(bytearray(entries[-1].offset + entries[-1].length - base))

    def view(i: int) -> memoryview:
        return buf[entries[i].offset - base : entries[i].offset - base + entries[i].length]

    first: dict[bytes, int] = {}  # address -> index of its first entry: a repeated chunk is read once
    for i, entry in enumerate(entries):
        first.setdefault(entry.address, i)
    for run in _runs([i for i, e in enumerate(entries) if first[e.address] == i], places):
        views = [view(i) for i in run]
        if not _read_run(store, [entries[i] for i in run], [places[i] for i in run], views, nowait):
            if nowait:
                raise WouldBlock(f"file {file_id!r}: a chunk needs a second look")
            for i, dst in zip(run, views):
                dst[:] = store._fetch(entries[i].address, places[i], file_id)
    for i, entry in enumerate(entries):
        if first[entry.address] != i:
            view(i)[:] = view(first[entry.address])
    end = min(offset + length, entries[-1].offset + entries[-1].length)
    return buf[offset - base : end - base]


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


def _read_run(store: "ChunkStore", entries: list[ManifestEntry], places: list[Place | None],
              views: list[memoryview], nowait: bool) -> bool:
    """Read and verify one run in place; False if any of it needs the one-chunk path."""
    if any(p is None or p[0].pack == LOST_PACK or p[0].length != e.length for e, p in zip(entries, places)):
        return False
    try:
        if not store.packs.read_run([p[0] for p in places], views, nowait):
            return False
    except (OSError, ChunkCorruptError):  # a pack gone or unreadable: the one-chunk path says which
        return False
    return all(_verified(store.verify, e.address, p[1], v) for e, p, v in zip(entries, places, views))


def _verified(mode: str, address: bytes, checksum: bytes, data: memoryview) -> bool:
    if mode == "xxh3":
        return checksum_of(data) == checksum
    if mode == "sha256":
        return address_of(data) == address
    return True
