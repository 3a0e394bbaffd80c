"""Write-only handles bypass the page cache (FOPEN_DIRECT_IO) where the kernel keeps that coherent.

Checked through a real mount: other handles and shared mappings see the
direct writes at once, a direct writer leaves no pages in the page cache, and
an unprivileged write still clears setuid/setgid bits (the kernel does that
only for writes through its cache, so such files are written through it).
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import subprocess
import sys

import pytest

from chunkfs.fuse_adapter import kernel_keeps_direct_writes_coherent

NOBODY = 65534
needs_coherent_kernel = pytest.mark.skipif(not kernel_keeps_direct_writes_coherent(),
                                           reason="kernel older than 6.6: direct writes stay off")


@pytest.mark.parametrize("release, expected", [
    ("6.18.44-fc-v509", True), ("6.6.0", True), ("6.1.0-27-amd64", False), ("5.10.0", False), ("weird", False),
])
def test_direct_writes_need_linux_6_6(release, expected):
    assert kernel_keeps_direct_writes_coherent(release) is expected


@needs_coherent_kernel
def test_other_handles_and_mappings_see_direct_writes_at_once(mounted_fs):
    path = mounted_fs / "f"
    path.write_bytes(b"A" * 1_000_000)
    reader = os.open(path, os.O_RDONLY)
    mapped_fd = os.open(path, os.O_RDWR)
    writer = os.open(path, os.O_WRONLY)
    try:
        assert os.pread(reader, 100, 500_000) == b"A" * 100  # now in the page cache
        mapping = mmap.mmap(mapped_fd, 1_000_000)
        assert mapping[500_000:500_010] == b"A" * 10
        os.pwrite(writer, b"B" * 100, 500_000)
        assert os.pread(reader, 100, 500_000) == b"B" * 100
        assert mapping[500_000:500_100] == b"B" * 100
        mapping[600_000:600_004] = b"CCCC"  # and the other way round
        mapping.flush()
        os.pwrite(writer, b"D" * 4, 700_000)
        assert os.pread(reader, 4, 600_000) == b"CCCC" and os.pread(reader, 4, 700_000) == b"DDDD"
        mapping.close()
    finally:
        for fd in (reader, mapped_fd, writer):
            os.close(fd)
    data = path.read_bytes()
    assert (data[500_000:500_100], data[600_000:600_004], data[700_000:700_004]) == (b"B" * 100, b"CCCC", b"DDDD")


@needs_coherent_kernel
@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore (util-linux)")
def test_a_write_only_handle_leaves_no_pages_to_drop(mounted_fs):
    """What made the next open of a just-written big file slow: the kernel dropping its written pages."""
    path = mounted_fs / "big"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(16):
            f.write(block)
    with open(path, "r+b") as f:  # a read-write handle goes through the page cache, as before
        f.write(block)
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert int(out.split()[0]) <= len(block)  # only what the read-write handle wrote
    assert path.read_bytes() == block * 16


def test_an_unprivileged_write_clears_setuid_and_setgid(mount_factory):
    fs = mount_factory(options=["allow_other"])
    path = fs.mountpoint / "tool"
    path.write_bytes(b"#!/bin/sh\n")
    os.chmod(path, 0o6777)
    os.chmod(fs.mountpoint, 0o777)
    script = (f"import os; os.chdir({str(fs.mountpoint)!r}); "  # its parents are private to root: enter first
              f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); "
              f"fd = os.open('tool', os.O_WRONLY | os.O_APPEND); os.write(fd, b'echo hi\\n'); os.close(fd)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mode = os.stat(path).st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)
    assert path.read_bytes() == b"#!/bin/sh\necho hi\n"
