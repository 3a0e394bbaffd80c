"""Dead records whose disk blocks have yet to go back to the medium: punched at once, or later in the background.

A record dies in a commit (the last reference to its chunk went).  Its blocks
are given back by punching a hole over its bytes (``PackFiles.punch``), one
``fallocate`` per record.  Overwriting a 1 GiB file kills ~32,000 records at
once; punching them inside the commit made the writer's fsync wait for all
of them (about 0.4 ms each here, more than the write itself), so while a
background worker runs (a mounted filesystem), the deaths are only queued
here and the worker gives the blocks back between its looks at the garbage.

The worker also skips punching a pack nothing in it is alive any more: gc
removes such a pack whole (one unlink instead of thousands of punches).
Without a worker (the library), every death is punched at once, as before.

On a full disk (the store's low-space mode) deaths are punched at once
again, and what is queued is punched by the commit that freed it: the space
must come back before the next write, not at the worker's next look.

Nothing here needs to survive a crash: a dead record's bytes are already
counted as dead in its pack's index record, so gc gives them back in any case;
the queue only decides *when* the blocks come back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import ChunkfsError, PackMissingError
from ._packs import Location

log = logging.getLogger(__name__)

KICK_BYTES = 256 * 1024 * 1024  # this much queued: wake the worker rather than wait for its interval


class DeadSpace:
    """Where the ledger reports a record's death (``died``); see the module docstring."""

    def __init__(self, punch: Callable[[Location], None], urgent: Callable[[], bool] = lambda: False):
        self._punch = punch
        self._urgent = urgent  # true while the disk is full: space must come back at once
        self._lock = threading.Lock()
        self._queue: list[Location] = []
        self._queued_bytes = 0
        self._wake: Callable[[], None] | None = None  # set while a worker takes the punching

    @property
    def deferred(self) -> bool:
        return self._wake is not None

    def died(self, loc: Location) -> None:
        """A record died in a commit that just ended: punch it now, or queue it for the worker."""
        if self._wake is None or self._urgent():
            self._punch_logged(loc)
            return
        with self._lock:
            self._queue.append(loc)
            self._queued_bytes += loc.length
            kick = self._queued_bytes >= KICK_BYTES
            if kick:
                self._queued_bytes = 0
        if kick:
            self._wake()

    def defer(self, wake: Callable[[], None]) -> None:
        """From now on queue deaths; ``wake()`` asks the worker to come and :meth:`drain` soon."""
        self._wake = wake

    def stop_deferring(self, skip_pack: Callable[[int], bool] = lambda pack: False) -> int:
        """Punch deaths at once again, after draining what is queued."""
        self._wake = None
        return self.drain(skip_pack)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def drain(self, skip_pack: Callable[[int], bool] = lambda pack: False,
              stop: Callable[[], bool] = lambda: False) -> int:
        """Punch every queued record, in pack order, except in packs ``skip_pack`` says gc will remove.

        Returns how many were punched; ``stop()`` ends early (the rest stays queued).
        """
        with self._lock:
            queue, self._queue, self._queued_bytes = self._queue, [], 0
        queue.sort(key=lambda loc: (loc.pack, loc.offset))
        punched = 0
        skipping: dict[int, bool] = {}
        for i, loc in enumerate(queue):
            if stop():
                with self._lock:
                    self._queue[:0] = queue[i:]
                break
            if loc.pack not in skipping:
                skipping[loc.pack] = skip_pack(loc.pack)
            if not skipping[loc.pack]:
                self._punch_logged(loc)
                punched += 1
        return punched

    def _punch_logged(self, loc: Location) -> None:
        """Best effort: a pack removed meanwhile, or a medium that cannot punch, keeps its bytes until gc."""
        try:
            self._punch(loc)
        except PackMissingError:
            pass  # gc removed the pack meanwhile: its blocks are back already
        except ChunkfsError as exc:
            log.warning("cannot give back the space of a dead record in pack %08x: %s", loc.pack, exc)
