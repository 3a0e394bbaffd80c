"""Kill -9 at random moments: nothing closed or fsync'ed is lost, recovery and gc leave a clean store.

* ``test_sigkill_rounds``: the mount-level crash test (benchmarks/crash_soak.py
  runs the same rounds, many more of them).  Its summary line, printed
  whatever the outcome, says how many rounds ran and what each one checked.
* ``test_stream_broken_by_random_write_then_kill``: the window where a
  sequential stream was committed by a random write and then the daemon died.
* ``test_recovery_is_logged_once``: what the mount logs after a crash.
* ``test_store_survives_kill_in_ingest_delete_gc_loop``: the same at the
  library level, with gc in the loop.
* ``test_gc_killed_at_every_step``: a kill after each commit / pack append of
  a gc in turn.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, cli_env, wait_until

sys.path.insert(0, str(REPO))
from benchmarks import crash_workload as cw  # noqa: E402
from benchmarks.crash_soak import CrashRig  # noqa: E402
from chunkfs.fs.openfile import file_id_for  # noqa: E402
from chunkfs.fsck import check_store  # noqa: E402
from chunkfs.store import ChunkStore  # noqa: E402

CRASH_ROUNDS = int(os.environ.get("CHUNKFS_CRASH_ROUNDS", "50"))
MiB = 1024 * 1024


# -- the mount-level rounds ---------------------------------------------------------------------


@pytest.mark.mount
@pytest.mark.slow
def test_sigkill_rounds(tmp_path, capsys):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent")
    lines: list[str] = []
    rig = CrashRig(str(tmp_path), seed=int(os.environ.get("CHUNKFS_CRASH_SEED", "20250101")),
                   max_kill_delay=0.6, log=lines.append)
    try:
        summary = rig.run(CRASH_ROUNDS)
    finally:
        rig.cleanup()
        with capsys.disabled():
            print("\n" + "\n".join(lines[-3:]))
            done = len(rig.summary.rounds)
            print(rig.summary.line() if done == CRASH_ROUNDS else
                  f"crash test: FAILED in round {done + 1} (seed {rig.seed}) after {done} clean rounds")
    assert len(summary.rounds) == CRASH_ROUNDS


# -- one precise window --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.mount
def test_stream_broken_by_random_write_then_kill(mounted_fs):
    """Stream 2 MiB, pwrite into it (commits the stream), write more, kill: the streamed version survives."""
    streamed = random.Random(5).randbytes(2 * MiB)
    path = mounted_fs / "big"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    for i in range(0, len(streamed), 256 * 1024):
        os.write(fd, streamed[i:i + 256 * 1024])
    os.pwrite(fd, b"x" * 5000, 1000)  # breaks the stream: what streamed is committed first
    os.write(fd, b"y" * 300_000)  # after the committed end: staged
    ino = os.fstat(fd).st_ino
    mounted_fs.kill()
    try:
        os.close(fd)
    except OSError:
        pass  # ENOTCONN: the daemon is gone
    mounted_fs.mount()
    assert os.stat(path).st_size == len(streamed)
    assert path.read_bytes() == streamed
    with ChunkStore.open(mounted_fs.store, readonly=True) as store:
        assert store.size(file_id_for(ino)) == len(streamed)
    log = mounted_fs.log_text()
    assert f"inode {ino}, whose uncommitted writes were discarded, is /big" in log
    assert "recovered after an unclean shutdown: discarded uncommitted writes of 1 file(s)" in log


@pytest.mark.slow
@pytest.mark.mount
def test_recovery_is_logged_once(mounted_fs):
    """One INFO summary after a crash (plus a line per discarded file); nothing after a clean unmount."""
    m = mounted_fs.mountpoint
    (m / "d").mkdir()
    (m / "d" / "kept").write_bytes(b"closed, so committed")
    staged = os.open(m / "d" / "staged", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(staged, b"committed by fsync")
    os.fsync(staged)
    os.pwrite(staged, b"never committed", 3)
    orphan = os.open(m / "orphan", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(orphan, os.urandom(100_000))
    os.fsync(orphan)
    os.unlink(m / "orphan")
    mounted_fs.kill()
    for fd in (staged, orphan):
        try:
            os.close(fd)
        except OSError:
            pass
    mounted_fs.mount()
    assert (m / "d" / "kept").read_bytes() == b"closed, so committed"
    assert (m / "d" / "staged").read_bytes() == b"committed by fsync"
    assert sorted(os.listdir(m)) == ["d"]
    summary = [ln for ln in mounted_fs.log_text().splitlines() if "recovered after an unclean shutdown" in ln]
    assert len(summary) == 1 and " INFO " in summary[0], summary
    assert "discarded uncommitted writes of 1 file(s)" in summary[0]
    assert "purged 1 file(s) unlinked while open" in summary[0]
    assert "is /d/staged" in mounted_fs.log_text()
    assert mounted_fs.stats()["files"] == 2
    mounted_fs.remount()
    again = [ln for ln in mounted_fs.log_text().splitlines() if "recovered after an unclean shutdown" in ln]
    assert again == summary


# -- the library -------------------------------------------------------------------------------

STORE_LOOP = textwrap.dedent("""
    import hashlib, json, os, random, sys
    from chunkfs.store import ChunkStore
    store_path, journal_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    pool = [random.Random(i).randbytes(40_000) for i in range(6)]
    journal = open(journal_path, "a", buffering=1)
    def note(kind, name, data):
        h = None if data is None else hashlib.sha256(data).hexdigest()
        journal.write(json.dumps({"k": kind, "p": name, "h": h}) + "\\n")
    with ChunkStore.open(store_path) as store:
        names = [n for n in store.list_files()]
        journal.write(json.dumps({"k": "ready"}) + "\\n")
        n = 0
        while True:
            n += 1
            roll = rng.random()
            if roll < 0.55 or not names:
                name = f"f{seed}-{n}" if rng.random() < 0.7 or not names else rng.choice(names)
                parts = [rng.choice(pool) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 300_000))
                         for _ in range(rng.randint(0, 6))]
                data = b"".join(parts)
                note("m", name, data)
                store.ingest(name, data)
                note("s", name, data)
                if name not in names:
                    names.append(name)
            elif roll < 0.9:
                name = names.pop(rng.randrange(len(names)))
                note("m", name, None)
                store.delete(name)
                note("s", name, None)
            elif roll < 0.97:
                store.gc(min_dead_fraction=rng.choice((0.0, 0.3)))
            else:
                store.sync()
""")


def _store_state(store) -> dict:
    return {name: cw.digest(store.read(name)) for name in store.list_files()}


@pytest.mark.slow
def test_store_survives_kill_in_ingest_delete_gc_loop(tmp_path, capsys):
    path = tmp_path / "store"
    ChunkStore.create(path).close()
    rng = random.Random(11)
    state: dict = {}
    rounds = 12
    for n in range(rounds):
        journal = tmp_path / f"journal-{n}"
        proc = subprocess.Popen([sys.executable, "-c", STORE_LOOP, str(path), str(journal), str(n)],
                                cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True)
        assert wait_until(lambda: journal.exists() and journal.stat().st_size > 0 or proc.poll() is not None, 30)
        time.sleep(rng.uniform(0.05, 0.8))
        assert proc.poll() is None, proc.stderr.read()
        proc.kill()
        proc.wait()
        proc.stderr.close()
        with ChunkStore.open(path, readonly=True) as store:
            report = check_store(store)
            assert report.clean, f"round {n}, before recovery: {report.findings}"
        with ChunkStore.open(path) as store:
            assert check_store(store).clean
            allowed = cw.allowed_states(state, cw.read_journal(str(journal)))
            state = _store_state(store)
            for name in allowed.keys() | state.keys():
                assert state.get(name) in allowed.get(name, {None}), f"round {n}: {name}"
            store.gc(min_dead_fraction=0)  # every pack with a dead record: compaction itself is under test
            report = check_store(store)
            assert report.clean and report.garbage_bytes == 0, f"round {n} after gc: {report}"
    with capsys.disabled():
        print(f"\nstore crash test: {rounds} rounds of kill -9 during ingest/delete/gc; each checked: "
              f"check_store clean before and after recovery, every acknowledged ingest/delete kept, "
              f"0 garbage bytes after gc ({len(state)} files at the end)")


GC_CRASH = textwrap.dedent("""
    import os, sys
    import chunkfs.store._packs
    from chunkfs.store import TO_END, ChunkStore, Patch
    chunkfs.store._packs.PACK_TARGET_SIZE = 150_000  # small packs, so gc has to start new ones
    where, nth = sys.argv[2], int(sys.argv[3])
    with ChunkStore.create(sys.argv[1], chunker="fixed", avg_size="16K") as store:
        for i in range(12):
            store.ingest(f"f{i}", bytes([i]) * 60_000 + os.urandom(20_000))
        for i in range(0, 12, 2):
            store.delete(f"f{i}")
        seen = {"n": 0}
        def crash_after(fn):
            def wrapped(*args, **kwargs):
                result = fn(*args, **kwargs)
                seen["n"] += 1
                if seen["n"] == nth:
                    os._exit(42)  # killed inside gc, right after its nth commit or pack append
                return result
            return wrapped
        if where == "inflight":  # a writer's chunks sit unregistered in the active pack while gc runs
            refs = [store.put_chunk(bytes([200 + k]) * 16384) for k in range(3)]
            store.gc(min_dead_fraction=0)  # every pack with a dead record: compaction itself is under test
            store.commit_file("late", [Patch(0, TO_END, refs)], 3 * 16384)
            os._exit(42)
        if where == "commit":
            store.write_txn = crash_after(store.write_txn)
        else:
            store.packs.append = crash_after(store.packs.append)
        store.gc(min_dead_fraction=0)  # every pack with a dead record: compaction itself is under test
    sys.exit(0)
""")


def test_gc_with_a_writer_in_flight_then_killed(tmp_path):
    """gc starting a new pack must not leave a writer's unregistered chunks beyond the old pack's end."""
    path = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", GC_CRASH, str(path), "inflight", "0"], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 42, proc.stderr
    with ChunkStore.open(path, readonly=True) as store:
        assert check_store(store).clean, check_store(store).findings
    with ChunkStore.open(path) as store:
        assert store.read("late") == b"".join(bytes([200 + k]) * 16384 for k in range(3))
        assert check_store(store).clean


@pytest.mark.slow
@pytest.mark.parametrize("where", ["commit", "append"])
def test_gc_killed_at_every_step(tmp_path, where):
    """Kill a gc after each of its commits (or pack appends) in turn: recovery always leaves a clean store.

    Before the fix in maintenance._make_room, a kill right after gc started a
    new pack in the middle of copying left the old pack's accounting wrong.
    """
    nth = 0
    while True:
        nth += 1
        path = tmp_path / f"store-{nth}"
        proc = subprocess.run([sys.executable, "-c", GC_CRASH, str(path), where, str(nth)], cwd=REPO,
                              env=cli_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 42), proc.stderr
        with ChunkStore.open(path, readonly=True) as store:
            report = check_store(store)
            assert report.clean, f"killed after {where} {nth}, before recovery: {report.findings}"
        with ChunkStore.open(path) as store:
            assert check_store(store).clean
            for i in range(1, 12, 2):
                assert store.read(f"f{i}")[:60_000] == bytes([i]) * 60_000
            store.gc(min_dead_fraction=0)  # every pack with a dead record: compaction itself is under test
            report = check_store(store)
            assert report.clean and report.garbage_bytes == 0, report
        if proc.returncode == 0:  # gc finished before the nth step: every step was covered
            break
    assert nth > 3


# -- truncate by path racing the last release -------------------------------------------------------


def test_truncate_by_path_during_the_last_release_is_committed(tmp_path):
    """close() returns before the kernel's RELEASE is handled; a truncate(2) arriving meanwhile must stick.

    It used to land in the open file's staged data just before the release
    dropped that data as uncommitted: the truncate returned 0 and was lost.
    """
    from chunkfs.fs import Caller, FsCore, SetAttr  # noqa: PLC0415
    from chunkfs.fs.namespace import ROOT_INO  # noqa: PLC0415

    with ChunkStore.create(tmp_path / "store") as store:
        core = FsCore(store)
        fh, inode = core.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, Caller(0, 0))
        core.write(fh, 0, b"x" * 100_000)
        core.flush(fh)  # close(2): committed
        commit_logged = core.files._commit_logged

        def then_truncate(oi):  # the release's backstop commit has run; truncate(2) comes in now
            commit_logged(oi)
            core.files._commit_logged = commit_logged
            core.setattr(inode.ino, SetAttr(size=10))

        core.files._commit_logged = then_truncate
        core.release(fh)
        assert store.size(file_id_for(inode.ino)) == 10
        assert core.getattr(inode.ino).size == 10
        core.close()


DIE_WITHOUT_SYNC = textwrap.dedent("""
    import os, sys
    from chunkfs.store import ChunkStore
    store = ChunkStore.open(sys.argv[1])
    store.ingest("unsynced", bytes(range(256)) * 4096)  # committed, never flushed
    os.kill(os.getpid(), 9)
""")


def test_a_writer_after_one_that_died_flushes_its_packs_before_the_index(tmp_path, monkeypatch):
    """A writer killed before its sync leaves pack bytes only in the page cache, and committed index records
    naming them: the next writer's first sync would make those records durable before the bytes (blob
    before index).  So it flushes every pack when it finds a predecessor that did not close, and only then."""
    from chunkfs.store._local_backend import LocalBackend

    path = tmp_path / "store"
    ChunkStore.create(path).close()
    assert (path / "lock").read_text() == "", "a clean close leaves no pid behind"
    flushes = []
    real = LocalBackend.sync_all
    monkeypatch.setattr(LocalBackend, "sync_all", lambda self: flushes.append(self.dir) or real(self))
    with ChunkStore.open(path):
        pass
    assert flushes == []  # a clean predecessor: nothing to flush for it
    proc = subprocess.run([sys.executable, "-c", DIE_WITHOUT_SYNC, str(path)], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dead = (path / "lock").read_text().strip()
    assert dead.isdigit()
    with ChunkStore.open(path) as store:
        assert flushes == [str(path / "packs")]
        assert store.recovery.flushed_after == dead
        assert store.read("unsynced") == bytes(range(256)) * 4096
        assert check_store(store).clean
    with ChunkStore.open(path):
        assert len(flushes) == 1  # closed cleanly in between
