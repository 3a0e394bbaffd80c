"""Per-chunk zstd compression, with a dictionary trained on the store's own data.

Why per chunk: a record must be readable alone (a 4 KiB random read fetches
one chunk), and dedup works on raw bytes, so each new chunk is compressed by
itself after its address (SHA-256 of the raw bytes) is known.  Small chunks
compress badly alone; a dictionary trained on a sample of the store's first
chunks gives each one the context of its neighbours.

A record says how it is stored (codec, dictionary id) in its header; its
xxh3 is of the raw bytes, so every read is verified after decompression.
A chunk is kept raw when compression saves too little: a chunk of 16 KiB
or more first has a 4 KiB sample compressed at zstd level 1, and if that saves
under 3 % the chunk is not compressed at all (incompressible data costs a few
microseconds per chunk).  A chunk whose compressed form saves under 3 % is
stored raw.

Dictionaries are files ``dictionaries/<id:04x>.zdict`` in the store directory,
written durably and published to the pack backend (an object store uploads
them) before any record names them, and never deleted (a record may name one
for as long as the store lives).

Policy (docs/store-format.md, "The store dictionary"): while a store has no
dictionary, the first ``TRAIN_SAMPLE_BYTES`` of new chunks that compress (up
to ``SAMPLE_CHUNK`` bytes of each; ``BEHIND_SAMPLE_BYTES`` of the records a pass
of compression behind the writers compresses) are kept as a sample; once it is
full a dictionary of about 1/28 of it (at most ``DICT_SIZE``) is trained in a background thread and kept only if
it shrinks the sample's last quarter (held out of training) by at least
``DICT_MIN_GAIN`` more than compression without it.  Retraining works the
same way once a dictionary is in use: after ``RETRAIN_AFTER`` more bytes of
new chunks that compress, a sample of the chunks that follow is taken, a
candidate trained on three quarters of it, and the candidate becomes the
store's dictionary (a new id; the old one stays for the records that name
it) only if it compresses the held-out quarter, chunks as recent as the
candidate's own, at least ``DICT_MIN_GAIN`` smaller than the dictionary in
use.  An attempt that does not pay doubles the wait before the next (up to
``RETRAIN_AFTER_MAX``); one that pays starts it again from ``RETRAIN_AFTER``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import zstandard

from ..errors import InvalidArgument
from ..settings import DEFAULT_LEVEL
from ..hashing import checksum_of
from ..pools import LazyPool
from ._packs import CODEC_RAW, CODEC_ZSTD, RECORD_MAGIC, RecordHeader

log = logging.getLogger("chunkfs.store")

PROBE_FROM = 16 * 1024  # chunks this big get a sample probe before a full compression
PROBE_SIZE = 4 * 1024
SAMPLE_AFTER, SAMPLE_EVERY = 4, 8  # behind the writers: probe one chunk in 8 after 4 hopeless in a row
# Level 1, not a faster negative level: those store literals without entropy coding, so they call data whose
# only redundancy is its alphabet (hex, base64, random words) incompressible, which level 3 halves.
PROBE_LEVEL = 1
MIN_SAVING = 1 / 32  # keep raw below ~3 % saved
DICT_DIR = "dictionaries"
DICT_SIZE = 256 * 1024
MIN_DICT_SIZE = 16 * 1024
TRAIN_SAMPLE_BYTES = 4 * 1024 * 1024  # compressing inline: the sooner a dictionary, the more chunks get it
BEHIND_SAMPLE_BYTES = 16 * 1024 * 1024  # behind the writers the pass waits for it: a bigger sample pays
SAMPLE_CHUNK = 16 * 1024
MIN_SAMPLES = 64
DICT_MIN_GAIN = 0.05
RETRAIN_AFTER = 64 * 1024 * 1024  # bytes of new chunks that compress before the next training attempt
RETRAIN_AFTER_MAX = 4 * 1024 * 1024 * 1024  # the longest wait, after attempts that did not pay
# The level of compression behind the writers (_recompress.py): off the write path, where the ratio is worth
# more CPU than a writer could spend (docs/benchmarks.md, "Compression (issue 15)", has the measurements).
BACKGROUND_LEVEL = 6


class DecodeError(Exception):
    """A compressed record that does not give its chunk back (the reason, for a ChunkCorruptError)."""


def _worth_it(raw_len: int, stored_len: int) -> bool:
    return stored_len < raw_len - max(raw_len * MIN_SAVING, 16)


class Dictionaries:
    """The store's dictionaries by id, loaded on first use and kept (they are few and never change)."""

    def __init__(self, store_path: str, publish: Callable[[Sequence[str]], None] | None = None):
        self.dir = os.path.join(store_path, DICT_DIR)
        self.publish = publish or (lambda names: None)  # the pack backend's (PackBackend.publish)
        self._loaded: dict[int, zstandard.ZstdCompressionDict] = {}
        self._lock = threading.Lock()

    def ids(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-6], 16) for n in names if n.endswith(".zdict") and len(n) == 10)

    def path(self, dict_id: int) -> str:
        return os.path.join(self.dir, f"{dict_id:04x}.zdict")

    @staticmethod
    def name(dict_id: int) -> str:
        """The dictionary's path relative to the store directory (what the backend publishes)."""
        return f"{DICT_DIR}/{dict_id:04x}.zdict"

    def names(self) -> list[str]:
        return [self.name(dict_id) for dict_id in self.ids()]

    def get(self, dict_id: int) -> zstandard.ZstdCompressionDict | None:
        """Dictionary ``dict_id``; None if the store does not have it."""
        found = self._loaded.get(dict_id)
        if found is not None:
            return found
        try:
            with open(self.path(dict_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        found = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
        with self._lock:
            self._loaded.setdefault(dict_id, found)
        return found

    def add(self, data: bytes) -> int:
        """Keep a new dictionary durably and published (before any record names it); its id (1, 2, ...).

        If the backend cannot publish it (an object store that is away), the
        file goes again and the error is raised: no record names it yet, and a
        store restored from the bucket alone must have every dictionary a
        record names.
        """
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        dict_id = max(self.ids(), default=0) + 1
        if dict_id > 0xFFFF:
            raise InvalidArgument("no dictionary id is left")
        tmp = self.path(dict_id) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path(dict_id))
        self._sync_dir()
        try:
            self.publish([self.name(dict_id)])
        except BaseException:
            os.unlink(self.path(dict_id))
            self._sync_dir()
            raise
        return dict_id

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Codec:
    """Compresses new chunks (thread-safe: one zstd context per thread) and decodes records."""

    def __init__(self, dictionaries: Dictionaries, codec: str = "none", level: int = DEFAULT_LEVEL,
                 use_dictionary: bool = True, behind: bool = False):
        self.dictionaries = dictionaries
        self.codec, self.level = codec, level
        self.behind = behind  # writers store compressible chunks raw; _recompress.py compresses them later
        self.use_dictionary = use_dictionary
        ids = dictionaries.ids()
        self.dict_id = ids[-1] if ids and use_dictionary else 0
        self._local = threading.local()
        self._samples: list[bytes] = []
        self._sampled = 0
        self._seen = 0  # bytes of new chunks that compressed, since the store was opened
        self._interval = RETRAIN_AFTER  # how many more of them before the next attempt
        self._next_try = self._interval if self.dict_id else 0  # sample from here on
        self._training = None  # the future of a training under way
        self._sample_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.codec == "zstd"

    # -- writing ------------------------------------------------------------------------

    def _compressor(self, dict_id: int) -> zstandard.ZstdCompressor:
        key = (self.level, dict_id)
        cache = getattr(self._local, "compressors", None)
        if cache is None:
            cache = self._local.compressors = {}
        found = cache.get(key)
        if found is None:
            cache.clear()  # a retired dictionary's (or level's) context is not needed again
            zdict = self.dictionaries.get(dict_id) if dict_id else None
            # the content size lets zstd size its tables to the chunk (about 30 % faster on 12 KiB chunks)
            found = cache[key] = zstandard.ZstdCompressor(level=self.level, dict_data=zdict,
                                                          write_content_size=True, write_checksum=False,
                                                          write_dict_id=False)
        return found

    def encode(self, data: bytes | memoryview) -> tuple[int, int, bytes | memoryview]:
        """(codec, dictionary id, stored bytes) for a new chunk: raw when compression saves too little."""
        if self.hopeless(data):
            return CODEC_RAW, 0, data
        return self.compress(data)

    def hopeless(self, data: bytes | memoryview) -> bool:
        """Whether a chunk is stored raw without trying: compression off, a tiny chunk, or one whose
        probe (4 KiB from its middle at zstd level 1, about 3.5 us) saves too little."""
        n = len(data)
        if not self.enabled or n < 64:
            return True
        if n < PROBE_FROM:
            return False
        mid = (n - PROBE_SIZE) // 2
        return not _worth_it(PROBE_SIZE, len(self._probe().compress(data[mid : mid + PROBE_SIZE])))

    def compress(self, data: bytes | memoryview) -> tuple[int, int, bytes | memoryview]:
        """:meth:`encode` past the probe: the chunk compressed, or raw if that saves too little."""
        dict_id = self.dict_id
        packed = self._compressor(dict_id).compress(data)
        if not _worth_it(len(data), len(packed)):
            return CODEC_RAW, 0, data
        return CODEC_ZSTD, dict_id, packed

    def recompress(self, data: bytes | memoryview) -> tuple[int, int, bytes | memoryview]:
        """(codec, dictionary id, stored bytes) of a chunk at ``BACKGROUND_LEVEL`` with the current
        dictionary: for compression behind the writers, which is off the write path."""
        dict_id = self.dict_id
        key = (BACKGROUND_LEVEL, dict_id)
        found = getattr(self._local, "background", None)
        if found is None or found[0] != key:
            zdict = self.dictionaries.get(dict_id) if dict_id else None
            found = self._local.background = (key, zstandard.ZstdCompressor(
                level=BACKGROUND_LEVEL, dict_data=zdict, write_content_size=True, write_checksum=False,
                write_dict_id=False))
        packed = found[1].compress(data)
        if not _worth_it(len(data), len(packed)):
            return CODEC_RAW, 0, data
        return CODEC_ZSTD, dict_id, packed

    def _probe(self) -> zstandard.ZstdCompressor:
        found = getattr(self._local, "probe", None)
        if found is None:
            found = self._local.probe = zstandard.ZstdCompressor(level=PROBE_LEVEL, write_content_size=False,
                                                                 write_checksum=False)
        return found

    def observe(self, chunks: list[bytes | memoryview]) -> None:
        """See new chunks that compressed (from any writer); train a dictionary when it is time.

        Only chunks that compressed are sampled: a store of incompressible data
        never spends CPU on training a dictionary that could not help.
        """
        if not self.enabled or not self.use_dictionary or not chunks:
            return
        with self._sample_lock:
            self._observe(chunks)

    def _observe(self, chunks: list[bytes | memoryview]) -> None:
        for data in chunks:
            self._seen += len(data)
            if self._seen < self._next_try or self._sampled >= self._sample_bytes():
                continue
            piece = bytes(data[:SAMPLE_CHUNK])
            self._samples.append(piece)
            self._sampled += len(piece)
        if self._training is not None and self._training.done():
            self.wait()  # a training that ended: its failure is logged, and the next one may start
        if self._sampled >= self._sample_bytes() and len(self._samples) >= MIN_SAMPLES and self._training is None:
            samples, self._samples, self._sampled = self._samples, [], 0
            self._next_try = float("inf")  # set again when this attempt is over
            self._training = _TRAINER.submit(self._train, samples, self.dict_id)  # a writer never waits for it

    def _sample_bytes(self) -> int:
        return BEHIND_SAMPLE_BYTES if self.behind else TRAIN_SAMPLE_BYTES

    def wait(self) -> None:
        """Let a dictionary being trained be done (the store waits for it when it closes)."""
        training = self._training
        if training is not None:
            self._training = None
            try:
                training.result()
            except Exception as exc:  # noqa: BLE001 (a store without a dictionary still works)
                log.warning("could not keep a compression dictionary: %s", exc)

    def _train(self, samples: list[bytes], current: int) -> None:
        """Train a dictionary on ``samples`` and keep it if it beats ``current`` (0: none) on the held-out part."""
        paid = False
        try:
            paid = self._try_dictionary(samples, current)
        finally:
            with self._sample_lock:
                self._interval = RETRAIN_AFTER if paid else min(self._interval * 2, RETRAIN_AFTER_MAX)
                if not paid and not current and not self.dict_id:
                    self._interval = RETRAIN_AFTER  # no dictionary yet: the first is tried at a steady pace
                self._next_try = self._seen + self._interval

    def _try_dictionary(self, samples: list[bytes], current: int) -> bool:
        cut = len(samples) * 3 // 4
        train, held = samples[:cut], samples[cut:]
        try:
            # about 1/28 of what it is trained on (112 KiB from 4 MiB of samples, the cap from 16 MiB): a
            # dictionary much bigger than that is fitted to its samples, not to the data
            size = min(DICT_SIZE, max(MIN_DICT_SIZE, sum(map(len, train)) // 28))
            zdict = zstandard.train_dictionary(size, train, level=self.level)
        except zstandard.ZstdError as exc:
            log.info("no compression dictionary: training failed (%s)", exc)
            return False
        before = held_out_size(held, self.level, self.dictionaries.get(current) if current else None)
        using = held_out_size(held, self.level, zdict)
        against = f"dictionary {current}" if current else "no dictionary"
        if using > before * (1 - DICT_MIN_GAIN):
            log.info("compression dictionary not kept: on recent chunks it gives %d bytes, %s %d",
                     using, against, before)
            return False
        self.dict_id = self.dictionaries.add(zdict.as_bytes())
        log.info("compression dictionary %d trained: recent chunks shrink to %d bytes, from %d with %s",
                 self.dict_id, using, before, against)
        return True

    # -- reading ------------------------------------------------------------------------

    def decode(self, codec: int, dict_id: int, stored: bytes | memoryview, raw_len: int) -> bytes | memoryview:
        """The raw bytes of a record; DecodeError says why they cannot be had."""
        if codec == CODEC_RAW:
            return stored
        if codec != CODEC_ZSTD:
            raise DecodeError(f"unknown codec {codec}")
        return self._decompress(dict_id, stored, raw_len)

    def decode_into(self, dict_id: int, stored: bytes | memoryview, into: memoryview) -> None:
        """Decompress a zstd record into ``into`` (exactly its raw length)."""
        into[:] = self._decompress(dict_id, stored, len(into))

    def _decompress(self, dict_id: int, stored: bytes | memoryview, raw_len: int) -> bytes:
        cache = getattr(self._local, "decompressors", None)
        if cache is None:
            cache = self._local.decompressors = {}
        dctx = cache.get(dict_id)
        if dctx is None:
            zdict = None
            if dict_id:
                zdict = self.dictionaries.get(dict_id)
                if zdict is None:
                    raise DecodeError(f"its compression dictionary {dict_id} is missing")
            dctx = cache[dict_id] = zstandard.ZstdDecompressor(dict_data=zdict)
        try:
            got = dctx.decompress(stored, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"it does not decompress ({exc})") from None
        if len(got) != raw_len:
            raise DecodeError(f"it decompresses to {len(got)} bytes, not {raw_len}")
        return got


def held_out_size(samples: list[bytes], level: int, zdict: zstandard.ZstdCompressionDict | None) -> int:
    """Bytes the samples take compressed one by one at ``level`` with ``zdict`` (None: without a dictionary)."""
    ctx = zstandard.ZstdCompressor(level=level, dict_data=zdict, write_content_size=False)
    return sum(len(ctx.compress(sample)) for sample in samples)


# A batch of new chunks at least this big is compressed by two threads at once (zstd releases the GIL).
PARALLEL_BATCH = 256 * 1024
_HELPER = LazyPool(1, "chunkfs-compress")
_TRAINER = LazyPool(1, "chunkfs-dictionary")


class Encoded(NamedTuple):
    """A new chunk as its record will hold it: how, with which dictionary, the bytes, the raw bytes' xxh3,
    and whether it is stored raw only until compression behind the writers gets to it."""

    codec: int
    dictionary: int
    stored: bytes | memoryview
    checksum: bytes
    waiting: bool = False


def encode_chunks(codec: Codec, chunks: Sequence[bytes | memoryview]) -> list[Encoded]:
    """Compress (or keep raw) chunks that look new, before the writer takes the store's lock.

    The probes run in this thread (the writer's: a stream's pump, never the
    event loop), so incompressible data costs no hand-over; the chunks that
    pass them are compressed here and, for a big batch, by a helper too
    (zstd releases the GIL), as hashing is (hashing.py).  Concurrent writers
    are not serialised by any of it.  When compressing behind the writers,
    a chunk that passes its probe is kept raw and marked waiting.
    """
    if codec.behind:
        return _marked_waiting(codec, chunks)
    out: list[Encoded | None] = []
    todo: list[int] = []
    for n, data in enumerate(chunks):
        if codec.hopeless(data):
            out.append(Encoded(CODEC_RAW, 0, data, checksum_of(data)))
        else:
            out.append(None)
            todo.append(n)

    def compress(part: list[int]) -> None:
        for n in part:
            out[n] = Encoded(*codec.compress(chunks[n]), checksum_of(chunks[n]))

    if len(todo) >= 2 and sum(len(chunks[n]) for n in todo) >= PARALLEL_BATCH and (os.cpu_count() or 1) >= 2:
        half = len(todo) // 2
        other = _HELPER.submit(compress, todo[half:])
        compress(todo[:half])
        other.result()
    else:
        compress(todo)
    return out  # type: ignore[return-value]  (every slot is filled)


def _marked_waiting(codec: Codec, chunks: Sequence[bytes | memoryview]) -> list[Encoded]:
    """Behind the writers every chunk is stored raw; a probe only says whether it counts as waiting for the
    pass, which probes every raw record of a pack it rewrites again.  So after ``SAMPLE_AFTER`` hopeless
    probes in a row (random or already compressed data) only every ``SAMPLE_EVERY``-th chunk is probed
    until one passes: a stream of incompressible data costs a fifth of the probes, and a compressible
    stretch after it is noticed within ``SAMPLE_EVERY`` chunks."""
    out: list[Encoded] = []
    hopeless_run = 0
    for n, data in enumerate(chunks):
        if hopeless_run >= SAMPLE_AFTER and n % SAMPLE_EVERY:
            waiting = False
        else:
            waiting = not codec.hopeless(data)
            hopeless_run = 0 if waiting else hopeless_run + 1
        out.append(Encoded(CODEC_RAW, 0, data, checksum_of(data), waiting=waiting))
    return out


def encode_late(codec: Codec, data: bytes | memoryview) -> Encoded | None:
    """What :func:`encode_chunks` makes of a chunk that looked stored before the lock and was not (freed
    meanwhile: rare), encoded under it; None when not compressing."""
    if not codec.enabled:
        return None
    return encode_chunks(codec, [data])[0]


def record_of(codec: Codec, chunk: int, data: bytes | memoryview, encoded: Encoded | None) -> tuple:
    """The pack record ``(chunk id, stored, header)`` of a new chunk (``(chunk id, data)`` when not compressing).

    ``encoded`` is what :func:`encode_chunks` (or :func:`encode_late`) made of it.
    """
    if encoded is None:
        return chunk, data
    kind, dict_id, stored, checksum = encoded[:4]
    return chunk, stored, RecordHeader(RECORD_MAGIC, kind, dict_id, len(stored), len(data), chunk, checksum)
