"""Compression behind the writers (store level): chunks stored raw while waiting, compressed by a pass over
packs that loses nothing, keeps dedup and refcounts, survives a kill at any step, and is fsck-clean."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import REPO, cli_env, wait_until
from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore
from chunkfs.store import _compression, _gcworker, _packs
from chunkfs.store._ledger import ChunkRecord
from chunkfs.store._packs import CODEC_RAW, CODEC_ZSTD

def _vocabulary() -> list[bytes]:
    rng = random.Random(12345)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10))) for _ in range(400)]
    return [b" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(3000)]


LINES = _vocabulary()


def text(n: int, seed: int) -> bytes:
    """Lines drawn from a vocabulary bigger than a chunk: compresses about 3x alone, more with a dictionary."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += b"%d: %s\n" % (rng.randint(0, 99), rng.choice(LINES))
    return bytes(out[:n])


@pytest.fixture
def small_packs(monkeypatch):
    """Packs of 1 MiB, so a few MiB of files make several sealed packs."""
    monkeypatch.setattr(_packs, "PACK_TARGET_SIZE", 1024 * 1024)


def open_behind(path, backend):
    return ChunkStore.open(path, backend=backend, compress="behind")


def chunk_records(store) -> dict[int, tuple[bytes, int, int]]:
    """chunk id -> (address, refcount, raw length), from the index."""
    out = {}
    with store.read_txn() as txn:
        for key, value in txn.cursor(db=store.index.chunks):
            rec = ChunkRecord.decode(value)
            out[int.from_bytes(key, "big")] = (rec.address, rec.refcount, rec.raw)
    return out


def record_kinds(store) -> list[tuple[int, int]]:
    """(codec, dictionary) of every live record."""
    kinds = []
    with store.read_txn() as txn:
        for _, value in txn.cursor(db=store.index.chunks):
            header, _ = store.packs.read_record(ChunkRecord.decode(value).location)
            kinds.append((header.codec, header.dictionary))
    return kinds


def write_files(store, count: int, size: int, seed: int = 0) -> dict[str, bytes]:
    files = {f"f{seed}-{i}": text(size, seed + i) for i in range(count)}
    for name, data in files.items():
        store.ingest(name, data)
    return files


def test_waiting_chunks_are_stored_raw_then_compressed_by_the_pass(store_dir, backend, small_packs):
    ChunkStore.create(store_dir, backend=backend).close()
    with open_behind(store_dir, backend) as store:
        files = write_files(store, 6, 700_000)
        before = store.stats()
        assert before["packed_bytes"] == before["stored_bytes"]  # nothing compressed by the writers
        assert before["compression_waiting_bytes"] == before["stored_bytes"]
        assert all(codec == CODEC_RAW for codec, _ in record_kinds(store))
        records = chunk_records(store)
        assert all(store.read(name) == data for name, data in files.items())

        seen = []
        report = store.compress_waiting(progress=lambda done, total: seen.append((done, total)))

        after = store.stats()
        assert report["packs_rewritten"] >= 3 and report["chunks_compressed"] == len(records)
        assert seen and seen[0][0] == 0 and all(done < total for done, total in seen)  # `chunkfs compress`'s bar
        assert after["compression_waiting_bytes"] == 0
        assert after["packed_bytes"] < before["packed_bytes"] / 2
        assert after["packed_bytes"] == before["packed_bytes"] - report["bytes_before"] + report["bytes_after"]
        assert all(codec == CODEC_ZSTD for codec, _ in record_kinds(store))
        assert chunk_records(store) == records  # same ids, addresses, refcounts, lengths
        for key in ("unique_chunks", "stored_bytes", "logical_bytes", "chunk_refs", "files"):
            assert after[key] == before[key]
        assert all(store.read(name) == data for name, data in files.items())
        report = check_store(store)
        assert report.clean, report.findings
        assert store.compress_waiting()["packs_rewritten"] == 0  # nothing left to do
    with ChunkStore.open(store_dir, backend=backend) as store:  # and after a reopen
        assert all(store.read(name) == data for name, data in files.items())
        assert store.ingest("again", files["f0-2"]).new_chunks == 0  # dedup against compressed records


def test_a_chunk_written_again_while_waiting_is_not_stored_twice(store_dir, backend):
    ChunkStore.create(store_dir, backend=backend).close()
    with open_behind(store_dir, backend) as store:
        data = text(500_000, 7)
        first = store.ingest("a", data)
        assert first.new_chunks > 0
        assert store.ingest("b", data).new_chunks == 0
        unique = store.stats()["unique_chunks"]
        store.compress_waiting()
        assert store.ingest("c", data).new_chunks == 0
        stats = store.stats()
        assert stats["unique_chunks"] == unique and stats["compression_waiting_bytes"] == 0
        assert {rc for _, rc, _ in chunk_records(store).values()} == {3}
        assert store.read("a") == store.read("c") == data
        assert check_store(store).clean


def test_reads_during_the_pass_get_the_right_bytes(store_dir, small_packs):
    ChunkStore.create(store_dir).close()
    with open_behind(store_dir, None) as store:
        files = write_files(store, 5, 600_000, seed=20)
        wrong, done = [], threading.Event()

        def read_all():
            while not done.is_set():
                for name, data in files.items():
                    if store.read_range(name, 1000, 300_000) != data[1000:301_000]:
                        wrong.append(name)

        reader = threading.Thread(target=read_all)
        reader.start()
        try:
            assert store.compress_waiting()["packs_rewritten"] >= 2
        finally:
            done.set()
            reader.join()
        assert not wrong
        assert check_store(store).clean


def test_records_compressed_without_a_dictionary_get_one_later(store_dir, monkeypatch):
    """Inline compression before the store has a dictionary: the pass compresses those records again."""
    monkeypatch.setattr(_compression, "TRAIN_SAMPLE_BYTES", 1024 * 1024)
    ChunkStore.create(store_dir).close()
    with ChunkStore.open(store_dir) as store:  # the library's default: inline
        files = write_files(store, 5, 600_000, seed=40)
        store.codec.wait()  # the dictionary trained on the first MiB
        assert store.codec.dict_id == 1
        files.update(write_files(store, 2, 600_000, seed=50))
        kinds = record_kinds(store)
        assert (CODEC_ZSTD, 0) in kinds and (CODEC_ZSTD, 1) in kinds
        before = store.stats()
        assert before["compression_waiting_bytes"] > 0
        report = store.compress_waiting()
        assert report["chunks_compressed"] > 0 and report["bytes_after"] < report["bytes_before"]
        assert set(record_kinds(store)) == {(CODEC_ZSTD, 1)}
        assert store.stats()["compression_waiting_bytes"] == 0
        assert all(store.read(name) == data for name, data in files.items())
        assert check_store(store).clean


def test_gc_of_a_pack_with_waiting_records_keeps_them_waiting(store_dir, small_packs):
    ChunkStore.create(store_dir).close()
    with open_behind(store_dir, None) as store:
        files = write_files(store, 6, 400_000, seed=60)
        for name in ("f60-0", "f60-2", "f60-4"):
            store.delete(name)
        assert store.gc(min_dead_fraction=0)["packs_rewritten"] > 0
        assert store.stats()["compression_waiting_bytes"] > 0
        store.compress_waiting()
        assert set(record_kinds(store)) <= {(CODEC_ZSTD, 0), (CODEC_ZSTD, 1)}
        assert store.stats()["compression_waiting_bytes"] == 0
        assert all(store.read(name) == files[name] for name in ("f60-1", "f60-3", "f60-5"))
        report = check_store(store)
        assert report.clean, report.findings


def test_the_background_worker_compresses_an_idle_store(store_dir, small_packs, monkeypatch):
    monkeypatch.setattr(_gcworker, "IDLE_BEFORE_COMPRESSING", 0.2)
    monkeypatch.setattr(_gcworker, "IDLE_BEFORE_SEALING", 0.5)
    monkeypatch.setattr(_gcworker, "SEAL_WAITING_MIN", 1)
    ChunkStore.create(store_dir).close()
    with open_behind(store_dir, None) as store:
        worker = store.start_background_gc(interval=0.1)
        try:
            files = write_files(store, 3, 700_000, seed=80)
            assert wait_until(lambda: store.stats()["compression_waiting_bytes"] == 0, timeout=60)
        finally:
            worker.stop()
        assert worker.compressed >= 2
        stats = store.stats()
        assert stats["packed_bytes"] < stats["stored_bytes"] / 2
        assert all(store.read(name) == data for name, data in files.items())
        assert check_store(store).clean


def test_an_object_store_or_the_library_default_compresses_inline(store_dir):
    ChunkStore.create(store_dir).close()
    with ChunkStore.open(store_dir) as store:
        store.ingest("a", text(300_000, 1))
        stats = store.stats()
        assert stats["compression_waiting_bytes"] == 0
        assert stats["packed_bytes"] < stats["stored_bytes"] / 2


PASS_CRASH = textwrap.dedent("""
    import os, random, sys
    import chunkfs.store._packs
    from chunkfs.store import ChunkStore
    chunkfs.store._packs.PACK_TARGET_SIZE = 300_000
    path, where, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ChunkStore.create(path).close()
    with ChunkStore.open(path, compress="behind") as store:
        for i in range(6):
            rng = random.Random(i)
            store.ingest(f"f{i}", b"".join(b"line %d of file %d: %s\\n" % (rng.randint(0, 99), i, b"ab" * rng.randint(1, 30))
                                           for _ in range(9000)))
        store.delete("f1")
        seen = {"n": 0}
        def crash_after(fn):
            def wrapped(*args, **kwargs):
                result = fn(*args, **kwargs)
                seen["n"] += 1
                if seen["n"] == nth:
                    os._exit(42)  # killed inside the pass, right after its nth commit or pack append
                return result
            return wrapped
        if where == "commit":
            store.write_txn = crash_after(store.write_txn)
        else:
            store.packs.append = crash_after(store.packs.append)
        store.compress_waiting()
    sys.exit(0)
""")


def expected_file(i: int) -> bytes:
    rng = random.Random(i)
    return b"".join(b"line %d of file %d: %s\n" % (rng.randint(0, 99), i, b"ab" * rng.randint(1, 30))
                    for _ in range(9000))


@pytest.mark.parametrize("where, steps", [("commit", range(1, 100)), ("append", (1, 2, 5, 40, 90, 200))])
def test_a_pass_killed_at_any_step_loses_nothing(tmp_path, where, steps):
    finished = False
    for nth in steps:
        path = tmp_path / f"store-{where}-{nth}"
        proc = subprocess.run([sys.executable, "-c", PASS_CRASH, str(path), where, str(nth)], cwd=REPO,
                              env=cli_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 42), proc.stderr
        with ChunkStore.open(path, readonly=True) as store:
            report = check_store(store)
            assert report.clean, f"killed after {where} {nth}, before recovery: {report.findings}"
        with ChunkStore.open(path) as store:
            assert check_store(store).clean
            for i in (0, 2, 3, 4, 5):
                assert store.read(f"f{i}") == expected_file(i), f"killed after {where} {nth}: f{i} differs"
            store.compress_waiting()  # what the killed pass left is done now
            assert store.stats()["compression_waiting_bytes"] == 0
            report = check_store(store)
            assert report.clean, report.findings
            for i in (0, 2, 3, 4, 5):
                assert store.read(f"f{i}") == expected_file(i)
        if proc.returncode == 0:  # the pass finished before the nth step: every step was covered
            finished = True
            break
    assert finished


def test_writers_probe_a_sample_of_incompressible_data_and_notice_text_after_it(tmp_path, monkeypatch):
    """Behind the writers a probe only marks chunks waiting: after a few hopeless ones in a row only one in
    SAMPLE_EVERY is probed, and compressible chunks after them are noticed within SAMPLE_EVERY chunks."""
    with ChunkStore.create(tmp_path / "s") as made:
        codec = made.codec
        codec.behind = True
        probes = []
        real = codec.hopeless
        monkeypatch.setattr(codec, "hopeless", lambda data: probes.append(1) or real(data))
        noise = [os.urandom(32 * 1024) for _ in range(64)]
        words = [text(32 * 1024, seed) for seed in range(24)]
        out = _compression.encode_chunks(codec, noise + words)
    assert len(probes) <= 64 // _compression.SAMPLE_EVERY + _compression.SAMPLE_AFTER + len(words)
    assert not any(e.waiting for e in out[:64])
    assert all(e.codec == CODEC_RAW for e in out)
    assert all(e.waiting for e in out[64 + _compression.SAMPLE_EVERY:])  # the text is counted for the pass


def test_the_worker_leaves_a_little_waiting_in_the_active_pack(store_dir, monkeypatch):
    """A mount that writes a little now and then: after the short quiet the pass compresses the sealed packs
    but leaves the active one (sealing it at every pause would make many small packs); after the long
    quiet it seals and compresses that too."""
    monkeypatch.setattr(_gcworker, "IDLE_BEFORE_COMPRESSING", 0.1)
    monkeypatch.setattr(_gcworker, "IDLE_BEFORE_SEALING", 0.2)
    ChunkStore.create(store_dir).close()
    with open_behind(store_dir, None) as store:
        worker = store.start_background_gc(interval=0.05)
        try:
            files = write_files(store, 2, 300_000, seed=90)  # far below SEAL_WAITING_MIN, in the active pack
            active = store.packs.active
            time.sleep(1.0)  # five times the short quiet
            assert store.packs.active == active and store.stats()["compression_waiting_bytes"] > 0
            monkeypatch.setattr(_gcworker, "IDLE_BEFORE_SEALING_LITTLE", 0.5)  # the long quiet, shortened
            assert wait_until(lambda: store.stats()["compression_waiting_bytes"] == 0, timeout=30)
        finally:
            worker.stop()
        assert all(store.read(name) == data for name, data in files.items())
        assert check_store(store).clean
