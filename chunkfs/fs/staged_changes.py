"""What chunking behind the writer (fs/behind.py) adds to an open file's data path: its staged record.

``FileData`` (openfile.py) mixes this in; it works on FileData's state under
FileData's lock.  The record names the file's changes at a close or an fsync:
``stage`` makes it, ``commit_staged`` commits exactly what it names (the
committer thread's work), ``adopt_staged`` takes it up again after a crash.
A stream that grows big moves into the overlay here, uncommitted, since in
this mode only the overlay is staged.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import WouldBlock
from .behind import StagedState
from .intervals import IntervalSet
from .rechunk import BaseEdit

# A file's changes are staged only when at least this many bytes changed: a commit of less costs about what
# the staging file's flush and the record cost (a database's fsync commits at once).
STAGE_MIN = 1024 * 1024


class StagedChanges:
    """The staged-record methods of FileData (see the module docstring)."""

    def stage(self, record: Callable[[StagedState], None], durable: bool, nowait: bool = False) -> bool:
        """Chunking behind the writer: hand this file's changes to ``record`` instead of committing them.

        False (nothing done: commit instead) unless the file is big, not
        streaming, and at least STAGE_MIN of its bytes changed.  With ``durable`` the staging file is flushed
        first (fsync), so the record never reaches the disk before the bytes
        it names.  ``record`` runs under this file's lock, so it is ordered
        with the commit that deletes the record.  With ``nowait``,
        WouldBlock rather than wait for the lock or flush the disk.
        """
        with self._held(nowait):
            if self._stream is not None or self._small() or sum(hi - lo for lo, hi in self._dirty) < STAGE_MIN:
                return False
            if durable and self._staging_fd is not None:
                if nowait:
                    raise WouldBlock(f"inode {self.ino}: staging a file durably flushes the disk")
                os.fdatasync(self._staging_fd)
            state = StagedState(self._size, self._base_limit, self._committed, list(self._dirty))
            if durable or state != self._staged_as:  # else nothing changed since it was recorded
                record(state)
                self._recorded, self._staged_as = intervals_of(state.ranges), state
            return True

    @property
    def recorded(self) -> bool:
        """Whether a live staged record names this file's changes (a failed commit leaves it in place)."""
        with self._lock:
            return self._staged_as is not None

    def commit_staged(self) -> bool:
        """Commit what the live staged record names (the committer's work); False if there is none."""
        with self._lock:
            if self._recorded is None:
                return False
            self._commit_recorded()
            return True

    def _commit_recorded(self) -> None:
        """Commit the file as its staged record names it, and nothing written since.

        The record was made at a close or an fsync, between two calls; a
        commit of the overlay as it is now could fall between two requests of
        one write(2) (the kernel splits a big one) and keep half of it after a
        crash.  Changes made since stay in the overlay, over the new base.
        """
        state, recorded = self._staged_as, self._recorded

        def read(start: int, end: int) -> bytes | memoryview:
            return self._read_merged(start, end, recorded, state.base_limit)

        self._committing = state.size
        try:
            self._commit_edit(BaseEdit(self.store, self.file_id, recorded, state.size, state.base_limit,
                                       self._committed, read), state.size, self.on_commit)
        finally:
            self._committing = None
        later = IntervalSet()
        for lo, hi in self._dirty:
            for start, end, named in recorded.split(lo, hi):
                if not named:
                    later.add(start, end)
        self._dirty = later
        self._committed = self._base_limit = state.size  # a truncate below it since would have committed all
        self._recorded = self._staged_as = None
        if not self._is_dirty() and self._staging_fd is not None:
            os.ftruncate(self._staging_fd, 0)

    def adopt_staged(self, state: StagedState) -> None:
        """Take up the changes a staged record left after a crash (fs/behind.py), to commit them.

        Raises FileNotFoundError if the record names changed bytes and the staging file is gone.
        """
        with self._lock:
            if state.ranges:
                self._staging_fd = os.open(self._staging_path, os.O_RDWR | os.O_CLOEXEC)
            for lo, hi in state.ranges:
                self._dirty.add(lo, hi)
            self._size, self._base_limit = state.size, min(state.base_limit, self._committed)
            self._recorded, self._staged_as = intervals_of(state.ranges), state

    def _stream_to_overlay(self) -> None:
        """Chunking behind the writer: a small file's stream that grows big moves into the overlay, uncommitted.

        It holds at most SMALL_FILE bytes, so the move is a read of those and a pwrite.
        """
        stream = self._stream
        data = self._read_streamed(stream.start, stream.end)
        self.store.release(stream.refs)
        self._stream = None
        self._write_overlay(stream.start, data)


def intervals_of(ranges: list[tuple[int, int]]) -> IntervalSet:
    intervals = IntervalSet()
    for lo, hi in ranges:
        intervals.add(lo, hi)
    return intervals
