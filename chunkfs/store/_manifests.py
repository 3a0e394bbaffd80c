"""A file's manifest in the index, and the patches that change it.

A manifest is the list of chunks that make up a file, stored as one LMDB
record per chunk keyed by (file key, offset): the chunk covering any offset
is one cursor seek, and a patch to part of a huge file rewrites only the
entries it touches.  A *hole* (a range never written, or a run of zeros) is
a gap between entries, so a hole costs nothing however long it is: a patch
lists it as a :func:`hole_ref`, which moves the offset on and stores
nothing.  A patch replaces the entries starting in a range by new chunks
laid from the range's start; every entry it removes is decref'ed and every
one it adds incref'ed in the same transaction, and the result is checked to
lie within the file without overlaps.  The store (_store.py) runs these
inside its write transactions; nothing else writes manifests.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from . import _index as ix
from ..errors import FileNotFoundInStore, FileTooLargeError, IndexCorruptError
from ._fileids import FileId, encode_file_id
from ._ledger import Action, Ledger

TO_END = 1 << 63  # a patch's old_end meaning "everything from start on"

# The largest file the store keeps: ext4's limit with 4 KiB blocks (2**32 - 1 blocks, 16 TiB less
# 4 KiB), so a staging file on ext4 can hold any offset of any file.  Past it,
# write, truncate and ftruncate fail with EFBIG (man 2 write, man 2 truncate).
MAX_FILE_SIZE = (2**32 - 1) * 4096
COPY_SLICE = 4096  # manifest entries a copy reads before writing them
_ADDRESS = operator.itemgetter(slice(0, ix.MANIFEST.size - 4))  # a MANIFEST value: address, then length (u32)
_VALUE = operator.itemgetter(1)


class ChunkRef(NamedTuple):
    """A chunk a writer has put (and pinned) and may now reference in a commit.

    A named tuple, not a dataclass: a stream of a huge file holds one per
    chunk, and per million of them a full garbage collection (which pauses
    every daemon thread) takes 56 ms instead of 98 ms, in 72 MiB instead of
    96 MiB (measured here).
    """

    address: bytes  # empty for a hole
    length: int


def hole_ref(length: int) -> ChunkRef:
    """A hole of ``length`` bytes in a patch: reads as zeros, stores nothing."""
    return ChunkRef(b"", length)


def check_file_size(size: int) -> None:
    """Refuse a size past :data:`MAX_FILE_SIZE` (EFBIG)."""
    if size > MAX_FILE_SIZE:
        raise FileTooLargeError(f"file size {size} exceeds the maximum file size ({MAX_FILE_SIZE} bytes)")


class ManifestEntry(NamedTuple):
    offset: int
    length: int
    address: bytes


@dataclass(frozen=True)
class Patch:
    """Replace the manifest entries starting in ``[start, old_end)`` by ``chunks``, laid from ``start``."""

    start: int
    old_end: int
    chunks: list[ChunkRef]


class ManifestIndex:
    """Reads and patches manifests in the index's ``manifests`` and ``files`` databases."""

    def __init__(self, index: ix.Index, ledger: Ledger):
        self.index = index
        self.ledger = ledger

    def patch(self, txn, key: bytes, patches: list[Patch], size: int) -> list[Action]:
        """Apply ``patches`` to the file stored under ``key`` and set its size; returns the ledger's actions."""
        check_file_size(size)
        db, counters = self.index.manifests, self.index.counters
        raw = txn.get(key, db=self.index.files)
        if raw is None:
            fkey, old_size, count, data = ix.next_id(txn, counters, "next_fkey"), 0, 0, 0
            ix.add_counter(txn, counters, "files", 1)
        else:
            fkey, old_size, count, data = ix.FILE.unpack(raw)
        actions: list[Action] = []
        seams = []
        for patch in patches:
            for entry in self.entries(txn, fkey, patch.start, patch.old_end):
                txn.delete(ix.KEY64x2.pack(fkey, entry.offset), db=db)
                actions += self.ledger.decref(txn, entry.address)
                count, data = count - 1, data - entry.length
            offset, append = patch.start, True
            for ref in patch.chunks:
                if ref.address:
                    entry_key, value = ix.KEY64x2.pack(fkey, offset), ix.MANIFEST.pack(ref.address, ref.length)
                    # a new file's entries come last in key order: appending skips the search
                    append = append and txn.put(entry_key, value, append=True, db=db)
                    if not append and not txn.put(entry_key, value, overwrite=False, db=db):
                        raise IndexCorruptError(f"manifest of file key {fkey} overlaps itself at offset {offset}")
                    actions += self.ledger.incref(txn, ref.address)
                    count, data = count + 1, data + ref.length
                offset += ref.length
            seams += [patch.start, offset]
        self._check_tiling(txn, fkey, seams, size)
        txn.put(key, ix.FILE.pack(fkey, size, count, data), db=self.index.files)
        ix.add_counter(txn, counters, "logical_bytes", size - old_size)
        return actions

    def copy(self, txn, pairs: list[tuple[bytes, bytes]]) -> tuple[list[bool], list[Action]]:
        """Give each destination key (no file yet) the manifest of its source key; raise the chunks' refcounts.

        Holes stay holes (no entries); no chunk is read.  Returns, per pair,
        whether the source existed (a missing one is an empty file: nothing
        is copied).  Counters and refcounts are summed over all the pairs and
        written once each: a copy of a tree copies many small files.
        """
        db, counters = self.index.manifests, self.index.counters
        next_fkey = max(ix.get_counter(txn, counters, "next_fkey"), 1)
        uses: Counter = Counter()
        found, logical = [], 0
        for src_key, dst_key in pairs:
            raw = txn.get(src_key, db=self.index.files)
            found.append(raw is not None)
            if raw is None:
                continue
            if txn.get(dst_key, db=self.index.files) is not None:
                raise IndexCorruptError(f"file {dst_key!r} already exists: a copy must not overwrite it")
            src_fkey, size, count, data = ix.FILE.unpack(raw)
            fkey, next_fkey = next_fkey, next_fkey + 1
            prefix = ix.KEY64.pack(fkey)  # a manifest key is fkey + offset, both u64 BE
            for entries in self._raw_entries(txn, src_fkey):
                with txn.cursor(db=db) as cur:  # the newest fkey sorts last: appends, one call per slice
                    cur.putmulti([(prefix + offset, value) for offset, value in entries], append=True)
                uses.update(map(_ADDRESS, map(_VALUE, entries)))
            txn.put(dst_key, ix.FILE.pack(fkey, size, count, data), db=self.index.files)
            logical += size
        if any(found):
            txn.put(b"next_fkey", ix.U64.pack(next_fkey), db=counters)
            ix.add_counter(txn, counters, "files", sum(found))
            ix.add_counter(txn, counters, "logical_bytes", logical)
        return found, self._add_references(txn, uses)

    def _add_references(self, txn, uses: Counter) -> list[Action]:
        actions: list[Action] = []
        chunks = self.index.chunks
        for address, n in uses.items():
            raw = txn.get(address, db=chunks)
            if raw is None:  # not committed yet (a writer's pinned chunk): the ledger's own way
                for _ in range(n):
                    actions += self.ledger.incref(txn, address)
                continue
            # A chunk with a record only gains references: no pin, pack or counter changes (Ledger.incref).
            refcount, *rest = ix.CHUNK.unpack(raw)
            txn.put(address, ix.CHUNK.pack(refcount + n, *rest), db=chunks)
        return actions

    def _raw_entries(self, txn, fkey: int):
        """Slices of (offset as 8 key bytes, raw MANIFEST value) of every entry of ``fkey``.

        The caller writes the same database between slices: no cursor is
        moved while it is written.
        """
        prefix = ix.KEY64.pack(fkey)
        start = ix.KEY64x2.pack(fkey, 0)
        while True:
            got = []
            with txn.cursor(db=self.index.manifests) as cur:
                if cur.set_range(start):
                    for k, v in cur:
                        if not k.startswith(prefix):
                            break
                        got.append((k[8:], v))
                        if len(got) == COPY_SLICE:
                            break
            if got:
                yield got
            if len(got) < COPY_SLICE:
                return
            start = ix.KEY64x2.pack(fkey, ix.KEY64.unpack(got[-1][0])[0] + 1)

    def _check_tiling(self, txn, fkey: int, seams: list[int], size: int) -> None:
        """Refuse a commit whose manifest would have overlapping entries or entries past its end.

        Entries lay in ``[0, old size)`` without overlaps before (gaps are
        holes), so checking that no entry crosses a seam a patch made, and
        that no entry ends past ``size``, proves it of the result:
        O(patches), not O(chunks).
        """
        for seam in seams:
            if 0 < seam:
                pred = self.covering(txn, fkey, seam - 1, seam)
                if pred and pred[0].offset + pred[0].length > seam:
                    raise IndexCorruptError(f"manifest of file key {fkey} overlaps itself at offset {seam}")
        last = self.covering(txn, fkey, size - 1, size) if size else []
        beyond = self.entries(txn, fkey, size, None, limit=1)
        if beyond or (last and last[0].offset + last[0].length > size):
            raise IndexCorruptError(f"manifest of file key {fkey} reaches past its size {size}")

    @staticmethod
    def _seek_covering(cur, fkey: int, start: int) -> bool:
        """Put ``cur`` on the entry of ``fkey`` that may contain ``start`` (the one before the first past it).

        With holes, the entry before ``start`` may end before it, belong to
        another file, or not exist; the caller's loop skips what does not
        overlap its range.
        """
        key = ix.KEY64x2.pack(fkey, start)
        if not cur.set_range(key):
            return cur.last() and ix.KEY64x2.unpack(cur.key())[0] == fkey
        if cur.key() == key:
            return True
        if not cur.prev():
            return cur.first()
        if ix.KEY64x2.unpack(cur.key())[0] != fkey:
            return cur.next()
        return True

    def file_record(self, txn, file_id: FileId) -> tuple[int, int, int, int]:
        """(fkey, size, chunk count, data bytes) of a stored file; FileNotFoundInStore if there is none."""
        raw = txn.get(encode_file_id(file_id), db=self.index.files)
        if raw is None:
            raise FileNotFoundInStore(f"no file {file_id!r} in the store")
        return ix.FILE.unpack(raw)

    def covering_file(self, txn, file_id: FileId, start: int, end: int | None) -> list[ManifestEntry]:
        """Entries covering ``[start, end)`` of a stored file (to its end if ``end`` is None)."""
        fkey, size, _, _ = self.file_record(txn, file_id)
        return self.covering(txn, fkey, start, size if end is None else min(end, size))

    def entries(self, txn, fkey: int, start: int, end: int | None, limit: int = -1) -> list[ManifestEntry]:
        """Manifest entries whose offset lies in ``[start, end)`` (at most ``limit`` if given)."""
        out = []
        with txn.cursor(db=self.index.manifests) as cur:
            if not cur.set_range(ix.KEY64x2.pack(fkey, start)):
                return out
            for k, v in cur:
                key_fkey, offset = ix.KEY64x2.unpack(k)
                if key_fkey != fkey or (end is not None and offset >= end):
                    break
                address, length = ix.MANIFEST.unpack(v)
                out.append(ManifestEntry(offset, length, address))
                if len(out) == limit:
                    break
        return out

    def covering(self, txn, fkey: int, start: int, end: int) -> list[ManifestEntry]:
        """Entries that overlap ``[start, end)``: the one containing ``start`` first."""
        out: list[ManifestEntry] = []
        if start >= end:
            return out
        with txn.cursor(db=self.index.manifests) as cur:
            if not self._seek_covering(cur, fkey, start):
                return out
            for k, v in cur:
                key_fkey, offset = ix.KEY64x2.unpack(k)
                if key_fkey != fkey or offset >= end:
                    break
                address, length = ix.MANIFEST.unpack(v)
                if offset + length > start:
                    out.append(ManifestEntry(offset, length, address))
        return out
