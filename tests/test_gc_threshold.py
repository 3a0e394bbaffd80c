"""gc moves no more than it frees: packs are rewritten only when enough of their disk space would come back.

Dead records are punched out of their packs as they die, so a pack with a
few dead chunks already holds little more than its live bytes; rewriting it
would copy all of them to give back a few blocks.  These tests hold gc to
the rule of chunkfs/store/_compaction.py and to honest figures: bytes moved
are what the copies wrote, bytes reclaimed are disk blocks (st_blocks) held
before less those held after.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading

import pytest

import chunkfs.store._packs as pack_files
from chunkfs.fsck import check_store
from chunkfs.store import ChunkStore
from conftest import run_cli

MIB = 1 << 20


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def small(seed: int) -> int:
    return 4096 + seed * 97 % 12000


def test_gc_after_editing_10_small_files_in_a_150mb_store_moves_no_more_than_it_reclaims(tmp_path):
    """The acceptance test of issue 14: before, this gc rewrote ~150 MB to free ~20 KiB."""
    big, smalls = range(1000, 1144), range(200)
    with ChunkStore.create(tmp_path / "store") as store:
        for seed in big:
            store.ingest(f"big{seed}", data(seed, MIB))
        for seed in smalls:
            store.ingest(f"small{seed}", data(seed, small(seed)))
        assert store.stats()["stored_bytes"] > 145 * MIB
        for seed in smalls[:10]:  # edit: a few bytes changed in the middle, stored again
            edited = bytearray(data(seed, small(seed)))
            edited[len(edited) // 2: len(edited) // 2 + 16] = b"edited by a test"
            store.ingest(f"small{seed}", bytes(edited))
        assert store.stats()["garbage_bytes"] > 0
        disk_before = store.packs.disk_bytes()

        report = store.gc()

        assert report["bytes_moved"] <= report["bytes_reclaimed"], report
        assert report["bytes_moved"] < 1 * MIB, report  # nowhere near the store's size
        assert disk_before - store.packs.disk_bytes() == report["bytes_reclaimed"]
        for seed in smalls[:10]:
            assert store.read(f"small{seed}")[len(data(seed, small(seed))) // 2:][:16] == b"edited by a test"
        for seed in smalls[10:]:
            assert store.read(f"small{seed}") == data(seed, small(seed))
        for seed in big[::12]:
            assert store.read(f"big{seed}") == data(seed, MIB)
        check = check_store(store, verify_data=True)
        assert check.clean, check.findings


def test_a_mostly_dead_pack_is_rewritten_and_its_space_comes_back(tmp_path):
    with ChunkStore.create(tmp_path / "store") as store:
        for seed in range(20):
            store.ingest(f"f{seed}", data(seed, MIB))
        for seed in range(19):
            store.delete(f"f{seed}")
        held_before = store.packs.disk_bytes()
        assert held_before > 2 * MIB  # 1 MiB live, and what punching could not give back

        report = store.gc()

        assert report["packs_rewritten"] == 1 and report["packs_removed"] == 1
        assert 0 < report["bytes_moved"] <= report["bytes_reclaimed"]
        assert report["bytes_moved"] >= MIB and report["packs_left"] == 0
        assert store.packs.disk_bytes() == held_before - report["bytes_reclaimed"]
        assert store.packs.disk_bytes() < 1.1 * MIB
        assert store.stats()["garbage_bytes"] == 0
        assert store.read("f19") == data(19, MIB)
        check = check_store(store, verify_data=True)
        assert check.clean, check.findings


def test_a_wholly_dead_pack_is_removed_without_copying(tmp_path, monkeypatch):
    monkeypatch.setattr(pack_files, "PACK_TARGET_SIZE", 2 * MIB)
    with ChunkStore.create(tmp_path / "store") as store:
        for seed in range(6):  # three packs of two files
            store.ingest(f"f{seed}", data(seed, MIB))
        store.delete("f0")
        store.delete("f1")
        report = store.gc()
        assert report["packs_removed"] == 1 and report["packs_rewritten"] == 0
        assert report["bytes_moved"] == 0 and report["bytes_reclaimed"] > 0
        assert all(store.read(f"f{seed}") == data(seed, MIB) for seed in range(2, 6))
        assert check_store(store).clean


def test_a_wholly_dead_pack_costs_gc_no_flush(tmp_path, monkeypatch):
    """Nothing to copy, nothing to make durable: the commit dropping the pack and the unlink are all."""
    monkeypatch.setattr(pack_files, "PACK_TARGET_SIZE", 2 * MIB)
    with ChunkStore.create(tmp_path / "store") as store:
        for seed in range(6):
            store.ingest(f"f{seed}", data(seed, MIB))
        store.delete("f0")
        store.delete("f1")
        store.sync()
        flushes = []
        monkeypatch.setattr(store.packs.backend, "sync", lambda packs: flushes.append("packs"))
        monkeypatch.setattr(store.index, "sync", lambda: flushes.append("index"))
        report = store.gc()
        assert report["packs_removed"] == 1 and report["packs_rewritten"] == 0
        assert flushes == []


def test_recovery_forgets_a_wholly_dead_pack_whose_unlink_got_to_the_disk_first(tmp_path, monkeypatch):
    """gc's unlink of a wholly dead pack may be durable before the commit that dropped its record."""
    monkeypatch.setattr(pack_files, "PACK_TARGET_SIZE", 2 * MIB)
    path = tmp_path / "store"
    with ChunkStore.create(path) as store:
        for seed in range(6):
            store.ingest(f"f{seed}", data(seed, MIB))
        store.delete("f0")
        store.delete("f1")
        first = store.packs.existing()[0]
    os.unlink(path / "packs" / f"{first:08x}.pack")  # as if the commit was lost and the unlink was not
    with ChunkStore.open(path) as store:
        assert store.recovery.dropped_packs == 1 and store.recovery.missing_packs == []
        assert first not in store.packs.existing()
        assert all(store.read(f"f{seed}") == data(seed, MIB) for seed in range(2, 6))
        check = check_store(store)
        assert check.clean and check.garbage_bytes == 0, check.findings


def test_gc_holds_the_store_lock_across_no_flush(tmp_path, monkeypatch):
    """Writers (and the event loop's metadata changes) must not wait for gc's fdatasync of its copies."""
    monkeypatch.setattr(pack_files, "PACK_TARGET_SIZE", 2 * MIB)
    with ChunkStore.create(tmp_path / "store") as store:
        for seed in range(6):
            store.ingest(f"f{seed}", data(seed, MIB))
        store.delete("f0")  # its pack is half dead: compacting it copies f1 (f0's blocks were punched
        # already, so only a threshold of 0 makes gc do it)
        real_sync = store.packs.backend.sync
        free = []

        def sync_and_look(packs):
            probe = threading.Thread(target=lambda: free.append(store._lock.acquire(timeout=10)
                                                                and store._lock.release() is None))
            probe.start()
            probe.join()
            real_sync(packs)

        monkeypatch.setattr(store.packs.backend, "sync", sync_and_look)
        report = store.gc(min_dead_fraction=0)
        assert report["packs_rewritten"] == 1
        assert free and all(free), free  # every flush gc made left the lock to others
        assert store.read("f1") == data(1, MIB)
        check = check_store(store)
        assert check.clean and check.garbage_bytes == 0, check.findings


def test_a_chunk_that_dies_while_gc_flushes_its_copy_is_dead_space(tmp_path, monkeypatch):
    """gc re-checks each chunk when it moves it: the copy of one deleted meanwhile is dead, not live."""
    monkeypatch.setattr(pack_files, "PACK_TARGET_SIZE", 2 * MIB)
    with ChunkStore.create(tmp_path / "store") as store:
        for seed in range(6):
            store.ingest(f"f{seed}", data(seed, MIB))
        store.delete("f0")
        real_sync = store.packs.backend.sync
        deleted = []

        def sync_while_deleting(packs):
            if not deleted:
                deleted.append(threading.Thread(target=store.delete, args=("f1",)))
                deleted[0].start()
                deleted[0].join(20)
            real_sync(packs)

        monkeypatch.setattr(store.packs.backend, "sync", sync_while_deleting)
        report = store.gc(min_dead_fraction=0)
        assert report["packs_rewritten"] >= 1 and deleted
        assert not deleted[0].is_alive()  # the delete did not wait for gc's flush
        assert store.stats()["garbage_bytes"] > 0  # f1's copies: dead, not live
        assert all(store.read(f"f{seed}") == data(seed, MIB) for seed in range(2, 6))
        check = check_store(store)
        assert check.clean, check.findings
        store.gc(min_dead_fraction=0)
        check = check_store(store)
        assert check.clean and check.garbage_bytes == 0, check.findings


@pytest.mark.parametrize("seed", range(4))
def test_no_gc_run_moves_more_than_it_reclaims(tmp_path, monkeypatch, seed):
    """Random edits and deletes over many small packs, gc between rounds: the rule holds in every run."""
    monkeypatch.setattr(pack_files, "PACK_TARGET_SIZE", MIB)
    rng = random.Random(seed)
    model: dict[str, bytes] = {}
    with ChunkStore.create(tmp_path / "store", avg_size="8K", min_size="2K", max_size="32K") as store:
        rewritten = 0
        for rnd in range(6):
            for _ in range(30):
                name = f"f{rng.randrange(60)}"
                if name in model and rng.random() < 0.4:
                    store.delete(name)
                    del model[name]
                else:
                    model[name] = rng.randbytes(rng.randrange(1000, 200_000))
                    store.ingest(name, model[name])
            report = store.gc()
            assert report["bytes_moved"] <= report["bytes_reclaimed"], (rnd, report)
            rewritten += report["packs_rewritten"]
        assert rewritten > 0  # the rule was put to the test, not only met by doing nothing
        assert all(store.read(name) == content for name, content in model.items())
        check = check_store(store, verify_data=True)
        assert check.clean, check.findings


# -- chunkfs gc -------------------------------------------------------------------------------


@pytest.fixture
def mostly_dead(tmp_path):
    path = tmp_path / "store"
    with ChunkStore.create(path) as store:
        for seed in range(10):
            store.ingest(f"f{seed}", data(seed, 500_000))
        for seed in range(9):
            store.delete(f"f{seed}")
    return path


def test_gc_command_prints_one_line_with_both_figures(mostly_dead):
    result = run_cli("gc", mostly_dead)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    match = re.fullmatch(r"gc: removed 1 pack \(1 rewritten\), moved ([\d.]+) KiB in (\d+) live chunks, "
                         r"reclaimed ([\d.]+) (KiB|MiB)", lines[0])
    assert match, lines
    moved, reclaimed = float(match[1]) * 1024, float(match[3]) * (1024 if match[4] == "KiB" else MIB)
    assert 500_000 <= moved <= reclaimed


def test_gc_command_json(mostly_dead):
    report = json.loads(run_cli("gc", "--json", mostly_dead).stdout)
    assert report["packs_removed"] == report["packs_rewritten"] == 1
    assert 500_000 <= report["bytes_moved"] <= report["bytes_reclaimed"]
    assert report["threshold"] == 0.5 and report["packs_left"] == 0 and report["skipped_corrupt"] == []
    again = json.loads(run_cli("gc", "--json", mostly_dead).stdout)  # nothing left to do
    assert again["packs_removed"] == again["bytes_moved"] == again["bytes_reclaimed"] == 0


def test_gc_command_help_explains_the_threshold():
    out = run_cli("gc", "--help").stdout
    assert "--json" in out
    assert "at least half of the disk space" in " ".join(out.split())
    assert "never writes (moves) more bytes than it frees" in " ".join(out.split())
