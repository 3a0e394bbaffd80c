"""A store whose packs live in an S3 bucket, against a real SeaweedFS (conftest.py's ``seaweed``).

What a user relies on: data written is readable after a remount and from a
store restored on an empty directory; a crash while uploads were waiting
loses nothing; an object store that goes away makes writes stop with ENOSPC
(never lose data) and uploads resume when it is back; throttling and
requests that get no answer are retried with backoff; a missing or damaged
object fails exactly the ranges it held, and fsck names it; wrong
credentials or a missing bucket are one line, not a hang; kill -9 of the
daemon (and of the object store) during uploads loses nothing fsync'ed.

Tests that stop or kill the object store have a SeaweedFS of their own
(``own_seaweed``); the others share the session's, each under its own
prefix of one bucket.  Packs are sealed at 64 MiB, so a test that needs a
sealed pack writes a little more than that.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkfs.errors import ChunkCorruptError, ReadOnlyError, StoreFullError
from chunkfs.store import ChunkStore, _compression, data_location, restore_from_bucket
from conftest import (REPO, assert_one_line_error, cli_env, force_unmount, is_mounted, run_cli, store_holder,
                      wait_process_gone, wait_until)
from s3_proxy import FaultProxy

pytestmark = pytest.mark.slow  # every test here talks to a SeaweedFS server: none in the quick run

MIB = 1 << 20
PACK = 64 * MIB  # the pack target size: a pack is sealed (and uploaded) once it holds this much


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def objects(seaweed, url: str) -> dict[str, int]:
    """name below the store's prefix -> size, of every object in the bucket."""
    bucket, prefix = url[len("s3://"):].split("/", 1)
    found = {}
    for page in seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) + 1:]] = item["Size"]
    return found


def pack_objects(seaweed, url: str) -> list[str]:
    return sorted(name for name in objects(seaweed, url) if name.startswith("packs/"))


def waiting_packs(store_dir) -> list[str]:
    """Sealed packs whose upload has not been confirmed yet (their local copies)."""
    return [n for n in os.listdir(os.path.join(store_dir, "packs")) if n.endswith(".sealed")]


def wait_for_empty_backlog(stats, timeout: float = 60) -> None:
    assert wait_until(lambda: stats()["object_store"]["upload_backlog_packs"] == 0, timeout, 0.1), \
        f"the upload backlog did not drain: {stats()['object_store']}"


@pytest.fixture
def data(seaweed, bucket_url) -> dict:
    return data_location(bucket_url, seaweed.endpoint)


def test_write_close_reopen_read_and_every_pack_is_one_object(tmp_path, seaweed, data):
    files = {f"f{i}": payload(36 * MIB + i, i) for i in range(2)}  # a sealed pack and an open one
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        for name, content in files.items():
            store.ingest(name, content)
    names = objects(seaweed, data["url"])
    packs = pack_objects(seaweed, data["url"])
    assert len(packs) == 2 and PACK <= names[packs[0]] <= PACK + 6 * MIB, names
    assert "meta/settings.json" in names and any(n.startswith("meta/index/") for n in names)
    assert not waiting_packs(tmp_path / "s")  # close waited for every upload
    _cold(tmp_path / "s")
    with ChunkStore.open(tmp_path / "s") as store:
        for name, content in files.items():
            assert store.read(name) == content
        stats = store.stats()["object_store"]
    assert stats["requests"]["get"] <= 64 // 4, "reads of the sealed pack should be coalesced into few ranged GETs"


def test_an_uploaded_pack_stays_whole_in_the_cache_within_its_limit(tmp_path, seaweed, data):
    """The staging copy moves into the pack cache once uploaded: read back with no GET, also after a reopen."""
    content = payload(PACK + 2 * MIB, 21)
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        store.ingest("f", content)
    cache = tmp_path / "s" / "bucket" / "cache"
    assert "00000001.pack" in os.listdir(cache) and not waiting_packs(tmp_path / "s")
    with ChunkStore.open(tmp_path / "s") as store:  # (a read-only open's stats are the last writer's)
        assert store.read("f") == content
        assert store.stats()["object_store"]["requests"]["get"] == 0
    small = tmp_path / "small"  # a cache smaller than a pack keeps none of it whole
    with ChunkStore.create(small, data=data_location(data["url"] + "-small", data["endpoint"]),
                           data_options={"pack_cache": 16 * MIB}) as store:
        store.ingest("f", content)
        store.flush()
        assert store.stats()["object_store"]["cache"]["bytes"] <= 16 * MIB
    assert not [n for n in os.listdir(small / "bucket" / "cache") if n.endswith(".pack")]


def _cache_bytes(cache_dir) -> int:
    """Bytes of every file in the cache directory but its lock (half-written ones too)."""
    total = 0
    for entry in os.scandir(cache_dir):
        try:
            total += entry.stat().st_size if entry.name != ".lock" else 0
        except FileNotFoundError:  # evicted while we looked
            pass
    return total


def test_the_pack_cache_stays_within_its_limit_under_many_readers_and_survives_a_reopen(tmp_path, seaweed, data):
    """8 threads read scattered and sequential ranges of cold packs at once through a 6 MiB cache: its files
    never add up to more than 6 MiB; what it holds at close is read after a reopen without a GET."""
    content = payload(2 * PACK + 4 * MIB, 31)  # two sealed packs and the open one
    path = tmp_path / "s"
    with ChunkStore.create(path, data=data) as store:
        store.ingest("f", content)
    _cold(path)
    limit, span = 6 * MIB, 300_000
    cache_dir = path / "bucket" / "cache"
    seen, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(_cache_bytes(cache_dir))
            time.sleep(0.002)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(12):  # scattered
            offset = rng.randrange(len(content) - span)
            assert store.read_range("f", offset, span) == content[offset:offset + span]
        start = rng.randrange(2 * PACK - 12 * MIB)
        for offset in range(start, start + 12 * MIB, MIB):  # sequential: prefetched, into the next pack too
            assert store.read_range("f", offset, MIB) == content[offset:offset + MIB]

    with ChunkStore.open(path, data_options={"pack_cache": limit}) as store:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(reader, range(8)))
            last = 5 * MIB + 12345  # read last, so it is among what the cache keeps
            assert store.read_range("f", last, span) == content[last:last + span]
        finally:
            stop.set()
            watcher.join()
        cache = store.stats()["object_store"]["cache"]
        assert cache["bytes"] <= limit and store.stats()["object_store"]["requests"]["get"] > 8
    assert seen and max(seen) <= limit, f"the cache directory held {max(seen)} bytes, its limit is {limit}"
    assert 0 < _cache_bytes(cache_dir) <= limit
    with ChunkStore.open(path, data_options={"pack_cache": limit}) as store:
        assert store.read_range("f", last, span) == content[last:last + span]
        assert store.stats()["object_store"]["requests"]["get"] == 0, "the cache survived the reopen"


def test_a_crash_with_uploads_waiting_loses_nothing_and_the_next_open_uploads_them(tmp_path, own_seaweed):
    """The writer dies (os._exit) while the object store is down; after both come back, all is there."""
    data = data_location(own_seaweed.url("crash"), own_seaweed.endpoint)
    store = tmp_path / "s"
    with ChunkStore.create(store, data=data):
        pass
    script = (f"import os, random, sys\nfrom chunkfs.store import ChunkStore\n"
              f"s = ChunkStore.open({str(store)!r}, data_options={{'backlog_wait': 0.1}})\n"
              "print('open', flush=True)\nsys.stdin.readline()\n"
              "for i in range(2):\n"
              "    s.ingest(f'f{i}', random.Random(i).randbytes(40 << 20))\n"
              "s.sync()\nos._exit(0)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        own_seaweed.kill()  # the object store goes away, then the writer dies without closing
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        own_seaweed.start()
    assert waiting_packs(store), "the pack sealed while the object store was down waits on the local disk"
    with ChunkStore.open(store) as s:
        for i in range(2):
            assert s.read(f"f{i}") == payload(40 * MIB, i)
    assert not waiting_packs(store)
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored) as s:
        for i in range(2):
            assert s.read(f"f{i}") == payload(40 * MIB, i), "the bucket alone holds everything"


def test_object_store_down_writes_fill_the_backlog_then_enospc_and_resume_when_it_is_back(tmp_path, own_seaweed):
    data = data_location(own_seaweed.url("down"), own_seaweed.endpoint)
    options = {"upload_backlog": PACK + 26 * MIB, "backlog_wait": 0.2, "close_wait": 10}
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        store.ingest("before", payload(MIB, 1))
        store.flush()
    with ChunkStore.open(tmp_path / "s", data_options=options) as store:
        own_seaweed.kill()
        try:
            written = []
            with pytest.raises(StoreFullError, match="upload backlog is full"):
                for i in range(10):
                    store.ingest(f"down{i}", payload(16 * MIB, 100 + i))
                    written.append(i)
            assert 4 <= len(written) < 8  # a full pack waits, and the open one up to the limit
            for i in written:  # everything accepted is readable (from the local staging copies)
                assert store.read(f"down{i}") == payload(16 * MIB, 100 + i)
        finally:
            own_seaweed.start()
        wait_for_empty_backlog(store.stats)
        store.ingest("after", payload(16 * MIB, 7))  # room again
        store.flush()
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored) as s:
        for i in written:
            assert s.read(f"down{i}") == payload(16 * MIB, 100 + i)
        assert s.read("after") == payload(16 * MIB, 7) and s.read("before") == payload(MIB, 1)


def test_packs_sealed_but_not_renamed_before_a_crash_are_uploaded_at_the_next_open(tmp_path, seaweed, data):
    """seal() only queues: a crash before the upload thread renamed the pack leaves it named .pack."""
    from chunkfs.store._object_store import location_of  # noqa: PLC0415
    from chunkfs.store._s3_backend import S3Backend  # noqa: PLC0415

    packs = tmp_path / "store" / "packs"
    packs.mkdir(parents=True)
    contents = {pack: payload(MIB + pack, pack) for pack in (1, 2, 3)}
    for pack, content in contents.items():  # what the kill left: three staging files, no .sealed
        (packs / f"{pack:08x}.pack").write_bytes(content)
    backend = S3Backend(str(packs), location_of(data))
    try:
        assert backend.sealed(1) and backend.sealed(2) and not backend.sealed(3), "only the newest can be open"
        backend.flush()  # waits for the uploads (no index attached: nothing else)
        assert wait_until(lambda: set(pack_objects(seaweed, data["url"])) >= {"packs/00000001.pack",
                                                                               "packs/00000002.pack"}, 30)
        assert sorted(os.listdir(packs)) == ["00000003.pack"]
        for pack in (1, 2):
            assert backend.read(pack, 0, MIB + pack) == contents[pack]
        backend.write(3, MIB + 3, [b"appended"])  # the open one goes on
    finally:
        backend.close()


# -- throttling and requests that get no answer: botocore retries them, with backoff ---------------


def test_throttled_uploads_are_retried_with_backoff_and_nothing_is_lost(tmp_path, seaweed, bucket_url):
    """503 SlowDown to a pack's PUT: botocore's retries (not a chunkfs error) get it uploaded."""
    with FaultProxy(seaweed.s3) as proxy:
        data = data_location(bucket_url, proxy.endpoint)
        content = payload(PACK + 2 * MIB, 11)
        with ChunkStore.create(tmp_path / "s", data=data) as store:
            proxy.throttle("PUT", "/packs/00000001.pack", times=2)
            store.ingest("f", content)
            store.flush()
            stats = store.stats()["object_store"]
        puts = proxy.seen("PUT", "/packs/00000001.pack")
    assert [p.action for p in puts[:3]] == ["throttle", "throttle", "pass"] and puts[2].status == 200, puts
    assert stats["requests"]["errors"] == 0 and not stats["last_error"], "botocore absorbed the throttling"
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data_location(bucket_url, seaweed.endpoint))
    with ChunkStore.open(restored, readonly=True) as s:
        assert s.read("f") == content


@pytest.mark.parametrize("confirms", ["crc32", "md5"])
def test_an_upload_damaged_on_the_way_is_refused_and_sent_again(tmp_path, seaweed, bucket_url, confirms):
    """Every PUT carries its body's checksum, which the server checks: the CRC32, or for a server that does
    not confirm those (the proxy hides them from its answers) a Content-MD5.  A damaged body is refused and
    sent again, and the bucket holds the pack intact."""
    with FaultProxy(seaweed.s3) as proxy:
        proxy.hide_checksums = confirms == "md5"
        data = data_location(bucket_url, proxy.endpoint)
        content = payload(PACK + 2 * MIB, 13)
        with ChunkStore.create(tmp_path / "s", data=data) as store:
            store.ingest("first", payload(MIB, 14))
            store.flush()  # the first uploads: the bucket learns whether the server confirms CRC32s
            proxy.corrupt("PUT", "/packs/", times=1)
            store.ingest("f", content)
            store.flush()
        puts = [p for p in proxy.log if p.method == "PUT" and "/packs/" in p.path]
    damaged = [p for p in puts if p.action == "corrupt"]
    assert len(damaged) == 1 and damaged[0].status == 400, puts
    assert any(p.path == damaged[0].path and p.status == 200 for p in puts[puts.index(damaged[0]) + 1:]), puts
    assert {p.checksum for p in puts[1:]} == {confirms}, puts
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data_location(bucket_url, seaweed.endpoint))
    with ChunkStore.open(restored, readonly=True) as s:
        assert s.read("f") == content and s.read("first") == payload(MIB, 14)


def test_close_gives_up_on_an_object_store_that_sits_on_a_request(tmp_path, seaweed, bucket_url):
    """A PUT that gets no answer: close waits ``close_wait`` seconds without progress (not the request's
    timeouts and retries), warns, and leaves the pack on the local disk; the next open uploads it."""
    with FaultProxy(seaweed.s3) as proxy:
        data = data_location(bucket_url, proxy.endpoint)
        content = payload(PACK + 2 * MIB, 15)
        with ChunkStore.create(tmp_path / "s", data=data):
            pass
        proxy.hang("PUT", "/packs/00000001.pack", times=1)
        store = ChunkStore.open(tmp_path / "s", data_options={"close_wait": 3.0})
        store.ingest("f", content)  # fills pack 1: it is sealed, and its upload never gets an answer
        assert wait_until(lambda: proxy.seen("PUT", "/packs/00000001.pack"), 30)
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 20, "close waited for the request instead of for progress"
        assert waiting_packs(tmp_path / "s") == ["00000001.sealed"]
        with ChunkStore.open(tmp_path / "s") as store:  # uploads it first
            store.flush()
        assert not waiting_packs(tmp_path / "s")
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data_location(bucket_url, seaweed.endpoint))
    with ChunkStore.open(restored, readonly=True) as s:
        assert s.read("f") == content


def test_flushes_from_several_threads_upload_whole_index_copies(tmp_path, seaweed, data):
    """The background flush, 'chunkfs sync' and close all copy the index to one file: one at a time."""
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        for round_ in range(3):
            store.ingest(f"f{round_}", payload(MIB, 80 + round_))
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: store.flush(), range(4)))
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored, readonly=True) as s:
        assert sorted(s.list_files()) == ["f0", "f1", "f2"] and s.read("f2") == payload(MIB, 82)


def test_requests_without_an_answer_time_out_and_are_retried(tmp_path, seaweed, bucket_url):
    """A PUT and a GET the object store sits on for longer than request_timeout are sent again."""
    with FaultProxy(seaweed.s3) as proxy:
        data = data_location(bucket_url, proxy.endpoint)
        content = payload(PACK + 2 * MIB, 12)
        options = {"request_timeout": 2.0}
        with ChunkStore.create(tmp_path / "s", data=data) as store:
            pass
        with ChunkStore.open(tmp_path / "s", data_options=options) as store:
            proxy.stall("PUT", "/packs/00000001.pack", times=1, seconds=5)
            store.ingest("f", content)
            store.flush()
            assert store.stats()["object_store"]["requests"]["errors"] == 0
        puts = proxy.seen("PUT", "/packs/00000001.pack")
        assert puts[0].action == "stall" and any(p.status == 200 for p in puts[1:]), puts
        assert puts[1].at - puts[0].at >= 2.0, "the next attempt came once the first had timed out"
        for name in os.listdir(tmp_path / "s" / "bucket" / "cache"):
            if name != ".lock":
                os.unlink(tmp_path / "s" / "bucket" / "cache" / name)
        with ChunkStore.open(tmp_path / "s", readonly=True, data_options=options) as store:
            proxy.stall("GET", "/packs/00000001.pack", times=1, seconds=5)
            assert store.read_range("f", 0, MIB) == content[:MIB]
            assert store.stats()["object_store"]["requests"]["errors"] == 0
        gets = proxy.seen("GET", "/packs/00000001.pack")
        assert gets[0].action == "stall" and gets[1].status == 206 and gets[1].at - gets[0].at >= 2.0, gets


# -- damaged and missing objects -----------------------------------------------------------------


def _two_pack_store(tmp_path, data) -> tuple[str, bytes, bytes]:
    """A store whose file "a" lies in pack 1 and "b" in pack 2 (pack 1 is filled past its target first)."""
    path = tmp_path / "s"
    a, b = payload(PACK + MIB, 1), payload(MIB, 2)
    with ChunkStore.create(path, data=data) as store:
        store.ingest("a", a)
        store.ingest("b", b)
        store.flush()
    return str(path), a, b


def _cold(path: str) -> None:
    """Drop the local cache of pack ranges, as on a fresh machine."""
    cache = os.path.join(path, "bucket", "cache")
    for name in os.listdir(cache):
        os.unlink(os.path.join(cache, name))


def test_a_missing_object_fails_exactly_its_ranges_and_fsck_names_it(tmp_path, seaweed, data):
    path, a, b = _two_pack_store(tmp_path, data)
    bucket, prefix = data["url"][5:].split("/", 1)
    seaweed.client().delete_object(Bucket=bucket, Key=f"{prefix}/packs/00000001.pack")  # sealed, uploaded
    _cold(path)
    with ChunkStore.open(path, readonly=True) as store:
        with pytest.raises(ChunkCorruptError, match="pack 00000001 is missing"):
            store.read_range("a", 0, 4096)
        with pytest.raises(ChunkCorruptError, match="pack 00000001 is missing"):
            store.read_range("a", 60 * MIB, MIB)
        assert store.read_range("a", len(a) - 100_000, 100_000) == a[-100_000:]  # its tail went to pack 2
        assert store.read("b") == b
    result = run_cli("fsck", path, check=False)
    assert result.returncode == 4 and "missing-pack" in result.stdout + result.stderr


def test_a_corrupted_object_fails_only_the_chunks_it_damaged(tmp_path, seaweed, data):
    path, a, b = _two_pack_store(tmp_path, data)
    bucket, prefix = data["url"][5:].split("/", 1)
    key = f"{prefix}/packs/00000001.pack"
    client = seaweed.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    spot = 40 * MIB
    body[spot:spot + 16] = bytes(16)  # bit rot in the middle of pack 1
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    _cold(path)
    with ChunkStore.open(path, readonly=True) as store:
        bad = []
        for offset in range(0, len(a), MIB):
            try:
                assert store.read_range("a", offset, MIB) == a[offset:offset + MIB]
            except ChunkCorruptError:
                bad.append(offset)
        assert store.read("b") == b
    assert 1 <= len(bad) <= 2, f"only the damaged chunk's megabyte(s) fail, not {len(bad)}"
    result = run_cli("fsck", "--verify-data", path, check=False)
    assert result.returncode == 4 and "corrupt" in result.stdout


# -- metadata in the bucket: restore, a replica, gc ------------------------------------------------


def test_restore_on_an_empty_directory_and_a_replica_follows_the_writer(tmp_path, seaweed, data):
    with ChunkStore.create(tmp_path / "s", data=data) as writer:
        writer.ingest("one", payload(3 * MIB, 1))
        writer.flush()
        replica = tmp_path / "replica"
        restore_from_bucket(replica, data_location(data["url"], data["endpoint"], replica=True))
        with ChunkStore.open(replica, readonly=True) as r:
            assert r.list_files() == ["one"] and r.read("one") == payload(3 * MIB, 1)
        with pytest.raises(ReadOnlyError, match="replica"):
            ChunkStore.open(replica)
        writer.ingest("two", payload(5 * MIB, 2))  # the writer goes on
        writer.flush()
        with ChunkStore.open(replica, readonly=True) as r:  # the next open follows the bucket
            assert sorted(r.list_files()) == ["one", "two"] and r.read("two") == payload(5 * MIB, 2)
    restored = tmp_path / "restored"
    result = run_cli("restore", restored, "--data", data["url"], "--endpoint", data["endpoint"])
    assert "restored store" in result.stdout
    with ChunkStore.open(restored) as r:
        assert r.read("one") == payload(3 * MIB, 1) and r.read("two") == payload(5 * MIB, 2)
        r.ingest("three", b"written after the restore")
    with ChunkStore.open(restored, readonly=True) as r:
        assert r.read("three") == b"written after the restore"


def test_a_flush_after_a_change_of_metadata_only_does_not_upload_the_open_pack_again(tmp_path, seaweed, data):
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        store.ingest("a", payload(3 * MIB, 71))
        store.flush()
        sent = store.stats()["object_store"]["bytes_uploaded"]
        store.ingest("copy", payload(3 * MIB, 71))  # the same bytes: a new file in the index, no new chunk
        store.flush()
        assert store.stats()["object_store"]["bytes_uploaded"] - sent < MIB, "an index copy, not the open pack"
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored, readonly=True) as r:
        assert r.read("copy") == r.read("a") == payload(3 * MIB, 71)


def test_gc_deletes_objects_only_after_an_index_copy_without_them(tmp_path, seaweed, data):
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        store.ingest("big", payload(PACK + 2 * MIB, 3))
        store.flush()
        before = pack_objects(seaweed, data["url"])
        store.delete("big")
        report = store.gc(min_dead_fraction=0)
        assert report["packs_removed"] >= 1
        assert pack_objects(seaweed, data["url"]) == before, "no object goes before an index copy without it"
        assert store.stats()["object_store"]["deletes_waiting"] >= 1
    after = pack_objects(seaweed, data["url"])
    assert len(after) < len(before)  # close uploaded a copy that no longer names them, then deleted them
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored) as r:
        assert r.list_files() == []


_VOCABULARY = [bytes(random.Random(n).choices(b"abcdefghijklmnopqrstuvwxyz_", k=5 + n % 9)) for n in range(3000)]


def compressible(size: int, seed: int) -> bytes:
    """Records of a JSON log over a large shared vocabulary: a chunk alone sees a little of it, so a
    dictionary trained on other chunks pays."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        words = rng.sample(_VOCABULARY, 4)
        out += b'{"event": "%s", "id": %d, "path": "/srv/%s/%s", "user": "%s"}\n' % (
            words[0], rng.randint(0, 10**6), words[1], words[2], words[3])
    return bytes(out[:size])


def dictionaries_named(store: ChunkStore, name: str) -> set[int]:
    """The dictionary ids the records of a file's compressed chunks name."""
    found = set()
    for entry in store.manifest(name):
        with store.read_txn() as txn:
            _, loc = store.ledger.locate(txn, entry.address)
        header = store.packs.read_record_header(loc)
        if header.compressed:
            found.add(header.dictionary)
    return found


def test_the_store_dictionary_is_in_the_bucket_and_a_restore_decompresses_with_it(tmp_path, seaweed, data):
    """Chunks compressed with the store's trained dictionary read back from a store restored from the bucket."""
    files = {f"log{i}": compressible(MIB, i) for i in range(13)}  # enough to train (4 MiB of samples)
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        for name in list(files)[:12]:
            store.ingest(name, files[name])
        store.codec.wait()
        assert store.codec.dict_id == 1, "12 MiB of text should train a dictionary that pays"
        assert "meta/dictionaries/0001.zdict" in objects(seaweed, data["url"]), \
            "a dictionary is in the bucket before any record names it"
        store.ingest("log12", files["log12"])
        assert dictionaries_named(store, "log12") == {1}
        assert store.stats()["compression_ratio"] > 2
    with open(tmp_path / "s" / "dictionaries" / "0001.zdict", "rb") as fh:
        assert seaweed.client().get_object(Bucket=data["url"][5:].split("/")[0],
                                           Key=data["url"][5:].split("/", 1)[1] + "/meta/dictionaries/0001.zdict"
                                           )["Body"].read() == fh.read()
    shutil.rmtree(tmp_path / "s")  # a fresh machine: the bucket alone
    restored = tmp_path / "restored"
    run_cli("restore", restored, "--data", data["url"], "--endpoint", data["endpoint"])
    assert os.listdir(restored / "dictionaries") == ["0001.zdict"]
    with ChunkStore.open(restored, readonly=True) as r:
        for name, content in files.items():
            assert r.read(name) == content
    result = run_cli("fsck", "--verify-data", restored, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    replica = tmp_path / "replica"
    restore_from_bucket(replica, data_location(data["url"], data["endpoint"], replica=True))
    with ChunkStore.open(replica, readonly=True) as r:
        assert r.read("log12") == files["log12"]


def test_a_dictionary_the_bucket_lacks_is_uploaded_when_the_store_opens(tmp_path, seaweed, data, monkeypatch):
    """A store written before dictionaries were published (or that crashed in between) is made whole."""
    monkeypatch.setattr(_compression, "TRAIN_SAMPLE_BYTES", 512 * 1024)
    monkeypatch.setattr(_compression, "MIN_SAMPLES", 16)
    with ChunkStore.create(tmp_path / "s", data=data, avg_size="4K", min_size=1024, max_size=16384) as store:
        store.ingest("a", compressible(2 * MIB, 1))
        store.codec.wait()
        assert store.codec.dict_id == 1
        store.ingest("b", compressible(MIB, 2))
    bucket, prefix = data["url"][5:].split("/", 1)
    seaweed.client().delete_object(Bucket=bucket, Key=prefix + "/meta/dictionaries/0001.zdict")
    with ChunkStore.open(tmp_path / "s"):
        assert "meta/dictionaries/0001.zdict" in objects(seaweed, data["url"])
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored, readonly=True) as r:
        assert r.read("b") == compressible(MIB, 2)


# -- the command line: one line for a wrong bucket, wrong credentials, no server ---------------


def test_mkfs_with_a_missing_bucket_wrong_credentials_or_no_server_is_one_line(tmp_path, seaweed, bucket_url):
    result = run_cli("mkfs", tmp_path / "a", "--data", "s3://no-such-bucket-here/x", "--endpoint", seaweed.endpoint,
                     check=False)
    assert_one_line_error(result, contains="does not exist")
    env = dict(cli_env(), AWS_SECRET_ACCESS_KEY="wrong-secret")
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "mkfs", str(tmp_path / "b"), "--data",
                             bucket_url, "--endpoint", seaweed.endpoint], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, contains="access denied")
    started = time.monotonic()
    result = run_cli("mkfs", tmp_path / "c", "--data", bucket_url, "--endpoint", "http://127.0.0.1:9",
                     check=False, timeout=120)
    assert_one_line_error(result, contains="cannot reach")
    assert time.monotonic() - started < 60
    result = run_cli("mkfs", tmp_path / "d", "--data", "ftp://x/y", check=False)
    assert_one_line_error(result, contains="s3://")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.mount
def test_mount_with_wrong_credentials_or_a_missing_bucket_is_one_line(tmp_path, seaweed, bucket_url):
    store, mnt = tmp_path / "s", tmp_path / "mnt"
    run_cli("mkfs", store, "--data", bucket_url, "--endpoint", seaweed.endpoint)
    mnt.mkdir()

    def mount(env: dict) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "mount", str(store), str(mnt)], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=120)
        assert time.monotonic() - started < 60, "a refused mount answers within seconds, not a hang"
        assert not is_mounted(mnt) and store_holder(store) is None
        return result

    try:
        assert_one_line_error(mount(dict(cli_env(), AWS_SECRET_ACCESS_KEY="wrong-secret")), contains="access denied")
        settings_file = store / "chunkfs.json"
        settings = json.loads(settings_file.read_text())
        settings["data"]["url"] = "s3://no-such-bucket-here/x"  # as if the bucket had been deleted
        settings_file.write_text(json.dumps(settings))
        assert_one_line_error(mount(cli_env()), contains="does not exist")
    finally:
        force_unmount(mnt)


def test_mkfs_refuses_a_prefix_that_already_holds_a_store(tmp_path, seaweed, bucket_url):
    run_cli("mkfs", tmp_path / "one", "--data", bucket_url, "--endpoint", seaweed.endpoint)
    result = run_cli("mkfs", tmp_path / "two", "--data", bucket_url, "--endpoint", seaweed.endpoint, check=False)
    assert_one_line_error(result, contains="restore")


def test_stats_show_objects_requests_backlog_and_cache(tmp_path, seaweed, bucket_url):
    store = tmp_path / "s"
    run_cli("mkfs", store, "--data", bucket_url, "--endpoint", seaweed.endpoint)
    src = tmp_path / "in"
    src.write_bytes(payload(PACK + 2 * MIB, 9))
    run_cli("ingest", store, "f", src)
    text = run_cli("stats", store).stdout
    for word in ("pack data", "objects", "upload backlog", "pack cache", "PUT", "GET", "DELETE"):
        assert word in text, text
    o = json.loads(run_cli("stats", "--json", store).stdout)["object_store"]
    assert o["objects"] == 2 and o["bucket_bytes"] >= PACK and o["requests"]["put"] >= 2


# -- mounted: fsync, chunkfs sync, umount, kill -9 ------------------------------------------------


def write_fsynced(path, content: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


@pytest.mark.mount
def test_mounted_writes_reach_the_bucket_on_sync_and_survive_remount_and_kill(seaweed, bucket_url, mount_factory,
                                                                           tmp_path):
    with FaultProxy(seaweed.s3) as proxy:  # the daemon talks to SeaweedFS through it
        fs = mount_factory(mkfs_args=["--data", bucket_url, "--endpoint", proxy.endpoint])
        files = {f"f{i}.bin": payload(17 * MIB + i, 50 + i) for i in range(4)}  # a sealed pack, and an open one
        for name, content in files.items():
            write_fsynced(fs / name, content)
        run_cli("sync", fs.mountpoint)
        stats = fs.stats()["object_store"]
        assert stats["upload_backlog_packs"] == 0 and stats["requests"]["put"] >= 2
        restored = tmp_path / "restored"
        restore_from_bucket(restored, data_location(bucket_url, seaweed.endpoint, replica=True))
        with ChunkStore.open(restored, readonly=True) as replica:  # the bucket alone has every synced file
            assert len(replica.list_files()) == len(files)
        fs.remount()
        for name, content in files.items():
            assert (fs / name).read_bytes() == content
        proxy.hang("PUT", "/packs/00000002.pack", times=1)  # the upload of the next sealed pack never ends
        more = payload(PACK, 99)  # fills pack 2: it is sealed and its upload starts
        write_fsynced(fs / "more.bin", more)
        assert wait_until(lambda: proxy.seen("PUT", "/packs/00000002.pack")[-1].action == "hang", 30)
        fs.allow_daemon_death()
        os.kill(fs.pid, 9)  # during that upload
        assert wait_process_gone(fs.pid)
        force_unmount(fs.mountpoint)
        assert waiting_packs(fs.store) == ["00000002.sealed"]
        fs.mount()  # uploads it
        assert (fs / "more.bin").read_bytes() == more
        for name, content in files.items():
            assert (fs / name).read_bytes() == content
        fs.unmount()
        assert not waiting_packs(fs.store), "umount waits for uploads"
        assert proxy.seen("PUT", "/packs/00000002.pack")[-1].status == 200
    restored, mnt = tmp_path / "restored-after-kill", tmp_path / "restored-mnt"
    run_cli("restore", restored, "--data", bucket_url, "--endpoint", seaweed.endpoint)
    mnt.mkdir()
    run_cli("mount", restored, mnt, "-o", "ro")
    try:
        assert (mnt / "more.bin").read_bytes() == more, "the bucket alone has what the remount uploaded"
    finally:
        run_cli("umount", mnt)


@pytest.mark.mount
def test_mounted_outage_writes_go_on_into_the_backlog_then_enospc_and_resume(own_seaweed, mount_factory):
    fs = mount_factory(mkfs_args=["--data", own_seaweed.url("outage"), "--endpoint", own_seaweed.endpoint],
                       options=[f"upload_backlog={(PACK + 26 * MIB) // MIB}M", "backlog_wait=0.2"])
    fs.expect_log("upload backlog is full")  # the write, flush and release that got ENOSPC say so
    kept = {}
    own_seaweed.kill()
    try:
        failed = None
        for i in range(10):
            content = payload(16 * MIB, 300 + i)
            try:
                write_fsynced(fs / f"d{i}", content)
                kept[f"d{i}"] = content
            except OSError as exc:
                failed = exc
                break
        assert failed is not None and failed.errno == errno.ENOSPC, failed
        assert len(kept) >= 4
        for name, content in kept.items():  # every fsync'ed file is whole, served from the local disk
            assert (fs / name).read_bytes() == content
    finally:
        own_seaweed.start()
    wait_for_empty_backlog(fs.stats)
    write_fsynced(fs / "after", payload(16 * MIB, 1))  # room again once uploads resumed
    run_cli("sync", fs.mountpoint)
    fs.remount()
    for name, content in kept.items():
        assert (fs / name).read_bytes() == content
    assert (fs / "after").read_bytes() == payload(16 * MIB, 1)


@pytest.mark.mount
def test_kill_9_rounds_of_the_daemon_and_the_object_store_lose_nothing_fsynced(tmp_path, own_seaweed, capsys):
    """benchmarks/crash_soak.py --s3 for a few rounds: the daemon killed during uploads (and SeaweedFS once)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.crash_soak import CrashRig  # noqa: PLC0415

    lines: list[str] = []
    rig = CrashRig(str(tmp_path / "rig"), seed=int(os.environ.get("CHUNKFS_CRASH_SEED", "20250101")),
                   max_kill_delay=0.6, log=lines.append, object_store=own_seaweed,
                   object_store_kills=frozenset({2}))
    try:
        summary = rig.run(3)
    finally:
        rig.cleanup()
        with capsys.disabled():
            print("\n" + "\n".join(lines))
    assert len(summary.rounds) == 3 and summary.object_store_kills == 1 and summary.restored_paths is not None



@pytest.mark.mount
def test_mounted_a_missing_object_fails_its_ranges_with_eio_and_a_log_line(seaweed, bucket_url, mount_factory):
    fs = mount_factory(mkfs_args=["--data", bucket_url, "--endpoint", seaweed.endpoint])
    a, b = payload(PACK + MIB, 41), payload(MIB, 42)  # "a" fills pack 1 (sealed, uploaded); "b" lies in pack 2
    write_fsynced(fs / "a", a)
    write_fsynced(fs / "b", b)
    run_cli("sync", fs.mountpoint)
    fs.unmount()
    bucket, prefix = bucket_url[len("s3://"):].split("/", 1)
    seaweed.client().delete_object(Bucket=bucket, Key=f"{prefix}/packs/00000001.pack")
    _cold(str(fs.store))
    fs.expect_log("pack 00000001 is missing")
    fs.mount()
    with open(fs / "a", "rb", buffering=0) as fh:
        with pytest.raises(OSError) as failed:
            fh.read(65536)
        assert failed.value.errno == errno.EIO
    assert (fs / "b").read_bytes() == b
    assert "pack 00000001 is missing" in fs.log_text()


@pytest.mark.mount
def test_a_replica_mounts_read_only_while_the_writer_goes_on(tmp_path, seaweed, bucket_url, mount_factory):
    """A second machine: the bucket restored as a replica, mounted -o ro beside the writer's mount."""
    fs = mount_factory(mkfs_args=["--data", bucket_url, "--endpoint", seaweed.endpoint])
    write_fsynced(fs / "one", payload(3 * MIB, 61))
    run_cli("sync", fs.mountpoint)
    replica, mnt = tmp_path / "replica", tmp_path / "replica-mnt"
    run_cli("restore", replica, "--data", bucket_url, "--endpoint", seaweed.endpoint, "--replica")
    mnt.mkdir()
    run_cli("mount", replica, mnt, "-o", "ro")
    try:
        assert (mnt / "one").read_bytes() == payload(3 * MIB, 61)
        with pytest.raises(OSError) as refused:
            (mnt / "new").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS
        write_fsynced(fs / "two", payload(5 * MIB, 62))  # the writer goes on
        run_cli("sync", fs.mountpoint)
        assert not (mnt / "two").exists(), "a mounted replica keeps the view it mounted"
        run_cli("umount", mnt)
        run_cli("mount", replica, mnt, "-o", "ro")  # the next mount takes the newest index copy
        assert (mnt / "two").read_bytes() == payload(5 * MIB, 62)
        assert (mnt / "one").read_bytes() == payload(3 * MIB, 61)
        assert "two" in os.listdir(fs.mountpoint)
    finally:
        if is_mounted(mnt):
            run_cli("umount", mnt, check=False)
        force_unmount(mnt)
