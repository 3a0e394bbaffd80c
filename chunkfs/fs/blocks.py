"""``st_blocks`` of regular files: the bytes a file holds, with its holes counted as nothing.

Policy (docs/filesystem.md, "Space accounting"): a file's ``st_blocks`` is
``ceil((size - hole bytes) / 512)``, where hole bytes are the bytes covered by
*zero-run chunks* — the chunk a run of zeros is always cut into, which is what
a hole (a write past end of file, a truncate up) or a long run of written
zeros commits to.  Dedup savings are not subtracted: a chunk shared by two
files is counted in both, since neither owns it (``chunkfs stats`` reports
what the store really holds).  So ``du`` of a 10 GiB file with one byte at
its end shows a few hundred KiB (the zero chunks just before the byte and the
tail are not zero-run chunks), and ``cp --sparse=auto`` and ``tar -S``
recognise it as sparse.

Cost: the count needs one scan of the file's manifest, cached per inode until
its size or times change.  Files shorter than two zero-run chunks cannot hold
one and are never scanned; files with more than ``MAX_SCAN`` chunks are not
scanned either (the scan runs on the FUSE event loop: ~0.7 µs per chunk) and
report ``ceil(size / 512)``.  An open file with uncommitted changes reports
``ceil(size / 512)`` until its commit.  A per-file hole counter kept by the
store at commit time would make this O(1) and lift the limit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..store import ChunkStore
from .handles import OpenFiles
from .namespace import Inode

MAX_SCAN = 128 * 1024  # chunks; ~90 ms on this machine's 2 cores, a 16 GiB hole at 128 KiB per zero chunk
CACHE_ENTRIES = 16 * 1024


def full_blocks(size: int) -> int:
    return (size + 511) // 512


class BlockCounter:
    """Computes and caches ``st_blocks`` for committed regular files (see the module docstring)."""

    def __init__(self, store: ChunkStore, file_id_for, files: OpenFiles, max_scan: int = MAX_SCAN):
        self.store = store
        self.file_id_for = file_id_for
        self.files = files
        self.max_scan = max_scan
        self.zero_length = store.zero_run_length()
        self._cache: OrderedDict[int, tuple[tuple[int, int, int], int]] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, inode: Inode) -> int:
        """``st_blocks`` of a regular file; uncommitted changes count in full until committed.

        ``changed_ns`` is checked first: it is set while a commit may be
        running, so ``data.dirty`` (which waits for the FileData's lock) is
        asked only when that lock is free in practice (a utimens cleared the
        time of writes not yet committed, as ``cp -p`` does before close).
        """
        oi = self.files.inode(inode.ino)
        if oi is not None and (oi.changed_ns is not None or (oi.writers and oi.data.dirty)):
            return full_blocks(inode.size)
        return self.blocks(inode)

    def holey_inode(self, fh: int) -> int | None:
        """The inode of ``fh`` if its st_blocks may differ from ceil(size / 512) once committed.

        The kernel caches attributes; one taken while the data was uncommitted
        counts holes in full, so after a commit the adapter tells the kernel
        to forget the attributes of such a file.
        """
        oi = self.files.handle(fh).inode
        return oi.ino if self.may_have_holes(oi.data.size) else None

    def may_have_holes(self, size: int) -> bool:
        """Whether a file of ``size`` bytes can hold a zero-run chunk (else st_blocks is ceil(size/512))."""
        return size >= 2 * self.zero_length

    def blocks(self, inode: Inode) -> int:
        """``st_blocks`` of a committed regular file whose record is ``inode``."""
        if not self.may_have_holes(inode.size):
            return full_blocks(inode.size)
        key = (inode.size, inode.mtime_ns, inode.ctime_ns)
        with self._lock:
            cached = self._cache.get(inode.ino)
            if cached is not None and cached[0] == key:
                self._cache.move_to_end(inode.ino)
                return cached[1]
        holes = self._hole_bytes(inode.ino)
        blocks = full_blocks(max(inode.size - holes, 0)) if holes is not None else full_blocks(inode.size)
        with self._lock:
            self._cache[inode.ino] = (key, blocks)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return blocks

    def _hole_bytes(self, ino: int) -> int | None:
        """Bytes in zero-run chunks; None if the manifest is too long to scan here."""
        return self.store.zero_run_bytes(self.file_id_for(ino), self.max_scan)
