"""The tree operations behind ``chunkfs clone``, ``snapshot``, ``rmtree`` and ``du``, as one caller would do them.

These requests do not come through the kernel, so each resolves its paths
and checks permissions itself, on the caller's credentials (access.py), as
the kernel would for the system calls they stand for.  Paths are bytes from
the root of the mount (``/a/b``).  What they change in a directory the
kernel may have cached (a name it believes absent, a removed tree it still
shows, a directory's times) is told to the ``invalidate`` callbacks, which
the FUSE adapter turns into kernel notifications; they run after the
transaction, holding no lock.
"""

from __future__ import annotations

import contextlib
import errno
import stat
import time
from collections.abc import Callable
from typing import Protocol

import lmdb

from ..errors import FSError, PathError
from .access import (CAP_DAC_OVERRIDE, CAP_FOWNER, MAY_EXEC, MAY_READ, MAY_WRITE, Credentials, Resolved, allowed,
                     join_path, may_delete, normal_path, owns, resolve)
from .clone import TreeClone
from .namespace import ROOT_INO, Inode, check_name
from .rename import drop_link
from .snapshots import SNAPSHOT_DIR, ensure_snapshot_dir, is_snapshot_dir, list_snapshots, snapshot_dir
from .usage import UsageCount


class Invalidator(Protocol):
    def entry(self, parent: int, name: bytes, deleted: int = 0) -> None: ...

    def attributes(self, ino: int) -> None: ...


class _NoKernel:
    def entry(self, parent: int, name: bytes, deleted: int = 0) -> None:
        pass

    def attributes(self, ino: int) -> None:
        pass


class TreeOps:
    """clone, snapshot, rmtree and du over one FsCore, for the control channel (control_server.py)."""

    def __init__(self, core, invalidate: Invalidator | None = None):
        self.core, self.ns, self.store = core, core.ns, core.store
        self.invalidate = invalidate or _NoKernel()

    # -- clone and snapshot ----------------------------------------------------------------

    def clone(self, cred: Credentials, src: bytes, dst: bytes, should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Copy ``src`` to ``dst`` (which must not exist) by metadata, like ``cp -a``."""
        self._writable()
        self.core.files.settle_staged()  # a clone copies what is committed: closed files must be (fs/behind.py)
        src, dst = normal_path(src), normal_path(dst)
        with self.store.read_txn() as txn:
            source = self._existing(txn, src, cred)
            target = resolve(self.ns, txn, dst, cred)
        if target.inode is not None or not target.name:
            raise PathError(errno.EEXIST, dst)
        with _naming(dst):
            result = TreeClone(self.core, cred, source.inode, src, target.parent.ino, target.name,
                               should_stop=should_stop, skip=is_snapshot_dir).run()
        self._created(target.parent.ino, target.name)
        return {"path": dst, **result.as_dict()}

    def snapshot(self, cred: Credentials, src: bytes, name: bytes,
                 should_stop: Callable[[], bool] = lambda: False) -> dict:
        """An immutable clone of ``src`` named ``name`` in the snapshot directory."""
        self._writable()
        self.core.files.settle_staged()
        check_name(name)
        src = normal_path(src)
        with self.store.read_txn() as txn:
            source = self._existing(txn, src, cred)
        directory, made = self.store.write_txn(lambda txn: (ensure_snapshot_dir(self.ns, txn), []))
        if made:
            self._created(ROOT_INO, SNAPSHOT_DIR)
        path = b"/" + SNAPSHOT_DIR + b"/" + name
        with _naming(path):
            result = TreeClone(self.core, cred, source.inode, src, directory.ino, name, snapshot=True,
                               should_stop=should_stop, skip=is_snapshot_dir).run()
        self._created(directory.ino, name)
        return {"path": path, **result.as_dict()}

    def snapshots(self, cred: Credentials) -> list[dict]:
        with self.store.read_txn() as txn:
            directory = snapshot_dir(self.ns, txn)
            if directory is not None and not allowed(self.ns, txn, directory, cred, MAY_READ | MAY_EXEC):
                raise PathError(errno.EACCES, b"/" + SNAPSHOT_DIR)
            return list_snapshots(self.ns, txn)

    def delete_snapshot(self, cred: Credentials, name: bytes, wait: bool = False,
                        should_stop: Callable[[], bool] = lambda: False) -> dict:
        check_name(name)
        with self.store.read_txn() as txn:
            if snapshot_dir(self.ns, txn) is None:
                raise PathError(errno.ENOENT, b"/" + SNAPSHOT_DIR + b"/" + name)
        return self.rmtree(cred, b"/" + SNAPSHOT_DIR + b"/" + name, wait, should_stop)

    # -- rmtree ------------------------------------------------------------------------------

    def rmtree(self, cred: Credentials, path: bytes, wait: bool = False,
               should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Detach ``path`` in one transaction; what is below it is deleted in the background."""
        self._writable()
        path = normal_path(path)
        if not (cred.has(CAP_DAC_OVERRIDE) and cred.has(CAP_FOWNER)):
            with self.store.read_txn() as txn:
                self._check_tree_removable(txn, self._existing(txn, path, cred).inode, path, cred)
        victim, parent, name = self.store.write_txn(lambda txn: (self._detach(txn, path, cred), []), frees=True)
        if victim.is_dir:
            self.core.reaper.add(victim.ino)
        elif victim.nlink == 0:
            self.core.orphaned(victim.ino)
        gone = victim.is_dir or victim.nlink == 0
        self.invalidate.entry(parent, name, victim.ino if gone else 0)  # "deleted" would zero its link count
        self.invalidate.attributes(parent)
        if not gone:
            self.invalidate.attributes(victim.ino)  # one name fewer
        done = self.core.reaper.wait(victim.ino, should_stop) if wait and victim.is_dir else not victim.is_dir
        return {"path": path, "deleted": done}

    def _detach(self, txn: lmdb.Transaction, path: bytes, cred: Credentials) -> tuple[Inode, int, bytes]:
        found = self._existing(txn, path, cred)
        if not found.name:
            raise PathError(errno.EBUSY, path, "cannot remove the root of the mount")
        parent, victim, name = found.parent, found.inode, found.name
        self._check_removal(txn, parent, victim, path, cred)
        now = time.time_ns()
        self.ns.unlink(txn, parent.ino, self.ns.lookup(txn, parent.ino, name))
        if victim.is_dir:
            parent.nlink -= 1
            victim.nlink, victim.ctime_ns = 0, now
            self.ns.put(txn, victim)
            self.ns.mark_orphan(txn, victim.ino)
        else:
            drop_link(self.ns, txn, victim, now)
        parent.touch(now)
        self.ns.put(txn, parent)
        return victim, parent.ino, name

    def _check_removal(self, txn: lmdb.Transaction, parent: Inode, victim: Inode, path: bytes,
                       cred: Credentials) -> None:
        """Who may remove ``victim``: a snapshot, its owner or root; inside one, nobody; else as unlink would."""
        if parent.immutable or victim.immutable:
            if parent.ino == ROOT_INO and victim.immutable:  # the snapshot directory itself
                if not cred.has(CAP_FOWNER):
                    raise PathError(errno.EPERM, path, "only root may remove the snapshot directory")
                return
            directory = snapshot_dir(self.ns, txn)
            if directory is None or parent.ino != directory.ino:
                raise PathError(errno.EPERM, path, "read-only snapshot")
            if not owns(victim, cred):
                raise PathError(errno.EPERM, path, "only its owner or root may remove a snapshot")
            return
        try:
            may_delete(self.ns, txn, parent, victim, cred)
        except FSError as exc:
            raise PathError(exc.errno, path) from None

    def _check_tree_removable(self, txn: lmdb.Transaction, top: Inode, path: bytes, cred: Credentials) -> None:
        """What ``rm -rf`` by the caller would need below ``top``: to list and empty every directory."""
        if not top.is_dir or top.immutable:
            return  # a snapshot goes whole, by its owner (checked at the detach)
        stack = [(top, path)]
        while stack:
            directory, dir_path = stack.pop()
            entries = self.ns.entries(txn, directory.ino)
            if not entries:
                continue
            if not allowed(self.ns, txn, directory, cred, MAY_READ | MAY_WRITE | MAY_EXEC):
                raise PathError(errno.EACCES, dir_path)
            for entry in entries:
                child = self.ns.get(txn, entry.ino)
                if child is None:
                    continue
                child_path = join_path(dir_path, entry.name)
                if directory.mode & stat.S_ISVTX and not (owns(child, cred) or owns(directory, cred)):
                    raise PathError(errno.EPERM, child_path)
                if child.is_dir:
                    stack.append((child, child_path))

    # -- du ------------------------------------------------------------------------------------

    def du(self, cred: Credentials, path: bytes, depth: int = 0) -> list[dict]:
        path = normal_path(path)
        with self.store.read_txn() as txn:
            top = self._existing(txn, path, cred).inode
        usages = UsageCount(self.store, self.ns, self.core.file_id_for, cred, top, path, depth).run()
        return [u.as_dict() for u in usages]

    # -- compression behind the writers ----------------------------------------------------------

    def compress(self, should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Compress the chunks waiting for it now, and return when none is left (``chunkfs compress``)."""
        self._writable()
        return self.store.compress_waiting(stop=should_stop)

    def stats(self) -> dict:
        """The store's statistics as this mount sees them (``chunkfs stats MOUNTPOINT``): its compression
        mode, and an object store's live upload backlog and request counts, which a second, read-only
        open of the store cannot know."""
        return self.store.stats()

    # -- helpers ---------------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.core.readonly:
            raise FSError(errno.EROFS, "the filesystem is mounted read-only")

    def _existing(self, txn: lmdb.Transaction, path: bytes, cred: Credentials) -> Resolved:
        found = resolve(self.ns, txn, path, cred)
        if found.inode is None:
            raise PathError(errno.ENOENT, path)
        return found

    def _created(self, parent: int, name: bytes) -> None:
        """The kernel may hold a cached "no such name" for what was just made, and the directory's old times."""
        self.invalidate.entry(parent, name)
        self.invalidate.attributes(parent)


@contextlib.contextmanager
def _naming(path: bytes):
    """An error about the destination (it exists now, its directory went, no write permission) names it."""
    try:
        yield
    except FSError as exc:
        if isinstance(exc, PathError) or exc.errno == errno.ECANCELED:
            raise
        raise PathError(exc.errno, path, str(exc) if str(exc) != errno.errorcode.get(exc.errno) else "") from None
