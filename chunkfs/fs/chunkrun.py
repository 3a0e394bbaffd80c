"""Whole verified chunks around a short read, and the page-aligned part the kernel may cache.

A 4 KiB read of a big file fetches and verifies its whole chunk; FileData
returns those chunks with the bytes as a ChunkRun, and the FUSE adapter's
read-around (readaround.py) pushes the run's whole pages into the kernel's
page cache.  Plain arithmetic, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ChunkRun:
    """Whole verified chunks of inode ``ino``'s committed contents, from ``start``, and its size then."""

    ino: int
    start: int
    chunks: list[bytes | memoryview]  # views into the buffers they were read into (no copy)
    file_size: int

    def slice(self, lo: int, hi: int) -> bytes:
        out, pos = [], self.start
        for data in self.chunks:
            if pos < hi and pos + len(data) > lo:
                out.append(memoryview(data)[max(lo - pos, 0) : min(hi - pos, len(data))])
            pos += len(data)
        return bytes(out[0]) if len(out) == 1 else b"".join(out)

    def pages(self, page: int, skip_lo: int, skip_hi: int) -> tuple[int, bytes | memoryview] | None:
        """(offset, bytes) of the whole pages in the run, ending at EOF or a page boundary.

        None if they are no more than the pages of ``[skip_lo, skip_hi)``
        (the read that fetched the run, which the kernel caches anyway).  A
        run of one chunk (the usual case) gives a view into it, not a copy.
        """
        end = min(self.start + sum(map(len, self.chunks)), self.file_size)
        lo = -(-self.start // page) * page
        hi = end if end == self.file_size else end // page * page
        if hi <= lo or (lo >= skip_lo // page * page and hi <= -(-skip_hi // page) * page):
            return None
        if len(self.chunks) == 1:
            return lo, memoryview(self.chunks[0])[lo - self.start : hi - self.start]
        return lo, self.slice(lo, hi)
