"""The workload of the crash tests, and the journal that says what must survive a kill.

Run as a separate process inside a mounted chunkfs (its daemon gets SIGKILLed
while this runs)::

    python -m benchmarks.crash_workload ROOT JOURNAL SEED [--ops N]

It creates, writes, appends, patches, truncates, renames and deletes files
and directories under ROOT, fsyncs some, keeps some open across operations
(so a kill finds uncommitted writes in staging) and unlinks some while open
(so a kill leaves orphans).  Before every call that may change what a path
holds, it appends to JOURNAL (a plain file outside the mount) a line:

    {"k": "m", "p": PATH, "h": HASH}   "maybe": PATH may hold HASH from now on
    {"k": "s", "p": PATH, "h": HASH}   "sure":  the call returned, PATH holds HASH for good

Lines ``{"k": "op", ...}`` name each operation, for diagnosis only.
HASH is the SHA-256 of the contents, ``"DIR"`` for a directory or ``null``
for absent.  "Sure" is written only once the call that makes the state
durable has returned: ``close()`` or ``fsync()`` of a written file (closed
means committed), and any namespace call (mkdir, rename, unlink, truncate by
path: each is one committed transaction).  So after a kill, the states a path
may be found in are exactly :func:`allowed_states`: its last "sure" state and
every "maybe" state journaled after it.  Intermediate states are allowed
because chunkfs may commit a file on its own before close (a sequential
stream broken by a random write commits what streamed), and such a commit
holds the file as it was between two calls.

The journal is line-buffered and each line is one ``write(2)``: only the
daemon is killed, so everything this process wrote to it is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys

DIR = "DIR"
MiB = 1024 * 1024
MAX_TOTAL = 40 * MiB  # beyond this the workload mostly deletes
MAX_FILES = 150
POOL = [random.Random(1000 + i).randbytes(64 * 1024) for i in range(8)]  # shared across rounds: dedup


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def allowed_states(initial: dict[str, str | None], journal: list[dict]) -> dict[str, set]:
    """For every path: the set of states (hash, DIR, or None) it may be found in after a kill."""
    allowed = {path: {state} for path, state in initial.items()}
    for rec in journal:
        if rec.get("k") == "m":
            allowed.setdefault(rec["p"], {None}).add(rec["h"])
        elif rec.get("k") == "s":
            allowed[rec["p"]] = {rec["h"]}
    return allowed


def read_journal(path: str) -> list[dict]:
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                if line.endswith("\n"):  # a torn last line cannot happen, but never trust it
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def snapshot(root: str) -> dict[str, str | None]:
    """What ROOT holds: relative path -> content hash or DIR."""
    out: dict[str, str | None] = {}
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name))] = DIR
        for name in files:
            with open(os.path.join(top, name), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, name))] = digest(fh.read())
    return out


class Workload:
    """One burst of random operations; see the module docstring."""

    def __init__(self, root: str, journal: str, seed: int):
        self.root = root
        self.rng = random.Random(seed)
        self.seed = seed
        self.journal = open(journal, "a", buffering=1)
        self.files: dict[str, bytearray] = {}  # what each path holds as this process sees it
        self.dirs: set[str] = {"."}
        self.held: dict[str, int] = {}  # path -> fd kept open for writing across operations
        self.appending: set[int] = set()  # held fds opened O_APPEND: Linux pwrite() ignores the offset
        self.orphans: list[tuple[int, bytearray]] = []  # unlinked while open: written on, never checked
        self.counter = 0
        self._scan()

    def _scan(self) -> None:
        for top, dirs, files in os.walk(self.root):
            rel = os.path.relpath(top, self.root)
            self.dirs.update(os.path.normpath(os.path.join(rel, d)) for d in dirs)
            for name in files:
                with open(os.path.join(top, name), "rb") as fh:
                    self.files[os.path.normpath(os.path.join(rel, name))] = bytearray(fh.read())

    # -- the journal -------------------------------------------------------------------

    def _note(self, kind: str, path: str, state: str | None) -> None:
        self.journal.write(json.dumps({"k": kind, "p": path, "h": state}) + "\n")

    def maybe(self, path: str, data) -> None:
        self._note("m", path, data if data in (None, DIR) else digest(bytes(data)))

    def sure(self, path: str, data) -> None:
        self._note("s", path, data if data in (None, DIR) else digest(bytes(data)))

    # -- helpers -----------------------------------------------------------------------

    def abs(self, path: str) -> str:
        return os.path.join(self.root, path)

    def data(self, n: int) -> bytes:
        """Random bytes mixed with blocks from a fixed pool, so that some chunks dedup."""
        out = bytearray()
        while len(out) < n:
            if self.rng.random() < 0.4:
                block = self.rng.choice(POOL)
                start = self.rng.randrange(0, len(block) // 2)
                out += block[start:start + self.rng.randrange(4096, len(block) - start)]
            else:
                out += self.rng.randbytes(min(n - len(out), self.rng.choice((512, 8192, 65536, 300_000))))
        return bytes(out[:n])

    def size(self) -> int:
        return self.rng.choice((0, 100, 3000, 20_000, 70_000, 200_000, 700_000, 1_500_000, 3_000_000))

    def new_name(self, directory: str | None = None) -> str:
        self.counter += 1
        directory = directory or self.rng.choice(sorted(self.dirs))
        return os.path.normpath(os.path.join(directory, f"f{self.seed}-{self.counter}"))

    def closed_files(self) -> list[str]:
        return sorted(p for p in self.files if p not in self.held)

    def _write(self, fd: int, path: str | None, content: bytearray, offset: int, piece: bytes) -> None:
        """One pwrite, journaled as a maybe-state first (path None: an orphan, not journaled)."""
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset:offset + len(piece)] = piece
        if path is not None:
            self.maybe(path, content)
        os.pwrite(fd, piece, offset)

    def _finish(self, fd: int, path: str, content: bytearray) -> None:
        """fsync and/or close, or keep the file open for later operations."""
        roll = self.rng.random()
        if roll < 0.3:
            os.fsync(fd)
            self.sure(path, content)
        if roll < 0.15 and len(self.held) < 4:
            self.held[path] = fd
            return
        self._close(fd)
        self.sure(path, content)

    def _close(self, fd: int) -> None:
        self.appending.discard(fd)
        os.close(fd)

    # -- operations ---------------------------------------------------------------------

    def op_new(self) -> None:
        path = self.new_name()
        content = self.files[path] = bytearray()
        self.maybe(path, content)
        fd = os.open(self.abs(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        self.sure(path, content)
        total = self.size()
        while len(content) < total:
            self._write(fd, path, content, len(content), self.data(min(total - len(content), MiB)))
        self._finish(fd, path, content)

    def op_append(self) -> None:
        path = self.rng.choice(self.closed_files())
        content = self.files[path]
        fd = os.open(self.abs(path), os.O_WRONLY | os.O_APPEND)
        self.appending.add(fd)
        for _ in range(self.rng.randint(1, 4)):
            self._write(fd, path, content, len(content), self.data(self.rng.randint(1, 200_000)))
        self._finish(fd, path, content)

    def op_patch(self) -> None:
        path = self.rng.choice(self.closed_files())
        content = self.files[path]
        fd = os.open(self.abs(path), os.O_RDWR)
        for _ in range(self.rng.randint(1, 5)):
            offset = self.rng.randint(0, len(content) + 10_000)
            self._write(fd, path, content, offset, self.data(self.rng.randint(1, 100_000)))
        self._finish(fd, path, content)

    def op_stream_then_random(self) -> None:
        """A sequential stream broken by a random write: chunkfs commits what streamed, mid-session."""
        path = self.new_name()
        content = self.files[path] = bytearray()
        self.maybe(path, content)
        fd = os.open(self.abs(path), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        self.sure(path, content)
        for _ in range(self.rng.randint(2, 8)):
            self._write(fd, path, content, len(content), self.data(256 * 1024))
        self._write(fd, path, content, self.rng.randrange(len(content) // 2), self.data(5000))
        self._write(fd, path, content, len(content), self.data(self.rng.randint(1, 300_000)))
        self._finish(fd, path, content)

    def op_truncate(self) -> None:
        path = self.rng.choice(self.closed_files())
        content = self.files[path]
        new_size = self.rng.randint(0, len(content) * 3 // 2 + 1000)
        del content[new_size:]
        content.extend(bytes(new_size - len(content)))
        self.maybe(path, content)
        os.truncate(self.abs(path), new_size)
        self.sure(path, content)

    def op_rename(self) -> None:
        old = self.rng.choice(self.closed_files())
        targets = self.closed_files()
        new = self.rng.choice(targets) if self.rng.random() < 0.3 and len(targets) > 1 else self.new_name()
        if new == old:
            return
        content = self.files[old]
        self.maybe(new, content)
        self.maybe(old, None)
        os.rename(self.abs(old), self.abs(new))
        self.files[new] = self.files.pop(old)
        self.sure(new, content)
        self.sure(old, None)

    def op_rename_dir(self) -> None:
        candidates = [d for d in self.dirs if d != "." and not any(p.startswith(d + "/") for p in self.held)]
        if not candidates:
            return
        old = self.rng.choice(sorted(candidates))
        self.counter += 1
        new = os.path.normpath(os.path.join(os.path.dirname(old), f"d{self.seed}-{self.counter}"))
        moved = {p: new + p[len(old):] for p in list(self.files) + list(self.dirs)
                 if p == old or p.startswith(old + "/")}
        for src, dst in moved.items():
            self.maybe(dst, DIR if src in self.dirs else self.files[src])
            self.maybe(src, None)
        os.rename(self.abs(old), self.abs(new))
        for src, dst in moved.items():
            if src in self.dirs:
                self.dirs.discard(src)
                self.dirs.add(dst)
            else:
                self.files[dst] = self.files.pop(src)
            self.sure(dst, DIR if dst in self.dirs else self.files[dst])
            self.sure(src, None)

    def op_unlink(self) -> None:
        path = self.rng.choice(self.closed_files())
        self.maybe(path, None)
        os.unlink(self.abs(path))
        del self.files[path]
        self.sure(path, None)

    def op_mkdir(self) -> None:
        self.counter += 1
        path = os.path.normpath(os.path.join(self.rng.choice(sorted(self.dirs)), f"d{self.seed}-{self.counter}"))
        self.maybe(path, DIR)
        os.mkdir(self.abs(path))
        self.dirs.add(path)
        self.sure(path, DIR)

    def op_rmdir(self) -> None:
        empty = [d for d in self.dirs if d != "." and not any(p.startswith(d + "/") for p in
                                                             list(self.files) + list(self.dirs))]
        if not empty:
            return
        path = self.rng.choice(sorted(empty))
        self.maybe(path, None)
        os.rmdir(self.abs(path))
        self.dirs.discard(path)
        self.sure(path, None)

    def op_held_write(self) -> None:
        """Write more into a file kept open; sometimes fsync it, close it, or unlink it while open."""
        path = self.rng.choice(sorted(self.held))
        fd, content = self.held[path], self.files[path]
        appending = fd in self.appending or self.rng.random() < 0.6
        offset = len(content) if appending else self.rng.randint(0, len(content))
        self._write(fd, path, content, offset, self.data(self.rng.randint(1, 400_000)))
        roll = self.rng.random()
        if roll < 0.25:
            os.fsync(fd)
            self.sure(path, content)
        elif roll < 0.45:
            del self.held[path]
            self._close(fd)
            self.sure(path, content)
        elif roll < 0.55:
            self.maybe(path, None)
            os.unlink(self.abs(path))
            self.sure(path, None)
            del self.held[path]
            self.orphans.append((fd, self.files.pop(path)))

    def op_orphan_write(self) -> None:
        fd, content = self.rng.choice(self.orphans)
        os.pwrite(fd, self.data(self.rng.randint(1, 200_000)), self.rng.randint(0, len(content)))  # not checked

    # -- the loop --------------------------------------------------------------------------

    def choose(self):
        total = sum(len(c) for c in self.files.values())
        ops = [(self.op_new, 6), (self.op_mkdir, 1), (self.op_stream_then_random, 2)]
        if self.closed_files():
            ops += [(self.op_append, 3), (self.op_patch, 3), (self.op_truncate, 1), (self.op_rename, 2),
                    (self.op_unlink, 8 if total > MAX_TOTAL or len(self.files) > MAX_FILES else 2)]
        if len(self.dirs) > 1:
            ops += [(self.op_rename_dir, 1), (self.op_rmdir, 1)]
        if self.held:
            ops.append((self.op_held_write, 4))
        if self.orphans:
            ops.append((self.op_orphan_write, 1))
        if total > MAX_TOTAL or len(self.files) > MAX_FILES:
            ops = [(fn, w) for fn, w in ops if fn not in (self.op_new, self.op_stream_then_random)]
        fns, weights = zip(*ops)
        return self.rng.choices(fns, weights)[0]

    def run(self, max_ops: int) -> None:
        self.journal.write(json.dumps({"k": "ready"}) + "\n")
        for _ in range(max_ops):
            op = self.choose()
            self.journal.write(json.dumps({"k": "op", "op": op.__name__[3:]}) + "\n")  # for diagnosis only
            op()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crash_workload")
    parser.add_argument("root")
    parser.add_argument("journal")
    parser.add_argument("seed", type=int)
    parser.add_argument("--ops", type=int, default=100_000)
    args = parser.parse_args(argv)
    try:
        Workload(args.root, args.journal, args.seed).run(args.ops)
    except OSError as exc:  # the daemon was killed under us: that is the point
        print(f"workload stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
