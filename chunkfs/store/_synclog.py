"""One disk flush per sync: the active pack's new bytes ride in the index's own flush.

Why: making a commit survive power loss used to take two flushes in a row,
the packs' (``fdatasync``: an append grows the file, so the filesystem
commits its journal too) and then the index's (invariant 1, blob before
index: the index must never be durable before the bytes it points at).  An
application that fsyncs after every small change (SQLite, git) paid both each
time.  Two flushes cannot be merged into one without giving up that order,
since no system call orders the writes of two files; but one file's flush
can carry both.

How: in a run of syncs (the two before this one ended within
:data:`RUN_GAP`), when all that is not yet durable is a short tail of the
active pack (at most :data:`MOST_PER_SYNC` bytes, and :data:`MOST_SINCE_FLUSH`
since the pack was last flushed), a sync (_group_sync.py) copies that tail
into the ``synclog`` database of the index, in a write transaction, and
flushes the index only: the tail and every commit before it become durable together, in
one flush.  The pack file itself is flushed later, by the first sync that
cannot take this path (another pack holds new bytes, the tail is too long,
or too much was logged), and that sync then empties the log.  A lone sync
flushes both files as before: the log pays off for applications that fsync
after every change (databases, git), while it costs writing the tail twice
and up to MOST_SINCE_FLUSH of index space (the index file grows by what the
log first holds, and reuses those pages afterwards).

After power loss, recovery (_recovery.py, step 0) writes every logged range
back into its pack, flushes the packs, and empties the log, before anything
else looks at the packs: the bytes the index points at are back where it
says they are.  After ``kill -9`` the bytes are in the pack already and the
rewrite changes nothing.

A logged range is only ever the active pack's, and never its first bytes:
a pack's first sync flushes it (and its directory entry).  Bytes in a pack
are written once, so rewriting them is harmless even after a dead record was
punched out (its dead bytes come back until gc).  Replay skips a pack the
index no longer knows or whose file is gone: gc removes a pack only after
the commit moving its live records is durable, and one with nothing live
left at once (_compaction.py).  Backends whose packs cannot be rewritten
after a restart (an object store: a sealed pack is an uploaded object) say
so (``PackBackend.logged_sync``) and always flush.
"""

from __future__ import annotations

import logging
import threading

import lmdb

from . import _index as ix
from ._packs import PackFiles
from ..errors import StoreFullError

log = logging.getLogger(__name__)

MOST_PER_SYNC = 256 * 1024  # a longer tail is cheaper flushed in its pack than written twice
MOST_SINCE_FLUSH = 1024 * 1024  # what the log may hold before a sync flushes the pack and empties it
RUN_GAP = 1.0  # seconds: a sync that comes within this of the two before it is one of a run of syncs
PIECE = 16 * 4096 - 16  # bytes per log record: 16 LMDB pages (an overflow page has a 16-byte header)


def sync_by_log(index: ix.Index, packs: PackFiles, store_lock: threading.RLock) -> int | None:
    """One flush: the active pack's new tail written into the index, then the index flushed.

    Returns the last transaction made durable, None if the packs must be
    flushed (see ``PackFiles.unsynced_tail``).  The tail is read and logged
    under the store's lock, which every append and every commit takes: each
    commit up to the logging one points only at bytes below the tail's end.
    """
    with store_lock:
        tail = packs.unsynced_tail(MOST_PER_SYNC, MOST_SINCE_FLUSH)
        if tail is None:
            return None
        pack, start, end = tail
        upto = index.last_txn()
        if end > start:
            data = packs.backend.read(pack, start, end - start)  # just written: in the page cache
            if len(data) != end - start:
                return None
            try:
                upto = put(index, pack, start, data)
            except StoreFullError:
                return None  # no room in the index: flush the pack instead
    index.sync()
    packs.note_logged(pack, end)
    return upto


def sync_all(index: ix.Index, packs: PackFiles) -> int:
    """Two flushes: the packs, then the index (with the log emptied); the last transaction made durable."""
    upto = index.last_txn()
    packs.sync()
    cleared = clear(index)
    if cleared == upto + 1:
        upto = cleared  # the log's own transaction: nothing else committed meanwhile
    index.sync()
    return upto


def log_key(pack: int, offset: int) -> bytes:
    return ix.KEYSYNCLOG.pack(pack, offset)


def put(index: ix.Index, pack: int, start: int, data: bytes) -> int:
    """Log ``data``, the bytes of ``pack`` from ``start``, in one transaction; returns its id.

    A transaction of its own that touches nothing but the log (the fewest
    pages to write): it need not advance the pack's indexed end, since bytes
    a replay writes beyond that end are cut away by recovery's next step.
    Pieces of a few pages each, because LMDB stores a value beyond half a
    page in pages of its own, which it reuses only as one run of free pages.
    """
    view = memoryview(data)

    def log(txn):
        for at in range(0, len(view), PIECE):
            txn.put(log_key(pack, start + at), view[at : at + PIECE], db=index.synclog)
        return txn.id()

    return index.write(log)


def has_records(txn: lmdb.Transaction, index: ix.Index) -> bool:
    if index.synclog is None:
        return False
    with txn.cursor(db=index.synclog) as cur:
        return cur.first()


def clear(index: ix.Index) -> int | None:
    """Empty the log (after the packs were flushed); the id of the transaction that did, None if it was empty."""
    if index.synclog is None or index.readonly:
        return None

    def drop(txn):
        if not has_records(txn, index):
            return None
        txn.drop(index.synclog, delete=False)
        return txn.id()

    return index.write(drop, frees=True)


def replay(store) -> int:
    """Write every logged range back into its pack and flush it, then empty the log; returns bytes written.

    Runs first in recovery, before any pack is truncated or removed: the
    index is durable, so its log holds exactly what the packs may have lost.
    """
    index, packs = store.index, store.packs
    if index.synclog is None:
        return 0
    with index.read() as txn:
        known = {ix.KEYPACK.unpack(k)[0] for k in txn.cursor(db=index.packs).iternext(values=False)}
        records = [(ix.KEYSYNCLOG.unpack(k), bytes(v)) for k, v in txn.cursor(db=index.synclog)]
    if not records:
        return 0
    on_disk = set(packs.existing())
    written, touched = 0, set()
    for (pack, offset), data in records:
        if pack not in known or pack not in on_disk:
            continue  # removed by gc: it had nothing live (a new pack's first sync flushes it and its entry)
        packs.backend.write(pack, offset, [data])
        touched.add(pack)
        written += len(data)
    if touched:
        packs.backend.sync(touched)
    clear(index)
    index.sync()
    log.info("recovery: wrote %d bytes of pack tails back from the sync log", written)
    return written
