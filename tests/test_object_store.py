"""A store whose packs live in an S3 bucket, against a real SeaweedFS (conftest.py's ``seaweed``).

What a user relies on: data written is readable after a remount and from a
store restored on an empty directory; a crash while uploads were waiting
loses nothing; an object store that goes away makes writes stop with ENOSPC
(never lose data) and uploads resume when it is back; a missing or damaged
object fails exactly the ranges it held, and fsck names it; wrong
credentials or a missing bucket are one line, not a hang.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from chunkfs.errors import ChunkCorruptError, ReadOnlyError, StoreFullError
from chunkfs.store import ChunkStore, data_location, restore_from_bucket
from conftest import REPO, assert_one_line_error, cli_env, run_cli

MIB = 1 << 20


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


@pytest.fixture
def data(seaweed, bucket_url) -> dict:
    return data_location(bucket_url, seaweed.endpoint)


def test_write_close_reopen_read_and_every_pack_is_one_object(tmp_path, seaweed, data):
    files = {f"f{i}": payload(30 * MIB + i, i) for i in range(5)}  # 150 MiB: two sealed packs and an open one
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        for name, content in files.items():
            store.ingest(name, content)
    names = objects(seaweed, data["url"])
    packs = pack_objects(seaweed, data["url"])
    assert len(packs) == 3 and all(16 * MIB <= names[p] <= 70 * MIB for p in packs[:2])
    assert "meta/settings.json" in names and any(n.startswith("meta/index/") for n in names)
    assert not [n for n in os.listdir(tmp_path / "s" / "packs") if n.endswith(".sealed")]  # all uploaded
    with ChunkStore.open(tmp_path / "s") as store:
        for name, content in files.items():
            assert store.read(name) == content
        stats = store.stats()["object_store"]
    assert stats["requests"]["get"] <= 150 // 4, "reads should be coalesced into few ranged GETs"


def test_a_crash_with_uploads_waiting_loses_nothing_and_the_next_open_uploads_them(tmp_path, seaweed, data):
    """The writer dies (os._exit) while the object store is down; after both come back, all is there."""
    store = tmp_path / "s"
    with ChunkStore.create(store, data=data):
        pass
    script = (f"import os, random, sys\nfrom chunkfs.store import ChunkStore\n"
              f"s = ChunkStore.open({str(store)!r}, data_options={{'backlog_wait': 0.1}})\n"
              "print('open', flush=True)\nsys.stdin.readline()\n"
              "for i in range(3):\n"
              "    s.ingest(f'f{i}', random.Random(i).randbytes(40 << 20))\n"
              "s.sync()\nos._exit(0)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        seaweed.stop()  # the object store goes away, then the writer dies without closing
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        seaweed.start()
    sealed = [n for n in os.listdir(store / "packs") if n.endswith(".sealed")]
    assert sealed, "the packs sealed while the object store was down wait on the local disk"
    with ChunkStore.open(store) as s:
        for i in range(3):
            assert s.read(f"f{i}") == payload(40 * MIB, i)
    assert not [n for n in os.listdir(store / "packs") if n.endswith(".sealed")]
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored) as s:
        for i in range(3):
            assert s.read(f"f{i}") == payload(40 * MIB, i), "the bucket alone holds everything"


def test_object_store_down_writes_fill_the_backlog_then_enospc_and_resume_when_it_is_back(tmp_path, seaweed, data):
    options = {"upload_backlog": 100 * MIB, "backlog_wait": 0.5, "close_wait": 5}
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        store.ingest("before", payload(10 * MIB, 1))
        store.flush()
    with ChunkStore.open(tmp_path / "s", data_options=options) as store:
        seaweed.stop()
        try:
            written = []
            with pytest.raises(StoreFullError, match="upload backlog is full"):
                for i in range(20):
                    store.ingest(f"down{i}", payload(20 * MIB, 100 + i))
                    written.append(i)
            assert 2 <= len(written) < 10
            for i in written:  # everything accepted is readable (from the local staging copies)
                assert store.read(f"down{i}") == payload(20 * MIB, 100 + i)
        finally:
            seaweed.start()
        deadline = time.monotonic() + 60
        while store.stats()["object_store"]["upload_backlog_packs"] and time.monotonic() < deadline:
            time.sleep(0.2)
        store.ingest("after", payload(20 * MIB, 7))  # room again
        store.flush()
    restored = tmp_path / "restored"
    restore_from_bucket(restored, data)
    with ChunkStore.open(restored) as s:
        for i in written:
            assert s.read(f"down{i}") == payload(20 * MIB, 100 + i)
        assert s.read("after") == payload(20 * MIB, 7) and s.read("before") == payload(10 * MIB, 1)


def _two_pack_store(tmp_path, data) -> tuple[str, bytes, bytes]:
    """A store whose file "a" lies in pack 1 and "b" in pack 2 (pack 1 is filled past its target first)."""
    path = tmp_path / "s"
    a, b = payload(65 * MIB, 1), payload(8 * MIB, 2)
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


def test_a_missing_object_fails_exactly_its_ranges_and_fsck_names_it(tmp_path, seaweed, data, caplog):
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


def test_gc_deletes_objects_only_after_an_index_copy_without_them(tmp_path, seaweed, data):
    with ChunkStore.create(tmp_path / "s", data=data) as store:
        store.ingest("big", payload(70 * MIB, 3))
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


# -- the command line: one line for a wrong bucket, wrong credentials, no server ---------------


def test_mkfs_with_a_missing_bucket_wrong_credentials_or_no_server_is_one_line(tmp_path, seaweed, bucket_url):
    bucket = bucket_url[5:].split("/")[0]
    result = run_cli("mkfs", tmp_path / "a", "--data", "s3://no-such-bucket-here/x", "--endpoint", seaweed.endpoint,
                     check=False)
    assert_one_line_error(result, contains="does not exist")
    env = dict(cli_env(), AWS_SECRET_ACCESS_KEY="wrong-secret")
    result = subprocess.run([sys.executable, "-m", "chunkfs.cli", "mkfs", str(tmp_path / "b"), "--data",
                             f"s3://{bucket}/x", "--endpoint", seaweed.endpoint], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, contains="access denied")
    started = time.monotonic()
    result = run_cli("mkfs", tmp_path / "c", "--data", f"s3://{bucket}/x", "--endpoint", "http://127.0.0.1:9",
                     check=False, timeout=120)
    assert_one_line_error(result, contains="cannot reach")
    assert time.monotonic() - started < 60
    result = run_cli("mkfs", tmp_path / "d", "--data", "ftp://x/y", check=False)
    assert_one_line_error(result, contains="s3://")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mkfs_refuses_a_prefix_that_already_holds_a_store(tmp_path, seaweed, bucket_url):
    run_cli("mkfs", tmp_path / "one", "--data", bucket_url, "--endpoint", seaweed.endpoint)
    result = run_cli("mkfs", tmp_path / "two", "--data", bucket_url, "--endpoint", seaweed.endpoint, check=False)
    assert_one_line_error(result, contains="restore")


def test_stats_show_objects_requests_backlog_and_cache(tmp_path, seaweed, bucket_url):
    store = tmp_path / "s"
    run_cli("mkfs", store, "--data", bucket_url, "--endpoint", seaweed.endpoint)
    src = tmp_path / "in"
    src.write_bytes(payload(70 * MIB, 9))
    run_cli("ingest", store, "f", src)
    text = run_cli("stats", store).stdout
    for word in ("pack data", "objects", "upload backlog", "pack cache", "PUT", "GET", "DELETE"):
        assert word in text, text
    import json  # noqa: PLC0415

    o = json.loads(run_cli("stats", "--json", store).stdout)["object_store"]
    assert o["objects"] == 2 and o["bucket_bytes"] >= 70 * MIB and o["requests"]["put"] >= 2


# -- mounted: fsync, chunkfs sync, umount, kill -9 ------------------------------------------------


@pytest.mark.mount
def test_mounted_writes_reach_the_bucket_on_sync_and_survive_remount_and_kill(mount_factory, seaweed, bucket_url,
                                                                           tmp_path):
    fs = mount_factory(mkfs_args=["--data", bucket_url, "--endpoint", seaweed.endpoint])
    files = {f"f{i}.bin": payload(25 * MIB + i, 50 + i) for i in range(4)}
    for name, content in files.items():
        with open(fs / name, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    run_cli("sync", fs.mountpoint)
    stats = fs.stats()["object_store"]
    assert stats["upload_backlog_packs"] == 0 and stats["requests"]["put"] >= 2
    restored = tmp_path / "restored"
    run_cli("restore", restored, "--data", bucket_url, "--endpoint", seaweed.endpoint, "--replica")
    with ChunkStore.open(restored, readonly=True) as replica:  # the bucket alone has every synced file
        assert len(replica.list_files()) == len(files)
    fs.remount()
    for name, content in files.items():
        assert (fs / name).read_bytes() == content
    more = payload(70 * MIB, 99)  # fills a pack: a seal and an upload while the daemon dies
    with open(fs / "more.bin", "wb") as fh:
        fh.write(more)
        fh.flush()
        os.fsync(fh.fileno())
    fs.allow_daemon_death()
    os.kill(fs.pid, 9)
    from conftest import force_unmount, wait_process_gone  # noqa: PLC0415

    assert wait_process_gone(fs.pid)
    force_unmount(fs.mountpoint)
    fs.mount()
    assert (fs / "more.bin").read_bytes() == more
    for name, content in files.items():
        assert (fs / name).read_bytes() == content
    fs.unmount()
    assert not [n for n in os.listdir(fs.store / "packs") if n.endswith(".sealed")], "umount waits for uploads"


@pytest.mark.mount
@pytest.mark.slow
def test_mounted_outage_writes_go_on_into_the_backlog_then_enospc_and_resume(mount_factory, seaweed, bucket_url):
    import errno  # noqa: PLC0415

    fs = mount_factory(mkfs_args=["--data", bucket_url, "--endpoint", seaweed.endpoint],
                       options=["upload_backlog=150M"])
    fs.expect_log("upload backlog is full")  # the write, flush and release that got ENOSPC say so
    kept = {}
    seaweed.stop()
    try:
        failed = None
        for i in range(20):
            content = payload(20 * MIB, 300 + i)
            try:
                with open(fs / f"d{i}", "wb") as fh:
                    fh.write(content)
                    fh.flush()
                    os.fsync(fh.fileno())
                kept[f"d{i}"] = content
            except OSError as exc:
                failed = exc
                break
        assert failed is not None and failed.errno == errno.ENOSPC, failed
        assert len(kept) >= 3
        for name, content in kept.items():  # every fsync'ed file is whole, served from the local disk
            assert (fs / name).read_bytes() == content
    finally:
        seaweed.start()
    deadline = time.monotonic() + 90
    while fs.stats()["object_store"]["upload_backlog_packs"] and time.monotonic() < deadline:
        time.sleep(0.5)
    (fs / "after").write_bytes(payload(20 * MIB, 1))  # room again once uploads resumed
    run_cli("sync", fs.mountpoint)
    fs.remount()
    for name, content in kept.items():
        assert (fs / name).read_bytes() == content
    assert (fs / "after").read_bytes() == payload(20 * MIB, 1)
