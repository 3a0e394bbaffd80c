"""Every name of every inode: the namespace loaded once and walked from the root.

Files do not record their parent (hard links give them several), so naming
an inode means walking down from the root.  fsck needs that for every inode
at once, to report damaged files by path (all their hard links) and to find
what no walk from the root reaches, so :class:`NamespaceTree` loads all
inodes and directory entries in one pass inside the caller's read
transaction.  Memory: a few hundred bytes per inode and entry.

The walk follows ``dirents`` (the records lookups use), enters each
directory once, through the entry with the smallest entry id, and ignores
entries whose parent is not a directory or whose child does not exist, so
that a damaged namespace (cycles, dangling entries) can still be walked.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

import lmdb

from ..store import FsTables
from .namespace import DIRENT, KEY64, ROOT_INO, Inode


@dataclass(frozen=True)
class Link:
    """One directory entry: ``name`` in directory ``parent`` names ``child``."""

    parent: int
    name: bytes
    child: int
    entry_id: int


def join(parent_path: str, name: bytes) -> str:
    return ("" if parent_path == "/" else parent_path) + "/" + os.fsdecode(name)


class NamespaceTree:
    """Inodes, entries and orphan marks of a filesystem, and which inodes the root reaches."""

    def __init__(self, inodes: dict[int, Inode], links: list[Link], orphan_marks: set[int]):
        self.inodes = inodes
        self.links = links
        self.orphan_marks = orphan_marks
        self.names: dict[int, list[Link]] = {}
        self.children: dict[int, list[Link]] = {}
        for link in links:
            self.names.setdefault(link.child, []).append(link)
            self.children.setdefault(link.parent, []).append(link)
        for group in (*self.names.values(), *self.children.values()):
            group.sort(key=lambda lk: lk.entry_id)
        self.reached: dict[int, Link | None] = {}
        self._dir_paths: dict[int, str] = {}
        self.walk()

    @classmethod
    def load(cls, index: FsTables, txn: lmdb.Transaction) -> "NamespaceTree | None":
        """The store's namespace, or None if the store has never been mounted (no inodes)."""
        if not txn.stat(index.inodes)["entries"] and not txn.stat(index.dirents)["entries"]:
            return None
        inodes = {}
        for key, value in txn.cursor(db=index.inodes):
            ino = KEY64.unpack(key)[0]
            inodes[ino] = Inode.decode(ino, value)
        links = []
        for key, value in txn.cursor(db=index.dirents):
            child, entry_id = DIRENT.unpack(value)
            links.append(Link(KEY64.unpack_from(key)[0], key[KEY64.size:], child, entry_id))
        marks = {KEY64.unpack(k)[0] for k in txn.cursor(db=index.orphans).iternext(values=False)}
        return cls(inodes, links, marks)

    # -- reachability -------------------------------------------------------------

    def is_dir(self, ino: int) -> bool:
        inode = self.inodes.get(ino)
        return inode is not None and inode.is_dir

    def valid(self, link: Link) -> bool:
        """The entry sits in an existing directory and names an existing inode."""
        return self.is_dir(link.parent) and link.child in self.inodes

    def walk(self) -> None:
        """Breadth-first from the root: ``reached`` maps each inode to the entry it was found by.

        A directory with several names (damage) is entered through the one in
        the directory its ``..`` points to, if the walk gets there; through
        the first other one found otherwise.
        """
        self.reached = {}
        self._dir_paths = {}
        if not self.is_dir(ROOT_INO):
            return
        self.reached[ROOT_INO] = None
        queue, detours = deque([ROOT_INO]), []
        while queue:
            for link in self.children.get(queue.popleft(), ()):
                if link.child in self.reached or link.child not in self.inodes:
                    continue
                if self.is_dir(link.child) and self._detour(link):
                    detours.append(link)
                    continue
                self.reached[link.child] = link
                if self.is_dir(link.child):
                    queue.append(link.child)
            if not queue:
                for link in detours:
                    if link.child not in self.reached:
                        self.reached[link.child] = link
                        queue.append(link.child)
                detours = []

    def _detour(self, link: Link) -> bool:
        """A name of a directory other than the one in its ``..``, while that one exists."""
        parent = self.inodes[link.child].parent
        return link.parent != parent and any(lk.parent == parent for lk in self.names.get(link.child, ())
                                             if self.is_dir(lk.parent))

    def detached(self) -> set[int]:
        """Inodes below a directory with no name left (a tree ``rmtree`` is deleting, an unfinished clone).

        Such a directory has link count 0 or an orphan mark, the root does
        not reach it, and a mount deletes it with everything below it
        (fs/reaper.py).
        """
        tops = [ino for ino, inode in self.inodes.items() if inode.is_dir and ino not in self.reached
                and (inode.nlink == 0 or ino in self.orphan_marks) and self.children.get(ino)]
        seen: set[int] = set(tops)
        queue = deque(tops)
        while queue:
            for link in self.children.get(queue.popleft(), ()):
                if link.child in self.inodes and link.child not in self.reached and link.child not in seen:
                    seen.add(link.child)
                    if self.is_dir(link.child):
                        queue.append(link.child)
        return seen

    def live_names(self, ino: int) -> list[Link]:
        """Entries naming ``ino`` from directories the root reaches."""
        return [lk for lk in self.names.get(ino, ()) if lk.parent in self.reached and self.is_dir(lk.parent)]

    # -- paths --------------------------------------------------------------------

    def dir_path(self, ino: int) -> str | None:
        """The path of a reached directory (through the entry it was reached by)."""
        if ino not in self.reached:
            return None
        parts = []
        at = ino
        while at not in self._dir_paths:
            link = self.reached[at]
            if link is None:  # the root
                self._dir_paths[at] = "/"
                break
            parts.append((at, link.name))
            at = link.parent
        path = self._dir_paths[at]
        for node, name in reversed(parts):
            path = join(path, name)
            self._dir_paths[node] = path
        return self._dir_paths[ino]

    def paths(self, ino: int) -> list[str]:
        """Every path naming ``ino`` (one per hard link), sorted; [] if the root does not reach it."""
        if ino == ROOT_INO and ino in self.reached:
            return ["/"]
        if self.is_dir(ino):
            path = self.dir_path(ino)
            return [path] if path else []
        return sorted(join(self.dir_path(lk.parent), lk.name) for lk in self.live_names(ino))

    def describe(self, ino: int) -> tuple[str, tuple[str, ...]]:
        """(display name, all paths): the first path, or ``inode N (no name)``."""
        paths = tuple(self.paths(ino))
        return (paths[0] if paths else f"inode {ino} (no name)"), paths

    def entry_path(self, link: Link) -> str:
        """Where an entry sits, for messages: its path if its directory is reached, else ``inode N/name``."""
        parent = self.dir_path(link.parent)
        if parent is None:
            return f"inode {link.parent}/{os.fsdecode(link.name)}"
        return join(parent, link.name)
