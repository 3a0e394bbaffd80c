"""Reading packs that live as objects: ranged GETs through the pack cache, prefetch, a few blocks in memory.

The S3 backend (_s3_backend.py) reads a pack from here once its local copy
is gone (uploaded).  A pack is read in aligned blocks of ``BLOCK`` bytes:

* a block in the pack cache (_pack_cache.py) is read from there, only the
  bytes asked for;
* the blocks a read needs that are not cached are fetched with one ranged
  GET per run of neighbours, and kept in the cache;
* a read that continues the previous one of the same pack (a sequential
  reader) has the blocks ahead of it fetched in the background, several
  GETs in parallel, and on into the next pack (a file written in one go
  continues there); the blocks fetched ahead and its last few blocks stay
  in memory, so its many chunk-sized reads of one block cost no more than
  the GET of the block.

A block is fetched once whoever asks: a GET claims its blocks (an event per
block), and anyone else who needs one of them waits for that GET instead of
sending its own.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..errors import ObjectStoreError, PackMissingError, WouldBlock
from ._bucket import Bucket, pack_name
from ._pack_cache import BLOCK, PackRangeCache

log = logging.getLogger(__name__)

PREFETCH_WINDOW = 32  # blocks (MiB) a sequential reader has fetched, or on their way, ahead of it
PREFETCH_GET = 16  # blocks per prefetch GET; the GETs of a window run in parallel
PREFETCH_THREADS = 2  # (GETs of 16 MiB, 2 at a time: half the requests of 8 MiB ones, 4 at a time, and less CPU)
HOT_BLOCKS = 8  # blocks a sequential reader keeps in memory
AHEAD_BLOCKS = 2 * PREFETCH_WINDOW  # prefetched blocks kept in memory until read (the oldest go first)


class ObjectReads:
    """Reads of uploaded packs for one backend; see the module docstring.  Thread-safe.

    ``objects()`` is the backend's map of uploaded pack -> object size;
    ``is_local(pack)`` says whether the backend still has a local copy of it
    (then it is read there, and never prefetched here).
    """

    def __init__(self, bucket: Bucket, cache: PackRangeCache, objects: Callable[[], dict[int, int]],
                 is_local: Callable[[int], bool]):
        self.bucket = bucket
        self.cache = cache
        self._objects = objects
        self._is_local = is_local
        self._lock = threading.Lock()
        self._inflight: dict[tuple[int, int], threading.Event] = {}
        self._last_block: dict[int, int] = {}  # pack -> the last block a read of it ended in
        self._prefetched_to: dict[int, int] = {}  # pack -> the block the prefetch window reaches
        self._hot: OrderedDict[tuple[int, int], bytes] = OrderedDict()  # a sequential reader's last blocks
        self._ahead: OrderedDict[tuple[int, int], bytes] = OrderedDict()  # prefetched, not read yet
        self._stopping = False
        self._prefetcher = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="chunkfs-prefetch")

    def from_memory(self, pack: int, offset: int, length: int) -> bytes | None:
        """The bytes, if they lie in the block the last read of ``pack`` ended in and it is in memory."""
        block = offset // BLOCK
        if length <= 0 or (offset + length - 1) // BLOCK != block:
            return None
        with self._lock:
            data = self._hot.get((pack, block)) if self._last_block.get(pack) == block else None
        piece = data[offset - block * BLOCK:offset - block * BLOCK + length] if data is not None else b""
        return piece if len(piece) == length else None

    def read(self, pack: int, offset: int, length: int, size: int, nowait: bool) -> bytes:
        """Bytes ``[offset, offset+length)`` of the object of ``pack``, ``size`` bytes long.

        A sequential reader reads whole blocks and keeps the last few in
        memory; any other read takes only its own bytes from the cache.
        With ``nowait``, WouldBlock rather than a GET.
        """
        pieces = self._pieces(pack, offset, length, size, nowait)
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    def read_into(self, pack: int, offset: int, buffers: Sequence[memoryview], size: int, nowait: bool) -> int:
        """:meth:`read` straight into ``buffers`` (a ``preadv``): each byte is copied once, from the block
        it lies in to its buffer; returns how many bytes were read (short at the end of the object)."""
        pieces = self._pieces(pack, offset, sum(len(b) for b in buffers), size, nowait)
        return _scatter(pieces, buffers)

    def _pieces(self, pack: int, offset: int, length: int, size: int, nowait: bool) -> list:
        """The bytes ``[offset, offset+length)`` as one piece per block, views of the blocks where they are in
        memory (fetched now, prefetched, or a sequential reader's), else read from the cache."""
        end = min(offset + length, size)
        if end <= offset:
            return [b""]
        first, last = offset // BLOCK, (end - 1) // BLOCK
        with self._lock:
            previous = self._last_block.get(pack)
        sequential = _continues(previous, first, last)
        spans = {b: (max(offset, b * BLOCK) - b * BLOCK, min(end, (b + 1) * BLOCK) - b * BLOCK)
                 for b in range(first, last + 1)}
        pieces = {}
        for b, (lo, hi) in spans.items():
            whole = self._hot_block(pack, b, load=sequential)
            pieces[b] = memoryview(whole)[lo:hi] if whole is not None else self.cache.read(pack, b, lo, hi)
            if pieces[b] is not None and len(pieces[b]) < hi - lo:  # the short last block of an object that grew
                self._discard(pack, b)
                pieces[b] = None
        missing = [b for b, data in pieces.items() if data is None]
        if missing and nowait:
            raise WouldBlock(f"pack {pack:08x}: not in the cache")
        self._maybe_prefetch(pack, first, last)  # first: the GETs ahead go out while this read waits for its own
        for run in _runs(missing):
            for b, data in self._fetch(pack, run[0], run[-1] + 1).items():
                lo, hi = spans[b]
                if len(data) < hi:  # kept short by someone else meanwhile: this read needs more
                    self._discard(pack, b)
                    data = self.bucket.get(pack_name(pack), b * BLOCK, (b + 1) * BLOCK)
                self._keep_hot(pack, b, data)
                pieces[b] = memoryview(data)[lo:hi]
        return [pieces[b] for b in range(first, last + 1)]

    def forget(self, pack: int) -> None:
        """Drop what the cache and memory hold of a removed or rewritten pack."""
        with self._lock:
            for kept in (self._hot, self._ahead):
                for key in [k for k in kept if k[0] == pack]:
                    del kept[key]
        self.cache.drop_pack(pack)

    def close(self) -> None:
        """Stop prefetching: GETs not started give their blocks back at once; one under way ends on its own
        and keeps nothing."""
        with self._lock:
            self._stopping = True
        self._prefetcher.shutdown(wait=False)

    # -- blocks in memory ------------------------------------------------------------------

    def _hot_block(self, pack: int, block: int, load: bool) -> bytes | None:
        """A block kept in memory (read, or prefetched); with ``load``, else read whole from the cache."""
        with self._lock:
            data = self._hot.get((pack, block))
            if data is not None:
                self._hot.move_to_end((pack, block))
                return data
            data = self._ahead.pop((pack, block), None)
        if data is not None:
            self._keep_hot(pack, block, data)
            return data
        if not load:
            return None
        data = self.cache.get(pack, block)
        if data is not None:
            self._keep_hot(pack, block, data)
        return data

    def _discard(self, pack: int, block: int) -> None:
        """Forget one block wherever it is kept: it was the short last block of an object that has grown
        since (the open pack, uploaded whole at every checkpoint, as a replica reads it)."""
        with self._lock:
            self._hot.pop((pack, block), None)
            self._ahead.pop((pack, block), None)
        self.cache.discard(pack, block)

    def _keep_hot(self, pack: int, block: int, data: bytes) -> None:
        with self._lock:
            self._hot[(pack, block)] = data
            while len(self._hot) > HOT_BLOCKS:
                self._hot.popitem(last=False)

    # -- GETs ------------------------------------------------------------------------------

    def _fetch(self, pack: int, start: int, stop: int) -> dict[int, bytes]:
        """Blocks ``[start, stop)`` of a pack, with one GET per run of blocks neither cached nor on their way."""
        with self._lock:
            mine, theirs, cached = self._claim(pack, start, stop)
        got = self._get_claimed(pack, mine)
        for b, event in theirs:
            event.wait()
        for b in cached + [b for b, _ in theirs]:
            with self._lock:  # a prefetch just brought it: take it from memory, not back from the cache file
                data = self._ahead.pop((pack, b), None)
            if data is None:
                data = self.cache.get(pack, b)
            got[b] = data if data is not None else self.bucket.get(pack_name(pack), b * BLOCK, (b + 1) * BLOCK)
        return got

    def _claim(self, pack: int, start: int, stop: int) -> tuple[list[int], list[tuple[int, threading.Event]],
                                                                 list[int]]:
        """With the lock held: sort blocks into (to fetch, now claimed; on their way; cached)."""
        mine, theirs, cached = [], [], []
        for b in range(start, stop):
            event = self._inflight.get((pack, b))
            if event is not None:
                theirs.append((b, event))
            elif self.cache.has(pack, b):
                cached.append(b)
            else:
                self._inflight[(pack, b)] = threading.Event()
                mine.append(b)
        return mine, theirs, cached

    def _release(self, pack: int, mine: list[int]) -> None:
        with self._lock:
            for b in mine:
                self._inflight.pop((pack, b)).set()

    def _get_claimed(self, pack: int, mine: list[int], ahead: bool = False) -> dict[int, bytes]:
        """GET the claimed blocks ``mine`` (one request per run), cache them, and release the claims.

        ``ahead``: prefetched, so also kept in memory until the reader comes.
        """
        got: dict[int, bytes] = {}
        try:
            for run in _runs(mine):
                data = self.bucket.get(pack_name(pack), run[0] * BLOCK, (run[-1] + 1) * BLOCK)
                for i, b in enumerate(run):
                    got[b] = data[i * BLOCK:(i + 1) * BLOCK]
                    if got[b] and not self._stopping:  # (a short last block is kept too: see _pieces)
                        self.cache.put(pack, b, got[b])
                        if ahead:
                            self._keep_ahead(pack, b, got[b])
        finally:
            self._release(pack, mine)
        return got

    # -- prefetching -----------------------------------------------------------------------

    def _maybe_prefetch(self, pack: int, first: int, last: int) -> None:
        """A read that continues the previous one of this pack has the blocks ahead of it fetched.

        Up to ``PREFETCH_WINDOW`` blocks past the read are fetched or on
        their way, in GETs of ``PREFETCH_GET`` blocks that run in parallel;
        the window is topped up once a whole GET's worth of it was used.
        Once it reaches the pack's end, the next pack's first blocks are
        fetched too.  The blocks are claimed here, so that a reader arriving
        before the GET starts waits for it instead of sending its own.
        """
        objects = self._objects()
        blocks = (objects.get(pack, 0) + BLOCK - 1) // BLOCK
        following = pack + 1
        follow = following in objects and not self._is_local(following)
        with self._lock:
            previous = self._last_block.get(pack)
            self._last_block[pack] = last
            if not _continues(previous, first, last) or self._stopping:
                return
            start = max(self._prefetched_to.get(pack, 0), last + 1)
            stop = min(blocks, last + 1 + PREFETCH_WINDOW)
            if stop < blocks:  # whole GETs only; a pack's last few blocks go with the GET before them
                stop = start + (stop - start) // PREFETCH_GET * PREFETCH_GET
                stop = blocks if blocks - stop < PREFETCH_GET // 2 else stop
            if stop - start < 1:
                return
            self._prefetched_to[pack] = stop
            claims = [(pack, self._claim(pack, lo, hi)[0]) for lo, hi in _gets(start, stop)]
            if stop == blocks and follow and following not in self._prefetched_to:
                following_stop = min(PREFETCH_WINDOW // 2, (objects[following] + BLOCK - 1) // BLOCK)
                self._prefetched_to[following] = following_stop
                self._last_block.setdefault(following, -1)  # its first read counts as continuing
                claims += [(following, self._claim(following, lo, hi)[0]) for lo, hi in _gets(0, following_stop)]
        for which, mine in claims:
            if mine:
                try:
                    self._prefetcher.submit(self._prefetch, which, mine)
                except RuntimeError:  # closing: give the claims back
                    self._release(which, mine)

    def _keep_ahead(self, pack: int, block: int, data: bytes) -> None:
        with self._lock:
            self._ahead[(pack, block)] = data
            while len(self._ahead) > AHEAD_BLOCKS:
                self._ahead.popitem(last=False)

    def _prefetch(self, pack: int, mine: list[int]) -> None:
        if self._stopping:
            self._release(pack, mine)
            return
        try:
            self._get_claimed(pack, mine, ahead=True)
        except (ObjectStoreError, PackMissingError) as exc:
            log.debug("prefetch of pack %08x failed: %s", pack, exc)


def _continues(previous: int | None, first: int, last: int) -> bool:
    """Whether a read of blocks ``[first, last]`` continues one that ended in block ``previous``.

    It may start a block before that one: a read of a file range begins
    with the whole chunk its first byte lies in, which the read before
    ended with, and that chunk can begin in the block before.
    """
    return previous is not None and previous - 1 <= first <= previous + 1 and last >= previous


def _gets(start: int, stop: int) -> list[tuple[int, int]]:
    """Blocks ``[start, stop)`` in GETs of ``PREFETCH_GET`` blocks, a last piece of less than half that
    joined to the one before (a pack is a little over 64 blocks: its last block is not a GET of its own)."""
    gets = [(lo, min(stop, lo + PREFETCH_GET)) for lo in range(start, stop, PREFETCH_GET)]
    if len(gets) > 1 and gets[-1][1] - gets[-1][0] < PREFETCH_GET // 2:
        gets[-2:] = [(gets[-2][0], gets[-1][1])]
    return gets


def _scatter(pieces: list, buffers: Sequence[memoryview]) -> int:
    """Copy ``pieces`` (in order) across ``buffers`` (in order); the bytes copied."""
    done = 0
    i, at = 0, 0  # the buffer being filled, and how much of it is
    for piece in pieces:
        piece = memoryview(piece)
        while piece.nbytes and i < len(buffers):
            room = len(buffers[i]) - at
            n = min(room, piece.nbytes)
            buffers[i][at:at + n] = piece[:n]
            piece, at, done = piece[n:], at + n, done + n
            if n == room:
                i, at = i + 1, 0
        if i >= len(buffers):
            break
    return done


def _runs(blocks: list[int]) -> list[list[int]]:
    """Consecutive block numbers grouped: each group is one ranged GET."""
    runs: list[list[int]] = []
    for b in blocks:
        if runs and runs[-1][-1] + 1 == b:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs
