"""A reader of format-version-1 stores, for ``chunkfs upgrade`` only.

Everything here is a frozen fact about version 1: the record layouts, the
pack and record magics, the file-id encoding, the tombstone pack id.  They are
copied here, not imported, so that the live engine can change its own
layouts freely while old stores stay readable.  The reader only reads: it
opens the LMDB environment read-only and the pack files with ``O_RDONLY``,
so a version-1 store is left exactly as it was until the upgrade commits.

Version 1 layouts (all in one LMDB environment, ``STORE/meta``):

=========  =======================================  ============================================
database   key                                      value
=========  =======================================  ============================================
chunks     address (32, SHA-256)                    CHUNK: refcount, length, xxh3-128, pack, offset
files      file id (b"s" + UTF-8, or b"b" + bytes)  FILE: fkey, size, chunk count
manifests  fkey (u64 BE) + file offset (u64 BE)     MANIFEST: address, length
counters   name                                     u64 LE
=========  =======================================  ============================================

plus the filesystem's six databases, whose layouts did not change in
version 2.  A pack ``packs/<id:08x>.pack`` is PACK_MAGIC, then records of a
RECORD header (magic ``CK``, length, address) and the chunk bytes; a chunk
record's offset points at the bytes, just after its header.  Holes were
stored as runs of all-zero chunks; data an earlier ``fsck --repair`` found
lost is a chunk record whose pack is LOST_PACK (a tombstone).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

import lmdb

from ..errors import ChunkCorruptError, IndexCorruptError, SettingsError
from ._fileids import FileId

VERSION = 1
CHUNK = struct.Struct("<QI16sIQ")  # refcount, length, checksum, pack id, data offset
FILE = struct.Struct("<QQQ")  # fkey, logical size, number of chunks
MANIFEST = struct.Struct("<32sI")  # address, length
KEY64x2 = struct.Struct(">QQ")
U64 = struct.Struct("<Q")
PACK_MAGIC = b"CHUNKFS-PACK\x00\x00\x01\n"
RECORD = struct.Struct("<2sI32s")  # magic, length, address
RECORD_MAGIC = b"CK"
LOST_PACK = 0xFFFFFFFF
DATABASES = ("chunks", "files", "manifests", "packs", "pending", "counters",
             "inodes", "dirents", "dirorder", "xattrs", "symlinks", "orphans")
FS_DATABASES = ("inodes", "dirents", "dirorder", "xattrs", "symlinks", "orphans")
FS_COUNTERS = ("next_ino", "next_entry", "fs_inodes")  # the counters the filesystem owns


class V1File(NamedTuple):
    file_id: FileId
    fkey: int
    size: int
    chunks: int


class V1Entry(NamedTuple):
    """One manifest entry: ``length`` bytes at ``offset``; ``lost`` for a tombstone (no bytes)."""

    offset: int
    length: int
    address: bytes
    lost: bool


def read_raw_settings(store_dir: str) -> dict:
    """The settings file as JSON, whatever its version (read_settings refuses old ones)."""
    path = os.path.join(store_dir, "chunkfs.json")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: unreadable settings file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("format_version"), int):
        raise SettingsError(f"{path}: damaged settings file (format_version missing)")
    return raw


def decode_file_id(key: bytes) -> FileId:
    return key[1:].decode("utf-8") if key[:1] == b"s" else key[1:]


class V1Store:
    """Read-only access to a version-1 store's index and packs; use as a context manager."""

    def __init__(self, store_dir: str):
        self.path = store_dir
        meta = os.path.join(store_dir, "meta")
        if not os.path.exists(os.path.join(meta, "data.mdb")):
            raise IndexCorruptError(f"{meta}: the metadata index is missing")
        try:
            # lock=False: the upgrade holds the store's own lock, so nothing else writes
            self.env = lmdb.open(meta, readonly=True, lock=False, subdir=True, max_dbs=len(DATABASES) + 1,
                                 readahead=False)
            self.dbs = {name: self.env.open_db(name.encode(), create=False) for name in DATABASES}
        except lmdb.Error as exc:
            raise IndexCorruptError(f"{meta}: cannot open the version-1 index ({exc})") from None
        self.txn = self.env.begin(buffers=False)
        self._fds: dict[int, int] = {}

    def __enter__(self) -> "V1Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.txn.abort()
        self.env.close()

    def counter(self, name: str) -> int:
        raw = self.txn.get(name.encode(), db=self.dbs["counters"])
        return U64.unpack(raw)[0] if raw else 0

    def files(self) -> list[V1File]:
        with self.txn.cursor(db=self.dbs["files"]) as cur:
            return [V1File(decode_file_id(k), *FILE.unpack(v)) for k, v in cur]

    def entries(self, fkey: int) -> Iterator[V1Entry]:
        """A file's manifest in offset order, one entry at a time (a huge file is never listed whole)."""
        with self.txn.cursor(db=self.dbs["manifests"]) as cur:
            if not cur.set_range(KEY64x2.pack(fkey, 0)):
                return
            for key, value in cur:
                key_fkey, offset = KEY64x2.unpack(key)
                if key_fkey != fkey:
                    return
                address, length = MANIFEST.unpack(value)
                raw = self.txn.get(address, db=self.dbs["chunks"])
                if raw is None:
                    raise IndexCorruptError(f"{self.path}: manifest names chunk {address.hex()[:16]} "
                                            "that has no record")
                yield V1Entry(offset, length, address, CHUNK.unpack(raw)[3] == LOST_PACK)

    def table(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every record of one of the filesystem's databases, in key order."""
        with self.txn.cursor(db=self.dbs[name]) as cur:
            yield from cur

    def read_chunk(self, address: bytes, file_id: FileId) -> bytes:
        """A chunk's bytes, checked against its record header and its SHA-256 address."""
        _, length, _, pack, offset = CHUNK.unpack(self.txn.get(address, db=self.dbs["chunks"]))
        try:
            fd = self._fds.get(pack)
            if fd is None:
                path = os.path.join(self.path, "packs", f"{pack:08x}.pack")
                fd = self._fds[pack] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            raw = os.pread(fd, RECORD.size + length, offset - RECORD.size)
        except OSError as exc:
            raise ChunkCorruptError(address, f"pack {pack:08x} cannot be read ({exc.strerror}); "
                                    f"{self.path} is left as it was", file_id) from None
        header = RECORD.unpack_from(raw) if len(raw) >= RECORD.size else None
        data = raw[RECORD.size:]
        if header != (RECORD_MAGIC, length, address) or len(data) != length \
                or hashlib.sha256(data).digest() != address:
            raise ChunkCorruptError(address, f"its bytes in pack {pack:08x} do not match its SHA-256; "
                                    f"{self.path} is left as it was", file_id)
        return data
