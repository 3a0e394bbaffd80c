"""Store file ids: what callers name files by, and their encoding as index keys."""

from __future__ import annotations

from ..errors import InvalidArgument

FileId = str | bytes
MAX_FILE_ID = 500  # LMDB keys are at most 511 bytes


def encode_file_id(file_id: FileId) -> bytes:
    if isinstance(file_id, str):
        key = b"s" + file_id.encode("utf-8")
    elif isinstance(file_id, (bytes, bytearray)):
        key = b"b" + bytes(file_id)
    else:
        raise InvalidArgument(f"file id must be str or bytes, not {type(file_id).__name__}")
    if len(key) > MAX_FILE_ID or len(key) == 1:
        raise InvalidArgument(f"file id must be 1 to {MAX_FILE_ID - 1} bytes long")
    return key


def decode_file_id(key: bytes) -> FileId:
    return key[1:].decode("utf-8") if key[:1] == b"s" else key[1:]


def key_prefix(prefix: FileId) -> bytes:
    """What the keys of the file ids starting with ``prefix`` start with."""
    if isinstance(prefix, str):
        return b"s" + prefix.encode("utf-8")
    if isinstance(prefix, (bytes, bytearray)):
        return b"b" + bytes(prefix)
    raise InvalidArgument(f"a file id prefix must be str or bytes, not {type(prefix).__name__}")
