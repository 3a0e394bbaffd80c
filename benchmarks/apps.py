"""The throughput benchmark's write-heavy and fsync-heavy operations: overwrites, SQLite, git.

Each function runs one operation on a directory of any filesystem and
returns its seconds (or a dict with ``seconds`` and the parts of it), so
the same code measures the plain disk, chunkfs, the passthrough and the peers.

* ``overwrite``: the file written again with new bytes through O_TRUNC (1 MiB
  writes, fsync, close): the old contents die while the new ones arrive.
* ``rewrite``: the same bytes count written in place, front to back, over
  the old contents (no O_TRUNC), then fsync.
* ``sqlite``: 10,000 inserts in 100 transactions, once with the rollback
  journal and once in WAL mode, each database then VACUUMed, ``synchronous``
  at FULL (SQLite's default for the rollback journal): an fsync storm.
* ``git``: a repository built in the directory from a tree of small files:
  init, ten commits (the tree, then nine rounds of edits to a share of its
  files), ``git gc``, ``git fsck``, two local clones (``--no-local``, so
  objects are copied, not hard-linked), ``git repack -adf``.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import time

from benchmarks.common import ToolError

MiB = 1024 * 1024
IO_BLOCK = MiB
SQLITE_ROWS, SQLITE_TRANSACTIONS = 10_000, 100
GIT_COMMITS, GIT_EDIT_SHARE = 10, 0.05
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def _write_all(fd: int, data: memoryview, positional: bool) -> None:
    for off in range(0, len(data), IO_BLOCK):
        view = data[off:off + IO_BLOCK]
        pos = off
        while view:
            n = os.pwrite(fd, view, pos) if positional else os.write(fd, view)
            view, pos = view[n:], pos + n


def overwrite(path: str, data: memoryview) -> float:
    """O_TRUNC, then ``data`` front to back in 1 MiB writes; fsync and close inside the timing."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        _write_all(fd, data, positional=False)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def rewrite(path: str, data: memoryview) -> float:
    """``data`` written over the file's old bytes in place (no truncation), front to back; fsync, close."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        _write_all(fd, data, positional=True)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def sqlite(top: str, seed: int) -> dict:
    """The SQLite workload (module docstring); checks every database's row count and integrity."""
    rng = random.Random(seed)
    parts = {}
    start = time.perf_counter()
    for mode in ("delete", "wal"):
        t0 = time.perf_counter()
        path = os.path.join(top, f"bench-{mode}.sqlite")
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute(f"PRAGMA journal_mode={mode}")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value BLOB)")
            per = SQLITE_ROWS // SQLITE_TRANSACTIONS
            for _ in range(SQLITE_TRANSACTIONS):
                con.execute("BEGIN")
                con.executemany("INSERT INTO t (name, value) VALUES (?, ?)",
                                [(f"row-{rng.getrandbits(32):08x}", rng.randbytes(rng.randint(50, 300)))
                                 for _ in range(per)])
                con.execute("COMMIT")
            con.execute("VACUUM")
            count = con.execute("SELECT count(*) FROM t").fetchone()[0]
            check = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
        if count != SQLITE_ROWS or check != "ok":
            raise ToolError(f"{path}: {count} rows, integrity {check!r}")
        parts[f"{mode}_seconds"] = round(time.perf_counter() - t0, 3)
    return {"seconds": time.perf_counter() - start, **parts}


def git(top: str, tree: str, seed: int) -> dict:
    """The git workflow (module docstring) in ``top``/repo, from a copy of ``tree``; returns its parts."""
    rng = random.Random(seed)
    repo = os.path.join(top, "repo")
    env = {**os.environ, **GIT_ENV}
    parts: dict[str, float] = {}

    def step(name: str, *cmd: str, cwd: str = repo) -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(["git", *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise ToolError(f"git {' '.join(cmd[:2])} in {cwd} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0

    start = time.perf_counter()
    t0 = time.perf_counter()
    shutil.copytree(tree, repo, symlinks=True)
    parts["copy_tree"] = time.perf_counter() - t0
    step("init", "init", "-q", "-b", "main")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(repo) if ".git" not in d.split(os.sep)
                   for f in fs if not os.path.islink(os.path.join(d, f)))
    for k in range(GIT_COMMITS):
        if k:
            t0 = time.perf_counter()
            for path in rng.sample(files, max(1, int(len(files) * GIT_EDIT_SHARE))):
                with open(path, "ab") as fh:
                    fh.write(f"\n# edit {k} {rng.getrandbits(64):016x}\n".encode())
            parts["edit"] = parts.get("edit", 0.0) + time.perf_counter() - t0
        step("add", "add", "-A")
        step("commit", "commit", "-q", "-m", f"round {k}")
    step("gc", "gc", "-q")
    step("fsck", "fsck", "--no-progress")
    for n in (1, 2):
        step("clone", "clone", "-q", "--no-local", repo, os.path.join(top, f"clone{n}"), cwd=top)
    step("repack", "repack", "-adfq")
    return {"seconds": time.perf_counter() - start, "files": len(files),
            **{f"{name}_seconds": round(v, 3) for name, v in parts.items()}}
