"""Where pack bytes live: the pack backend interface, and an in-memory backend.

The pack format (header, records, which pack is active, when to roll) is
_packs.py's business; a backend only stores numbered byte strings, the
packs, and knows nothing of records.  That split is what lets the store keep
its packs on a local disk (_local_backend.py), in memory (this module: the
test suite runs the store against it to prove the seam), or in an object
store, where a pack is uploaded as one object when it is sealed and read
back with ranged reads.  docs/store-format.md ("The pack backend
interface") is the contract; the rules a caller may rely on are repeated in
the docstrings below.

Errors crossing the interface are chunkfs errors, never a raw ``OSError``:
a pack that is not there is :class:`PackMissingError`, a full medium
:class:`StoreFullError`, any other failure of the medium :class:`PackIOError`,
and a read asked not to wait that would have to :class:`WouldBlock`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

from ..errors import PackMissingError, StoreFullError

REMOVED_PACK_GRACE = 10.0  # seconds a removed pack stays readable for reads already on their way
IOV_BATCH = 512  # at most this many records per readv (2 * IOV_BATCH buffers stay within IOV_MAX, 1024)

Buffer = bytes | bytearray | memoryview


class PackBackend(ABC):
    """Numbered, append-written byte strings ("packs") on some medium.

    A pack is *open* from :meth:`create` until :meth:`seal`; only an open
    pack takes :meth:`write`.  The store writes one open pack at a time, from
    one thread, at or below its current size; reads may come from any thread
    at any time, for any pack.
    """

    logged_sync = False
    """Whether an open pack's recent bytes may be kept durable in the index instead of flushed
    (_synclog.py): true where a pack can be written again at the same offsets after a restart."""

    @abstractmethod
    def create(self, pack: int) -> int:
        """Make ``pack`` exist and be open for writing; return its size (0 if new).

        Creating an open pack again is harmless and returns its size; it is
        how the store resumes appending after a restart.  A sealed pack
        cannot be reopened: see :meth:`sealed`.
        """

    @abstractmethod
    def write(self, pack: int, offset: int, buffers: Sequence[Buffer]) -> None:
        """Write ``buffers`` back to back at ``offset`` (at most the pack's size) of an open pack.

        Not durable until :meth:`sync`.  A failure may leave any part written
        (the store overwrites that tail with its next write); StoreFullError
        if the medium is full.
        """

    def writeback(self, pack: int, offset: int, length: int) -> None:
        """A hint: start moving these written bytes to the medium now, so a later sync waits less."""

    @abstractmethod
    def seal(self, pack: int) -> None:
        """No more writes to ``pack`` (an object store uploads it here).

        :meth:`patch` and :meth:`truncate` (repair and recovery) still work on
        a sealed pack, however slowly.
        """

    def sealed(self, pack: int) -> bool:
        """True if ``pack`` was sealed and cannot be reopened by :meth:`create` (a local file always can)."""
        return False

    @abstractmethod
    def read(self, pack: int, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``pack``; short (or empty) where the pack ends first."""

    @abstractmethod
    def readv(self, pack: int, offset: int, buffers: Sequence[memoryview], nowait: bool = False) -> int:
        """Fill ``buffers`` with the bytes back to back from ``offset``; return how many bytes were read.

        Fewer than the buffers hold means the pack ends first.  With
        ``nowait``, either every buffer is filled from memory or WouldBlock
        is raised (the caller then reads again, waiting).
        """

    @abstractmethod
    def sync(self, packs: Iterable[int]) -> None:
        """Make every write to ``packs`` so far, and their existence, survive a crash or power loss."""

    def sync_all(self) -> None:
        """Make every pack's bytes written so far by anyone, this process or one that died, survive power
        loss (recovery, before the index is flushed again: invariant 1 for a dead owner's last packs)."""
        self.sync(self.list())

    @abstractmethod
    def patch(self, pack: int, offset: int, data: Buffer) -> None:
        """Overwrite bytes of any pack, sealed or not, durably (fsck --repair only)."""

    @abstractmethod
    def truncate(self, pack: int, end: int) -> None:
        """Cut ``pack`` to ``end`` bytes, durably (recovery and repair of a torn tail only)."""

    @abstractmethod
    def punch(self, pack: int, offset: int, length: int) -> bool:
        """Free the medium's space under dead bytes where it can; True if any was freed.

        Never changes a byte outside ``[offset, offset+length)`` nor the
        pack's size; inside, reads may return zeros afterwards.  A medium that
        cannot free part of an object (an object store) returns False, and the
        space waits for garbage collection to rewrite the pack.
        """

    @abstractmethod
    def remove(self, pack: int) -> None:
        """Delete ``pack`` (no error if it is gone already); it leaves :meth:`list` at once.

        A read of the pack that this backend has read or written before keeps
        returning its old bytes for at least ``REMOVED_PACK_GRACE`` seconds
        (until :meth:`reap` lets it go): background gc removes packs while
        reads that looked a chunk up just before gc moved it are on their way.
        """

    def reap(self, grace: float = REMOVED_PACK_GRACE) -> None:
        """Let go of packs removed more than ``grace`` seconds ago (their space comes back)."""

    @abstractmethod
    def list(self) -> list[int]:
        """Ids of the packs present, sorted (a removed pack is not present)."""

    @abstractmethod
    def size(self, pack: int) -> int:
        """Size of ``pack`` in bytes; PackMissingError if it is not present (or reaped, if removed)."""

    @abstractmethod
    def usage(self, pack: int) -> tuple[int, int]:
        """(size, bytes the medium holds for it) of ``pack``: the second is less where ranges were punched.

        gc asks this of every pack holding dead records, to decide whether a
        rewrite would give back enough; it should not need to open them all.
        """

    @abstractmethod
    def disk_bytes(self) -> int:
        """Bytes the packs occupy on the medium (what is freed by punch or remove is not counted)."""

    def close(self) -> None:
        """Release descriptors, connections, buffers; the packs themselves stay."""

    # -- for a medium that keeps a copy of the metadata beside the packs (an object store) --

    def attach_index(self, copy_index: Callable[[int], None]) -> None:
        """Receive the store's ``copy_index(fd)``: writes a consistent, compacted copy of the index to ``fd``.

        Called once a writable store is open.  A backend that puts the store
        somewhere a fresh machine can rebuild it from uploads such copies
        (after the packs they name); a local one ignores it.
        """

    def publish(self, names: Sequence[str]) -> None:
        """Keep copies of these files of the store directory on the medium; return once they are there.

        ``names`` are paths relative to the store directory of files written
        durably and never changed afterwards (the compression dictionaries,
        ``dictionaries/NNNN.zdict``).  The store calls this before any
        record that needs such a file is written, and for every one it has
        when it opens for writing, so a medium that must rebuild the store
        on its own (an object store) never holds a record whose file it
        lacks.  A file already kept is not sent again.  A medium inside the
        store directory has nothing to do; an object store raises
        ObjectStoreError if it cannot take them.
        """

    def flush(self) -> dict:
        """Put on the medium what :meth:`sync` leaves local (an object store: every pending upload).

        ``sync`` makes writes survive a crash; this makes them reach where
        they finally live.  Returns a summary (empty: nothing to do).
        """
        return {}

    def stats(self) -> dict:
        """Counters for ``chunkfs stats`` (objects, requests, backlog, cache); empty for a local disk."""
        return {}


class MemoryBackend(PackBackend):
    """Packs as bytearrays in a dict: fast, thread-safe, gone when the process ends.

    It enforces what an object store would (no write to a sealed pack) so
    the store suite run against it proves the store keeps the contract.
    The same instance may be passed to successive ``ChunkStore.open`` calls
    to model a restart.  ``capacity`` (bytes) models a full medium.
    """

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._packs: dict[int, bytearray] = {}
        self._sealed: set[int] = set()
        self._punched: dict[int, dict[int, int]] = {}  # pack -> {offset: length} freed by punch
        self._removed: list[tuple[float, int, bytearray]] = []  # (when, pack, bytes) in their grace period

    def _get(self, pack: int) -> bytearray:
        buf = self._packs.get(pack)
        if buf is None:
            for _, gone, old in reversed(self._removed):
                if gone == pack:
                    return old
            raise PackMissingError(f"pack {pack:08x} is missing")
        return buf

    def create(self, pack: int) -> int:
        with self._lock:
            if pack in self._sealed:
                raise RuntimeError(f"pack {pack:08x} is sealed and cannot be reopened")
            return len(self._packs.setdefault(pack, bytearray()))

    def write(self, pack: int, offset: int, buffers: Sequence[Buffer]) -> None:
        with self._lock:
            buf = self._get(pack)
            if pack in self._sealed or pack not in self._packs:
                raise RuntimeError(f"pack {pack:08x} is not open for writing")
            if offset > len(buf):
                raise ValueError(f"write at {offset} beyond the end ({len(buf)}) of pack {pack:08x}")
            total = sum(len(memoryview(b).cast("B")) for b in buffers)
            if self.capacity is not None and self._used() - (len(buf) - offset) + total > self.capacity:
                raise StoreFullError("no space left for chunk data (memory backend capacity)")
            del buf[offset:]
            for b in buffers:
                buf += memoryview(b).cast("B")

    def _used(self) -> int:
        return sum(len(b) for b in self._packs.values())

    def seal(self, pack: int) -> None:
        with self._lock:
            self._get(pack)
            self._sealed.add(pack)

    def sealed(self, pack: int) -> bool:
        with self._lock:
            return pack in self._sealed

    def read(self, pack: int, offset: int, length: int) -> bytes:
        with self._lock:
            return bytes(self._get(pack)[offset : offset + length])

    def readv(self, pack: int, offset: int, buffers: Sequence[memoryview], nowait: bool = False) -> int:
        with self._lock:
            buf = self._get(pack)
            done = 0
            for view in buffers:
                part = buf[offset + done : offset + done + len(view)]
                view[: len(part)] = part
                done += len(part)
                if len(part) < len(view):
                    break
            return done

    def sync(self, packs: Iterable[int]) -> None:
        pass  # memory is as durable as it gets

    def patch(self, pack: int, offset: int, data: Buffer) -> None:
        with self._lock:
            buf = self._get(pack)
            data = bytes(data)
            if offset + len(data) > len(buf):
                raise ValueError(f"patch beyond the end of pack {pack:08x}")
            buf[offset : offset + len(data)] = data

    def truncate(self, pack: int, end: int) -> None:
        with self._lock:
            buf = self._get(pack)
            del buf[end:]
            punched = self._punched.get(pack, {})
            for start in [s for s in punched if s + punched[s] > end]:
                del punched[start]

    def punch(self, pack: int, offset: int, length: int) -> bool:
        with self._lock:
            buf = self._get(pack)
            end = min(offset + length, len(buf))
            if end <= offset:
                return False
            buf[offset:end] = bytes(end - offset)
            self._punched.setdefault(pack, {})[offset] = end - offset
            return True

    def remove(self, pack: int) -> None:
        with self._lock:
            buf = self._packs.pop(pack, None)
            self._sealed.discard(pack)
            self._punched.pop(pack, None)
            if buf is not None:
                self._removed.append((time.monotonic(), pack, buf))

    def reap(self, grace: float = REMOVED_PACK_GRACE) -> None:
        now = time.monotonic()
        with self._lock:
            self._removed = [r for r in self._removed if now - r[0] < grace]

    def list(self) -> list[int]:
        with self._lock:
            return sorted(self._packs)

    def size(self, pack: int) -> int:
        with self._lock:
            if pack not in self._packs:
                raise PackMissingError(f"pack {pack:08x} is missing")
            return len(self._packs[pack])

    def usage(self, pack: int) -> tuple[int, int]:
        with self._lock:
            if pack not in self._packs:
                raise PackMissingError(f"pack {pack:08x} is missing")
            size = len(self._packs[pack])
            return size, size - sum(self._punched.get(pack, {}).values())

    def disk_bytes(self) -> int:
        with self._lock:
            return self._used() - sum(sum(p.values()) for p in self._punched.values())

    def close(self) -> None:
        with self._lock:
            self._removed = []  # no read still on its way outlives the store that started it
