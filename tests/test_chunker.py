"""Content-defined chunking (dsvc.chunker) and the store's fixed chunker config."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc.chunker import DEFAULT_PARAMS, Chunker, ChunkerParams, KiB, MiB
from dsvc.errors import ConfigError
from dsvc.ids import chunk_id
from dsvc.store import Store
from tests.helpers_core import SMALL

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BIG = random.Random(1234).randbytes(8 * MiB)
BIG_IDS = [chunk_id(c) for c in Chunker(SMALL).cut(BIG)]


def ids_of(chunks) -> list[bytes]:
    return [chunk_id(c) for c in chunks]


class Trickle(io.RawIOBase):
    """A raw stream whose ``readinto`` returns short reads, like a pipe or socket."""

    def __init__(self, data: bytes, max_read: int) -> None:
        self._f = io.BytesIO(data)
        self._max = max_read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._max)
        return self._f.readinto(memoryview(b)[:n])


@pytest.mark.parametrize("n", [0, 1, 63, 1024, 1025, 16 * KiB, 100_000])
def test_concatenation_and_bounds(n):
    ch = Chunker(SMALL)
    data = random.Random(n).randbytes(n)
    chunks = [bytes(c) for c in ch.cut(data)]
    assert b"".join(chunks) == data
    assert len(chunks) >= 1
    if n <= SMALL.min_size:
        assert chunks == [data]  # small files are one chunk
    for c in chunks[:-1]:
        assert SMALL.min_size <= len(c) <= SMALL.max_size
    assert len(chunks[-1]) <= SMALL.max_size


def test_empty_input_is_one_empty_chunk():
    ch = Chunker(SMALL)
    assert [bytes(c) for c in ch.cut(b"")] == [b""]
    assert [bytes(c) for c in ch.cut_stream(io.BytesIO(b""))] == [b""]


@given(
    st.integers(0, 600 * KiB),
    st.integers(0, 2**32),
    st.sampled_from([16 * KiB + 1, 32 * KiB, 48 * KiB + 7, 64 * KiB, 200 * KiB]),
    st.sampled_from([None, 1000, 40_000]),
)
@SETTINGS
def test_cut_stream_equals_cut(n, seed, window, trickle):
    """Small windows roll many times; every cut equals the whole-buffer cut."""
    rng = random.Random(seed)
    # mix random and repetitive regions (max-size cuts happen in repetitive data)
    data = bytearray()
    while len(data) < n:
        if rng.random() < 0.3:
            data += bytes([rng.randrange(256)]) * rng.randrange(1, 40 * KiB)
        else:
            data += rng.randbytes(rng.randrange(1, 60 * KiB))
    data = bytes(data[:n])
    ch = Chunker(SMALL)
    ch.window = window
    whole = [bytes(c) for c in ch.cut(data)]
    f = io.BytesIO(data) if trickle is None else Trickle(data, trickle)
    streamed = [bytes(c) for c in ch.cut_stream(f)]
    assert streamed == whole
    assert b"".join(streamed) == data


def test_cut_stream_over_a_file_with_many_windows(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(BIG[: 3 * MiB])
    ch = Chunker(SMALL)
    ch.window = 4 * SMALL.max_size  # the smallest window the constructor would allow
    with open(p, "rb", buffering=0) as f:
        streamed = ids_of(ch.cut_stream(f))
    assert streamed == ids_of(ch.cut(BIG[: 3 * MiB]))
    assert len(streamed) > 3 * MiB // ch.window  # the window rolled many times


def test_window_default_and_floor():
    assert Chunker(SMALL).window == 16 * MiB
    big = ChunkerParams(min_size=1 * MiB, avg_size=4 * MiB, max_size=8 * MiB)
    assert Chunker(big).window == 32 * MiB
    assert Chunker().params == DEFAULT_PARAMS


@given(st.integers(1, 100), st.integers(0, 64 * KiB - 1), st.integers(0, 2**32))
@settings(max_examples=15, deadline=None)
def test_boundaries_stable_under_insertion(k, offset, seed):
    ch = Chunker(SMALL)
    before = BIG_IDS
    edited = BIG[:offset] + random.Random(seed).randbytes(k) + BIG[offset:]
    after = ids_of(ch.cut(edited))
    kept = len(set(after) & set(before))
    assert kept >= 0.9 * len(after)
    # chunks before the edit are untouched and the cut points realign shortly after it:
    # only a few chunks around the edit are new
    prefix = next(i for i, (x, y) in enumerate(zip(after, before, strict=False)) if x != y)
    suffix = next(i for i, (x, y) in enumerate(zip(after[::-1], before[::-1])) if x != y)
    assert prefix + suffix >= len(after) - 4
    assert prefix * SMALL.max_size >= offset - SMALL.max_size


def test_boundaries_stable_under_deletion_and_overwrite():
    ch = Chunker(SMALL)
    before = set(ids_of(ch.cut(BIG)))
    for edited in (
        BIG[:1000] + BIG[1050:],
        BIG[: 4 * MiB] + b"\x00" * 10 + BIG[4 * MiB + 10 :],
    ):
        after = ids_of(ch.cut(edited))
        assert len(set(after) - before) <= 5


@pytest.mark.parametrize(
    "kw",
    [
        dict(min_size=63, avg_size=4096, max_size=16384),
        dict(min_size=8192, avg_size=4096, max_size=16384),
        dict(min_size=1024, avg_size=32768, max_size=16384),
        dict(min_size=1024, avg_size=4096, max_size=16384, algorithm="rabin"),
        dict(min_size=1024, avg_size=4096, max_size=16384, normalization=4),
    ],
)
def test_params_validation(kw):
    with pytest.raises(ConfigError):
        ChunkerParams(**kw)


def test_params_config_round_trip_and_malformed():
    cfg = SMALL.to_config()
    assert cfg == {
        "algorithm": "fastcdc2020",
        "min_size": 1024,
        "avg_size": 4096,
        "max_size": 16384,
        "normalization": 1,
    }
    assert ChunkerParams.from_config(cfg) == SMALL
    for bad in ({}, {"min_size": "x", "avg_size": 1, "max_size": 2}, {"min_size": 1024}):
        with pytest.raises(ConfigError):
            ChunkerParams.from_config(bad)


def test_store_keeps_its_chunker_config(tmp_path):
    s = Store(tmp_path, chunker_params=SMALL)
    s.close()
    other = ChunkerParams(min_size=2 * KiB, avg_size=8 * KiB, max_size=32 * KiB)
    with pytest.raises(ConfigError, match="cannot change"):
        Store(tmp_path, chunker_params=other)
    # reopening without params, or with the same ones, keeps the original
    for params in (None, SMALL):
        s = Store(tmp_path, chunker_params=params)
        assert s.chunker_params == SMALL
        assert s.chunker.params == SMALL
        assert s.get_config("chunker") == SMALL.to_config()
        s.close()


def test_new_store_uses_default_params(tmp_path):
    with Store(tmp_path) as s:
        assert s.chunker_params == DEFAULT_PARAMS
        assert s.get_config("format_version") == 1
