"""Compression behind the writers through a real mount: text written raw, compressed when asked
(``chunkfs compress MOUNTPOINT``) or inline with ``-o compress=inline``; the store shrinks, the bytes do not change."""

from __future__ import annotations

import json
import os
import random
import subprocess

from conftest import assert_one_line_error, run_cli

SIZE = 6 * 1024 * 1024


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < n:
        out += b"%d %s\n" % (rng.randint(0, 999), b" ".join(rng.choice(words) for _ in range(8)))
    return bytes(out[:n])


def du_bytes(path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def test_written_text_is_compressed_by_chunkfs_compress(mounted_fs):
    data = [text(SIZE, seed) for seed in range(2)]
    for n, blob in enumerate(data):
        (mounted_fs / f"t{n}.txt").write_bytes(blob)
    written = mounted_fs.stats()
    # all in the active pack, which the idle worker leaves alone for 30 s: raw, and counted as waiting
    assert written["packed_bytes"] == written["stored_bytes"] == written["compression_waiting_bytes"]
    packs_before = du_bytes(mounted_fs.store / "packs")

    assert written["compression_behind"] == "zstd:6"
    assert "zstd:6 behind the writers" in run_cli("stats", mounted_fs.mountpoint).stdout

    result = run_cli("compress", mounted_fs.mountpoint)
    assert result.stdout.startswith("compress: rewrote 1 pack, compressed ")  # the active pack, sealed

    stats = mounted_fs.stats()
    assert stats["compression_waiting_bytes"] == 0
    assert stats["packed_bytes"] < stats["stored_bytes"] / 2
    packs_after = du_bytes(mounted_fs.store / "packs")
    assert packs_before >= 2 * SIZE  # written raw
    assert packs_after < 2 * SIZE / 2
    for n, blob in enumerate(data):
        assert (mounted_fs / f"t{n}.txt").read_bytes() == blob
    mounted_fs.remount()
    for n, blob in enumerate(data):
        assert (mounted_fs / f"t{n}.txt").read_bytes() == blob
    assert run_cli("fsck", mounted_fs.store).returncode == 0


def test_compress_inline_mount_option(mount_factory):
    fs = mount_factory(options=["compress=inline"])
    blob = text(SIZE, 5)
    (fs / "t.txt").write_bytes(blob)
    stats = fs.stats()
    assert stats["compression_waiting_bytes"] == 0 and stats["compression_behind"] is None
    assert stats["packed_bytes"] < stats["stored_bytes"] / 2
    report = json.loads(run_cli("compress", "--json", fs.mountpoint).stdout)
    assert report["chunks_compressed"] >= 0 and report["stopped_full"] is False
    assert (fs / "t.txt").read_bytes() == blob


def test_compress_an_unmounted_store_and_a_bad_option(mount_factory):
    fs = mount_factory()
    blob = text(SIZE, 9)
    (fs / "t.txt").write_bytes(blob)
    fs.unmount()
    assert fs.stats(fs.store)["compression_waiting_bytes"] > 0  # an unmount leaves it waiting
    report = json.loads(run_cli("compress", "--json", fs.store).stdout)
    assert report["packs_rewritten"] == 1 and report["bytes_after"] < report["bytes_before"] / 2
    assert fs.stats(fs.store)["compression_waiting_bytes"] == 0
    out = run_cli("stats", fs.store).stdout
    assert "to compress:" in out
    fs.mount()
    assert (fs / "t.txt").read_bytes() == blob
    fs.unmount()
    result = run_cli("mount", fs.store, fs.mountpoint, "-o", "compress=later", check=False)
    assert_one_line_error(result, contains="compress must be one of behind, inline")
    assert not os.path.ismount(fs.mountpoint)
