"""The chunk index in two levels (``chunknew`` merged into ``chunkloc``, issue 11).

New chunk locations go to a small level and move to the large one in key order; every
read, delete, gc move and count sees both, and an id is never in both. A process killed
during a merge leaves every committed chunk readable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc import codec
from dsvc import store as store_mod
from dsvc.ids import TAG_CHUNK, object_id
from dsvc.maintenance import fsck, local_gc
from dsvc.store import LEVEL_FORMAT, Store
from tests.helpers_core import chunk_place, open_store

REPO = Path(__file__).resolve().parent.parent

SMALL_LEVELS = {"NEW_LEVEL_MIN": 4, "NEW_LEVEL_RATIO": 2, "NEW_LEVEL_MAX": 16, "MERGE_STEP": 3}


@pytest.fixture
def small_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Levels small enough that a test's few chunks fill and merge them."""
    for name, value in SMALL_LEVELS.items():
        monkeypatch.setattr(store_mod, name, value)


def level_ids(store: Store) -> tuple[set[bytes], set[bytes]]:
    """The ids in ``chunkloc`` and in ``chunknew``."""
    with store.env.begin() as txn:
        merged = {bytes(k) for k, _ in txn.cursor(db=store._dbs["chunkloc"])}
        new = {bytes(k) for k, _ in txn.cursor(db=store._dbs["chunknew"])}
    return merged, new


def payload(n: int) -> bytes:
    return f"chunk {n} ".encode() * (n % 7 + 1)


def cid_of(n: int) -> bytes:
    return object_id(TAG_CHUNK, payload(n))


def put(store: Store, ns: list[int]) -> None:
    with store.batch() as b:
        for n in ns:
            b.put_chunk(payload(n))


def assert_reads(store: Store, model: set[int]) -> None:
    """Every way of reading the index agrees with ``model`` (the chunks stored)."""
    merged, new = level_ids(store)
    assert not merged & new, "an id is in both levels"
    ids = {cid_of(n): n for n in model}
    assert merged | new == set(ids)
    absent = object_id(TAG_CHUNK, b"never stored")
    with store.reader() as r:
        assert [loc[0] for loc in r.chunk_locations()] == sorted(ids)
        got = r.read_chunks([*ids, absent])
        assert [bytes(g) if g is not None else None for g in got] == [
            *(payload(n) for n in ids.values()),
            None,
        ]
        for cid, n in ids.items():
            assert r.has_chunk(cid)
            assert r.chunk_size(cid) == len(codec.encode_frame(payload(n), store.level))
            assert bytes(r.chunk(cid)) == payload(n)
        assert not r.has_chunk(absent) and r.chunk_frame(absent) is None
        assert r.missing_chunks([absent, *ids]) == [absent]
    assert store.stats()["chunks"] == len(model)


def test_new_locations_fill_the_small_level_then_merge(small_levels: None, tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    put(store, [0, 1, 2])
    assert level_ids(store) == (set(), {cid_of(n) for n in (0, 1, 2)})
    assert store.get_config("format_version") == LEVEL_FORMAT
    put(store, [3])  # 4 new against 0 merged: full, merged 3 per transaction
    assert level_ids(store) == ({cid_of(n) for n in range(4)}, set())
    put(store, [4, 5, 6])  # 3 < NEW_LEVEL_MIN: stays
    assert level_ids(store)[1] == {cid_of(n) for n in (4, 5, 6)}
    assert_reads(store, set(range(7)))
    put(store, [7, 8])  # 5 new >= 4 merged / 2
    assert level_ids(store) == ({cid_of(n) for n in range(9)}, set())
    assert_reads(store, set(range(9)))


def test_a_location_put_again_keeps_the_first_in_either_level(
    small_levels: None, tmp_path: Path
) -> None:
    """Two writers may append the same chunk (each checked before the other committed):
    the first location stays, in whichever level holds it, and no id gets a second."""
    store = open_store(tmp_path / "home")
    put(store, range(4))  # merged
    put(store, [10])  # in chunknew
    before = {n: chunk_place(store, cid_of(n)) for n in (0, 10)}
    with store.batch() as b:
        for n in (0, 10):
            b.put_chunk_frame(cid_of(n), codec.encode_frame(payload(n), 0))
    assert {n: chunk_place(store, cid_of(n)) for n in (0, 10)} == before
    assert_reads(store, {0, 1, 2, 3, 10})


def test_a_merge_into_a_large_level_takes_shorter_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 (RSS flat from 1M to 3M files): a merge's run spans its share of the
    key space, so the ``chunkloc`` pages one transaction dirties (kept allocated by
    LMDB) and the pages it maps between two checks grow with ``chunkloc``. Both are
    bounded in pages, not ids: with bounds below one page per id, each transaction
    moves one id and the mapped store is checked after each, against the merge's own
    budget."""
    monkeypatch.setattr(store_mod, "NEW_LEVEL_MIN", 6)
    monkeypatch.setattr(store_mod, "MERGE_DIRTY_PAGES", 0)
    monkeypatch.setattr(store_mod, "MERGE_CHECK_PAGES", 0)
    store = open_store(tmp_path / "home")
    put(store, range(5))
    commits: list[str] = []
    checks: list[int | None] = []
    monkeypatch.setattr(store_mod.faultpoints, "ENABLED", True)
    monkeypatch.setattr(
        store_mod.faultpoints,
        "hit",
        lambda kind, phase, label="": commits.append(label) if phase == "after" else None,
    )
    real_check = store._map_budget.check
    monkeypatch.setattr(
        store._map_budget, "check", lambda budget=None: (checks.append(budget), real_check(budget))
    )
    put(store, [5])  # six new ids: full, merged
    assert level_ids(store) == ({cid_of(n) for n in range(6)}, set())
    assert commits.count("chunkloc[merge]") == 6
    assert checks.count(store_mod.MERGE_MAPPED_BUDGET) == 6
    assert_reads(store, set(range(6)))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.lists(st.integers(0, 40), max_size=12)),
            st.tuples(st.just("delete"), st.lists(st.integers(0, 40), max_size=6)),
            st.tuples(st.just("merge"), st.just([])),
            st.tuples(st.just("gc_move"), st.just([])),
        ),
        max_size=12,
    )
)
def test_levels_against_a_set(small_levels: None, steps: list[tuple[str, list[int]]]) -> None:
    """Puts, deletes, merges and gc's pack moves in any order: the index holds exactly
    the chunks put and not deleted since, each readable, each in one level."""
    with tempfile.TemporaryDirectory() as d:
        store = open_store(Path(d) / "home")
        model: set[int] = set()
        for op, ns in steps:
            if op == "put":
                put(store, ns)
                model |= set(ns)
            elif op == "delete":
                with store.batch() as b:
                    for n in ns:
                        b.delete_chunk(cid_of(n))
                model -= set(ns)
            elif op == "merge":
                store.merge_chunk_levels()
                assert level_ids(store)[1] == set()
            else:  # move every live chunk to a new pack, as gc's compaction does
                store.packs.close_writer()
                old = set(store.packs.packs())
                store.packs.start_new_pack()
                store._move_live(old)
                with store.reader() as r:
                    assert all(loc[0] not in old for _, loc, _ in r.chunk_locations())
            assert_reads(store, model)
        store.close()


def test_gc_and_fsck_see_both_levels(small_levels: None, tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    put(store, range(4))  # merged (first fill)
    put(store, [4, 5])  # new
    merged, new = level_ids(store)
    assert merged and new
    report = fsck(store)
    assert report["chunks"] == 6 and not report["bad_chunks"], report
    assert not report["structure"] and not report["missing"], report
    rep = local_gc(store)  # no record reaches them: every chunk goes, from both levels
    assert rep["chunks_deleted"] == 6
    assert level_ids(store) == (set(), set())
    assert store.stats()["chunks"] == 0


MERGE_CHILD = """
import sys
from dsvc import store as store_mod
for name, value in {levels!r}.items():
    setattr(store_mod, name, value)
from dsvc.store import Store
store = Store(sys.argv[1])
with store.batch() as b:
    for n in range(int(sys.argv[2]), int(sys.argv[3])):
        b.put_chunk(f"chunk {{n}} ".encode() * (n % 7 + 1))
store.merge_chunk_levels()
print("done", flush=True)
"""


def test_sigkill_during_a_merge_loses_no_chunk(tmp_path: Path) -> None:
    """Killed before or after any merge transaction's commit, the store keeps every chunk
    of the batch that committed before, each readable in one level; the next writer's
    merge finishes the move."""
    script = MERGE_CHILD.format(levels=SMALL_LEVELS)

    def child(home: Path, lo: int, hi: int, spec: str, log: Path | None = None) -> int:
        env = {**os.environ, "DSVC_FAULT_POINTS": spec, "PYTHONPATH": str(REPO)}
        if log is not None:
            env["DSVC_FAULT_LOG"] = str(log)
        p = subprocess.run(
            [sys.executable, "-c", script, str(home), str(lo), str(hi)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
        assert p.returncode in (0, -signal.SIGKILL), p.stderr
        return p.returncode

    log = tmp_path / "points.log"
    assert child(tmp_path / "count", 0, 20, "count", log) == 0
    points = [ln.split("\t") for ln in log.read_text().splitlines()]
    merges = [int(p[0]) for p in points if p[3] == "chunkloc[merge]"]
    assert len(merges) >= 8, points  # 20 ids, 3 per transaction, before and after each
    for n in merges:
        home = tmp_path / f"home{n}"
        assert child(home, 0, 20, f"kill:{n}") == -signal.SIGKILL
        store = Store(home)
        assert_reads(store, set(range(20)))  # the batch committed before any merge
        store.close()
        assert child(home, 20, 24, "count") == 0  # the next write merges the rest
        store = Store(home)
        assert level_ids(store)[1] == set()
        assert_reads(store, set(range(24)))
        store.close()
