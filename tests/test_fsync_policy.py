"""What an fsync and a dropped file cost (issue 20): only what is new, and never the dead space's punching.

* ``ChunkStore.sync`` flushes nothing when no transaction committed since the
  last sync, and callers arriving while a flush is under way share the next
  one (group commit).
* In a run of syncs, a sync whose new bytes are a short tail of the active
  pack flushes once: the tail is written into the index, whose flush makes
  both durable, and after power loss the next open writes it back into the
  pack (the sync log).
* While a background gc worker runs (a mounted filesystem), the records an
  overwrite or a delete kills are punched by the worker, not inside the
  writer's commit.
* The event loop's calls (``nowait``) either finish cheaply or raise
  WouldBlock before changing anything; the request trace of a real mount
  shows an fsync with nothing new answered without a worker thread.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

import chunkfs.store._synclog as synclog
from chunkfs.errors import WouldBlock
from chunkfs.fs import ROOT_INO
from chunkfs.fsck import check_store
from chunkfs.store import BackgroundGC, ChunkStore, MemoryBackend
from conftest import wait_until
from test_fs_core import USER, fs, store  # noqa: F401 (the core tests' fixtures)


class FlushCounter:
    """Counts the store's disk flushes (packs, then index), optionally making each one slow."""

    def __init__(self, store: ChunkStore, delay: float = 0.0):
        self.packs = self.index = 0
        self.delay = delay
        real_packs, real_index = store.packs.sync, store.index.sync

        def packs_sync():
            self.packs += 1
            real_packs()

        def index_sync():
            time.sleep(self.delay)
            self.index += 1
            real_index()

        store.packs.sync, store.index.sync = packs_sync, index_sync


def test_a_sync_with_nothing_new_flushes_nothing(store):
    store.ingest("a", os.urandom(100_000))
    flushes = FlushCounter(store)
    store.sync()
    assert (flushes.packs, flushes.index) == (1, 1)
    store.sync()
    store.sync(nowait=True)  # nothing to flush: answers at once instead of WouldBlock
    assert (flushes.packs, flushes.index) == (1, 1)
    store.ingest("b", b"new bytes")
    with pytest.raises(WouldBlock):
        store.sync(nowait=True)  # a flush is due: the event loop must not do it
    store.sync()
    assert (flushes.packs, flushes.index) == (2, 2)  # a second sync is not yet a run of them: no sync log


def test_concurrent_syncs_share_one_flush(store):
    store.ingest("a", b"first")
    flushes = FlushCounter(store, delay=0.3)
    first = threading.Thread(target=store.sync)
    first.start()
    assert wait_until(lambda: store.syncer.busy, timeout=10)
    store.ingest("b", b"committed while the first flush runs")
    waiters = [threading.Thread(target=store.sync) for _ in range(4)]
    for t in waiters:
        t.start()
    for t in [first, *waiters]:
        t.join(20)
    assert flushes.index == 2  # the first, then one more for all four that waited
    store.sync()
    assert flushes.index == 2


class PackFlushes:
    """Records, for each pack, how many of its bytes the last flush of it made durable."""

    def __init__(self, store: ChunkStore):
        self.store = store
        self.sizes: dict[int, int] = {}
        backend = store.packs.backend
        real = backend.sync

        def sync(packs):
            packs = list(packs)
            for pack in packs:
                self.sizes[pack] = os.path.getsize(backend.path(pack))  # written before the flush: durable after
            real(packs)

        backend.sync = sync

    def power_loss_copy(self, dest, loss: str) -> None:
        """What the disk may hold after power loss now: the index as flushed, each pack's unflushed tail gone."""
        shutil.copytree(self.store.path, dest, ignore=shutil.ignore_patterns("lock"))
        for name in os.listdir(dest / "packs"):
            path = dest / "packs" / name
            size, durable = os.path.getsize(path), self.sizes.get(int(name[:8], 16), 0)
            with open(path, "r+b") as fh:
                if loss == "truncated":
                    fh.truncate(durable)
                else:  # the size survived, the bytes did not
                    fh.seek(durable)
                    fh.write(bytes(size - durable))


def log_records(store: ChunkStore) -> int:
    with store.read_txn() as txn:
        return txn.stat(store.index.synclog)["entries"]


@pytest.fixture(autouse=True)
def runs_of_syncs(monkeypatch):
    """Syncs a few calls apart are a run however slow the machine: the sync log's rule is not a timing test."""
    monkeypatch.setattr(synclog, "RUN_GAP", 3600.0)


def start_a_run(store: ChunkStore) -> None:
    """Two flushing syncs: the next one is in a run of syncs."""
    for name in ("run-1", "run-2"):
        store.ingest(name, os.urandom(1000))
        store.sync()


def test_a_lone_sync_flushes_the_pack_and_the_index(tmp_path):
    store = ChunkStore.create(tmp_path / "store")
    store.ingest("first", os.urandom(200_000))
    store.sync()
    flushes = FlushCounter(store)
    store.ingest("second", os.urandom(20_000))
    store.sync()  # one flushing sync before it: not a run
    assert (flushes.packs, flushes.index) == (1, 1) and log_records(store) == 0
    store.ingest("third", os.urandom(20_000))
    store.sync()  # two before it: a run, and the tail is short
    assert (flushes.packs, flushes.index) == (1, 2) and log_records(store) > 0
    store.close()


@pytest.mark.parametrize("loss", ["truncated", "zeroed"])
def test_a_small_sync_is_one_flush_and_survives_losing_the_pack_tail(tmp_path, loss):
    store = ChunkStore.create(tmp_path / "store")
    flushed = PackFlushes(store)
    store.ingest("first", os.urandom(200_000))
    store.sync()  # a new pack: its first sync flushes it
    start_a_run(store)
    flushes = FlushCounter(store)
    edits = {f"f{i}": os.urandom(20_000 + i) for i in range(5)}
    for name, data in edits.items():  # an application's fsync after each small change
        store.ingest(name, data)
        store.sync()
    assert (flushes.packs, flushes.index) == (0, 5)  # one flush each: the index's
    assert log_records(store) > 0
    flushed.power_loss_copy(tmp_path / "after", loss)
    store.close()
    with ChunkStore.open(tmp_path / "after") as after:
        assert after.recovery.log_replayed >= sum(map(len, edits.values()))
        assert after.recovery.clean and log_records(after) == 0
        assert all(after.read(name) == data for name, data in edits.items())
        check = check_store(after, verify_data=True)
        assert check.clean, check.findings


def test_the_pack_is_flushed_and_the_log_emptied_before_it_grows_long(tmp_path, monkeypatch):
    monkeypatch.setattr(synclog, "MOST_SINCE_FLUSH", 100_000)
    store = ChunkStore.create(tmp_path / "store")
    store.ingest("first", os.urandom(200_000))
    store.sync()
    start_a_run(store)
    flushes = FlushCounter(store)
    for i in range(4):
        store.ingest(f"f{i}", os.urandom(30_000))
        store.sync()
    assert (flushes.packs, flushes.index) == (1, 4)  # the fourth passed 100 kB since the pack's flush
    assert log_records(store) == 0
    store.ingest("long", os.urandom(synclog.MOST_PER_SYNC + 1))
    store.sync()
    assert flushes.packs == 2  # a tail this long is flushed in its pack, not written twice
    store.ingest("short", os.urandom(10_000))
    store.sync()
    assert flushes.packs == 2 and log_records(store) > 0
    store.close()
    with ChunkStore.open(tmp_path / "store", readonly=True) as again:
        assert log_records(again) == 0  # a clean close flushed the packs and emptied it


def test_a_pack_gc_removed_is_not_written_back(tmp_path):
    """Power loss after gc unlinked a wholly dead pack whose tail is in the log, before its drop was durable."""
    store = ChunkStore.create(tmp_path / "store")
    store.ingest("first", os.urandom(200_000))
    store.sync()
    start_a_run(store)
    store.ingest("gone", os.urandom(50_000))
    for name in ("first", "gone", "run-1", "run-2"):
        store.delete(name)
    store.sync()  # by the log: the index knows a wholly dead pack whose tail it holds
    (pack,) = store.packs.existing()
    assert log_records(store) > 0
    shutil.copytree(store.path, tmp_path / "after", ignore=shutil.ignore_patterns("lock"))
    assert store.gc(min_dead_fraction=0)["packs_removed"] == 1  # nothing live: dropped, unlinked, no flush
    os.unlink(tmp_path / "after" / "packs" / f"{pack:08x}.pack")  # the unlink got to the disk, the drop did not
    store.close()
    with ChunkStore.open(tmp_path / "after") as after:
        assert after.recovery.log_replayed == 0 and after.recovery.dropped_packs == 1
        assert after.packs.existing() == [] and log_records(after) == 0
        check = check_store(after, verify_data=True)
        assert check.clean and check.garbage_bytes == 0, check.findings


def test_a_backend_that_cannot_rewrite_a_pack_always_flushes_it(tmp_path):
    with ChunkStore.create(tmp_path / "store", backend=MemoryBackend()) as store:
        flushes = FlushCounter(store)
        for i in range(3):
            store.ingest(f"f{i}", os.urandom(10_000))
            store.sync()
        assert (flushes.packs, flushes.index) == (3, 3) and log_records(store) == 0


def test_the_worker_punches_dead_records_the_commit_only_queues(store):
    punched = []
    backend = store.packs.backend
    real_punch = backend.punch
    backend.punch = lambda pack, offset, length: (punched.append((pack, offset)), real_punch(pack, offset, length))[1]
    store.ingest("old", os.urandom(400_000))
    gc = BackgroundGC(store, interval=3600).start()
    try:
        store.ingest("old", os.urandom(400_000))  # an overwrite: every old record dies in this commit
        assert punched == [] and store.dead_space.pending() > 0
        gc.kick()
        assert wait_until(lambda: store.dead_space.pending() == 0 and punched, timeout=20)
    finally:
        gc.stop()
    store.delete("old")  # no worker any more: punched at once, as the library always did
    assert store.dead_space.pending() == 0 and len(punched) > 10


def test_the_worker_gives_the_queue_back_when_it_stops(store):
    gc = BackgroundGC(store, interval=3600).start()
    store.ingest("f", os.urandom(300_000))
    store.delete("f")
    assert store.dead_space.pending() > 0
    gc.stop()
    assert store.dead_space.pending() == 0 and not store.dead_space.deferred


def test_the_loops_calls_finish_or_leave_everything_as_it_was(fs):
    big = os.urandom(600 * 1024)  # above the small-file limit: streamed, and committed in a thread
    fh, inode = fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR, USER)
    assert fs.write(fh, 0, big, nowait=True) == len(big)  # an append hands its bytes to the pump
    with pytest.raises(WouldBlock):
        fs.write(fh, 10, b"x", nowait=True)  # out of order: the stream would have to commit first
    with pytest.raises(WouldBlock):
        fs.flush(fh, nowait=True)  # committing 600 KiB is a worker's job
    assert fs.getattr(inode.ino).size == len(big) and fs.read(fh, 0, 20) == big[:20]
    fs.write(fh, 10, b"x")
    fs.fsync(fh)
    assert fs.fsync(fh, nowait=True)  # nothing new: no commit, no flush, no thread
    assert fs.write(fh, 100, b"y", nowait=True) == 1  # a write into the staging file is cheap
    assert fs.read(fh, 0, 101) == big[:10] + b"x" + big[11:100] + b"y"
    fs.release(fh)


@pytest.mark.mount
def test_the_request_trace_shows_a_clean_fsync_answered_on_the_loop(mount_factory, tmp_path, monkeypatch):
    trace = tmp_path / "trace.json"
    monkeypatch.setenv("CHUNKFS_REQUEST_TRACE", str(trace))
    fs = mount_factory()
    path = fs / "big"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for _ in range(8):
            os.write(fd, os.urandom(1024 * 1024))
        os.fsync(fd)  # commits 8 MiB and flushes: in a worker thread
        os.fsync(fd)  # nothing new
        os.fsync(fd)
    finally:
        os.close(fd)
    fs.unmount()
    requests = json.loads(trace.read_text())["requests"]
    assert requests["fsync"]["count"] == 3 and requests["fsync"]["threaded"] == 1
    assert requests["write"]["bytes"] == 8 * 1024 * 1024
    assert requests["write"]["threaded"] < requests["write"]["count"]  # appends run on the loop
