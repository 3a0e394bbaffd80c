"""Checking a store and the filesystem it holds, in one consistent snapshot.

The store checks its own records (``ChunkStore.check_records``: refcounts
recounted from manifests, pack accounting from the pack files, counters from
the records); then, if the store holds a filesystem, ``fsck_namespace``
checks entries, link counts, orphans and sizes in the same read transaction.
Damage to chunk data is reported with every file that uses it, by path when
the store holds a filesystem.  Repairs live in the store
(``ChunkStore.repair_records``) and in ``repair_namespace.py``.
"""

from __future__ import annotations

from .fs.paths import NamespaceTree
from .fsck_namespace import check_namespace, inode_of_file_id
from .mounts import lock_holder
from .store import CheckReport, ChunkStore, FileDamage, FileId, Finding, Progress, no_progress

__all__ = ["CheckReport", "FileDamage", "Finding", "check_store", "FileNamer"]


def check_store(store: ChunkStore, verify_data: bool = False, progress: Progress | None = None,
                in_use: bool | None = None) -> CheckReport:
    """Recount and cross-check manifests, chunk records, packs, counters and the namespace.

    With ``verify_data`` every stored chunk is read and re-hashed with SHA-256.
    ``in_use`` (found out from the store's lock if not given): another process
    has the store open, so files unlinked while open are normal, not damage.
    """
    if in_use is None:
        in_use = store.readonly and lock_holder(store.path) is not None
    report = CheckReport()
    progress = progress or no_progress
    with store.read_txn() as txn:
        tree = NamespaceTree.load(store.fs_tables, txn)
        store.check_records(txn, report, FileNamer(tree), progress, verify_data)
        if tree is not None:
            check_namespace(store, txn, tree, report, progress, in_use)
    return report


class FileNamer:
    """Names a store file for people: its paths if it holds an inode's contents, else its file id."""

    def __init__(self, tree: NamespaceTree | None):
        self.tree = tree

    def __call__(self, file_id: FileId | None) -> tuple[str, tuple[str, ...]]:
        if file_id is None:
            return "(no file)", ()
        ino = inode_of_file_id(file_id) if self.tree is not None else None
        if ino is not None:
            return self.tree.describe(ino)
        return (file_id if isinstance(file_id, str) else "hex:" + file_id.hex()), ()
