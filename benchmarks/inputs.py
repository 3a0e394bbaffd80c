"""The throughput benchmark's inputs: random data, the tree of small files, git's share of it.

Made once per benchmark, untimed; the same bytes go to every side.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tarfile

from benchmarks.common import MB, REPO

MiB = 1024 * 1024
IO_BLOCK = MiB
DJANGO_RELEASE = "5.2.18"


def warm(path: str) -> None:
    """Read a file or tree so the source side of a copy is in the page cache for both targets alike."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for f in files:
        if os.path.islink(f):
            continue
        with open(f, "rb") as fh:
            while fh.read(IO_BLOCK):
                pass


# -- the tree of small files ----------------------------------------------------------------------

def tree_tar(scale: dict, work: str, seed: int) -> tuple[str, str]:
    """(tar path, description): a Django release sdist as a plain tar, or a generated tree (network-free)."""
    if scale["tree"] == "django":
        from benchmarks.releases import ReleaseUnavailable, release_tars
        cache = os.environ.get("CHUNKFS_BENCH_CACHE", os.path.join(REPO, "benchmarks", "cache"))
        try:
            [tar] = release_tars("django", (DJANGO_RELEASE,), cache)
            return tar, f"Django {DJANGO_RELEASE} sdist ({os.path.getsize(tar) / MB:.0f} MB tar)"
        except ReleaseUnavailable as exc:
            print(f"Django release unavailable ({exc}); using a generated tree", file=sys.stderr)
    count = scale["tree_files"] or 10000
    rng = random.Random(f"chunkfs-throughput:{seed}:tree")
    src = os.path.join(work, "gen-tree")
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    for i in range(count):
        d = os.path.join(src, f"pkg{i % 37:02d}", f"mod{i % 7}")
        os.makedirs(d, exist_ok=True)
        size = int(rng.lognormvariate(8.5, 1.0))  # median ~5 KB, like source files
        body = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
        with open(os.path.join(d, f"file{i}.py"), "wb") as fh:
            fh.write(body)
    tar = os.path.join(work, "gen-tree.tar")
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname="tree")
    shutil.rmtree(src)
    return tar, f"generated tree of {count} text files ({os.path.getsize(tar) / MB:.1f} MB tar)"


def git_tree(src: str, dest: str, files: int) -> str:
    """The first ``files`` regular files of ``src`` (in path order), copied to ``dest``: what git commits."""
    chosen = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs
                    if not os.path.islink(os.path.join(d, f)))[:files]
    for rel in chosen:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dest, rel))
    return dest


def count_entries(top: str) -> int:
    return 1 + sum(len(ds) + len(fs) for _, ds, fs in os.walk(top))


def random_bytes(n: int, seed: int) -> bytearray:
    """n unique random bytes (nothing in them dedups); os.urandom: ~300 MB/s here, untimed."""
    buf = bytearray(n)
    view = memoryview(buf)
    for off in range(0, n, 64 * MiB):
        view[off:off + 64 * MiB] = os.urandom(min(64 * MiB, n - off))
    return buf


def text_bytes(n: int, seed: int, corpus_path: str) -> bytearray:
    """n bytes that compress like text but do not dedup: slices of 512 B-4 KiB from random places of a
    corpus (the tree's tar: source code), back to back.  A 32 KiB chunk holds a dozen unrelated slices,
    so no two chunks match, while each compresses about as the corpus's files do."""
    with open(corpus_path, "rb") as fh:
        corpus = fh.read()
    rng = random.Random(f"chunkfs-throughput:{seed}:text")
    buf = bytearray(n)
    pos, top = 0, len(corpus) - 4096
    while pos < n:
        size = min(rng.randint(512, 4096), n - pos)
        start = rng.randrange(0, top)
        buf[pos:pos + size] = corpus[start:start + size]
        pos += size
    return buf
