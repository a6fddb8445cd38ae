"""Read-ahead across files (dsvc.stream.ReadAhead, issue 15): when the caller declares
the order of its reads (``fs.cat`` of many paths, ``iter_files``, ``cat_ranges``, a
``find``-then-open loop, the torch dataset's files), the chunks of the next files are
planned ahead and fetched as coalesced ranged reads per pack, so streaming N small
files of one pack costs a few requests, not N. Counted on the wire (every request of
the remote backend), from a fresh store with only the remote (folder, S3 on moto, Azure
on Azurite); no timing."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fs_helpers import ROOT, fresh_fs, publish, wire

from dsvc import registry

N = 40
FILES = {f"s/{i:03d}.bin": random.Random(i).randbytes(20_000 + i) for i in range(N)}
PATHS = [f"dsvc://{ROOT}/{p}" for p in sorted(FILES)]


@pytest.fixture(
    params=[
        "file",
        pytest.param("s3", marks=pytest.mark.servers),
        pytest.param("azure", marks=pytest.mark.servers),
    ]
)
def spec(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A version of N small files (one chunk each, all in one pack) on the remote."""
    from conftest import _remote_spec

    s = _remote_spec(request.param, request, tmp_path)
    publish(monkeypatch, tmp_path / "a", s, FILES, version="1.0.0")
    registry.close_all()
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "unused"))
    return s


def _ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dsvc-ahead"]


def test_cat_of_many_small_files_takes_a_few_requests_not_one_per_file(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    fs = fresh_fs(tmp_path / "b", spec)
    fs.info(PATHS[0])  # the version and its trees first: the wire below sees content only
    with wire(fs.reader.remote.backend) as w:
        got = fs.cat(PATHS)
    assert got == {p.removeprefix("dsvc://"): FILES[p.split(f"{ROOT}/")[1]] for p in PATHS}
    # one request per file before read-ahead (40); now the file being read and one
    # coalesced range for the rest (a third if the first read races the planner)
    assert w.pack_reads() <= 3, w.requests
    assert fs.reader.stats.ahead_chunks >= N - 2
    fs.close()
    assert _ahead_threads() == []
    # every chunk was kept in the store: a new filesystem reads them with no request
    fs2 = fresh_fs(tmp_path / "b", spec)
    fs2.info(PATHS[0])
    with wire(fs2.reader.remote.backend) as w2:
        assert [f.read() for _, f in fs2.iter_files(PATHS)] == [FILES[p] for p in sorted(FILES)]
    assert w2.requests == []


def test_a_find_then_open_loop_reads_ahead_once_files_come_in_order(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    fs = fresh_fs(tmp_path / "b", spec)
    names = fs.find(f"dsvc://{ROOT}/s")
    assert len(names) == N
    with wire(fs.reader.remote.backend) as w:
        for name in names:
            with fs.open(name) as f:
                assert f.read() == FILES[name.split("/", 2)[2]]
    # the first file alone, then the second starts read-ahead over the rest
    assert w.pack_reads() <= 4, w.requests
    fs.close()
    assert _ahead_threads() == []


def test_files_opened_out_of_order_are_not_read_ahead(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """Random access after a find fetches only what is read: no read-ahead starts."""
    fs = fresh_fs(tmp_path / "b", spec)
    names = fs.find(f"dsvc://{ROOT}/s")
    picked = [names[i] for i in (30, 3, 17, 9, 25)]
    for name in picked:
        assert fs.cat_file(name) == FILES[name.split("/", 2)[2]]
    fs.close()
    assert fs.reader.stats.ahead_chunks == 0
    assert registry.open_store(tmp_path / "b").stats()["chunks"] == len(picked)


def test_read_ahead_stops_at_its_window_and_close_joins_its_threads(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """Reading 3 files of 40 with a 128 KiB window fetches at most the window past them."""
    fs = fresh_fs(tmp_path / "b", spec, cache_bytes=256 << 10)  # window: half the cache
    names = fs.find(f"dsvc://{ROOT}/s")
    for name in names[:3]:
        assert fs.cat_file(name) == FILES[name.split("/", 2)[2]]
    fs.close()  # joins the read-ahead threads: nothing is fetched after this
    assert _ahead_threads() == []
    fetched = registry.open_store(tmp_path / "b").stats()["chunks"]
    # 3 files read + 128 KiB of ~20 KB files ahead of the third (7), + one step's overshoot
    assert 3 <= fetched <= 3 + 7 + 1, fetched
    assert fetched < N


def test_cat_ranges_past_half_the_cache_read_ahead(spec: dict[str, Any], tmp_path: Path) -> None:
    fs = fresh_fs(tmp_path / "b", spec, cache_bytes=1 << 20)  # 40 x 20 KB > 512 KiB
    fs.info(PATHS[0])
    starts = [i % 7 for i in range(N)]
    with wire(fs.reader.remote.backend) as w:
        got = fs.cat_ranges(PATHS, starts, [None] * N)
    assert got == [FILES[p][s:] for p, s in zip(sorted(FILES), starts)]
    assert w.pack_reads() < N // 4, w.requests
    assert fs.reader.stats.ahead_chunks > 0
    fs.close()


def test_torch_dataset_read_in_index_order_reads_ahead(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from dsvc.torch import DsvcDataset

    ds = DsvcDataset(
        f"dsvc://{ROOT}/s",
        home=str(tmp_path / "b"),
        remote=spec["url"],
        remote_options=dict(spec["options"]),
    )
    assert len(ds) == N
    with wire(ds.fs.reader.remote.backend) as w:
        assert [ds[i] for i in range(N)] == [FILES[p] for p in sorted(FILES)]
    assert w.pack_reads() <= 4, w.requests
    ds.fs.close()


def _child(fs: Any, out: Any) -> None:
    try:
        got = [fs.cat_file(p) for p in PATHS[2:]]  # in order: the child reads ahead too
        ahead = fs._order.ahead
        import os

        out.send(("ok", got, ahead is not None and ahead.pid == os.getpid()))
    except BaseException as e:
        out.send(("error", repr(e), False))


def test_a_fork_while_reading_ahead_reads_on_in_the_child(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """DataLoader workers fork while the parent may be reading ahead: the child starts
    its own read-ahead (the parent's threads and in-flight marks are not its own)."""
    if spec["kind"] != "file":
        pytest.skip("fork safety of each client is tested in test_stream_fork.py")
    fs = fresh_fs(tmp_path / "b", spec, cache_bytes=256 << 10)
    fs.find(f"dsvc://{ROOT}/s")
    assert fs.cat_file(PATHS[0]) == FILES["s/000.bin"]
    assert fs.cat_file(PATHS[1]) == FILES["s/001.bin"]  # read-ahead starts (threads)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fs, send))
    p.start()
    try:
        assert recv.poll(60), "the forked child hung"
        status, got, own = recv.recv()
    finally:
        if p.is_alive():
            p.kill()
        p.join()
    assert status == "ok", got
    assert got == [FILES[p] for p in sorted(FILES)[2:]]
    assert own, "the child read ahead with the parent's read-ahead"
    fs.close()
    assert _ahead_threads() == []


def _entries(fs: Any, paths: list[str]) -> list[Any]:
    """The file entries of ``paths`` (dsvc:// URLs of the version)."""
    out = []
    for p in paths:
        e = fs.reader.lookup(fs.version(p).tree, ("s", p.rsplit("/", 1)[1]))
        assert e is not None
        out.append(e)
    return out


def test_steps_of_the_plan_do_not_cut_ranged_reads(
    spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-ahead plans the sequence in steps; a step rarely ends where a coalesced range
    does, and sending each step's partial last range alone cost one small request per
    step (moto S3, 2 GB: 287 requests where get_local_copy sends 193). The partial
    range is planned with the next step: streaming sends the requests that
    get_local_copy's planner makes for the same chunks, plus the first read's own."""
    from dsvc import stream
    from dsvc.remote import fetch

    # ranges of ~5 files, steps of ~2.5: the 40 files (~800 KB) in 16 steps, ~10 ranges
    monkeypatch.setattr(fetch, "RANGE_MAX", 100_000)
    monkeypatch.setattr(stream, "AHEAD_STEP", 50_000)
    # A reader that overtakes the planner (its thread descheduled on a loaded machine:
    # 3-4 more requests in CI runs) fetches the held range itself. What is tested here
    # is the plan, so the reader waits at each move until read-ahead has planned and
    # fetched what it queued (before the fix, every run sent a partial range per
    # step: 15 requests for 10 ranges).
    real_at = stream.ReadAhead.at

    def at_then_settle(self: Any, index: int, offset: int = 0) -> None:
        real_at(self, index, offset)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                planning = self._planning
            if not planning and not self.reader._inflight:
                return
            time.sleep(0.001)

    monkeypatch.setattr(stream.ReadAhead, "at", at_then_settle)
    counts = []
    for attempt in range(3):
        fs = fresh_fs(tmp_path / f"b{attempt}", spec)
        fs.info(PATHS[0])
        with wire(fs.reader.remote.backend) as w:
            got = fs.cat(PATHS)
        assert list(got.values()) == [FILES[p] for p in sorted(FILES)]
        ids = [c for e in _entries(fs, PATHS) for c, _ in fs.reader.chunks(e)]
        assert len(ids) == N
        planned = len(fs.reader.remote.plan_chunks(ids))
        assert planned >= 8  # the ranges really are cut (else this tests nothing)
        counts.append(w.pack_reads())
        fs.close()
        if counts[-1] <= planned + 2:
            break
    assert min(counts) <= planned + 2, (counts, planned)


def test_chunks_read_ahead_are_stored_in_batches_and_served_until_stored(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """A fetch of read-ahead hands its verified chunks to the cache (and so to the
    waiting read) before they are written into the local store, in batches, by one
    thread at a time. A chunk dropped from the cache before its batch is written is
    still served from memory, with no request; once written, from the store."""
    fs = fresh_fs(tmp_path / "b", spec, cache_bytes=0)  # the cache keeps nothing
    fs.info(PATHS[0])
    reader = fs.reader
    ids = [c for e in _entries(fs, PATHS[:2]) for c, _ in reader.chunks(e)]
    [job] = reader.remote.plan_chunks(ids)  # neighbours in one pack: one ranged read
    got, _ = reader.remote.read_verified(job)
    assert [c for c, _, _ in got] == ids
    reader._keep(got)
    assert reader.store.missing("chunks", ids) == ids  # not written yet
    with wire(reader.remote.backend) as w:
        out = reader.get_chunks(ids)
    assert w.requests == []
    assert out[ids[0]] + out[ids[1]] == FILES["s/000.bin"] + FILES["s/001.bin"]
    reader.store_kept(wait=True)
    assert reader.store.missing("chunks", ids) == []
    assert reader._unstored == {}
    with wire(reader.remote.backend) as w:
        assert reader.get_chunks(ids) == out  # from the store now
    assert w.requests == [] and reader.stats.local_chunks == 2
    fs.close()


def test_a_big_first_file_read_in_order_fetches_the_next_files_while_it_is_read(
    spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A find-then-open loop whose first file is big: its sequential reads start the
    read-ahead of the found order, not one of the file alone, so the files after it
    are fetched while it is read (before, the pipeline drained at the end of the big
    file and the next file's first read waited for its own request)."""
    big = random.Random(3).randbytes(2 << 20)  # several chunks
    small = {f"b/{i}.bin": random.Random(100 + i).randbytes(30_000) for i in range(5)}
    files = {"a/big.bin": big, **small}
    publish(monkeypatch, tmp_path / "a2", spec, files, name="big", version="1.0.0")
    registry.close_all()
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "unused"))
    fs = fresh_fs(tmp_path / "b", spec)
    names = fs.find(f"dsvc://{ROOT.replace('/data', '/big')}")
    assert names[0].endswith("a/big.bin") and len(names) == 6
    with fs.open(names[0]) as f:
        parts = []
        while block := f.read(64 << 10):
            parts.append(block)
    assert b"".join(parts) == big
    # the read-ahead runs on: wait for its fetches (threads exit when nothing is left)
    deadline = time.monotonic() + 60
    while len(fs.reader.pool) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fs.reader.pool) == 0, "read-ahead did not finish"
    with wire(fs.reader.remote.backend) as w:
        for name in names[1:]:
            with fs.open(name) as f:
                assert f.read() == small[name.split("/big/", 1)[1]]
    assert w.requests == []  # every small file was fetched while the big one was read
    fs.close()
    assert _ahead_threads() == []
