"""Mount tunables reach what they tune, and the kernel's page cache is used where it may be.

Each option is checked by its effect, not only by parsing: ``read_ahead_kb``
in sysfs, ``writeback_cache`` by the write requests the daemon no longer
gets, ``verify`` by which checksum a read trusts, ``cache_size`` by the pack
bytes a re-read costs.  The daemon's own I/O counters (``/proc/PID/io``:
``syscr`` counts its read calls, one per FUSE request plus one per chunk read
from a pack; ``rchar`` the bytes they returned) tell what reached it.
"""

from __future__ import annotations

import errno
import os

import pytest

from chunkfs.errors import InvalidArgument
from chunkfs.mountopts import parse_options

KiB = 1024
MiB = 1024 * KiB


def daemon_io(fs) -> dict[str, int]:
    with open(f"/proc/{fs.pid}/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh.read().splitlines())}


def io_of(fs, action) -> dict[str, int]:
    """The daemon's I/O counters consumed while ``action()`` ran."""
    before = daemon_io(fs)
    action()
    after = daemon_io(fs)
    return {k: after[k] - before[k] for k in after}


def read_all(path) -> bytes:
    with open(path, "rb", buffering=0) as fh:
        out = bytearray()
        while chunk := fh.read(MiB):
            out += chunk
        return bytes(out)


def read_in_pages(path) -> bytes:
    """The file 4 KiB at a time with the kernel's read-ahead off, as a random reader sends short reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        out = bytearray()
        while page := os.pread(fd, 4096, len(out)):
            out += page
        return bytes(out)
    finally:
        os.close(fd)


def drop_page_cache(path) -> None:
    """Forget the kernel's cached pages of one file (not the whole machine's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- parsing ------------------------------------------------------------------------------


def test_parse_tunables():
    opts = parse_options("read_ahead_kb=1024,writeback_cache,cache_size=256M,verify=sha256")
    assert (opts.read_ahead_kb, opts.writeback_cache, opts.cache_size, opts.verify) == (1024, True, 256 * MiB, "sha256")
    assert parse_options(["writeback_cache", "nowriteback_cache"]).writeback_cache is False
    defaults = parse_options(None)
    assert (defaults.read_ahead_kb, defaults.writeback_cache, defaults.verify) == (None, False, "xxh3")
    assert not {"writeback_cache", "read_ahead_kb=1024"} & opts.fuse_options("/s")  # never shown to libfuse
    for bad in ("read_ahead_kb=", "read_ahead_kb=-1", "read_ahead_kb=1M", "read_ahead_kb=2000000", "writeback_cache=1"):
        with pytest.raises(InvalidArgument):
            parse_options(bad)


# -- each option's effect through a real mount ----------------------------------------------


def read_ahead_of(fs) -> int:
    dev = os.stat(fs.mountpoint).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as fh:
        return int(fh.read())


@pytest.mark.mount
@pytest.mark.parametrize("option, expected", [(None, 1024), ("read_ahead_kb=128", 128), ("read_ahead_kb=4096", 4096)])
def test_read_ahead_kb_is_set_in_sysfs(mount_factory, option, expected):
    fs = mount_factory(options=[option] if option else [])
    assert read_ahead_of(fs) == expected
    assert f"read-ahead {expected} KiB" in fs.log_text()
    data = os.urandom(8 * MiB)
    (fs / "f").write_bytes(data)
    assert read_all(fs / "f") == data


@pytest.mark.mount
@pytest.mark.slow
def test_writeback_cache_batches_small_writes(mount_factory):
    """With the writeback cache the kernel gathers 1000 small writes into a few requests."""
    requests = {}
    for name, options in (("plain", []), ("writeback", ["writeback_cache"])):
        fs = mount_factory(name=name, options=options)
        path = fs / "small"

        def write_small(path=path) -> None:
            # O_RDWR: a write-only handle bypasses the page cache (and the writeback cache) on Linux >= 6.6
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for i in range(1000):
                    os.write(fd, b"%09d\n" % i)
            finally:
                os.close(fd)

        requests[name] = io_of(fs, write_small)["syscr"]
        fs.remount()
        assert path.read_bytes() == b"".join(b"%09d\n" % i for i in range(1000))
        assert ("writeback cache on" in fs.log_text()) == (name == "writeback")
    # each write() costs a WRITE request (and, either way, a GETXATTR of security.capability)
    assert requests["writeback"] < 0.75 * requests["plain"], requests


@pytest.mark.slow
@pytest.mark.mount
def test_verify_sha256_rehashes_instead_of_trusting_the_checksum(mount_factory):
    """A wrong xxh3 checksum in a pack record header fails xxh3 verification but not SHA-256 re-hashing."""
    from chunkfs.store import ChunkStore  # noqa: PLC0415
    from chunkfs.store._ledger import find_chunk  # noqa: PLC0415
    from chunkfs.store._packs import RECORD  # noqa: PLC0415

    fs = mount_factory()
    data = os.urandom(200 * KiB)
    (fs / "f").write_bytes(data)
    ino = os.stat(fs / "f").st_ino
    fs.unmount()
    with ChunkStore.open(fs.store) as store:
        victim = store.manifest(ino.to_bytes(8, "big"))[0]
        with store.read_txn() as txn:
            loc = find_chunk(txn, store.index, victim.address)[1].location
        # the header's last 8 bytes are the xxh3-64 of the chunk; the bytes themselves stay intact
        store.packs.backend.patch(loc.pack, loc.record_offset + RECORD.size - 8, bytes(8))
    fs.expect_log(r"xxh3 checksum mismatch")
    fs.mount()
    with pytest.raises(OSError) as info:
        read_all(fs / "f")
    assert info.value.errno == errno.EIO
    fs.remount("verify=sha256")
    assert "verify sha256" in fs.log_text()
    assert read_all(fs / "f") == data


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.parametrize("cache_size, cached", [("64M", True), ("1M", False)])
def test_cache_size_decides_what_a_reread_costs(mount_factory, cache_size, cached):
    fs = mount_factory(options=[f"cache_size={cache_size}"])
    assert f"chunk cache {64 if cached else 1}.0 MiB" in fs.log_text()
    data = os.urandom(16 * MiB)
    path = fs / "f"
    path.write_bytes(data)
    fs.remount()
    assert read_in_pages(path) == data  # short reads fill the chunk cache, as far as it holds
    drop_page_cache(path)
    io = io_of(fs, lambda: read_in_pages(path))
    if cached:
        assert io["rchar"] < 2 * MiB, io  # from the chunk cache: no pack reads
    else:
        assert io["rchar"] > 15 * MiB, io


# -- the page cache ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.mount
def test_keep_cache_serves_a_second_read_from_the_page_cache(mounted_fs):
    path = mounted_fs / "f"
    data = os.urandom(32 * MiB)
    path.write_bytes(data)
    first = io_of(mounted_fs, lambda: read_all(path))  # written since the last open: pages dropped
    second = io_of(mounted_fs, lambda: read_all(path))
    assert first["rchar"] >= 32 * MiB, first  # every chunk read from its pack
    # no READ requests: the daemon read none of the file's 32 MiB again (its background threads' own reads,
    # a log line, a look at the packs, may fall in the window: count bytes, not system calls)
    assert second["rchar"] < 4 * MiB, second
    with open(path, "r+b") as fh:  # a change through the kernel keeps its cache right ...
        fh.seek(5 * MiB)
        fh.write(b"changed")
    expected = data[: 5 * MiB] + b"changed" + data[5 * MiB + 7 :]
    assert read_all(path) == expected
    mounted_fs.remount()  # ... and the store has it
    assert read_all(path) == expected
