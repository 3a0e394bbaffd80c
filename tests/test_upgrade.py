"""``chunkfs upgrade``: a real format-version-1 store (tests/fixtures/store-v1.tar.gz) becomes a current one.

The fixture was made by the chunkfs of format version 1 through a real mount
(tests/fixtures/make_v1_store.py); store-v1.json is the tree that mount
showed.  After the upgrade, a mount must show exactly that tree, fsck must
find the store clean, and ``kill -9`` of the upgrade at any point (named
pause points in the upgrade, and random moments) must leave either the old
store or the new one, which a later ``chunkfs upgrade`` turns into the
upgraded store.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from chunkfs.errors import ChunkfsError
from chunkfs.fs.openfile import file_id_for
from chunkfs.fsck_run import EXIT_CLEAN, EXIT_ERROR, run_fsck
from chunkfs.settings import FORMAT_VERSION
from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore, _compression, upgrade_store

from conftest import CLI, REPO, assert_one_line_error, cli_env, is_mounted, requires_fuse, run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "store-v1.json").read_text())["entries"]
PAUSE_ENV = "CHUNKFS_UPGRADE_PAUSE_AT"
BEFORE_COMMIT = ("copying", "built")
AFTER_COMMIT = ("committed", "aside-meta", "in-meta", "aside-packs", "in-packs", "old-removed", "settings")


def unpack_v1(where: Path) -> Path:
    with tarfile.open(FIXTURES / "store-v1.tar.gz") as tar:
        if hasattr(tarfile, "tar_filter"):  # Python 3.11.4+: refuse odd members; Debian 12's 3.11.2 lacks it
            tar.extractall(where, filter="tar")
        else:  # the fixture is this repository's own, made by tests/fixtures/make_v1_store.py
            tar.extractall(where)
    return where / "store"


@pytest.fixture
def v1_store(tmp_path) -> Path:
    return unpack_v1(tmp_path)


def format_version(store: Path) -> int:
    return json.loads((store / "chunkfs.json").read_text())["format_version"]


def tree_digest(store: Path) -> dict[str, str]:
    """SHA-256 of every file of the store's index and packs: 'unchanged' means byte for byte."""
    out = {}
    for sub in ("meta", "packs"):
        for path in sorted((store / sub).iterdir()):
            out[f"{sub}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_contents_match(store: Path) -> None:
    """Every regular file's bytes, read through the library by inode, hash as the v1 mount showed."""
    with ChunkStore.open(store, readonly=True) as opened:
        for rel, entry in EXPECTED.items():
            if entry["type"] == "file" and entry["size"] == 0:
                assert opened.size(file_id_for(entry["ino"]), default=0) == 0, rel  # may have no store file
            elif entry["type"] == "file":
                digest = hashlib.sha256()
                with opened.open_reader(file_id_for(entry["ino"])) as reader:
                    while block := reader.read(1 << 20):
                        digest.update(block)
                assert digest.hexdigest() == entry["sha256"], rel


def test_every_verb_refuses_a_v1_store_naming_upgrade(v1_store):
    for verb in (["stats"], ["gc"], ["ls"], ["ingest", "x", "/dev/null"]):
        result = run_cli(verb[0], v1_store, *verb[1:], check=False)
        line = assert_one_line_error(result, contains=f"run 'chunkfs upgrade {v1_store}'")
        assert "store format version 1 is older than this chunkfs (2)" in line
    assert_one_line_error(run_cli("fsck", v1_store, check=False), code=EXIT_ERROR, contains="chunkfs upgrade")


@pytest.mark.mount
@requires_fuse
def test_mount_of_a_v1_store_fails_in_one_line_naming_upgrade(v1_store, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_cli("mount", v1_store, mountpoint, check=False)
    assert_one_line_error(result, contains="chunkfs upgrade")
    assert not is_mounted(mountpoint)


def test_upgrade_converts_in_place_and_fsck_finds_it_clean(v1_store):
    uuid = json.loads((v1_store / "chunkfs.json").read_text())["uuid"]
    result = run_cli("upgrade", v1_store)
    assert "upgraded from store format version 1 to 2: 9 files" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    settings = json.loads((v1_store / "chunkfs.json").read_text())
    assert (settings["format_version"], settings["uuid"]) == (FORMAT_VERSION, uuid)
    assert not (v1_store / ".upgrade").exists() and not (v1_store / ".upgrade-old").exists()
    assert run_cli("fsck", v1_store).returncode == EXIT_CLEAN
    stats = json.loads(run_cli("stats", "--json", v1_store).stdout)
    assert stats["files"] == 9 and stats["logical_bytes"] == sum(
        e["size"] for e in EXPECTED.values() if e["type"] == "file" and e["nlink"] == 1) + EXPECTED["hard-a"]["size"]
    assert_contents_match(v1_store)
    again = json.loads(run_cli("upgrade", "--json", v1_store).stdout)
    assert again["action"] == "current" and again["to_version"] == FORMAT_VERSION


def test_a_dictionary_trained_during_the_upgrade_moves_in_with_the_new_store(v1_store, monkeypatch):
    """The upgraded store compresses (the default), so it may train its dictionary while it is built."""
    monkeypatch.setattr(_compression, "TRAIN_SAMPLE_BYTES", 128 * 1024)
    monkeypatch.setattr(_compression, "MIN_SAMPLES", 8)
    upgrade_store(str(v1_store))
    assert os.listdir(v1_store / "dictionaries") == ["0001.zdict"]
    with ChunkStore.open(v1_store, readonly=True) as store:
        assert store.stats()["dictionary"] == 1
        assert check_store(store, verify_data=True).clean
    assert_contents_match(v1_store)


def test_upgrade_refuses_a_store_in_use(v1_store):
    fd = os.open(v1_store / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = tree_digest(v1_store)
        assert_one_line_error(run_cli("upgrade", v1_store, check=False), contains="in use")
        assert tree_digest(v1_store) == before and format_version(v1_store) == 1
    finally:
        os.close(fd)


def test_upgrade_of_what_is_not_a_store_is_one_line(tmp_path):
    assert_one_line_error(run_cli("upgrade", tmp_path, check=False), contains="not a chunkfs store")


@pytest.mark.slow
@pytest.mark.mount
@requires_fuse
def test_mounted_upgraded_store_shows_the_v1_tree(mount_factory, tmp_path):
    fs = mount_factory(mount=False)
    shutil.rmtree(fs.store)
    unpack_v1(tmp_path / "unpacked").rename(fs.store)
    run_cli("upgrade", fs.store)
    fs.mount()
    seen = {str(p.relative_to(fs.mountpoint)) for p in fs.mountpoint.rglob("*")}
    assert seen == set(EXPECTED)
    for rel, entry in EXPECTED.items():
        path = fs.mountpoint / rel
        st = path.lstat()
        assert stat.S_IMODE(st.st_mode) == entry["mode"], rel
        assert (st.st_uid, st.st_gid, st.st_nlink, st.st_ino) == (entry["uid"], entry["gid"], entry["nlink"],
                                                                 entry["ino"]), rel
        assert st.st_mtime_ns == entry["mtime_ns"], rel
        kind = entry["type"]
        assert {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO,
                "char": stat.S_ISCHR, "block": stat.S_ISBLK}[kind](st.st_mode), rel
        if kind == "file":
            assert st.st_size == entry["size"], rel
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], rel
        elif kind == "symlink":
            assert os.readlink(path) == entry["target"]
        elif kind in ("char", "block"):
            assert [os.major(st.st_rdev), os.minor(st.st_rdev)] == entry["rdev"], rel
        if kind != "symlink":
            assert {k: os.getxattr(path, k).hex() for k in os.listxattr(path)} == entry["xattrs"], rel
    assert (fs / "hard-a").stat().st_ino == (fs / "dir" / "hard-b").stat().st_ino
    sparse = fs / "sparse.bin"
    with open(sparse, "rb") as fh:
        fh.seek(EXPECTED["sparse.bin"]["size"] // 2)
        assert fh.read(1 << 20) == bytes(1 << 20)  # the middle of the hole reads as zeros
    (fs / "dir" / "new-after-upgrade").write_bytes(b"written by format 2\n")  # and it is writable
    fs.unmount()
    assert run_cli("fsck", fs.store).returncode == EXIT_CLEAN


# -- kill -9 ---------------------------------------------------------------------------


def start_upgrade(store: Path, pause_at: str | None = None) -> subprocess.Popen:
    env = cli_env()
    if pause_at:
        env[PAUSE_ENV] = pause_at
    return subprocess.Popen(CLI + ["upgrade", str(store)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_at_pause(store: Path, point: str) -> None:
    proc = start_upgrade(store, point)
    try:
        line = proc.stderr.readline()  # blocks until the upgrade reaches the point (or dies)
        assert line.strip() == f"chunkfs upgrade: paused at {point}", line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()


def assert_old_or_new_then_finish(store: Path, pristine: dict[str, str], committed: bool | None) -> None:
    """The store is the intact v1 one or a committed upgrade; a later upgrade completes it, clean."""
    if format_version(store) == 1:
        interrupted = (store / ".upgrade" / "READY").exists()
        if committed is not None:
            assert interrupted == committed
        if not interrupted:
            assert tree_digest(store) == pristine, "the v1 store changed before the upgrade committed"
        refused = run_cli("stats", store, check=False)
        assert_one_line_error(refused, contains="to finish it" if interrupted else "run 'chunkfs upgrade")
    else:
        assert committed is not False
    expected = ("finished" if (store / ".upgrade" / "READY").exists()
                else "current" if format_version(store) == FORMAT_VERSION else "upgraded")
    report = upgrade_store(store)
    assert format_version(store) == FORMAT_VERSION
    assert report.action == expected
    assert not (store / ".upgrade").exists() and not (store / ".upgrade-old").exists()
    assert run_fsck(str(store)).exit_code == EXIT_CLEAN
    assert_contents_match(store)


@pytest.mark.parametrize("point", BEFORE_COMMIT + AFTER_COMMIT)
def test_kill_at_each_step_leaves_the_old_or_the_new_store(tmp_path, point):
    store = unpack_v1(tmp_path)
    pristine = tree_digest(store)
    kill_at_pause(store, point)
    assert_old_or_new_then_finish(store, pristine, committed=point in AFTER_COMMIT)


@pytest.mark.slow
def test_kill_at_random_moments(tmp_path):
    """Random SIGKILLs spread over a whole run (timed first), each followed by the check and a finish."""
    store = unpack_v1(tmp_path / "timing")
    started = time.monotonic()
    run_cli("upgrade", store)
    duration = time.monotonic() - started
    rng = random.Random(int(os.environ.get("CHUNKFS_TEST_SEED", "14")))
    for round_ in range(10):
        store = unpack_v1(tmp_path / f"round-{round_}")
        pristine = tree_digest(store)
        proc = start_upgrade(store)
        time.sleep(rng.uniform(0.3, 1.1) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        assert_old_or_new_then_finish(store, pristine, committed=None)


# -- damage in the old store -------------------------------------------------------------

SMALL_TXT = b"hello, chunkfs version 1\n"  # small.txt: one chunk, the first record of the first pack


def test_a_damaged_chunk_stops_the_upgrade_and_leaves_the_old_store(v1_store):
    pack = v1_store / "packs" / "00000001.pack"
    data = bytearray(pack.read_bytes())
    where = data.index(SMALL_TXT)
    data[where] ^= 0xFF
    pack.write_bytes(bytes(data))
    before = tree_digest(v1_store)
    line = assert_one_line_error(run_cli("upgrade", v1_store, check=False), contains="do not match its SHA-256")
    assert hashlib.sha256(SMALL_TXT).hexdigest() in line
    assert tree_digest(v1_store) == before and format_version(v1_store) == 1
    assert not (v1_store / ".upgrade").exists()


def test_data_lost_before_the_upgrade_stays_lost(v1_store):
    """A format-1 tombstone (a chunk record in the reserved pack ffffffff) becomes a lost range, not zeros."""
    import lmdb  # noqa: PLC0415
    import struct  # noqa: PLC0415

    record = struct.Struct("<QI16sIQ")  # the format-1 chunk record
    env = lmdb.open(str(v1_store / "meta"), max_dbs=16)
    chunks = env.open_db(b"chunks")
    with env.begin(write=True) as txn:
        address = hashlib.sha256(SMALL_TXT).digest()
        refcount, length, checksum, _, _ = record.unpack(txn.get(address, db=chunks))
        txn.put(address, record.pack(refcount, length, checksum, 0xFFFFFFFF, 0), db=chunks)
    env.close()
    run_cli("upgrade", v1_store)
    result = run_fsck(str(v1_store))
    assert result.exit_code == EXIT_CLEAN and len(result.final.lost_data) == 1
    with ChunkStore.open(v1_store, readonly=True) as store:
        with pytest.raises(ChunkfsError, match="lost"):
            store.read(file_id_for(EXPECTED["small.txt"]["ino"]))
