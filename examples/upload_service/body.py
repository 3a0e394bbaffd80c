"""An HTTP request body as the binary file object ``ChunkStore.ingest`` reads, from a worker thread.

``ingest`` pulls its input with blocking ``read()`` calls, and it must run in a
worker thread so that the event loop keeps serving other requests; the body,
though, arrives on the event loop, one piece per ASGI ``receive``.  So
``read()``, running in the worker thread, asks the event loop for the next
piece (``anyio.from_thread.run``) and waits for it.  Nothing is queued ahead:
the body is pulled as fast as the store takes it, at most one ``read()``'s
worth (1 MiB, what ``ingest`` asks for, and one piece more) is held at a time, and while the
store is busy uvicorn stops reading the socket (its flow control), so a fast
client waits rather than filling memory.  The body is never held whole.

A body longer than the limit raises :class:`BodyTooLarge` from ``read()``, so
``ingest`` abandons the upload (releasing what it had stored) before it
commits anything; a client that goes away mid-body raises Starlette's
``ClientDisconnect`` the same way.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import anyio.from_thread

READ_SIZE = 1024 * 1024  # what ingest asks for per read (chunkfs.filestream.READ_BLOCK)


class BodyTooLarge(Exception):
    """The request body is longer than the service accepts."""

    def __init__(self, limit: int):
        super().__init__(f"the body is larger than the limit of {limit} bytes")
        self.limit = limit


class RequestBody(io.RawIOBase):
    """A read-only binary file over ``pieces`` (an ASGI body stream); read it from a worker thread only."""

    def __init__(self, pieces: AsyncIterator[bytes], limit: int):
        self._pieces = pieces
        self._pending = b""  # what the last read got beyond its size
        self._eof = False
        self.limit = limit
        self.received = 0  # body bytes taken from the client so far

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (READ_SIZE if negative), fewer only at the end of the body.

        One trip to the event loop gathers the pieces a read needs (the
        hand-over between threads costs more than the bytes); the bytes are
        joined once.
        """
        size = READ_SIZE if size is None or size < 0 else size
        parts, have = ([self._pending], len(self._pending)) if self._pending else ([], 0)
        self._pending = b""
        if have < size and not self._eof:
            pieces = anyio.from_thread.run(self._gather, size - have)
            got = sum(map(len, pieces))
            self.received += got
            if self.received > self.limit:
                raise BodyTooLarge(self.limit)
            parts += pieces
            have += got
        if have > size:
            last = parts[-1]
            keep = len(last) - (have - size)
            parts[-1], self._pending = last[:keep], last[keep:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    async def _gather(self, want: int) -> list[bytes]:
        """On the event loop: body pieces adding up to at least ``want`` bytes, or the rest of the body."""
        pieces, got = [], 0
        while got < want:
            try:
                piece = await self._pieces.__anext__()
            except StopAsyncIteration:
                self._eof = True
                break
            if piece:
                pieces.append(piece)
                got += len(piece)
        return pieces

    async def drain(self, most: int) -> bool:
        """Read and drop the rest of the body, at most ``most`` bytes; whether it ended.

        Answering before the body is read and then closing the connection
        with unread bytes in its buffer makes the kernel reset it, and the
        client may lose the answer with its send; a bounded drain avoids that
        for bodies a little over a limit.  Runs on the event loop.
        """
        dropped = 0
        async for piece in self._pieces:
            dropped += len(piece)
            if dropped > most:
                return False
        self._eof = True
        return True
