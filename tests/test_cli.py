"""The chunkfs command line: every verb, its help, and one readable line for every mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chunkfs import cli
from conftest import CLI, REPO, assert_one_line_error, cli_env, run_cli

VERBS = ["mkfs", "stats", "ingest", "cat", "rm", "ls", "gc", "mount", "umount"]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    run_cli("mkfs", path)
    return path


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# -- help and version ----------------------------------------------------------------------


def test_version():
    result = run_cli("--version")
    assert result.stdout.strip().startswith("chunkfs ")


@pytest.mark.parametrize("verb", VERBS)
def test_help_for_each_verb(verb):
    result = run_cli(verb, "--help")
    assert result.stdout.startswith("usage: chunkfs " + verb)
    assert result.stderr == ""


def test_top_level_help_lists_every_verb():
    out = run_cli("--help").stdout
    for verb in VERBS:
        assert verb in out


def test_mount_help_lists_options():
    out = run_cli("mount", "--help").stdout
    for opt in ("ro", "allow_other", "nonempty", "log_level=", "log_file=", "cache_size=", "verify="):
        assert opt in out


@pytest.mark.parametrize("argv, contains", [
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["mkfs"], "required"),
    (["mkfs", "x", "--chunker", "rabin"], "invalid choice"),
    (["mkfs", "x", "--avg-size", "lots"], "not a size"),
    (["stats", "x", "--colour"], "unrecognized"),
    (["umount", "x", "--timeout", "soon"], "invalid float"),
])
def test_usage_mistakes_exit_2_with_one_line(argv, contains):
    assert_one_line_error(run_cli(*argv, check=False), code=2, contains=contains)


def test_main_returns_exit_codes_in_process(tmp_path, capsys):
    assert cli.main(["--version"]) == 0
    assert cli.main(["mkfs", str(tmp_path / "s")]) == 0
    assert cli.main(["mkfs", str(tmp_path / "s")]) == 1
    assert cli.main(["stats", str(tmp_path / "s")]) == 0
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("chunkfs: ") for line in err)


# -- mkfs -------------------------------------------------------------------------------------


def test_mkfs_defaults(tmp_path):
    result = run_cli("mkfs", tmp_path / "s")
    assert "created chunkfs store" in result.stdout
    settings = json.loads((tmp_path / "s" / "chunkfs.json").read_text())
    assert settings["chunker"] == "fastcdc"
    assert settings["avg_size"] == 32 * 1024


def test_mkfs_sizes_and_fixed_chunker(tmp_path):
    run_cli("mkfs", tmp_path / "a", "--avg-size", "16K", "--min-size", "2K", "--max-size", "1M")
    a = json.loads((tmp_path / "a" / "chunkfs.json").read_text())
    assert (a["min_size"], a["avg_size"], a["max_size"]) == (2048, 16384, 1 << 20)
    run_cli("mkfs", tmp_path / "b", "--chunker", "fixed", "--avg-size", "64KiB")
    b = json.loads((tmp_path / "b" / "chunkfs.json").read_text())
    assert (b["chunker"], b["avg_size"]) == ("fixed", 65536)


@pytest.mark.parametrize("args, contains", [
    (["--avg-size", "3000"], "power of two"),
    (["--min-size", "64K", "--avg-size", "16K"], "min < avg < max"),
    (["--chunker", "fixed", "--avg-size", "4K", "--min-size", "1K"], "only --avg-size"),
    (["--avg-size", "1G"], "exceeds"),
])
def test_mkfs_bad_sizes(tmp_path, args, contains):
    assert_one_line_error(run_cli("mkfs", tmp_path / "s", *args, check=False), contains=contains)
    assert not (tmp_path / "s" / "chunkfs.json").exists()


def test_mkfs_refuses_existing_store_and_nonempty_dir(tmp_path, store):
    assert_one_line_error(run_cli("mkfs", store, check=False), contains="already exists")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert_one_line_error(run_cli("mkfs", tmp_path / "full", check=False), contains="not empty")
    assert_one_line_error(run_cli("mkfs", tmp_path / "no" / "such", check=False), contains="does not exist")


# -- file verbs -------------------------------------------------------------------------------


def test_ingest_cat_ls_rm_round_trip(tmp_path, store):
    data = os.urandom(300_000)
    result = run_cli("ingest", store, "docs/a.bin", write(tmp_path / "a.bin", data))
    assert "docs/a.bin" in result.stdout and "chunks" in result.stdout
    run_cli("ingest", store, "from-stdin", "-", input=b"hello\n", text=False)
    assert run_cli("cat", store, "docs/a.bin", text=False).stdout == data
    assert run_cli("cat", store, "from-stdin", text=False).stdout == b"hello\n"
    assert run_cli("ls", store).stdout.splitlines() == ["docs/a.bin", "from-stdin"]
    long = run_cli("ls", "-l", store).stdout
    assert "300,000" in long
    run_cli("rm", store, "docs/a.bin")
    assert run_cli("ls", store).stdout.splitlines() == ["from-stdin"]


def test_reingest_replaces(tmp_path, store):
    run_cli("ingest", store, "f", write(tmp_path / "1", b"one"))
    run_cli("ingest", store, "f", write(tmp_path / "2", b"two"))
    assert run_cli("cat", store, "f").stdout == "two"
    assert json.loads(run_cli("stats", "--json", store).stdout)["files"] == 1


def test_bytes_and_prefixed_file_ids(tmp_path, store):
    src = write(tmp_path / "x", b"bytes id")
    run_cli("ingest", store, "hex:00ff", src)
    run_cli("ingest", store, "str:hex:literal", src)
    listed = run_cli("ls", store).stdout.splitlines()
    assert listed == ["str:hex:literal", "hex:00ff"]
    for file_id in listed:  # every listed id is a valid argument
        assert run_cli("cat", store, file_id).stdout == "bytes id"
    assert_one_line_error(run_cli("cat", store, "hex:zz", check=False), contains="hex digits")


def test_missing_file_id(store):
    assert_one_line_error(run_cli("cat", store, "nope", check=False), contains="no file 'nope'")
    assert_one_line_error(run_cli("rm", store, "nope", check=False), contains="no file 'nope'")


def test_ingest_missing_source_file(tmp_path, store):
    assert_one_line_error(run_cli("ingest", store, "f", tmp_path / "absent", check=False),
                          contains="No such file")


def test_cat_into_closed_pipe_is_quiet(tmp_path, store):
    run_cli("ingest", store, "big", write(tmp_path / "big", os.urandom(4 << 20)))
    cmd = " ".join(CLI) + f" cat {store} big | head -c 10 >/dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, env=cli_env(),
                            capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and result.stderr == ""


# -- stats and gc -----------------------------------------------------------------------------


STATS_FIELDS = {"files", "logical_bytes", "stored_bytes", "unique_chunks", "savings_pct", "disk_bytes",
                "chunk_refs", "garbage_bytes", "store", "mountpoints", "reserve_bytes", "disk_savings_pct"}


def test_stats_json_fields_and_dedup(tmp_path, store):
    data = os.urandom(2 << 20)
    src = write(tmp_path / "d", data)
    run_cli("ingest", store, "one", src)
    run_cli("ingest", store, "two", src)
    stats = json.loads(run_cli("stats", "--json", store).stdout)
    assert STATS_FIELDS <= stats.keys()
    assert stats["files"] == 2
    assert stats["logical_bytes"] == 2 * len(data)
    assert stats["stored_bytes"] == len(data)
    assert stats["savings_pct"] == pytest.approx(50.0, abs=0.01)
    assert stats["unique_chunks"] > 0 and stats["disk_bytes"] > 0
    assert stats["store"] == str(store) and stats["mountpoints"] == []


def test_stats_human(tmp_path, store):
    run_cli("ingest", store, "a", write(tmp_path / "a", b"x" * 100_000))
    out = run_cli("stats", store).stdout
    for label in ("logical bytes:", "stored bytes:", "savings:", "chunks:", "disk bytes:"):
        assert label in out
    assert "100,000 bytes" in out


def du(path) -> int:
    return sum(os.lstat(os.path.join(root, name)).st_blocks * 512
               for root, dirs, files in os.walk(path) for name in dirs + files)


def test_stats_of_a_near_empty_store_shows_no_meaningless_percentage(tmp_path, store):
    empty = json.loads(run_cli("stats", "--json", store).stdout)
    assert (empty["savings_pct"], empty["disk_savings_pct"]) == (None, None)
    run_cli("ingest", store, "tiny", write(tmp_path / "tiny", b"hello\n"))
    stats = json.loads(run_cli("stats", "--json", store).stdout)
    assert stats["logical_bytes"] == stats["stored_bytes"] == 6
    assert stats["savings_pct"] == 0.0 and stats["disk_savings_pct"] is None
    assert stats["reserve_bytes"] > 0  # the space reserve, reported apart ...
    assert stats["disk_bytes"] + stats["reserve_bytes"] == du(store)  # ... and not as the store's own bytes
    assert stats["disk_bytes"] < stats["reserve_bytes"]
    lines = dict(line.split(":", 1) for line in run_cli("stats", store).stdout.splitlines())
    assert lines["savings"].strip() == "0.0%"
    assert lines["disk bytes"].rstrip().endswith("savings –")
    assert f"({stats['reserve_bytes']:,} bytes)" in lines["reserve"]
    assert "%" not in lines["disk bytes"]


def test_stats_disk_savings_once_data_outweighs_the_overhead(tmp_path, store):
    data = os.urandom(1 << 20)
    run_cli("ingest", store, "a", write(tmp_path / "a", data))
    run_cli("ingest", store, "b", tmp_path / "a")
    stats = json.loads(run_cli("stats", "--json", store).stdout)
    expected = round(100 * (1 - stats["disk_bytes"] / stats["logical_bytes"]), 2)
    assert stats["disk_savings_pct"] == expected and 40 < expected < 50
    assert f"savings {expected:.1f}%" in run_cli("stats", store).stdout


def test_gc_reports_what_it_removed(tmp_path, store):
    run_cli("ingest", store, "a", write(tmp_path / "a", os.urandom(1 << 20)))
    run_cli("ingest", store, "b", write(tmp_path / "b", os.urandom(1 << 20)))
    run_cli("rm", store, "a")
    out = run_cli("gc", store).stdout
    assert out.startswith("gc: removed ") and "reclaimed" in out
    assert json.loads(run_cli("stats", "--json", store).stdout)["garbage_bytes"] == 0
    assert run_cli("cat", store, "b", text=False).stdout == (tmp_path / "b").read_bytes()


# -- errors about the store itself ---------------------------------------------------------------


@pytest.mark.parametrize("verb", ["stats", "ls", "gc", "cat", "rm", "ingest"])
def test_not_a_store(tmp_path, verb):
    (tmp_path / "plain").mkdir()
    extra = {"cat": ["f"], "rm": ["f"], "ingest": ["f", "/etc/hostname"]}.get(verb, [])
    assert_one_line_error(run_cli(verb, tmp_path / "plain", *extra, check=False), contains="not a chunkfs store")


def test_missing_store_path(tmp_path):
    assert_one_line_error(run_cli("stats", tmp_path / "absent", check=False), contains="no such directory")


def test_newer_format_version(store):
    path = store / "chunkfs.json"
    settings = json.loads(path.read_text())
    settings["format_version"] += 1
    path.write_text(json.dumps(settings))
    assert_one_line_error(run_cli("stats", store, check=False), contains="newer")
    assert_one_line_error(run_cli("ingest", store, "f", "/etc/hostname", check=False), contains="newer")


def test_damaged_settings(store):
    (store / "chunkfs.json").write_text("{not json")
    assert_one_line_error(run_cli("ls", store, check=False), contains="settings")


@pytest.fixture
def held_store(store):
    """The store held open for writing by a second, real process."""
    code = ("import sys, time; from chunkfs import ChunkStore; s = ChunkStore.open(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], cwd=REPO, env=cli_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield store, holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_locked_store(tmp_path, held_store):
    store, pid = held_store
    src = write(tmp_path / "f", b"data")
    for argv in (["ingest", store, "f", src], ["rm", store, "f"], ["gc", store]):
        line = assert_one_line_error(run_cli(*argv, check=False), contains="in use")
        assert str(pid) in line
    # read-only inspection works while another process holds the store
    assert json.loads(run_cli("stats", "--json", store).stdout)["files"] == 0
    assert run_cli("ls", store).stdout == ""


# -- against a mounted filesystem -------------------------------------------------------------------


def test_stats_by_mountpoint_while_mounted(mounted_fs):
    data = os.urandom(1 << 20)
    (mounted_fs / "a").write_bytes(data)
    (mounted_fs / "b").write_bytes(data)
    by_mount = mounted_fs.stats(mounted_fs.mountpoint)
    by_store = mounted_fs.stats(mounted_fs.store)
    for stats in (by_mount, by_store):
        assert stats["store"] == str(mounted_fs.store)
        assert stats["mountpoints"] == [str(mounted_fs.mountpoint)]
        assert stats["logical_bytes"] >= 2 * len(data)
        assert stats["stored_bytes"] < 1.5 * len(data)
    human = run_cli("stats", mounted_fs.mountpoint).stdout
    assert f"mounted on {mounted_fs.mountpoint}" in human
    # a path inside the mount finds the same store
    assert mounted_fs.stats(mounted_fs / "a")["store"] == str(mounted_fs.store)


def test_writing_verbs_refuse_a_mounted_store(tmp_path, mounted_fs):
    line = assert_one_line_error(run_cli("ingest", mounted_fs.store, "f", "/etc/hostname", check=False),
                                 contains="in use")
    assert str(mounted_fs.pid) in line


def test_umount_errors(tmp_path):
    (tmp_path / "d").mkdir()
    assert_one_line_error(run_cli("umount", tmp_path / "d", check=False), contains="not a mountpoint")
    assert_one_line_error(run_cli("umount", "/proc", check=False), contains="not a chunkfs filesystem")
