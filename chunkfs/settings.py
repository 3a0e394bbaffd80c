"""The store's settings file: written once at mkfs, read at every open.

It pins everything that must never change for the life of a store (format
version, chunker and its sizes, hash functions), because changing any of them
would silently change chunk boundaries or addresses and break dedup against
what is already stored.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field

from .errors import FormatVersionError, NotAStoreError, SettingsError

SETTINGS_NAME = "chunkfs.json"
FORMAT_NAME = "chunkfs-store"
FORMAT_VERSION = 2
UPGRADE_DIR = ".upgrade"  # where 'chunkfs upgrade' builds the new store (store/_upgrade.py)
UPGRADE_READY = "READY"  # in UPGRADE_DIR: the upgrade is committed, only renames are left
CHUNKERS = ("fastcdc", "fixed")

DEFAULT_AVG_SIZE = 32 * 1024
MAX_CHUNK_LIMIT = 16 * 1024 * 1024  # chunks are held whole in memory, so cap them
FASTCDC_MIN_LIMIT = 64  # the fastcdc package's own bounds
FASTCDC_AVG_LIMITS = (256, 256 * 1024 * 1024)
FASTCDC_MAX_MIN = 1024

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str | int) -> int:
    """Parse '64K', '1M', '4096', '16KiB' into bytes (binary units)."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise SettingsError(f"not a size: {text!r} (use e.g. 4096, 16K, 1M)")
    number, unit, _ = match.groups()
    return int(number) * _UNITS[unit.lower()]


def format_size(n: float) -> str:
    """Human-readable binary size, e.g. 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StoreSettings:
    chunker: str = "fastcdc"
    min_size: int = DEFAULT_AVG_SIZE // 4
    avg_size: int = DEFAULT_AVG_SIZE
    max_size: int = DEFAULT_AVG_SIZE * 4
    hash: str = "sha256"
    checksum: str = "xxh3-64"  # in each pack record header (format 1: xxh3-128, in the chunk record)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)

    @classmethod
    def build(cls, chunker: str = "fastcdc", min_size=None, avg_size=None, max_size=None) -> "StoreSettings":
        """Fill in sizes the caller left out and validate the combination."""
        avg = parse_size(avg_size) if avg_size is not None else DEFAULT_AVG_SIZE
        if chunker == "fixed":
            lo = hi = avg
            if min_size is not None or max_size is not None:
                raise SettingsError("the fixed chunker takes only --avg-size (its chunk size)")
        else:
            lo = parse_size(min_size) if min_size is not None else avg // 4
            hi = parse_size(max_size) if max_size is not None else avg * 4
        settings = cls(chunker=chunker, min_size=lo, avg_size=avg, max_size=hi)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.chunker not in CHUNKERS:
            raise SettingsError(f"unknown chunker {self.chunker!r} (choose from {', '.join(CHUNKERS)})")
        if self.hash != "sha256" or self.checksum != "xxh3-64":
            raise SettingsError(f"unsupported hash {self.hash!r}/{self.checksum!r}")
        if self.max_size > MAX_CHUNK_LIMIT:
            raise SettingsError(f"maximum chunk size {self.max_size} exceeds {MAX_CHUNK_LIMIT}")
        if self.chunker == "fixed":
            if not (self.min_size == self.avg_size == self.max_size) or self.avg_size < 512:
                raise SettingsError("fixed chunk size must be at least 512 bytes")
            return
        if not FASTCDC_MIN_LIMIT <= self.min_size:
            raise SettingsError(f"minimum chunk size must be at least {FASTCDC_MIN_LIMIT}")
        lo, hi = FASTCDC_AVG_LIMITS
        if not lo <= self.avg_size <= hi or self.avg_size & (self.avg_size - 1):
            raise SettingsError("average chunk size must be a power of two between 256 and 256M")
        if self.max_size < FASTCDC_MAX_MIN:
            raise SettingsError(f"maximum chunk size must be at least {FASTCDC_MAX_MIN}")
        if not self.min_size < self.avg_size < self.max_size:
            raise SettingsError("chunk sizes must satisfy min < avg < max")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def write_settings(store_dir: str, settings: StoreSettings) -> None:
    """Write atomically (temp + fsync + rename) so a crash never leaves half a file."""
    path = os.path.join(store_dir, SETTINGS_NAME)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)  # private, like the store
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(settings.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_settings(store_dir: str) -> StoreSettings:
    """Load and validate, turning every way it can be wrong into one clear error."""
    path = os.path.join(store_dir, SETTINGS_NAME)
    if not os.path.isdir(store_dir):
        raise NotAStoreError(f"{store_dir}: no such directory")
    if not os.path.exists(path):
        raise NotAStoreError(f"{store_dir}: not a chunkfs store (no {SETTINGS_NAME}; create one with 'chunkfs mkfs')")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: unreadable settings file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise NotAStoreError(f"{store_dir}: not a chunkfs store (settings file has no chunkfs format marker)")
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise SettingsError(f"{path}: damaged settings file (format_version missing)")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{store_dir}: store format version {version} is newer than this chunkfs supports ({FORMAT_VERSION}); upgrade chunkfs"
        )
    if version < FORMAT_VERSION:
        if os.path.exists(os.path.join(store_dir, UPGRADE_DIR, UPGRADE_READY)):
            raise FormatVersionError(f"{store_dir}: an upgrade to store format version {FORMAT_VERSION} was "
                                     f"interrupted: run 'chunkfs upgrade {store_dir}' to finish it")
        raise FormatVersionError(f"{store_dir}: store format version {version} is older than this chunkfs "
                                 f"({FORMAT_VERSION}): run 'chunkfs upgrade {store_dir}'")
    try:
        settings = StoreSettings(**raw)
    except TypeError as exc:
        raise SettingsError(f"{path}: damaged settings file ({exc})") from None
    settings.validate()
    return settings
