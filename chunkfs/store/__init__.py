"""The storage engine: a content-addressed, deduplicating chunk store whose face is :class:`ChunkStore`.

Everything else in this package is private (modules named ``_*``): pack
files, the LMDB index and its record layouts, the ledger of refcounts and
pins, manifests, the read path, the cache, the space reserve, recovery,
compaction, the background gc worker, and the checks and repairs behind
``chunkfs fsck``.  Where pack bytes live is a :class:`PackBackend`
(:class:`LocalBackend` by default, an S3 bucket for a store made with a
data location (:func:`data_location`, :func:`restore_from_bucket`),
:class:`MemoryBackend` for tests; see
docs/store-format.md for the contract), chosen when a store is opened.  Code outside the package uses only the names exported
here (tests/test_store_wall.py enforces it), so the engine can change its
formats and its storage backend without touching the filesystem above it.
"""

from ._backend import REMOVED_PACK_GRACE, MemoryBackend, PackBackend
from ._check import FileNamer
from ._fileids import FileId, decode_file_id, encode_file_id
from ._gcworker import BackgroundGC
from ._index import FsTables
from ._local_backend import LocalBackend
from ._object_store import data_settings as data_location
from ._object_store import restore as restore_from_bucket
from ._manifests import MAX_FILE_SIZE, TO_END, ChunkRef, ManifestEntry, Patch, hole_ref
from ._recovery import RecoveryReport
from ._report import CheckReport, FileDamage, Finding, Progress, format_ranges, merge_ranges, no_progress
from ._store import DEFAULT_CACHE_SIZE, ChunkStore, IngestResult
from ._upgrade import UpgradeReport, upgrade_store
from ._versions import FileVersion

__all__ = [
    "BackgroundGC", "CheckReport", "ChunkRef", "ChunkStore", "DEFAULT_CACHE_SIZE", "FileDamage", "FileId",
    "FileNamer", "FileVersion", "Finding", "FsTables", "IngestResult", "LocalBackend", "MAX_FILE_SIZE", "ManifestEntry",
    "MemoryBackend", "PackBackend", "Patch", "Progress", "REMOVED_PACK_GRACE", "RecoveryReport", "TO_END",
    "UpgradeReport", "data_location", "decode_file_id", "encode_file_id", "format_ranges", "hole_ref",
    "merge_ranges", "no_progress", "restore_from_bucket", "upgrade_store",
]
