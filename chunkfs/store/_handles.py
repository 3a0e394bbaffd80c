"""What an open ChunkStore holds (its lock, LMDB index, pack files), and one open store per directory per process.

A Python user expects an object that holds files open to let go of them
when it is dropped, and a second open in the same program to say so rather
than blame "another process".  So:

* ``StoreHandles`` holds everything a store must close, apart from the store
  object.  The store closes it through a ``weakref.finalize``: on close(),
  when the store is garbage-collected unclosed, or at interpreter exit.  A
  finalizer over the store itself would keep it alive forever.
* A store directory is open at most once per process (LMDB cannot open one
  environment twice in a process either, and says so in words that read
  like damage).  A second open is refused as "already open in this
  process", after one garbage collection: a store dropped inside a
  reference cycle is only waiting for the collector, which closes it.
* The writer's lock is an exclusive ``flock`` on ``STORE/lock``, which then
  holds the writer's pid for other processes' messages.  A clean close empties
  it, so the next writer that finds a pid there knows its predecessor died
  (``kill -9``, a crash) and may have left pack bytes unflushed: recovery
  flushes them before the index is flushed again (_recovery.py).  The mark
  need not survive power loss: that loses the unflushed bytes with it.
"""

from __future__ import annotations

import fcntl
import gc
import os
import threading
import weakref

from ..errors import StoreError, StoreLockedError
from . import _synclog as synclog

LOCK_NAME = "lock"
ALREADY_OPEN_HERE = "store is already open in this process (close the other ChunkStore first, or use it)"

_open_here: dict[tuple[int, int], "StoreHandles"] = {}
_open_here_lock = threading.RLock()  # re-entered when a collection inside it closes a dropped store


class StoreHandles:
    """The lock descriptor, index and packs of one open store; the store fills in index and packs."""

    def __init__(self, path: str, readonly: bool):
        self.path = path
        self.readonly = readonly
        self.lock_fd: int | None = None
        self.index = None  # _index.Index, once opened
        self.packs = None  # _packs.PackFiles, once opened
        self._key: tuple[int, int] | None = None
        self.left_by: str = ""  # the pid a writer that did not close cleanly left in the lock file

    def acquire(self) -> None:
        """Claim the directory for this process, and its lock unless read-only; StoreLockedError if taken."""
        st = os.stat(self.path)
        key = (st.st_dev, st.st_ino)
        if key in _open_here:
            gc.collect()  # a store dropped in a reference cycle closes itself now
        with _open_here_lock:
            if key in _open_here:
                raise StoreLockedError(f"{self.path}: {ALREADY_OPEN_HERE}")
            _open_here[key] = self
            self._key = key
        if not self.readonly:
            self.lock_fd, self.left_by = take_lock(self.path)

    def close_when_dropped(self, owner: object) -> weakref.finalize:
        """A finalizer that closes these handles (syncing a writable store) when ``owner`` is collected."""
        return weakref.finalize(owner, self.close, sync=not self.readonly)

    def close(self, sync: bool = False) -> None:
        """Sync (if asked), close packs and index, release the lock; safe to call on a half-opened store."""
        try:
            if sync and self.packs is not None and self.index is not None:
                self.packs.sync()
                synclog.clear(self.index)  # a store closed cleanly leaves nothing to replay
                self.index.sync()
                if self.lock_fd is not None:
                    os.ftruncate(self.lock_fd, 0)  # closed cleanly: the next writer need not flush after us
        finally:
            if self.packs is not None:
                self.packs.close()
                self.packs = None
            if self.index is not None:
                self.index.close()
                self.index = None
            if self.lock_fd is not None:
                os.close(self.lock_fd)  # closing the descriptor drops the flock
                self.lock_fd = None
            with _open_here_lock:
                if self._key is not None and _open_here.get(self._key) is self:
                    del _open_here[self._key]
                self._key = None


def take_lock(path: str) -> tuple[int, str]:
    """Take the store's writer lock and write our pid into it; StoreLockedError naming the holder.

    Returns the descriptor and the pid a writer that did not close cleanly left there ("" if none)."""
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if holder == str(os.getpid()):  # a descriptor this process opened without a ChunkStore
            raise StoreLockedError(f"{path}: {ALREADY_OPEN_HERE}") from None
        raise StoreLockedError(f"{path}: store is in use by another process (pid {holder})") from None
    except BaseException:
        os.close(fd)
        raise
    left_by = os.pread(fd, 32, 0).decode(errors="replace").strip()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, left_by


def weak_callback(obj, method):
    """A callback that calls ``method(obj)`` without keeping ``obj`` alive (False once it is gone)."""
    ref = weakref.ref(obj)

    def call(*args):
        target = ref()
        return method(target, *args) if target is not None else False

    return call
