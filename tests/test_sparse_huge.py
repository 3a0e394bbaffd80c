"""Sparse files, truncation, writes past end of file and files over 4 GiB, through a daemon mount.

A hole is a gap in the file's manifest, stored as nothing, so a 10 GiB (or
16 TiB) file holding one byte stores one byte and commits at once;
``st_blocks`` counts only the bytes stored (the policy in docs/filesystem.md,
chunkfs/fs/blocks.py), so ``du`` tells the truth about sparse files.  Past the
maximum file size, truncate, ftruncate and write fail with EFBIG.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from chunkfs.store import MAX_FILE_SIZE

pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def pread(path, offset: int, n: int, direct: bool = False) -> bytes:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        out = bytearray()
        while len(out) < n:
            piece = os.pread(fd, n - len(out), offset + len(out))
            if not piece:
                break
            out += piece
        return bytes(out)
    finally:
        os.close(fd)


def pwrite_and_close(path, pieces: dict[int, bytes], create: bool = True) -> float:
    """Write ``{offset: bytes}`` through one descriptor; returns how long close (the commit) took."""
    fd = os.open(path, os.O_WRONLY | (os.O_CREAT if create else 0), 0o644)
    try:
        for offset, data in pieces.items():
            assert os.pwrite(fd, data, offset) == len(data)
    finally:
        started = time.monotonic()
        os.close(fd)
    return time.monotonic() - started


def du_bytes(path) -> int:
    return int(subprocess.run(["du", "-B1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


@pytest.mark.slow
def test_sparse_10_gib_file_stores_almost_nothing(mounted_fs):
    path = mounted_fs / "sparse"
    size = 10 * GiB
    commit = pwrite_and_close(path, {size - 1: b"!"})
    print(f"close (commit) of a 10 GiB file with one byte at its end: {commit:.2f} s")
    assert commit < 30

    def check():
        st = os.stat(path)
        assert st.st_size == size
        assert st.st_blocks * 512 <= 1 * MiB, f"st_blocks {st.st_blocks}: du must not count the hole"
        assert du_bytes(path) <= 1 * MiB
        for offset in (0, 4 * GiB - 7, 5 * GiB, size - 200 * KiB):
            assert pread(path, offset, 64 * KiB) == bytes(64 * KiB)
        assert pread(path, size - 3, 10) == b"\0\0!"
        assert pread(path, size - 3, 10, direct=True) == b"\0\0!"
        stats = mounted_fs.stats()
        assert stats["logical_bytes"] == size
        assert stats["stored_bytes"] == 1, stats  # the hole stores nothing

    check()
    mounted_fs.remount()
    check()


@pytest.mark.slow
def test_holes_between_data_read_as_zeros(mounted_fs):
    path = mounted_fs / "holey"
    pieces = {0: os.urandom(100 * KiB), 3 * MiB + 17: os.urandom(50 * KiB), 40 * MiB: os.urandom(1 * MiB)}
    pwrite_and_close(path, pieces)
    expected = bytearray(41 * MiB)
    for offset, data in pieces.items():
        expected[offset : offset + len(data)] = data

    def check():
        assert os.stat(path).st_size == len(expected)
        assert pread(path, 0, len(expected)) == expected
        assert pread(path, 3 * MiB - 5, 30, direct=True) == expected[3 * MiB - 5 : 3 * MiB + 25]
        blocks = os.stat(path).st_blocks * 512
        data = sum(len(d) for d in pieces.values())
        assert data <= blocks <= data + 12 * MiB, blocks  # holes are not counted (boundary chunks are)

    check()
    mounted_fs.remount()
    check()


@pytest.mark.slow
def test_truncate_up_and_down(mounted_fs):
    path = mounted_fs / "t"
    data = os.urandom(1 * MiB)
    path.write_bytes(data)
    stored = mounted_fs.stats()["stored_bytes"]

    os.truncate(path, 1 * GiB)  # up: a hole
    st = os.stat(path)
    assert st.st_size == GiB and st.st_blocks * 512 <= 2 * MiB
    assert pread(path, 0, MiB + 10) == data + bytes(10)
    assert pread(path, GiB - 100, 200) == bytes(100)
    assert mounted_fs.stats()["stored_bytes"] <= stored + 1 * MiB

    os.truncate(path, 500_001)  # down, into the middle of a chunk
    assert pread(path, 0, MiB) == data[:500_001]
    with open(path, "r+b") as fh:  # up again within the same descriptor: the old tail must not come back
        fh.truncate(2 * MiB)
        fh.seek(0)
        assert fh.read() == data[:500_001] + bytes(2 * MiB - 500_001)
    mounted_fs.remount()
    assert pread(path, 0, 3 * MiB) == data[:500_001] + bytes(2 * MiB - 500_001)
    os.truncate(path, 0)
    assert os.stat(path).st_size == 0 and os.stat(path).st_blocks == 0
    assert mounted_fs.stats()["logical_bytes"] == 0


@pytest.mark.slow
def test_writes_past_eof_then_fill_the_hole(mounted_fs):
    path = mounted_fs / "fill"
    expected = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for offset, n in ((100 * MiB, 4 * KiB), (50 * MiB, 300 * KiB), (10, 5), (100 * MiB + 8 * KiB, 1)):
            piece = os.urandom(n)
            os.pwrite(fd, piece, offset)
            if offset > len(expected):
                expected.extend(bytes(offset - len(expected)))
            expected[offset : offset + n] = piece
            assert os.fstat(fd).st_size == len(expected)
            assert os.pread(fd, n + 20, offset - 10) == bytes(expected[offset - 10 : offset + n + 10])
    finally:
        os.close(fd)
    assert pread(path, 0, len(expected) + 1, direct=True) == expected
    mounted_fs.remount()
    assert pread(path, 0, len(expected) + 1) == expected


def test_offsets_beyond_4_gib(mounted_fs):
    path = mounted_fs / "big-offsets"
    pieces = {
        2**32 - 100: os.urandom(200),  # straddles 4 GiB
        2**32: b"exactly-at-4GiB",
        5 * GiB: os.urandom(1 * MiB + 3),
        2**33 + 12345: b"past 8 GiB",
    }
    pwrite_and_close(path, {k: pieces[k] for k in sorted(pieces)})
    end = 2**33 + 12345 + len(b"past 8 GiB")

    def check():
        assert os.stat(path).st_size == end
        assert pread(path, 2**32 - 100, 100) == pieces[2**32 - 100][:100]
        assert pread(path, 2**32, 15) == b"exactly-at-4GiB"
        assert pread(path, 2**32 + 15, 85) == pieces[2**32 - 100][115:]
        assert pread(path, 2**32 + 100, 50) == bytes(50)
        assert pread(path, 5 * GiB - 1, MiB + 5, direct=True) == b"\0" + pieces[5 * GiB] + b"\0"
        assert pread(path, end - 10, 100) == b"past 8 GiB"
        assert os.stat(path).st_blocks * 512 <= 8 * MiB

    check()
    mounted_fs.remount()
    check()


def _pattern_block(i: int, base: bytes) -> bytes:
    """1 MiB blocks, each tagged with its number (a misplaced block shows), cheap to regenerate."""
    return i.to_bytes(8, "little") * 8 + base[64:]


@pytest.mark.slow
def test_streamed_file_over_4_gib(mounted_fs):
    """4.5 GiB written front to back, committed at close, read back after a remount."""
    path = mounted_fs / "huge"
    blocks = 4608  # 4.5 GiB
    base = os.urandom(MiB)
    started = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(blocks):
            os.write(fd, _pattern_block(i, base))
        written = time.monotonic()
    finally:
        os.close(fd)
    closed = time.monotonic()
    print(f"4.5 GiB streamed: write {written - started:.1f} s, close {closed - written:.2f} s")
    assert closed - written < 10, "closing a streamed file must only finish its last chunk"
    mounted_fs.remount()
    assert os.stat(path).st_size == blocks * MiB
    assert os.stat(path).st_blocks == blocks * MiB // 512
    started = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(blocks):
            assert os.read(fd, MiB) == _pattern_block(i, base), f"block {i} differs"
        assert os.read(fd, 1) == b""
    finally:
        os.close(fd)
    print(f"4.5 GiB read back after remount: {time.monotonic() - started:.1f} s")
    assert mounted_fs.stats()["logical_bytes"] == blocks * MiB


def test_st_blocks_after_futimens_before_close(mounted_fs):
    """``cp -p`` sets times on the descriptor before closing: the commit still updates st_blocks."""
    path = mounted_fs / "cp-p"
    data = os.urandom(2 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.pwrite(fd, data, 60 * MiB)  # a 58 MiB hole in between
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        assert os.fstat(fd).st_blocks * 512 >= 4 * MiB  # uncommitted: not below what was written
    finally:
        os.close(fd)
    st = os.stat(path)
    assert st.st_mtime_ns == 2_000_000_000
    assert 4 * MiB <= st.st_blocks * 512 <= 5 * MiB, st.st_blocks


def test_truncate_past_the_maximum_file_size_fails_with_efbig_at_once(mounted_fs):
    path = mounted_fs / "efbig"
    path.write_bytes(b"abc")
    with pytest.raises(OSError) as exc:
        os.truncate(path, 999999999999999)  # pjdfstest truncate/12.t
    assert exc.value.errno == errno.EFBIG
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as exc:
            os.ftruncate(fd, 999999999999999)  # ftruncate/12.t
        assert exc.value.errno == errno.EFBIG
        with pytest.raises(OSError) as exc:
            os.ftruncate(fd, -1)
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x", MAX_FILE_SIZE)
        assert exc.value.errno == errno.EFBIG
        assert os.pwrite(fd, b"0123456789", MAX_FILE_SIZE - 4) == 4  # what fits, as ext4 does
    finally:
        os.close(fd)
    assert os.stat(path).st_size == MAX_FILE_SIZE
    assert pread(path, MAX_FILE_SIZE - 6, 100) == b"\0\x000123"
    assert pread(path, 0, 5) == b"abc\0\0"
    assert os.stat(path).st_blocks <= 2


@pytest.mark.timeout(60)
def test_truncate_to_the_maximum_size_and_back(mounted_fs):
    path = mounted_fs / "max"
    data = os.urandom(100 * KiB)
    path.write_bytes(data)
    os.truncate(path, MAX_FILE_SIZE)
    st = os.stat(path)
    assert st.st_size == MAX_FILE_SIZE and st.st_blocks == 100 * KiB // 512
    assert pread(path, MAX_FILE_SIZE - 10, 100) == bytes(10)
    assert pread(path, 100 * KiB - 4, 8) == data[-4:] + bytes(4)
    os.truncate(path, 50)
    assert path.read_bytes() == data[:50]
    os.truncate(path, 5000)  # up again: the old bytes must not come back
    assert path.read_bytes() == data[:50] + bytes(4950)
    mounted_fs.remount()
    assert path.read_bytes() == data[:50] + bytes(4950)
    assert os.stat(path).st_blocks == 1


def test_a_mebibyte_in_the_middle_of_a_tebibyte_hole_stores_only_itself(mounted_fs):
    path = mounted_fs / "tib"
    before = mounted_fs.stats()
    data = os.urandom(MiB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 1 << 40)
        os.pwrite(fd, data, 1 << 39)
    finally:
        os.close(fd)
    after = mounted_fs.stats()
    assert after["index_bytes"] - before["index_bytes"] < 100 * KiB, (before, after)
    assert after["stored_bytes"] - before["stored_bytes"] <= MiB
    st = os.stat(path)
    assert st.st_size == 1 << 40 and st.st_blocks == MiB // 512
    assert pread(path, (1 << 39) - 3, MiB + 6) == bytes(3) + data + bytes(3)
    assert pread(path, 12345 * MiB, MiB) == bytes(MiB)  # a hole reads as zeros


@pytest.mark.slow
def test_pjdfstest_style_truncate_sizes_and_contents(mounted_fs):
    """truncate/00.t, ftruncate/00.t: size and content after truncating up and down, by path and by fd."""
    path = mounted_fs / "pjd"
    path.write_bytes(b"")
    os.truncate(path, 1234567)
    assert os.stat(path).st_size == 1234567
    os.truncate(path, 567)
    assert os.stat(path).st_size == 567 and path.read_bytes() == bytes(567)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"data", 100)
        os.ftruncate(fd, 23456)
        assert os.fstat(fd).st_size == 23456
        os.ftruncate(fd, 102)
        assert os.pread(fd, 200, 0) == bytes(100) + b"da"
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(100) + b"da"
    with pytest.raises(OSError) as exc:
        os.truncate(path, -1)
    assert exc.value.errno == errno.EINVAL
