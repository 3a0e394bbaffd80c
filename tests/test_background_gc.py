"""Garbage collection in the background of a mount (chunkfs/fs/gcworker.py).

Deleting a big tree returns about as fast as the namespace changes, and the
dead bytes come back afterwards while the filesystem keeps answering.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import subprocess
import termios
import threading
import time

import pytest

from chunkfs.errors import StoreFullError
from chunkfs.store._gcworker import DEFAULT_MIN_DEAD_FRACTION, DEFAULT_MIN_GARBAGE, BackgroundGC
from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore
from conftest import CLI, REPO, cli_env, run_cli, wait_until

TREE_FILES = 10_000


# -- the worker, in-process ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with ChunkStore.create(tmp_path / "store") as s:
        yield s


def _make_garbage(store, files: int = 60, size: int = 100_000, keep_every: int = 2) -> None:
    for i in range(files):
        store.ingest(f"f{i}", os.urandom(size))
    for i in range(files):
        if i % keep_every:
            store.delete(f"f{i}")


def test_worker_reclaims_dead_bytes(store):
    _make_garbage(store, keep_every=20)  # 95 % dead: worth rewriting even after punching
    gc = BackgroundGC(store, interval=0.05, min_garbage=1).start()
    try:
        # the run is counted when gc returns, a moment after its last commit zeroed the garbage
        assert wait_until(lambda: store.stats()["garbage_bytes"] == 0 and gc.runs >= 1, timeout=20)
    finally:
        gc.stop()
    assert gc.reclaimed > 0 and gc.moved <= gc.reclaimed
    assert check_store(store).clean
    for i in range(0, 60, 20):
        assert len(store.read(f"f{i}")) == 100_000


def test_worker_leaves_a_pack_that_is_only_half_dead(store):
    """Its dead records were punched out at delete; copying the live half would write more than it frees."""
    _make_garbage(store)
    gc = BackgroundGC(store, interval=0.02, min_garbage=1).start()
    time.sleep(0.3)
    gc.stop()
    assert gc.runs == 0 and gc.garbage_bytes() == 0 and store.stats()["garbage_bytes"] > 0


def test_worker_waits_for_enough_garbage(store):
    _make_garbage(store, files=4, size=10_000)
    gc = BackgroundGC(store, interval=0.02, min_garbage=10 * 1024 * 1024).start()
    time.sleep(0.3)
    gc.stop()
    assert gc.runs == 0 and store.stats()["garbage_bytes"] > 0


def test_worker_stops_between_packs(store, monkeypatch):
    """stop() ends a run after the pack in progress; the store stays consistent."""
    _make_garbage(store, keep_every=20)
    gc = BackgroundGC(store, interval=3600, min_garbage=1)
    started, release = threading.Event(), threading.Event()
    real_gc = store.gc

    def slow_gc(fraction, progress=None):
        def between(done, total):
            started.set()
            release.wait(5)
            progress(done, total)
        return real_gc(fraction, progress=between)

    monkeypatch.setattr(store, "gc", slow_gc)
    gc.start()
    gc.kick()
    assert started.wait(10)
    stopper = threading.Thread(target=gc.stop)
    stopper.start()
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert check_store(store).clean


def test_worker_survives_a_full_disk(store, monkeypatch, caplog):
    _make_garbage(store, keep_every=20)

    def full(*args, **kwargs):
        raise StoreFullError("no space left on device")

    monkeypatch.setattr(store, "gc", full)
    gc = BackgroundGC(store, interval=0.02, min_garbage=1).start()
    assert wait_until(lambda: "background gc paused" in caplog.text, timeout=10)
    gc.stop()
    assert not any(r.levelname == "ERROR" for r in caplog.records)


# -- through a mount ----------------------------------------------------------------------------


def _create_tree(root, keep) -> float:
    """10,000 small files in 100 directories, with a bigger file kept every 50, so packs hold both."""
    payload = os.urandom(8192)
    started = time.monotonic()
    for d in range(100):
        os.mkdir(root / f"d{d}")
        for i in range(100):
            with open(root / f"d{d}" / f"f{i}", "wb") as fh:
                fh.write(payload[: 1000 + (d * 100 + i) * 37 % 7000] + os.urandom(64))
            if i % 50 == 0:
                with open(keep / f"k{d}-{i}", "wb") as fh:
                    fh.write(os.urandom(100_000))
    return time.monotonic() - started


class _Prober(threading.Thread):
    """Keeps asking the daemon (readdir, lookups of fresh names) and records the slowest answer."""

    def __init__(self, directory):
        super().__init__(daemon=True)
        self.directory = directory
        self.stop = threading.Event()
        self.slowest = 0.0
        self.count = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self._probe()
        except OSError as exc:
            self.error = exc

    def _probe(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            t = time.monotonic()
            names = os.listdir(self.directory)
            try:
                os.stat(self.directory / f"absent-{n}")  # a new name: the kernel has to ask
            except OSError as exc:
                assert exc.errno == errno.ENOENT
            os.stat(self.directory / names[0])
            self.slowest = max(self.slowest, time.monotonic() - t)
            self.count += 1
            time.sleep(0.005)


@pytest.mark.mount
@pytest.mark.slow
def _nothing_left_for_the_worker(store_path) -> bool:
    """The worker's own policy is satisfied: too few disk bytes would come back from packs dead enough."""
    with ChunkStore.open(store_path, readonly=True) as store:
        return store.garbage_bytes(DEFAULT_MIN_DEAD_FRACTION) < DEFAULT_MIN_GARBAGE


@pytest.mark.slow
def test_rm_rf_of_10000_files_returns_promptly_and_space_comes_back(mounted_fs, capsys):
    tree, keep = mounted_fs / "tree", mounted_fs / "keep"
    tree.mkdir()
    keep.mkdir()
    created = _create_tree(tree, keep)
    before = mounted_fs.stats()
    assert before["files"] == TREE_FILES + 200
    started = time.monotonic()
    subprocess.run(["rm", "-rf", str(tree)], check=True, timeout=600)
    removed = time.monotonic() - started
    prober = _Prober(keep)  # while the background gc compacts
    prober.start()
    try:
        assert wait_until(lambda: mounted_fs.stats()["files"] == 200, timeout=60)
        # what stays dead is below the worker's thresholds (too little, or spread over packs too
        # live to be worth copying; its disk blocks were punched out at delete anyway)
        assert wait_until(lambda: _nothing_left_for_the_worker(mounted_fs.store), timeout=120,
                          interval=0.5), f"background gc left {mounted_fs.stats()['garbage_bytes']} dead bytes"
        reclaimed = time.monotonic() - started
    finally:
        prober.stop.set()
        prober.join(10)
    assert prober.error is None, prober.error
    after = mounted_fs.stats()
    with capsys.disabled():
        print(f"\nbackground gc: created {TREE_FILES} files in {created:.1f} s, rm -rf took {removed:.1f} s "
              f"({removed / created:.2f} of creating), dead bytes reclaimed {reclaimed:.1f} s after rm began; "
              f"store {before['disk_bytes'] >> 20} -> {after['disk_bytes'] >> 20} MiB "
              f"({after['garbage_bytes']} B left dead); slowest of "
              f"{prober.count} readdir+lookup probes meanwhile: {prober.slowest * 1000:.0f} ms")
    assert removed < created, "deleting should cost less than creating"
    assert after["disk_bytes"] < before["disk_bytes"] * 0.75
    assert prober.count > 10 and prober.slowest < 2.0
    for name in sorted(os.listdir(keep))[:20]:
        assert len((keep / name).read_bytes()) == 100_000
    mounted_fs.unmount()
    with ChunkStore.open(mounted_fs.store, readonly=True) as store:
        report = check_store(store)
    assert report.clean, report.findings
    with ChunkStore.open(mounted_fs.store) as store:
        store.gc(min_dead_fraction=0)
        assert check_store(store).garbage_bytes == 0


# -- chunkfs gc ----------------------------------------------------------------------------------


def _garbage_store(path) -> None:
    with ChunkStore.create(path) as s:
        _make_garbage(s, files=20, size=50_000, keep_every=10)


def test_gc_command_prints_one_line(tmp_path):
    _garbage_store(tmp_path / "store")
    result = run_cli("gc", tmp_path / "store")
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"gc: removed 1 pack \(1 rewritten\), moved [\d.]+ KiB in \d+ live "
                                            r"chunks, reclaimed [\d.]+ KiB", lines[0]), lines


def test_gc_command_shows_progress_on_a_terminal(tmp_path):
    _garbage_store(tmp_path / "store")
    main, tty = os.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # tqdm draws nothing 0 wide
    proc = subprocess.Popen(CLI + ["gc", str(tmp_path / "store")], cwd=REPO, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=tty)
    os.close(tty)
    shown = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not data:
            break
        shown += data
    out = proc.communicate(timeout=60)[0].decode()
    os.close(main)
    assert proc.returncode == 0
    assert b"gc: packs" in shown and b"pack" in shown
    assert out.startswith("gc: removed 1 pack (1 rewritten)")
