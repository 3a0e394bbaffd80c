"""The settings file, checked field by field: every bad value is one line naming the file, the field and the value.

A user who edits ``chunkfs.json`` by hand (or a disk that damages it) must
get the same answer from every command: ``chunkfs: <file>: ...`` and the
command's usual failure status (fsck's 8, "could not check"), never a
traceback and never a store opened with a value it did not ask for.
"""

from __future__ import annotations

import json
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chunkfs import ChunkStore, daemon
from chunkfs.errors import SettingsError
from chunkfs.settings import SCHEMA, StoreSettings, parse_size, read_settings

from conftest import assert_one_line_error, run_cli, run_cli_in_process

FSCK_COULD_NOT_CHECK = 8


@pytest.fixture(scope="module")
def store_and_settings(tmp_path_factory):
    """One store for the module, and its good settings; each test writes the file and puts it back."""
    path = tmp_path_factory.mktemp("settings") / "store"
    ChunkStore.create(path).close()
    good = json.loads((path / "chunkfs.json").read_text())
    (path.parent / "mnt").mkdir()
    return path, good


@pytest.fixture
def store(store_and_settings):
    path, good = store_and_settings
    yield path
    (path / "chunkfs.json").write_text(json.dumps(good))


def write_settings(store, doc) -> None:
    text = doc if isinstance(doc, (str, bytes)) else json.dumps(doc)
    target = store / "chunkfs.json"
    target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)


def with_field(good: dict, name: str, value) -> dict:
    doc = dict(good)
    doc[name] = value
    return doc


def without_field(good: dict, name: str) -> dict:
    return {k: v for k, v in good.items() if k != name}


# -- the cases users hit ---------------------------------------------------------------------

# (how the file is changed, what the one line must name besides the file)
BAD_FILES = [
    pytest.param(lambda g: with_field(g, "avg_size", "big"), ["avg_size", '"big"'], id="avg_size-string"),
    pytest.param(lambda g: with_field(g, "avg_size", None), ["avg_size", "null"], id="avg_size-null"),
    pytest.param(lambda g: with_field(g, "avg_size", [1]), ["avg_size", "[1]"], id="avg_size-list"),
    pytest.param(lambda g: with_field(g, "avg_size", 12345), ["avg_size", "12345", "power of two"],
                 id="avg_size-not-power-of-two"),
    pytest.param(lambda g: with_field(g, "min_size", 8192.5), ["min_size", "8192.5"], id="min_size-fraction"),
    pytest.param(lambda g: with_field(g, "max_size", True), ["max_size", "true"], id="max_size-bool"),
    pytest.param(lambda g: with_field(g, "format_version", "2"), ["format_version", '"2"'], id="version-string"),
    pytest.param(lambda g: with_field(g, "format_version", True), ["format_version", "true"], id="version-bool"),
    pytest.param(lambda g: without_field(g, "format_version"), ["format_version", "missing"], id="version-missing"),
    pytest.param(lambda g: with_field(g, "format_version", 0), ["format_version 0", "start at 1"], id="version-zero"),
    pytest.param(lambda g: with_field(g, "chunker", "rabin"), ["chunker", '"rabin"', "unknown chunker"],
                 id="unknown-chunker"),
    pytest.param(lambda g: with_field(g, "hash", "md5"), ["hash", '"md5"', "unsupported hash"], id="unknown-hash"),
    pytest.param(lambda g: with_field(g, "checksum", "crc32"), ["checksum", '"crc32"'], id="unknown-checksum"),
    pytest.param(lambda g: without_field(g, "chunker"), ["chunker", "missing"], id="chunker-missing"),
    pytest.param(lambda g: without_field(g, "uuid"), ["uuid", "missing"], id="uuid-missing"),
    pytest.param(lambda g: with_field(g, "created", "yesterday"), ["created", '"yesterday"'], id="created-string"),
    pytest.param(lambda g: with_field(g, "uuid", 7), ["uuid", "7"], id="uuid-number"),
    pytest.param(lambda g: with_field(g, "encryption", "aes"), ["encryption", "unknown field"],
                 id="unknown-field"),
    pytest.param(lambda g: with_field(g, "compression", "zstd:99"), ["compression", '"zstd:99"'],
                 id="compression-level"),
    pytest.param(lambda g: with_field(g, "compression", "lz4"), ["compression", '"lz4"'], id="compression-codec"),
    pytest.param(lambda g: with_field(g, "chunker", "fixed"), ["min_size", "equal"], id="fixed-unequal-sizes"),
    pytest.param(lambda g: with_field(g, "avg_size", 1 << 30), ["avg_size", "exceeds"], id="avg_size-too-big"),
]


@pytest.mark.parametrize("change, names", BAD_FILES)
def test_every_command_names_the_file_the_field_and_the_value(store, tmp_path, store_and_settings, change, names):
    _, good = store_and_settings
    write_settings(store, change(good))
    settings_file = str(store / "chunkfs.json")
    mountpoint = store.parent / "mnt"
    never = mock.patch.object(daemon, "_spawn", side_effect=AssertionError("mounted with a bad settings file"))
    with never:
        check_every_command(store, mountpoint, settings_file, names)


def check_every_command(store, mountpoint, settings_file: str, names: list[str]) -> None:
    for argv, code in ((["stats", store], 1), (["ls", store], 1), (["gc", store], 1),
                       (["fsck", store], FSCK_COULD_NOT_CHECK), (["fsck", "--repair", store], FSCK_COULD_NOT_CHECK),
                       (["mount", store, mountpoint], 1)):
        line = assert_one_line_error(run_cli_in_process(*argv), code=code, contains=settings_file)
        for name in names:
            assert name in line, f"{name!r} not in {line!r} (chunkfs {argv[0]})"


def test_the_library_refuses_the_same_files(store, store_and_settings):
    _, good = store_and_settings
    write_settings(store, with_field(good, "avg_size", "big"))
    with pytest.raises(SettingsError, match=r"chunkfs\.json: settings field 'avg_size' is \"big\""):
        ChunkStore.open(store)
    with pytest.raises(SettingsError, match="avg_size"):
        ChunkStore.open(store, readonly=True)


def test_real_commands_print_one_line_and_fsck_exits_8(store, store_and_settings):
    """The installed entry point, as a subprocess: no traceback reaches the terminal."""
    _, good = store_and_settings
    write_settings(store, with_field(good, "avg_size", "big"))
    line = assert_one_line_error(run_cli("stats", store, check=False), code=1, contains="avg_size")
    assert str(store / "chunkfs.json") in line and '"big"' in line
    assert_one_line_error(run_cli("fsck", store, check=False), code=FSCK_COULD_NOT_CHECK, contains="avg_size")
    assert_one_line_error(run_cli("mount", store, store.parent / "mnt", check=False), code=1,
                          contains="avg_size")


def test_a_good_file_still_opens(store):
    assert run_cli_in_process("stats", store).returncode == 0
    assert run_cli_in_process("fsck", store).returncode == 0
    assert read_settings(str(store)).avg_size == 32 * 1024


# -- random values, random documents, random bytes ----------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def wrong_type(name: str):
    """JSON values of a type the schema does not allow for field ``name`` (true is not a number)."""
    kind = SCHEMA[name].kind

    def allowed(value) -> bool:
        if isinstance(value, bool):
            return False
        return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)

    return JSON_VALUES.filter(lambda v: not allowed(v))


FIELDS = sorted(SCHEMA.keys() - {"format"})  # a wrong "format" is "not a chunkfs store": also one line
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_refused(store, field: str | None) -> None:
    """stats fails with 1, fsck with 8, each one line naming the settings file (and the field)."""
    settings_file = str(store / "chunkfs.json")
    for argv, code in ((["stats", store], 1), (["fsck", store], FSCK_COULD_NOT_CHECK)):
        line = assert_one_line_error(run_cli_in_process(*argv), code=code, contains=settings_file)
        if field is not None:
            assert repr(field) in line or json.dumps(field) in line, line


@PROPERTY
@given(data=st.data())
def test_any_wrong_typed_value_is_one_line_naming_the_field(store_and_settings, data):
    store, good = store_and_settings
    field = data.draw(st.sampled_from(FIELDS))
    try:
        write_settings(store, with_field(good, field, data.draw(wrong_type(field))))
        check_refused(store, field)
    finally:
        write_settings(store, good)


@PROPERTY
@given(data=st.data())
def test_any_edit_of_the_file_opens_or_is_one_line(store_and_settings, data):
    """Replace, delete or add a field, or replace the whole document: stats and fsck agree, in one line."""
    store, good = store_and_settings
    how = data.draw(st.sampled_from(["replace", "delete", "add", "document"]))
    if how == "replace":
        doc = with_field(good, data.draw(st.sampled_from(sorted(good))), data.draw(JSON_VALUES))
    elif how == "delete":
        gone = data.draw(st.sampled_from(sorted(good)))
        doc = without_field(good, gone)
        if gone in ("data", "compression"):  # optional: a store made before them: local packs, raw chunks
            how = "delete optional"
    elif how == "add":
        doc = with_field(good, data.draw(st.text(max_size=12).filter(lambda k: k not in good)), data.draw(JSON_VALUES))
    else:
        doc = data.draw(JSON_VALUES)
    try:
        write_settings(store, doc)
        stats, fsck = run_cli_in_process("stats", store), run_cli_in_process("fsck", store)
    finally:
        write_settings(store, good)
    if how in ("delete", "add"):  # every field but 'data' and 'compression' is required, and no other is allowed
        assert stats.returncode == 1, f"a settings file with a field {how}ed opened: {doc}"
    if stats.returncode == 0:
        assert fsck.returncode == 0, fsck.stderr
        assert "Traceback" not in stats.stderr + fsck.stderr
    else:
        assert_one_line_error(stats, code=1, contains="chunkfs.json")
        assert_one_line_error(fsck, code=FSCK_COULD_NOT_CHECK, contains="chunkfs.json")


@PROPERTY
@given(raw=st.binary(max_size=300))
def test_random_bytes_are_one_line(store_and_settings, raw):
    store, good = store_and_settings
    try:
        write_settings(store, raw)
        check_refused(store, None)
    finally:
        write_settings(store, good)


# -- building settings for mkfs ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(avg_size=0), "avg_size 0: the average chunk size must be a power of two"),
    (dict(avg_size="0"), "avg_size 0:"),
    (dict(avg_size=8 << 20), "avg_size 8388608: the default maximum chunk size"),
    (dict(avg_size=True), "avg_size: not a size: true"),
    (dict(chunker=None), "chunker null: must be one of"),
    (dict(avg_size="16K", min_size="8K", max_size="8K"), "max_size 8192: chunk sizes must satisfy min < avg < max"),
])
def test_build_blames_what_the_caller_gave(kwargs, message):
    with pytest.raises(SettingsError) as info:
        StoreSettings.build(**kwargs)
    assert message in str(info.value)


def test_build_names_options_as_the_caller_calls_them():
    with pytest.raises(SettingsError, match="^--avg-size 0: the average chunk size"):
        StoreSettings.build(avg_size=0, names={"avg_size": "--avg-size"})


@pytest.mark.parametrize("text, value", [("4096", 4096), ("4096B", 4096), ("16K", 16384), ("16kb", 16384),
                                         ("64KiB", 65536), ("1M", 1 << 20), ("2g", 2 << 30), ("1T", 1 << 40),
                                         (" 8K ", 8192), ("0", 0), (32768, 32768)])
def test_parse_size_accepts(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text, reason", [("-32K", "cannot be negative"), ("-1", "cannot be negative"),
                                          (-5, "cannot be negative"), ("lots", "use e.g."), ("1.5M", "use e.g."),
                                          ("16Ki", "use e.g."), ("16ib", "use e.g."), ("", "use e.g."),
                                          (True, "use e.g."), (None, "use e.g."), ("1e6", "use e.g.")])
def test_parse_size_refuses_with_one_message(text, reason):
    with pytest.raises(SettingsError) as info:
        parse_size(text)
    assert str(info.value).startswith("not a size: ") and reason in str(info.value)
    assert "\n" not in str(info.value)


def test_subprocess_helper_matches_the_in_process_one(store):
    """run_cli_in_process is the same code path as the command: same status, same line."""
    (store / "chunkfs.json").write_text("{not json")
    real = run_cli("ls", store, check=False)
    here = run_cli_in_process("ls", store)
    assert (real.returncode, real.stderr) == (here.returncode, here.stderr)
