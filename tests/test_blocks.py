"""st_blocks policy in-process (chunkfs/fs/blocks.py): holes are not counted, and the count follows commits."""

from __future__ import annotations

import os

import pytest

from chunkfs.fs import Caller, FsCore, SetAttr
from chunkfs.fs.blocks import full_blocks
from chunkfs.store import ChunkStore

ROOT = 1
USER = Caller(0, 0, 0o022)
MiB = 1024 * 1024


@pytest.fixture
def fs(tmp_path):
    store = ChunkStore.create(tmp_path / "store")  # 32 KiB average: zero-run chunks of 128 KiB
    core = FsCore(store, root_uid=0, root_gid=0)
    yield core
    core.close()
    store.close()


def write(fs: FsCore, ino: int, pieces: dict[int, bytes], utime: bool = False) -> None:
    fh = fs.open(ino, os.O_WRONLY)[0]
    try:
        for offset, data in pieces.items():
            fs.write(fh, offset, data)
        assert fs.getattr(ino).blocks == full_blocks(fs.getattr(ino).size)  # uncommitted: in full
        if utime:
            fs.setattr(ino, SetAttr(mtime_ns=1, atime_ns=1))
        fs.flush(fh)
    finally:
        fs.release(fh)


def test_holes_are_not_counted_and_counts_follow_commits(fs):
    ino = fs.create(ROOT, b"f", 0o644, os.O_WRONLY, USER)[1].ino
    write(fs, ino, {0: os.urandom(MiB), 64 * MiB: b"x"})
    assert MiB // 512 <= fs.getattr(ino).blocks <= 2 * MiB // 512
    write(fs, ino, {10 * MiB: os.urandom(4 * MiB)}, utime=True)  # times set before the commit, as cp -p does
    assert 5 * MiB // 512 <= fs.getattr(ino).blocks <= 6 * MiB // 512
    fs.setattr(ino, SetAttr(size=MiB // 2))
    assert fs.getattr(ino).blocks == full_blocks(MiB // 2)


def test_written_zeros_count_as_data_but_are_stored_once(fs):
    """As on ext4, zeros a program writes are data (only never-written ranges are holes); dedup stores them once."""
    ino = fs.create(ROOT, b"z", 0o644, os.O_WRONLY, USER)[1].ino
    write(fs, ino, {0: bytes(8 * MiB) + b"end"})
    assert fs.getattr(ino).blocks == full_blocks(8 * MiB + 3)
    assert fs.store.stats()["stored_bytes"] <= 512 * 1024


def test_a_huge_sparse_file_counts_only_its_data(fs):
    ino = fs.create(ROOT, b"big", 0o644, os.O_WRONLY, USER)[1].ino
    write(fs, ino, {1 << 40: b"x"})  # 1 TiB of hole, then one byte
    assert fs.getattr(ino).blocks == 1
    fs.setattr(ino, SetAttr(size=(1 << 40) + 4 * MiB))
    assert fs.getattr(ino).blocks == 1


def test_a_stat_of_a_file_without_holes_does_not_look_at_its_contents(fs, monkeypatch):
    """The commit marks a file with no holes (DENSE), so its st_blocks comes from its size alone; a hole clears it."""
    ino = fs.create(ROOT, b"d", 0o644, os.O_WRONLY, USER)[1].ino
    write(fs, ino, {0: os.urandom(MiB)})
    real = fs.store.data_bytes

    def no_look(*args, **kwargs):
        raise AssertionError("a stat of a file without holes looked at its stored contents")

    monkeypatch.setattr(fs.store, "data_bytes", no_look)
    assert fs.getattr(ino).blocks == full_blocks(MiB)
    monkeypatch.setattr(fs.store, "data_bytes", real)
    write(fs, ino, {16 * MiB: b"x"})  # a hole between the data and the last byte
    assert MiB // 512 <= fs.getattr(ino).blocks <= 2 * MiB // 512
    fs.setattr(ino, SetAttr(size=MiB))  # cut back to the data: no hole left
    monkeypatch.setattr(fs.store, "data_bytes", no_look)
    assert fs.getattr(ino).blocks == full_blocks(MiB)
