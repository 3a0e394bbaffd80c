"""Linux calls the os module does not wrap, loaded once from libc.

Each is an optimisation only: where libc lacks one (or the call fails) the
name is None or the call returns -1, and the caller does without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02  # linux/falloc.h
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def _open_libc() -> ctypes.CDLL | None:
    try:  # find_library runs ldconfig: once per process, not once per function
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_libc = _open_libc()


def _load_libc(name: str, argtypes: tuple) -> Callable[..., int] | None:
    """A libc function, or None where there is none."""
    fn = getattr(_libc, name, None) if _libc is not None else None
    if fn is None:
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn  # a failure returns -1 and only costs the optimisation


# fallocate(2), to punch out dead bytes (a failure such as EOPNOTSUPP: they wait for gc)
fallocate = _load_libc("fallocate", (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64))
# sync_file_range(2), to start writing bytes back early so that a later fdatasync has little left
sync_file_range = _load_libc("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint))
# syncfs(2), to flush one filesystem in one call that costs what is dirty there
syncfs = _load_libc("syncfs", (ctypes.c_int,))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes at ``offset`` back to the disk, without waiting for them."""
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
