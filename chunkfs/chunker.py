"""Streaming chunkers: feed byte buffers of any size, get finished chunks.

Boundaries never depend on how the input was split into buffers, so a file
written in 1 MiB FUSE requests chunks exactly like the same bytes ingested in
one call.  That property is what lets the filesystem chunk while a file streams
in, and re-chunk only part of an edited file.

FastCDC comes from the ``fastcdc`` package (its Cython build).  Its cut point
for a chunk starting at offset ``s`` depends only on bytes ``[s, s+max_size)``,
so of the chunks it reports for a buffer every one but the last is final, and
the last is final only when it reached ``max_size``; the last one is carried
over and re-scanned together with the next buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from fastcdc.fastcdc_cy import fastcdc_cy

from .settings import StoreSettings


class StreamChunker(Protocol):
    def feed(self, data: bytes | memoryview) -> list[memoryview]:
        """Add bytes; return the chunks that are now final, in order (read-only views: keep them or copy)."""

    def finish(self) -> list[memoryview]:
        """End of input: return what remains (at most one chunk for FastCDC)."""

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned in a chunk."""


class _BufferedChunker:
    """Holds the bytes fed but not yet cut; subclasses decide where to cut.

    The chunks a cut returns are views of one immutable buffer (the pieces
    fed since the last cut, joined once), not copies: a chunk is hashed,
    stored and dropped, and copying every byte into the buffer and again into
    chunk-sized ``bytes`` cost a stream's pump about 0.1 s per GiB, under the GIL.
    """

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def feed(self, data: bytes | memoryview) -> list[memoryview]:
        if len(data):
            # a bytes object cannot change under us; any other buffer might before the cut
            self._pieces.append(data if type(data) is bytes else bytes(data))
            self._pending += len(data)
        return self._cut(final=False) if self._ready() else []

    def finish(self) -> list[memoryview]:
        return self._cut(final=True)

    def peek(self) -> bytes:
        """The bytes fed but not yet cut (for read-your-writes)."""
        return b"".join(self._pieces)

    @property
    def ready_at(self) -> int:
        """Buffered bytes from which a feed may cut chunks; below it, feeding only buffers."""
        return 1

    def _ready(self) -> bool:
        return self._pending >= self.ready_at

    def _spans(self, view: memoryview, final: bool) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _cut(self, final: bool) -> list[memoryview]:
        if not self._pending:
            return []
        buf = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        view = memoryview(buf)
        spans = self._spans(view, final)
        chunks = [view[o : o + n] for o, n in spans]
        used = sum(n for _, n in spans)  # spans tile the buffer from its start
        rest = buf[used:]
        self._pieces = [rest] if rest else []
        self._pending = len(rest)
        return chunks


class FastCDCChunker(_BufferedChunker):
    # Scan at least this much at once: the per-call overhead of fastcdc is
    # noticeable on small FUSE-sized feeds.
    SCAN_THRESHOLD = 1024 * 1024

    def __init__(self, min_size: int, avg_size: int, max_size: int, eager: bool = False):
        super().__init__()
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        self.eager = eager

    @property
    def ready_at(self) -> int:
        """Cuts come once twice the largest chunk is buffered, or SCAN_THRESHOLD unless ``eager``."""
        return 2 * self.max_size if self.eager else max(self.SCAN_THRESHOLD, 2 * self.max_size)

    def _spans(self, view: memoryview, final: bool) -> list[tuple[int, int]]:
        spans = [(c.offset, c.length) for c in fastcdc_cy(view, self.min_size, self.avg_size, self.max_size)]
        if not final and spans[-1][1] < self.max_size:
            spans.pop()  # cut only by the end of the buffer: not final yet
        return spans


class FixedChunker(_BufferedChunker):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    @property
    def ready_at(self) -> int:
        return self.size

    def _spans(self, view: memoryview, final: bool) -> list[tuple[int, int]]:
        n = len(view) if final else len(view) - len(view) % self.size
        return [(i, min(self.size, n - i)) for i in range(0, n, self.size)]


def make_chunker(settings: StoreSettings, eager: bool = False) -> FastCDCChunker | FixedChunker:
    """The store's chunker.  ``eager``: cut as soon as a cut is final, not after a long scan.

    The cuts are the same either way (they never depend on how the input is
    fed); an eager chunker costs more calls on a long stream, and saves
    reading far ahead where only the first cuts matter (re-chunking a change).
    """
    if settings.chunker == "fixed":
        return FixedChunker(settings.avg_size)
    return FastCDCChunker(settings.min_size, settings.avg_size, settings.max_size, eager)


def chunk_stream(settings: StoreSettings, blocks) -> Iterator[memoryview]:
    """Chunk an iterable of byte buffers, yielding chunks as they become final."""
    chunker = make_chunker(settings)
    for block in blocks:
        yield from chunker.feed(block)
    yield from chunker.finish()
