"""The file data path in-process: random writes, truncates and reads against a bytearray.

Beyond read-your-writes, each commit must leave exactly the chunk boundaries a
from-scratch chunking of the content would give, where the content is the
runs of written bytes between holes (a hole is a range never written, or
truncated away and not written since), each chunked on its own: that is
what makes incremental re-chunking safe for dedup.
"""

import errno
import re
import os
import random
import time

import pytest

from chunkfs import ChunkStore
from chunkfs.chunker import FastCDCChunker, chunk_stream
from chunkfs.fs.openfile import FileData, file_id_for
from chunkfs.fs.rechunk import BaseEdit
from chunkfs.errors import StoreFullError
from chunkfs.fsck import check_store

SEEDS = [1, 2, 3, int(os.environ.get("CHUNKFS_TEST_SEED", random.randrange(1 << 30)))]


@pytest.fixture
def store(store_dir):
    with ChunkStore.create(store_dir, min_size=256, avg_size=1024, max_size=4096) as s:
        yield s


class Shadow(bytearray):
    """The expected contents, and which bytes were written (1) rather than left a hole (0)."""

    def __init__(self):
        super().__init__()
        self.written = bytearray()

    def write(self, off: int, data: bytes) -> None:
        self.resize(max(off, len(self)))
        self[off:off + len(data)] = data
        self.written[off:off + len(data)] = b"\1" * len(data)

    def resize(self, n: int) -> None:
        if n < len(self):
            del self[n:]
            del self.written[n:]
        else:
            self += bytes(n - len(self))
            self.written += bytes(n - len(self.written))


def expected_entries(settings, model) -> list[tuple[int, int]]:
    written = getattr(model, "written", b"\1" * len(model))
    out = []
    for run in re.finditer(rb"\x01+", bytes(written)):
        pos = run.start()
        for chunk in chunk_stream(settings, [bytes(model[run.start():run.end()])]):
            out.append((pos, len(chunk)))
            pos += len(chunk)
    return out


def boundaries_match_full_rechunk(store, fid, model) -> None:
    expected = expected_entries(store.settings, model)
    actual = [(e.offset, e.length) for e in store.manifest(fid)] if store.exists(fid) else []
    assert actual == expected


def random_write(rng, fd, model):
    off = rng.choice([len(model), len(model), rng.randrange(len(model) + 3000)])
    n = rng.choice([1, 10, 100, 1000, 5000, 20000])
    data = rng.randbytes(n) if rng.random() < 0.7 else bytes(n)
    fd.write(off, data)
    model.write(off, data)


def random_truncate(rng, fd, model):
    n = rng.choice([0, len(model) // 2, len(model) + rng.randrange(5000), max(0, len(model) - rng.randrange(3000))])
    fd.truncate(n)
    model.resize(n)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_a_shadow_copy(store, seed):
    print("seed", seed)
    rng = random.Random(seed)
    fid = file_id_for(7)
    model = Shadow()
    fd = FileData(store, 7, 0)
    for step in range(1500):
        op = rng.random()
        if op < 0.4:
            random_write(rng, fd, model)
        elif op < 0.47:
            random_truncate(rng, fd, model)
        elif op < 0.8:
            off, n = rng.randrange(len(model) + 10), rng.randrange(30000)
            assert fd.read(off, n) == bytes(model[off:off + n]), (seed, step)
        elif op < 0.93:
            fd.commit()
            assert (store.read(fid) if store.exists(fid) else b"") == bytes(model)
            boundaries_match_full_rechunk(store, fid, model)
        else:
            fd.commit()
            fd.close()
            fd = FileData(store, 7, len(model))
        assert fd.size == len(model)
    fd.commit()
    fd.close()
    boundaries_match_full_rechunk(store, fid, model)
    assert check_store(store).clean


def test_append_to_large_file_only_rechunks_the_tail(store_dir):
    with ChunkStore.create(store_dir, avg_size="16K") as store:
        data = random.Random(5).randbytes(32 << 20)
        fd = FileData(store, 3, 0)
        for pos in range(0, len(data), 1 << 20):
            fd.write(pos, data[pos:pos + (1 << 20)])
        fd.commit()
        fd.close()
        before = store.stats()
        fd = FileData(store, 3, len(data))
        fd.write(len(data), b"appended" * 512)
        fd.commit()
        fd.close()
        after = store.stats()
        assert after["stored_bytes"] - before["stored_bytes"] < 4 * 16384
        assert store.read_range(file_id_for(3), len(data) - 10, 5000) == data[-10:] + b"appended" * 512


def test_small_overwrite_in_the_middle_puts_few_new_chunks(store_dir):
    with ChunkStore.create(store_dir, avg_size="16K") as store:
        data = random.Random(6).randbytes(16 << 20)
        store.ingest(file_id_for(4), data)
        before = store.stats()
        fd = FileData(store, 4, len(data))
        fd.write(8 << 20, b"patched!")
        fd.commit()
        fd.close()
        garbage = store.stats()["garbage_bytes"] - before["garbage_bytes"]
        assert 0 < garbage < 4 * 65536  # the replaced chunks only
        expected = data[: 8 << 20] + b"patched!" + data[(8 << 20) + 8:]
        assert store.read(file_id_for(4)) == expected


def test_committing_a_small_change_reads_a_few_chunks_not_the_file(store_dir, monkeypatch):
    """An fsync after a database's page write re-chunks from the changed chunk until the cuts meet again.

    The chunker used to scan 1 MiB before its first cut, so each such commit
    read and chunked 1 MiB or more of the file (SQLite's fsyncs, issue 20).
    """
    with ChunkStore.create(store_dir) as store:  # default sizes: chunks of 8-128 KiB, 32 KiB on average
        rng = random.Random(8)
        data = bytearray(rng.randbytes(4 << 20))
        committed_file(store, 9, bytes(data))
        read = []
        real = store.read_view
        monkeypatch.setattr(store, "read_view", lambda *a, **k: read.append(a[2]) or real(*a, **k))
        fd = FileData(store, 9, len(data))
        for pos in (1 << 20, 3 << 20):
            patch = rng.randbytes(4096)
            fd.write(pos, patch)
            data[pos:pos + 4096] = patch
            read.clear()
            fd.commit()
            assert sum(read) <= 4 * store.settings.max_size, sum(read)
        fd.close()
        assert store.read(file_id_for(9)) == bytes(data)
        boundaries_match_full_rechunk(store, file_id_for(9), data)


def test_discard_releases_pins_and_keeps_the_committed_version(store):
    fd = FileData(store, 5, 0)
    fd.write(0, b"committed")
    fd.commit()
    fd.write(9, random.Random(1).randbytes(50_000))
    fd.discard()
    fd.close()
    assert store.read(file_id_for(5)) == b"committed"
    assert not store.ledger.pins
    assert check_store(store).clean


def test_staging_left_by_a_crash_is_discarded_and_logged(store, caplog):
    from chunkfs.fs.recovery import discard_stale_staging

    fd = FileData(store, 11, 0)
    fd.write(0, b"committed")
    fd.commit()
    fd.write(3, b"X" * 5000)  # overlay write, staged but never committed
    # the process dies here: the staging file stays behind
    found = discard_stale_staging(store)
    assert [ino for ino, _ in found] == [11] and found[0][1] >= 5000
    assert "inode 11: discarding" in caplog.text
    assert os.listdir(store.staging_dir) == []
    assert store.read(file_id_for(11)) == b"committed"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_holes_are_skipped_without_changing_a_single_boundary(store, seed):
    """Holes are committed as holes; the data between them is chunked as if each run stood alone."""
    rng = random.Random(seed)
    fd = FileData(store, 12, 0)
    model = Shadow()
    for _ in range(6):
        off = len(model) + rng.choice([0, 1, 4095, 50_000, 300_000])
        data = rng.randbytes(rng.randint(1, 9000))
        fd.write(off, data)
        model.write(off, data)
        if rng.random() < 0.5:
            fd.commit()
            boundaries_match_full_rechunk(store, file_id_for(12), model)
    fd.truncate(len(model) + 200_000)
    model.resize(len(model) + 200_000)
    fd.commit()
    boundaries_match_full_rechunk(store, file_id_for(12), model)
    assert store.read(file_id_for(12)) == bytes(model)
    assert check_store(store).clean


def test_a_10_gib_sparse_file_stores_only_its_data(store_dir):
    with ChunkStore.create(store_dir) as store:
        fd = FileData(store, 13, 0)
        fd.write(10 << 30, b"end")
        fd.commit()
        fd.close()
        assert store.stats()["stored_bytes"] == 3
        assert store.data_bytes(file_id_for(13)) == 3
        assert store.read_range(file_id_for(13), (10 << 30) - 2, 10) == b"\0\0end"


@pytest.mark.slow
def test_a_stream_pumped_in_the_background_reads_back_and_commits_exactly(store, monkeypatch):
    """Big appends are chunked by the pump thread while the writer goes on; a small inbox makes it wait."""
    from chunkfs.fs import stream

    monkeypatch.setattr(stream.ChunkStream, "INBOX_LIMIT", 256 * 1024)
    real_make = stream.make_chunker

    class SlowFeed:
        """Holds each block a moment between the inbox and the chunker: a read must wait for the pump."""

        def __init__(self, inner):
            self.inner = inner

        def feed(self, data):
            time.sleep(0.002)
            return self.inner.feed(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(stream, "make_chunker", lambda settings: SlowFeed(real_make(settings)))
    rng = random.Random(5)
    fd = FileData(store, 21, 0)
    model = bytearray()
    for i in range(96):
        block = rng.randbytes(rng.choice([4096, 65536, 300_000]))
        assert fd.write(len(model), block) == len(block)
        model += block
        if i % 7 == 0:  # reads while the pump works: streamed, backlogged, buffered and waiting bytes
            time.sleep(0.001)  # let the pump take a block it then holds (SlowFeed)
            off = max(0, len(model) - rng.randrange(1, 1_500_000))  # the tail: what the pump still holds
            n = rng.randrange(1, 2_000_000)
            assert fd.read(off, n) == bytes(model[off:off + n])
    fd.commit()
    fd.close()
    assert store.read(file_id_for(21)) == bytes(model)
    boundaries_match_full_rechunk(store, file_id_for(21), model)
    assert not store.ledger.pins and check_store(store).clean


@pytest.mark.parametrize("failure", [
    lambda: StoreFullError("no space left for chunk data (simulated)"),
    lambda: OSError(errno.EIO, "simulated IO error"),
], ids=["full-disk", "io-error"])
def test_a_failure_while_streaming_loses_no_accepted_byte(store, monkeypatch, failure):
    """The pump stores chunks after the write returned: its failure surfaces at the next write and at commit.

    Like delayed allocation: accepted bytes are kept (and read back), the
    write that meets the failure accepts nothing, and once the cause is gone
    everything commits.
    """
    fd = FileData(store, 14, 0)
    blocks = [random.Random(i).randbytes(1 << 20) for i in range(4)]
    fd.write(0, blocks[0])
    assert fd.read(0, 1) == blocks[0][:1]  # waits for the pump: it is idle before put_chunks breaks
    real_put, broken = store.put_chunks, [True]

    def put_failing(chunks, *args):
        if broken[0]:
            raise failure()
        return real_put(chunks, *args)

    monkeypatch.setattr(store, "put_chunks", put_failing)
    error = type(failure())
    assert fd.write(1 << 20, blocks[1]) == len(blocks[1])  # accepted; the pump fails behind it
    assert fd.read(0, 2 << 20) == blocks[0] + blocks[1]  # read-your-writes includes the waiting chunks
    with pytest.raises(error):
        fd.write(2 << 20, blocks[2])  # nothing of this write is accepted
    with pytest.raises(error):
        fd.commit()
    assert fd.size == 2 << 20
    broken[0] = False  # space freed, disk repaired
    fd.write(2 << 20, blocks[3])
    fd.commit()
    fd.close()
    assert store.read(file_id_for(14)) == blocks[0] + blocks[1] + blocks[3]
    assert not store.ledger.pins and check_store(store).clean


@pytest.mark.slow
def test_more_streaming_files_than_pump_threads_are_all_stored_exactly(store, monkeypatch):
    """Three files stream at once through two pump threads that take turns (TURN) and wait on small inboxes."""
    import threading

    from chunkfs.fs import stream

    monkeypatch.setattr(stream.ChunkStream, "INBOX_LIMIT", 128 * 1024)
    monkeypatch.setattr(stream.ChunkStream, "TURN", 2)
    files = [FileData(store, 30 + i, 0) for i in range(3)]
    data = [random.Random(i).randbytes(6 << 20) for i in range(3)]
    progress = [0, 0, 0]
    stop = threading.Event()

    def writer(k):
        for off in range(0, len(data[k]), 64 * 1024):
            if stop.is_set():
                return
            files[k].write(off, data[k][off:off + 64 * 1024])
            progress[k] = off

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    assert not any(t.is_alive() for t in threads), progress
    for k, fd in enumerate(files):
        fd.commit()
        fd.close()
        assert store.read(file_id_for(30 + k)) == data[k]
    assert not store.ledger.pins and check_store(store).clean


# -- a rewrite in place streams like an append -------------------------------------------------------


def committed_file(store, ino: int, data: bytes) -> None:
    fd = FileData(store, ino, 0)
    fd.write(0, data)
    fd.commit()
    fd.close()


@pytest.mark.parametrize("span", [(0, None), (1_000_123, 2_300_077), (2_000_000, 4_500_000)],
                         ids=["whole-file", "middle", "past-the-end"])
def test_a_sequential_rewrite_streams_and_keeps_the_chunks_around_it(store, span):
    """Written front to back over committed bytes: chunked as it arrives, nothing staged, cuts as from scratch."""
    rng = random.Random(31)
    old = rng.randbytes(3_000_000)
    committed_file(store, 22, old)
    before = {(e.offset, e.length): e.address for e in store.manifest(file_id_for(22))}
    lo, hi = span[0], span[1] or len(old)
    new = rng.randbytes(hi - lo)
    model = bytearray(old)
    model[lo:hi] = new
    fd = FileData(store, 22, len(old))
    stored = store.stats()["stored_bytes"]
    for pos in range(lo, hi, 128 * 1024):
        fd.write(pos, new[pos - lo : min(pos + 128 * 1024, hi) - lo])
    assert os.path.getsize(fd._staging_path) == 0  # only the run's first MiB went through the staging file
    assert fd.read(max(lo - 5000, 0), hi - lo + 10_000) == bytes(model[max(lo - 5000, 0) : hi + 5000])
    assert store.stats()["stored_bytes"] == stored  # not committed yet...
    assert len(store.ledger.pins) > 100  # ...but chunked and put as it arrived
    fd.commit()
    fd.close()
    assert store.read(file_id_for(22)) == bytes(model)
    boundaries_match_full_rechunk(store, file_id_for(22), model)
    after = {(e.offset, e.length): e.address for e in store.manifest(file_id_for(22))}
    kept = [k for k in before if k[0] + k[1] <= lo - 4096 or k[0] >= hi + 8192]
    assert all(after.get(k) == before[k] for k in kept)  # the cuts met again right after the run
    assert not store.ledger.pins and check_store(store).clean


def test_a_write_elsewhere_ends_a_rewrite_stream(store):
    rng = random.Random(32)
    model = bytearray(rng.randbytes(2_500_000))
    committed_file(store, 23, bytes(model))
    fd = FileData(store, 23, len(model))
    for pos in range(0, 1_200_000, 100_000):  # the run reaches 1 MiB: it streams
        data = rng.randbytes(100_000)
        fd.write(pos, data)
        model[pos:pos + len(data)] = data
    for pos in (2_000_000, 50, 1_150_000, 2_499_990):  # out of order: commits the stream, then staged
        data = rng.randbytes(20)
        fd.write(pos, data)
        model[pos:pos + len(data)] = data
    assert fd.read(0, len(model) + 10) == bytes(model)
    fd.commit()
    fd.close()
    assert store.read(file_id_for(23)) == bytes(model)
    boundaries_match_full_rechunk(store, file_id_for(23), model)
    assert not store.ledger.pins and check_store(store).clean


def test_scattered_writes_stay_in_the_overlay(store):
    """A database's page writes (small, here and there) are not a rewrite: nothing streams."""
    rng = random.Random(33)
    model = bytearray(rng.randbytes(2_000_000))
    committed_file(store, 24, bytes(model))
    fd = FileData(store, 24, len(model))
    for _ in range(200):
        pos = rng.randrange(0, len(model) - 4096) // 4096 * 4096
        data = rng.randbytes(4096)
        fd.write(pos, data)
        model[pos:pos + 4096] = data
    assert not store.ledger.pins and os.path.getsize(fd._staging_path) > 0
    fd.commit()
    fd.close()
    assert store.read(file_id_for(24)) == bytes(model)
    boundaries_match_full_rechunk(store, file_id_for(24), model)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_runs_and_rewrites_match_a_shadow_copy(store, seed, monkeypatch):
    """The random test with sequential runs of writes, and thresholds low enough that runs stream."""
    from chunkfs.fs import openfile

    monkeypatch.setattr(openfile, "SMALL_FILE", 4000)
    monkeypatch.setattr(openfile, "REWRITE_STREAM_MIN", 6000)
    monkeypatch.setattr(FastCDCChunker, "SCAN_THRESHOLD", 8192)  # cuts come early: rewrites realign in small files
    print("seed", seed)
    rng = random.Random(seed)
    fid = file_id_for(8)
    model = Shadow()
    fd = FileData(store, 8, 0)
    for step in range(600):
        op = rng.random()
        if op < 0.3:
            random_write(rng, fd, model)
        elif op < 0.55:  # a run of writes front to back from somewhere in the file
            pos = rng.randrange(len(model) + 1)
            for _ in range(rng.randrange(1, 8)):
                data = rng.randbytes(rng.choice([500, 2000, 5000]))
                fd.write(pos, data)
                model.write(pos, data)
                pos += len(data)
        elif op < 0.6:
            random_truncate(rng, fd, model)
        elif op < 0.8:
            off, n = rng.randrange(len(model) + 10), rng.randrange(30000)
            assert fd.read(off, n) == bytes(model[off:off + n]), (seed, step)
        elif op < 0.93:
            fd.commit()
            assert (store.read(fid) if store.exists(fid) else b"") == bytes(model)
            boundaries_match_full_rechunk(store, fid, model)
        else:
            fd.commit()
            fd.close()
            fd = FileData(store, 8, len(model))
        assert fd.size == len(model)
    fd.commit()
    fd.close()
    boundaries_match_full_rechunk(store, fid, model)
    assert not store.ledger.pins and check_store(store).clean


def test_a_full_disk_while_a_rewrite_meets_the_old_cuts_again_loses_nothing(store, monkeypatch):
    """The commit of a rewrite stream chunks on into the old bytes; if storing them fails, the next try goes on."""
    rng = random.Random(34)
    model = bytearray(rng.randbytes(3_000_000))
    committed_file(store, 25, bytes(model))
    fd = FileData(store, 25, len(model))
    new = rng.randbytes(1_200_000)
    for pos in range(0, len(new), 100_000):
        fd.write(pos, new[pos:pos + 100_000])
    model[:len(new)] = new
    assert fd.read(0, len(model)) == bytes(model)  # the pump is idle: what follows fails in the commit only
    real_put, calls = store.put_chunks, []

    def put_failing_once_past_the_run(chunks, *args):
        calls.append(len(chunks))
        if len(calls) == 1:
            raise StoreFullError("no space left for chunk data (simulated)")
        return real_put(chunks, *args)

    monkeypatch.setattr(store, "put_chunks", put_failing_once_past_the_run)
    real_meet = BaseEdit.reusable_run_end  # the cuts meet only past the first block read: the failure comes mid-way
    monkeypatch.setattr(BaseEdit, "reusable_run_end",
                        lambda edit, cut: real_meet(edit, cut) if cut > len(new) + 300_000 else None)
    with pytest.raises(StoreFullError):
        fd.commit()
    assert fd.read(0, len(model)) == bytes(model)
    fd.commit()
    fd.close()
    assert store.read(file_id_for(25)) == bytes(model)
    boundaries_match_full_rechunk(store, file_id_for(25), model)
    assert not store.ledger.pins and check_store(store).clean
