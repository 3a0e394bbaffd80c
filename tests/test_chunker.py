"""The chunker's contract: boundaries depend on content only, never on how input was split."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from chunkfs.chunker import chunk_stream, make_chunker
from chunkfs.errors import SettingsError
from chunkfs.settings import StoreSettings, parse_size

SMALL_CDC = StoreSettings.build("fastcdc", min_size=256, avg_size=1024, max_size=4096)
SMALL_FIXED = StoreSettings.build("fixed", avg_size=1000)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@pytest.mark.parametrize("settings_", [SMALL_CDC, SMALL_FIXED], ids=["fastcdc", "fixed"])
@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=40000), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_boundaries_do_not_depend_on_feed_sizes(settings_, data, cuts):
    whole = list(chunk_stream(settings_, [data]))
    pieces = list(chunk_stream(settings_, split(data, cuts)))
    assert pieces == whole
    assert b"".join(whole) == data


def test_fastcdc_respects_sizes_and_random_data_averages_near_target():
    data = random.Random(1).randbytes(4 << 20)
    chunks = list(chunk_stream(SMALL_CDC, [data]))
    assert all(len(c) <= 4096 for c in chunks)
    assert all(len(c) >= 256 for c in chunks[:-1])
    assert 700 < len(data) / len(chunks) < 1600


def test_fixed_chunker_cuts_exact_sizes():
    chunks = list(chunk_stream(SMALL_FIXED, [b"x" * 2500]))
    assert [len(c) for c in chunks] == [1000, 1000, 500]


def test_feed_returns_only_final_chunks_and_finish_the_rest():
    chunker = make_chunker(SMALL_CDC)
    data = random.Random(2).randbytes(10000)
    out = chunker.feed(data)
    assert chunker.pending == len(data) - sum(map(len, out))
    out += chunker.finish()
    assert b"".join(out) == data and chunker.pending == 0


@pytest.mark.parametrize("text,value", [("4096", 4096), ("16K", 16384), ("1M", 1 << 20), ("64KiB", 65536), ("2g", 2 << 30)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("kwargs,message", [
    (dict(chunker="rabin"), "unknown chunker"),
    (dict(avg_size="3000"), "power of two"),
    (dict(avg_size="16K", min_size="32K"), "min < avg < max"),
    (dict(avg_size="16K", max_size="64M"), "exceeds"),
    (dict(chunker="fixed", avg_size="100"), "at least 512"),
    (dict(avg_size="lots"), "not a size"),
])
def test_invalid_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        StoreSettings.build(**kwargs)
