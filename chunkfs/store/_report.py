"""What fsck finds: findings, the three categories they fall in, and the report collecting them.

Kept apart from the checks so that the store checks (fsck.py), the namespace
checks (fsck_namespace.py), the repairs and the command line all speak about
damage in the same terms, and so that ``KINDS`` is the one list docs/fsck.md
describes.

Categories decide the exit status of ``chunkfs fsck``:

* ``damage``: the store contradicts itself (a refcount, a dangling entry, a
  chunk whose bytes are gone...).  ``--repair`` fixes it, or it is left.
* ``lost-data``: byte ranges of files whose chunks are gone for good, already
  marked by an earlier repair so that reading them fails with EIO.  Nothing
  more can be repaired; the files are listed so that someone can restore them.
* ``notice``: worth saying, not wrong (a file unlinked while still open on a
  mounted store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DAMAGE, LOST_DATA, NOTICE = "damage", "lost-data", "notice"

# kind -> (category, what it means).  docs/fsck.md explains each one and its repair.
KINDS: dict[str, tuple[str, str]] = {
    # chunks and packs
    "missing-chunk": (DAMAGE, "a file references a chunk the index has no record of"),
    "bad-lookup": (DAMAGE, "the address lookup misses a stored chunk or lists one wrongly"),
    "missing-pack": (DAMAGE, "a pack file holding chunks files use is gone"),
    "truncated-chunk": (DAMAGE, "a chunk's bytes run past the end of its pack"),
    "bad-record": (DAMAGE, "the pack holds no record of the chunk where the index says"),
    "corrupt-chunk": (DAMAGE, "a chunk's bytes do not hash to its address, or its compressed record does not "
                              "decompress (--verify-data)"),
    "missing-dictionary": (DAMAGE, "a compressed record names a store dictionary the store does not have"),
    "refcount-mismatch": (DAMAGE, "a chunk's refcount differs from the references to it"),
    "orphan-chunk": (DAMAGE, "a chunk record no file references"),
    "pack-accounting": (DAMAGE, "a pack's live/dead byte counts differ from its records"),
    "truncated-pack": (DAMAGE, "a pack file is shorter than the index says"),
    "counter-mismatch": (DAMAGE, "a store-wide counter differs from a recount"),
    # file manifests
    "broken-manifest": (DAMAGE, "a file's chunks leave a gap or overlap"),
    "size-mismatch": (DAMAGE, "a file's chunks do not add up to its recorded size"),
    "count-mismatch": (DAMAGE, "a file's recorded chunk count is wrong"),
    "orphan-manifest": (DAMAGE, "manifest entries that belong to no file"),
    # the filesystem namespace
    "missing-root": (DAMAGE, "the root directory's inode is missing"),
    "dangling-dirent": (DAMAGE, "a directory entry names an inode (or sits in a directory) that does not exist"),
    "dirorder-mismatch": (DAMAGE, "the listing order record and the lookup record of an entry disagree"),
    "dir-hard-link": (DAMAGE, "a directory has more than one name"),
    "orphan-inode": (DAMAGE, "an inode with no name left (unlinked while open at a crash)"),
    "lost-inode": (DAMAGE, "an inode with a link count but no name reachable from the root"),
    "stale-orphan-mark": (DAMAGE, "an inode that has names is marked for purging"),
    "link-count": (DAMAGE, "an inode's link count differs from the names it has"),
    "bad-parent": (DAMAGE, "a directory's '..' points elsewhere than the directory holding it"),
    "inode-size-mismatch": (DAMAGE, "a file's size differs from the size of its stored contents"),
    "dense-mark": (DAMAGE, "a file marked as having no holes has some (its st_blocks overstates it)"),
    "orphan-contents": (DAMAGE, "stored file contents that belong to no regular file"),
    "stray-record": (DAMAGE, "an xattr, symlink or orphan record of an inode that does not exist"),
    # already handled
    "lost-data": (LOST_DATA, "byte ranges whose data is gone; reading them fails with EIO"),
    "open-unlinked": (NOTICE, "a file unlinked while open on the mounted filesystem"),
    "detached-tree": (NOTICE, "on the mounted filesystem, an inode of a tree being deleted or copied"),
}


@dataclass(frozen=True)
class FileDamage:
    """One file a finding touches: how to name it, every path (hard links), and the byte ranges."""

    name: str
    paths: tuple[str, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()  # [start, end) byte ranges

    def as_dict(self) -> dict:
        return {"name": self.name, "paths": list(self.paths), "ranges": [list(r) for r in self.ranges]}

    def describe(self) -> str:
        where = ", ".join(self.paths) if self.paths else self.name
        if not self.ranges:
            return where
        return f"{where}: bytes {format_ranges(self.ranges)}"


@dataclass(frozen=True)
class Finding:
    """One problem.  ``subject`` names what it is about (``chunk:<hex>``, ``ino:5``...), so that
    a finding from the check before a repair can be matched with the check after it."""

    kind: str
    message: str
    subject: str = ""
    files: tuple[FileDamage, ...] = ()

    @property
    def category(self) -> str:
        return KINDS.get(self.kind, (DAMAGE, ""))[0]

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.subject or self.message

    def as_dict(self) -> dict:
        return {"kind": self.kind, "category": self.category, "subject": self.subject,
                "message": self.message, "files": [f.as_dict() for f in self.files]}


@dataclass
class CheckReport:
    """Everything one check found, plus what the repairs need to know (``bad_chunks``)."""

    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    chunks_checked: int = 0
    packs_checked: int = 0
    inodes_checked: int = 0
    bytes_verified: int = 0
    garbage_bytes: int = 0
    bad_chunks: dict[int, str] = field(default_factory=dict)  # chunk id -> why its bytes are unusable

    @property
    def clean(self) -> bool:
        """No damage.  Lost data already marked by a repair and notices do not count."""
        return not self.damage

    @property
    def damage(self) -> list[Finding]:
        return [f for f in self.findings if f.category == DAMAGE]

    @property
    def lost_data(self) -> list[Finding]:
        return [f for f in self.findings if f.category == LOST_DATA]

    @property
    def notices(self) -> list[Finding]:
        return [f for f in self.findings if f.category == NOTICE]

    def add(self, kind: str, message: str, subject: str = "", files: Iterable[FileDamage] = ()) -> None:
        assert kind in KINDS, kind
        self.findings.append(Finding(kind, message, subject, tuple(files)))

    def counts(self) -> dict[str, int]:
        return {"files": self.files_checked, "chunks": self.chunks_checked, "packs": self.packs_checked,
                "inodes": self.inodes_checked, "bytes_verified": self.bytes_verified}


# progress(phase, done, total): total is None when unknown; phases report done == total at their end
Progress = Callable[[str, int, "int | None"], None]


def no_progress(phase: str, done: int, total: int | None) -> None:
    """The default progress callback: nothing."""


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, with touching or overlapping ranges joined."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return tuple((s, e) for s, e in out)


def format_ranges(ranges: Iterable[tuple[int, int]], limit: int = 8) -> str:
    """``0-65535, 131072-196607`` (inclusive ends, as people count bytes), shortened after ``limit``."""
    ranges = list(ranges)
    text = ", ".join(f"{s}-{e - 1}" for s, e in ranges[:limit])
    if len(ranges) > limit:
        text += f" and {len(ranges) - limit} more ranges"
    return text
