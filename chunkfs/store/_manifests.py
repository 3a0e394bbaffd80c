"""A file's manifest in the index, and the patches that change it.

A manifest is the list of chunks that make up a file.  It is stored as
*runs*: one LMDB record per run of up to ``RUN_MAX`` chunks lying back to
back, keyed by (file key, offset of the run) and holding (chunk id, length)
pairs, 8 bytes a chunk.  The chunk covering any offset is one cursor seek
and a short decode; a patch to part of a huge file rewrites only the runs it
touches (and merges them with the runs they meet, so runs stay full).  A
*hole* (a range never written, or a run of zeros) is a gap between runs, so
a hole costs nothing however long it is: a patch lists it as a
:func:`hole_ref`, which moves the offset on and stores nothing.  A patch
replaces the entries starting in a range by new chunks laid from the range's
start; every entry it removes is decref'ed and every one it adds incref'ed
in the same transaction, and the runs it writes are checked to lie within
the file without overlaps.  The store (_store.py) runs these inside its
write transactions; nothing else writes manifests.
"""

from __future__ import annotations

import logging
import struct
import sys
from bisect import bisect_right
from collections.abc import Iterator
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from . import _index as ix
from ..errors import FileNotFoundInStore, FileTooLargeError, IndexCorruptError
from ._fileids import FileId, encode_file_id
from ._ledger import Action, Ledger, get_record

log = logging.getLogger(__name__)

TO_END = 1 << 63  # a patch's old_end meaning "everything from start on"
# A manifest of at least this many entries that a commit replaces whole or deletes is *retired* rather than
# dropped in the commit, when something drops retired manifests in the background (see ManifestIndex.retire).
RETIRE_MIN = 512

# The largest file the store keeps: ext4's limit with 4 KiB blocks (2**32 - 1 blocks, 16 TiB less
# 4 KiB), so a staging file on ext4 can hold any offset of any file.  Past it,
# write, truncate and ftruncate fail with EFBIG (man 2 write, man 2 truncate).
MAX_FILE_SIZE = (2**32 - 1) * 4096


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
    """One chunk of a file as callers above the store see it."""

    offset: int
    length: int
    address: bytes


class Extent(NamedTuple):
    """One manifest entry as the index keeps it: where in the file, how long, which chunk."""

    offset: int
    length: int
    chunk: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Patch:
    """Replace the manifest entries starting in ``[start, old_end)`` by ``chunks``, laid from ``start``."""

    start: int
    old_end: int
    chunks: list[ChunkRef]


def _u32s(value: bytes) -> memoryview | tuple[int, ...]:
    """A run's little-endian u32s, indexable, without building them where the machine is little-endian."""
    if _LITTLE:
        return memoryview(value).cast("I")
    return struct.unpack(f"<{len(value) // 4}I", value)


_LITTLE = sys.byteorder == "little"


def _check_run(start: int, value: bytes) -> None:
    if not value or len(value) % ix.RUN_ENTRY.size:
        raise IndexCorruptError(f"manifest run at offset {start} is {len(value)} bytes long")


def decode_run(start: int, value: bytes) -> list[Extent]:
    """The entries of the run at ``start``; IndexCorruptError if the record is not a run."""
    _check_run(start, value)
    out = []
    pos = start
    for chunk, end in ix.RUN_ENTRY.iter_unpack(value):
        if start + end <= pos:
            raise IndexCorruptError(f"manifest run at offset {start} has an entry that ends before it begins")
        out.append(Extent(pos, start + end - pos, chunk))
        pos = start + end
    return out


def encode_run(extents) -> bytes:
    start = extents[0][0]
    flat = [x for offset, length, chunk in extents for x in (chunk, offset + length - start)]
    return struct.pack(f"<{len(flat)}I", *flat)


def split_runs(extents) -> Iterator[list]:
    """Sorted, non-overlapping (offset, length, chunk) entries as runs: a new run at every gap (a hole),
    every RUN_MAX entries, and before a run would span 4 GiB."""
    run: list = []
    start = end = 0
    for e in extents:
        offset, length = e[0], e[1]
        if run and (len(run) == ix.RUN_MAX or offset != end or offset + length - start > ix.MAX_RUN_SPAN):
            yield run
            run = []
        if not run:
            start = offset
        run.append(e)
        end = offset + length
    if run:
        yield run


def _entries_of(start: int, value: bytes) -> list[tuple[int, int, int]]:
    """A run's entries as plain (offset, length, chunk) tuples: the patch path's cheaper decode_run."""
    _check_run(start, value)
    words = struct.unpack(f"<{len(value) // 4}I", value)
    out = []
    pos = start
    for i in range(0, len(words), 2):
        end = start + words[i + 1]
        if end <= pos:
            raise IndexCorruptError(f"manifest run at offset {start} has an entry that ends before it begins")
        out.append((pos, end - pos, words[i]))
        pos = end
    return out


class ManifestIndex:
    """Reads and patches manifests in the index's ``manifests`` and ``files`` databases."""

    def __init__(self, index: ix.Index, ledger: Ledger):
        self.index = index
        self.ledger = ledger

    # -- changing a file ------------------------------------------------------------

    def patch(self, txn, key: bytes, patches: list[Patch], size: int, retire: bool = False) -> list[Action]:
        """Apply ``patches`` to the file stored under ``key`` and set its size; returns the ledger's actions.

        With ``retire``, a big manifest the first patch replaces whole is retired (see :meth:`retire`)
        and the file starts again under a new file key.
        """
        check_file_size(size)
        counters = self.index.counters
        raw = txn.get(key, db=self.index.files)
        if raw is None:
            fkey, old_size, count, data = ix.next_id(txn, counters, "next_fkey"), 0, 0, 0
            ix.add_counter(txn, counters, "files", 1)
        else:
            fkey, old_size, count, data = ix.FILE.unpack(raw)
            if retire and count >= RETIRE_MIN and patches and patches[0].start == 0 and patches[0].old_end >= TO_END:
                self.retire(txn, fkey, count)
                fkey, count, data = ix.next_id(txn, counters, "next_fkey"), 0, 0
        actions: list[Action] = []
        refs = 0
        end: int | None = None  # where the file's entries end, if the last patch says (it ran to the end)
        for patch in patches:
            added, added_bytes, end = self._apply(txn, fkey, patch, actions)
            count, data, refs = count + added, data + added_bytes, refs + added
        if (self._last_end(txn, fkey) if end is None else end) > size:
            raise IndexCorruptError(f"manifest of file key {fkey} reaches past its size {size}")
        txn.put(key, ix.FILE.pack(fkey, size, count, data), db=self.index.files)
        self.ledger.count(txn, "logical_bytes", size - old_size)
        self.ledger.count(txn, "chunk_refs", refs)
        return actions

    def _apply(self, txn, fkey: int, patch: Patch, actions: list[Action]) -> tuple[int, int, int | None]:
        """One patch: (entries added less removed, bytes likewise, and where the file's entries end now if
        the patch ran to its end, else None)."""
        laid: list[tuple[int, ChunkRef]] = []
        offset = patch.start
        for ref in patch.chunks:
            if ref.address:
                laid.append((offset, ref))
            offset += ref.length
        reach = TO_END if patch.old_end >= TO_END else max(patch.old_end, offset)
        keys, region = self._region(txn, fkey, patch.start, reach)
        kept: list[tuple[int, int, int]] = []
        delta, delta_bytes = 0, 0
        for entry in region:
            if patch.start <= entry[0] < patch.old_end:
                actions += self.ledger.decref(txn, entry[2])
                delta, delta_bytes = delta - 1, delta_bytes - entry[1]
            else:
                kept.append(entry)
        for at, ref in laid:
            kept.append((at, ref.length, self.ledger.incref(txn, ref.address, actions)))
            delta, delta_bytes = delta + 1, delta_bytes + ref.length
        kept.sort()
        covered = 0
        for offset, length, _ in kept:
            if offset < covered:
                raise IndexCorruptError(f"manifest of file key {fkey} overlaps itself at offset {offset}")
            covered = offset + length
        db = self.index.manifests
        for k in keys:
            txn.delete(k, db=db)
        self.write_runs(txn, fkey, kept)
        # to the end, the runs after ``start`` were all rewritten: the last one kept is the file's last
        return delta, delta_bytes, (covered if reach == TO_END and kept else None)

    def _region(self, txn, fkey: int, start: int, reach: int) -> tuple[list[bytes], list[tuple[int, int, int]]]:
        """The runs a patch of ``[start, reach)`` rewrites: those overlapping it, and those it meets end to end."""
        keys: list[bytes] = []
        entries: list[tuple[int, int, int]] = []
        with txn.cursor(db=self.index.manifests) as cur:
            if not _seek_run(cur, fkey, start):
                return keys, entries
            for k, v in cur:
                key_fkey, run_start = ix.KEY64x2.unpack(k)
                if key_fkey != fkey or run_start > reach:
                    break
                _check_run(run_start, v)
                if run_start + ix.U32.unpack_from(v, len(v) - 4)[0] >= start:
                    keys.append(k)
                    entries += _entries_of(run_start, v)
        return keys, entries

    def write_runs(self, txn, fkey: int, extents) -> None:
        """Store sorted, non-overlapping (offset, length, chunk) entries as runs (where no run of the file lies)."""
        db = self.index.manifests
        for run in split_runs(extents):
            key, value = ix.KEY64x2.pack(fkey, run[0][0]), encode_run(run)
            # a new file's runs come last in key order: appending skips the search
            if not txn.put(key, value, append=True, db=db):
                txn.put(key, value, db=db)

    def copy(self, txn, pairs: list[tuple[bytes, bytes]]) -> list[bool]:
        """Give each destination key (no file yet) the manifest of its source key; raise the chunks' refcounts.

        The source's runs are copied as they are under a new file key (chunk
        ids and relative ends do not depend on which file holds them), so the
        cost is one put per run and one refcount update per distinct chunk:
        metadata only, no chunk read.  Holes stay holes.  Returns, per pair,
        whether the source existed (a missing one is an empty file: nothing is
        copied).  Counters are summed over all the pairs and written once.
        """
        db, counters = self.index.manifests, self.index.counters
        uses: Counter = Counter()
        found, logical, entries = [], 0, 0
        for src_key, dst_key in pairs:
            raw = txn.get(src_key, db=self.index.files)
            found.append(raw is not None)
            if raw is None:
                continue
            if txn.get(dst_key, db=self.index.files) is not None:
                raise IndexCorruptError(f"file {dst_key!r} already exists: a copy must not overwrite it")
            src_fkey, size, count, data = ix.FILE.unpack(raw)
            fkey = ix.next_id(txn, counters, "next_fkey")
            runs = self.runs_of(txn, src_fkey)
            for start, value in runs:
                _check_run(start, value)
                uses.update(_u32s(value)[::2])  # the chunk ids: every other u32 of a run
            with txn.cursor(db=db) as cur:  # the newest file key sorts last: appended
                cur.putmulti([(ix.KEY64x2.pack(fkey, start), value) for start, value in runs], append=True)
            txn.put(dst_key, ix.FILE.pack(fkey, size, count, data), db=self.index.files)
            logical, entries = logical + size, entries + count
        if any(found):
            ix.add_counter(txn, counters, "files", sum(found))
            self.ledger.count(txn, "logical_bytes", logical)
            self.ledger.count(txn, "chunk_refs", entries)
        self.ledger.add_references(txn, uses)
        return found

    def runs_of(self, txn, fkey: int) -> list[tuple[int, bytes]]:
        """(start, raw run value) of every run of a file, in order (read whole before the database is written)."""
        out = []
        with txn.cursor(db=self.index.manifests) as cur:
            if cur.set_range(ix.KEY64x2.pack(fkey, 0)):
                for k, v in cur:
                    key_fkey, start = ix.KEY64x2.unpack(k)
                    if key_fkey != fkey:
                        break
                    out.append((start, bytes(v)))
        return out

    def delete_runs(self, txn, fkey: int) -> list[Extent]:
        """Remove every run of a file; returns its entries (their references are the caller's to drop)."""
        out: list[Extent] = []
        for start, value in self.runs_of(txn, fkey):
            txn.delete(ix.KEY64x2.pack(fkey, start), db=self.index.manifests)
            out += decode_run(start, value)
        return out

    # -- retired manifests -----------------------------------------------------------

    def retire(self, txn, fkey: int, count: int) -> None:
        """Set a file's ``count`` manifest entries aside, references and all, for :meth:`drop_retired`.

        Dropping a reference is a refcount update (and, for the last one, the
        chunk's death): overwriting or deleting a 1 GiB file drops ~32,000,
        about a second of the writer's commit.  Retiring costs one put: the
        runs stay under their file key, which no file names any more, still
        holding their references (fsck counts them like any other), until a
        background worker drops them a page at a time.  Their chunks' space
        comes back then, not at the commit.
        """
        txn.put(ix.KEY64.pack(fkey), ix.U64.pack(count), db=self.index.retired)

    def retired_keys(self, txn) -> dict[int, int]:
        """File key -> entries left, of every retired manifest."""
        db = self.index.retired
        if db is None:  # a read-only open of a store that never retired one
            return {}
        return {ix.KEY64.unpack(k)[0]: ix.U64.unpack(v)[0] for k, v in txn.cursor(db=db)}

    def drop_retired(self, txn, limit: int) -> tuple[int, list[Action]]:
        """Drop the references of about ``limit`` entries of the first retired manifest (whole runs);
        returns (entries dropped, the ledger's actions).  A damaged run is removed with a warning: its
        references are then counted too high, which fsck finds and repair mends."""
        db = self.index.retired
        with txn.cursor(db=db) as cur:
            if not cur.first():
                return 0, []
            rkey, left = bytes(cur.key()), ix.U64.unpack(cur.value())[0]
        fkey = ix.KEY64.unpack(rkey)[0]
        keys: list[bytes] = []
        chunks: list[int] = []
        more = False
        with txn.cursor(db=self.index.manifests) as cur:
            if cur.set_range(ix.KEY64x2.pack(fkey, 0)):
                for k, v in cur:
                    if ix.KEY64x2.unpack(k)[0] != fkey:
                        break
                    if len(chunks) >= limit:
                        more = True
                        break
                    keys.append(bytes(k))
                    try:
                        chunks += [e.chunk for e in decode_run(ix.KEY64x2.unpack(k)[1], v)]
                    except IndexCorruptError:
                        log.warning("a damaged manifest run of retired file key %d is dropped; fsck will count its "
                                    "chunks' references again", fkey)
        actions: list[Action] = []
        for k in keys:
            txn.delete(k, db=self.index.manifests)
        for chunk in chunks:
            actions += self.ledger.decref(txn, chunk)
        if more:
            txn.put(rkey, ix.U64.pack(max(left - len(chunks), 0)), db=db)
        else:
            txn.delete(rkey, db=db)
        self.ledger.count(txn, "chunk_refs", -len(chunks))
        return len(chunks), actions

    def _last_end(self, txn, fkey: int) -> int:
        """Where the file's last entry ends (its last run says: O(1)); 0 if it has none."""
        with txn.cursor(db=self.index.manifests) as cur:
            if not _seek_run(cur, fkey, ix.MAX_OFFSET):
                return 0
            run_start = ix.KEY64x2.unpack(cur.key())[1]
            value = cur.value()
        _check_run(run_start, value)
        return run_start + ix.U32.unpack_from(value, len(value) - 4)[0]  # the last entry's relative end

    # -- reading ------------------------------------------------------------------------

    def file_record(self, txn, file_id: FileId) -> tuple[int, int, int, int]:
        """(fkey, size, chunk count, data bytes) of a stored file; FileNotFoundInStore if there is none."""
        raw = txn.get(encode_file_id(file_id), db=self.index.files)
        if raw is None:
            raise FileNotFoundInStore(f"no file {file_id!r} in the store")
        return ix.FILE.unpack(raw)

    def covering_file(self, txn, file_id: FileId, start: int, end: int | None) -> list[Extent]:
        """Entries covering ``[start, end)`` of a stored file (to its end if ``end`` is None)."""
        fkey, size, _, _ = self.file_record(txn, file_id)
        return self.covering(txn, fkey, start, size if end is None else min(end, size))

    def resolve(self, txn, extents: list[Extent]) -> list[ManifestEntry]:
        """The entries with their chunks' addresses (empty where a chunk has no record)."""
        out = []
        for e in extents:
            rec = get_record(txn, self.index, e.chunk)
            out.append(ManifestEntry(e.offset, e.length, rec.address if rec is not None else b""))
        return out

    def entries(self, txn, fkey: int, start: int, end: int | None, limit: int = -1) -> list[Extent]:
        """Manifest entries whose offset lies in ``[start, end)`` (at most ``limit`` if given)."""
        stop = ix.MAX_OFFSET if end is None else end
        out = [e for e in self._scan(txn, fkey, start, stop) if e.offset >= start]
        return out if limit < 0 else out[:limit]

    def covering(self, txn, fkey: int, start: int, end: int) -> list[Extent]:
        """Entries that overlap ``[start, end)``: the one containing ``start`` first."""
        if start >= end:
            return []
        return self._scan(txn, fkey, start, end)  # from the entry holding ``start``: each ends past it

    def _scan(self, txn, fkey: int, start: int, end: int) -> list[Extent]:
        """Entries of the runs that may overlap ``[start, end)``, from the one holding ``start`` to ``end``.

        Only the entries from ``start`` on become Extents: a 4 KiB read in
        the middle of a run finds its entry by a bisection of the run's
        offsets, not by building all of them.
        """
        out: list[Extent] = []
        with txn.cursor(db=self.index.manifests) as cur:
            if not _seek_run(cur, fkey, start):
                return out
            for k, v in cur:
                key_fkey, run_start = ix.KEY64x2.unpack(k)
                if key_fkey != fkey or run_start >= end:
                    break
                _check_run(run_start, v)
                words = _u32s(v)
                ends = words[1::2]
                first = bisect_right(ends, start - run_start) if start > run_start else 0
                pos = run_start + (ends[first - 1] if first else 0)
                for i in range(first, len(ends)):
                    if pos >= end:
                        return out
                    out.append(Extent(pos, run_start + ends[i] - pos, words[2 * i]))
                    pos = run_start + ends[i]
                if pos >= end:
                    break  # the next run starts at or after this one's end: past the range
        return out

    def runs(self, txn) -> Iterator[tuple[int, int, bytes]]:
        """(fkey, run start, raw run) of every run in the index, in key order (fsck)."""
        with txn.cursor(db=self.index.manifests) as cur:
            for k, v in cur:
                fkey, run_start = ix.KEY64x2.unpack(k)
                yield fkey, run_start, v


def _seek_run(cur, fkey: int, start: int) -> bool:
    """Put ``cur`` on the run of ``fkey`` that may contain ``start`` (the last one starting at or before it).

    Failing that, on the first run of ``fkey`` after ``start``; False if the
    file has no run there at all.  With holes, the run found may end before
    ``start``: the callers skip what does not overlap their range.
    """
    key = ix.KEY64x2.pack(fkey, start)
    if not cur.set_range(key):
        return cur.last() and ix.KEY64x2.unpack(cur.key())[0] == fkey
    if cur.key() == key:
        return True
    if cur.prev() and ix.KEY64x2.unpack(cur.key())[0] == fkey:
        return True
    if not cur.set_range(key):  # back to the first key past ``start``
        return False
    return ix.KEY64x2.unpack(cur.key())[0] == fkey
