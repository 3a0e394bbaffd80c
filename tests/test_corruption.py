"""Damaged chunk data and a damaged index, seen through a real daemon-mode mount.

A flipped byte, a truncated pack and a missing pack each make ``read()`` of
exactly the affected chunk ranges fail with EIO, while every other range of
the same file and every other file reads back intact; the daemon log names
the file (inode and path) and the chunk address.  ``chunkfs fsck`` reports
each case, ``--repair`` marks the lost ranges, a second fsck is clean apart
from that lost data, and after remounting the lost ranges still fail with
EIO (never zeros) while the rest reads.  A garbage or truncated LMDB file
makes ``chunkfs mount`` refuse with one line, leaving nothing mounted and no
daemon behind.
"""

from __future__ import annotations

import errno
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkfs.fs.namespace import ROOT_INO, Namespace
from chunkfs.fs.openfile import file_id_for
from chunkfs.store._ledger import find_chunk
from chunkfs.store._packs import Location
from chunkfs.store import ChunkStore
from conftest import assert_one_line_error, is_mounted, run_cli, store_holder

pytestmark = pytest.mark.mount

K = 64 * 1024
MKFS = ["--chunker", "fixed", "--avg-size", "64K"]


@dataclass(frozen=True)
class Chunk:
    offset: int
    length: int
    address: bytes
    location: Location


@dataclass
class Layout:
    """Files written through the mount, and where each of their chunks lies in which pack."""

    data: dict[str, bytes]
    chunks: dict[str, list[Chunk]]

    def damaged(self, name: str, hit) -> list[tuple[int, int]]:
        return [(c.offset, c.offset + c.length) for c in self.chunks[name] if hit(c)]


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def fs(mount_factory):
    """/a spans packs 1 and 2 (4 chunks, then 3 appended), /c is in pack 1, /b in pack 2."""
    fs = mount_factory(mkfs_args=MKFS)
    (fs / "a").write_bytes(rand(4 * K, 1))
    (fs / "c").write_bytes(rand(2 * K, 2))
    fs.unmount()
    with ChunkStore.open(fs.store) as store:  # what follows goes to a new pack
        store.packs.retire_active()
        store._ensure_active_pack()
    fs.mount()
    with open(fs / "a", "ab") as fh:
        fh.write(rand(3 * K - 100, 3))
    (fs / "b").write_bytes(rand(2 * K + 5, 4))
    fs.unmount()
    return fs


def layout(fs) -> Layout:
    """Read, before any damage, every file's bytes and chunk locations from the unmounted store."""
    with ChunkStore.open(fs.store, readonly=True) as store, store.index.read() as txn:
        chunks, data = {}, {}
        for name, ino in _inodes(store, txn).items():
            chunks[name] = [Chunk(e.offset, e.length, e.address,
                                  find_chunk(txn, store.index, e.address)[1].location)
                            for e in store.manifest(file_id_for(ino))]
            data[name] = store.read(file_id_for(ino))
    return Layout(data, chunks)


def _inodes(store, txn) -> dict[str, int]:
    return {e.name.decode(): e.ino for e in Namespace(store.fs_tables).entries(txn, ROOT_INO)}


def pack_path(fs, pack: int) -> Path:
    return fs.store / "packs" / f"{pack:08x}.pack"


def check_reads(fs, lay: Layout, bad: dict[str, list[tuple[int, int]]]) -> None:
    """Read every chunk range of every file through the mount: EIO exactly where ``bad`` says."""
    for name, chunks in lay.chunks.items():
        fd = os.open(fs / name, os.O_RDONLY)
        try:
            for c in chunks:
                if (c.offset, c.offset + c.length) in bad.get(name, []):
                    with pytest.raises(OSError) as info:
                        os.pread(fd, c.length, c.offset)
                    assert info.value.errno == errno.EIO, (name, c.offset)
                else:
                    got = os.pread(fd, c.length, c.offset)
                    assert got == lay.data[name][c.offset:c.offset + c.length], (name, c.offset)
        finally:
            os.close(fd)
        assert os.stat(fs / name).st_size == len(lay.data[name])


def fsck_json(fs, *flags) -> tuple[int, dict]:
    result = run_cli("fsck", "--json", fs.store, *flags, check=False)
    return result.returncode, json.loads(result.stdout)


def log_names_file_and_chunk(fs, name: str, address: bytes) -> None:
    ino = os.stat(fs / name).st_ino
    lines = [ln for ln in fs.log_text().splitlines() if address.hex() in ln and f"inode {ino} (/{name})" in ln]
    assert lines, f"no log line names inode {ino} (/{name}) and chunk {address.hex()}:\n{fs.log_text()}"


def damage_cycle(fs, lay: Layout, bad: dict[str, list[tuple[int, int]]], kind: str, verify: bool) -> None:
    """Through the mount, then fsck, repair, fsck again, and the mount once more.

    While damaged, the mount also writes a new file: new chunks must not land
    where the damage is (say, inside a truncated pack) and must survive the repair.
    """
    addresses = [c.address for name, spans in bad.items() for c in lay.chunks[name]
                 if (c.offset, c.offset + c.length) in spans]
    fs.expect_log(*[rf"chunk {a.hex()} .*is corrupt" for a in addresses], r"pack [0-9a-f]{8} is (missing|truncated)")
    fs.mount()
    check_reads(fs, lay, bad)
    fresh = rand(3 * K + 7, 77)
    (fs / "new").write_bytes(fresh)
    for name in bad:
        first = next(c for c in lay.chunks[name] if (c.offset, c.offset + c.length) in bad[name])
        log_names_file_and_chunk(fs, name, first.address)
    code, out = fsck_json(fs, *(["--verify-data"] if verify else []))  # read-only, while mounted
    assert code == 4 and out["in_use"] and kind in {f["kind"] for f in out["findings"]}, out
    fs.unmount()
    flags = ["--verify-data"] if verify else []
    code, out = fsck_json(fs, *flags)
    assert code == 4 and kind in {f["kind"] for f in out["findings"]}
    unreadable = {f["name"]: [tuple(r) for r in f["ranges"]] for f in out["unreadable_files"]}
    assert unreadable == {f"/{name}": _merge(spans) for name, spans in bad.items()}
    code, out = fsck_json(fs, "--repair", *flags)
    assert code == 1, out
    code, out = fsck_json(fs, "--verify-data")
    assert code == 0 and {f["category"] for f in out["findings"]} == {"lost-data"}, out
    assert {f["files"][0]["name"] for f in out["findings"]} == {f"/{name}" for name in bad}
    fs.expect_log(r"is corrupt: its data was lost")  # tombstones: derived addresses
    fs.mount()
    check_reads(fs, lay, bad)  # the lost ranges still fail: EIO, never zeros
    assert (fs / "new").read_bytes() == fresh
    fs.unmount()


def _merge(spans):
    out = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@pytest.mark.slow
def test_flipped_byte_fails_exactly_its_chunk(fs):
    lay = layout(fs)
    victim = lay.chunks["a"][1]
    with open(pack_path(fs, victim.location.pack), "r+b") as fh:
        fh.seek(victim.location.offset + 1234)
        byte = fh.read(1)
        fh.seek(victim.location.offset + 1234)
        fh.write(bytes([byte[0] ^ 0x01]))
    damage_cycle(fs, lay, {"a": [(victim.offset, victim.offset + victim.length)]}, "corrupt-chunk", verify=True)


@pytest.mark.slow
def test_truncated_pack_fails_only_the_cut_chunk(fs):
    lay = layout(fs)  # pack 2 is the one the mount appends to: new chunks must go elsewhere
    last = max((c for cs in lay.chunks.values() for c in cs if c.location.pack == 2),
               key=lambda c: c.location.offset)
    os.truncate(pack_path(fs, 2), last.location.offset + last.length // 2)
    bad = {name: lay.damaged(name, lambda c: c.address == last.address) for name in lay.chunks}
    damage_cycle(fs, lay, {n: s for n, s in bad.items() if s}, "truncated-chunk", verify=False)


@pytest.mark.slow
def test_missing_pack_fails_the_chunks_it_held(fs):
    lay = layout(fs)
    os.unlink(pack_path(fs, 2))
    bad = {name: lay.damaged(name, lambda c: c.location.pack == 2) for name in lay.chunks}
    assert bad["a"] and len(bad["a"]) < len(lay.chunks["a"]) and not bad["c"]
    damage_cycle(fs, lay, {n: s for n, s in bad.items() if s}, "missing-pack", verify=False)


# -- a damaged index ---------------------------------------------------------------------


def daemons_of(store: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"chunkfs.daemon" in cmdline and str(store).encode() in cmdline:
                pids.append(int(entry))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_index_makes_mount_refuse_with_one_line(mount_factory, damage):
    fs = mount_factory(mkfs_args=MKFS)
    for n in range(200):
        (fs / f"f{n}").write_bytes(rand(5000, n))
    fs.unmount()
    index = fs.store / "meta" / "data.mdb"
    if damage == "garbage":
        index.write_bytes(rand(index.stat().st_size, 99))
    else:
        os.truncate(index, index.stat().st_size // 3)
    fs.expect_log(r"mount failed: .*metadata index")
    result = run_cli("mount", fs.store, fs.mountpoint, check=False)
    assert_one_line_error(result, code=1, contains="metadata index")
    assert not is_mounted(fs.mountpoint)
    assert store_holder(fs.store) is None and daemons_of(fs.store) == []
    assert "Traceback" not in fs.log_text()
    result = run_cli("fsck", fs.store, check=False)
    assert_one_line_error(result, code=8, contains="metadata index")
