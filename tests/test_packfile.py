"""Chunk bytes in pack files (issue 11): the index encoding, torn tails, gc compaction
(and a kill -9 at each of its steps), fsck of damaged packs, and stores of format 1."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc import codec, packfile, registry
from dsvc.dataset import Dataset
from dsvc.errors import IntegrityError
from dsvc.ids import TAG_CHUNK, chunk_id
from dsvc.maintenance import fsck, local_gc
from dsvc.store import LEVEL_FORMAT, Store
from tests.helpers_core import chunk_place, open_store

ROOT = Path(__file__).resolve().parent.parent


@given(
    pack=st.integers(0, 2**64 - 1),
    off=st.integers(0, 2**64 - 1),
    length=st.integers(0, 2**32 - 1),
)
def test_location_encoding_round_trips(pack: int, off: int, length: int) -> None:
    raw = packfile.encode_loc(pack, off, length)
    assert len(raw) == packfile.LOC.size == 20
    assert packfile.decode_loc(raw) == (pack, off, length)
    with pytest.raises(ValueError):
        packfile.decode_loc(raw[:-1])


@settings(max_examples=30, deadline=None)
@given(frames=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=30))
def test_appended_frames_read_back_at_their_locations(tmp_path_factory, frames) -> None:
    folder = tmp_path_factory.mktemp("packs")
    packs = packfile.Packs(folder)
    items = [(os.urandom(16), f) for f in frames]
    locs = []
    for i in range(0, len(items), 7):  # several appends, one pack
        locs += packs.append(items[i : i + 7])
    assert [c for c, _ in locs] == [c for c, _ in items]
    for (cid, frame), (_, loc) in zip(items, locs):
        assert packs.read(cid, loc) == frame
        pack, off, length = packfile.decode_loc(loc)
        assert length == len(frame)
        raw = packs.path(pack).read_bytes()
        # the entry header names the chunk and its length, right before the frame
        assert packfile.HEADER.unpack(raw[off - packfile.HEADER.size : off]) == (cid, length)
    assert packs.path(packfile.decode_loc(locs[0][1])[0]).read_bytes()[:8] == packfile.MAGIC
    packs.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    frames=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=30),
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
    gap=st.sampled_from([0, 100, 64 << 10]),
    run=st.sampled_from([1, 5000, 8 << 20]),
)
def test_read_many_gives_what_read_gives_in_any_order(
    tmp_path_factory, monkeypatch, frames, picks, gap, run
) -> None:
    """Frames read in coalesced runs are exactly those read one by one, whatever the
    order, repeats, and run limits (one frame per run up to the whole pack)."""
    monkeypatch.setattr(packfile, "READ_GAP", gap)
    monkeypatch.setattr(packfile, "READ_RUN", run)
    packs = packfile.Packs(tmp_path_factory.mktemp("packs"))
    items = [(os.urandom(16), f) for f in frames]
    locs = []
    for i in range(0, len(items), 7):
        locs += packs.append(items[i : i + 7])
    want = [locs[p % len(locs)] for p in picks]
    got = packs.read_many(want)
    assert [bytes(g) for g in got] == [packs.read(cid, loc) for cid, loc in want]
    packs.close()


def test_read_many_reports_a_damaged_or_missing_pack_by_chunk(tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    with store.batch() as b:
        ids = [b.put_chunk(os.urandom(300 + i), level=0) for i in range(5)]
    with store.reader() as r:
        assert [bytes(c) for c in r.read_chunks(ids)] == [store.get_chunk(c) for c in ids]
        assert r.read_chunks([bytes(16)]) == [None]  # absent: None, not an error
    path, off, _ = chunk_place(store, ids[3])
    with open(path, "r+b") as f:  # another id in the entry's header
        f.seek(off - packfile.HEADER.size)
        f.write(b"\xee")
    with store.reader() as r, pytest.raises(Exception, match=f"{ids[3].hex()}.*does not hold it"):
        r.read_chunks(ids)
    store.close()
    path.unlink()
    store = open_store(tmp_path / "home")
    with store.reader() as r, pytest.raises(Exception, match="is missing"):
        r.read_chunks(ids[:2])
    store.close()


def test_read_many_reports_a_short_pack_and_a_bad_location_by_chunk(tmp_path: Path) -> None:
    """A pack cut short under a run of frames, and an index value of the wrong size, are
    IntegrityErrors naming the chunk, not short or wrong bytes."""
    packs = packfile.Packs(tmp_path / "packs")
    items = [(os.urandom(16), os.urandom(200)) for _ in range(4)]
    want = packs.append(items)
    packs.close()
    with pytest.raises(IntegrityError, match=f"{items[0][0].hex()}: bad location") as ei:
        packfile.Packs(tmp_path / "packs").read_many([(items[0][0], b"\0" * 7), *want[1:]])
    assert ei.value.object_id == items[0][0]
    pack, off, _ = packfile.decode_loc(want[3][1])
    os.truncate(packs.path(pack), off + 100)  # the last frame loses its tail
    packs = packfile.Packs(tmp_path / "packs")
    assert [bytes(f) for f in packs.read_many(want[:3])] == [f for _, f in items[:3]]
    with pytest.raises(IntegrityError, match=f"{items[3][0].hex()}.*short or overwritten"):
        packs.read_many(want)
    packs.close()


def test_read_chunks_mixes_packed_and_format_1_chunks_in_order(tmp_path: Path) -> None:
    """One batch read of chunks in packs, chunks in LMDB (format 1) and absent ids gives
    each in its place."""
    store = open_store(tmp_path / "home")
    old = [os.urandom(500 + i) for i in range(3)]
    with store.env.begin(write=True) as txn:  # what format 1 wrote
        for data in old:
            txn.put(chunk_id(data), codec.encode_frame(data, 0), db=store._dbs["chunks"])
    with store.batch() as b:
        new = [b.put_chunk(os.urandom(700 + i), level=0) for i in range(3)]
    ids = [new[0], chunk_id(old[0]), bytes(16), new[1], chunk_id(old[1]), chunk_id(old[2]), new[2]]
    with store.reader() as r:
        got = r.read_chunks(ids)
    assert got[2] is None
    assert [bytes(g) for i, g in enumerate(got) if i != 2] == [
        store.get_chunk(c) for i, c in enumerate(ids) if i != 2
    ]
    store.close()


def test_a_torn_tail_is_garbage_and_appends_go_on(tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    with store.batch() as b:
        a = b.put_chunk(os.urandom(5000), level=0)
    path, _, _ = chunk_place(store, a)
    store.close()
    with open(path, "ab") as f:  # what a write cut short by a crash leaves
        f.write(b"\x01" * 16 + b"\x00\x01\x00\x00" + b"half a frame")
    store = open_store(tmp_path / "home")
    with store.batch() as b:
        c = b.put_chunk(b"after the crash" * 100, level=0)
    assert store.get_chunk(c) == b"after the crash" * 100
    assert len(store.get_chunk(a)) == 5000
    rep = fsck(store, progress=False)
    assert rep["bad_chunks"] == [] and rep["chunks"] == 2
    store.close()


def test_a_missing_or_damaged_pack_is_reported_not_a_crash(tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    with store.batch() as b:
        a = b.put_chunk(os.urandom(5000), level=0)
    path, off, _ = chunk_place(store, a)
    with open(path, "r+b") as f:  # another id in the entry's header
        f.seek(off - packfile.HEADER.size)
        f.write(b"\xee")
    with pytest.raises(Exception, match="does not hold it"):
        store.get_chunk(a)
    assert fsck(store, progress=False)["bad_chunks"] == [a.hex()]
    store.close()
    path.unlink()
    store = open_store(tmp_path / "home")
    with pytest.raises(Exception, match="is missing"):
        store.get_chunk(a)
    assert fsck(store, progress=False)["bad_chunks"] == [a.hex()]
    store.close()


def test_first_packed_chunk_raises_the_format_and_format_1_chunks_are_read(
    tmp_path: Path,
) -> None:
    """A store written by the previous layout (frames in LMDB's ``chunks``) opens and
    reads; new chunks go to packs; gc sweeps both kinds."""
    store = open_store(tmp_path / "home")
    old = os.urandom(6000)
    cid = chunk_id(old)
    with store.env.begin(write=True) as txn:  # what format 1 wrote
        txn.put(cid, codec.encode_frame(old, 0), db=store._dbs["chunks"])
    assert store.get_config("format_version") == 1
    store.close()
    store = open_store(tmp_path / "home")
    assert store.get_chunk(cid) == old and store.has_chunk(cid)
    assert store.stats()["chunks"] == 1 and store.stats()["pack_bytes"] == 0
    with store.batch() as b:
        new = b.put_chunk(b"new" * 3000, level=0)
        b.put_chunk(old)  # already stored (format 1): not written again
    assert store.get_config("format_version") == LEVEL_FORMAT
    assert store.stats()["chunks"] == 2
    with store.reader() as r:
        assert dict(r.chunk_sizes()).keys() == {cid, new}
        assert {c for c, f in r.chunks() if f is not None} == {cid, new}
    rep = local_gc(store)  # no record reaches either
    assert rep["chunks_deleted"] == 2 and not store.has_chunk(cid) and not store.has_chunk(new)
    assert store.stats()["pack_bytes"] == 0  # the emptied pack is gone
    store.close()


def _versions(tmp_path: Path) -> tuple[Dataset, Dataset, dict[str, bytes]]:
    keep = {f"k{i}.bin": os.urandom(300_000) for i in range(3)}
    drop = {f"x{i}.bin": os.urandom(300_000) for i in range(6)}
    src = tmp_path / "src"
    for name, data in {**keep, **drop}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    v1 = Dataset.create(dataset_name="n", dataset_project="p")
    v1.add_files(str(src))
    v1.finalize()
    for name in drop:
        (src / name).unlink()
    v2 = Dataset.create(dataset_name="m", dataset_project="p")
    v2.add_files(str(src))
    v2.finalize()
    return v1, v2, keep


def test_gc_reclaims_pack_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    v1, v2, keep = _versions(tmp_path)
    store = registry.open_store()
    before = store.stats()["pack_bytes"]
    assert before > 9 * 300_000
    Dataset.delete(v1.id)
    dry = local_gc(store, dry_run=True)
    assert store.stats()["pack_bytes"] == before
    rep = local_gc(store)
    assert rep["chunks_deleted"] > 0 and rep["packs_rewritten"] == 1
    assert dry["pack_bytes_freed"] == rep["pack_bytes_freed"]
    after = store.stats()["pack_bytes"]
    assert after < 3 * 300_000 + 64 * 1024  # what v2 holds, plus headers
    assert rep["pack_bytes_freed"] >= before - after
    got = Dataset.get(dataset_id=v2.id).get_local_copy()
    assert {p.name: p.read_bytes() for p in Path(got).iterdir()} == keep
    assert fsck(store, progress=False)["bad_chunks"] == []


def test_compaction_waits_for_older_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that began before a compaction still reads through it; the emptied
    pack is deleted only by a gc that runs once no such snapshot is open."""
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    v1, v2, keep = _versions(tmp_path)
    store = registry.open_store()
    Dataset.delete(v1.id)
    cid = chunk_id(keep["k0.bin"][:1])  # any id: only the snapshot matters
    with store.reader() as r:
        kept = [c for c, _ in r.chunk_sizes()]
        rep = local_gc(store)
        assert rep["packs_rewritten"] == 1 and rep["packs_deleted"] == 0
        for c in kept:  # the old snapshot still finds every chunk it lists
            if r.has_chunk(c):
                codec.decode_frame(r.chunk_frame(c), TAG_CHUNK, c)
    assert not store.has_chunk(cid)
    rep = local_gc(store)
    assert rep["packs_deleted"] == 1
    assert len(store.packs.packs()) == 1


COMPACT = """
import json, sys
from dsvc import registry
from dsvc.maintenance import local_gc
print(json.dumps(local_gc(registry.open_store())))
"""


def test_kill_during_compaction_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL at each fault point of a compacting gc (after the moved bytes are
    durable, before and after the index commit): every kept version reads back, fsck
    is clean, and a gc run afterwards finishes the job."""
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    v1, v2, keep = _versions(tmp_path)
    Dataset.delete(v1.id)
    registry.close_all()
    pristine = tmp_path / "pristine"
    subprocess.run(["cp", "-a", str(tmp_path / "home"), str(pristine)], check=True)
    log = tmp_path / "points.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DSVC_HOME": str(tmp_path / "home")}
    subprocess.run(
        [sys.executable, "-c", COMPACT],
        env={**env, "DSVC_FAULT_POINTS": "count", "DSVC_FAULT_LOG": str(log)},
        check=True,
        capture_output=True,
    )
    points = [ln.split("\t") for ln in log.read_text().splitlines()]
    chosen = [int(p[0]) for p in points if "compact" in p[3]]
    assert len(chosen) >= 3
    for n in chosen:
        home = tmp_path / f"home{n}"
        subprocess.run(["cp", "-a", str(pristine), str(home)], check=True)
        r = subprocess.run(
            [sys.executable, "-c", COMPACT],
            env={**env, "DSVC_HOME": str(home), "DSVC_FAULT_POINTS": f"kill:{n}"},
            capture_output=True,
        )
        assert r.returncode == -9, (n, r.stderr)
        monkeypatch.setenv("DSVC_HOME", str(home))
        registry.close_all()
        store = registry.open_store()
        rep = fsck(store, progress=False)
        assert rep["bad_chunks"] == [] and rep["missing"] == [], (n, rep)
        got = Dataset.get(dataset_id=v2.id).get_local_copy()
        assert {p.name: p.read_bytes() for p in Path(got).iterdir()} == keep
        again = json.loads(
            subprocess.run(
                [sys.executable, "-c", COMPACT],
                env={**env, "DSVC_HOME": str(home)},
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        registry.close_all()
        store = Store(home)
        assert store.stats()["pack_bytes"] < 3 * 300_000 + 64 * 1024, (n, again)
        store.close()


def record_syncs_and_commits(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pack files' ``fdatasync`` and folder ``fsync`` calls and the store's write
    transactions, in order, as they happen from now on."""
    events: list[str] = []
    real = {"fdatasync": os.fdatasync, "fsync": os.fsync, "begin": store._begin}

    def call(name: str):  # type: ignore[no-untyped-def]
        def f(fd: int) -> None:
            events.append(name)
            real[name](fd)

        return f

    def begin(**kw: object):  # type: ignore[no-untyped-def]
        if kw.get("write"):
            events.append("commit")
        return real["begin"](**kw)

    monkeypatch.setattr(packfile.os, "fdatasync", call("fdatasync"))
    monkeypatch.setattr(packfile.os, "fsync", call("fsync"))
    monkeypatch.setattr(store, "_begin", begin)
    return events


def test_a_batch_appends_without_waiting_for_the_disk_and_syncs_before_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest writer appends its frames every 8 MiB (``write_frames``) and commits
    their index much later: waiting for the disk at each append kept that thread in
    ``fdatasync`` for half of a 2.5 GB ingest. The appends start the bytes' writeback
    and go on; one ``fdatasync`` makes them durable before the transaction that indexes
    them (docs/architecture.md, invariant 25)."""
    store = Store(tmp_path / "home")
    assert store.durable
    with store.batch() as b:  # the pack exists (its creation is synced on its own)
        b.put_chunk(b"first")
    events = record_syncs_and_commits(store, monkeypatch)
    datas = [os.urandom(50_000) for _ in range(3)]
    with store.batch() as b:
        for d in datas:
            b.put_chunk(d)
            b.write_frames()
        assert events == []  # three appends, no wait
    assert events == ["fdatasync", "commit"]  # one sync, before the index is committed
    monkeypatch.undo()
    with store.reader() as r:
        assert [bytes(r.chunk(chunk_id(d))) for d in datas] == datas
    store.close()


def test_full_packs_of_a_batch_are_synced_before_its_commit_with_bounded_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends that fill packs (PACK_MAX) do not wait for the disk either: each full
    pack keeps its descriptor until the commit syncs it, at most MAX_RETIRED of them
    (beyond that the oldest is synced at once). Every pack is synced before the commit,
    and a new pack's folder entry too."""
    monkeypatch.setattr(packfile, "PACK_MAX", 50_000)
    store = Store(tmp_path / "home")
    events = record_syncs_and_commits(store, monkeypatch)
    datas = [os.urandom(100_000) for _ in range(10)]  # one full pack per append
    with store.batch() as b:
        for d in datas:
            b.put_chunk(d)
            b.write_frames()
            assert len(store.packs._retired) <= packfile.MAX_RETIRED
        # the packs beyond MAX_RETIRED were synced as they retired, no more
        assert events == ["fdatasync"] * (len(datas) - 1 - packfile.MAX_RETIRED)
    first_commit = events.index("commit")
    assert events.count("fdatasync") == len(datas)  # each pack once
    assert "fsync" in events[:first_commit] and "commit" not in events[first_commit + 1 :]
    assert not store.packs._retired
    monkeypatch.undo()
    assert len(store.packs.packs()) == len(datas)
    with store.reader() as r:
        assert [bytes(r.chunk(chunk_id(d))) for d in datas] == datas
    store.close()


def fail_next_fdatasync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next ``fdatasync`` of the pack writer fails with EIO, the later ones work (a
    failing disk cannot exist here)."""
    real = os.fdatasync
    failed: list[int] = []

    def fdatasync_fails_once(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(packfile.os, "fdatasync", fdatasync_fails_once)


def test_bytes_whose_sync_failed_are_never_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a failed writeback once: the ``fdatasync`` after it succeeds, though
    the bytes are lost. Two batches appending to one pack (the first fails its sync,
    the second syncs after it) must not let the second commit locations into the bytes
    that were never made durable. A failing disk cannot exist here, so ``fdatasync``
    fails by hand, once, with EIO."""
    from dsvc.errors import StorageError

    packs = packfile.Packs(tmp_path)
    packs.append([(os.urandom(16), b"durable")])  # synced: the pack exists
    first = packs.append([(os.urandom(16), os.urandom(5000))], defer_sync=True)
    second = packs.append([(os.urandom(16), os.urandom(5000))], defer_sync=True)
    fail_next_fdatasync(monkeypatch)
    with pytest.raises(OSError):
        packs.sync()  # the first batch's commit fails here
    packs.sync()  # the second batch's sync "succeeds"
    for locs in (first, second):
        with pytest.raises(StorageError, match="run the step again"):
            packs.check_written(loc for _, loc in locs)
    # later appends go to another pack, and commit
    later = packs.append([(os.urandom(16), b"later")], defer_sync=True)
    packs.sync()
    packs.check_written(loc for _, loc in later)
    assert packfile.decode_loc(later[0][1])[0] != packfile.decode_loc(first[0][1])[0]
    packs.close()


def test_a_full_pack_whose_sync_failed_is_never_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the packs a batch filled (synced at its commit, or once more than
    MAX_RETIRED wait): the failed one's range is refused, the others commit."""
    from dsvc.errors import StorageError

    monkeypatch.setattr(packfile, "PACK_MAX", 4000)
    packs = packfile.Packs(tmp_path)
    frames = [(os.urandom(16), os.urandom(5000)) for _ in range(3)]
    locs = [packs.append([f], defer_sync=True) for f in frames]
    assert len(packs._retired) == 2  # the first two packs are full, the third is open
    fail_next_fdatasync(monkeypatch)
    with pytest.raises(OSError):
        packs.sync()
    packs.sync()
    with pytest.raises(StorageError):
        packs.check_written(loc for _, loc in locs[0])
    for (cid, frame), ok in zip(frames[1:], locs[1:]):
        packs.check_written(loc for _, loc in ok)
        assert packs.read(cid, ok[0][1]) == frame
    packs.close()


def test_a_pack_another_process_is_creating_is_never_appended_to(tmp_path: Path) -> None:
    """A pack file that exists but holds no MAGIC yet is one another process just
    created and has not locked: a writer that took it appended at offset 0, and the
    creator, once it got the lock, wrote MAGIC and its own entries over those bytes
    (IntegrityError on read; test_store's two concurrent writers hit it 1 run in 24).
    New packs appear under their name only once locked and holding MAGIC, and a writer
    never takes a pack without MAGIC."""
    tmp_path.mkdir(exist_ok=True)
    creating = tmp_path / packfile.pack_name(12345)
    creating.write_bytes(b"")  # just created by another process, not locked yet
    packs = packfile.Packs(tmp_path)
    locs = packs.append([(os.urandom(16), b"mine")])
    assert packfile.decode_loc(locs[0][1])[0] != 12345
    assert creating.read_bytes() == b""
    # every pack this writer made carries MAGIC under its final name
    for pack in packs.packs():
        if pack != 12345:
            assert packs.path(pack).read_bytes()[:8] == packfile.MAGIC
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".pack")) == []
    packs.close()


def test_packs_are_created_where_the_file_system_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT and some network mounts refuse ``link`` (EPERM): the new pack is renamed to
    its name instead. No such file system can be mounted here, so ``link`` refuses by
    hand."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(packfile.os, "link", no_links)
    packs = packfile.Packs(tmp_path)
    locs = packs.append([(os.urandom(16), b"frame")])
    pack = packfile.decode_loc(locs[0][1])[0]
    assert packs.path(pack).read_bytes()[:8] == packfile.MAGIC
    assert [p.name for p in tmp_path.iterdir()] == [packfile.pack_name(pack)]
    assert packs.read(locs[0][0], locs[0][1]) == b"frame"
    packs.close()
