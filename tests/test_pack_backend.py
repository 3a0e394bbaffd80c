"""The pack backend contract (docs/store-format.md, "The pack backend interface"), for every implementation.

Each test runs against the local-disk backend, the in-memory one and the
object-store one (on a real SeaweedFS started by conftest.py).
"""

import errno
import os
import random
import threading

import pytest

from chunkfs.errors import PackIOError, PackMissingError, StoreError, StoreFullError, WouldBlock
from chunkfs.store import LocalBackend, MemoryBackend, PackBackend

MIB = 1 << 20


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.slow)])  # s3: a SeaweedFS server
def backend(request, tmp_path) -> PackBackend:
    if request.param == "s3":  # against a real SeaweedFS (conftest.py's seaweed fixture)
        from chunkfs.store._object_store import location_of  # noqa: PLC0415
        from chunkfs.store._s3_backend import S3Backend  # noqa: PLC0415

        url = request.getfixturevalue("bucket_url")
        location = location_of({"url": url, "endpoint": request.getfixturevalue("seaweed").endpoint})
        (tmp_path / "store").mkdir()
        b = S3Backend(str(tmp_path / "store" / "packs"), location)
    else:
        b = LocalBackend(str(tmp_path / "packs")) if request.param == "local" else MemoryBackend()
    yield b
    b.close()


def test_create_write_read_back_to_back(backend):
    assert backend.list() == []
    assert backend.create(7) == 0
    data = rand(3000, 1)
    backend.write(7, 0, [b"head", memoryview(data), bytearray(b"tail")])
    assert backend.size(7) == 4 + 3000 + 4
    assert backend.read(7, 0, 4) == b"head"
    assert backend.read(7, 4, 3000) == data
    assert backend.read(7, 3000, 100) == data[2996:] + b"tail"  # short: the pack ends first
    assert backend.read(7, 5000, 10) == b""
    backend.write(7, backend.size(7), [b"more"])  # appending goes on where it ended
    assert backend.read(7, 3004, 8) == b"tailmore"
    assert backend.create(7) == 3012  # creating again resumes: it returns the size


def test_readv_fills_buffers_back_to_back_and_says_how_much(backend):
    backend.create(1)
    data = rand(10_000, 2)
    backend.write(1, 0, [data])
    bufs = [memoryview(bytearray(n)) for n in (100, 38, 5000)]
    assert backend.readv(1, 50, bufs) == 5138
    assert b"".join(bytes(b) for b in bufs) == data[50:5188]
    short = [memoryview(bytearray(600)), memoryview(bytearray(600))]
    assert backend.readv(1, 9000, short) == 1000  # fewer bytes than the buffers hold: the pack ended
    assert bytes(short[0]) == data[9000:9600] and bytes(short[1][:400]) == data[9600:]


def test_readv_nowait_fills_everything_or_would_block(backend):
    backend.create(1)
    data = rand(MIB, 3)
    backend.write(1, 0, [data])
    backend.sync([1])
    bufs = [memoryview(bytearray(4096)) for _ in range(4)]
    try:
        got = backend.readv(1, 4096, bufs, nowait=True)
    except WouldBlock:
        return  # allowed: the caller reads again, waiting
    assert got == 4 * 4096 and b"".join(bytes(b) for b in bufs) == data[4096:5 * 4096]


def test_a_missing_pack_is_one_error_type(backend):
    with pytest.raises(PackMissingError):
        backend.read(3, 0, 10)
    with pytest.raises(PackMissingError):
        backend.size(3)
    with pytest.raises(PackMissingError):
        backend.readv(3, 0, [memoryview(bytearray(10))])
    assert issubclass(PackMissingError, StoreError) and not issubclass(PackMissingError, OSError)


def test_list_is_sorted_and_remove_leaves_it_at_once(backend):
    for pack in (5, 1, 3):
        backend.create(pack)
        backend.write(pack, 0, [b"x" * pack])
    assert backend.list() == [1, 3, 5]
    backend.remove(3)
    assert backend.list() == [1, 5]
    backend.remove(3)  # gone already: no error
    backend.reap(grace=0)
    with pytest.raises(PackMissingError):
        backend.size(3)


def test_a_removed_pack_stays_readable_for_reads_on_their_way_until_reaped(backend):
    backend.create(2)
    data = rand(50_000, 4)
    backend.write(2, 0, [data])
    assert backend.read(2, 0, 10) == data[:10]  # a reader has been here
    backend.remove(2)
    assert backend.read(2, 100, 1000) == data[100:1100]  # within the grace period
    backend.reap()  # the default grace has not passed
    assert backend.read(2, 0, 10) == data[:10]
    backend.reap(grace=0)
    with pytest.raises(PackMissingError):
        backend.read(2, 0, 10)


def test_truncate_cuts_a_pack_even_a_sealed_one(backend):
    backend.create(1)
    backend.write(1, 0, [rand(1000, 5)])
    backend.seal(1)
    backend.truncate(1, 600)
    assert backend.size(1) == 600
    assert backend.read(1, 500, 500) == rand(1000, 5)[500:600]


def test_seal_keeps_reads_and_repair_working(backend):
    backend.create(1)
    data = rand(5000, 6)
    backend.write(1, 0, [data])
    backend.sync([1])
    backend.seal(1)
    assert backend.read(1, 0, 5000) == data
    backend.patch(1, 10, b"REPAIRED")
    assert backend.read(1, 0, 30) == data[:10] + b"REPAIRED" + data[18:30]
    assert backend.size(1) == 5000


def test_memory_backend_refuses_writes_to_a_sealed_pack_as_an_object_store_would():
    backend = MemoryBackend()
    backend.create(1)
    backend.write(1, 0, [b"abc"])
    backend.seal(1)
    assert backend.sealed(1)
    with pytest.raises(RuntimeError, match="not open"):
        backend.write(1, 3, [b"d"])
    with pytest.raises(RuntimeError, match="sealed"):
        backend.create(1)


def test_punch_frees_only_inside_the_range_and_keeps_the_size(backend):
    backend.create(1)
    data = rand(4 * MIB, 7)
    backend.write(1, 0, [data])
    backend.sync([1])
    before = backend.disk_bytes()
    start, length = 38, 3 * MIB  # not block-aligned: only whole blocks inside may go
    freed = backend.punch(1, start, length)
    assert backend.size(1) == len(data)
    assert backend.read(1, 0, start) == data[:start]
    assert backend.read(1, start + length, MIB) == data[start + length:]
    inside = backend.read(1, start, length)
    assert all(a == b or a == 0 for a, b in zip(inside[::4096], data[start:start + length:4096]))
    if freed:
        assert backend.disk_bytes() <= before - 2 * MIB
    else:
        assert backend.disk_bytes() >= before - 4096


def test_disk_bytes_follow_writes_and_removal(backend):
    empty = backend.disk_bytes()
    backend.create(1)
    backend.write(1, 0, [rand(2 * MIB, 8)])
    backend.sync([1])
    assert backend.disk_bytes() >= empty + 2 * MIB - 4096
    backend.remove(1)
    backend.reap(grace=0)
    assert backend.disk_bytes() < empty + 4096


def test_concurrent_readers_see_written_bytes_while_a_writer_appends(backend):
    backend.create(1)
    pieces = [rand(8192, 100 + i) for i in range(64)]
    backend.write(1, 0, [pieces[0]])
    written = [1]
    errors = []

    def reader():
        for k in range(300):
            i = k % written[0]
            if backend.read(1, i * 8192, 8192) != pieces[i]:
                errors.append(i)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(1, len(pieces)):
        backend.write(1, i * 8192, [pieces[i]])
        written[0] = i + 1
    for t in threads:
        t.join()
    assert errors == []


def test_a_full_memory_backend_raises_store_full():
    backend = MemoryBackend(capacity=10_000)
    backend.create(1)
    backend.write(1, 0, [bytes(9000)])
    with pytest.raises(StoreFullError):
        backend.write(1, 9000, [bytes(2000)])
    assert backend.size(1) == 9000


@pytest.mark.parametrize("err,expected", [(errno.ENOSPC, StoreFullError), (errno.EDQUOT, StoreFullError),
                                          (errno.EIO, PackIOError)])
def test_local_backend_maps_os_errors_to_chunkfs_errors(tmp_path, monkeypatch, err, expected):
    backend = LocalBackend(str(tmp_path / "packs"))
    backend.create(1)

    def fail(*args):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "pwritev", fail)
    monkeypatch.setattr(os, "pread", fail)
    with pytest.raises(expected):
        backend.write(1, 0, [b"data"])
    if expected is PackIOError:
        with pytest.raises(PackIOError, match="pack 00000001"):
            backend.read(1, 0, 4)
    backend.close()


def test_local_packs_are_files_only_the_local_backend_names(tmp_path):
    backend = LocalBackend(str(tmp_path / "packs"))
    backend.create(0x2A)
    backend.write(0x2A, 0, [b"bytes"])
    backend.sync([0x2A])
    assert sorted(os.listdir(tmp_path / "packs")) == ["0000002a.pack"]
    assert (tmp_path / "packs" / "0000002a.pack").read_bytes() == b"bytes"
    backend.close()
    again = LocalBackend(str(tmp_path / "packs"))
    assert again.list() == [0x2A] and again.create(0x2A) == 5  # a restart resumes the pack
    again.close()
