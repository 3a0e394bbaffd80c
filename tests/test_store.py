"""The chunk store's API as a library user sees it: round trips, dedup, verification, errors."""

import io
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from chunkfs import ChunkCorruptError, ChunkStore, StoreLockedError
from chunkfs.errors import (FileNotFoundInStore, FormatVersionError, IndexCorruptError, InvalidArgument,
                            NotAStoreError, SettingsError, StoreExistsError, StoreFullError, WouldBlock)
from chunkfs.fsck import check_store
from chunkfs.store import _index as ix
from chunkfs.store._packs import HEADER_SIZE, PACK_MAGIC, PackFiles

from conftest import BACKENDS, drop_pack_pages, make_backend, pack_backend


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def store(store_dir, backend):
    with ChunkStore.create(store_dir, avg_size="16K", backend=backend) as s:
        yield s


def test_round_trip_bytes_and_file_objects(store):
    data = rand(3 << 20)
    store.ingest("a", data)
    store.ingest(b"\x00raw", io.BytesIO(data[:1000]))
    assert store.read("a") == data
    assert store.read(b"\x00raw") == data[:1000]
    assert store.read_range("a", 123456, 999999) == data[123456:1123455]
    assert store.read_range("a", len(data) - 10, 100) == data[-10:]
    assert store.read_range("a", len(data) + 5, 10) == b""
    assert sorted(store.list_files(), key=repr) == sorted(["a", b"\x00raw"], key=repr)
    assert store.exists("a") and not store.exists("nope")


def test_open_reader_is_seekable(store):
    data = rand(500_000, 3)
    store.ingest("f", data)
    with store.open_reader("f") as fh:
        assert fh.seekable()
        fh.seek(250_000)
        assert fh.read(10) == data[250_000:250_010]
        fh.seek(-5, io.SEEK_END)
        assert fh.read() == data[-5:]
        fh.seek(0)
        assert fh.read() == data


def test_a_nowait_read_never_waits_for_the_disk(store_dir):
    """The event loop's reads: what memory holds, or WouldBlock, never a wait and never wrong bytes."""
    data = rand(2 << 20, 7)
    mib = 1 << 20
    with ChunkStore.create(store_dir, avg_size="16K") as s:
        s.ingest("f", data)
    with ChunkStore.open(store_dir) as s:
        if not drop_pack_pages(store_dir):
            pytest.skip("this filesystem keeps its files' pages in memory")
        with pytest.raises(WouldBlock):
            s.read_view("f", 0, mib, nowait=True)
        assert s.read_view("f", 1, mib) == data[1:mib + 1]  # waits for the disk
        assert s.read_view("f", 2, mib, nowait=True) == data[2:mib + 2]  # the packs' pages are cached now
        assert s.read_view("f", mib, 2 * mib, nowait=True) == data[mib:]  # the file ends
        assert s.read_view("f", 2 * mib, 10, nowait=True) == b""


def test_empty_file(store):
    store.ingest("empty", b"")
    assert store.read("empty") == b"" and store.exists("empty")


def test_reingest_replaces_and_releases_old_chunks(store):
    store.ingest("f", rand(1 << 20, 1))
    store.ingest("f", rand(1 << 20, 2))
    assert store.read("f") == rand(1 << 20, 2)
    stats = store.stats()
    assert stats["files"] == 1 and stats["stored_bytes"] == 1 << 20
    assert stats["garbage_bytes"] > 1 << 20  # the old version's chunks, until gc
    assert store.packs.disk_bytes() < 1.5 * (1 << 20)  # ...whose blocks were punched out as they died (else 2 MiB)
    removed = store.gc()  # so a rewrite would not pay: half the pack is live
    assert removed["bytes_moved"] == 0 and removed["packs_left"] == 1
    full = store.gc(min_dead_fraction=0)  # every pack with a dead record
    assert full["packs_rewritten"] == 1 and full["bytes_moved"] >= 1 << 20
    assert store.stats()["garbage_bytes"] == 0
    assert check_store(store, verify_data=True).clean


def test_same_file_twice_costs_one_copy(store):
    data = rand(5 << 20, 4)
    store.ingest("one", data)
    before = store.stats()
    result = store.ingest("two", data)
    after = store.stats()
    assert result.new_bytes == 0 and result.new_chunks == 0
    assert after["stored_bytes"] == before["stored_bytes"]
    assert after["logical_bytes"] == 2 * before["logical_bytes"]
    assert after["savings_pct"] == pytest.approx(50.0, abs=0.01)


@pytest.mark.parametrize("chunker,min_reuse,max_reuse", [("fastcdc", 0.90, 1.0), ("fixed", 0.0, 0.02)])
def test_prefix_insert_reuses_chunks_only_with_cdc(store_dir, backend, chunker, min_reuse, max_reuse):
    data = rand(20 << 20, 5)
    with ChunkStore.create(store_dir, chunker=chunker, avg_size="16K", backend=backend) as store:
        store.ingest("v1", data)
        result = store.ingest("v2", b"!" + data)
        reused = 1 - result.new_chunks / result.chunks
        assert min_reuse <= reused <= max_reuse, reused


def test_delete_releases_and_missing_ids_raise(store):
    store.ingest("a", rand(100_000))
    store.delete("a")
    assert not store.exists("a")
    assert store.stats()["stored_bytes"] == 0
    with pytest.raises(FileNotFoundInStore):
        store.delete("a")
    with pytest.raises(FileNotFoundInStore):
        store.read("a")
    with pytest.raises(InvalidArgument):
        store.ingest(42, b"x")
    with pytest.raises(InvalidArgument):
        store.ingest("x" * 600, b"x")


def test_persistence_across_reopen(store_dir, backend):
    data = rand(2 << 20, 6)
    with ChunkStore.create(store_dir, backend=backend) as store:
        store.ingest("f", data)
    with ChunkStore.open(store_dir, backend=backend) as store:
        assert store.read("f") == data
        assert store.recovery.clean
        assert check_store(store).clean


def flip_byte_in_chunk(store, address: bytes) -> None:
    """Damage one byte of a chunk's bytes in its pack, as a failing medium would."""
    with store.index.read() as txn:
        loc = store.ledger.locate(txn, address)[1]
    offset = loc.offset + loc.length // 2
    byte = store.packs.backend.read(loc.pack, offset, 1)
    store.packs.backend.patch(loc.pack, offset, bytes([byte[0] ^ 0xFF]))


def read_with(store, reader: str, file_id) -> bytes:
    """The whole file through the chunk-by-chunk path (read_range) or the long-read one (read_view)."""
    return bytes(getattr(store, reader)(file_id, 0, store.size(file_id)))


@pytest.mark.parametrize("reader", ["read_range", "read_view"])
@pytest.mark.parametrize("verify", ["xxh3", "sha256"])
def test_flipped_byte_raises_for_files_using_it_only(store_dir, backend, verify, reader, caplog):
    shared, other = rand(64_000, 7), rand(200_000, 8)
    with ChunkStore.create(store_dir, avg_size="16K", backend=backend) as store:
        store.ingest("uses", shared + other[:50_000])
        store.ingest("also", shared)
        store.ingest("clean", other)
        victim = store.manifest("also")[0].address
        assert victim not in {e.address for e in store.manifest("clean")}
        flip_byte_in_chunk(store, victim)
    with ChunkStore.open(store_dir, verify=verify, backend=backend) as store:
        for name in ("uses", "also"):
            with pytest.raises(ChunkCorruptError) as info:
                read_with(store, reader, name)
            assert info.value.address == victim and info.value.file_id == name
            assert victim.hex() in str(info.value)
        assert read_with(store, reader, "clean") == other
        after = max(e.offset + e.length for e in store.manifest("uses") if e.address == victim)
        assert bytes(getattr(store, reader)("uses", after, 10**6)) == (shared + other[:50_000])[after:]
        report = check_store(store, verify_data=True)
        assert [f.kind for f in report.findings] == ["corrupt-chunk"]
    assert victim.hex() in caplog.text  # the log names the chunk


@pytest.mark.parametrize("reader", ["read_range", "read_view"])
def test_truncated_and_missing_packs_raise_corrupt(store_dir, backend, reader, caplog):
    with ChunkStore.create(store_dir, backend=backend) as store:
        store.ingest("f", rand(300_000, 9))
        pack = store.packs.active
    packs = pack_backend(store_dir, backend)
    packs.truncate(pack, packs.size(pack) - 1000)
    with ChunkStore.open(store_dir, backend=backend) as store:
        with pytest.raises(ChunkCorruptError, match="truncated"):
            read_with(store, reader, "f")
        last = store.manifest("f")[-1]
        assert bytes(getattr(store, reader)("f", 0, last.offset)) == rand(300_000, 9)[:last.offset]
    packs.remove(pack)
    packs.reap(grace=0)  # no read is on its way across a restart
    with ChunkStore.open(store_dir, backend=backend) as store:
        with pytest.raises(ChunkCorruptError, match="missing"):
            read_with(store, reader, "f")
        assert "missing-pack" in {f.kind for f in check_store(store).findings}


def test_unreferenced_tail_of_a_pack_is_truncated_at_open(store_dir, backend):
    with ChunkStore.create(store_dir, backend=backend) as store:
        store.ingest("f", rand(100_000, 10))
        pack = store.packs.active
    packs = pack_backend(store_dir, backend)
    size = packs.size(pack)
    packs.write(pack, size, [b"half-written chunk left by a crash"])
    with ChunkStore.open(store_dir, backend=backend) as store:
        assert store.recovery.truncated_bytes == 34
        assert store.packs.size(pack) == size
        assert check_store(store, verify_data=True).clean


# -- opening the wrong thing ----------------------------------------------------

def test_create_refuses_existing_store_and_non_empty_dir(store_dir, tmp_path):
    ChunkStore.create(store_dir).close()
    with pytest.raises(StoreExistsError, match="already exists and is a chunkfs store"):
        ChunkStore.create(store_dir)
    other = tmp_path / "busy"
    other.mkdir()
    (other / "file").write_text("hi")
    with pytest.raises(StoreExistsError, match="not empty"):
        ChunkStore.create(other)


def test_store_directory_is_private(store_dir):
    ChunkStore.create(store_dir).close()
    assert os.stat(store_dir).st_mode & 0o777 == 0o700


def test_open_errors_are_clear(tmp_path, store_dir):
    with pytest.raises(NotAStoreError, match="no such directory"):
        ChunkStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError, match="not a chunkfs store"):
        ChunkStore.open(tmp_path / "plain")
    ChunkStore.create(store_dir).close()
    settings_path = store_dir / "chunkfs.json"
    raw = json.loads(settings_path.read_text())
    settings_path.write_text(json.dumps(dict(raw, format_version=99)))
    with pytest.raises(FormatVersionError, match="newer"):
        ChunkStore.open(store_dir)
    settings_path.write_text("{ not json")
    with pytest.raises(SettingsError, match="unreadable settings"):
        ChunkStore.open(store_dir)
    settings_path.write_text(json.dumps(dict(raw, avg_size=3000)))
    with pytest.raises(SettingsError, match="power of two"):
        ChunkStore.open(store_dir)


def test_garbage_index_is_refused_with_a_clear_error(store_dir):
    ChunkStore.create(store_dir).close()
    data_mdb = store_dir / "meta" / "data.mdb"
    data_mdb.write_bytes(rand(64 * 1024, 11))
    with pytest.raises(IndexCorruptError, match="cannot open the metadata index"):
        ChunkStore.open(store_dir)
    data_mdb.write_bytes(b"")
    with pytest.raises(IndexCorruptError):
        ChunkStore.open(store_dir)


HOLDER = textwrap.dedent("""
    import sys, time
    from chunkfs import ChunkStore
    store = ChunkStore.open(sys.argv[1])
    store.ingest("held", b"held by the first process")
    print("ready", flush=True)
    sys.stdin.readline()
    store.ingest("after", b"first process keeps working")
    assert store.read("after") == b"first process keeps working"
    store.close()
    print("done", flush=True)
""")


def test_second_writer_process_is_refused_first_keeps_working(store_dir):
    ChunkStore.create(store_dir).close()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(store_dir)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env) as holder:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as info:
            ChunkStore.open(store_dir)
        assert f"pid {holder.pid}" in str(info.value) and "\n" not in str(info.value)
        with ChunkStore.open(store_dir, readonly=True) as reader:  # inspection is allowed
            assert reader.read("held") == b"held by the first process"
            assert reader.stats()["files"] == 1
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "done"
        assert holder.wait(timeout=30) == 0
    with ChunkStore.open(store_dir) as store:  # released at exit
        assert store.read("after") == b"first process keeps working"


def test_a_second_open_in_this_process_says_it_is_this_process(store_dir):
    first = ChunkStore.create(store_dir)  # create returns the store open, as open() does
    with pytest.raises(StoreLockedError) as info:
        ChunkStore.open(store_dir)
    message = str(info.value)
    assert "already open in this process" in message and "another process" not in message
    with pytest.raises(StoreLockedError, match="already open in this process"):  # LMDB allows one open
        ChunkStore.open(store_dir, readonly=True)
    first.close()
    with ChunkStore.open(store_dir) as again:
        assert again.list_files() == []


def test_a_dropped_store_releases_its_lock(store_dir):
    """A program that never closes its store, as it would not close a file, can open it again."""
    store = ChunkStore.create(store_dir)
    store.ingest("kept", b"committed before the store was dropped")
    del store
    reopened = ChunkStore.open(store_dir)
    assert reopened.read("kept") == b"committed before the store was dropped"

    class Holder:  # a store only a reference cycle keeps: freed by the garbage collector, not at once
        pass

    holder = Holder()
    holder.me, holder.store = holder, reopened
    del holder, reopened
    with ChunkStore.open(store_dir) as third:
        assert third.read("kept") == b"committed before the store was dropped"


def test_a_store_dropped_unclosed_by_a_process_is_synced_and_released(store_dir):
    """The finalizer closes the store properly at exit: the next open finds no recovery to do."""
    code = ("import sys; from chunkfs import ChunkStore; s = ChunkStore.create(sys.argv[1]); "
            "s.ingest('f', b'x' * 100_000)")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run([sys.executable, "-W", "error", "-c", code, str(store_dir)], env=env, check=True, timeout=60)
    with ChunkStore.open(store_dir) as store:
        assert store.read("f") == b"x" * 100_000


def test_index_map_grows_when_full_instead_of_failing(store_dir, backend, monkeypatch):
    import chunkfs.store._index

    monkeypatch.setattr(chunkfs.store._index, "INITIAL_MAP_SIZE", 1 << 20)
    with ChunkStore.create(store_dir, avg_size="1K", min_size=256, max_size=4096, backend=backend) as store:
        start = store.index.env.info()["map_size"]
        for i in range(600):  # about 12,000 chunks: well over a MiB of index
            store.ingest(f"file-{i}", rand(20_000, i))
        assert store.index.env.info()["map_size"] > start
        assert all(store.read(f"file-{i}") == rand(20_000, i) for i in range(0, 600, 37))
        assert check_store(store).clean


def test_gc_that_runs_out_of_space_midway_keeps_accounting_exact(store_dir, backend, monkeypatch):
    from chunkfs.errors import StoreFullError

    with ChunkStore.create(store_dir, avg_size="4K", min_size=1024, max_size=16384, backend=backend) as store:
        for i in range(6):
            store.ingest(f"f{i}", rand(200_000, 100 + i))
        for i in range(3):
            store.delete(f"f{i}")
        real_append, calls = store.packs.append, []

        def append_then_full(address, data, *header):
            if len(calls) == 5:
                raise StoreFullError("no space left for chunk data (simulated)")
            calls.append(address)
            return real_append(address, data, *header)

        monkeypatch.setattr(store.packs, "append", append_then_full)
        report = store.gc(min_dead_fraction=0)
        assert report["stopped_full"] and report["packs_removed"] == 0
        monkeypatch.undo()
        check = check_store(store, verify_data=True)
        assert check.clean, check.findings
        assert all(store.read(f"f{i}") == rand(200_000, 100 + i) for i in range(3, 6))
        assert store.gc(min_dead_fraction=0)["packs_removed"] >= 1  # the old pack, and the one holding abandoned copies
        final = check_store(store, verify_data=True)
        assert final.clean and final.garbage_bytes == 0


def test_dead_chunks_give_their_disk_blocks_back_at_once(store_dir, backend):
    with ChunkStore.create(store_dir, backend=backend) as store:
        for i in range(8):
            store.ingest(f"f{i}", rand(400_000, 200 + i))
        assert store.packs.existing() == [store.packs.active]
        before = store.packs.disk_bytes()
        for i in range(4):
            store.delete(f"f{i}")
        assert store.packs.disk_bytes() < before * 0.6
        assert check_store(store, verify_data=True).clean
        assert all(store.read(f"f{i}") == rand(400_000, 200 + i) for i in range(4, 8))


def test_read_range_fetches_a_repeated_chunk_once(store_dir, backend, monkeypatch):
    """A range that holds one chunk many times (zeros, say) reads it from its pack once, even with no cache."""
    ChunkStore.create(store_dir, avg_size="16K", backend=backend).close()
    store = ChunkStore.open(store_dir, cache_size=0, backend=backend)  # nothing is cached: only read_range itself can share
    try:
        block = rand(store.settings.max_size, seed=7)
        data = b"\0" * (4 * store.settings.max_size) + block
        store.ingest("f", data)
        zero_chunks = {e.address for e in store.manifest("f") if e.offset < 4 * store.settings.max_size}
        assert len(zero_chunks) == 1
        reads = []
        real = PackFiles.read_record_bytes
        monkeypatch.setattr(PackFiles, "read_record_bytes", lambda self, loc: reads.append(loc) or real(self, loc))
        assert store.read_range("f", 5, len(data)) == data[5:]
        assert len(reads) == len({loc for loc in reads}) == len(store.manifest("f")) - 3
        assert store.read_range("f", len(data) - 100, 1000) == block[-100:]
    finally:
        store.close()


def test_read_view_reads_each_record_once_and_back_to_back_records_together(store_dir, backend, monkeypatch):
    """A long read takes a run of records lying back to back in one readv, and a repeated chunk once."""
    with ChunkStore.create(store_dir, avg_size="16K", backend=backend) as store:
        block = rand(store.settings.max_size, seed=7)
        data = b"\0" * (4 * store.settings.max_size) + block + rand(500_000, 8)
        store.ingest("f", data)
        entries = store.manifest("f")
        runs = []
        real = PackFiles.read_run
        monkeypatch.setattr(PackFiles, "read_run", lambda self, locs, into, nowait=False:
                            runs.append(list(locs)) or real(self, locs, into, nowait))
        assert store.read_view("f", 5, len(data)) == data[5:]
        records = [loc for run in runs for loc in run]
        assert len(records) == len(set(records)) == len({e.address for e in entries})
        assert len(runs) <= 2  # the zero chunk, then everything after it in one pack
        assert store.read_view("f", len(data) - 100, 1000) == data[-100:]


@pytest.mark.slow
@pytest.mark.parametrize("backend_kind", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_read_view_equals_the_bytes_ingested(tmp_path_factory, backend_kind, data):
    """Any range of any file, with repeats, zeros and a tail, reads back as written."""
    pieces = data.draw(st.lists(st.sampled_from(["rand", "zeros", "repeat"]), min_size=1, max_size=6))
    content, seed = b"", data.draw(st.integers(0, 1000))
    for i, kind in enumerate(pieces):
        size = 1 + (seed * (i + 7)) % 90_000
        content += {"rand": rand(size, seed + i), "zeros": bytes(size), "repeat": content[:size]}[kind]
    offset = data.draw(st.integers(0, len(content) + 10))
    length = data.draw(st.integers(0, len(content) + 10))
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as room, \
            ChunkStore.create(Path(room) / "store", avg_size="8K", backend=make_backend(backend_kind)) as store:
        store.ingest("f", content)
        assert store.read_view("f", offset, length) == content[offset:offset + length]
        assert store.read_view("f", offset, length, nowait=True) == content[offset:offset + length]


def test_a_new_pack_has_its_header_before_the_index_names_it(store_dir, backend, monkeypatch):
    """A crash right after the commit that registers a new pack leaves a valid empty pack, not a missing one."""
    with ChunkStore.create(store_dir, backend=backend) as store:
        store.ingest("a", rand(100_000, 1))
        store.packs.retire_active()  # the next put allocates a new pack
        with monkeypatch.context() as m:
            m.setattr(PackFiles, "start", lambda self, pack: (_ for _ in ()).throw(RuntimeError("killed")))
            with pytest.raises(RuntimeError, match="killed"):
                store.ingest("b", rand(100_000, 2))
    with ChunkStore.open(store_dir, readonly=True, backend=backend) as store:  # as the next mount finds it
        with store.index.read() as txn:
            registered = [ix.KEYPACK.unpack(k)[0] for k in txn.cursor(db=store.index.packs).iternext(values=False)]
        assert len(registered) == 2
        for pack in registered:
            assert store.packs.backend.read(pack, 0, HEADER_SIZE) == PACK_MAGIC
        assert check_store(store).clean and store.read("a") == rand(100_000, 1)


def test_list_files_pages_through_a_prefix(store):
    ids = ["docs/a", "docs/b", "docs/c", "docs2", "img/x", "zz"]
    for fid in ids + [b"docs/raw"]:
        store.ingest(fid, fid.encode() if isinstance(fid, str) else fid)
    assert store.list_files() == [b"docs/raw"] + ids  # bytes ids first, then str ids, in byte order
    assert store.list_files(prefix="docs/") == ["docs/a", "docs/b", "docs/c"]
    assert store.list_files(prefix=b"docs") == [b"docs/raw"]
    pages, after = [], None
    while True:
        page = store.list_files(prefix="docs", after=after, limit=2)
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert pages == [["docs/a", "docs/b"], ["docs/c", "docs2"]]
    assert store.list_files(after="docs/b", limit=3) == ["docs/c", "docs2", "img/x"]
    assert store.list_files(prefix="docs/", after="a") == ["docs/a", "docs/b", "docs/c"]  # before the prefix
    assert store.list_files(prefix="nothing") == [] and store.list_files(limit=0) == []
    with pytest.raises(InvalidArgument):
        store.list_files(prefix=3)


# -- copies by metadata (chunkfs clone) and what du reads ------------------------------------------------


def _refcounts(store, file_id) -> dict:
    with store.read_txn() as txn:
        return {address: refcount for address, _, refcount in store.file_chunks(file_id, txn)}


def test_clone_files_shares_chunks_and_stays_independent(store):
    data = rand(2 << 20, seed=7)
    store.ingest("a", data)
    before = store.stats()
    assert store.clone_files(lambda txn: [("a", "b"), ("missing", "c")]) == [True, False]
    after = store.stats()
    assert store.read("b") == data and not store.exists("c")
    assert after["stored_bytes"] == before["stored_bytes"]  # nothing stored twice
    assert after["logical_bytes"] == 2 * before["logical_bytes"] and after["files"] == before["files"] + 1
    assert set(_refcounts(store, "a").values()) == {2}  # every chunk named by both
    new = rand(1 << 20, seed=8)
    store.ingest("a", new)  # a new version of one side
    assert store.read("b") == data and store.read("a") == new
    assert set(_refcounts(store, "b").values()) == {1}
    assert check_store(store, verify_data=True).clean
    store.delete("b")
    with store.read_txn() as txn:
        lengths = {address: length for address, length, _ in store.file_chunks("a", txn)}
    assert store.stats()["stored_bytes"] == sum(lengths.values())
    assert check_store(store).clean


def test_clone_files_keeps_holes_and_refuses_an_existing_destination(store):
    from chunkfs.store import Patch, hole_ref

    refs = store.put_chunks([b"x" * 5000])
    store.commit_file("sparse", [Patch(0, 1 << 62, [hole_ref(1 << 30), *refs])], (1 << 30) + 5000)
    store.ingest("other", b"y")
    store.clone_files(lambda txn: [("sparse", "copy")])
    assert store.size("copy") == (1 << 30) + 5000 and store.data_bytes("copy") == 5000
    assert store.read_range("copy", (1 << 30) - 2, 4) == b"\0\0xx"
    with pytest.raises(IndexCorruptError):
        store.clone_files(lambda txn: [("sparse", "other")])
    assert store.read("other") == b"y"  # the failed transaction changed nothing
    assert check_store(store).clean


def test_clone_past_the_refcount_limit_is_refused_and_changes_nothing(store, monkeypatch):
    data = rand(400_000, seed=5)
    store.ingest("a", data)
    monkeypatch.setattr(ix, "MAX_REFCOUNT", 3)  # the u32 limit, made reachable
    store.clone_files(lambda txn: [("a", "b"), ("a", "c")])  # refcounts 1 -> 3: at the limit, allowed
    assert set(_refcounts(store, "a").values()) == {3}
    with pytest.raises(StoreFullError, match="more than a chunk can be"):
        store.clone_files(lambda txn: [("a", "d")])
    assert not store.exists("d") and set(_refcounts(store, "a").values()) == {3}
    assert store.read("b") == data == store.read("c")
    assert check_store(store).clean


def test_file_chunks_gives_lengths_and_refcounts(store):
    store.ingest("a", rand(300_000, seed=3) * 2)
    store.ingest("b", rand(300_000, seed=3))
    with store.read_txn() as txn:
        chunks = store.file_chunks("a", txn)
        assert store.file_chunks("absent", txn) == []
    assert sum(length for _, length, _ in chunks) == 600_000
    uses = {}
    for name in ("a", "b"):
        with store.read_txn() as txn:
            for address, _, _ in store.file_chunks(name, txn):
                uses[address] = uses.get(address, 0) + 1
    assert all(refcount == uses[address] for address, _, refcount in chunks)
    assert any(refcount > 1 for _, _, refcount in chunks)
