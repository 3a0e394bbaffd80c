"""Memory-mapped files through a real daemon-mode mount.

FUSE serves ``mmap`` from the kernel's page cache, so these tests also prove
that opens never use ``direct_io`` (a shared writable mapping of a direct-IO
file fails with ENODEV).  Dirty pages of a shared mapping reach the daemon as
ordinary WRITE requests at ``msync`` (or when the kernel writes them back);
they are committed at the next flush/fsync, or at RELEASE, which for a mapping
comes only at ``munmap`` once the descriptor is closed.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import run_cli

pytestmark = pytest.mark.mount

PAGE = mmap.PAGESIZE


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def read_direct(path) -> bytes:
    """Read through O_DIRECT: the daemon's bytes, not the kernel's cached pages."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        out = bytearray()
        while chunk := os.read(fd, 1 << 20):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def map_write(path, edits: dict[int, bytes], length: int | None = None) -> None:
    """Open, map (shared), apply ``{offset: bytes}``, msync, unmap, close."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = length if length is not None else os.fstat(fd).st_size
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            for offset, data in edits.items():
                mm[offset : offset + len(data)] = data
            mm.flush()
    finally:
        os.close(fd)


@pytest.mark.slow
def test_shared_mapping_write_msync_reopen_and_remount(mounted_fs):
    path = mounted_fs / "f"
    data = bytearray(os.urandom(3 * 1024 * 1024 + 123))
    path.write_bytes(data)
    edits = {0: b"START", PAGE - 2: b"across-a-page", 1_000_000: os.urandom(200_000), len(data) - 4: b"END!"}
    map_write(path, edits)
    for offset, piece in edits.items():
        data[offset : offset + len(piece)] = piece
    assert read(path) == data
    assert read_direct(path) == data  # the daemon has the bytes, not only the page cache
    mounted_fs.remount()
    assert read(path) == data


@pytest.mark.slow
def test_mapping_after_ftruncate_of_a_new_file(mounted_fs):
    path = mounted_fs / "new"
    size = 5 * 1024 * 1024
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED) as mm:
            for page in range(0, size, 7 * PAGE):
                mm[page : page + 16] = page.to_bytes(16, "little")
            mm.flush()
    finally:
        os.close(fd)
    expected = bytearray(size)
    for page in range(0, size, 7 * PAGE):
        expected[page : page + 16] = page.to_bytes(16, "little")
    assert read(path) == expected
    mounted_fs.remount()
    assert read_direct(path) == expected
    assert os.stat(path).st_size == size


@pytest.mark.slow
def test_mapping_beyond_eof_becomes_usable_after_ftruncate(mounted_fs):
    """A mapping that reaches past EOF (the file shrank under it); ftruncate up makes its pages usable."""
    path = mounted_fs / "grow"
    path.write_bytes(b"head" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 4 * PAGE)
        with mmap.mmap(fd, 4 * PAGE, mmap.MAP_SHARED) as mm:
            mm[2 * PAGE : 2 * PAGE + 5] = b"gone!"
            os.ftruncate(fd, 400)  # pages 1-3 of the mapping now lie beyond EOF
            os.ftruncate(fd, 4 * PAGE)
            mm[3 * PAGE : 3 * PAGE + 4] = b"tail"
            mm[400:405] = b"after"  # beyond the shrunk end, inside its page
            mm.flush()
    finally:
        os.close(fd)
    expected = bytearray(4 * PAGE)
    expected[:400] = b"head" * 100
    expected[400:405] = b"after"
    expected[3 * PAGE : 3 * PAGE + 4] = b"tail"
    assert read_direct(path) == expected
    mounted_fs.remount()
    assert read(path) == expected


def test_access_beyond_eof_after_ftruncate_down_is_sigbus(mounted_fs):
    """The kernel learns the new size at once: touching a page past it faults."""
    path = mounted_fs / "shrink"
    path.write_bytes(os.urandom(4 * PAGE))
    script = textwrap.dedent(f"""
        import mmap, os
        fd = os.open({str(path)!r}, os.O_RDWR)
        mm = mmap.mmap(fd, {4 * PAGE}, mmap.MAP_SHARED)
        os.ftruncate(fd, {PAGE})
        print(mm[10], flush=True)
        mm[{3 * PAGE}] = 1
        print("no fault", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -7, (result.returncode, result.stdout, result.stderr)  # SIGBUS
    assert "no fault" not in result.stdout
    assert os.stat(path).st_size == PAGE


@pytest.mark.slow
def test_private_mapping_does_not_change_the_file(mounted_fs):
    path = mounted_fs / "private"
    data = os.urandom(300_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0, mmap.MAP_PRIVATE) as mm:
            mm[0:10] = b"0123456789"
            mm[250_000:250_005] = b"XXXXX"
            assert mm[0:10] == b"0123456789"
            assert os.pread(fd, 10, 0) == data[:10]  # the copy is private
    finally:
        os.close(fd)
    assert read(path) == data
    mounted_fs.remount()
    assert read(path) == data


def test_mapping_and_descriptors_share_one_view(mounted_fs):
    """write() on one descriptor shows in another's mapping, and mapping writes in read()."""
    path = mounted_fs / "shared"
    path.write_bytes(bytes(2 * 1024 * 1024))
    writer = os.open(path, os.O_RDWR)
    mapper = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(mapper, 0, mmap.MAP_SHARED) as mm:
            os.pwrite(writer, b"via-write", 70_000)
            assert mm[70_000:70_009] == b"via-write"
            mm[1_500_000:1_500_008] = b"via-mmap"
            mm.flush()
            assert os.pread(writer, 8, 1_500_000) == b"via-mmap"
    finally:
        os.close(mapper)
        os.close(writer)
    got = read_direct(path)
    assert got[70_000:70_009] == b"via-write" and got[1_500_000:1_500_008] == b"via-mmap"


def test_msync_then_fsync_is_committed_to_the_store(mounted_fs):
    """After msync + fsync the store itself has the bytes (read while still mounted and mapped)."""
    path = mounted_fs / "durable"
    data = bytearray(os.urandom(1024 * 1024))
    path.write_bytes(data)
    ino = os.stat(path).st_ino
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0, mmap.MAP_SHARED) as mm:
            mm[500_000:500_013] = b"made-durable!"
            mm.flush()
            os.fsync(fd)
            data[500_000:500_013] = b"made-durable!"
            stored = run_cli("cat", mounted_fs.store, f"hex:{ino:016x}", text=False).stdout
            assert stored == data
    finally:
        os.close(fd)


def test_unmapped_after_close_is_committed_at_release(mounted_fs):
    """Dirty pages written after close(fd) reach the store: RELEASE waits for munmap."""
    path = mounted_fs / "late"
    path.write_bytes(bytes(256 * 1024))
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 0, mmap.MAP_SHARED)
    os.close(fd)  # FLUSH happens here; the mapping keeps the file open
    mm[100_000:100_004] = b"late"
    mm.flush()
    mm.close()  # RELEASE: the backstop commit
    mounted_fs.remount()
    assert read(path)[100_000:100_004] == b"late"
