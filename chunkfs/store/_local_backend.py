"""The pack backend on a local disk: one file per pack, ``<id:08x>.pack`` in one directory.

The only module that opens pack files.  Descriptors are cached (a read is
one ``pread``), writes are ``pwritev`` of the caller's buffers without
copying, dead bytes are punched out with ``fallocate``, and a removed pack's
descriptor stays open for a grace period so reads already on their way
finish with the right bytes (see :meth:`LocalBackend.remove`).  Every
``OSError`` is turned into a chunkfs error here (see _backend.py).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterable, Sequence

from ..errors import PackIOError, PackMissingError, StoreFullError, WouldBlock
from ..linux_calls import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate, start_writeback, syncfs
from ._backend import IOV_BATCH, REMOVED_PACK_GRACE, Buffer, PackBackend

PUNCH_ALIGN = 4096
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _medium_error(exc: OSError, pack: int | None, doing: str) -> Exception:
    """The chunkfs error for an OSError of pack IO."""
    what = f"pack {pack:08x}" if pack is not None else "pack directory"
    if exc.errno in FULL_ERRNOS:
        return StoreFullError(f"no space left for chunk data ({exc.strerror})")
    if exc.errno == errno.ENOENT:
        return PackMissingError(f"{what} is missing")
    return PackIOError(f"{doing} {what}: {exc.strerror or exc}")


class LocalBackend(PackBackend):
    """Packs as files in ``directory``; see the module docstring."""

    logged_sync = True  # a pack file can be rewritten in place after a restart (_synclog.py)

    def __init__(self, directory: str, readonly: bool = False):
        self.dir = directory
        self.readonly = readonly
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        self._removed: list[tuple[float, int, int]] = []  # (when, pack, fd) of removed packs, see remove()
        self._new_entries: set[int] = set()  # packs created since the last sync
        if not readonly:
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, pack: int) -> str:
        """The file holding ``pack`` (for tests and operators; the store never asks)."""
        return os.path.join(self.dir, f"{pack:08x}.pack")

    def _fd(self, pack: int, create: bool = False) -> int:
        fd = self._fds.get(pack)
        if fd is not None:
            return fd
        flags = (os.O_RDONLY if self.readonly else os.O_RDWR) | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.path(pack), flags, 0o600)
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot open") from None
        with self._lock:
            if pack in self._fds:
                os.close(fd)
                return self._fds[pack]
            self._fds[pack] = fd
        return fd

    # -- writing --------------------------------------------------------------

    def create(self, pack: int) -> int:
        size = self.size(pack, self._fd(pack, create=True))
        if size == 0:
            with self._lock:
                self._new_entries.add(pack)  # its directory entry is made durable by the next sync
        return size

    def write(self, pack: int, offset: int, buffers: Sequence[Buffer]) -> None:
        fd = self._fd(pack)
        views = [memoryview(b).cast("B") for b in buffers]
        try:
            while views:
                written = os.pwritev(fd, views[:IOV_BATCH], offset)
                offset += written
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot write") from None

    def writeback(self, pack: int, offset: int, length: int) -> None:
        start_writeback(self._fd(pack), offset, length)

    def seal(self, pack: int) -> None:
        pass  # a file needs no upload; it stays readable (and, after a restart, writable) as it is

    def sync_all(self) -> None:
        """One ``syncfs`` of the packs' filesystem (it costs what is dirty there, not what is stored);
        where there is none, every pack file is flushed."""
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs is not None and syncfs(dfd) == 0:
                return
        finally:
            os.close(dfd)
        for pack in self.list():
            try:
                fd = os.open(self.path(pack), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise _medium_error(exc, pack, "cannot sync") from None
            finally:
                os.close(fd)

    def sync(self, packs: Iterable[int]) -> None:
        with self._lock:
            fds = [(p, self._fds[p]) for p in packs if p in self._fds]
            new, self._new_entries = self._new_entries, set()
        try:
            for pack, fd in fds:
                os.fdatasync(fd)
            if new:  # new packs' directory entries too (only they: a directory fsync is a journal commit)
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            with self._lock:
                self._new_entries |= new  # not made durable: the next sync tries again
            raise _medium_error(exc, None, "cannot sync") from None

    def patch(self, pack: int, offset: int, data: Buffer) -> None:
        fd = self._fd(pack)
        self.write(pack, offset, [data])
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot sync") from None

    def truncate(self, pack: int, end: int) -> None:
        fd = self._fd(pack)
        try:
            os.ftruncate(fd, end)
            os.fdatasync(fd)
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot truncate") from None

    def punch(self, pack: int, offset: int, length: int) -> bool:
        """Only whole blocks inside the range are punched; without hole punching, nothing is."""
        start = -(-offset // PUNCH_ALIGN) * PUNCH_ALIGN
        end = (offset + length) // PUNCH_ALIGN * PUNCH_ALIGN
        if end <= start or fallocate is None:
            return False
        return fallocate(self._fd(pack), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start) == 0

    # -- reading --------------------------------------------------------------

    def read(self, pack: int, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd(pack), length, offset)
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot read") from None

    def readv(self, pack: int, offset: int, buffers: Sequence[memoryview], nowait: bool = False) -> int:
        fd = self._fd(pack)
        if not nowait:
            try:
                return os.preadv(fd, buffers, offset)
            except OSError as exc:
                raise _medium_error(exc, pack, "cannot read") from None
        try:
            got = os.preadv(fd, buffers, offset, os.RWF_NOWAIT)
        except BlockingIOError:
            got = -1
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # EINVAL, EOPNOTSUPP: no RWF_NOWAIT here
                raise _medium_error(exc, pack, "cannot read") from None
            got = -1
        if got != sum(len(b) for b in buffers):  # part of it is not in memory (or the pack is short)
            raise WouldBlock(f"pack {pack:08x} at {offset}: not all in the page cache")
        return got

    def size(self, pack: int, fd: int | None = None) -> int:
        try:
            return os.fstat(self._fd(pack) if fd is None else fd).st_size
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot stat") from None

    def usage(self, pack: int) -> tuple[int, int]:
        """A stat of the path, not of a cached descriptor: gc asks this of many packs and should not open them."""
        try:
            st = os.stat(self.path(pack))
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot stat") from None
        return st.st_size, st.st_blocks * 512

    def list(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except OSError as exc:
            raise _medium_error(exc, None, "cannot list") from None
        ids = []
        for name in names:
            if name.endswith(".pack") and len(name) == 13:
                try:
                    ids.append(int(name[:8], 16))
                except ValueError:
                    continue
        return sorted(ids)

    def disk_bytes(self) -> int:
        total = 0
        for pack in self.list():
            try:
                total += os.stat(self.path(pack)).st_blocks * 512
            except FileNotFoundError:
                pass
        try:
            return total + os.stat(self.dir).st_blocks * 512
        except FileNotFoundError:
            return total

    # -- removal --------------------------------------------------------------

    def remove(self, pack: int) -> None:
        """Unlink a pack; its descriptor stays open for reads already on their way for a grace period.

        Closing it at once would fail such a read or, worse, let the
        descriptor number be reused by another file (bytes of an unlinked
        file stay readable through an open descriptor).
        """
        with self._lock:
            fd = self._fds.get(pack)
            if fd is not None and all(r[2] != fd for r in self._removed):  # removing twice closes once
                self._removed.append((time.monotonic(), pack, fd))
        try:
            os.unlink(self.path(pack))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _medium_error(exc, pack, "cannot remove") from None

    def reap(self, grace: float = REMOVED_PACK_GRACE) -> None:
        """Close descriptors of packs removed more than ``grace`` seconds ago (frees their space)."""
        now = time.monotonic()
        with self._lock:
            old = [r for r in self._removed if now - r[0] >= grace]
            self._removed = [r for r in self._removed if now - r[0] < grace]
            for _, pack, fd in old:
                if self._fds.get(pack) == fd:
                    del self._fds[pack]
        for _, _, fd in old:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
            self._removed = []
        for fd in fds:
            os.close(fd)
