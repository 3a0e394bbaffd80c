"""Chunking behind the writer (``-o chunking=behind``, chunkfs/fs/behind.py) in the fs core, in-process.

* A big file's changes are recorded at close and fsync and committed by the
  committer thread afterwards; reads, stats, reopening and unlinking see the
  file as written meanwhile; a write over recorded bytes commits the recorded
  state only; a small file still commits at close.
* Recovery: a record a crash left is committed at the next mount, whatever
  its mode; one whose staging file is gone is dropped with an error line.

The mount-level tests (kill -9, clients, the crash rounds) are in
test_chunking_behind_mount.py.
"""


from __future__ import annotations

import contextlib
import logging
import os
import threading

import pytest

from conftest import wait_until

from chunkfs import linux_calls
from chunkfs.errors import InvalidArgument
from chunkfs.fs import Caller, FsCore
from chunkfs.fs import behind, openfile
from chunkfs.fs.behind import Committer
from chunkfs.fs.openfile import file_id_for
from chunkfs.mountopts import parse_options
from chunkfs.store import ChunkStore

ROOT = 1
USER = Caller(0, 0, 0o022)
MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path):
    store = ChunkStore.create(tmp_path / "store")
    yield store
    store.close()


@pytest.fixture
def fs(store):
    core = FsCore(store, root_uid=0, root_gid=0, chunking="behind")
    yield core
    core.close()


def create(fs: FsCore, name: bytes) -> int:
    fh, inode = fs.create(ROOT, name, 0o644, os.O_RDWR, USER)
    fs.release(fh)
    return inode.ino


def write_file(fs: FsCore, ino: int, pieces: dict[int, bytes], fsync: bool = False, close: bool = True) -> int:
    fh = fs.open(ino, os.O_RDWR)[0]
    for offset, data in pieces.items():
        assert fs.write(fh, offset, data) == len(data)
    if fsync:
        fs.fsync(fh)
    if close:
        fs.flush(fh)
        fs.release(fh)
    return fh


def read_file(fs: FsCore, ino: int) -> bytes:
    fh = fs.open(ino, os.O_RDONLY)[0]
    try:
        size = fs.getattr(ino).size
        return bytes(fs.read(fh, 0, size)) if size else b""
    finally:
        fs.release(fh)


def stored(fs: FsCore, ino: int) -> bytes:
    """What the store holds for the file: its last commit."""
    file_id = file_id_for(ino)
    return bytes(fs.store.read(file_id)) if fs.store.size(file_id, default=0) else b""


def records(fs: FsCore) -> dict[int, behind.StagedState]:
    return dict(behind.records(fs.store.fs_tables))


def hold_committer(fs: FsCore) -> None:
    """Stop the committer thread, so the test decides when staged files are committed (``settle_staged``)."""
    fs.files.committer.stop()


# -- the fs core ------------------------------------------------------------------------------------


def test_a_big_file_is_recorded_at_close_and_committed_afterwards(fs):
    ino = create(fs, b"big")
    data = os.urandom(3 * MiB)
    hold_committer(fs)
    write_file(fs, ino, {0: data})
    assert stored(fs, ino) == b"", "committed at close: nothing was chunked behind the writer"
    assert records(fs)[ino].size == 3 * MiB
    assert fs.getattr(ino).size == 3 * MiB
    assert read_file(fs, ino) == data  # reads see the staged bytes
    fs.files.settle_staged()
    assert stored(fs, ino) == data
    assert records(fs) == {}
    assert not fs.files.is_open(ino), "a committed file with no handle stays in the open table"
    assert os.listdir(fs.store.staging_dir) == []
    assert read_file(fs, ino) == data


def test_the_committer_commits_a_closed_file_at_once(fs):
    ino = create(fs, b"big")
    data = os.urandom(2 * MiB)
    write_file(fs, ino, {0: data})
    assert wait_until(lambda: not fs.files.is_open(ino), timeout=30)
    assert stored(fs, ino) == data and records(fs) == {}


def test_staged_bytes_start_their_way_to_the_disk_while_the_file_is_written(fs, monkeypatch):
    """An fsync then finds little left to flush; the writeback of each WRITE_BEHIND bytes starts at once."""
    started = []

    def recording(fd: int, offset: int, length: int) -> None:
        started.append((offset, offset + length))
        linux_calls.start_writeback(fd, offset, length)

    monkeypatch.setattr(openfile, "start_writeback", recording)
    ino = create(fs, b"big")
    step = 1 * MiB
    fh = fs.open(ino, os.O_RDWR)[0]
    for offset in range(0, 2 * openfile.WRITE_BEHIND + step, step):
        fs.write(fh, offset, os.urandom(step))
    assert started == [(0, openfile.WRITE_BEHIND), (openfile.WRITE_BEHIND, 2 * openfile.WRITE_BEHIND)]
    fs.fsync(fh)
    fs.release(fh)


def test_writeback_is_started_on_this_system():
    assert linux_calls.sync_file_range is not None, "libc has no sync_file_range: an fsync flushes all at once"


def test_a_small_file_commits_at_close(fs):
    ino = create(fs, b"small")
    data = os.urandom(100_000)
    write_file(fs, ino, {0: data})
    assert stored(fs, ino) == data
    assert records(fs) == {}


def test_a_file_reopened_before_its_commit_shows_and_keeps_every_write(fs):
    ino = create(fs, b"f")
    first, second = os.urandom(2 * MiB), os.urandom(MiB)
    hold_committer(fs)
    write_file(fs, ino, {0: first})
    write_file(fs, ino, {2 * MiB: second})  # an append while the first version waits
    assert read_file(fs, ino) == first + second
    fs.files.settle_staged()
    assert stored(fs, ino) == first + second


def test_unlinking_a_file_that_waits_drops_its_changes_and_record(fs):
    ino = create(fs, b"gone")
    hold_committer(fs)
    write_file(fs, ino, {0: os.urandom(2 * MiB)})
    fs.unlink(ROOT, b"gone")
    assert records(fs) != {}, "purged before its last holder let go"
    fs.files.settle_staged()  # closes it: nothing to commit
    fs.forget([(ino, 1)])  # the kernel's reference from create: the last one    assert records(fs) == {}
    assert fs.store.size(file_id_for(ino), default=-1) == -1
    assert os.listdir(fs.store.staging_dir) == []
    assert fs.store.stats()["files"] == 0


def test_a_write_over_recorded_bytes_commits_the_recorded_state_only(fs):
    """The record is made between two calls; what was written after it is not committed with it."""
    ino = create(fs, b"db")
    base = os.urandom(2 * MiB)
    hold_committer(fs)
    fh = write_file(fs, ino, {0: base}, fsync=True, close=False)
    assert records(fs)[ino].ranges == [(0, 2 * MiB)]
    fs.write(fh, 3 * MiB, b"later, beyond the record")  # no overlap: stays in the overlay
    fs.write(fh, 4096, b"X" * 100)  # overlaps: the record's state is committed first
    assert stored(fs, ino) == base
    assert records(fs) == {}
    now = bytearray(base) + bytes(MiB) + b"later, beyond the record"
    now[4096:4196] = b"X" * 100
    assert bytes(fs.read(fh, 0, len(now))) == bytes(now)
    fs.flush(fh)
    fs.release(fh)
    fs.files.settle_staged()
    assert stored(fs, ino) == bytes(now)


def test_a_truncate_of_a_staged_file_commits_it_first(fs):
    ino = create(fs, b"t")
    data = os.urandom(2 * MiB)
    hold_committer(fs)
    fh = write_file(fs, ino, {0: data}, fsync=True, close=False)
    fs.files.truncate(fs.files.handle(fh).inode, MiB)
    assert stored(fs, ino) == data  # the fsync'ed state, committed before the truncate changed it
    fs.flush(fh)
    fs.release(fh)
    fs.files.settle_staged()
    assert stored(fs, ino) == data[:MiB]


# -- recovery ---------------------------------------------------------------------------------------


def _crashed(tmp_path, old: bytes, staged: dict[int, bytes]) -> int:
    """A store whose file has ``old`` committed, then ``staged`` written and fsync'ed with the file left open,
    and then a crash (what kill -9 leaves: the record and the staging file, no commit); returns its inode."""
    store = ChunkStore.create(tmp_path / "store")
    core = FsCore(store, root_uid=0, root_gid=0, chunking="behind")
    ino = create(core, b"f")
    if old:
        write_file(core, ino, {0: old})  # small: committed at close
    write_file(core, ino, staged, fsync=True, close=False)
    core.files.committer.stop()
    store.close()
    return ino


@contextlib.contextmanager
def _mounted_again(tmp_path, caplog, readonly: bool = False, chunking: str = "inline"):
    """The next mount of that store (recovery runs in FsCore's constructor, logged into ``caplog``)."""
    store = ChunkStore.open(tmp_path / "store", readonly=readonly)
    with caplog.at_level(logging.INFO, logger="chunkfs"):
        core = FsCore(store, root_uid=0, root_gid=0, readonly=readonly, chunking=chunking)
    try:
        yield core
    finally:
        core.close()
        store.close()


@pytest.mark.parametrize("mode", ["behind", "inline"])
def test_the_next_mount_commits_what_a_crash_left_staged(tmp_path, mode, caplog):
    data = os.urandom(3 * MiB)
    ino = _crashed(tmp_path, b"", {0: data, 5 * MiB: b"tail"})
    with _mounted_again(tmp_path, caplog, chunking=mode) as core:
        assert core.recovery.replayed == [ino]
        assert "committed the staged writes of 1 closed or fsync'ed file(s)" in caplog.text
        expected = data + bytes(2 * MiB) + b"tail"
        assert stored(core, ino) == expected
        assert core.getattr(ino).size == len(expected)
        assert records(core) == {} and os.listdir(core.store.staging_dir) == []


def test_a_read_only_mount_says_staged_writes_wait_and_keeps_them(tmp_path, caplog):
    data = os.urandom(2 * MiB)
    ino = _crashed(tmp_path, b"", {0: data})
    with _mounted_again(tmp_path, caplog, readonly=True) as core:
        assert "1 file(s) have staged writes a crash left" in caplog.text
        assert records(core) != {} and stored(core, ino) == b""
    with _mounted_again(tmp_path, caplog) as core:
        assert stored(core, ino) == data and records(core) == {}


def test_a_record_whose_staging_file_is_gone_is_dropped_with_an_error(tmp_path, caplog):
    old = os.urandom(100_000)
    ino = _crashed(tmp_path, old, {0: os.urandom(MiB)})
    staging = tmp_path / "store" / "staging"
    for name in os.listdir(staging):
        os.unlink(staging / name)
    with _mounted_again(tmp_path, caplog, chunking="behind") as core:
        assert f"inode {ino}: dropping its staged record: its staging file is missing" in caplog.text
        assert [r.levelname for r in caplog.records if "staging file is missing" in r.getMessage()] == ["ERROR"]
        assert read_file(core, ino) == old and core.getattr(ino).size == len(old)
        assert records(core) == {}


# -- the pieces --------------------------------------------------------------------------------------


def test_the_committer_tries_a_failed_commit_again(monkeypatch):
    monkeypatch.setattr(Committer, "RETRY", (0.05, 0.05, 0.05))
    tries, done = [], threading.Event()

    def commit(item: str) -> None:
        tries.append(item)
        if len(tries) < 3:
            raise OSError(28, "No space left on device")
        done.set()

    committer = Committer(commit)
    committer.schedule(1, "a")
    try:
        assert done.wait(10)
    finally:
        committer.stop()
    assert tries == ["a", "a", "a"]


def test_a_staged_record_round_trips():
    state = behind.StagedState(10 * MiB, 4 * MiB, 5 * MiB, [(0, 4096), (MiB, 3 * MiB)])
    assert behind.StagedState.decode(state.encode()) == state


def test_the_mount_option():
    assert parse_options("chunking=behind").chunking == "behind"
    assert parse_options("").chunking == "inline"
    with pytest.raises(InvalidArgument, match="chunking must be one of inline, behind"):
        parse_options("chunking=later")
