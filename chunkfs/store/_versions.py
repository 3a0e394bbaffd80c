"""A version of a stored file that stays readable, unchanged, until its reader closes it.

Every read call of the store (``read_range``, ``read_view``) returns bytes of
one version, but a reader that streams a file over many calls (an HTTP
download, a copy to a slow client) would see a replacement that lands
between two calls: the first half of one version, the second half of the
next.  A :class:`FileVersion` takes the file's manifest once and *pins* the
chunks it needs, the ledger's mechanism that keeps the chunks of a write in
flight (_ledger.py): a pinned chunk whose file is replaced or deleted becomes
pending, not dead, so its bytes are neither punched out nor compacted away by
gc until the version is closed.  It is what an open file descriptor is to an
unlinked file: the name may already point elsewhere, or nowhere.

Pinning happens under the store's lock, in one read transaction with the
manifest lookup, so no commit can free a chunk between the two.  The cost is
one manifest walk and a dict entry per chunk covered; gc skips the packs a
pinned chunk lies in until the version is closed, so a version should not be
kept open longer than its reader needs it.

Part of the store layer; only the store calls :func:`open_version`.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
from collections.abc import Callable

from ..errors import ChunkCorruptError, InvalidArgument
from ._fileids import FileId
from ._manifests import ChunkRef, Extent
from ._reading import ChunkReader, Place


class FileVersion:
    """The bytes ``[start, end)`` of one version of a stored file, readable until :meth:`close`.

    ``size`` and ``fingerprint`` describe the whole version, whatever part of it
    is held.  ``fingerprint`` is a digest of the size and of every chunk's
    offset and address in order: chunk addresses are SHA-256 of the bytes, so
    different bytes give a different fingerprint, and the same bytes written
    the same way (the same chunker, so the same cuts) give the same one: a
    strong HTTP ETag, say, without a second pass over the data.
    """

    def __init__(self, reader: ChunkReader, release: Callable[[list[ChunkRef]], None] | None, file_id: FileId,
                 size: int, fingerprint: str, start: int, end: int, entries: list[Extent],
                 places: list[Place]):
        self._reader, self._release, self.file_id = reader, release, file_id
        self.size, self.fingerprint = size, fingerprint
        self.start, self.end = start, end
        self._entries, self._places = entries, places
        self._offsets = [e.offset for e in entries]
        self._closed = False

    def read(self, offset: int, length: int) -> memoryview:
        """Bytes ``[offset, offset+length)`` of this version, short at its end; verified.

        The range must lie within the part held (``[start, end)``); a damaged
        chunk raises ChunkCorruptError, never wrong bytes.
        """
        if self._closed:
            raise InvalidArgument("read of a closed file version")
        end = min(offset + length, self.size)
        if offset < self.start or (end > offset and end > self.end) or length < 0:
            raise InvalidArgument(f"[{offset}, {offset + length}) is outside the part held, "
                                  f"[{self.start}, {self.end})")
        if end <= offset:
            return memoryview(b"")
        first = max(bisect.bisect_right(self._offsets, offset) - 1, 0)  # none before: a leading hole
        last = bisect.bisect_left(self._offsets, end)
        return self._reader.read_entries(self.file_id, self._entries[first:last], self._places[first:last],
                                         offset, end)

    def close(self) -> None:
        """Drop the pins: chunks the file no longer uses become garbage now."""
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            self._release([ChunkRef(p.address, e.length) for e, p in zip(self._entries, self._places)])

    def __enter__(self) -> "FileVersion":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_version(store, file_id: FileId, start: int = 0, end: int | None = None) -> FileVersion:
    """The stored file as it is now, with the chunks covering ``[start, end)`` pinned (a ChunkStore's)."""
    if start < 0 or (end is not None and end < start):
        raise InvalidArgument("start must not be negative nor past end")
    ledger = store.ledger
    pinning = not store.readonly and (end is None or end > start)  # False: nothing will be held
    # The lock: no commit until every chunk is pinned.  Holding nothing (just the size and the
    # fingerprint) needs no lock: one read transaction is one consistent view.
    with store._lock if pinning else contextlib.nullcontext(), store.index.read() as txn:
        fkey, size, _, _ = store.manifest_index.file_record(txn, file_id)
        end = size if end is None else min(end, size)
        entries = store.manifest_index.entries(txn, fkey, 0, None)
        places = store.reader.places(txn, entries)  # every chunk looked up before any is pinned
        digest = hashlib.sha256(size.to_bytes(8, "little"))
        held: list[tuple[Extent, Place]] = []
        for entry, place in zip(entries, places):
            if place is None:
                raise ChunkCorruptError(b"", f"chunk id {entry.chunk} has no record in the index", file_id)
            digest.update(entry.offset.to_bytes(8, "little") + place.address)  # offsets: holes move nothing else
            if start < end and entry.offset < end and entry.end > start:
                held.append((entry, place))
        for entry, place in held if pinning else ():  # read-only: no writer here frees anything
            if not ledger.add_pin(place.address):
                ledger.pin_existing(place.address, entry.chunk, ledger.record(txn, entry.chunk))
    release = (lambda refs: None if store.closed else store.release(refs)) if pinning else None
    return FileVersion(store.reader, release, file_id, size, digest.hexdigest()[:32], start, max(end, start),
                       [e for e, _ in held], [p for _, p in held])
