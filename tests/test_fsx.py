"""A randomized file exerciser in the spirit of the classic fsx, against a real daemon-mode mount.

Thousands of random operations on a few files, each checked against a shadow
copy kept in a bytearray: reads, writes, appends (through an ``O_APPEND``
descriptor), writes past end of file that leave holes, truncates up and down
(through a descriptor and through the path), writes and reads through shared
mappings (mmap + msync + munmap), ``O_DIRECT`` reads and writes (which reach
the daemon without the page cache: a read there sees the daemon's own merged
view), fsync, several descriptors per file (closed and reopened at random, so
commits happen at every point), and two threads writing disjoint ranges
through different descriptors while a third reads.  In the middle the
filesystem is unmounted and mounted again, and every file is verified whole.

Reproducing a failure: the failure message names the seed and the number of
operations; run ::

    CHUNKFS_FSX_SEED=<seed> CHUNKFS_FSX_OPS=<n> CHUNKFS_FSX_LAYOUT=<layout> pytest tests/test_fsx.py -k random_seed

(the same number of operations matters: the remounts happen at a third and two
thirds of them).  ``CHUNKFS_FSX_OPS`` also makes runs longer (the CI default is small enough to
keep this file to about a minute and a half).
"""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from dataclasses import dataclass, field

import pytest

pytestmark = [pytest.mark.mount, pytest.mark.slow]

SEED_ENV = "CHUNKFS_FSX_SEED"
OPS_ENV = "CHUNKFS_FSX_OPS"
LAYOUT_ENV = "CHUNKFS_FSX_LAYOUT"
FIXED_SEED = 20251121
DEFAULT_OPS = 4000
MAX_SIZE = 6 * 1024 * 1024  # beyond this, truncates go down and holes stay small
KiB = 1024
MiB = 1024 * 1024
LOG_TAIL = 40

# weight of each operation (see Fsx.op_*)
WEIGHTS = {
    "read": 16, "write": 20, "append": 8, "hole": 4, "truncate": 7, "path_truncate": 2,
    "map_write": 7, "map_read": 4, "direct_read": 4, "direct_write": 2, "parallel": 2,
    "fsync": 2, "reopen": 5, "close_all": 2,
}

# store layouts to run against: small chunks put many boundaries into small files
LAYOUTS = {
    "fastcdc-4k": ["--avg-size", "4K"],
    "fixed-4k": ["--chunker", "fixed", "--avg-size", "4K"],
    "fastcdc-32k": [],
}


class FsxMismatch(AssertionError):
    pass


@dataclass
class Desc:
    fd: int
    flags: int

    @property
    def readable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_WRONLY

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY

    @property
    def appending(self) -> bool:
        return bool(self.flags & os.O_APPEND)


@dataclass
class FsxFile:
    path: str
    shadow: bytearray = field(default_factory=bytearray)
    descs: list[Desc] = field(default_factory=list)

    def size(self) -> int:
        return len(self.shadow)


def _apply(shadow: bytearray, offset: int, data: bytes) -> None:
    """What a write does to a file: zero-fill any gap, then overwrite or extend."""
    if offset > len(shadow):
        shadow.extend(bytes(offset - len(shadow)))
    shadow[offset : offset + len(data)] = data


def _truncate(shadow: bytearray, size: int) -> None:
    if size < len(shadow):
        del shadow[size:]
    else:
        shadow.extend(bytes(size - len(shadow)))


class Fsx:
    """The exerciser: random operations on ``nfiles`` files under ``fs``, checked after each."""

    def __init__(self, fs, seed: int, layout: str, test: str = "random_seed", nfiles: int = 3):
        self.fs = fs
        self.seed = seed
        self.layout = layout
        self.test = test  # the test that repeats a run from the environment variables
        self.ops = 0
        self.rng = random.Random(seed)
        self.files = [FsxFile(str(fs / f"fsx{i}")) for i in range(nfiles)]
        self.log: list[str] = []
        self.step = 0
        self.counts: dict[str, int] = {}
        for f in self.files:
            self._open(f, os.O_RDWR | os.O_CREAT)

    # -- running ---------------------------------------------------------------------

    def run(self, ops: int, remount_at: tuple[int, ...] = ()) -> None:
        names, weights = zip(*WEIGHTS.items())
        self.ops = ops
        for self.step in range(1, ops + 1):
            if self.step in remount_at:
                self.remount()
            name = self.rng.choices(names, weights)[0]
            f = self.rng.choice(self.files)
            try:
                getattr(self, f"op_{name}")(f)
            except OSError as exc:  # an errno the shadow cannot explain: report it with the history
                self.fail(f"{name} on {f.path} failed: {exc!r}")
            self.counts[name] = self.counts.get(name, 0) + 1
            self._check_size(f)
        self.close_everything()
        self.verify_all("final")

    def note(self, f: FsxFile, text: str) -> None:
        self.log.append(f"#{self.step} {os.path.basename(f.path)} {text}")

    def fail(self, what: str) -> None:
        tail = "\n  ".join(self.log[-LOG_TAIL:])
        raise FsxMismatch(f"fsx seed {self.seed}, layout {self.layout}, operation {self.step} of {self.ops}: "
                          f"{what}\nreproduce: {SEED_ENV}={self.seed} {OPS_ENV}={self.ops} {LAYOUT_ENV}={self.layout} "
                          f"pytest tests/test_fsx.py -k {self.test}\nlast operations:\n  {tail}")

    def compare(self, f: FsxFile, offset: int, got: bytes, expected: bytes, how: str) -> None:
        if got == expected:
            return
        n = min(len(got), len(expected))
        first = next((i for i in range(n) if got[i] != expected[i]), n)
        self.fail(f"{how} of {f.path} at {offset}: {len(got)} bytes, expected {len(expected)}; "
                  f"first difference at file offset {offset + first}: got {got[first:first + 16].hex()} "
                  f"expected {expected[first:first + 16].hex()} (file size {f.size()})")

    def _check_size(self, f: FsxFile) -> None:
        if not f.descs:
            return
        size = os.fstat(f.descs[0].fd).st_size
        if size != f.size():
            self.fail(f"fstat size of {f.path} is {size}, expected {f.size()}")

    # -- descriptors -------------------------------------------------------------------

    def _open(self, f: FsxFile, flags: int) -> Desc:
        desc = Desc(os.open(f.path, flags | os.O_CLOEXEC, 0o644), flags)
        f.descs.append(desc)
        if flags & os.O_TRUNC:
            f.shadow.clear()
        return desc

    def _writer(self, f: FsxFile) -> Desc:
        """A writable descriptor for pwrite: not O_APPEND, since on Linux pwrite there appends anyway."""
        choices = [d for d in f.descs if d.writable and not d.appending]
        return self.rng.choice(choices) if choices else self._open(f, os.O_RDWR)

    def _reader(self, f: FsxFile) -> Desc:
        choices = [d for d in f.descs if d.readable]
        return self.rng.choice(choices) if choices else self._open(f, os.O_RDONLY)

    def close_file(self, f: FsxFile) -> None:
        while f.descs:
            os.close(f.descs.pop().fd)

    def close_everything(self) -> None:
        for f in self.files:
            self.close_file(f)

    # -- data ----------------------------------------------------------------------------

    def data(self, n: int) -> bytes:
        """Random bytes mostly; also zeros, a low-entropy pattern, or a copy of existing data (dedup)."""
        kind = self.rng.random()
        if kind < 0.6 or n == 0:
            return self.rng.randbytes(n)
        if kind < 0.75:
            return bytes(n)
        if kind < 0.85:
            unit = self.rng.randbytes(self.rng.randint(1, 64))
            return (unit * (n // len(unit) + 1))[:n]
        src = self.rng.choice(self.files).shadow
        if len(src) < n:
            return self.rng.randbytes(n)
        start = self.rng.randrange(len(src) - n + 1)
        return bytes(src[start : start + n])

    def length(self, big: int = 128 * KiB) -> int:
        """Mostly small, sometimes up to a MiB: writes straddle 0, 1 or many chunks."""
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(1, 4 * KiB)
        if r < 0.95:
            return self.rng.randint(1, big)
        return self.rng.randint(big, MiB)

    def offset(self, f: FsxFile, slack: int = 64 * KiB) -> int:
        return self.rng.randrange(f.size() + slack)

    # -- operations ----------------------------------------------------------------------

    def op_read(self, f: FsxFile) -> None:
        desc = self._reader(f)
        offset, n = self.offset(f), self.length(256 * KiB)
        self.note(f, f"read fd{desc.fd} off={offset} len={n}")
        self.compare(f, offset, os.pread(desc.fd, n, offset), bytes(f.shadow[offset : offset + n]), "read")

    def op_write(self, f: FsxFile) -> None:
        desc = self._writer(f)
        offset, data = self.offset(f), self.data(self.length())
        self.note(f, f"write fd{desc.fd} off={offset} len={len(data)}")
        self._pwrite(f, desc, offset, data)

    def _pwrite(self, f: FsxFile, desc: Desc, offset: int, data: bytes) -> None:
        done = os.pwrite(desc.fd, data, offset)
        if done != len(data):
            self.fail(f"short write: {done} of {len(data)}")
        _apply(f.shadow, offset, data)

    def op_append(self, f: FsxFile) -> None:
        desc = next((d for d in f.descs if d.appending), None) or self._open(f, os.O_WRONLY | os.O_APPEND)
        data = self.data(self.length())
        self.note(f, f"append fd{desc.fd} len={len(data)} at {f.size()}")
        if os.write(desc.fd, data) != len(data):
            self.fail("short append")
        f.shadow.extend(data)

    def op_hole(self, f: FsxFile) -> None:
        """A write past end of file: the gap must read as zeros."""
        desc = self._writer(f)
        top = 64 * KiB if f.size() > MAX_SIZE else (8 * MiB if self.rng.random() < 0.1 else MiB)
        offset = f.size() + self.rng.randint(1, top)
        data = self.data(self.rng.randint(1, 8 * KiB))
        self.note(f, f"hole-write fd{desc.fd} off={offset} len={len(data)} (gap {offset - f.size()})")
        self._pwrite(f, desc, offset, data)

    def new_size(self, f: FsxFile) -> int:
        if f.size() > MAX_SIZE or self.rng.random() < 0.5:
            return self.rng.randint(0, f.size())
        return f.size() + self.rng.randint(0, 2 * MiB)

    def op_truncate(self, f: FsxFile) -> None:
        desc = self._writer(f)
        size = self.new_size(f)
        self.note(f, f"ftruncate fd{desc.fd} {f.size()} -> {size}")
        os.ftruncate(desc.fd, size)
        _truncate(f.shadow, size)

    def op_path_truncate(self, f: FsxFile) -> None:
        size = self.new_size(f)
        self.note(f, f"truncate(path) {f.size()} -> {size} with {len(f.descs)} open")
        os.truncate(f.path, size)
        _truncate(f.shadow, size)

    def _mapped_range(self, f: FsxFile, max_len: int) -> tuple[int, int]:
        offset = self.offset(f)
        return offset, self.rng.randint(1, max_len)

    def op_map_write(self, f: FsxFile) -> None:
        """Extend with ftruncate if needed (mmap cannot grow a file), then write through a mapping."""
        desc = next((d for d in f.descs if (d.flags & os.O_ACCMODE) == os.O_RDWR), None) or self._open(f, os.O_RDWR)
        offset, n = self._mapped_range(f, 256 * KiB)
        data = self.data(n)
        end = offset + n
        self.note(f, f"map-write fd{desc.fd} off={offset} len={n} (size {f.size()})")
        if end > f.size():
            os.ftruncate(desc.fd, end)
            _truncate(f.shadow, end)
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(desc.fd, end - base, mmap.MAP_SHARED, offset=base) as mm:
            mm[offset - base : end - base] = data
            mm.flush()
        _apply(f.shadow, offset, data)

    def op_map_read(self, f: FsxFile) -> None:
        if not f.size():
            return
        desc = self._reader(f)
        offset = self.rng.randrange(f.size())
        end = min(f.size(), offset + self.length(256 * KiB))
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        self.note(f, f"map-read fd{desc.fd} off={offset} len={end - offset}")
        with mmap.mmap(desc.fd, end - base, mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base) as mm:
            got = mm[offset - base : end - base]
        self.compare(f, offset, got, bytes(f.shadow[offset:end]), "mapped read")

    def op_direct_read(self, f: FsxFile) -> None:
        """O_DIRECT bypasses the page cache: this is what the daemon itself serves."""
        whole = self.rng.random() < 0.2
        offset, n = (0, f.size() + 1) if whole else (self.offset(f), self.length(256 * KiB))
        self.note(f, f"direct-read off={offset} len={n}")
        fd = os.open(f.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            got = _pread_all(fd, n, offset)
        finally:
            os.close(fd)
        self.compare(f, offset, got, bytes(f.shadow[offset : offset + n]), "O_DIRECT read")

    def op_direct_write(self, f: FsxFile) -> None:
        offset, data = self.offset(f), self.data(self.length())
        self.note(f, f"direct-write off={offset} len={len(data)}")
        fd = os.open(f.path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            if os.pwrite(fd, data, offset) != len(data):
                self.fail("short O_DIRECT write")
        finally:
            os.close(fd)
        _apply(f.shadow, offset, data)

    def op_parallel(self, f: FsxFile) -> None:
        """Two threads write disjoint ranges through two descriptors while a third reads below both."""
        first = self._writer(f)
        second = self._open(f, os.O_RDWR)
        lo = self.rng.randrange(f.size() + 1)
        a_len, gap, b_len = self.length(), self.rng.randint(0, 64 * KiB), self.length()
        writes = [(first, lo, self.data(a_len)), (second, lo + a_len + gap, self.data(b_len))]
        self.rng.shuffle(writes)
        stable = bytes(f.shadow[:lo])
        self.note(f, f"parallel writes {[(d.fd, o, len(b)) for d, o, b in writes]} + read [0, {lo})")
        errors: list[BaseException] = []
        got: list[bytes] = []

        def guarded(fn, *args):
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 (re-raised below, in the test's thread)
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(os.pwrite, d.fd, b, o)) for d, o, b in writes]
        reader = self._reader(f)
        threads.append(threading.Thread(target=guarded, args=(lambda: got.append(_pread_all(reader.fd, lo, 0)),)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for _, offset, data in writes:
            _apply(f.shadow, offset, data)
        self.compare(f, 0, got[0], stable, "read during parallel writes")

    def op_fsync(self, f: FsxFile) -> None:
        desc = self._writer(f)
        self.note(f, f"fsync fd{desc.fd}")
        os.fsync(desc.fd)

    def op_reopen(self, f: FsxFile) -> None:
        """Close one descriptor (a flush: commit) and open another kind."""
        if f.descs:
            desc = f.descs.pop(self.rng.randrange(len(f.descs)))
            os.close(desc.fd)
        flags = self.rng.choice([os.O_RDWR, os.O_RDWR, os.O_RDONLY, os.O_WRONLY, os.O_WRONLY | os.O_APPEND,
                                 os.O_RDWR | os.O_TRUNC if self.rng.random() < 0.1 else os.O_RDWR])
        desc = self._open(f, flags)
        self.note(f, f"reopen as fd{desc.fd} flags={flags:#o} ({len(f.descs)} open)")

    def op_close_all(self, f: FsxFile) -> None:
        """Last close: commit and drop the open file; verify what the store now serves."""
        self.note(f, f"close all {len(f.descs)} descriptors")
        self.close_file(f)
        if self.rng.random() < 0.3:
            size = self.new_size(f)
            self.note(f, f"truncate(path) while closed {f.size()} -> {size}")
            os.truncate(f.path, size)
            _truncate(f.shadow, size)
        self.verify(f, "after last close")
        self._open(f, os.O_RDWR)

    # -- whole-file checks ----------------------------------------------------------------

    def verify(self, f: FsxFile, when: str) -> None:
        st = os.stat(f.path)
        if st.st_size != f.size():
            self.fail(f"{when}: size of {f.path} is {st.st_size}, expected {f.size()}")
        fd = os.open(f.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            got = _pread_all(fd, f.size() + 1, 0)
        finally:
            os.close(fd)
        self.compare(f, 0, got, bytes(f.shadow), f"{when}: whole-file read")

    def verify_all(self, when: str) -> None:
        for f in self.files:
            self.verify(f, when)

    def remount(self) -> None:
        self.log.append(f"#{self.step} unmount and mount again")
        self.close_everything()
        self.fs.remount()
        self.verify_all("after remount")
        for f in self.files:
            self._open(f, os.O_RDWR)


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = os.pread(fd, min(n - len(out), 4 * MiB), offset + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def _ops(default: int = DEFAULT_OPS) -> int:
    return int(os.environ.get(OPS_ENV, default))


def _exercise(mount_factory, layout: str, seed: int, ops: int, options=(), test: str = "random_seed") -> Fsx:
    fs = mount_factory(mkfs_args=LAYOUTS[layout], options=options)
    fsx = Fsx(fs, seed, layout, test)
    started = time.monotonic()
    fsx.run(ops, remount_at=(ops // 3, 2 * ops // 3))
    elapsed = time.monotonic() - started
    logical = fs.stats()["logical_bytes"]
    assert logical == sum(f.size() for f in fsx.files), "the store's logical byte count drifted from the files"
    print(f"fsx seed={seed} layout={layout} ops={ops} in {elapsed:.1f}s; sizes "
          f"{[f.size() for f in fsx.files]}; counts {dict(sorted(fsx.counts.items()))}")
    return fsx


@pytest.mark.parametrize("layout", ["fastcdc-4k", "fixed-4k"])
def test_fsx_fixed_seed(mount_factory, layout):
    _exercise(mount_factory, layout, FIXED_SEED, _ops())


def test_fsx_random_seed(mount_factory):
    """A new seed every run (printed; set CHUNKFS_FSX_SEED to repeat one)."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"fsx random seed: {seed} (repeat with {SEED_ENV}={seed})")
    layout = os.environ.get(LAYOUT_ENV) or list(LAYOUTS)[seed % len(LAYOUTS)]
    _exercise(mount_factory, layout, seed, _ops())


@pytest.mark.slow
def test_fsx_writeback_cache(mount_factory):
    """The same exerciser with the kernel's writeback cache on (-o writeback_cache)."""
    seed = int(os.environ.get(SEED_ENV) or FIXED_SEED + 1)
    layout = os.environ.get(LAYOUT_ENV) or "fastcdc-4k"
    _exercise(mount_factory, layout, seed, _ops(DEFAULT_OPS // 4), options=["writeback_cache"],
              test="writeback_cache")
