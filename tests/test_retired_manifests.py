"""Replacing or deleting a big file while a background worker runs: its manifest is retired, not dropped
in the commit (store/_manifests.py ``retire``), and the worker drops its references once the store is quiet.

What a user must see: the new contents at once, fsck clean at every step (the retired references are
counted like any others), the old chunks' space back after the worker's pass, and nothing retired when
no worker runs (the library alone) or the disk is full.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore
from chunkfs.store._gcworker import BackgroundGC
from chunkfs.store._manifests import RETIRE_MIN
from conftest import REPO, cli_env, force_unmount, run_cli, wait_process_gone, wait_until

BIG = 24 * 1024 * 1024  # about 768 chunks of 32 KiB: past RETIRE_MIN


@pytest.fixture
def store(tmp_path):
    with ChunkStore.create(tmp_path / "store") as s:
        yield s


def _deferring(store: ChunkStore) -> None:
    """What a running BackgroundGC does to the store, without its thread: deaths queue, manifests retire."""
    store.dead_space.defer(lambda: None)


def _refs(store: ChunkStore) -> int:
    return store.stats()["chunk_refs"]


def test_replacing_a_big_file_retires_its_manifest_and_a_drop_frees_it(store):
    old, new = os.urandom(BIG), os.urandom(BIG)
    store.ingest("f", old)
    _deferring(store)
    chunks = store.stats()["unique_chunks"]
    assert chunks >= RETIRE_MIN

    store.ingest("f", new)
    assert store.read("f") == new
    assert store.retired_entries() == chunks == store.stats()["retired_refs"]  # the old references are still held ...
    assert store.stats()["unique_chunks"] >= chunks + RETIRE_MIN  # the old chunks live on
    report = check_store(store)
    assert report.clean, report.findings  # ... and counted: fsck sees nothing wrong

    while store.drop_retired(limit=100):
        pass
    assert store.retired_entries() == 0
    assert store.read("f") == new
    assert store.stats()["unique_chunks"] == _refs(store)  # random data: one reference per chunk
    report = check_store(store)
    assert report.clean, report.findings


def test_deleting_a_big_file_retires_it_and_gc_drops_it_first(store):
    store.ingest("keep", os.urandom(100_000))
    store.ingest("big", os.urandom(BIG))
    _deferring(store)
    store.delete("big")
    assert store.retired_entries() > 0 and store.list_files() == ["keep"]
    assert check_store(store).clean

    report = store.gc(min_dead_fraction=0.0)  # `chunkfs gc`: retired references go before compaction
    assert store.retired_entries() == 0
    assert report["bytes_reclaimed"] >= BIG // 2
    assert check_store(store).clean
    assert len(store.read("keep")) == 100_000


def test_small_files_and_the_library_alone_drop_at_once(store):
    store.ingest("big", os.urandom(BIG))
    store.ingest("big", os.urandom(BIG))  # no worker: the commit drops the references itself
    assert store.retired_entries() == 0
    _deferring(store)
    store.ingest("small", os.urandom(1_000_000))
    store.ingest("small", os.urandom(1_000_000))  # far below RETIRE_MIN entries
    store.delete("small")
    assert store.retired_entries() == 0
    assert store.stats()["unique_chunks"] == _refs(store)


def test_a_full_disk_drops_at_once(store):
    store.ingest("big", os.urandom(BIG))
    _deferring(store)
    store.index.low_space = True  # what a failed metadata write on a full disk leaves
    try:
        store.delete("big")
    finally:
        store.index.low_space = False
    assert store.retired_entries() == 0 and _refs(store) == 0


def test_retired_references_survive_a_reopen(tmp_path):
    path = tmp_path / "store"
    with ChunkStore.create(path) as s:
        s.ingest("f", os.urandom(BIG))
        _deferring(s)
        s.ingest("f", b"small now")
        left = s.retired_entries()
    assert left >= RETIRE_MIN
    with ChunkStore.open(path) as s:
        assert s.retired_entries() == left and s.read("f") == b"small now"
        assert check_store(s).clean
        while s.drop_retired():
            pass
        assert s.stats()["unique_chunks"] == 1 and check_store(s).clean


def test_the_worker_drops_when_the_store_is_quiet(store):
    store.ingest("f", os.urandom(BIG))
    gc = BackgroundGC(store, interval=0.05, min_garbage=1).start()
    try:
        store.ingest("f", os.urandom(BIG))
        assert store.retired_entries() > 0 or _refs(store) == store.stats()["unique_chunks"]
        assert wait_until(lambda: store.retired_entries() == 0, timeout=20)
        # the old records die then, and their space comes back (punched: both files share the active pack)
        assert wait_until(lambda: store.stats()["disk_bytes"] < 1.3 * BIG, timeout=20)
    finally:
        gc.stop()
    assert check_store(store).clean
    assert store.stats()["unique_chunks"] == _refs(store)


DROP_CRASH = textwrap.dedent("""
    import os, random, sys
    from chunkfs.store import ChunkStore
    path, nth = sys.argv[1], int(sys.argv[2])
    with ChunkStore.create(path) as store:
        store.ingest("a", random.Random(1).randbytes(%d))
        store.ingest("b", random.Random(2).randbytes(%d))
        store.dead_space.defer(lambda: None)  # as a mount's worker does
        seen = {"n": 0}
        real = store.write_txn
        def write_txn(*args, **kwargs):
            result = real(*args, **kwargs)
            seen["n"] += 1
            if seen["n"] == nth:
                os._exit(42)  # killed right after its nth commit
            return result
        store.write_txn = write_txn
        store.ingest("a", random.Random(3).randbytes(%d))  # retires a's manifest
        store.delete("b")  # retires b's
        while store.drop_retired(limit=200):
            pass
    sys.exit(0)
""" % (BIG, BIG, BIG))


def test_killed_at_any_commit_of_retiring_and_dropping(tmp_path):
    """A crash leaves each manifest retired or dropped page by page, never half a run: fsck is clean before
    and after recovery, the files read what their last commit says, and the drops finish later."""
    new_a = random.Random(3).randbytes(BIG)
    finished = False
    for nth in range(1, 40):
        path = tmp_path / f"store-{nth}"
        proc = subprocess.run([sys.executable, "-c", DROP_CRASH, str(path), str(nth)], cwd=REPO, env=cli_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 42), proc.stderr
        with ChunkStore.open(path, readonly=True) as store:
            report = check_store(store)
            assert report.clean, f"killed after commit {nth}, before recovery: {report.findings}"
        with ChunkStore.open(path) as store:
            assert store.read("a") in (new_a, random.Random(1).randbytes(BIG))
            assert store.list_files() in (["a"], ["a", "b"])
            while store.drop_retired():
                pass
            report = check_store(store)
            assert report.clean, f"killed after commit {nth}: {report.findings}"
            if proc.returncode == 0:
                assert store.read("a") == new_a and store.list_files() == ["a"]
                assert store.stats()["unique_chunks"] == store.stats()["chunk_refs"]
        if proc.returncode == 0:  # every commit was covered
            finished = True
            break
    assert finished


# -- through the mount -------------------------------------------------------------------------------


@pytest.mark.mount
def test_overwrite_and_rm_through_the_mount(mounted_fs, tmp_path):
    """cp over a big file (O_TRUNC) and rm of another: new bytes at once, old references dropped when quiet,
    and what is still retired at unmount is dropped by the next mount."""
    old, new = os.urandom(BIG), os.urandom(BIG)
    for name in ("a", "b"):
        (mounted_fs / name).write_bytes(old)
    src = tmp_path / "new"
    src.write_bytes(new)
    subprocess.run(["cp", str(src), str(mounted_fs / "a")], check=True)
    os.unlink(mounted_fs / "b")
    assert (mounted_fs / "a").read_bytes() == new
    assert not (mounted_fs / "b").exists()
    assert wait_until(lambda: mounted_fs.stats()["retired_refs"] == 0, timeout=30)
    stats = mounted_fs.stats()
    assert stats["unique_chunks"] == stats["chunk_refs"]  # only a's new chunks are left

    (mounted_fs / "b").write_bytes(old)
    subprocess.run(["cp", str(src), str(mounted_fs / "b")], check=True)
    mounted_fs.unmount()  # probably before the worker's pass: the retired manifest waits in the index
    assert run_cli("fsck", mounted_fs.store).returncode == 0
    mounted_fs.mount()
    assert (mounted_fs / "b").read_bytes() == new
    assert wait_until(lambda: mounted_fs.stats()["retired_refs"] == 0, timeout=30)


def test_a_busy_mount_keeps_them_until_the_disk_is_nearly_full(store, monkeypatch):
    from chunkfs.store import _gcworker
    monkeypatch.setattr(_gcworker, "TIGHT_FREE_FRACTION", 0.0)  # no disk looks nearly full
    store.ingest("f", os.urandom(BIG))
    gc = BackgroundGC(store, interval=0.05, min_garbage=1)
    store.dead_space.defer(lambda: None)
    store.ingest("f", b"small")
    assert store.retired_entries() > 0
    store.last_activity = float("inf")  # the store never looks quiet
    gc.start()
    try:
        time.sleep(0.5)  # ten looks of the worker
        assert store.retired_entries() > 0  # busy: the writers come first
        monkeypatch.setattr(_gcworker, "TIGHT_FREE_FRACTION", 1.0)  # now every disk looks nearly full
        assert wait_until(lambda: store.retired_entries() == 0, timeout=20)
    finally:
        gc.stop()
    assert check_store(store).clean


@pytest.mark.mount
@pytest.mark.parametrize("delay", [0.0, 1.3, 2.0])
def test_kill_9_while_retired_manifests_wait_or_drop(mounted_fs, tmp_path, delay):
    """The daemon killed right after an fsync'ed overwrite and an rm (0 s: the old manifests still retired),
    or around when its worker drops them (the mount quiet for a second or two; the kill at every commit of
    a drop is the store-level test above): the remount reads the new bytes, fsck is clean, and what was
    left retired is dropped by the next mount."""
    old, new = os.urandom(BIG), os.urandom(BIG)
    for name in ("a", "b"):
        (mounted_fs / name).write_bytes(old)
    with open(mounted_fs / "a", "wb") as f:  # O_TRUNC, then the new bytes, made durable
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    os.unlink(mounted_fs / "b")
    os.sync()
    time.sleep(delay)
    mounted_fs.allow_daemon_death()
    os.kill(mounted_fs.pid, signal.SIGKILL)
    assert wait_process_gone(mounted_fs.pid, 10)
    mounted_fs.pid = None
    force_unmount(mounted_fs.mountpoint)

    assert run_cli("fsck", mounted_fs.store).returncode == 0  # before recovery: read-only check
    mounted_fs.mount()
    assert (mounted_fs / "a").read_bytes() == new and not (mounted_fs / "b").exists()
    assert wait_until(lambda: mounted_fs.stats()["retired_refs"] == 0, timeout=30)
    mounted_fs.unmount()
    assert run_cli("fsck", mounted_fs.store).returncode == 0


def test_an_idle_worker_with_nothing_retired_writes_nothing(store, monkeypatch):
    """The worker's look for retired manifests is a read: on an idle mount it takes no write transaction
    (and so never the writers' lock) when there is nothing to drop."""
    store.ingest("f", os.urandom(100_000))
    writes = []
    real = store.index.write
    monkeypatch.setattr(store.index, "write", lambda fn, frees=False: writes.append(1) or real(fn, frees))
    store.last_activity = time.monotonic() - 60  # quiet for a minute: the worker would drop now
    gc = BackgroundGC(store, interval=0.02, min_garbage=1 << 40).start()
    try:
        time.sleep(0.5)  # about 25 looks
        assert writes == []
    finally:
        gc.stop()
