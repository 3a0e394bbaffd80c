"""One error hierarchy for the whole project, and the single place it maps to errno.

Every layer raises a subclass of :class:`ChunkfsError`.  The FUSE adapter turns
any of them into a ``FUSEError`` through :func:`errno_for`; the CLI prints
``str(exc)`` on one line and exits non-zero.  Keeping the mapping here means a
new error class only has to pick its errno once.
"""

from __future__ import annotations

import errno as _errno


class ChunkfsError(Exception):
    """Base class: a failure the user can be told about in one line."""

    refusal = False  # True: an ordinary answer to a request (like ENOENT), not a failure worth logging

    errno: int = _errno.EIO


class StoreError(ChunkfsError):
    """Something is wrong with the store directory as a whole."""


class NotAStoreError(StoreError):
    errno = _errno.EINVAL


class StoreExistsError(StoreError):
    errno = _errno.EEXIST


class FormatVersionError(StoreError):
    errno = _errno.EINVAL


class SettingsError(StoreError):
    """The settings file is missing, unreadable or holds invalid values."""

    errno = _errno.EINVAL


class StorePermissionError(StoreError):
    """This user may not read (or write) the store: it belongs to someone else."""

    errno = _errno.EACCES


class StoreLockedError(StoreError):
    errno = _errno.EBUSY


class ReadOnlyError(StoreError):
    errno = _errno.EROFS


class IndexCorruptError(StoreError):
    """The LMDB environment cannot be opened or holds malformed records."""

    errno = _errno.EIO


class StoreFullError(StoreError):
    errno = _errno.ENOSPC


class FileTooLargeError(ChunkfsError):
    """A write or truncate would make a file larger than the store's maximum file size."""

    errno = _errno.EFBIG
    refusal = True


class PackMissingError(StoreError):
    """A pack the store names is not on its medium (removed, or lost with the disk)."""


class PackIOError(StoreError):
    """The medium holding the packs failed a read or a write."""


class ObjectStoreError(StoreError):
    """The object store holding the packs refused a request or could not be reached (the message says which)."""


class FileNotFoundInStore(ChunkfsError, KeyError):
    """No file with that id is in the store."""

    errno = _errno.ENOENT

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "file not found"


class ChunkCorruptError(ChunkfsError):
    """A chunk failed verification, is truncated, or is missing.

    Wrong bytes are never returned: the read fails instead, naming the file and
    the chunk address so an operator can find it with ``chunkfs fsck``.
    """

    errno = _errno.EIO

    def __init__(self, address: bytes, reason: str, file_id: object = None, where: str | None = None):
        self.address = address
        self.reason = reason
        self.file_id = file_id
        self.where = where  # set by a layer that knows more than the file id, e.g. "inode 5 (/a/b)"
        super().__init__(address, reason, file_id)

    def __str__(self) -> str:
        if self.where:
            where = f" of {self.where}"
        else:
            where = f" of file {self.file_id!r}" if self.file_id is not None else ""
        what = f"chunk {self.address.hex()}" if self.address else "a chunk"  # no address: its record is gone
        return f"{what}{where} is corrupt: {self.reason}"

    def located(self, where: str) -> "ChunkCorruptError":
        """The same error, naming the file as ``where``."""
        return ChunkCorruptError(self.address, self.reason, self.file_id, where)


class ChunkFreedError(ChunkCorruptError):
    """A chunk a read had located was freed before its bytes were read: the file changed under the read.

    Another thread replaced or deleted the file between the read's look at its
    manifest and its ``pread``, and the chunk's space was given back.  Not
    damage: the store reads such a file again, as it is now.  A subclass of
    ChunkCorruptError so that code knowing only that class still never takes
    the bytes it did not get for right ones.
    """


class WouldBlock(ChunkfsError):
    """A call asked not to wait (``nowait``) would have: for the disk, another thread, or long work.

    Never a failure: the FUSE event loop tries each data call at once and,
    on this, repeats it in a worker thread (FileData decides, openfile.py).
    """

    errno = _errno.EAGAIN


class InvalidArgument(ChunkfsError):
    errno = _errno.EINVAL


class FSError(ChunkfsError):
    """A filesystem-level failure with an explicit errno (ENOENT, EEXIST, ...)."""

    def __init__(self, err: int, message: str = ""):
        self.errno = err
        super().__init__(message or _errno.errorcode.get(err, str(err)))


class PathError(FSError):
    """A filesystem error about one path of the mount (``path``: bytes, from its root), for the control channel."""

    def __init__(self, err: int, path: bytes, message: str = ""):
        self.path = path
        super().__init__(err, message or _errno.errorcode.get(err, str(err)))


class MountError(ChunkfsError):
    """Mounting or unmounting failed; the message says why."""


def errno_for(exc: BaseException) -> int:
    """Map any exception to the errno the kernel should see.

    Unknown exceptions become EIO: a FUSE daemon must never let an exception
    escape a handler (pyfuse3 would die), and EIO is the honest answer for
    "something broke that we did not foresee".
    """
    if isinstance(exc, ChunkfsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, MemoryError):
        return _errno.ENOMEM
    return _errno.EIO
