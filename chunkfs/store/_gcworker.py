"""Garbage collection in the background of a mounted filesystem.

Deleting a file only drops references in one LMDB transaction, so ``rm -rf``
returns as fast as the namespace changes; the chunks nobody references any
more become *dead space* in their packs.  This worker gives that space back
while the filesystem keeps serving: every ``interval`` seconds it reads the
per-pack accounting (a handful of LMDB records and a stat of each pack that
might qualify, no data), and once the disk bytes a gc would give back add up
to ``min_garbage`` it runs :meth:`ChunkStore.gc` at ``min_dead_fraction``.

Why it does not block other operations: ``gc`` compacts one pack at a time,
holding the store's lock only for that pack; between packs this worker
pauses briefly so that waiting commits get the lock.  Reads never take the
store's lock, and a pack that gc removes stays readable through its open
descriptor for a grace period (see ``PackFiles.remove``), so a read that
located a chunk just before it moved still gets its bytes.

It follows the same rule as ``chunkfs gc`` (see _compaction.py): a pack is
rewritten only when at least half the disk blocks it holds would come back,
so the worker never writes more than it frees.  A pack that is only a little
dead costs little: its dead records are punched out soon after they die.

Punching is this worker's job too while it runs (_deadspace.py): a commit
that kills thousands of records (an overwrite of a big file) only queues
them, and the worker punches them before it looks at the garbage, except in
packs where nothing is alive any more, which its gc run removes whole.  So
the writer's commit does not wait for the disk to give blocks back.

So is dropping the references of *retired* manifests: a commit that
replaces or deletes a big file only sets its manifest aside
(``ManifestIndex.retire``), and this worker drops its references, a page
per transaction, once nothing has been read or written for
``IDLE_BEFORE_DROPPING`` seconds (at once when the disk is nearly full); the chunks that
die then are punched or compacted like any others.  What is left at
unmount stays retired in the index, for the next mount's worker or
``chunkfs gc``.

Compression behind the writers (_recompress.py) is this worker's job too,
on a store opened with ``compress="behind"``: once nothing has been read or
written for ``IDLE_BEFORE_COMPRESSING`` seconds it rewrites the sealed packs
with records waiting for compression, one at a time with a pause between
two, and stops between two packs as soon as a read or a write comes; after
``IDLE_BEFORE_SEALING`` seconds of quiet it seals and rewrites the active
pack too, if ``SEAL_WAITING_MIN`` bytes wait in it (else only after
``IDLE_BEFORE_SEALING_LITTLE``).  It runs in this thread, after gc, so the
two never rewrite the same pack at once.

Stopping (at unmount) waits for the pack in progress, never abandons one
half-way; a crash half-way is covered by the store's recovery (gc copies are
registered only by the commit that moves them).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..errors import ChunkfsError, StoreFullError
from . import _index as ix
from ._compaction import DEFAULT_MIN_DEAD_FRACTION, reclaimable_bytes
from ._recompress import waiting_entries

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0  # seconds between looks at the pack accounting
DEFAULT_MIN_GARBAGE = 4 * 1024 * 1024  # reclaimable disk bytes worth a gc run
PAUSE_BETWEEN_PACKS = 0.02  # lets commits waiting for the store's lock run between two packs
BACKOFF_AFTER_FAILURE = 60.0
IDLE_BEFORE_DROPPING = 1.0  # seconds without a read or a write before retired manifests are dropped ...
TIGHT_FREE_FRACTION = 0.05  # ... unless the disk has less than this free: then at once
IDLE_BEFORE_COMPRESSING = 2.0  # seconds without a read or a write before compression behind runs
IDLE_BEFORE_SEALING = 30.0  # ... and before it seals the active pack to compress what waits in it,
SEAL_WAITING_MIN = 8 * 1024 * 1024  # ... if that much waits there,
IDLE_BEFORE_SEALING_LITTLE = 600.0  # ... or whatever waits there after this long


class _Stopped(Exception):
    """Raised from gc's progress callback to end a run between two packs."""


class BackgroundGC:
    """A worker thread running :meth:`ChunkStore.gc` whenever enough space is dead."""

    def __init__(self, store, interval: float = DEFAULT_INTERVAL, min_garbage: int = DEFAULT_MIN_GARBAGE,
                 min_dead_fraction: float = DEFAULT_MIN_DEAD_FRACTION):
        self.store = store
        self.interval = interval
        self.min_garbage = min_garbage
        self.min_dead_fraction = min_dead_fraction
        self.runs = 0
        self.compressed = 0  # packs rewritten by compression behind the writers, over all runs
        self.reclaimed = 0  # disk bytes given back, over all runs
        self.moved = 0  # bytes of live records copied, over all runs
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chunkfs-gc", daemon=True)

    def start(self) -> "BackgroundGC":
        self.store.dead_space.defer(self.kick)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the pack in progress, then end the thread (at unmount, before the store closes)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("background gc did not stop within %.0f s", timeout)
        # what is still queued is given back now, except in packs nothing lives in: the next gc removes them
        self.store.dead_space.stop_deferring(self._removed_whole)

    def kick(self) -> None:
        """Look at the garbage now rather than at the next interval (after a big delete)."""
        self._wake.set()

    # -- the thread ---------------------------------------------------------------

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            retired_left = self._drop_guarded()
            self._punch_guarded()
            wait = self.interval if self._run_guarded() else BACKOFF_AFTER_FAILURE
            if wait == self.interval and not self._compress_guarded():
                wait = BACKOFF_AFTER_FAILURE
            if retired_left:
                wait = min(wait, IDLE_BEFORE_DROPPING)  # back soon after the writers pause
            self.store.packs.reap()  # space of packs removed a while ago goes back to the disk

    def _drop_guarded(self) -> bool:
        """Drop retired manifests' references, a page per transaction, while the store is quiet (or the
        disk full); returns whether some are left for later."""
        try:
            while not self._stop.is_set() and self.store.retired_entries():  # a read: no write when none
                if self._idle_for() < IDLE_BEFORE_DROPPING and not self._space_is_tight():
                    return True
                self.store.drop_retired()
                self._stop.wait(PAUSE_BETWEEN_PACKS)
        except ChunkfsError as exc:
            log.error("background gc could not drop the references of replaced files: %s", exc)
        except Exception:  # noqa: BLE001 (the thread must survive; the references stay retired)
            log.exception("background gc could not drop the references of replaced files")
        return False

    def _space_is_tight(self) -> bool:
        """A full disk, or one with less than TIGHT_FREE_FRACTION free: retired space is wanted now."""
        if self.store.index.low_space:
            return True
        try:
            st = os.statvfs(self.store.path)
        except OSError:
            return False
        return st.f_bavail < st.f_blocks * TIGHT_FREE_FRACTION

    def _punch_guarded(self) -> None:
        try:
            if self.store.dead_space.drain(self._removed_whole, stop=self._stop.is_set):
                self.store.ensure_reserve()  # space came back: leave low-space mode if it was on
        except Exception:  # noqa: BLE001 (the thread must survive; the bytes stay counted as dead)
            log.exception("background gc could not give back dead records' space")

    def _run_guarded(self) -> bool:
        """One run; False after a failure (the thread must survive anything and back off)."""
        try:
            self.run_once()
        except _Stopped:
            pass
        except StoreFullError as exc:
            log.warning("background gc paused: %s", exc)
            return False
        except ChunkfsError as exc:
            log.error("background gc failed: %s", exc)
            return False
        except Exception:  # noqa: BLE001 (a crash here must not take the mount with it)
            log.exception("background gc failed")
            return False
        return True

    def _idle_for(self) -> float:
        return time.monotonic() - self.store.last_activity

    def _compress_guarded(self) -> bool:
        """Compress what waits if the store is quiet (_recompress.py); False after a failure."""
        if not self.store.codec.behind or self._idle_for() < IDLE_BEFORE_COMPRESSING:
            return True
        busy = lambda: self._stop.is_set() or self._idle_for() < IDLE_BEFORE_COMPRESSING  # noqa: E731
        try:
            report = self.store.compress_waiting(stop=busy, pause=PAUSE_BETWEEN_PACKS,
                                                 include_active=self._seal_active())
        except ChunkfsError as exc:
            log.error("compression behind the writers failed: %s", exc)
            return False
        except Exception:  # noqa: BLE001 (a crash here must not take the mount with it)
            log.exception("compression behind the writers failed")
            return False
        self.compressed += report["packs_rewritten"]
        if report["packs_rewritten"]:
            log.debug("compression behind: rewrote %d packs, %d chunks from %d to %d bytes",
                      report["packs_rewritten"], report["chunks_compressed"], report["bytes_before"],
                      report["bytes_after"])
        return not report["stopped_full"]

    def _seal_active(self) -> bool:
        """Whether the pass may seal the active pack to compress what waits in it: after
        IDLE_BEFORE_SEALING seconds of quiet if SEAL_WAITING_MIN bytes wait there, else only after
        IDLE_BEFORE_SEALING_LITTLE (a mount that writes a little now and then would otherwise seal a
        small pack at every pause: many small packs, each a file and a record)."""
        idle = self._idle_for()
        if idle < IDLE_BEFORE_SEALING:
            return False
        if idle >= IDLE_BEFORE_SEALING_LITTLE:
            return True
        with self.store.index.read() as txn:
            raw, _ = waiting_entries(self.store, txn).get(self.store.packs.active, (0, 0))
        return raw >= SEAL_WAITING_MIN

    def run_once(self) -> dict | None:
        """Compact if enough is dead; returns gc's report, or None if there was nothing to do."""
        if self.garbage_bytes() < self.min_garbage:
            return None
        report = self.store.gc(self.min_dead_fraction, progress=self._between_packs)
        self.runs += 1
        self.reclaimed += report["bytes_reclaimed"]
        self.moved += report["bytes_moved"]
        if report["packs_removed"]:
            log.debug("background gc: removed %d packs (%d rewritten), moved %d bytes, reclaimed %d bytes",
                      report["packs_removed"], report["packs_rewritten"], report["bytes_moved"],
                      report["bytes_reclaimed"])
        return report

    def _removed_whole(self, pack: int) -> bool:
        """Whether this worker's next gc run removes ``pack`` whole, so punching its dead records is wasted.

        True for a pack other than the active one with nothing alive in it
        that holds at least ``min_garbage`` bytes on the medium (so the run
        happens) and no pin points into (gc leaves those); such a pack is
        always worth compacting, and costs no copying.
        """
        pins = list(self.store.ledger.pins.values())
        if pack == self.store.packs.active or any(pin.location.pack == pack for pin in pins):
            return False
        with self.store.index.read() as txn:
            raw = txn.get(ix.KEYPACK.pack(pack), db=self.store.index.packs)
        if raw is None or ix.PACK.unpack(raw)[1] != 0:
            return False
        try:
            return self.store.packs.usage(pack)[1] >= self.min_garbage
        except ChunkfsError:
            return False

    def garbage_bytes(self) -> int:
        """Disk bytes a gc would give back now (cheap: no chunk data read)."""
        return reclaimable_bytes(self.store, self.min_dead_fraction)

    def _between_packs(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise _Stopped
        self._stop.wait(PAUSE_BETWEEN_PACKS)
