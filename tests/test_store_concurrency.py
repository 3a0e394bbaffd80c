"""One ChunkStore used from several threads at once, as a service embedding it does.

Writers (ingest, delete) serialise on the store's lock while reads take none;
what a user must see is that every read returns the bytes of one whole version
of a file, never an error for a file that merely changed under the read, and
that the store's accounting stays exact however the calls interleave.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

import pytest

from chunkfs import ChunkCorruptError, ChunkStore
from chunkfs.errors import FileNotFoundInStore, InvalidArgument
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
    real_read, real_run = store.packs.read_record_bytes, store.packs.read_run
    replaced = []

    def replace_first(real):
        def hooked(*args, **kwargs):
            if not replaced:
                replaced.append(True)
                store.ingest("x", new)
            return real(*args, **kwargs)
        return hooked

    monkeypatch.setattr(store.packs, "read_record_bytes", replace_first(real_read))
    monkeypatch.setattr(store.packs, "read_run", replace_first(real_run))
    with caplog.at_level(logging.WARNING, logger="chunkfs"):
        assert READERS[reader](store, "x") == new
    assert replaced and not caplog.records
    assert check_store(store).clean


@pytest.mark.slow
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


# -- FileVersion: one version held for a reader that streams it over many calls ------------------

def _stream(version, piece: int = 64 * 1024) -> bytes:
    return b"".join(bytes(version.read(off, piece)) for off in range(version.start, version.end, piece))


def test_a_version_keeps_its_bytes_through_replace_delete_and_gc(store, caplog):
    old, new = rand(MiB, 1), rand(MiB, 2)
    store.ingest("x", old)
    with store.open_version("x") as version:
        store.ingest("x", new)
        store.delete("x")
        store.gc()
        assert version.size == len(old)
        assert _stream(version) == old
        assert store.stats()["stored_bytes"] == 0  # the held chunks are no file's any more
    assert not caplog.records
    store.gc()
    assert store.stats()["garbage_bytes"] == 0 and store.packs.disk_bytes() < 64 * 1024  # all given back
    assert check_store(store).clean


def test_fingerprints_name_the_bytes(store):
    data = rand(300_000, 3)
    store.ingest("a", data)
    store.ingest("b", data)
    store.ingest("c", data[:-1] + bytes([data[-1] ^ 1]))
    store.ingest("empty", b"")
    prints = {}
    for fid in ("a", "b", "c", "empty"):
        with store.open_version(fid, 0, 0) as version:  # nothing held: just size and fingerprint
            prints[fid] = version.fingerprint
            assert bytes(version.read(0, 0)) == b""
    assert prints["a"] == prints["b"]
    assert len({prints["a"], prints["c"], prints["empty"]}) == 3
    store.ingest("a", data)  # the same bytes again: the same version as far as a client can tell
    with store.open_version("a") as version:
        assert version.fingerprint == prints["a"]
        assert bytes(version.read(0, len(data))) == data


def test_a_partial_version_holds_only_its_range(store):
    data = rand(MiB, 4)
    store.ingest("x", data)
    with store.open_version("x", 300_000, 400_000) as version:
        held = {p.address for p in version._places}
        assert 0 < len(held) < len(store.manifest("x")) // 4
        assert set(store.ledger.pins) == held
        assert bytes(version.read(300_000, 100_000)) == data[300_000:400_000]
        with pytest.raises(InvalidArgument):
            version.read(0, 10)
        with pytest.raises(InvalidArgument):
            version.read(350_000, 100_000)
    assert store.ledger.pins == {}
    for start, end in [(500_000, 500_000), (2 * MiB, 3 * MiB)]:  # an empty range, one past the end
        with store.open_version("x", start, end) as version:
            assert version._entries == [] and store.ledger.pins == {}
            assert version.size == len(data) and bytes(version.read(start, 0)) == b""
    with pytest.raises(FileNotFoundInStore):
        store.open_version("missing")


def test_a_damaged_chunk_in_a_version_raises_never_wrong_bytes(store, caplog):
    data = rand(MiB, 5)
    store.ingest("x", data)
    with store.open_version("x") as version:
        entry = version._entries[3]
        loc = version._places[3][0]
        fd = os.open(store.packs.backend.path(loc.pack), os.O_RDWR)
        try:
            os.pwrite(fd, bytes([os.pread(fd, 1, loc.offset + 5)[0] ^ 0xFF]), loc.offset + 5)
        finally:
            os.close(fd)
        with pytest.raises(ChunkCorruptError) as info:
            version.read(0, len(data))
        assert info.value.address == version._places[3].address
        assert bytes(version.read(0, entry.offset)) == data[:entry.offset]  # the chunks before it still read
    assert any("is corrupt" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_streamed_versions_are_whole_while_the_file_changes(store):
    versions = [rand(MiB, seed) for seed in range(3)]
    store.ingest("x", versions[0])
    stop = threading.Event()
    problems: list[str] = []
    streamed = []

    def writer():
        rng = random.Random(3)
        while not stop.is_set():
            store.ingest("x", versions[rng.randrange(3)])

    def reader():
        while not stop.is_set():
            with store.open_version("x") as version:
                data = _stream(version, 50_000)
            if data not in versions:
                problems.append(f"{len(data)} bytes of no version")
                return
            streamed.append(versions.index(data))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert problems == [] and len(streamed) > 2
    assert store.ledger.pins == {}
    assert check_store(store).clean
