"""``st_blocks`` of regular files: the bytes a file holds, with its holes counted as nothing.

Policy (docs/filesystem.md, "Space accounting"): a committed file's
``st_blocks`` is ``ceil(data bytes / 512)``, where the data bytes are the
bytes of its chunks, that is its size less its holes.  Holes are the ranges
the store keeps as gaps in a manifest: ranges never written (a write past
end of file, a truncate up) and long runs of written zeros (the chunk the
chunker always cuts from zeros is stored as a hole).  The store keeps each
file's data bytes in its file record, so this is O(1) however large the file.
Dedup savings are not subtracted: a chunk shared by two files is counted in
both, since neither owns it (``chunkfs stats`` reports what the store really
holds).  So ``du`` of a 10 GiB file with one byte at its end shows one small
chunk, and ``cp --sparse=auto`` and ``tar -S`` recognise it as sparse.  An
open file with uncommitted changes reports ``ceil(size / 512)`` until its
commit.
"""

from __future__ import annotations

import lmdb

from ..store import ChunkStore
from .handles import OpenFiles
from .namespace import DENSE, Inode


def full_blocks(size: int) -> int:
    return (size + 511) // 512


class BlockCounter:
    """``st_blocks`` for regular files (see the module docstring)."""

    def __init__(self, store: ChunkStore, file_id_for, files: OpenFiles):
        self.store = store
        self.file_id_for = file_id_for
        self.files = files

    def of(self, inode: Inode, txn: lmdb.Transaction | None = None) -> int:
        """``st_blocks`` of a regular file; uncommitted changes count in full until committed.

        ``changed_ns`` is checked first: it is set while a commit may be
        running, so ``data.dirty`` (which waits for the FileData's lock) is
        asked only when that lock is free in practice (a utimens cleared the
        time of writes not yet committed, as ``cp -p`` does before close).
        ``txn``: the caller's read transaction, so a stat costs one, not two.
        """
        oi = self.files.inode(inode.ino)
        if oi is not None and (oi.changed_ns is not None or (oi.writers and oi.data.dirty)):
            return full_blocks(inode.size)
        return self.blocks(inode, txn)

    def holey_inode(self, fh: int) -> int | None:
        """The inode of ``fh`` if, committed, its st_blocks differs from ceil(size / 512).

        The kernel caches attributes; one taken while the data was uncommitted
        counts holes in full, so after a commit the adapter tells the kernel
        to forget the attributes of such a file.  Asked after every flush that
        committed, so it takes no look of its own: the commit's transaction
        noted whether it left holes (OpenFiles._persist).
        """
        oi = self.files.handle(fh).inode
        return oi.ino if oi.holey else None

    def blocks(self, inode: Inode, txn: lmdb.Transaction | None = None) -> int:
        """``st_blocks`` of a committed regular file whose record is ``inode``.

        A file whose last commit left no holes says so in its inode (DENSE),
        so a stat of it needs no look at its file record: a cold ``find``
        would otherwise fault in the store's pages of every file it lists.
        """
        if inode.size == 0:
            return 0
        if inode.flags & DENSE:
            return full_blocks(inode.size)
        return full_blocks(min(self.store.data_bytes(self.file_id_for(inode.ino), txn), inode.size))
