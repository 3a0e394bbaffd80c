"""A little disk space held back, so that on a full disk deletes can still commit.

LMDB needs free pages on disk to commit any transaction, even one that only
frees space.  The reserve file (1% of the filesystem, 512 KiB to 2 MiB, never
more than a tenth of it) is given up the first time a metadata commit fails
for lack of space, and taken again when the store is next opened, garbage-
collected, or a delete leaves room to spare.  Only the store calls this.
"""

from __future__ import annotations

import os

RESERVE_NAME = "reserve"
RESERVE_MIN, RESERVE_MAX = 512 * 1024, 2 * 1024 * 1024  # LMDB copies every page a commit touches


def take(store_dir: str) -> bool:
    """Make sure the reserve exists; False if there is not room enough for it."""
    path = os.path.join(store_dir, RESERVE_NAME)
    if os.path.exists(path):
        return True
    st = os.statvfs(store_dir)
    fs_size = st.f_blocks * st.f_frsize
    size = min(max(fs_size // 100, RESERVE_MIN), RESERVE_MAX, fs_size // 10)
    if st.f_bavail * st.f_frsize < 2 * size or size < 4096:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        os.unlink(path)
        return False
    os.close(fd)
    return True


def release(store_dir: str) -> bool:
    """Give the reserve up; False if it was already gone."""
    try:
        os.unlink(os.path.join(store_dir, RESERVE_NAME))
    except FileNotFoundError:
        return False
    return True


def held_bytes(store_dir: str) -> int:
    """Disk space the reserve holds now (0 while it is given up)."""
    try:
        return os.stat(os.path.join(store_dir, RESERVE_NAME)).st_blocks * 512
    except FileNotFoundError:
        return 0
