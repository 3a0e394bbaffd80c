"""HTTP byte ranges (RFC 9110 section 14): parsing ``Range`` and laying out a multipart/byteranges body.

Ranges are in bytes only (a ``Range`` header in any other unit is ignored,
as the RFC asks).  A header that is malformed, names more than MAX_RANGES
ranges, or none that lies in the file is answered 416 with
``Content-Range: bytes */size``; overlapping or adjacent ranges are merged
(the RFC allows it), so a client never gets the same bytes twice in one
answer.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

MAX_RANGES = 16
_SPEC = re.compile(r"^(\d*)-(\d*)$")


class BadRange(Exception):
    """The Range header cannot be served (malformed, too many ranges, or none inside the file)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> list[ByteRange] | None:
    """The ranges a ``Range`` header asks for in a file of ``size`` bytes; None to send the whole file."""
    if header is None:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in specs.split(",")]
    if not specs.strip() or len(parts) > MAX_RANGES:
        raise BadRange(f"bad Range header {header[:100]!r}")
    ranges = []
    for part in parts:
        match = _SPEC.match(part)
        if not match or match.groups() == ("", ""):
            raise BadRange(f"bad range {part[:50]!r}")
        first, last = match.groups()
        if first == "":  # the last N bytes
            n = int(last)
            if n > 0 and size > 0:
                ranges.append(ByteRange(max(0, size - n), size))
            continue
        start = int(first)
        end = size if last == "" else int(last) + 1
        if end <= start:
            raise BadRange(f"bad range {part[:50]!r}: its end is before its start")
        if start < size:
            ranges.append(ByteRange(start, min(end, size)))
    if not ranges:
        raise BadRange(f"no range of {header[:100]!r} lies in the file ({size} bytes)")
    return _merged(ranges)


def _merged(ranges: list[ByteRange]) -> list[ByteRange]:
    out: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if out and r.start <= out[-1].end:
            out[-1] = ByteRange(out[-1].start, max(out[-1].end, r.end))
        else:
            out.append(r)
    return out


class Multipart:
    """The framing of a multipart/byteranges body: a header before each part and a closing line."""

    def __init__(self, ranges: list[ByteRange], size: int, part_type: str = "application/octet-stream"):
        self.boundary = secrets.token_hex(16)
        self.ranges = ranges
        self.heads = [(f"--{self.boundary}\r\nContent-Type: {part_type}\r\n"
                       f"Content-Range: {r.content_range(size)}\r\n\r\n").encode() for r in ranges]
        self.tail = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"

    @property
    def length(self) -> int:
        """The body's length: every part's header, bytes and CRLF, then the closing line."""
        return sum(len(h) + r.length + 2 for h, r in zip(self.heads, self.ranges)) + len(self.tail)
