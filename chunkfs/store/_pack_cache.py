"""A bounded cache of pack ranges on the local disk, for packs that live in an object store.

A sealed, uploaded pack never changes, so fixed-size blocks of it
(``BLOCK`` bytes, aligned) can be kept as files ``<pack:08x>-<block:06x>``
in one directory and served again without a request.  A pack this store
uploaded itself is kept whole, as ``<pack:08x>.pack``: its local copy is
moved here (:meth:`PackRangeCache.adopt`, a rename, no copy) once the
object store confirmed it, so what was just written stays readable without
a GET, even while the object store is away, until newer data pushes it
out.  The cache never holds more than its capacity: every entry is counted
when it is stored, and the least recently used ones are deleted before
that (one lock, whatever the number of readers).  It survives a remount:
at start the directory is scanned, entries are ranked by modification time
(renewed at most every ``TOUCH_INTERVAL`` seconds while read) and trimmed
to the capacity, and half-written files are removed.

Only one process at a time uses the directory (an flock on ``.lock``); a
second one (``chunkfs fsck`` while mounted, a read-only second open) keeps
its blocks in memory instead, up to ``MEMORY_FALLBACK`` bytes.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import OrderedDict

BLOCK = 1 << 20
MEMORY_FALLBACK = 64 << 20
WHOLE = -1  # the block number of a whole pack in the cache
TOUCH_INTERVAL = 30.0  # seconds: a block's file mtime (its recency after a remount) is renewed at most this often


class PackRangeCache:
    """Blocks of packs, on disk (or in memory for a second user); see the module docstring."""

    def __init__(self, directory: str, capacity: int):
        self.dir = directory
        self.capacity = max(0, capacity)
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[int, int], int] = OrderedDict()  # (pack, block) -> bytes, LRU first
        self._memory: dict[tuple[int, int], bytes] | None = None
        self._touched: dict[tuple[int, int], float] = {}  # when a block's mtime was last renewed
        self._writing: dict[tuple[int, int], object] = {}  # entries whose file a put is writing: its token
        self._bytes = 0
        self.hits = self.misses = 0
        self._lock_fd = self._take_directory()
        if self._lock_fd is None:
            self._memory = {}
            self.capacity = min(self.capacity, MEMORY_FALLBACK)
        else:
            self._load()

    def _take_directory(self) -> int | None:
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None  # a read-only store directory: memory only
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _path(self, key: tuple[int, int]) -> str:
        if key[1] == WHOLE:
            return os.path.join(self.dir, f"{key[0]:08x}.pack")
        return os.path.join(self.dir, f"{key[0]:08x}-{key[1]:06x}")

    def _load(self) -> None:
        found = []
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                _unlink(path)
                continue
            parts = name.split("-") if not name.endswith(".pack") else [name[:-5], WHOLE]
            if len(parts) != 2 or len(parts[0]) != 8:
                continue
            try:
                key = (int(parts[0], 16), parts[1] if parts[1] == WHOLE else int(parts[1], 16))
                st = os.stat(path)
            except (ValueError, OSError):
                continue
            found.append((st.st_mtime_ns, key, st.st_size))
        for _, key, size in sorted(found):
            self._blocks[key] = size
            self._bytes += size
        self._evict(0)

    # -- use ---------------------------------------------------------------------------

    def get(self, pack: int, block: int) -> bytes | None:
        """A whole cached block (short if the pack ends in it), or None."""
        return self.read(pack, block, 0, BLOCK)

    def read(self, pack: int, block: int, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of a cached block (offsets within the block), or None if it is not cached.

        Only the bytes asked for are read: a chunk of tens of KiB costs no
        more than itself, whatever the block size.
        """
        key = (pack, block)
        with self._lock:
            if (pack, WHOLE) in self._blocks:
                key = (pack, WHOLE)
            elif key not in self._blocks:
                self.misses += 1
                return None
            self._blocks.move_to_end(key)
            self.hits += 1
            if self._memory is not None:
                return self._memory[key][start:stop]
            now = time.monotonic()
            touch = now - self._touched.get(key, 0.0) > TOUCH_INTERVAL
            if touch:
                self._touched[key] = now
        base = block * BLOCK if key[1] == WHOLE else 0
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(fd, stop - start, base + start)
                if touch:
                    os.utime(fd)  # recency survives a remount
            finally:
                os.close(fd)
            return data
        except OSError:  # evicted meanwhile
            with self._lock:
                self.hits -= 1
                self.misses += 1
            return None

    def has(self, pack: int, block: int) -> bool:
        with self._lock:
            return (pack, block) in self._blocks or (pack, WHOLE) in self._blocks

    def adopt(self, pack: int, path: str) -> bool:
        """Move the file ``path``, all of ``pack`` as uploaded, into the cache; False if it was left alone.

        Older entries make room first, as for :meth:`put`; the caller
        deletes the file if it was not adopted.
        """
        key = (pack, WHOLE)
        if self._memory is not None:
            return False
        try:
            size = os.stat(path).st_size
        except OSError:
            return False
        with self._lock:
            if size > self.capacity or not self._evict(size):
                return False
            try:
                os.rename(path, self._path(key))
            except OSError:  # another filesystem, or a full directory: the caller deletes it
                return False
            for old in [k for k in self._blocks if k[0] == pack]:  # ranges fetched before: the whole has them
                self._bytes -= self._blocks.pop(old)
                self._drop_stored(old)
            self._blocks[key] = size
            self._bytes += size
        return True

    def put(self, pack: int, block: int, data: bytes) -> None:
        """Keep a block, evicting older ones first so the total never passes the capacity.

        The block counts from the moment it is registered, while its file is
        written (under a name of this call's own): an entry being written is
        never evicted (its bytes are on the disk already), and the file is
        renamed into place only if its entry is still there, so no file the
        cache does not count is ever left behind, however many readers put
        blocks at once.
        """
        key = (pack, block)
        if len(data) > self.capacity:
            return
        token = object()
        with self._lock:
            if key in self._blocks or not self._evict(len(data)):
                return
            self._blocks[key] = len(data)
            self._bytes += len(data)
            if self._memory is not None:
                self._memory[key] = bytes(data)
                return
            self._writing[key] = token
        tmp = f"{self._path(key)}.{threading.get_ident():x}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
        except OSError:  # a full disk: do without this block
            _unlink(tmp)
            with self._lock:
                if self._writing.get(key) is token:
                    del self._writing[key]
                    self._bytes -= self._blocks.pop(key)
            return
        with self._lock:
            if self._writing.get(key) is token:
                del self._writing[key]
                os.replace(tmp, self._path(key))
                return
        _unlink(tmp)  # dropped meanwhile (its pack removed)

    def _evict(self, room: int) -> bool:
        """With the lock held: drop least recently used entries until ``room`` more bytes fit (entries being
        written stay); whether they fit now."""
        busy = []
        while self._blocks and self._bytes + room > self.capacity:
            key, size = self._blocks.popitem(last=False)
            if key in self._writing:
                busy.append((key, size))
                continue
            self._bytes -= size
            self._drop_stored(key)
        for key, size in reversed(busy):  # back where they were, oldest first
            self._blocks[key] = size
            self._blocks.move_to_end(key, last=False)
        return self._bytes + room <= self.capacity

    def _drop_stored(self, key: tuple[int, int]) -> None:
        self._touched.pop(key, None)
        self._writing.pop(key, None)
        if self._memory is not None:
            self._memory.pop(key, None)
        else:
            _unlink(self._path(key))

    def discard(self, pack: int, block: int) -> None:
        """Forget one block (not a whole pack kept as such)."""
        with self._lock:
            size = self._blocks.pop((pack, block), None)
            if size is not None:
                self._bytes -= size
                self._drop_stored((pack, block))

    def drop_pack(self, pack: int) -> None:
        """Forget every block of ``pack`` (removed, or rewritten by a repair)."""
        with self._lock:
            for key in [k for k in self._blocks if k[0] == pack]:
                self._bytes -= self._blocks.pop(key)
                self._drop_stored(key)

    def stats(self) -> dict:
        with self._lock:
            return {"bytes": self._bytes, "capacity": self.capacity, "blocks": len(self._blocks),
                    "hits": self.hits, "misses": self.misses, "on_disk": self._memory is None}

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
