"""Chunk bytes in append-only pack files.

Why packs and not a file per chunk: the default average chunk is small
(tens of KiB) and small files are one chunk each, so a file per chunk would
cost a 4 KiB-rounded inode and a directory entry per chunk: measured on 10,000
files of 1-8 KiB that is about 1.4x their size on disk before any metadata.
Appending to a pack costs one ``pwritev`` per batch of chunks and packs the bytes tightly.

A pack is ``packs/<id:08x>.pack``: a 16-byte header, then records, each a
25-byte record header and the chunk bytes.  The header says what follows
(magic ``CK``, codec, dictionary, stored and raw length), which chunk it
is (the chunk id, so a read that lands on the wrong record is caught) and
its xxh3-64 checksum, so a read is verified from the bytes it fetches
anyway.  Records are self-describing: ``fsck`` walks a pack without the
index, and the address of any chunk is the SHA-256 of its bytes.  The
index (not this module) decides which records are live; space of dead
records comes back when garbage collection copies a pack's live records
forward and removes the pack.

This module knows the pack format; where the bytes live is a backend's
business (_backend.py: the interface; _local_backend.py: files on a disk),
so nothing here opens a file.  Only the store calls this module.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from ..hashing import checksum_of

from ._backend import REMOVED_PACK_GRACE, PackBackend

PACK_MAGIC = b"CHUNKFS-PACK\x00\x00\x02\n"
assert len(PACK_MAGIC) == 16
# magic, codec, dictionary id, stored length (the bytes that follow), raw length, chunk id, xxh3-64 of the raw bytes
RECORD = struct.Struct("<2sBHIII8s")
RECORD_MAGIC = b"CK"
CODEC_RAW = 0  # the bytes are the chunk
CODEC_ZSTD = 1  # a zstd frame of the chunk, with the store dictionary the header names (0: none)
HEADER_SIZE = len(PACK_MAGIC)
PACK_TARGET_SIZE = 64 * 1024 * 1024
MAX_PACK_SIZE = 0xFFFFFFFF  # data offsets in chunk records are u32
WRITEBACK_STEP = 8 * 1024 * 1024  # start writeback of every this many appended bytes


class RecordHeader(NamedTuple):
    magic: bytes
    codec: int
    dictionary: int
    stored: int
    raw: int
    chunk: int
    checksum: bytes

    @classmethod
    def parse(cls, raw: bytes | memoryview) -> "RecordHeader | None":
        """The header in ``raw``; None if it is short."""
        if len(raw) < RECORD.size:
            return None
        return cls._make(RECORD.unpack_from(raw))

    @classmethod
    def of(cls, chunk: int, data: bytes | memoryview) -> "RecordHeader":
        """The header of a raw record of ``data`` for ``chunk``."""
        return cls(RECORD_MAGIC, CODEC_RAW, 0, len(data), len(data), chunk, checksum_of(data))

    @property
    def compressed(self) -> bool:
        return self.codec != CODEC_RAW

    def pack(self) -> bytes:
        return RECORD.pack(*self)

    def fault(self, chunk: int, length: int) -> str | None:
        """What is wrong with this header as the one of ``chunk`` with ``length`` stored bytes; None if nothing."""
        if self.magic != RECORD_MAGIC:
            return "no record header there"
        if self.chunk != chunk:
            return f"the record there is chunk id {self.chunk}'s (a misdirected read)"
        if self.stored != length:
            return f"its record header says {self.stored} bytes, the index {length}"
        if self.codec == CODEC_RAW and not self.dictionary:
            if self.raw != length:
                return f"its record header says {self.raw} raw bytes for {length} stored ones"
            return None
        if self.codec != CODEC_ZSTD:
            return f"unknown codec {self.codec} (dictionary {self.dictionary})"
        return None


_HEAD = struct.Struct("<2sBHIII")  # a record header but its checksum
CHECKSUM_AT = _HEAD.size
_raw_head = functools.partial(_HEAD.pack, RECORD_MAGIC, CODEC_RAW, 0)  # (stored, raw, chunk): every read checks one


def header_is(raw: bytes, chunk: int, length: int) -> bool:
    """Whether ``raw`` (a record header) is the one of a raw record of ``chunk`` holding ``length`` bytes.

    The fast test of the long-read path, on the header bytes as read; the
    checksum is compared apart.  :meth:`RecordHeader.fault` says what is wrong.
    """
    return raw[:CHECKSUM_AT] == _raw_head(length, length, chunk)


class Location(NamedTuple):
    """Where a record's chunk bytes lie (a named tuple: one is made per chunk looked up)."""

    pack: int
    offset: int  # of the chunk bytes, just after the record header
    length: int  # stored bytes

    @property
    def record_offset(self) -> int:
        return self.offset - RECORD.size

    @property
    def record_size(self) -> int:
        return RECORD.size + self.length


def record_size(length: int) -> int:
    return RECORD.size + length


class PackFiles:
    """Append, read, sync, truncate and remove packs, in a :class:`PackBackend`.

    Appends go to one active pack at a time, under a lock; reads go
    straight to the backend and may run from any thread.  A pack stops
    being active when it is full or retired, and is then sealed.
    """

    def __init__(self, backend: PackBackend, readonly: bool = False):
        self.backend = backend
        self.readonly = readonly
        self._lock = threading.Lock()
        self._active: int | None = None
        self._end = 0
        self._written_back = 0  # active pack offset up to which writeback was started
        self._unsynced: set[int] = set()
        # (pack, offset): the active pack's bytes below offset survive power loss, flushed to the medium
        # by sync(), or (_covered only) also written into the index by the sync log (_synclog.py)
        self._flushed: tuple[int, int] | None = None
        self._covered: tuple[int, int] | None = None

    def existing(self) -> list[int]:
        """Pack ids present in the backend (packs are few)."""
        return self.backend.list()

    # -- writing ------------------------------------------------------------

    @property
    def active(self) -> int | None:
        return self._active

    @property
    def active_end(self) -> int:
        return self._end

    def needs_roll(self, nbytes: int = 0) -> bool:
        """Whether the next append (of ``nbytes`` of records) needs a new pack."""
        return self._active is None or self._end >= PACK_TARGET_SIZE or self._end + nbytes > MAX_PACK_SIZE

    def create(self, pack: int) -> int:
        """Give ``pack`` a file holding at least its header; return the file's size.

        The store calls this inside the transaction that registers a new pack,
        before it commits (blob before index): a crash in between leaves a
        pack no record names, which recovery removes, never a record naming a
        pack that has no header.  Calling it again is harmless.
        """
        with self._lock:
            size = self.backend.create(pack)
            if size == 0:
                self.backend.write(pack, 0, [PACK_MAGIC])
                size = HEADER_SIZE
            self._unsynced.add(pack)
            return size

    def start(self, pack: int) -> None:
        """Make ``pack`` the active pack, creating it if it does not exist; seal the one before."""
        size = self.create(pack)
        with self._lock:
            if self._active is not None and self._active != pack:
                self.backend.seal(self._active)
            self._active, self._end = pack, size
            self._written_back = size

    def can_resume(self, pack: int) -> bool:
        """Whether appending to ``pack`` may go on after a restart (not once it was sealed)."""
        return not self.backend.sealed(pack)

    def retire_active(self) -> None:
        """Stop appending to the active pack and seal it; the next append needs :meth:`start`."""
        with self._lock:
            if self._active is not None:
                self.backend.seal(self._active)
            self._active = None

    def append(self, chunk: int, data: bytes | memoryview, header: "RecordHeader | None" = None) -> Location:
        return self.append_many([(chunk, data) if header is None else (chunk, data, header)])[0]

    def append_many(self, records: Sequence[tuple[int, bytes | memoryview] | tuple[int, bytes | memoryview, RecordHeader]]
                    ) -> list[Location]:
        """Append ``(chunk id, data)`` records with as few writes as possible and no copying of the data.

        A record may come as ``(chunk id, stored bytes, header)``: a compressed
        one (its header made by the caller), or one gc copies as it is.

        All or nothing for the caller: after a failure the pack's end does
        not move, so whatever part did reach the file lies beyond it and is
        overwritten by the next append (and beyond the indexed end anyway).
        """
        with self._lock:
            if self._active is None:
                raise RuntimeError("no active pack")
            offset = self._end
            buffers: list[bytes | memoryview] = []
            locations = []
            for record in records:
                data = record[1]
                header = record[2] if len(record) > 2 else RecordHeader.of(record[0], data)
                buffers += (header.pack(), data)
                locations.append(Location(self._active, offset + RECORD.size, len(data)))
                offset += RECORD.size + len(data)
            if offset > MAX_PACK_SIZE:
                raise RuntimeError(f"pack {self._active:08x} would pass {MAX_PACK_SIZE} bytes")
            self.backend.write(self._active, self._end, buffers)
            self._end = offset
            self._unsynced.add(self._active)
            self._start_writeback()
            return locations

    def _start_writeback(self) -> None:
        """Let the disk take appended bytes while the writer goes on (the fsync then waits less).

        Only starts the IO (it does not wait, and does not make anything
        durable: ``sync`` still does that).
        """
        if self._end - self._written_back < WRITEBACK_STEP:
            return
        start = min(self._written_back, self._end)
        self.backend.writeback(self._active, start, self._end - start)
        self._written_back = self._end

    def sync(self) -> None:
        """Make every append so far durable (called before an index sync)."""
        with self._lock:
            pending, self._unsynced = self._unsynced, set()
            active, end = self._active, self._end
        if pending:
            try:
                self.backend.sync(pending)
            except BaseException:
                with self._lock:
                    self._unsynced |= pending  # not durable: the next sync tries again
                raise
        with self._lock:
            if active is not None and active == self._active:  # everything of it below ``end`` is durable now
                self._flushed = (active, end)
                if self._covered is None or self._covered[0] != active or self._covered[1] < end:
                    self._covered = (active, end)
        self.reap()

    def unsynced_tail(self, most: int, most_since_flush: int) -> tuple[int, int, int] | None:
        """``(pack, start, end)``: the active pack's bytes not yet durable, if they are all there are.

        None when a sync must flush the packs: bytes of another pack are not
        durable, the active pack's durable end is not known (it is new or was
        just resumed: its first sync flushes it), more than ``most`` bytes
        would have to be logged, or more than ``most_since_flush`` since the
        last flush.  The caller holds the store's lock, so no append moves the end meanwhile.
        """
        with self._lock:
            active, covered, flushed = self._active, self._covered, self._flushed
            if active is None or covered is None or flushed is None or covered[0] != active \
                    or flushed[0] != active or self._unsynced - {active}:
                return None
            if self._end - covered[1] > most or self._end - flushed[1] > most_since_flush:
                return None
            return active, covered[1], self._end

    def note_logged(self, pack: int, end: int) -> None:
        """The bytes of ``pack`` below ``end`` were written into the index, which was flushed."""
        with self._lock:
            if self._covered is not None and self._covered[0] == pack and self._covered[1] < end:
                self._covered = (pack, end)

    # -- reading ------------------------------------------------------------

    def read(self, loc: Location) -> bytes:
        """The bytes at ``loc`` (no header); short if the pack is truncated, PackMissingError if gone."""
        return self.backend.read(loc.pack, loc.offset, loc.length)

    def read_record(self, loc: Location) -> tuple[RecordHeader | None, memoryview]:
        """The record at ``loc``, header and bytes in one read; the bytes are short if the pack is.

        The bytes are a view into the one buffer read: copying a chunk out of
        it cost more than its pread (a 4 KiB random read: 9.0 against 7.1 us).
        """
        raw = self.read_record_bytes(loc)
        return RecordHeader.parse(raw), memoryview(raw)[RECORD.size:]

    def read_record_bytes(self, loc: Location) -> bytes:
        """The record at ``loc``, header and chunk bytes as they lie (short if the pack is)."""
        return self.backend.read(loc.pack, loc.record_offset, RECORD.size + loc.length)

    def read_run(self, locs: Sequence[Location], into: Sequence[memoryview], nowait: bool = False) -> bytes | None:
        """Read records that lie back to back in one pack, each chunk into its buffer, with one ``preadv``.

        The record headers land in a scratch buffer, returned (RECORD.size
        bytes each, in order), so the caller verifies every chunk against its
        own header (:func:`header_is`, then the checksum).  At most
        IOV_BATCH - 1 records.  None if the pack ends early (truncated: the
        caller reads the chunks one by one to find out which); PackMissingError
        if it is gone.  With ``nowait``, only bytes already in memory (the
        page cache): WouldBlock if any would have to come from the medium.
        """
        size = RECORD.size
        scratch = memoryview(bytearray(size * len(locs)))
        iov: list[memoryview] = []
        for n, view in enumerate(into[: len(locs)]):
            iov += (scratch[n * size : (n + 1) * size], view)
        want = sum(map(len, iov))
        if self.backend.readv(locs[0].pack, locs[0].record_offset, iov, nowait) != want:
            return None
        return bytes(scratch)

    def read_record_header(self, loc: Location) -> RecordHeader | None:
        """The header of the record at ``loc``; None if the pack ends inside it."""
        return RecordHeader.parse(self.read_record_header_bytes(loc))

    def read_record_header_bytes(self, loc: Location) -> bytes:
        return self.backend.read(loc.pack, loc.record_offset, RECORD.size)

    def write_record_header(self, loc: Location, header: RecordHeader) -> None:
        """Rewrite the header of the record at ``loc`` (fsck --repair, for a damaged one), durably."""
        self.backend.patch(loc.pack, loc.record_offset, header.pack())

    def size(self, pack: int) -> int:
        return self.backend.size(pack)

    def usage(self, pack: int) -> tuple[int, int]:
        """(length, bytes the medium holds for it) of a pack: the second is less where dead records were punched."""
        return self.backend.usage(pack)

    def scan(self, pack: int, start: int = HEADER_SIZE) -> Iterator[tuple[Location, RecordHeader]]:
        """Yield (location, header) of every well-formed record from ``start``.

        Stops at the first malformed or truncated record header: what follows
        cannot be trusted to be aligned on record boundaries.
        """
        size = self.backend.size(pack)
        offset = start
        while offset + RECORD.size <= size:
            header = RecordHeader.parse(self.backend.read(pack, offset, RECORD.size))
            if header is None or header.magic != RECORD_MAGIC or offset + RECORD.size + header.stored > size:
                return
            yield Location(pack, offset + RECORD.size, header.stored), header
            offset += RECORD.size + header.stored

    # -- repair and removal -------------------------------------------------

    def truncate(self, pack: int, end: int) -> None:
        self.backend.truncate(pack, end)
        if pack == self._active:
            self._end = end
            self._flushed = self._covered = None  # the next sync flushes it again

    def punch(self, loc: Location) -> None:
        """Give the space of a dead record's bytes back to the medium, at once, where it can.

        Only the chunk bytes are punched; the record header stays, so the
        pack can still be walked record by record.  A medium that cannot
        punch simply keeps the bytes until gc.
        """
        self.backend.punch(loc.pack, loc.offset, loc.length)

    def remove(self, pack: int) -> None:
        """Remove a pack; reads already on their way still get its bytes for a grace period.

        Background gc removes packs while the filesystem serves reads, which
        run without the store's lock: a read may have looked up a chunk's old
        location just before gc's commit moved it.  The backend keeps the
        pack readable for ``REMOVED_PACK_GRACE`` seconds (see
        :meth:`PackBackend.remove`) so that read finishes with the right bytes.
        """
        with self._lock:
            if pack == self._active:
                self._active = None
            self._unsynced.discard(pack)
        self.backend.remove(pack)
        self.reap()

    def reap(self, grace: float = REMOVED_PACK_GRACE) -> None:
        """Let the backend free packs removed more than ``grace`` seconds ago."""
        self.backend.reap(grace)

    def disk_bytes(self) -> int:
        return self.backend.disk_bytes()

    def close(self) -> None:
        with self._lock:
            self._active = None
        self.backend.close()
