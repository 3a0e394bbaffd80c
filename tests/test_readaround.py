"""Read-around: the rest of a just-read chunk is pushed into the kernel's page cache.

Unit tests of the pusher (batches, the writers' barrier, shutdown, errors) and
of the page arithmetic, then real mounts: a short read leaves its whole chunk
in the page cache, and no push ever lands over bytes a writer or a truncate
changed afterwards.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading

import pytest
import trio

from chunkfs.fs import ROOT_INO
from chunkfs.fs.chunkrun import ChunkRun
from chunkfs.readaround import BATCH, MAX_QUEUED, PagePusher

from conftest import wait_until
from test_fs_core import USER, fs, read_now_around, store  # noqa: F401 (the core tests' fixtures)

PAGE = 4096


class Recorder:
    """A push function that records what it was given and can be made to block or fail."""

    def __init__(self):
        self.pushed: list[tuple[int, int, bytes]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.error: Exception | None = None

    def __call__(self, ino: int, offset: int, data: bytes) -> None:
        self.entered.set()
        self.release.wait(10)
        if self.error is not None:
            raise self.error
        self.pushed.append((ino, offset, data))


def offer_n(pusher: PagePusher, n: int, ino: int = 7) -> None:
    for i in range(n):
        pusher.offer(ino, lambda i=i: (i * PAGE, b"x" * PAGE))


def test_offers_are_pushed_a_batch_at_a_time_and_close_drops_the_rest():
    push = Recorder()
    pusher = PagePusher(push)
    offer_n(pusher, BATCH + 3)
    assert wait_until(lambda: len(push.pushed) == BATCH, timeout=10)
    pusher.close()
    assert [offset for _, offset, _ in push.pushed] == [i * PAGE for i in range(BATCH)]
    stats = pusher.statistics()
    assert (stats.offered, stats.pushed, stats.pushed_bytes) == (BATCH + 3, BATCH, BATCH * PAGE)
    pusher.offer(7, lambda: (0, b"late"))  # after close: dropped
    assert pusher.statistics().dropped == 1


def test_a_burst_beyond_the_queue_limit_is_dropped_not_queued():
    push = Recorder()
    push.release.clear()  # the thread blocks in the first push
    pusher = PagePusher(push)
    offer_n(pusher, MAX_QUEUED + 10)
    assert pusher.statistics().dropped == 10
    push.release.set()
    pusher.close()


def test_hold_waits_for_the_inodes_pushes_and_refuses_new_ones():
    push = Recorder()
    push.release.clear()
    pusher = PagePusher(push)
    offer_n(pusher, 2, ino=1)  # a partial batch: hold must hand it over, not wait forever
    offer_n(pusher, 1, ino=2)
    events = []

    async def writer():
        async with pusher.hold(1):
            events.append(("held", sum(ino == 1 for ino, _, _ in push.pushed)))
            pusher.offer(1, lambda: (0, b"stale"))  # a read while a writer opens: never pushed

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.to_thread.run_sync(push.entered.wait, 10)
            await trio.sleep(0.05)
            assert events == []  # still waiting for the blocked push
            push.release.set()

    trio.run(main)
    assert events == [("held", 2)]
    pusher.close()
    assert all(data != b"stale" for _, _, data in push.pushed)
    assert pusher.statistics().dropped == 1


def test_hold_without_pending_pushes_does_not_wait():
    pusher = PagePusher(Recorder())

    async def main():
        with trio.fail_after(1):
            async with pusher.hold(3):
                pass

    trio.run(main)
    pusher.close()


def test_a_failed_push_is_counted_and_later_ones_still_run(caplog):
    push = Recorder()
    push.error = OSError(2, "No such file or directory")
    pusher = PagePusher(push)
    offer_n(pusher, BATCH)
    assert wait_until(lambda: pusher.statistics().failed == BATCH, timeout=10)
    push.error = None
    offer_n(pusher, BATCH)
    assert wait_until(lambda: pusher.statistics().pushed == BATCH, timeout=10)
    pusher.close()
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


@pytest.mark.parametrize("start, sizes, file_size, skip, expected", [
    (0, [10_000], 10_000, (0, 4096), (0, 10_000)),  # a whole small file, tail page at EOF
    (1000, [20_000], 100_000, (8192, 12288), (4096, 20480)),  # unaligned chunk: whole pages inside it
    (8192, [4096], 100_000, (8192, 12288), None),  # nothing beyond the page that was read
    (0, [3000, 3000], 100_000, (5000, 5100), (0, 4096)),  # two chunks: one whole page beyond the read
    (0, [5000], 4000, (0, 4000), None),  # truncated below the run's end: only the page read
])
def test_chunk_run_pages(start, sizes, file_size, skip, expected):
    run = ChunkRun(1, start, [bytes([i + 1]) * n for i, n in enumerate(sizes)], file_size)
    found = run.pages(PAGE, *skip)
    if expected is None:
        assert found is None
        return
    lo, hi = expected
    whole = b"".join(run.chunks)[: file_size - start]
    assert found == (lo, whole[lo - start : hi - start])


def test_the_core_offers_chunks_only_of_files_nobody_can_write(fs):
    data = random.Random(4).randbytes(1024 * 1024)
    fh, inode = fs.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, USER)
    fs.write(fh, 0, data)
    fs.flush(fh)
    reader = fs.open(inode.ino, os.O_RDONLY)[0]
    assert read_now_around(fs, reader, 5000, PAGE)[1] is None  # the writer is still open
    fs.release(fh)
    got, run = read_now_around(fs, reader, 500_000, PAGE)
    assert got == data[500_000 : 500_000 + PAGE]
    assert run.ino == inode.ino and run.start <= 500_000 < run.start + sum(map(len, run.chunks))
    assert b"".join(run.chunks) == data[run.start : run.start + len(b"".join(run.chunks))]
    writer = fs.open(inode.ino, os.O_RDWR)[0]
    fs.write(writer, 10, b"new")
    assert read_now_around(fs, reader, 0, PAGE) == (data[:10] + b"new" + data[13:PAGE], None)
    fs.release(writer)
    fs.release(reader)


# -- real mounts ---------------------------------------------------------------------

def resident_bytes(path) -> int:
    """Bytes of ``path`` in the page cache (util-linux fincore: mmap + mincore, no reads)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def random_reader(path):
    """A read-only descriptor with the kernel's read-ahead off: every read asks for its own pages only."""
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


def test_a_short_read_leaves_its_whole_chunk_in_the_page_cache(mounted_fs):
    data = random.Random(1).randbytes(16 * 1024 * 1024)
    path = mounted_fs / "big"
    path.write_bytes(data)
    fd = random_reader(path)
    try:
        offsets = [i * 512 * 1024 + 10_000 for i in range(2 * BATCH)]
        for off in offsets:
            assert os.pread(fd, PAGE, off) == data[off : off + PAGE]
        asked = len(offsets) * 2 * PAGE  # at most two pages per unaligned read
        # chunks average 32 KiB (8 pages): pushes must have cached far more than was asked for
        assert wait_until(lambda: resident_bytes(path) >= 3 * asked, timeout=10), resident_bytes(path)
        for off in offsets:  # the pushed neighbours hold the file's bytes
            lo = max(off - 8192, 0)
            assert os.pread(fd, 20_000, lo) == data[lo : lo + 20_000]
    finally:
        os.close(fd)


@pytest.mark.slow
def test_no_push_lands_over_a_later_write_or_truncate(mounted_fs):
    """Reads queue pushes while a writer opens, writes and closes, and a truncate shrinks the file;
    a long-lived read-only descriptor must then see exactly the new bytes (a stale push would not)."""
    rng = random.Random(2)
    size = 4 * 1024 * 1024
    shadow = bytearray(rng.randbytes(size))
    path = mounted_fs / "f"
    path.write_bytes(shadow)
    fd = random_reader(path)
    try:
        for round_ in range(40):
            spots = [rng.randrange(0, len(shadow) - PAGE) for _ in range(BATCH * 2)]
            for off in spots:  # fill batches of pushes of the current bytes
                assert os.pread(fd, PAGE, off) == shadow[off : off + PAGE]
            if round_ % 10 == 9:
                new_size = len(shadow) - rng.randrange(1, 200_000)
                os.truncate(path, new_size)
                del shadow[new_size:]
            else:
                flags = os.O_WRONLY if round_ % 2 else os.O_RDWR  # direct and cached writes
                wfd = os.open(path, flags)
                for off in spots[: BATCH]:
                    piece = bytes([round_ + 1]) * 3000
                    os.pwrite(wfd, piece, off + 500)
                    shadow[off + 500 : off + 3500] = piece
                os.close(wfd)
            for off in spots:
                off = min(off, max(len(shadow) - 8192, 0))
                assert os.pread(fd, 8192, off) == bytes(shadow[off : off + 8192]), f"round {round_} at {off}"
        assert os.fstat(fd).st_size == len(shadow)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(shadow)


def test_reads_keep_working_with_read_around_off(mount_factory):
    fs = mount_factory(options=["noreadaround"])
    data = random.Random(3).randbytes(2 * 1024 * 1024)
    path = fs / "f"
    path.write_bytes(data)
    fd = random_reader(path)
    try:
        for off in range(5000, len(data) - PAGE, 300_000):
            assert os.pread(fd, PAGE, off) == data[off : off + PAGE]
        assert resident_bytes(path) <= 8 * 2 * PAGE
    finally:
        os.close(fd)
