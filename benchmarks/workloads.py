"""Deterministic workloads, each with the ideal savings known from how it was built.

Every generator writes into its own directory and returns a :class:`Workload`
whose ``unique_bytes`` is counted during construction, so the ideal
(1 − unique / logical) is exact rather than estimated.  Random bytes come from
``random.Random`` seeded by (seed, workload name): the same command writes the
same bytes on any machine, and random bytes make dedup the only saving (they do
not compress).  Files are written in blocks of at most 1 MiB; no generator
holds a whole large file in memory.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field

from .releases import ReleaseUnavailable, release_tars, unpack_tree, whole_file_dedup_pct

KiB, MiB = 1024, 1024 * 1024
IO_BLOCK = 1 * MiB

ALL = ("pool", "versions", "prefix", "duplicate", "unique", "releases-tar", "releases-tree")

# Scale knobs.  "full" is the reference scale; "quick" keeps every
# workload's shape (1 MiB runs; one small edit per 2 MiB of document per
# version, which reproduces the reference figures for borg and bup)
# at a size all peers get through in a few minutes on 2 cores; "tiny" is for CI.
SCALES: dict[str, dict] = {
    "full": dict(pool_files=1000, pool_blocks=200, pool_runs=(4, 12), doc_size=20 * MiB,
                 versions=10, edits=10, pair_size=64 * MiB, unique_files=4, unique_size=64 * MiB,
                 releases=("5.2.14", "5.2.15", "5.2.16", "5.2.17", "5.2.18")),
    "quick": dict(pool_files=30, pool_blocks=6, pool_runs=(4, 12), doc_size=8 * MiB,
                  versions=10, edits=4, pair_size=16 * MiB, unique_files=4, unique_size=8 * MiB,
                  releases=("5.2.16", "5.2.17", "5.2.18")),
    "tiny": dict(pool_files=10, pool_blocks=2, pool_runs=(2, 6), doc_size=4 * MiB,
                 versions=10, edits=2, pair_size=16 * MiB, unique_files=2, unique_size=4 * MiB,
                 releases=("5.2.17", "5.2.18")),
}
POOL_BLOCK = 4 * MiB  # a pool block is cut into runs; files are sequences of runs
POOL_RUN = 1 * MiB
RELEASE_PACKAGE = "django"  # pure Python, ~11 MB sdist, ~63 MB as .tar, ~10k files
DEFAULT_WORKLOADS = {"full": ALL, "quick": ALL, "tiny": ALL[:5]}  # tiny stays network-free


@dataclass
class Workload:
    """A generated data set: its files (relative to ``path``) and what ideal dedup would keep."""

    name: str
    path: str
    files: list[str] = field(default_factory=list)
    logical_bytes: int = 0
    unique_bytes: int | None = None  # None for real data: the ideal is unknown
    description: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def ideal_pct(self) -> float | None:
        if self.unique_bytes is None or not self.logical_bytes:
            return None
        return round(100.0 * (1.0 - self.unique_bytes / self.logical_bytes), 2)

    def to_json(self) -> dict:
        return dict(name=self.name, description=self.description, files=len(self.files),
                    logical_bytes=self.logical_bytes, unique_bytes=self.unique_bytes,
                    ideal_pct=self.ideal_pct, notes=self.notes)


class WorkloadSkipped(Exception):
    """A workload cannot be built here (e.g. no network for the release download)."""


# -- writing helpers ------------------------------------------------------------

def _rng(seed: int, name: str) -> random.Random:
    """One independent, reproducible stream per (seed, purpose); str seeds hash with SHA-512."""
    return random.Random(f"chunkfs-bench:{seed}:{name}")


def _write_random(path: str, size: int, rng: random.Random) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(IO_BLOCK, left)
            out.write(rng.randbytes(n))
            left -= n


def _copy_range(src_fd: int, out, offset: int, length: int) -> None:
    """Append ``length`` bytes of ``src_fd`` starting at ``offset`` to ``out``, blockwise."""
    while length:
        data = os.pread(src_fd, min(IO_BLOCK, length), offset)
        if not data:
            raise EOFError(f"short read at {offset}")
        out.write(data)
        offset += len(data)
        length -= len(data)


def _fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _finish(wl: Workload) -> Workload:
    wl.files.sort()
    wl.logical_bytes = sum(os.path.getsize(os.path.join(wl.path, f)) for f in wl.files)
    return wl


# -- pool -------------------------------------------------------------------------

def make_pool(root: str, scale: dict, seed: int) -> Workload:
    """Files made of 1 MiB runs drawn (with repeats) from a pool of unique random 4 MiB blocks.

    The pool lives in a scratch file beside the workload, read back with pread,
    so neither the pool nor any file is held in memory.  Unique bytes are the
    distinct runs actually used.
    """
    wl = Workload("pool", _fresh_dir(os.path.join(root, "pool")),
                  description=f"{scale['pool_files']} files of 1 MiB runs from "
                              f"{scale['pool_blocks']} × 4 MiB unique blocks")
    rng = _rng(seed, "pool")
    pool_path = os.path.join(root, ".pool-blocks.bin")
    _write_random(pool_path, scale["pool_blocks"] * POOL_BLOCK, rng)
    runs_total = scale["pool_blocks"] * POOL_BLOCK // POOL_RUN
    used: set[int] = set()
    fd = os.open(pool_path, os.O_RDONLY)
    try:
        for i in range(scale["pool_files"]):
            name = f"file-{i:04d}.bin"
            runs = [rng.randrange(runs_total) for _ in range(rng.randint(*scale["pool_runs"]))]
            used.update(runs)
            with open(os.path.join(wl.path, name), "wb") as out:
                for run in runs:
                    _copy_range(fd, out, run * POOL_RUN, POOL_RUN)
            wl.files.append(name)
    finally:
        os.close(fd)
        os.unlink(pool_path)
    wl.unique_bytes = len(used) * POOL_RUN
    return _finish(wl)


# -- versions ---------------------------------------------------------------------

Piece = tuple[int, int] | bytes  # (offset, length) into the base document, or new literal bytes


def _piece_len(p: Piece) -> int:
    return len(p) if isinstance(p, bytes) else p[1]


def _split(pieces: list[Piece], pos: int) -> int:
    """Split the piece table at byte ``pos``; return the index of the first piece at or after it."""
    at = 0
    for i, p in enumerate(pieces):
        n = _piece_len(p)
        if pos == at:
            return i
        if pos < at + n:
            cut = pos - at
            left, right = (p[:cut], p[cut:]) if isinstance(p, bytes) else ((p[0], cut), (p[0] + cut, n - cut))
            pieces[i:i + 1] = [left, right]
            return i + 1
        at += n
    return len(pieces)


def _edit(pieces: list[Piece], size: int, rng: random.Random) -> tuple[int, int]:
    """Apply one small random edit; return (new size, new unique bytes it introduced).

    40% overwrite 1–64 bytes, 40% insert 1–64 bytes, 20% delete 1–64 bytes.
    """
    kind, n = rng.random(), rng.randint(1, 64)
    pos = rng.randrange(max(1, size - n))
    start = _split(pieces, pos)
    if kind < 0.8:
        new = rng.randbytes(n)
        if kind < 0.4:  # overwrite
            del pieces[start:_split(pieces, pos + n)]
            pieces.insert(start, new)
            return size, n
        pieces.insert(start, new)
        return size + n, n
    del pieces[start:_split(pieces, pos + n)]
    return size - n, 0


def _write_pieces(path: str, pieces: list[Piece], base_fd: int) -> None:
    with open(path, "wb") as out:
        for p in pieces:
            if isinstance(p, bytes):
                out.write(p)
            else:
                _copy_range(base_fd, out, p[0], p[1])


def make_versions(root: str, scale: dict, seed: int) -> Workload:
    """A random document and successive versions, each with scattered small edits of the last.

    Versions are kept as a piece table over the base document (so nothing is
    held in memory but the edits); unique bytes are the base plus every byte
    an edit wrote.
    """
    n_versions, edits = scale["versions"], scale["edits"]
    wl = Workload("versions", _fresh_dir(os.path.join(root, "versions")),
                  description=f"{scale['doc_size'] // MiB} MiB document + {n_versions} versions, "
                              f"{edits} small edits/insertions/deletions each")
    rng = _rng(seed, "versions")
    base = os.path.join(wl.path, "doc-v00.bin")
    _write_random(base, scale["doc_size"], rng)
    wl.files.append("doc-v00.bin")
    pieces: list[Piece] = [(0, scale["doc_size"])]
    size, unique = scale["doc_size"], scale["doc_size"]
    fd = os.open(base, os.O_RDONLY)
    try:
        for v in range(1, n_versions + 1):
            for _ in range(edits):
                size, added = _edit(pieces, size, rng)
                unique += added
            name = f"doc-v{v:02d}.bin"
            _write_pieces(os.path.join(wl.path, name), pieces, fd)
            wl.files.append(name)
    finally:
        os.close(fd)
    wl.unique_bytes = unique
    return _finish(wl)


# -- pairs and unique data -------------------------------------------------------------

def _copy_file_with_prefix(src: str, dst: str, prefix: bytes) -> None:
    fd = os.open(src, os.O_RDONLY)
    try:
        with open(dst, "wb") as out:
            out.write(prefix)
            _copy_range(fd, out, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def make_prefix(root: str, scale: dict, seed: int) -> Workload:
    """A random file and the same bytes with one byte inserted at the front: ideal ~50%.

    Catches fixed-size chunking (every block shifts) and any chunker whose first
    boundary does not resynchronise.
    """
    wl = Workload("prefix", _fresh_dir(os.path.join(root, "prefix")),
                  description=f"{scale['pair_size'] // MiB} MiB file + same with 1 byte inserted at the front")
    rng = _rng(seed, "prefix")
    a, b = os.path.join(wl.path, "a.bin"), os.path.join(wl.path, "b.bin")
    _write_random(a, scale["pair_size"], rng)
    _copy_file_with_prefix(a, b, rng.randbytes(1))
    wl.files += ["a.bin", "b.bin"]
    wl.unique_bytes = scale["pair_size"] + 1
    return _finish(wl)


def make_duplicate(root: str, scale: dict, seed: int) -> Workload:
    """The same random file stored twice: ideal exactly 50%."""
    wl = Workload("duplicate", _fresh_dir(os.path.join(root, "duplicate")),
                  description=f"{scale['pair_size'] // MiB} MiB file stored twice")
    rng = _rng(seed, "duplicate")
    a, b = os.path.join(wl.path, "a.bin"), os.path.join(wl.path, "copy-of-a.bin")
    _write_random(a, scale["pair_size"], rng)
    _copy_file_with_prefix(a, b, b"")
    wl.files += ["a.bin", "copy-of-a.bin"]
    wl.unique_bytes = scale["pair_size"]
    return _finish(wl)


def make_unique(root: str, scale: dict, seed: int) -> Workload:
    """Incompressible data with nothing repeated: the honest 0% row (shows each tool's overhead)."""
    wl = Workload("unique", _fresh_dir(os.path.join(root, "unique")),
                  description=f"{scale['unique_files']} × {scale['unique_size'] // MiB} MiB of unique random bytes")
    rng = _rng(seed, "unique")
    for i in range(scale["unique_files"]):
        name = f"random-{i}.bin"
        _write_random(os.path.join(wl.path, name), scale["unique_size"], rng)
        wl.files.append(name)
    wl.unique_bytes = scale["unique_files"] * scale["unique_size"]
    return _finish(wl)


# -- real data ----------------------------------------------------------------------------

def _list_files(top: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(top):
        out += [os.path.relpath(os.path.join(dirpath, n), top) for n in names]
    return out


def make_releases_tar(root: str, scale: dict, seed: int, cache_dir: str) -> Workload:
    """Consecutive releases of a large sdist as plain (decompressed) .tar files; ideal unknown."""
    versions = scale["releases"]
    wl = Workload("releases-tar", _fresh_dir(os.path.join(root, "releases-tar")),
                  description=f"{RELEASE_PACKAGE} {', '.join(versions)} sdists as plain .tar")
    try:
        tars = release_tars(RELEASE_PACKAGE, versions, cache_dir)
    except ReleaseUnavailable as exc:
        raise WorkloadSkipped(str(exc)) from exc
    for tar in tars:
        dst = os.path.join(wl.path, os.path.basename(tar))
        shutil.copyfile(tar, dst)  # a copy, not a link: tools must not see one inode twice
        wl.files.append(os.path.basename(tar))
    return _finish(wl)


def make_releases_tree(root: str, scale: dict, seed: int, cache_dir: str) -> Workload:
    """The same releases unpacked: many small files.  Whole-file dedup is noted as a reference floor."""
    versions = scale["releases"]
    wl = Workload("releases-tree", _fresh_dir(os.path.join(root, "releases-tree")),
                  description=f"{RELEASE_PACKAGE} {', '.join(versions)} unpacked (many small files)")
    try:
        tars = release_tars(RELEASE_PACKAGE, versions, cache_dir)
    except ReleaseUnavailable as exc:
        raise WorkloadSkipped(str(exc)) from exc
    for tar in tars:
        unpack_tree(tar, wl.path)
    wl.files = _list_files(wl.path)
    _finish(wl)
    wl.notes["whole_file_dedup_pct"] = whole_file_dedup_pct(wl.path, wl.files)
    return wl


def generate(name: str, root: str, scale_name: str, seed: int, cache_dir: str) -> Workload:
    """Build one workload by name under ``root``; raise WorkloadSkipped if it cannot be built here."""
    scale = SCALES[scale_name]
    simple = {"pool": make_pool, "versions": make_versions, "prefix": make_prefix,
              "duplicate": make_duplicate, "unique": make_unique}
    if name in simple:
        return simple[name](root, scale, seed)
    if name == "releases-tar":
        return make_releases_tar(root, scale, seed, cache_dir)
    if name == "releases-tree":
        return make_releases_tree(root, scale, seed, cache_dir)
    raise ValueError(f"unknown workload {name!r} (choose from {', '.join(ALL)})")
