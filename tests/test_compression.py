"""Compressed chunks: round trips at every level, with and without a store dictionary; damage found, never
returned; a change of level and a reopen read back what was written."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chunkfs import cli
from chunkfs.errors import ChunkCorruptError, ObjectStoreError
from chunkfs.fsck import check_store
from chunkfs.settings import MAX_LEVEL, SettingsError, parse_compression
from chunkfs.store import ChunkStore
from chunkfs.store import _compression, _writing
from chunkfs.store._backend import MemoryBackend
from chunkfs.store._compression import CODEC_RAW, CODEC_ZSTD, Codec, DecodeError, Dictionaries
from chunkfs.store._packs import RECORD, RecordHeader

WORDS = [b"chunk", b"store", b"dedup", b"zstd", b"inode", b"manifest", b"pack", b"record", b"<div>", b"</div>"]


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += b'{"name": "' + rng.choice(WORDS) + b'", "size": ' + str(rng.randint(0, 99999)).encode() + b"}\n"
    return bytes(out[:n])


KINDS = {
    "random": lambda n, seed: random.Random(seed).randbytes(n),
    "zero": lambda n, seed: bytes(n),
    "text": text,
    "incompressible": lambda n, seed: os.urandom(n),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Dictionaries:
    """A store directory holding one dictionary trained on text like the test chunks."""
    path = tmp_path_factory.mktemp("dict")
    import zstandard

    samples = [text(2048, seed) for seed in range(200)]
    dicts = Dictionaries(str(path))
    assert dicts.add(zstandard.train_dictionary(16 * 1024, samples).as_bytes()) == 1
    return dicts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(KINDS)), size=st.integers(0, 40_000), seed=st.integers(0, 1000),
       level=st.integers(1, MAX_LEVEL), use_dict=st.booleans())
def test_every_kind_of_chunk_round_trips_at_every_level(trained, kind, size, seed, level, use_dict):
    data = KINDS[kind](size, seed)
    codec = Codec(trained, "zstd", level, use_dictionary=use_dict)
    assert codec.dict_id == (1 if use_dict else 0)
    how, dict_id, stored = codec.encode(data)
    if how == CODEC_RAW:
        assert stored is data and dict_id == 0
    else:
        assert how == CODEC_ZSTD and len(stored) < len(data) and dict_id == codec.dict_id
    assert bytes(codec.decode(how, dict_id, stored, len(data))) == data
    if kind == "zero" and size >= 1024:
        assert how == CODEC_ZSTD
    if kind in ("random", "incompressible") and size >= 64:
        assert how == CODEC_RAW  # kept raw: random data never grows


@pytest.mark.parametrize("alphabet", [b"0123456789abcdef", b"abcdefghijklmnopqrstuvwxyz ",
                                      b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"])
def test_data_whose_only_redundancy_is_its_alphabet_is_compressed(alphabet):
    """Hex, text of random words, base64: no repeats for a match finder, yet entropy coding saves a
    quarter to a half; the probe must not call them incompressible."""
    data = bytes(random.Random(7).choices(alphabet, k=32768))
    codec = Codec(Dictionaries("/nonexistent"), "zstd", 3)
    how, _, stored = codec.encode(data)
    assert how == CODEC_ZSTD and len(stored) < 0.8 * len(data)


def test_a_dictionary_shrinks_small_text_chunks(trained):
    chunks = [text(4096, seed) for seed in range(1000, 1020)]
    plain, with_dict = Codec(trained, "zstd", 3, use_dictionary=False), Codec(trained, "zstd", 3)
    assert sum(len(with_dict.encode(c)[2]) for c in chunks) < 0.95 * sum(len(plain.encode(c)[2]) for c in chunks)


def test_a_missing_dictionary_or_damaged_frame_is_a_decode_error(trained, tmp_path):
    data = text(8000, 5)
    codec = Codec(trained, "zstd", 3)
    how, dict_id, stored = codec.encode(data)
    assert how == CODEC_ZSTD and dict_id == 1
    with pytest.raises(DecodeError, match="dictionary 1 is missing"):
        Codec(Dictionaries(str(tmp_path)), "zstd", 3).decode(how, dict_id, stored, len(data))
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        got = codec.decode(how, dict_id, bytes(damaged), len(data))
    except DecodeError:
        return
    assert got != data  # zstd without its checksum may decode damage: the record's xxh3 catches that


def test_compression_settings_are_parsed_with_one_line_errors():
    assert parse_compression("zstd") == ("zstd", 3)
    assert parse_compression("ZSTD:19") == ("zstd", 19)
    assert parse_compression("none") == ("none", 0)
    for bad in ("zstd:0", "zstd:23", "zstd:x", "lz4", "none:1", ""):
        with pytest.raises(SettingsError):
            parse_compression(bad)


# -- through the store -------------------------------------------------------------------------


def fill(store: ChunkStore) -> dict[str, bytes]:
    files = {"text": text(600_000, 1), "zero": bytes(300_000), "random": os.urandom(300_000),
             "small": text(3000, 2)}
    for name, data in files.items():
        store.ingest(name, data)
    return files


def test_store_counts_logical_dedup_and_compressed_bytes_apart(tmp_path):
    with ChunkStore.create(tmp_path / "s", avg_size="16K") as store:
        files = fill(store)
        store.ingest("copy", files["text"])
        s = store.stats()
    logical = sum(map(len, files.values())) + len(files["text"])
    assert s["logical_bytes"] == logical
    assert s["stored_bytes"] < logical - len(files["text"]) + 70_000  # the copy deduplicated (zero chunks too)
    assert s["packed_bytes"] < s["stored_bytes"] - 500_000  # text and zeros compress; random does not
    assert s["packed_bytes"] > 300_000
    assert s["dedup_ratio"] > 1 and s["compression_ratio"] > 1
    assert s["compression"] == "zstd:3"


def test_random_data_is_stored_raw_and_does_not_grow(tmp_path):
    data = os.urandom(2_000_000)
    sizes = {}
    for mode in ("none", "zstd:3"):
        with ChunkStore.create(tmp_path / mode, compression=mode) as store:
            store.ingest("r", data)
            sizes[mode] = store.stats()["packed_bytes"]
    assert sizes["zstd:3"] == sizes["none"] == len(data)


def test_written_compressed_reads_back_after_a_level_change_and_a_reopen(tmp_path):
    path = tmp_path / "s"
    with ChunkStore.create(path, compression="zstd:1") as store:
        files = fill(store)
    with ChunkStore.open(path, compression="zstd:19") as store:
        assert store.codec.level == 19
        store.ingest("later", text(200_000, 9))
        files["later"] = text(200_000, 9)
        for name, data in files.items():
            assert store.read(name) == data
    with ChunkStore.open(path, compression="none") as store:
        store.ingest("raw", text(100_000, 10))
        files["raw"] = text(100_000, 10)
    for verify in ("xxh3", "sha256", "off"):
        with ChunkStore.open(path, readonly=True, verify=verify) as store:
            for name, data in files.items():
                assert store.read(name) == data
                assert bytes(store.read_view(name, 7, len(data))) == data[7:]
            assert store.settings.compression == "zstd:1"
            assert check_store(store, verify_data=True).clean


def test_gc_moves_compressed_records_as_they_are(tmp_path):
    with ChunkStore.create(tmp_path / "s", avg_size="16K") as store:
        files = fill(store)
        store.delete("random")
        report = store.gc(min_dead_fraction=0)
        assert report["chunks_moved"] > 0
        for name in ("text", "zero", "small"):
            assert store.read(name) == files[name]
        assert check_store(store, verify_data=True).clean


def first_compressed(store: ChunkStore, name: str):
    """The place and header of the first compressed record of a file."""
    for entry in store.manifest(name):
        with store.read_txn() as txn:
            chunk, loc = store.ledger.locate(txn, entry.address)
        header = store.packs.read_record_header(loc)
        if header.compressed:
            return loc, header
    raise AssertionError("no compressed record")


def test_a_corrupt_compressed_record_is_eio_and_an_fsck_finding(tmp_path):
    path = tmp_path / "s"
    with ChunkStore.create(path, avg_size="16K") as store:
        data = text(200_000, 3)
        store.ingest("f", data)
        loc, _ = first_compressed(store, "f")
    with open(path / "packs" / f"{loc.pack:08x}.pack", "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x5A]))
    with ChunkStore.open(path) as store:
        with pytest.raises(ChunkCorruptError):
            store.read("f")
        with pytest.raises(ChunkCorruptError):
            store.read_view("f", 0, len(data))
        report = check_store(store, verify_data=True)
    assert "corrupt-chunk" in {f.kind for f in report.damage}


def compressed_records(store: ChunkStore, name: str) -> list:
    """(file offset, length, place) of each compressed record of a file, in file order."""
    found = []
    for entry in store.manifest(name):
        with store.read_txn() as txn:
            chunk, loc = store.ledger.locate(txn, entry.address)
        if store.packs.read_record_header(loc).compressed:
            found.append((entry.offset, entry.length, loc))
    return found


def test_a_long_read_decompresses_on_two_threads_and_still_finds_damage(tmp_path, monkeypatch):
    """A read of many compressed records is split with a helper thread; a damaged record in either half is
    still a ChunkCorruptError, and reads that do not touch it return the written bytes."""
    from chunkfs.store import _reading

    used = []
    real_submit = _reading._DECODER.submit
    monkeypatch.setattr(_reading._DECODER, "submit", lambda fn, *a: used.append(len(a[0])) or real_submit(fn, *a))
    path = tmp_path / "s"
    data = text(2_000_000, 5)
    with ChunkStore.create(path, avg_size="16K") as store:
        store.ingest("f", data)
        assert bytes(store.read_view("f", 0, len(data))) == data
        records = compressed_records(store, "f")
    assert used, "a 2 MB read of compressed records did not use the second thread"
    assert len(records) > 8
    offset, length, loc = records[-2]  # in the helper's half of the last run
    with open(path / "packs" / f"{loc.pack:08x}.pack", "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x5A]))
    with ChunkStore.open(path) as store:
        with pytest.raises(ChunkCorruptError):
            store.read_view("f", 0, len(data))
        assert bytes(store.read_view("f", 0, offset)) == data[:offset]
        tail = offset + length
        assert bytes(store.read_view("f", tail, len(data) - tail)) == data[tail:]


def test_a_record_naming_a_missing_dictionary_is_an_fsck_finding(tmp_path, monkeypatch):
    monkeypatch.setattr(_compression, "TRAIN_SAMPLE_BYTES", 256 * 1024)
    monkeypatch.setattr(_compression, "MIN_SAMPLES", 16)
    path = tmp_path / "s"
    with ChunkStore.create(path, avg_size="4K", min_size=1024, max_size=16384) as store:
        store.ingest("first", text(400_000, 4))
        store.codec.wait()
        assert store.codec.dict_id == 1 and store.stats()["dictionary"] == 1
        data = text(100_000, 5)
        store.ingest("second", data)
        loc, header = first_compressed(store, "second")
        assert header.dictionary == 1
    with ChunkStore.open(path) as store:
        assert store.read("second") == data  # the dictionary is found again after a reopen
    os.rename(path / "dictionaries" / "0001.zdict", tmp_path / "gone")
    with ChunkStore.open(path) as store:
        with pytest.raises(ChunkCorruptError, match="dictionary 1 is missing"):
            store.read("second")
        report = check_store(store)
    assert "missing-dictionary" in {f.kind for f in report.damage}


def test_mkfs_takes_compression_and_stats_shows_savings_apart(tmp_path, capsys):
    store = str(tmp_path / "s")
    assert cli.main(["mkfs", store, "--compression", "zstd:7"]) == 0
    assert "compression zstd:7" in capsys.readouterr().out
    with ChunkStore.open(store) as s:
        s.ingest("t", text(300_000, 1))
    assert cli.main(["stats", store]) == 0
    out = capsys.readouterr().out
    assert "after dedup:" in out and "compression ratio" in out and "zstd:7" in out
    assert cli.main(["mkfs", str(tmp_path / "bad"), "--compression", "gzip"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("chunkfs: ") and err.count("\n") == 1 and "gzip" in err


class UnpublishingBackend(MemoryBackend):
    """A medium that must keep the dictionaries too (as an object store does), and cannot now."""

    def __init__(self):
        super().__init__()
        self.tried: list[str] = []

    def publish(self, names):
        if names:
            self.tried += names
            raise ObjectStoreError("the object store is away")


def test_a_dictionary_the_backend_cannot_publish_is_not_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_compression, "TRAIN_SAMPLE_BYTES", 256 * 1024)
    monkeypatch.setattr(_compression, "MIN_SAMPLES", 16)
    backend = UnpublishingBackend()
    path = tmp_path / "s"
    with ChunkStore.create(path, avg_size="4K", min_size=1024, max_size=16384, backend=backend) as store:
        store.ingest("first", text(400_000, 4))
        store.codec.wait()
        assert backend.tried == ["dictionaries/0001.zdict"]  # trained, and it would have paid
        assert store.codec.dict_id == 0 and not os.listdir(path / "dictionaries")
        data = text(100_000, 5)
        store.ingest("second", data)
        assert store.read("second") == data
        assert first_compressed(store, "second")[1].dictionary == 0
    assert "could not keep a compression dictionary" in caplog.text and "away" in caplog.text


def test_compression_runs_before_the_store_lock_is_taken(tmp_path, monkeypatch):
    """Concurrent writers are not serialised by zstd: a writer compresses its new chunks without the lock."""
    with ChunkStore.create(tmp_path / "s", avg_size="16K") as store:
        under_lock = []
        for name in ("hopeless", "compress", "encode"):
            def watched(data, original=getattr(store.codec, name)):
                under_lock.append(store._lock._is_owned())
                return original(data)

            monkeypatch.setattr(store.codec, name, watched)
        files = fill(store)
        assert len(under_lock) > 20 and not any(under_lock)
        for name, data in files.items():
            assert store.read(name) == data


def test_a_chunk_that_looked_stored_before_the_lock_is_compressed_under_it(tmp_path, monkeypatch):
    """The look before the lock can be wrong (another writer freed the chunk meanwhile): the chunk is still
    stored, compressed where it pays."""
    with ChunkStore.create(tmp_path / "s", avg_size="16K") as store:
        monkeypatch.setattr(_writing, "_encode_likely_new", lambda store, addresses, chunks: {})
        files = fill(store)
        s = store.stats()
        assert s["packed_bytes"] < s["stored_bytes"] - 500_000
        for name, data in files.items():
            assert store.read(name) == data
        assert check_store(store, verify_data=True).clean


def other_text(n: int, seed: int) -> bytes:
    """Text of another kind than text(): a different vocabulary and layout (a store whose data changes)."""
    rng = random.Random(seed)
    vocabulary = [bytes(random.Random(v).choices(b"QWERTYUIOPASDFGHJKLZXCVBNM0123456789", k=7)) for v in range(400)]
    out = bytearray()
    while len(out) < n:
        out += b"<row key='" + rng.choice(vocabulary) + b"'><cell>" + rng.choice(vocabulary) + b"</cell></row>\r\n"
    return bytes(out[:n])


def test_the_dictionary_is_retrained_when_the_data_changes_and_only_then(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="chunkfs.store")
    monkeypatch.setattr(_compression, "TRAIN_SAMPLE_BYTES", 256 * 1024)
    monkeypatch.setattr(_compression, "MIN_SAMPLES", 16)
    monkeypatch.setattr(_compression, "RETRAIN_AFTER", 1 << 20)
    path = tmp_path / "s"
    files = {}
    with ChunkStore.create(path, avg_size="4K", min_size=1024, max_size=16384) as store:
        files["json"] = text(600_000, 4)
        store.ingest("json", files["json"])
        store.codec.wait()
        assert store.codec.dict_id == 1
        files["json2"] = text(1_600_000, 5)  # the same kind of data: a retrained one would not pay
        store.ingest("json2", files["json2"])
        store.codec.wait()
        assert store.codec.dict_id == 1 and "not kept" in caplog.text
        assert store.codec._interval == 2 << 20  # an attempt that did not pay waits twice as long
        for n in range(4):  # the data changes: the dictionary in use helps little with it
            files[f"xml{n}"] = other_text(1_000_000, 10 + n)
            store.ingest(f"xml{n}", files[f"xml{n}"])
            store.codec.wait()
        assert store.codec.dict_id == 2 and store.codec._interval == 1 << 20
        files["xml-late"] = other_text(200_000, 99)
        store.ingest("xml-late", files["xml-late"])
        assert first_compressed(store, "xml-late")[1].dictionary == 2
        assert first_compressed(store, "json2")[1].dictionary == 1  # old records keep naming the old one
    assert sorted(os.listdir(path / "dictionaries")) == ["0001.zdict", "0002.zdict"]
    with ChunkStore.open(path, readonly=True) as store:
        assert store.codec.dict_id == 2
        for name, data in files.items():
            assert store.read(name) == data
        assert check_store(store, verify_data=True).clean
