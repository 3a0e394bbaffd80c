"""One ChunkStore used from several threads at once, as a service embedding it does.

Writers (ingest, delete) serialise on the store's lock while reads take none;
what a user must see is that every read returns the bytes of one whole version
of a file, never an error for a file that merely changed under the read, and
that the store's accounting stays exact however the calls interleave.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest

from chunkfs import ChunkStore
from chunkfs.errors import FileNotFoundInStore
from chunkfs.fsck import check_store

MiB = 1024 * 1024


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def store(store_dir):
    with ChunkStore.create(store_dir, avg_size="16K") as s:
        yield s


READERS = {
    "read": lambda s, fid: s.read(fid),
    "read_range": lambda s, fid: s.read_range(fid, 0, MiB),
    "read_view": lambda s, fid: bytes(s.read_view(fid, 0, MiB)),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_file_replaced_between_lookup_and_read_is_read_as_it_is_now(store, reader, monkeypatch, caplog):
    """The replacement lands after the read looked at the manifest and before it read a byte:
    the old chunks are freed and punched out, and the read returns the new version, without a
    word about corruption."""
    old, new = rand(MiB, 1), rand(MiB, 2)
    store.ingest("x", old)
    real_read, real_run = store.packs.read, store.packs.read_run
    replaced = []

    def replace_first(real):
        def hooked(*args, **kwargs):
            if not replaced:
                replaced.append(True)
                store.ingest("x", new)
            return real(*args, **kwargs)
        return hooked

    monkeypatch.setattr(store.packs, "read", replace_first(real_read))
    monkeypatch.setattr(store.packs, "read_run", replace_first(real_run))
    with caplog.at_level(logging.WARNING, logger="chunkfs"):
        assert READERS[reader](store, "x") == new
    assert replaced and not caplog.records
    assert check_store(store).clean


def test_reads_racing_replacements_and_deletes_see_whole_versions(store, caplog):
    versions = [rand(MiB, seed) for seed in range(3)]
    store.ingest("x", versions[0])
    stop = threading.Event()
    problems: list[str] = []
    reads = {name: 0 for name in READERS}

    def writer():
        rng = random.Random(7)
        while not stop.is_set():
            if rng.random() < 0.1:
                store.delete("x", missing_ok=True)
            store.ingest("x", versions[rng.randrange(3)])

    def reader(name):
        while not stop.is_set():
            try:
                data = READERS[name](store, "x")
            except FileNotFoundInStore:
                continue
            except Exception as exc:  # noqa: BLE001 (every failure is the test's finding)
                problems.append(f"{name}: {exc!r}")
                return
            if data not in versions:
                problems.append(f"{name}: {len(data)} bytes of no version")
                return
            reads[name] += 1

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(n,)) for n in READERS]
    with caplog.at_level(logging.WARNING, logger="chunkfs"):
        for t in threads:
            t.start()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert not caplog.records
    assert all(n > 0 for n in reads.values()), reads
    assert check_store(store).clean


def test_concurrent_writers_leave_exact_accounting(store, store_dir, tmp_path):
    """Four threads ingest and delete overlapping files at once; the store ends exactly as the same
    final files ingested one by one into a fresh store."""
    base = rand(2 * MiB, 10)

    def version(i: int) -> bytes:
        cut = (i * 97_003) % len(base)
        return base[:cut] + rand(100, i) + base[cut:]

    finals: dict[str, bytes] = {}
    lock = threading.Lock()

    def work(worker: int):
        rng = random.Random(worker)
        for step in range(12):
            fid = f"w{worker}/f{rng.randrange(4)}"
            if step % 5 == 4:
                store.delete(fid, missing_ok=True)
                with lock:
                    finals.pop(fid, None)
            else:
                data = version(rng.randrange(20))
                store.ingest(fid, data)
                with lock:
                    finals[fid] = data

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.list_files()) == sorted(finals)
    for fid, data in finals.items():
        assert store.read(fid) == data
    assert check_store(store).clean
    with ChunkStore.create(tmp_path / "replay", avg_size="16K") as replay:
        for fid, data in finals.items():
            replay.ingest(fid, data)
        keys = ("files", "logical_bytes", "stored_bytes", "unique_chunks")
        assert {k: store.stats()[k] for k in keys} == {k: replay.stats()[k] for k in keys}
