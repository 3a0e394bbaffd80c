"""The store's settings file: written once at mkfs, read at every open.

It pins everything that must never change for the life of a store (format
version, chunker and its sizes, hash functions), because changing any of them
would silently change chunk boundaries or addresses and break dedup against
what is already stored.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import stat
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from .errors import FormatVersionError, NotAStoreError, SettingsError, StorePermissionError

SETTINGS_NAME = "chunkfs.json"
FORMAT_NAME = "chunkfs-store"
FORMAT_VERSION = 2
UPGRADE_DIR = ".upgrade"  # where 'chunkfs upgrade' builds the new store (store/_upgrade.py)
UPGRADE_READY = "READY"  # in UPGRADE_DIR: the upgrade is committed, only renames are left
CHUNKERS = ("fastcdc", "fixed")
HASHES = ("sha256",)
CHECKSUMS = ("xxh3-64",)

DEFAULT_AVG_SIZE = 32 * 1024
MAX_CHUNK_LIMIT = 16 * 1024 * 1024  # chunks are held whole in memory, so cap them
FASTCDC_MIN_LIMIT = 64  # the fastcdc package's own bounds
FASTCDC_AVG_LIMITS = (256, 256 * 1024 * 1024)
FASTCDC_MAX_MIN = 1024
FIXED_MIN = 512

# A number, then an optional binary unit: 4096, 4096B, 16K, 16KB, 16KiB, 1M, 2g, 1T.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_EXAMPLES = "use e.g. 4096, 16K, 1M, 64KiB"
_COMPRESSION_RE = re.compile(r"^(?:none|zstd:(\d{1,2}))$")
DEFAULT_LEVEL = 3
MAX_LEVEL = 22
DEFAULT_COMPRESSION = f"zstd:{DEFAULT_LEVEL}"  # for new stores; a store made without the field stores chunks raw


def parse_size(text: str | int) -> int:
    """The one parser of sizes, for every option and argument that takes one: '16K' -> 16384.

    Units are binary (K = 1024).  A caller checks the range it needs; what is
    not a size at all gets one message, the same everywhere.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise SettingsError(f"not a size: {text} (a size cannot be negative)")
        return text
    if not isinstance(text, str):
        raise SettingsError(f"not a size: {_show(text)} ({_SIZE_EXAMPLES})")
    match = _SIZE_RE.match(text)
    if not match:
        negative = re.match(r"^\s*-\s*\d", text) is not None
        why = "a size cannot be negative" if negative else _SIZE_EXAMPLES
        raise SettingsError(f"not a size: {text!r} ({why})")
    number, unit = match.groups()
    return int(number) * _UNITS[unit.lower() if unit else None]


def parse_compression(text: str) -> tuple[str, int]:
    """``zstd``, ``zstd:LEVEL`` or ``none`` as (codec name, level); InvalidArgument if malformed."""
    name, _, level = text.strip().lower().partition(":")
    if name == "none" and not level:
        return "none", 0
    if name == "zstd":
        try:
            value = int(level) if level else DEFAULT_LEVEL
        except ValueError:
            value = 0
        if 1 <= value <= MAX_LEVEL:
            return "zstd", value
        raise SettingsError(f"compression level must be 1 to {MAX_LEVEL}: {text!r}")
    raise SettingsError(f"compression must be zstd, zstd:LEVEL or none: {text!r}")


def format_compression(codec: str, level: int) -> str:
    return "none" if codec == "none" else f"zstd:{level}"


def format_size(n: float) -> str:
    """Human-readable binary size, e.g. 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _show(value: object, limit: int = 60) -> str:
    """A value as the settings file spells it (JSON), on one line and never very long."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the schema: what each field may hold, checked one by one ------------------------------


class _Invalid(Exception):
    """One field's bad value; the caller says where it came from (settings file, option, argument)."""

    def __init__(self, name: str, value: object, reason: str):
        super().__init__(name, value, reason)
        self.name, self.value, self.reason = name, value, reason


@dataclass(frozen=True)
class FieldRule:
    """What one field of the settings file may hold: a JSON type, and choices or a range."""

    kind: type  # str, int (never bool) or float (an int is accepted too)
    meaning: str  # "must be ..." in error messages
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    high_reason: str = ""
    choice_reason: str = ""

    def check(self, name: str, value: object) -> None:
        """Raise _Invalid unless ``value`` is of the right JSON type (true is not 1) and in range."""
        kinds = (int, float) if self.kind is float else self.kind
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise _Invalid(name, value, f"must be {self.meaning}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(name, value, f"must be {self.meaning}")
        if self.choices and value not in self.choices:
            raise _Invalid(name, value, self.choice_reason or f"must be {self.meaning}")
        if self.low is not None and value < self.low:
            raise _Invalid(name, value, f"must be {self.meaning}")
        if self.high is not None and value > self.high:
            raise _Invalid(name, value, self.high_reason or f"must be {self.meaning}")


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(json.dumps(c) for c in choices) if len(choices) > 1 else json.dumps(choices[0])


_SIZE_RULE = dict(kind=int, meaning="a whole number of bytes", low=0, high=MAX_CHUNK_LIMIT,
                  high_reason=f"exceeds the limit of {format_size(MAX_CHUNK_LIMIT)} on chunk sizes "
                              "(chunks are held whole in memory)")
SCHEMA: dict[str, FieldRule] = {
    "format": FieldRule(str, json.dumps(FORMAT_NAME), choices=(FORMAT_NAME,)),
    "format_version": FieldRule(int, "a whole number (the store format's version)"),
    "chunker": FieldRule(str, _one_of(CHUNKERS), choices=CHUNKERS,
                         choice_reason=f"unknown chunker (choose from {', '.join(CHUNKERS)})"),
    "min_size": FieldRule(**_SIZE_RULE),
    "avg_size": FieldRule(**_SIZE_RULE),
    "max_size": FieldRule(**_SIZE_RULE),
    "hash": FieldRule(str, _one_of(HASHES), choices=HASHES,
                      choice_reason=f"unsupported hash (this chunkfs knows only {_one_of(HASHES)})"),
    "checksum": FieldRule(str, _one_of(CHECKSUMS), choices=CHECKSUMS,
                          choice_reason=f"unsupported checksum (this chunkfs knows only {_one_of(CHECKSUMS)})"),
    "uuid": FieldRule(str, "a UUID in text form"),
    "created": FieldRule(float, "a time in seconds since 1970", low=0),
    "data": FieldRule(dict, 'an object: {} (packs on the local disk) or {"url": "s3://BUCKET/PREFIX", ...}'),
    "compression": FieldRule(str, '"none" or "zstd:LEVEL" (LEVEL 1 to 22)'),
}


def _check_field(name: str, value: object) -> None:
    SCHEMA[name].check(name, value)
    if name == "data":
        _check_data_location(value)
    if name == "compression":
        match = _COMPRESSION_RE.match(value)
        if not match or match.group(1) and not 1 <= int(match.group(1)) <= 22:
            raise _Invalid(name, value, f"must be {SCHEMA[name].meaning}")
    if name == "uuid":
        try:
            uuid.UUID(value)
        except ValueError:
            raise _Invalid(name, value, f"must be {SCHEMA[name].meaning}") from None


def _check_avg(chunker: str, avg: int) -> None:
    if chunker == "fixed":
        if avg < FIXED_MIN:
            raise _Invalid("avg_size", avg, f"the fixed chunk size must be at least {FIXED_MIN} bytes")
        return
    lo, hi = FASTCDC_AVG_LIMITS
    if not lo <= avg <= hi or avg & (avg - 1):
        raise _Invalid("avg_size", avg, f"the average chunk size must be a power of two between "
                                        f"{lo} and {hi // 1024 // 1024}M")


def _check_combination(s: "StoreSettings") -> None:
    """The sizes together, once each is a whole number of bytes within the chunk size limit."""
    _check_avg(s.chunker, s.avg_size)
    if s.chunker == "fixed":
        for name in ("min_size", "max_size"):
            if getattr(s, name) != s.avg_size:
                raise _Invalid(name, getattr(s, name), "the fixed chunker's min_size, avg_size and max_size "
                                                       "must be equal (its chunk size)")
        return
    if s.min_size < FASTCDC_MIN_LIMIT:
        raise _Invalid("min_size", s.min_size, f"the minimum chunk size must be at least {FASTCDC_MIN_LIMIT}")
    if s.max_size < FASTCDC_MAX_MIN:
        raise _Invalid("max_size", s.max_size, f"the maximum chunk size must be at least {FASTCDC_MAX_MIN}")
    if not s.min_size < s.avg_size < s.max_size:
        name = "min_size" if s.min_size >= s.avg_size else "max_size"
        raise _Invalid(name, getattr(s, name), f"chunk sizes must satisfy min < avg < max (min {s.min_size}, "
                                               f"avg {s.avg_size}, max {s.max_size})")


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
    # Where pack data lives: {} for files in STORE/packs, else an object store (see _check_data_location)
    data: dict = field(default_factory=dict)
    # How new chunks are compressed: "none" or "zstd:LEVEL" (a mount may choose another for new chunks)
    compression: str = DEFAULT_COMPRESSION

    @classmethod
    def build(cls, chunker: str = "fastcdc", min_size=None, avg_size=None, max_size=None,
              names: Mapping[str, str] | None = None) -> "StoreSettings":
        """Fill in sizes the caller left out and validate the combination.

        ``names`` says what the caller calls each field (the CLI: ``--avg-size``),
        so that a message names what the user gave, never a value derived from it.
        """
        names = names or {}
        given = {}
        for name, value in (("avg_size", avg_size), ("min_size", min_size), ("max_size", max_size)):
            if value is not None:
                try:
                    given[name] = parse_size(value)
                except SettingsError as exc:
                    raise SettingsError(f"{names.get(name, name)}: {exc}") from None
        try:
            return cls._build(chunker, given, names)
        except _Invalid as bad:
            raise SettingsError(f"{names.get(bad.name, bad.name)} {_show(bad.value)}: {bad.reason}") from None

    @classmethod
    def _build(cls, chunker: str, given: dict[str, int], names: Mapping[str, str]) -> "StoreSettings":
        _check_field("chunker", chunker)
        for name, value in given.items():
            _check_field(name, value)
        avg = given.get("avg_size", DEFAULT_AVG_SIZE)
        _check_avg(chunker, avg)  # first: a bad average is blamed, not the sizes derived from it
        if chunker == "fixed":
            if "min_size" in given or "max_size" in given:
                raise SettingsError(f"the fixed chunker takes only {names.get('avg_size', 'avg_size')} "
                                    "(its chunk size)")
            lo = hi = avg
        else:
            lo = given.get("min_size", avg // 4)
            hi = given.get("max_size", avg * 4)
            if "max_size" not in given and hi > MAX_CHUNK_LIMIT:
                raise _Invalid("avg_size", avg, f"the default maximum chunk size (4 x average) "
                                                f"{SCHEMA['max_size'].high_reason}; give a smaller average "
                                                f"or a maximum ({names.get('max_size', 'max_size')})")
        settings = cls(chunker=chunker, min_size=lo, avg_size=avg, max_size=hi)
        _check_combination(settings)
        return settings

    def validate(self) -> None:
        """Every field against the schema, then the sizes together; SettingsError naming the field."""
        try:
            for f in fields(self):
                _check_field(f.name, getattr(self, f.name))
            _check_combination(self)
        except _Invalid as bad:
            raise SettingsError(f"{bad.name} {_show(bad.value)}: {bad.reason}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


# -- the data location (object-store backend, docs/object-store.md) -----------------------------

DATA_KEYS = {"url": str, "endpoint": str, "region": str, "replica": bool}


def _check_data_location(data: dict) -> None:
    """``data`` is {} (packs on the local disk) or {"url": "s3://BUCKET/PREFIX", endpoint, region, replica}.

    Credentials never belong here: the AWS credential chain supplies them.
    The URL itself is parsed where it is used (store/_bucket.py).
    """
    if not data:
        return
    for key, value in data.items():
        if key not in DATA_KEYS:
            raise _Invalid("data", data, f"unknown key {key!r} (credentials never go here)")
        if isinstance(value, bool) != (DATA_KEYS[key] is bool) or not isinstance(value, DATA_KEYS[key]):
            raise _Invalid("data", data, f"{key!r} must be a {DATA_KEYS[key].__name__}")
    if not data.get("url", "").startswith("s3://"):
        raise _Invalid("data", data, "the data location must be an s3:// URL")


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


def _check_settings_reachable(store_dir: str, path: str) -> None:
    """Tell "absent", "not yours" and "not a store" apart (os.path.exists says False to all three)."""
    try:
        if not stat.S_ISDIR(os.stat(store_dir).st_mode):
            raise NotAStoreError(f"{store_dir}: not a directory")
        os.stat(path)
    except FileNotFoundError:
        if not os.path.isdir(store_dir):
            raise NotAStoreError(f"{store_dir}: no such directory") from None
        raise NotAStoreError(f"{store_dir}: not a chunkfs store (no {SETTINGS_NAME}; "
                             "create one with 'chunkfs mkfs')") from None
    except PermissionError:
        raise permission_denied(store_dir) from None
    except NotADirectoryError:
        raise NotAStoreError(f"{store_dir}: not a directory") from None


def permission_denied(store_dir: str) -> StorePermissionError:
    """The error for a store this user may not read: who owns it says what to do."""
    try:
        owner_uid = os.stat(store_dir).st_uid
    except OSError:  # a parent directory is closed too
        return StorePermissionError(f"{store_dir}: permission denied (a parent directory is closed to this user)")
    try:
        owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        owner = f"uid {owner_uid}"
    return StorePermissionError(f"{store_dir}: permission denied (the store belongs to {owner}: "
                                f"run chunkfs as {owner})")


def read_settings(store_dir: str) -> StoreSettings:
    """Load and validate field by field, turning every way it can be wrong into one clear line.

    Every message names the settings file; a bad field's also names the field
    and the value found.
    """
    path = os.path.join(store_dir, SETTINGS_NAME)
    _check_settings_reachable(store_dir, path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except PermissionError:
        raise permission_denied(store_dir) from None
    except (OSError, ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split())  # one line, whatever the exception says
        raise SettingsError(f"{path}: unreadable settings file ({exc.__class__.__name__}: {detail})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise NotAStoreError(f"{store_dir}: not a chunkfs store ({path} has no "
                             f'"format": {json.dumps(FORMAT_NAME)})')
    try:
        _check_version(path, raw)
        # a store made before a field existed: packs on the local disk, chunks stored raw
        raw = {"data": {}, "compression": "none", **raw}
        for name in SCHEMA:
            if name not in raw:
                raise SettingsError(f"{path}: damaged settings file: field {name!r} is missing")
        for name in raw:
            if name not in SCHEMA:
                raise SettingsError(f"{path}: damaged settings file: unknown field {_show(name)}")
        for name in SCHEMA:
            _check_field(name, raw[name])
        settings = StoreSettings(**raw)
        _check_combination(settings)
    except _Invalid as bad:
        raise SettingsError(f"{path}: settings field {bad.name!r} is {_show(bad.value)}: {bad.reason}") from None
    return settings


def _check_version(path: str, raw: dict) -> None:
    """format_version before any other field: a newer store gets "upgrade chunkfs", not a field error."""
    if "format_version" not in raw:
        raise SettingsError(f"{path}: damaged settings file: field 'format_version' is missing")
    _check_field("format_version", raw["format_version"])
    version = raw["format_version"]
    if version < 1:  # versions start at 1: this is damage, not an old store ("run chunkfs upgrade" would mislead)
        raise SettingsError(f"{path}: damaged settings file: format_version {_show(version)} is not a store format "
                            "version (they start at 1)")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: store format version {_show(version)} is newer than this chunkfs supports ({FORMAT_VERSION}); upgrade chunkfs"
        )
    if version < FORMAT_VERSION:
        store_dir = os.path.dirname(path)
        if os.path.exists(os.path.join(store_dir, UPGRADE_DIR, UPGRADE_READY)):
            raise FormatVersionError(f"{store_dir}: an upgrade to store format version {FORMAT_VERSION} was "
                                     f"interrupted: run 'chunkfs upgrade {store_dir}' to finish it")
        raise FormatVersionError(f"{store_dir}: store format version {_show(version)} is older than this chunkfs "
                                 f"({FORMAT_VERSION}): run 'chunkfs upgrade {store_dir}'")
