"""Answering GET and HEAD: what to send (a Plan), and streaming it from a held FileVersion.

A download reads the file through ``ChunkStore.open_version``: the version
is held (its chunks pinned) until the last byte is sent, so a client gets
the bytes of the version whose ETag it was told, even if the file is
replaced or deleted meanwhile, and the bytes come in pieces of 1 MiB read
in worker threads, so one download holds about that much memory.

A damaged chunk never turns into wrong bytes.  The first piece is read
before the status line is sent, so a file whose damage lies in its first
MiB (most files, and every range that starts on the damage) is answered
500 with a one-line JSON body.  Past that point the status and the
``Content-Length`` are on the wire, and HTTP has no way left to say
"error": the connection is closed mid-body instead, which every client
reports as a truncated transfer (curl exits 18, httpx raises
RemoteProtocolError) rather than taking a short or wrong body for the file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from starlette.responses import JSONResponse, Response

from chunkfs.errors import ChunkCorruptError
from chunkfs.store import FileVersion

from .preconditions import range_applies, read_status
from .ranges import BadRange, ByteRange, Multipart, parse_range

log = logging.getLogger("upload_service")

READ_PIECE = 1024 * 1024
OCTETS = "application/octet-stream"


class StreamAborted(Exception):
    """A download was cut off after its headers were sent (a damaged chunk): the connection is closed."""


@dataclass
class Plan:
    """The answer to a GET or HEAD, before any byte of the file is read."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    ranges: list[ByteRange] = field(default_factory=list)
    multipart: Multipart | None = None
    message: str = ""  # the error line of a 416

    @property
    def sends_bytes(self) -> bool:
        return self.status in (200, 206)

    def bare_response(self) -> Response:
        """The answer without the file's bytes: HEAD, 304, 412, 416."""
        if self.message:
            return JSONResponse({"error": self.message}, self.status, headers=self.headers)
        return Response(status_code=self.status, headers=self.headers)

    def segments(self) -> list[bytes | ByteRange]:
        """The body in order: literal framing bytes and ranges of the file."""
        if self.multipart is None:
            return list(self.ranges)
        out: list[bytes | ByteRange] = []
        for head, r in zip(self.multipart.heads, self.ranges):
            out += [head, r, b"\r\n"]
        return out + [self.multipart.tail]


def plan_for(request_headers, size: int, etag: str) -> Plan:
    """Status and headers for a GET/HEAD of a file of ``size`` bytes whose ETag is ``etag``."""
    base = {"etag": etag, "accept-ranges": "bytes"}
    status = read_status(request_headers, etag)
    if status is not None:
        return Plan(status, {"etag": etag}, message="precondition failed" if status == 412 else "")
    try:
        ranges = parse_range(request_headers.get("range"), size) if range_applies(request_headers, etag) else None
    except BadRange as exc:
        return Plan(416, {**base, "content-range": f"bytes */{size}"}, message=str(exc))
    if ranges is None:
        return Plan(200, {**base, "content-type": OCTETS, "content-length": str(size)}, [ByteRange(0, size)])
    if len(ranges) == 1:
        r = ranges[0]
        return Plan(206, {**base, "content-type": OCTETS, "content-length": str(r.length),
                          "content-range": r.content_range(size)}, ranges)
    multipart = Multipart(ranges, size)
    return Plan(206, {**base, "content-type": multipart.content_type, "content-length": str(multipart.length)},
                ranges, multipart)


class VersionStream(Response):
    """Streams a Plan's bytes from a FileVersion, and closes the version whatever happens."""

    def __init__(self, version: FileVersion, plan: Plan, limiter: anyio.CapacityLimiter):
        self.version, self.plan, self.limiter = version, plan, limiter
        self.status_code = plan.status
        self.background = None
        self.init_headers(plan.headers)

    async def __call__(self, scope, receive, send) -> None:
        pieces = self._pieces()
        try:
            try:
                first = await self._until_first_read(pieces)
            except ChunkCorruptError:
                answer = JSONResponse({"error": damaged(self.version.file_id)}, 500)
                await answer(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:
                group.start_soon(self._cancel_on_disconnect, receive, group.cancel_scope)
                await self._send_all(first, pieces, send)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):  # also when the client went away
                await pieces.aclose()
                await anyio.to_thread.run_sync(self.version.close, limiter=self.limiter)

    async def _pieces(self) -> AsyncIterator[tuple[bool, bytes]]:
        """(read from the file?, bytes) in body order."""
        for segment in self.plan.segments():
            if isinstance(segment, bytes):
                yield False, segment
                continue
            for offset in range(segment.start, segment.end, READ_PIECE):
                n = min(READ_PIECE, segment.end - offset)
                view = await anyio.to_thread.run_sync(self.version.read, offset, n, limiter=self.limiter)
                yield True, bytes(view)

    @staticmethod
    async def _until_first_read(pieces) -> list[bytes]:
        out = []
        async for from_file, data in pieces:
            out.append(data)
            if from_file:
                break
        return out

    async def _send_all(self, first: list[bytes], pieces, send) -> None:
        sent = 0
        for data in first:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            sent += len(data)
        try:
            async for _, data in pieces:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent += len(data)
        except ChunkCorruptError:
            log.warning("download of %r cut off after %d bytes: the file is damaged", self.version.file_id, sent)
            raise StreamAborted(f"download of {self.version.file_id!r} cut off") from None
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _cancel_on_disconnect(receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def damaged(file_id: str) -> str:
    return f"file {file_id!r} is damaged on the server (a chunk failed verification); nothing was sent"


class QuietAbort(logging.Filter):
    """Keeps uvicorn's traceback out of the log for a download cut off on purpose (logged in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return not isinstance(exc, StreamAborted)
