"""chunkfs fsck: a store damaged in each way fsck knows is reported, repaired, and then checks clean.

Stores are built with the library (ChunkStore + FsCore, no mount) and damaged
by editing their LMDB records and pack files directly.  Every test runs the
real command (``chunkfs.cli.main``) and reads its ``--json`` output; the
repaired filesystem is then used through FsCore, to see that what fsck
promises holds: lost ranges fail with EIO, everything else reads back.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import random
import stat
import struct
import subprocess
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkfs import cli
from chunkfs.fs import namespace as nsrec
from chunkfs.store import _index as ix
from chunkfs.errors import ChunkCorruptError
from chunkfs.fs import ROOT_INO, Caller, FsCore
from chunkfs.fs.namespace import Namespace
from chunkfs.fs.openfile import file_id_for
from chunkfs.store._ledger import chunk_key, find_chunk
from chunkfs.store._packs import RECORD, RecordHeader
from chunkfs.store import ChunkStore

from conftest import CLI, REPO, assert_one_line_error, cli_env, requires_fuse, run_cli

USER = Caller(0, 0, 0o022)
CHUNK = 16 * 1024


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Built:
    """A closed store holding /dir/a (7 chunks, pack 1), /b with hard link /dir/b-link (3 chunks, pack 2),
    /dir/sub/ (empty), /link -> dir/a."""

    path: Path
    a: int
    b: int
    dir: int
    sub: int
    data_a: bytes
    data_b: bytes


def write_file(fs: FsCore, parent: int, name: bytes, data: bytes) -> int:
    fh, inode = fs.create(parent, name, 0o644, os.O_WRONLY, USER)
    fs.write(fh, 0, data)
    fs.flush(fh)
    fs.release(fh)
    return inode.ino


@pytest.fixture
def built(tmp_path) -> Built:
    path = tmp_path / "store"
    data_a, data_b = rand(7 * CHUNK - 1000, 1), rand(3 * CHUNK - 10, 2)
    with ChunkStore.create(path, chunker="fixed", avg_size="16K") as store:
        fs = FsCore(store, root_uid=0, root_gid=0)
        d = fs.mkdir(ROOT_INO, b"dir", 0o755, USER).ino
        sub = fs.mkdir(d, b"sub", 0o755, USER).ino
        a = write_file(fs, d, b"a", data_a)
        store.packs.retire_active()  # /b goes to a pack of its own
        b = write_file(fs, ROOT_INO, b"b", data_b)
        fs.link(b, d, b"b-link")
        fs.symlink(ROOT_INO, b"link", b"dir/a", USER)
        fs.close()
    return Built(path, a, b, d, sub, data_a, data_b)


# -- running fsck ----------------------------------------------------------------------


def fsck(path, *flags, code: int | None = None, capsys) -> dict:
    """``chunkfs fsck --json PATH FLAGS``; returns the parsed output (and checks the exit code if given)."""
    status = cli.main(["fsck", "--json", str(path), *flags])
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == status
    if code is not None:
        assert status == code, json.dumps(out, indent=1)
    return out


def kinds(out: dict, category: str = "damage") -> set[str]:
    return {f["kind"] for f in out["findings"] if f["category"] == category}


def finding(out: dict, kind: str) -> dict:
    found = [f for f in out["findings"] if f["kind"] == kind]
    assert found, f"no {kind} finding in {json.dumps(out['findings'], indent=1)}"
    return found[0]


def repair_cycle(path, expect: set[str], capsys, verify: bool = False) -> dict:
    """fsck finds ``expect`` (exit 4), --repair fixes all of it (exit 1), a second fsck is clean (exit 0)."""
    flags = ["--verify-data"] if verify else []
    out = fsck(path, *flags, code=4, capsys=capsys)
    assert expect <= kinds(out), kinds(out)
    repaired = fsck(path, "--repair", *flags, code=1, capsys=capsys)
    assert all(f["repaired"] for f in repaired["findings"] if f["category"] == "damage")
    again = fsck(path, "--verify-data", code=0, capsys=capsys)
    assert not kinds(again)
    return again


def edit(path, fn) -> None:
    """Run ``fn(store, txn)`` in one write transaction of the (unmounted) store."""
    with ChunkStore.open(path) as store:
        store.index.write(lambda txn: fn(store, txn))


def manifest(path, ino: int):
    with ChunkStore.open(path, readonly=True) as store:
        return store.manifest(file_id_for(ino))


def chunk_record(store, txn, address: bytes):
    """(chunk id, chunk record) of the stored chunk ``address``."""
    return find_chunk(txn, store.index, address)


def chunk_location(path, address: bytes):
    with ChunkStore.open(path, readonly=True) as store, store.index.read() as txn:
        return chunk_record(store, txn, address)[1].location


def rewrite_manifest(store, txn, fkey: int, keep) -> None:
    """Rewrite a file's manifest runs with only the entries ``keep(entry)`` accepts, nothing else changed."""
    entries = store.manifest_index.delete_runs(txn, fkey)
    store.manifest_index.write_runs(txn, fkey, [e for e in entries if keep(e)])


def pack_path(path, pack: int) -> Path:
    return Path(path) / "packs" / f"{pack:08x}.pack"


def flip(path, pack: int, offset: int) -> None:
    with open(pack_path(path, pack), "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


class Mounted:
    """The repaired filesystem through FsCore, as a mount would serve it."""

    def __init__(self, path):
        self.store = ChunkStore.open(path)
        self.fs = FsCore(self.store)

    def __enter__(self) -> "Mounted":
        return self

    def __exit__(self, *exc) -> None:
        self.fs.close()
        self.store.close()

    def ino(self, path: str) -> int:
        ino = ROOT_INO
        for part in path.strip("/").split("/"):
            ino = self.fs.lookup(ino, part.encode()).ino
        return ino

    def read(self, path: str, offset: int, length: int) -> bytes:
        fh, _ = self.fs.open(self.ino(path), os.O_RDONLY)
        try:
            return self.fs.read(fh, offset, length)
        finally:
            self.fs.release(fh)

    def read_fails(self, path: str, offset: int, length: int) -> bool:
        try:
            self.read(path, offset, length)
        except ChunkCorruptError as exc:
            assert exc.errno == errno.EIO
            return True
        return False


def assert_lost(mounted: Mounted, path: str, data: bytes, lost: list[tuple[int, int]]) -> None:
    """Exactly the ``lost`` chunk-aligned ranges of ``path`` fail with EIO; every other chunk reads back."""
    for start in range(0, len(data), CHUNK):
        end = min(start + CHUNK, len(data))
        if any(s <= start < e for s, e in lost):
            assert mounted.read_fails(path, start, end - start), (path, start)
        else:
            assert mounted.read(path, start, end - start) == data[start:end], (path, start)
    assert mounted.fs.getattr(mounted.ino(path)).size == len(data)


# -- clean stores, output shape, exit codes ------------------------------------------------------


def test_clean_store_exits_0_with_the_documented_json_shape(built, capsys):
    out = fsck(built.path, code=0, capsys=capsys)
    assert out["status"] == "clean" and out["findings"] == [] and out["unreadable_files"] == []
    assert set(out) >= {"store", "mountpoints", "in_use", "repair", "verify_data", "status", "exit_code",
                        "checked", "findings", "repairs", "unreadable_files", "summary"}
    assert out["checked"]["files"] == 2 and out["checked"]["inodes"] == 6
    verified = fsck(built.path, "--verify-data", code=0, capsys=capsys)
    assert verified["checked"]["bytes_verified"] == len(built.data_a) + len(built.data_b)
    assert fsck(built.path, "--repair", code=0, capsys=capsys)["repairs"] == []


def test_text_summary_names_files_and_the_verdict(built, capsys):
    os.unlink(pack_path(built.path, 2))
    assert cli.main(["fsck", str(built.path)]) == 4
    text = capsys.readouterr().out
    assert "missing-pack: pack 00000002 is missing" in text
    assert "/b, /dir/b-link: bytes 0-" in text
    assert "result: damage found" in text and "chunkfs fsck --repair" in text
    assert cli.main(["fsck", "--repair", str(built.path)]) == 1
    text = capsys.readouterr().out
    assert "[repaired]" in text and "result: repaired; 1 file with lost data (exit 1)" in text


def test_not_a_store_and_usage_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    result = run_cli("fsck", tmp_path / "empty", check=False)
    assert_one_line_error(result, code=8, contains="not a chunkfs store")
    result = run_cli("fsck", tmp_path / "empty", "--bogus", check=False)
    assert_one_line_error(result, code=2, contains="unrecognized arguments")


def test_help_documents_the_exit_status():
    out = run_cli("fsck", "--help").stdout
    assert out.startswith("usage: chunkfs fsck")
    for line in ("0  no damage", "1  damage was found and all of it repaired", "4  damage is left",
                 "8  could not check", "--verify-data", "--repair", "--json"):
        assert line in out


def run_on_a_terminal(*args) -> str:
    """``chunkfs ARGS`` with a pseudo-terminal (100 columns) as its stdout and stderr; returns what it shows."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen(CLI + [str(a) for a in args], cwd=REPO, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        out += data
    proc.wait(timeout=60)
    os.close(master)
    return out.decode(errors="replace")


def test_progress_bar_only_on_a_terminal(built):
    shown = run_on_a_terminal("fsck", "--verify-data", built.path)
    assert "fsck: chunks" in shown and "fsck: verify" in shown and "result: clean" in shown
    assert "fsck:" not in run_on_a_terminal("fsck", "--json", built.path)
    piped = run_cli("fsck", "--verify-data", built.path)
    assert "fsck:" not in piped.stderr and "\r" not in piped.stdout + piped.stderr


def test_garbage_index_is_an_operational_error(built):
    (built.path / "meta" / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    result = run_cli("fsck", built.path, check=False)
    assert_one_line_error(result, code=8, contains="metadata index")


def test_truncated_index_is_refused_without_a_crash(built):
    index = built.path / "meta" / "data.mdb"
    os.truncate(index, index.stat().st_size // 2)
    result = run_cli("fsck", built.path, check=False)
    assert_one_line_error(result, code=8, contains="metadata index")


# -- chunk data -------------------------------------------------------------------------


def test_missing_pack_loses_exactly_its_chunks_and_lists_every_hard_link(built, capsys):
    os.unlink(pack_path(built.path, 2))
    out = fsck(built.path, code=4, capsys=capsys)
    missing = finding(out, "missing-pack")
    assert missing["files"] == [{"name": "/b", "paths": ["/b", "/dir/b-link"], "ranges": [[0, len(built.data_b)]]}]
    again = repair_cycle(built.path, {"missing-pack"}, capsys)
    lost = finding(again, "lost-data")
    assert lost["category"] == "lost-data" and lost["files"][0]["paths"] == ["/b", "/dir/b-link"]
    assert again["unreadable_files"] == lost["files"]
    with Mounted(built.path) as m:
        assert_lost(m, "/b", built.data_b, [(0, len(built.data_b))])
        assert_lost(m, "/dir/a", built.data_a, [])


def test_truncated_pack_loses_only_the_cut_chunk(built, capsys):
    last = manifest(built.path, built.b)[-1]
    loc = chunk_location(built.path, last.address)
    os.truncate(pack_path(built.path, loc.pack), loc.offset + 100)
    out = fsck(built.path, code=4, capsys=capsys)
    assert {"truncated-chunk", "truncated-pack"} <= kinds(out)
    assert finding(out, "truncated-chunk")["files"][0]["ranges"] == [[last.offset, len(built.data_b)]]
    repair_cycle(built.path, {"truncated-chunk"}, capsys)
    assert os.path.getsize(pack_path(built.path, loc.pack)) == loc.record_offset  # the partial record is cut
    with Mounted(built.path) as m:
        assert_lost(m, "/dir/b-link", built.data_b, [(last.offset, len(built.data_b))])
        m.fs.unlink(ROOT_INO, b"b")  # a damaged file can still be deleted, tombstones and all
        m.fs.unlink(built.dir, b"b-link")
    fsck(built.path, "--verify-data", code=0, capsys=capsys)


def test_flipped_data_byte_needs_verify_data_and_loses_one_chunk(built, capsys):
    second = manifest(built.path, built.a)[1]
    loc = chunk_location(built.path, second.address)
    flip(built.path, loc.pack, loc.offset + 5000)
    assert fsck(built.path, code=0, capsys=capsys)["status"] == "clean"  # headers are intact
    out = fsck(built.path, "--verify-data", code=4, capsys=capsys)
    assert finding(out, "corrupt-chunk")["files"][0] == {
        "name": "/dir/a", "paths": ["/dir/a"], "ranges": [[CHUNK, 2 * CHUNK]]}
    repair_cycle(built.path, {"corrupt-chunk"}, capsys, verify=True)
    with Mounted(built.path) as m:
        assert_lost(m, "/dir/a", built.data_a, [(CHUNK, 2 * CHUNK)])
        assert_lost(m, "/b", built.data_b, [])


def test_flipped_record_header_byte_is_rewritten_and_nothing_is_lost(built, capsys):
    second = manifest(built.path, built.a)[1]
    loc = chunk_location(built.path, second.address)
    flip(built.path, loc.pack, loc.record_offset + 14)  # inside the chunk id field
    out = fsck(built.path, code=4, capsys=capsys)
    assert "bad-record" in kinds(out)
    again = repair_cycle(built.path, {"bad-record"}, capsys)
    assert again["unreadable_files"] == []
    with Mounted(built.path) as m:
        assert_lost(m, "/dir/a", built.data_a, [])


def test_unreadable_pack_records_are_damage_left_after_repair(built, capsys):
    second = manifest(built.path, built.a)[1]
    loc = chunk_location(built.path, second.address)
    with open(pack_path(built.path, loc.pack), "r+b") as fh:  # a whole header destroyed: not rewritable
        fh.seek(loc.record_offset)
        fh.write(bytes(RECORD.size))
    assert "bad-record" in kinds(fsck(built.path, code=4, capsys=capsys))
    out = fsck(built.path, "--repair", code=4, capsys=capsys)
    assert out["status"] == "damaged" and any(f["repaired"] is False for f in out["findings"])
    assert out["unreadable_files"][0]["ranges"] == [[CHUNK, 2 * CHUNK]]
    with Mounted(built.path) as m:  # the chunk is a tombstone now: EIO there, the rest reads
        assert_lost(m, "/dir/a", built.data_a, [(CHUNK, 2 * CHUNK)])


def test_missing_chunk_record_becomes_a_tombstone(built, capsys):
    third = manifest(built.path, built.a)[2]
    edit(built.path, lambda s, txn: txn.delete(chunk_key(chunk_record(s, txn, third.address)[0]), db=s.index.chunks))
    out = fsck(built.path, code=4, capsys=capsys)
    assert finding(out, "missing-chunk")["files"][0]["ranges"] == [[2 * CHUNK, 3 * CHUNK]]
    repair_cycle(built.path, {"missing-chunk", "pack-accounting", "counter-mismatch"}, capsys)
    with Mounted(built.path) as m:
        assert_lost(m, "/dir/a", built.data_a, [(2 * CHUNK, 3 * CHUNK)])
        # rewriting the whole file heals it, and the tombstone goes away
        fh, _ = m.fs.open(m.ino("/dir/a"), os.O_WRONLY | os.O_TRUNC)
        m.fs.write(fh, 0, built.data_a)
        m.fs.flush(fh)
        m.fs.release(fh)
        assert_lost(m, "/dir/a", built.data_a, [])
    out = fsck(built.path, "--verify-data", code=0, capsys=capsys)
    assert out["findings"] == []


def test_same_content_written_again_does_not_dedup_against_a_lost_chunk(built, capsys):
    os.unlink(pack_path(built.path, 2))
    fsck(built.path, "--repair", code=1, capsys=capsys)
    with Mounted(built.path) as m:
        write_file(m.fs, ROOT_INO, b"b-restored", built.data_b)
        assert m.read("/b-restored", 0, len(built.data_b)) == built.data_b
    fsck(built.path, "--verify-data", code=0, capsys=capsys)


def test_refcounts_orphan_chunks_and_counters_are_recomputed(built, capsys):
    first = manifest(built.path, built.a)[0]

    def damage(store, txn):
        chunk, rec = chunk_record(store, txn, first.address)
        rec.refcount += 3
        txn.put(chunk_key(chunk), rec.encode(), db=store.index.chunks)
        ix.add_counter(txn, store.index.counters, "logical_bytes", 12345)

    edit(built.path, damage)
    with ChunkStore.open(built.path) as store:  # store-level files whose records then vanish
        store.ingest("orphan-chunks", rand(3 * CHUNK, 9))
        store.ingest("orphan-manifest", rand(2 * CHUNK, 10))

        def drop(txn):
            fkey = ix.FILE.unpack(txn.pop(b"sorphan-chunks", db=store.index.files))[0]
            store.manifest_index.delete_runs(txn, fkey)
            txn.delete(b"sorphan-manifest", db=store.index.files)

        store.index.write(drop)
    out = fsck(built.path, code=4, capsys=capsys)
    assert {"refcount-mismatch", "orphan-chunk", "orphan-manifest", "counter-mismatch"} <= kinds(out)
    repair_cycle(built.path, {"refcount-mismatch", "orphan-chunk"}, capsys)
    with Mounted(built.path) as m:
        assert_lost(m, "/dir/a", built.data_a, [])


def test_pack_accounting_is_recomputed(built, capsys):
    def damage(store, txn):
        end, live, dead = ix.PACK.unpack(txn.get(ix.KEYPACK.pack(1), db=store.index.packs))
        txn.put(ix.KEYPACK.pack(1), ix.PACK.pack(end, live - 100, dead + 100), db=store.index.packs)

    edit(built.path, damage)
    repair_cycle(built.path, {"pack-accounting"}, capsys)


def test_orphan_blob_in_a_pack_becomes_dead_space_gc_reclaims(built, capsys):
    blob = rand(5000, 8)
    end = os.path.getsize(pack_path(built.path, 1))

    def damage(store, txn):  # the indexed end covers it, so recovery does not truncate it
        _, live, dead = ix.PACK.unpack(txn.get(ix.KEYPACK.pack(1), db=store.index.packs))
        txn.put(ix.KEYPACK.pack(1), ix.PACK.pack(end + RECORD.size + len(blob), live, dead), db=store.index.packs)

    edit(built.path, damage)
    with open(pack_path(built.path, 1), "ab") as fh:  # a whole record nothing references or accounts for
        fh.write(RecordHeader.of(0, blob).pack() + blob)
    out = fsck(built.path, code=4, capsys=capsys)
    assert f"dead bytes 0 recorded, {RECORD.size + len(blob)} found" in finding(out, "pack-accounting")["message"]
    repair_cycle(built.path, {"pack-accounting"}, capsys)
    with ChunkStore.open(built.path) as store:
        assert store.stats()["garbage_bytes"] == RECORD.size + len(blob)
        assert store.gc(min_dead_fraction=0)["bytes_reclaimed"] >= RECORD.size + len(blob)
    fsck(built.path, "--verify-data", code=0, capsys=capsys)


def test_manifest_gap_reads_as_eio_not_zeros(built, capsys):
    third = manifest(built.path, built.a)[2]
    edit(built.path, lambda s, txn: rewrite_manifest(s, txn, _fkey(s, txn, built.a),
                                                     lambda e: e.offset != third.offset))
    out = fsck(built.path, code=4, capsys=capsys)
    assert "broken-manifest" in kinds(out)
    repair_cycle(built.path, {"broken-manifest", "count-mismatch"}, capsys)
    with Mounted(built.path) as m:
        assert_lost(m, "/dir/a", built.data_a, [(2 * CHUNK, 3 * CHUNK)])


def _fkey(store, txn, ino: int) -> int:
    return ix.FILE.unpack(txn.get(b"b" + file_id_for(ino), db=store.index.files))[0]


# -- the namespace ---------------------------------------------------------------------------------


def ns_edit(path, fn) -> None:
    edit(path, lambda store, txn: fn(Namespace(store.fs_tables), txn))


def test_dangling_entry_is_dropped(built, capsys):
    ns_edit(built.path, lambda ns, txn: ns.link(txn, built.dir, b"ghost", 999))
    out = fsck(built.path, code=4, capsys=capsys)
    assert "/dir/ghost names inode 999" in finding(out, "dangling-dirent")["message"]
    repair_cycle(built.path, {"dangling-dirent"}, capsys)
    with Mounted(built.path) as m:
        assert sorted(e.name for e in m.fs.readdir(built.dir, 0)) == [b".", b"..", b"a", b"b-link", b"sub"]


def test_listing_record_missing_or_wrong_is_rewritten(built, capsys):
    def damage(ns, txn):
        entry = ns.lookup(txn, built.dir, b"a")
        txn.delete(nsrec.KEY64x2.pack(built.dir, entry.entry_id), db=ns.index.dirorder)
        other = ns.lookup(txn, ROOT_INO, b"b")
        txn.put(nsrec.KEY64x2.pack(ROOT_INO, other.entry_id), nsrec.DIRORDER.pack(built.a) + b"b", db=ns.index.dirorder)

    ns_edit(built.path, damage)
    out = fsck(built.path, code=4, capsys=capsys)
    assert len([f for f in out["findings"] if f["kind"] == "dirorder-mismatch"]) == 2
    repair_cycle(built.path, {"dirorder-mismatch"}, capsys)
    with Mounted(built.path) as m:
        assert b"a" in [e.name for e in m.fs.readdir(built.dir, 0)]
        assert {e.name: e.attr.ino for e in m.fs.readdir(ROOT_INO, 0)}[b"b"] == built.b


def test_entry_lost_from_lookup_records_comes_back_from_the_listing(built, capsys):
    ns_edit(built.path, lambda ns, txn: txn.delete(nsrec.KEY64.pack(built.dir) + b"a", db=ns.index.dirents))
    repair_cycle(built.path, {"dirorder-mismatch"}, capsys)
    with Mounted(built.path) as m:
        assert m.read("/dir/a", 0, 100) == built.data_a[:100]


def test_link_counts_and_parent_pointers_are_recomputed(built, capsys):
    def damage(ns, txn):
        for ino, nlink in ((built.b, 7), (built.dir, 2), (ROOT_INO, 9)):
            inode = ns.get(txn, ino)
            inode.nlink = nlink
            ns.put(txn, inode)
        sub = ns.get(txn, built.sub)
        sub.parent = ROOT_INO
        ns.put(txn, sub)

    ns_edit(built.path, damage)
    out = fsck(built.path, code=4, capsys=capsys)
    counts = [f for f in out["findings"] if f["kind"] == "link-count"]
    assert len(counts) == 3 and {"file /b: link count 7, should be 2"} <= {f["message"] for f in counts}
    repair_cycle(built.path, {"link-count", "bad-parent"}, capsys)
    with Mounted(built.path) as m:
        assert m.fs.getattr(built.b).nlink == 2 and m.fs.getattr(built.dir).nlink == 3
        assert m.fs.getattr(ROOT_INO).nlink == 3
        assert m.fs.lookup(built.sub, b"..").ino == built.dir


def test_orphan_inode_left_by_a_crash_is_purged_with_its_contents(built, capsys):
    def damage(ns, txn):  # what unlink of an open file leaves if the daemon dies before release
        entry = ns.lookup(txn, built.dir, b"a")
        ns.unlink(txn, built.dir, entry)
        inode = ns.get(txn, built.a)
        inode.nlink = 0
        ns.put(txn, inode)
        ns.mark_orphan(txn, built.a)

    ns_edit(built.path, damage)
    out = fsck(built.path, code=4, capsys=capsys)
    assert "orphan-inode" in kinds(out) and "unlinked while open" in finding(out, "orphan-inode")["message"]
    repair_cycle(built.path, {"orphan-inode"}, capsys)
    with ChunkStore.open(built.path, readonly=True) as store:
        assert not store.exists(file_id_for(built.a))
        assert store.stats()["files"] == 1


def test_inode_without_a_name_goes_to_lost_and_found(built, capsys):
    ns_edit(built.path, lambda ns, txn: ns.unlink(txn, built.dir, ns.lookup(txn, built.dir, b"a")))
    out = fsck(built.path, code=4, capsys=capsys)
    assert "lost-inode" in kinds(out)
    repair_cycle(built.path, {"lost-inode"}, capsys)
    with Mounted(built.path) as m:
        assert m.read(f"/lost+found/#{built.a}", 0, len(built.data_a)) == built.data_a
        assert stat.S_IMODE(m.fs.getattr(m.ino("/lost+found")).mode) == 0o700


def test_directory_cut_off_from_the_root_keeps_its_subtree(built, capsys):
    ns_edit(built.path, lambda ns, txn: ns.unlink(txn, ROOT_INO, ns.lookup(txn, ROOT_INO, b"dir")))
    out = fsck(built.path, code=4, capsys=capsys)
    assert {"lost-inode", "link-count"} <= kinds(out)
    repair_cycle(built.path, {"lost-inode"}, capsys)
    with Mounted(built.path) as m:
        assert m.read(f"/lost+found/#{built.dir}/a", 0, 100) == built.data_a[:100]
        assert m.fs.getattr(built.b).nlink == 2


def test_directory_cycle_unreachable_from_the_root_is_cut(built, capsys):
    def damage(ns, txn):
        ns.unlink(txn, built.dir, ns.lookup(txn, built.dir, b"sub"))
        ns.unlink(txn, ROOT_INO, ns.lookup(txn, ROOT_INO, b"dir"))
        ns.link(txn, built.sub, b"loop", built.dir)
        ns.link(txn, built.dir, b"sub", built.sub)

    ns_edit(built.path, damage)
    repair_cycle(built.path, {"lost-inode"}, capsys)
    with Mounted(built.path) as m:
        found = {e.name for e in m.fs.readdir(m.ino("/lost+found"), 0)}
        assert len(found - {b".", b".."}) == 1  # one directory of the cycle, the other below it
        assert b"a" in {e.name for e in m.fs.readdir(built.dir, 0)}


def test_directory_with_two_names_keeps_one(built, capsys):
    ns_edit(built.path, lambda ns, txn: ns.link(txn, ROOT_INO, b"again", built.sub))
    repair_cycle(built.path, {"dir-hard-link"}, capsys)
    with Mounted(built.path) as m:
        assert m.fs.lookup(built.dir, b"sub").ino == built.sub
        assert b"again" not in {e.name for e in m.fs.readdir(ROOT_INO, 0)}


def test_named_inode_marked_orphan_is_not_purged(built, capsys):
    def damage(ns, txn):
        ns.mark_orphan(txn, built.a)
        inode = ns.get(txn, built.a)
        inode.nlink = 0
        ns.put(txn, inode)

    ns_edit(built.path, damage)
    repair_cycle(built.path, {"stale-orphan-mark", "link-count"}, capsys)
    with Mounted(built.path) as m:
        assert m.read("/dir/a", 0, len(built.data_a)) == built.data_a


def test_inode_size_follows_the_stored_contents(built, capsys):
    def damage(ns, txn):
        inode = ns.get(txn, built.a)
        inode.size += 5000
        ns.put(txn, inode)

    ns_edit(built.path, damage)
    out = fsck(built.path, code=4, capsys=capsys)
    assert f"size {len(built.data_a) + 5000}" in finding(out, "inode-size-mismatch")["message"]
    assert "marked as having no holes" in finding(out, "dense-mark")["message"]  # its st_blocks would be wrong
    again = repair_cycle(built.path, {"inode-size-mismatch", "dense-mark"}, capsys)
    end = len(built.data_a)
    assert again["unreadable_files"] == [{"name": "/dir/a", "paths": ["/dir/a"], "ranges": [[end, end + 5000]]}]
    with Mounted(built.path) as m:  # the missing tail is lost data: EIO, not zeros and not silently cut
        assert m.fs.getattr(built.a).size == end + 5000
        assert m.read("/dir/a", 0, end) == built.data_a
        assert m.read_fails("/dir/a", end, 10)


def test_contents_longer_than_the_inode_size_become_visible(built, capsys):
    def damage(ns, txn):
        inode = ns.get(txn, built.b)
        inode.size = 10
        ns.put(txn, inode)

    ns_edit(built.path, damage)
    again = repair_cycle(built.path, {"inode-size-mismatch"}, capsys)
    assert again["unreadable_files"] == []
    with Mounted(built.path) as m:
        assert m.read("/b", 0, len(built.data_b)) == built.data_b


def test_missing_root_is_recreated(built, capsys):
    ns_edit(built.path, lambda ns, txn: txn.delete(nsrec.KEY64.pack(ROOT_INO), db=ns.index.inodes))
    out = fsck(built.path, code=4, capsys=capsys)
    assert {"missing-root", "dangling-dirent"} <= kinds(out)
    repair_cycle(built.path, {"missing-root"}, capsys)
    with Mounted(built.path) as m:
        assert m.read("/dir/a", 0, 10) == built.data_a[:10]


def test_stray_records_and_contents_of_no_file_are_dropped(built, capsys):
    ns_edit(built.path, lambda ns, txn: ns.set_xattr(txn, 4242, b"user.x", b"1"))
    with ChunkStore.open(built.path) as store:
        store.ingest(file_id_for(4243), rand(20_000, 5))
    out = fsck(built.path, code=4, capsys=capsys)
    assert {"stray-record", "orphan-contents"} <= kinds(out)
    repair_cycle(built.path, {"stray-record", "orphan-contents"}, capsys)


def test_inode_and_entry_counters_are_raised_past_ids_in_use(built, capsys):
    def damage(store, txn):
        txn.put(b"next_ino", ix.U64.pack(2), db=store.index.counters)
        txn.put(b"fs_inodes", ix.U64.pack(1), db=store.index.counters)

    edit(built.path, damage)
    repair_cycle(built.path, {"counter-mismatch"}, capsys)
    with Mounted(built.path) as m:
        assert m.fs.mkdir(ROOT_INO, b"new", 0o755, USER).ino > max(built.a, built.b, built.dir, built.sub)


# -- mounted stores --------------------------------------------------------------------------------


@pytest.mark.slow
@requires_fuse
def test_read_only_fsck_works_on_a_mounted_store_and_repair_refuses(mount_factory):
    fs = mount_factory(mkfs_args=["--chunker", "fixed", "--avg-size", "16K"])
    (fs / "d").mkdir()
    (fs / "d" / "f").write_bytes(rand(100_000, 3))
    keep = open(fs / "d" / "f", "rb")  # unlinked while open: a notice on a mounted store, not damage
    try:
        os.unlink(fs / "d" / "f")
        result = run_cli("fsck", "--json", fs.store, check=False)
        out = json.loads(result.stdout)
        assert result.returncode == 0, result.stdout
        assert out["in_use"] and out["mountpoints"] == [str(fs.mountpoint)]
        assert kinds(out, "notice") == {"open-unlinked"}
        result = run_cli("fsck", "--repair", fs.store, check=False)
        assert_one_line_error(result, code=8, contains="unmount it before")
    finally:
        keep.close()
    fs.unmount()
    assert run_cli("fsck", "--verify-data", fs.store).returncode == 0
