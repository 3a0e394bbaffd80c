"""Chunk ids: the short names manifests and pack records give chunks, and how they are handed out.

An id is a u32, so that a manifest entry is 8 bytes and a chunk record's
key 4.  Ids come from a counter, in order, so chunk records are written in
key order (LMDB appends them to full pages).  An id is handed out when a
chunk's bytes are appended (its record header names it), before any
transaction; every write transaction saves the counter, so an id in any
record within a pack's indexed end is below the saved counter, and one
beyond it is cut away by recovery before the counter could hand it out
again.

A busy store writes and deletes far more chunks over its life than it ever
holds: at 100 MB/s of new data and the default 32 KiB chunks, 2**32 ids
last about two weeks.  So when the counter reaches the last id it wraps:
from then on an id is one no chunk record and no writer in flight holds,
found by walking the ``chunks`` database from where the last search
stopped (mostly one cursor step an id: records of deleted chunks leave long
gaps).  Only a store holding 2**32 - 1 chunks at once runs out, with
StoreFullError (ENOSPC).  A wrapped id may also be named by the header of
a dead record still waiting for gc; nothing takes a dead record for a live
one (every check compares the location too), so the only loss is that a
read misdirected onto exactly that record would be caught by the checksum
or SHA-256 rather than by the id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import lmdb

from . import _index as ix
from ..errors import StoreFullError

Action = Callable[[], None]


class ChunkIds:
    """The id counter of one open store; used under the store's lock."""

    def __init__(self, index: ix.Index):
        self.ix = index
        with index.read() as txn:
            self._next = max(ix.get_counter(txn, index.counters, "next_chunk"), 1)
            self.wrapped = bool(ix.get_counter(txn, index.counters, "chunk_ids_wrapped"))
        self._saved = (self._next, self.wrapped)

    def take(self, count: int, in_flight: Iterable[int], txn: lmdb.Transaction | None = None) -> Sequence[int]:
        """``count`` ids no chunk holds; ``in_flight`` are the ids of chunks written but not committed.

        ``txn``: the write transaction the caller is in, if any (a wrapped
        counter searches the chunks database, and must see its changes).
        """
        first = self._next
        if not self.wrapped and first + count <= ix.MAX_CHUNK_ID + 1:
            self._next = first + count
            return range(first, first + count)
        if txn is not None:
            return self._reuse(txn, count, set(in_flight))
        with self.ix.read() as read:
            return self._reuse(read, count, set(in_flight))

    def _reuse(self, txn: lmdb.Transaction, count: int, taken: set[int]) -> list[int]:
        """Ids in the gaps of the chunks database, from where the last search stopped, wrapping at the end."""
        self.wrapped = True
        out: list[int] = []
        probe = self._next if self._next <= ix.MAX_CHUNK_ID else 1
        walked = 0
        with txn.cursor(db=self.ix.chunks) as cur:
            while len(out) < count:
                if walked > ix.MAX_CHUNK_ID:
                    raise StoreFullError(f"the store holds {ix.MAX_CHUNK_ID} chunks, the most it can")
                found = cur.set_range(ix.KEYCHUNK.pack(probe))
                used = ix.KEYCHUNK.unpack(cur.key())[0] if found else ix.MAX_CHUNK_ID + 1
                while probe < used and len(out) < count:  # a gap: ids of chunks long gone
                    if probe not in taken:
                        out.append(probe)
                    probe, walked = probe + 1, walked + 1
                if len(out) < count:  # step over the id in use
                    probe, walked = used + 1, walked + 1
                if probe > ix.MAX_CHUNK_ID:
                    probe = 1
        self._next = probe
        return out

    def raise_to(self, at_least: int) -> None:
        """Never hand out an id below ``at_least`` again (fsck --repair found it in use)."""
        if not self.wrapped:
            self._next = max(self._next, at_least)

    def save(self, txn: lmdb.Transaction) -> list[Action]:
        """Record the counter in this transaction if it moved; returns what to note after the commit."""
        state = (self._next, self.wrapped)
        if state == self._saved:
            return []
        txn.put(b"next_chunk", ix.U64.pack(state[0]), db=self.ix.counters)
        if state[1]:
            txn.put(b"chunk_ids_wrapped", ix.U64.pack(1), db=self.ix.counters)
        return [lambda: setattr(self, "_saved", state)]
