"""The index of format 2: chunk ids, the address lookup, manifest runs, and pack record headers that verify reads.

Each test damages or strains one part of that layout as a bug, a disk or a
hash prefix shared by chance would, and checks what a library user sees:
the right bytes, or ChunkCorruptError (EIO) with a log line, never wrong
bytes; and a store that ``check_store`` finds clean again after a repair.
"""

import hashlib
import random

import pytest

from chunkfs import ChunkCorruptError, ChunkStore
from chunkfs.errors import IndexCorruptError, StoreFullError
from chunkfs.fsck import check_store
from chunkfs.store import TO_END, Patch, hole_ref
from chunkfs.store import _index as ix
from chunkfs.store._ledger import chunk_key, find_chunk, get_record
from chunkfs.store._packs import RECORD


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def located(store, address: bytes):
    """(chunk id, chunk record) of a stored chunk, found by its address."""
    with store.read_txn() as txn:
        return find_chunk(txn, store.index, address)


def read_with(store, reader: str, file_id) -> bytes:
    return bytes(getattr(store, reader)(file_id, 0, store.size(file_id)))


def test_addresses_sharing_a_lookup_prefix_are_stored_and_found_apart(store_dir, backend, monkeypatch):
    """With a 1-byte prefix, a few hundred chunks share prefixes by the dozen: every hit is confirmed."""
    monkeypatch.setattr(ix, "LOOKUP_PREFIX", 1)
    blocks = [rand(1024, seed) for seed in range(600)]  # 600 distinct chunks over 256 prefixes
    with ChunkStore.create(store_dir, chunker="fixed", avg_size="1K", backend=backend) as store:
        store.ingest("all", b"".join(blocks))
        store.ingest("again", b"".join(reversed(blocks)))  # every chunk a dedup hit among its prefix mates
        store.ingest("half", b"".join(blocks[::2]) + rand(1024, 10_000))
        stats = store.stats()
        assert stats["unique_chunks"] == 601 and stats["chunk_refs"] == 600 + 600 + 301
        with store.read_txn() as txn:
            prefixes = [k[:1] for k in txn.cursor(db=store.index.lookup).iternext(values=False)]
        assert len(prefixes) == 601 and len(set(prefixes)) < 300  # shared prefixes, one entry per chunk
        assert store.read("again") == b"".join(reversed(blocks))
        assert store.read("half") == b"".join(blocks[::2]) + rand(1024, 10_000)
        assert check_store(store, verify_data=True).clean
    with ChunkStore.open(store_dir, backend=backend) as store:
        assert store.read("all") == b"".join(blocks)


def test_a_lookup_entry_naming_another_chunk_is_never_a_dedup_hit(store_dir, backend):
    """A lookup entry under a new chunk's prefix that names a stored chunk with another address: not a hit."""
    old, new = rand(32_768, 1), rand(16_384, 2)
    with ChunkStore.create(store_dir, chunker="fixed", avg_size="16K", backend=backend) as store:
        store.ingest("old", old)
        chunk, _ = located(store, store.manifest("old")[0].address)
        new_address = hashlib.sha256(new).digest()
        store.index.write(lambda txn: txn.put(ix.lookup_key(new_address, chunk), b"", db=store.index.lookup))
        store.ingest("new", new)  # its prefix lists the old chunk: confirmed, refused, stored anew
        assert store.read("new") == new and store.read("old") == old
        assert located(store, new_address)[0] != chunk
        assert store.stats()["unique_chunks"] == 3
        report = check_store(store)
        assert [f.kind for f in report.findings] == ["bad-lookup"]
        assert store.repair_records(report.bad_chunks)
        assert check_store(store, verify_data=True).clean
        assert store.read("new") == new


@pytest.mark.parametrize("reader", ["read_range", "read_view"])
@pytest.mark.parametrize("verify", ["xxh3", "sha256", "off"])
def test_a_misdirected_read_is_eio_with_a_log_line(store_dir, backend, verify, reader, caplog):
    """A chunk record pointing at another chunk's record: the header names another chunk id, the read fails."""
    a, b = rand(16_384, 3), rand(16_384, 4)
    with ChunkStore.create(store_dir, chunker="fixed", avg_size="16K", backend=backend) as store:
        store.ingest("a", a)
        store.ingest("b", b)
        chunk_a, rec_a = located(store, store.manifest("a")[0].address)
        _, rec_b = located(store, store.manifest("b")[0].address)
        rec_a.location = rec_b.location  # same length: only the record header can tell
        store.index.write(lambda txn: txn.put(chunk_key(chunk_a), rec_a.encode(), db=store.index.chunks))
    with ChunkStore.open(store_dir, verify=verify, backend=backend) as store:
        with pytest.raises(ChunkCorruptError, match="misdirected") as info:
            read_with(store, reader, "a")
        assert info.value.address == rec_a.address and info.value.file_id == "a"
        assert read_with(store, reader, "b") == b
        assert "bad-record" in {f.kind for f in check_store(store).findings}
    assert f"chunk {rec_a.address.hex()} of file 'a' is corrupt" in caplog.text
    assert "misdirected" in caplog.text


@pytest.mark.parametrize("reader", ["read_range", "read_view"])
def test_a_damaged_header_checksum_fails_reads_until_repaired_never_wrong_bytes(store_dir, backend, reader):
    """Intact bytes under a damaged checksum: xxh3 reads fail (EIO), sha256 reads succeed, fsck rewrites it."""
    data = rand(100_000, 5)
    with ChunkStore.create(store_dir, avg_size="16K", backend=backend) as store:
        store.ingest("f", data)
        victim = store.manifest("f")[1]
        chunk, rec = located(store, victim.address)
        loc = rec.location
        checksum_at = loc.record_offset + RECORD.size - 8
        store.packs.backend.patch(loc.pack, checksum_at, bytes(8))
    with ChunkStore.open(store_dir, backend=backend) as store:
        with pytest.raises(ChunkCorruptError, match="xxh3 checksum mismatch"):
            read_with(store, reader, "f")
        assert bytes(store.read_view("f", 0, victim.offset)) == data[:victim.offset]  # the rest reads
        assert check_store(store).clean  # the header's shape is intact: only the data scrub sees it
        report = check_store(store, verify_data=True)
        assert [f.kind for f in report.findings] == ["bad-record"]
        assert report.bad_chunks.keys() == {chunk}
        lines = store.repair_records(report.bad_chunks)
        assert "damaged pack record headers rewritten: 1 (chunks intact and kept: 1)" in lines
        assert read_with(store, reader, "f") == data
        assert check_store(store, verify_data=True).clean
    with ChunkStore.open(store_dir, verify="sha256", backend=backend) as store:
        assert read_with(store, reader, "f") == data


def test_manifest_runs_stay_full_through_appends_and_small_patches(store_dir, backend):
    """Runs hold up to RUN_MAX entries; appends and one-chunk rewrites keep them full, a hole cuts one."""
    with ChunkStore.create(store_dir, chunker="fixed", avg_size="1K", backend=backend) as store:
        size = 0
        for n in range(10):  # a file written in ten commits, as a stream commits as it goes
            refs = store.put_chunks([rand(1024, 100 * n + i) for i in range(25)])
            store.commit_file("f", [Patch(size, TO_END, refs)], size + 25 * 1024)
            size += 25 * 1024
        assert _runs(store) == [ix.RUN_MAX] * 7 + [250 - 7 * ix.RUN_MAX]
        for i in range(0, 250, 7):  # rewrite every 7th chunk in place
            ref = store.put_chunk(rand(1024, 10_000 + i))
            store.commit_file("f", [Patch(i * 1024, i * 1024 + 1, [ref])], size)
        assert _runs(store) == [ix.RUN_MAX] * 7 + [250 - 7 * ix.RUN_MAX]
        store.commit_file("f", [Patch(40 * 1024, 41 * 1024, [hole_ref(1024)])], size)  # a hole: runs split there
        runs = _runs(store)
        assert sum(runs) == 249 and len(runs) == 9
        assert store.read_range("f", 40 * 1024, 1024) == bytes(1024)
        assert store.stats()["chunk_refs"] == 249
        assert check_store(store, verify_data=True).clean


def _runs(store) -> list[int]:
    """Entries per manifest run, in order (one file in the store)."""
    with store.read_txn() as txn:
        return [len(v) // ix.RUN_ENTRY.size for v in txn.cursor(db=store.index.manifests).iternext(keys=False)]


def test_a_chunk_id_lives_on_when_gc_moves_its_record(store_dir, backend):
    """gc moves records and keeps their ids (their headers go along): manifests are not touched."""
    keep, drop = rand(200_000, 6), rand(200_000, 7)
    with ChunkStore.create(store_dir, avg_size="16K", backend=backend) as store:
        store.ingest("drop", drop)
        store.ingest("keep", keep)
        before = {e.address: located(store, e.address) for e in store.manifest("keep")}
        store.delete("drop")
        with store.read_txn() as txn:
            runs_before = list(txn.cursor(db=store.index.manifests))
        assert store.gc(min_dead_fraction=0)["chunks_moved"] == len(before)
        with store.read_txn() as txn:
            assert list(txn.cursor(db=store.index.manifests)) == runs_before
            for address, (chunk, rec) in before.items():
                moved = get_record(txn, store.index, chunk)
                assert moved.address == address and moved.location != rec.location
        assert store.read("keep") == keep
        assert check_store(store, verify_data=True).clean


def test_chunk_ids_are_reused_once_the_counter_wraps_and_run_out_only_when_all_are_held(store_dir, backend,
                                                                                        monkeypatch):
    """With 40 ids, writing and deleting 200 chunks wraps the counter; ids of deleted chunks come back."""
    monkeypatch.setattr(ix, "MAX_CHUNK_ID", 40)
    kept = {}
    with ChunkStore.create(store_dir, chunker="fixed", avg_size="1K", backend=backend) as store:
        for n in range(20):
            data = rand(10 * 1024, n)
            store.ingest(f"f{n}", data)
            if n in (0, 5, 10):
                kept[f"f{n}"] = data  # 30 ids held for good, the other 10 go round and round
            else:
                store.delete(f"f{n}")
        assert all(store.read(name) == data for name, data in kept.items())
        assert check_store(store, verify_data=True).clean
    with ChunkStore.open(store_dir, backend=backend) as store:  # the wrapped counter was saved
        assert store.ledger.ids.wrapped
        store.ingest("more", rand(10 * 1024, 99))  # the last 10 free ids
        with pytest.raises(StoreFullError, match="holds 40 chunks"):
            store.ingest("one-too-many", rand(1024, 100))
        assert not store.exists("one-too-many")
        assert store.read("more") == rand(10 * 1024, 99)
        assert all(store.read(name) == data for name, data in kept.items())
        assert check_store(store, verify_data=True).clean


def test_a_commit_that_would_overlap_or_pass_the_size_is_refused_and_changes_nothing(store_dir, backend):
    """The tiling checks on runs: overlaps inside the rewritten runs, and the last entry against the size."""
    data = rand(5000, 8)
    with ChunkStore.create(store_dir, chunker="fixed", avg_size="1K", backend=backend) as store:
        store.ingest("f", data)  # entries at 0, 1024, ... 4096 (the last one 904 bytes)
        before = store.manifest("f")
        attempts = [
            ([Patch(1024, 1025, [])], 5000, 2000),  # the new chunk runs over the entry at 2048
            ([Patch(5000, TO_END, [])], 5000, 1024),  # the same chunk laid at 5000 passes the size
            ([Patch(8000, TO_END, [])], 1000, 0),  # nothing rewritten, but the entries already pass 1000
        ]
        for patches, size, length in attempts:
            refs = [store.put_chunk(rand(length, 9))] if length else []
            laid = [Patch(p.start, p.old_end, refs) for p in patches]
            with pytest.raises(IndexCorruptError, match="overlaps itself|reaches past its size"):
                store.commit_file("f", laid, size)
            store.release(refs)
            assert store.manifest("f") == before and store.read("f") == data
        assert check_store(store, verify_data=True).clean
