"""``chunkfs du``: what a subtree holds, and what deleting it would give back, from the index alone.

In a deduplicating store the size of a tree says little about its cost:
a chunk it shares with files elsewhere stays stored when the tree goes.  For
a subtree this counts, in one read transaction and without reading a byte
of chunk data:

* **logical bytes**: the sizes of its regular files (each inode once, however
  many names it has in the subtree);
* **stored bytes**: the bytes of the distinct chunks those files name;
* **unique bytes**: the stored bytes of chunks whose every reference lies in
  the subtree, which is exactly what deleting it frees (``rm -rf`` then gc).
  A file that also has a name outside the subtree survives its deletion, so
  its references count as outside ones;
* **shared bytes**: stored less unique, the chunks that stay.

A chunk's references are the manifest entries naming it (its refcount in the
store), so "every reference lies in the subtree" is: the subtree's files
name it as many times as its refcount says.  Uncommitted writes of open files
are not counted (as everywhere in the store, until their commit).

With ``depth``, every directory down to that depth gets its own figures (like
``du -d``), each counted against its own subtree.  Cost: one pass over the
subtree's inodes and manifest entries, and memory for the distinct chunks of
each directory reported.
"""

from __future__ import annotations

import errno
import stat
from collections import Counter
from dataclasses import dataclass, field

import lmdb

from ..errors import PathError
from .access import MAY_EXEC, MAY_READ, Credentials, allowed, join_path
from .namespace import Inode, Namespace

PAGE = 1024


@dataclass
class _Tally:
    """One reported directory's subtree: its inodes (with the names they have in it) and their chunks."""

    path: bytes
    depth: int
    names: Counter = field(default_factory=Counter)  # ino -> names in the subtree
    inodes: int = 0
    directories: int = 0


@dataclass
class Usage:
    path: bytes
    depth: int
    logical_bytes: int
    stored_bytes: int
    unique_bytes: int
    shared_bytes: int
    files: int
    directories: int
    chunk_refs: int

    def as_dict(self) -> dict:
        return {"path": self.path, "depth": self.depth, "logical_bytes": self.logical_bytes,
                "stored_bytes": self.stored_bytes, "unique_bytes": self.unique_bytes,
                "shared_bytes": self.shared_bytes, "files": self.files, "directories": self.directories,
                "chunk_refs": self.chunk_refs}


class UsageCount:
    """One ``du`` request over the subtree of ``top`` (an inode the caller resolved), in one read transaction."""

    def __init__(self, store, ns: Namespace, file_id_for, cred: Credentials, top: Inode, path: bytes,
                 depth: int = 0):
        self.store, self.ns, self.file_id_for = store, ns, file_id_for
        self.cred, self.top, self.path, self.depth = cred, top, path, max(0, depth)
        self.inodes: dict[int, Inode] = {}

    def run(self) -> list[Usage]:
        """Figures for the top and, with ``depth``, every directory down to it; deepest last, as ``du`` prints."""
        with self.store.read_txn() as txn:
            tallies = self._walk(txn)
            chunks: dict[int, list[tuple[bytes, int, int]]] = {}
            out = [self._usage(txn, t, chunks) for t in tallies]
        return sorted(out, key=lambda u: u.path)

    def _walk(self, txn: lmdb.Transaction) -> list[_Tally]:
        top = self.ns.need(txn, self.top.ino)
        self.inodes[top.ino] = top
        root = _Tally(self.path, 0)
        root.names[top.ino] += 1
        tallies = [root]
        if not top.is_dir:
            return tallies
        root.directories += 1
        stack: list[tuple[int, bytes, list[_Tally]]] = [(top.ino, self.path, [root])]
        visited = set()
        while stack:
            directory, path, open_tallies = stack.pop()
            if directory in visited:  # a directory with two names is damage (fsck's); count it once
                continue
            visited.add(directory)
            self._require_listable(txn, self.inodes[directory], path)
            after = 0
            while True:
                entries = self.ns.entries(txn, directory, after=after, limit=PAGE)
                if not entries:
                    break
                after = entries[-1].entry_id
                for entry in entries:
                    child = self.inodes.get(entry.ino) or self.ns.get(txn, entry.ino)
                    if child is None:
                        continue
                    self.inodes[entry.ino] = child
                    for tally in open_tallies:
                        tally.names[entry.ino] += 1
                        tally.directories += child.is_dir
                    if child.is_dir:
                        child_path = join_path(path, entry.name)
                        reported = open_tallies
                        if len(open_tallies) <= self.depth:
                            tally = _Tally(child_path, len(open_tallies))
                            tally.names[entry.ino] += 1
                            tally.directories += 1
                            tallies.append(tally)
                            reported = open_tallies + [tally]
                        stack.append((entry.ino, child_path, reported))
        return tallies

    def _require_listable(self, txn: lmdb.Transaction, directory: Inode, path: bytes) -> None:
        """``du`` as the caller could run it: read and search permission on every directory it lists."""
        if not allowed(self.ns, txn, directory, self.cred, MAY_READ | MAY_EXEC):
            raise PathError(errno.EACCES, path)

    def _usage(self, txn: lmdb.Transaction, tally: _Tally, cache: dict) -> Usage:
        lengths: dict[bytes, int] = {}
        refcounts: dict[bytes, int] = {}
        inside: Counter = Counter()
        logical = files = refs = 0
        for ino, names in tally.names.items():
            inode = self.inodes[ino]
            if not stat.S_ISREG(inode.mode):
                continue
            files += 1
            logical += inode.size
            survives = names < inode.nlink  # also named outside the subtree: deleting it frees nothing of it
            chunks = cache.get(ino)
            if chunks is None:
                chunks = cache[ino] = self.store.file_chunks(self.file_id_for(ino), txn)
            for address, length, refcount in chunks:
                lengths[address] = length
                refcounts[address] = refcount
                refs += 1
                if not survives:
                    inside[address] += 1
        stored = sum(lengths.values())
        unique = sum(lengths[a] for a, n in inside.items() if n >= refcounts[a])
        return Usage(tally.path, tally.depth, logical, stored, unique, stored - unique, files, tally.directories,
                     refs)
