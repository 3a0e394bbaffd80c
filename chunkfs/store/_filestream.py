"""File-like access to stored files: a seekable reader, and ingest input cut into blocks."""

from __future__ import annotations

import errno
import io
from collections.abc import Iterator
from collections.abc import Callable

from ..errors import InvalidArgument

READ_BLOCK = 1024 * 1024


class StoreFileReader(io.RawIOBase):
    """The raw, seekable reader behind ``ChunkStore.open_reader``: every read is a ``read_range``."""

    def __init__(self, read_range: Callable[[int, int], bytes], size: int):
        self._read_range, self._size = read_range, size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        data = self._read_range(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def blocks_of(data) -> Iterator[bytes | memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for i in range(0, len(view), READ_BLOCK):
            yield view[i : i + READ_BLOCK]
        return
    if not hasattr(data, "read"):
        raise InvalidArgument(f"ingest takes bytes or a binary file object, not {type(data).__name__}")
    while True:
        block = data.read(READ_BLOCK)
        if not block:
            return
        if isinstance(block, str):
            raise InvalidArgument("ingest needs a binary file object (opened with 'rb')")
        yield block
