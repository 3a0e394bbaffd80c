"""Mount options: parse ``-o a,b=c`` once, refuse anything unknown before mounting.

Three kinds of option reach ``chunkfs mount``:

* chunkfs's own (``log_level=``, ``log_file=``, ``cache_size=``, ``verify=``, ``compression=``,
  ``compress=``, ``chunking=``, ``writeback_cache``, ``noreadaround``, ``read_ahead_kb=``, ``nonempty``, and for a store in an
  object store ``pack_cache=``, ``upload_backlog=``, ``upload_interval=``, ``backlog_wait=``,
  ``request_timeout=``): consumed here, never
  shown to libfuse, which would reject them (the writeback cache is asked for
  in FUSE's init reply, read-ahead is set through sysfs after mounting; see
  docs/tuning.md);
* FUSE and kernel mount options libfuse 3 accepts (``ro``, ``allow_other``,
  ``noatime``, ...): passed through to the adapter's ``run``;
* everything else: an error naming the option, raised before anything is
  mounted, because libfuse's own complaint ("fuse_session_new failed") says
  nothing useful and arrives only after the daemon has started.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field

from .errors import InvalidArgument
from .settings import format_compression, parse_compression, parse_size

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}
VERIFY_CHOICES = ("xxh3", "sha256", "off")
COMPRESS_CHOICES = ("behind", "inline")  # when a mount compresses new chunks (chunkfs/store/_recompress.py)
CHUNKING_CHOICES = ("inline", "behind")  # when a big file's new bytes are chunked (chunkfs/fs/behind.py)
# object-store options given in seconds, and the range each accepts (docs/object-store.md)
SECONDS_OPTIONS = {"upload_interval": (1, 86400), "backlog_wait": (0, 3600), "request_timeout": (0.5, 3600)}

# Kernel mount flags libfuse 3 translates itself (lib/mount.c, mount_flags[]).
_KERNEL_FLAGS = {
    "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "atime", "noatime",
    "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
    "nolazytime", "dirsync", "symfollow", "nosymfollow",
}
# FUSE options with no value that libfuse 3 accepts and chunkfs allows.
_FUSE_FLAGS = {"allow_other", "allow_root", "auto_unmount", "default_permissions"}
# FUSE options with a value (SELinux labels) that are passed through untouched.
_FUSE_VALUED = {"context", "fscontext", "defcontext", "rootcontext"}
# Options chunkfs sets itself, or that libfuse 3 rejects: explain instead of failing obscurely.
_REFUSED = {
    "fsname": "chunkfs sets fsname itself (to the store path)",
    "subtype": "chunkfs sets subtype itself (to 'chunkfs')",
    "max_read": "libfuse 3 does not accept max_read",
    "max_write": "libfuse 3 does not accept max_write",
    "nodefault_permissions": "chunkfs leaves permission checks to the kernel, so default_permissions stays on",
    "debug": "use log_level=debug",
}
# Options mount(8) and fstab use for themselves; the mount helper drops these.
MOUNT8_ONLY = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group",
               "_netdev", "nofail", "loop", "remount", "bind", "silent", "loud"}
MOUNT8_ONLY_PREFIXES = ("x-", "comment=", "X-", "helper=")


def _default_cache_size() -> int:
    from .store import DEFAULT_CACHE_SIZE  # noqa: PLC0415 (the store's import is most of a CLI command's start)

    return DEFAULT_CACHE_SIZE


@dataclass
class MountOptions:
    """Everything ``-o`` can say, with the defaults a plain ``chunkfs mount`` uses."""

    readonly: bool = False
    allow_other: bool = False
    nonempty: bool = False
    log_level: int = logging.INFO
    log_file: str | None = None
    cache_size: int = field(default_factory=_default_cache_size)
    verify: str = "xxh3"
    compression: str | None = None  # None: the store's own setting, for new chunks
    compress: str = "behind"  # raw at write time, compressed when the mount is idle; or "inline"
    chunking: str = "inline"  # chunked as written; or "behind": staged raw, chunked after close or fsync
    writeback_cache: bool = False
    read_around: bool = True
    read_ahead_kb: int | None = None  # None: DEFAULT_READ_AHEAD_KB, and no warning if it cannot be set
    data_options: dict = field(default_factory=dict)  # object-store tuning (pack_cache=, upload_backlog=, ...)
    fuse: set[str] = field(default_factory=set)
    given: list[str] = field(default_factory=list)

    def fuse_options(self, store_path: str) -> set[str]:
        """The option set for the adapter's ``run``: passthroughs plus what chunkfs always sets."""
        opts = set(self.fuse) | {"default_permissions", "subtype=chunkfs",
                                 f"fsname={encode_fsname(store_path)}"}
        if self.readonly:
            opts.add("ro")
        if self.allow_other:
            opts.add("allow_other")
        return opts

    def as_string(self) -> str:
        """The options as given, for re-executing the daemon with the same ``-o``."""
        return ",".join(self.given)


def split_options(text: str) -> list[str]:
    """Split ``a,b=c,,d`` into ``['a', 'b=c', 'd']`` (empty items are harmless and dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_options(texts: list[str] | str | None) -> MountOptions:
    """Parse one or more ``-o`` strings; later options override earlier ones, like mount(8)."""
    if texts is None:
        texts = []
    if isinstance(texts, str):
        texts = [texts]
    opts = MountOptions()
    for text in texts:
        for item in split_options(text):
            _apply(opts, item)
            opts.given.append(item)
    return opts


def _apply(opts: MountOptions, item: str) -> None:
    name, has_value, value = item.partition("=")
    if name in _REFUSED:
        raise InvalidArgument(f"mount option '{item}' is not supported: {_REFUSED[name]}")
    if has_value:
        _apply_valued(opts, name, value, item)
        return
    if name == "ro":
        opts.readonly = True
    elif name == "rw":
        opts.readonly = False
    elif name == "allow_other":
        opts.allow_other = True
    elif name == "nonempty":
        opts.nonempty = True
    elif name in ("writeback_cache", "nowriteback_cache"):
        opts.writeback_cache = name == "writeback_cache"
    elif name in ("readaround", "noreadaround"):
        opts.read_around = name == "readaround"
    elif name == "default_permissions":
        pass  # always on
    elif name in _KERNEL_FLAGS or name in _FUSE_FLAGS:
        opts.fuse.add(name)
    else:
        raise InvalidArgument(f"unknown mount option '{item}' (see 'chunkfs mount --help')")


def _apply_valued(opts: MountOptions, name: str, value: str, item: str) -> None:
    if name == "log_level":
        if value.lower() not in LOG_LEVELS:
            raise InvalidArgument(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        opts.log_level = LOG_LEVELS[value.lower()]
    elif name == "log_file":
        if not value:
            raise InvalidArgument("log_file needs a path (or 'stderr')")
        opts.log_file = value
    elif name == "cache_size":
        try:
            opts.cache_size = parse_size(value)
        except Exception as exc:  # SettingsError: re-word for the mount context
            raise InvalidArgument(f"cache_size: {exc}") from None
    elif name == "verify":
        if value not in VERIFY_CHOICES:
            raise InvalidArgument(f"verify must be one of {', '.join(VERIFY_CHOICES)}, not {value!r}")
        opts.verify = value
    elif name == "compression":
        try:
            opts.compression = format_compression(*parse_compression(value))
        except Exception as exc:  # SettingsError: re-word for the mount context
            raise InvalidArgument(f"compression: {exc}") from None
    elif name == "compress":
        if value not in COMPRESS_CHOICES:
            raise InvalidArgument(f"compress must be one of {', '.join(COMPRESS_CHOICES)}, not {value!r}")
        opts.compress = value
    elif name == "chunking":
        if value not in CHUNKING_CHOICES:
            raise InvalidArgument(f"chunking must be one of {', '.join(CHUNKING_CHOICES)}, not {value!r}")
        opts.chunking = value
    elif name == "read_ahead_kb":
        opts.read_ahead_kb = _read_ahead(value)
    elif name in ("pack_cache", "upload_backlog"):
        try:
            opts.data_options[name] = parse_size(value)
        except Exception as exc:  # SettingsError: re-word for the mount context
            raise InvalidArgument(f"{name}: {exc}") from None
    elif name in SECONDS_OPTIONS:
        low, high = SECONDS_OPTIONS[name]
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not low <= seconds <= high:
            raise InvalidArgument(f"{name} must be a number of seconds from {low:g} to {high:g}, not {value!r}")
        opts.data_options[name] = seconds
    elif name in _FUSE_VALUED:
        opts.fuse.add(item)
    else:
        raise InvalidArgument(f"unknown mount option '{item}' (see 'chunkfs mount --help')")


# 1 MiB read-ahead: cold sequential reads ~1.9x faster than the kernel's 128 KiB, 4 KiB random reads
# unchanged (docs/tuning.md has the figures).
DEFAULT_READ_AHEAD_KB = 1024
MAX_READ_AHEAD_KB = 1024 * 1024  # 1 GiB: beyond that a typo, not a tuning


def _read_ahead(value: str) -> int:
    """KiB of read-ahead, as the kernel's read_ahead_kb takes it (a plain number)."""
    if not value.isdigit() or int(value) > MAX_READ_AHEAD_KB:
        raise InvalidArgument(f"read_ahead_kb must be a number of KiB from 0 to {MAX_READ_AHEAD_KB}, not {value!r}")
    return int(value)


def is_mount8_only(item: str) -> bool:
    """True for fstab/mount(8) bookkeeping options that mean nothing to chunkfs."""
    return item in MOUNT8_ONLY or item.startswith(MOUNT8_ONLY_PREFIXES)


# The store path is the mount's source (fsname) so that findmnt, mount(8) and
# 'chunkfs stats MOUNTPOINT' can tell which store is mounted where.  pyfuse3
# passes options as ASCII and libfuse splits them at commas, so the path is
# percent-quoted; an ordinary path comes out unchanged.
_FSNAME_SAFE = "/-_.~+:@"


def encode_fsname(store_path: str) -> str:
    return urllib.parse.quote(store_path, safe=_FSNAME_SAFE)


def decode_fsname(fsname: str) -> str:
    return urllib.parse.unquote(fsname)
