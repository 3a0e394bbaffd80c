"""The filesystem layer: namespace, open files and every operation, without pyfuse3.

``chunkfs.fuse_adapter`` is the only module that talks to the kernel; it
forwards each request to one :class:`FsCore` method.
"""

from .core import RENAME_EXCHANGE, RENAME_NOREPLACE, Caller, DirEntry, FsCore, SetAttr
from .namespace import NAME_MAX, ROOT_INO, Inode

__all__ = ["Caller", "DirEntry", "FsCore", "Inode", "NAME_MAX", "RENAME_EXCHANGE", "RENAME_NOREPLACE",
           "ROOT_INO", "SetAttr"]
