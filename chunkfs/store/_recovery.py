"""Recovery at open: repair what a crash left in the packs, without scanning chunk data.

Recovery runs every time a store is opened for writing.  It relies on the
ledger's accounting (see _ledger.py):

0. If the last writer did not close the store (its pid is still in the lock
   file: _handles.py), every pack is flushed first (one ``syncfs`` on local
   disk): it may have appended to packs it never flushed, and this process's
   first sync would otherwise make the index durable before those bytes
   (invariant 1).
   Pack bytes a sync made durable in the index's sync log are written back
   into their packs and flushed, and the log is emptied (_synclog.py): after
   power loss the packs may lack them; after ``kill -9`` this changes nothing.
1. A pack file the index does not know is the leftover of a crash while a pack
   was being created or compacted: remove it.  A pack the index knows whose
   file is gone is lost (fsck's business), unless nothing in it was alive or
   pending: gc removes such a pack without a flush, so its unlink may reach
   the disk before the commit that dropped its record; the record goes.
2. Bytes beyond a pack's indexed end were appended after the last commit and
   nothing refers to them: truncate them away.
3. Every ``pending`` record names a chunk that was in flight when the previous
   owner died: it is dead space now (or, if a chunk record points at it, live).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import _index as ix
from . import _synclog as synclog
from ._ledger import adjust_pack, get_record
from ._packs import HEADER_SIZE, RECORD, Location, record_size

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    removed_packs: list[int] = field(default_factory=list)
    truncated_bytes: int = 0
    missing_packs: list[int] = field(default_factory=list)
    pending_resolved: int = 0
    dropped_packs: int = 0
    log_replayed: int = 0  # bytes of pack tails written back from the sync log (not damage: see _synclog.py)
    flushed_after: str = ""  # the pid of a writer that did not close the store, whose packs were flushed

    @property
    def clean(self) -> bool:
        return not (self.removed_packs or self.truncated_bytes or self.missing_packs or self.pending_resolved
                    or self.dropped_packs)

    def describe(self) -> str:
        """One phrase for what was repaired, "" if nothing (a mount logs it in its recovery line)."""
        parts = []
        if self.truncated_bytes:
            parts.append(f"truncated {self.truncated_bytes} unreferenced bytes from pack tails")
        if self.removed_packs:
            parts.append(f"removed {len(self.removed_packs)} unregistered pack(s)")
        if self.dropped_packs:
            parts.append(f"forgot {self.dropped_packs} wholly dead pack(s) gc had removed")
        if self.pending_resolved:
            parts.append(f"released {self.pending_resolved} chunk(s) written but never committed")
        if self.missing_packs:
            parts.append(f"{len(self.missing_packs)} pack(s) MISSING (run 'chunkfs fsck')")
        return ", ".join(parts)


def recover(store, left_by: str = "") -> RecoveryReport:
    """Repair what a crash left; ``left_by`` is the pid of a writer that did not close the store ("" if none)."""
    report = RecoveryReport()
    packs = store.packs
    if left_by:
        packs.backend.sync_all()
        report.flushed_after = left_by
        log.info("recovery: the last writer (pid %s) did not close the store; flushed the packs it may have "
                 "left unflushed", left_by)
    report.log_replayed = synclog.replay(store)
    with store.index.read() as txn:
        registered = {ix.KEYPACK.unpack(k)[0]: ix.PACK.unpack(v) for k, v in txn.cursor(db=store.index.packs)}
    on_disk = set(packs.existing())
    for pack in sorted(on_disk - registered.keys()):
        log.warning("removing pack %08x that no commit refers to (left by an interrupted write)", pack)
        packs.remove(pack)
        report.removed_packs.append(pack)
    short = set()
    gone = [pack for pack, (end, live, dead) in registered.items()
            if pack not in on_disk and live == 0 and end - HEADER_SIZE == dead]
    if gone:  # gc removed a wholly dead pack and its unlink reached the disk before the commit dropping it
        store.write_txn(lambda txn: (_drop_packs(store, txn, gone), []), frees=True)
        report.dropped_packs += len(gone)
    for pack, (end, _, _) in sorted(registered.items()):
        if pack in gone:
            continue
        if pack not in on_disk:
            log.error("pack %08x is missing: run 'chunkfs fsck'", pack)
            report.missing_packs.append(pack)
            continue
        size = packs.size(pack)
        if size > end:
            packs.truncate(pack, end)
            report.truncated_bytes += size - end
        elif size < end:  # appending there would write over what the index still points at
            log.error("pack %08x is truncated (%d of %d bytes): run 'chunkfs fsck'", pack, size, end)
            short.add(pack)
    report.pending_resolved = store.write_txn(lambda txn: (_resolve_pending(store, txn), []))
    last = max((p for p in registered if p in on_disk and p not in short), default=None)
    if last is not None and packs.can_resume(last):
        packs.start(last)
        if packs.needs_roll():
            packs.retire_active()  # full: the next put allocates a new pack
    if not report.clean:  # debug: a mount sums recovery up in one INFO line (chunkfs/fs/recovery.py)
        log.debug("recovery: %s", report)
    return report


def _drop_packs(store, txn, packs: list[int]) -> None:
    for pack in packs:
        txn.delete(ix.KEYPACK.pack(pack), db=store.index.packs)


def _resolve_pending(store, txn) -> int:
    """Turn every pending record into dead space (or drop it, if it did get committed)."""
    resolved = 0
    with txn.cursor(db=store.index.pending) as cur:
        items = list(cur)
    for key, value in items:
        pack, rec_offset = ix.KEYPENDING.unpack(key)
        chunk, length = ix.PENDING.unpack(value)
        loc = Location(pack, rec_offset + RECORD.size, length)
        rec = get_record(txn, store.index, chunk)
        committed = rec is not None and rec.location == loc
        if not committed and txn.get(ix.KEYPACK.pack(pack), db=store.index.packs) is not None:
            adjust_pack(txn, store.index.packs, pack, dead=record_size(length))
        txn.delete(key, db=store.index.pending)
        resolved += 1
    return resolved
