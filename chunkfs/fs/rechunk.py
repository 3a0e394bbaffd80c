"""Re-chunking an edited file: only the runs around its changes, the base's chunks kept where the cuts meet.

Why: an edit of a big file must cost what changed, not the file's size.
Committing an overlay re-chunks from the start of the base chunk that holds
the first changed byte, until a new cut lands on a base chunk boundary beyond
which the base chunks are untouched; those are kept as they are, and chunking
resumes before the next change.  Because a FastCDC cut depends only on the
bytes of its own chunk, cuts that meet again stay aligned (the FastCDC paper,
Xia et al., USENIX ATC 2016, section 3).  Writes never shift later bytes, so
kept chunks keep their offsets.  A hole (never written) is laid as a
:func:`hole_ref`: chunking stops where it begins and starts afresh where it
ends, so a hole of any length costs the same.

A :class:`BaseEdit` is made for one commit, under the open file's lock, and
only reads the file's state: the patches it fills are what the commit lays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..chunker import make_chunker
from ..store import TO_END, ChunkRef, ChunkStore, ManifestEntry, Patch, hole_ref
from .intervals import IntervalSet

READ_BLOCK = 1024 * 1024
# A re-chunked run usually meets the base's cuts again within a chunk or two of the change: it reads
# this much first (at least what an eager chunker needs before its first cut: twice the largest chunk),
# and twice as much each time after, up to READ_BLOCK.
RECHUNK_FIRST_BLOCK = 128 * 1024


def base_entry(store: ChunkStore, file_id: bytes, offset: int) -> ManifestEntry | None:
    """The committed chunk of ``file_id`` covering ``offset``; None in a hole."""
    entries = store.manifest(file_id, offset, offset + 1)
    return entries[0] if entries else None


@dataclass
class BaseEdit:
    """One commit's view of an open file: its base (the committed manifest) and the changes over it."""

    store: ChunkStore
    file_id: bytes
    dirty: IntervalSet  # ranges whose bytes are in the staging file, not the base
    size: int  # the file's size now
    base_limit: int  # base bytes at or past this were truncated away
    committed: int  # the base's size
    read_merged: Callable[[int, int], bytes | memoryview]  # the file's bytes now: overlay, base and zeros

    def base_entry(self, offset: int) -> ManifestEntry | None:
        return base_entry(self.store, self.file_id, offset)

    def rechunk(self, patches: list[Patch], pinned: list[ChunkRef]) -> None:
        """Fill ``patches`` with re-chunked runs, reusing base chunks wherever cuts realign."""
        pos = self.restart_point(self.next_change(0))
        while pos is not None:
            pos = self._rechunk_run(pos, patches, pinned)

    def _rechunk_run(self, start: int, patches: list[Patch], refs: list[ChunkRef]) -> int | None:
        """Chunk from ``start`` until a reusable base chunk boundary or the end; return where to go on."""
        chunker = make_chunker(self.store.settings, eager=True)
        first = len(refs)
        cut = fed = start
        step = max(RECHUNK_FIRST_BLOCK, chunker.ready_at)
        while fed < self.size:
            hole_end = self.hole_end(fed)
            if hole_end is not None:  # what the chunker holds ends here: cut it, then the hole
                refs += self.store.put_chunks(chunker.finish())
                refs.append(hole_ref(hole_end - fed))
                cut = fed = hole_end
                chunker = make_chunker(self.store.settings, eager=True)
                resume = self.reusable_run_end(cut)
                if resume is not None:
                    patches.append(Patch(start, cut, refs[first:]))
                    return self.restart_point(self.next_change(resume))
                continue
            block = self.read_merged(fed, max(self.data_end(fed, min(fed + step, self.size)), fed + 1))
            fed += len(block)
            step = min(2 * step, READ_BLOCK)
            chunks = chunker.feed(block)
            taken, resume = 0, None
            while taken < len(chunks) and resume is None:  # realigned? then the rest is the base's already
                cut += len(chunks[taken])
                taken += 1
                resume = self.reusable_run_end(cut)
            refs += self.store.put_chunks(chunks[:taken])  # only what the patch needs is hashed and stored
            if resume is not None:
                patches.append(Patch(start, cut, refs[first:]))
                return self.restart_point(self.next_change(resume))
        refs += self.store.put_chunks(chunker.finish())
        patches.append(Patch(start, TO_END, refs[first:]))
        return None

    def hole_end(self, offset: int) -> int | None:
        """If ``offset`` lies in a hole (clean, and past the base limit or in a gap of the base), its end."""
        if offset >= self.size:
            return None
        dirty = self.dirty.first_from(offset)
        if dirty == offset:
            return None
        end = self.size if dirty is None else min(dirty, self.size)
        if offset < self.base_limit:
            if self.base_entry(offset) is not None:
                return None
            following = self.store.manifest(self.file_id, offset, min(end, self.base_limit))
            if following:
                end = following[0].offset  # the next base chunk ends the hole
        return end

    def data_end(self, offset: int, limit: int) -> int:
        """Where the data starting at ``offset`` (not in a hole) meets a hole, or ``limit``."""
        for lo, hi, dirty in self.dirty.split(offset, limit):
            if dirty:
                continue
            if lo >= self.base_limit:
                return lo
            pos, base_hi = lo, min(hi, self.base_limit)
            for entry in self.store.manifest(self.file_id, lo, base_hi):
                if entry.offset > pos:
                    return pos
                pos = entry.offset + entry.length
            if pos < base_hi:
                return pos
            if hi > self.base_limit:
                return self.base_limit
        return limit

    def next_change(self, offset: int) -> int | None:
        """The first offset >= ``offset`` whose byte differs from the base, or None."""
        candidates = [self.dirty.first_from(offset)]
        if self.base_limit < self.committed or self.size != self.committed:
            candidates.append(max(min(self.base_limit, self.size), offset))
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def restart_point(self, change: int | None) -> int | None:
        """Where re-chunking must begin so that ``change`` is covered: a base chunk start."""
        if change is None:
            return None
        if self.base_limit == 0:
            return 0
        # the last base chunk's end was cut by end-of-file or truncation: it is re-cut with what follows
        probe = min(change, self.base_limit - 1)
        entry = self.base_entry(probe)
        if entry is None and 0 < probe == change:
            entry = self.base_entry(change - 1)  # its end was cut by the hole ``change`` is in: re-cut too
        return entry.offset if entry is not None else min(change, self.base_limit)  # in a hole: any offset

    def reusable_run_end(self, cut: int) -> int | None:
        """If base chunks starting exactly at ``cut`` are unchanged, the end of that run."""
        if cut >= self.base_limit:
            return None
        limit = self.next_change(cut)
        stop = self.size if limit is None else limit
        end = None
        for entry in self.store.manifest(self.file_id, cut, stop):
            if entry.offset < cut:
                return None  # cut is not a base boundary
            if not self._reusable(entry, limit):
                break
            end = entry.offset + entry.length
        if end is None:
            return None
        return end

    def _reusable(self, entry: ManifestEntry, next_change: int | None) -> bool:
        entry_end = entry.offset + entry.length
        if next_change is not None and entry_end > next_change:
            return False
        if entry_end == self.committed and self.size != self.committed:
            return False  # cut by the old end of file, which moved
        return entry_end <= self.base_limit
