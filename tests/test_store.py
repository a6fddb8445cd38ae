"""The LMDB store (dsvc.store): content, refs, records, batches, map growth, processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from dsvc.codec import RAW, ZSTD, encode_frame
from dsvc.errors import ConflictError, IntegrityError, ObjectNotFoundError
from dsvc.ids import TAG_BLOB, TAG_COMMIT, TAG_TREE, chunk_id, object_id
from dsvc.objects import KIND_CHUNKFILE, KIND_FILE, MODE_FILE, Blob, Commit, Entry
from dsvc.store import DB_NAMES, Store
from tests.helpers_core import open_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "home")
    yield s
    s.close()


def test_layout_and_config(store):
    assert store.path == store.home / "store.lmdb"
    assert (store.path / "data.mdb").is_file()
    assert set(store.stats()) >= set(DB_NAMES) - {"chunkloc", "chunknew"}  # in "chunks"
    assert store.get_config("zstd_level") == 1
    assert store.level == 1
    assert store.get_config("nope", 42) == 42
    store.set_config("zstd_level", 3)
    assert store.get_config("zstd_level") == 3
    for fixed in ("chunker", "format_version"):
        with pytest.raises(Exception, match="fixed"):
            store.set_config(fixed, 1)


def test_dsvc_home_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "envhome"))
    with Store() as s:
        assert s.home == tmp_path / "envhome"
        assert (tmp_path / "envhome" / "store.lmdb" / "data.mdb").exists()


def test_store_level_comes_from_config_or_argument(tmp_path):
    with open_store(tmp_path) as s:
        s.set_config("zstd_level", 5)
    with open_store(tmp_path) as s:
        assert s.level == 5
    with open_store(tmp_path, level=0) as s:
        assert s.level == 0
        with s.batch() as b:
            cid = b.put_chunk(b"a" * 1000)
        assert s.get_chunk_frame(cid)[0] == RAW


def test_chunks_round_trip_and_dedup(store):
    rep, rnd = b"abcd" * 5000, os.urandom(5000)
    with store.batch() as b:
        c1 = b.put_chunk(rep)
        c2 = b.put_chunk(rnd)
        assert b.put_chunk(rep) == c1  # queued once
        assert b.new_chunks == 2
    assert (c1, c2) == (chunk_id(rep), chunk_id(rnd))
    assert store.get_chunk(c1) == rep and store.get_chunk(c2) == rnd
    assert store.get_chunk_frame(c1)[0] == ZSTD
    assert store.get_chunk_frame(c2) == bytes([RAW]) + rnd
    assert store.has_chunk(c1) and not store.has_chunk(chunk_id(b"other"))
    with store.batch() as b:
        assert b.put_chunk(rep) == c1
        assert b.new_chunks == 0  # already in the store: not queued again
    assert store.stats()["chunks"] == 2
    missing = chunk_id(b"missing")
    assert store.missing("chunks", [c1, missing, c2]) == [missing]
    with pytest.raises(ObjectNotFoundError) as ei:
        store.get_chunk(missing)
    assert ei.value.object_id == missing and missing.hex() in str(ei.value)


def test_objects_round_trip(store):
    cid = chunk_id(b"x")
    blob = Blob(((cid, 1), (chunk_id(b"y"), 1)))
    tree = {"f": Entry(KIND_FILE, blob.id, 2, MODE_FILE), "g": Entry(KIND_CHUNKFILE, cid, 1)}
    with store.batch() as b:
        bid = b.put_blob(blob)
        tid = b.put_tree(tree)
        assert b.has(bid) and b.has(tid)
    commit = Commit(tid, (), {"name": "n", "nested": {"b": 1, "a": [1, 2]}})
    mid = store.put_commit(commit)
    assert bid == blob.id and mid == commit.id
    assert store.get_blob(bid) == blob
    assert store.get_tree(tid) == tree
    assert store.get_commit(mid).encode() == commit.encode()
    assert store.put_tree(tree) == tid == object_id(TAG_TREE, store.get_object(tid, TAG_TREE))
    # stored value = type tag + frame
    raw = store.get_object_frame(mid)
    assert raw[:1] == TAG_COMMIT and raw[1:] == encode_frame(commit.encode(), store.level)
    # asking for the wrong type is an integrity error, a missing one is not-found
    with pytest.raises(IntegrityError, match="expected"):
        store.get_object(tid, TAG_BLOB)
    with pytest.raises(ObjectNotFoundError, match="tree"):
        store.get_tree(object_id(TAG_TREE, b"nope"))
    # file content through entries
    with store.batch() as b:
        b.put_chunk(b"x")
        b.put_chunk(b"y")
    assert store.file_chunks(tree["g"]) == [(cid, 1)]
    assert b"".join(store.read_file(tree["f"])) == b"xy"
    with pytest.raises(ValueError):
        store.file_chunks(Entry(1, tid, 0, 0))
    s = store.stats()
    assert s["objects"] == 3 and s["chunks"] == 2 and s["file_bytes"] > 0


def test_objects_are_immutable(store):
    data = b"\x90"
    oid = object_id(TAG_TREE, data)
    with store.batch() as b:
        b.put_object(TAG_TREE, data)
    before = store.get_object_frame(oid)
    # a second (even different) write of the same key never replaces the first
    store._apply([("objects", oid, b"T\x00garbage")])
    store._apply([("chunks", chunk_id(b"q"), b"\x00q"), ("chunks", chunk_id(b"q"), b"\x00z")])
    assert store.get_object_frame(oid) == before
    assert store.get_chunk(chunk_id(b"q")) == b"q"


def test_batch_exception_discards_unflushed(store):
    with pytest.raises(RuntimeError), store.batch() as b:
        b.put_chunk(b"never")
        raise RuntimeError("boom")
    assert not store.has_chunk(chunk_id(b"never"))


def test_batch_flushes_at_limit(store):
    with store.batch(limit=10_000) as b:
        ids = [b.put_chunk(os.urandom(3000), level=0) for _ in range(3)]
        # 3 x ~3 KiB: below the limit, nothing visible yet
        assert not any(store.has_chunk(i) for i in ids)
        ids.append(b.put_chunk(os.urandom(3000), level=0))  # crosses the limit
        assert all(store.has_chunk(i) for i in ids)
        assert not b.has(ids[0])  # committed, no longer pending
        last = b.put_chunk(os.urandom(100), level=0)
        assert not store.has_chunk(last)
    assert store.has_chunk(last)


def test_records_compare_and_swap(store):
    store.cas_record("ds/x", None, {"v": 1})
    assert store.get_record("ds/x") == {"v": 1}
    with pytest.raises(ConflictError, match="ds/x"):
        store.cas_record("ds/x", None, {"v": 2})  # create-only lost
    with pytest.raises(ConflictError):
        store.cas_record("ds/x", {"v": 0}, {"v": 2})  # stale expectation
    assert store.get_record("ds/x") == {"v": 1}
    store.cas_record("ds/x", {"v": 1}, {"v": 2})
    assert store.get_record("ds/x") == {"v": 2}
    store.cas_record("ds/x", {"v": 2}, None)
    assert store.get_record("ds/x") is None
    with pytest.raises(ConflictError):
        store.cas_record("ds/x", {"v": 2}, None)


def test_records_by_prefix(store):
    store.put_record("ds/1", {"name": "one", "n": 1})
    store.put_record("ds/2", {"name": "two"})
    store.put_record("dsx", [1])
    store.put_record("draft/1", {"files": {"a": b"\x00" * 16}})
    assert store.get_record("ds/1") == {"name": "one", "n": 1}
    assert store.get_record("none") is None
    assert [k for k, _ in store.iter_records("ds/")] == ["ds/1", "ds/2"]
    assert [k for k, _ in store.iter_records("ds")] == ["ds/1", "ds/2", "dsx"]
    assert list(store.iter_records("zz")) == []
    assert len(list(store.iter_records())) == 4
    store.delete_record("ds/1")
    assert [k for k, _ in store.iter_records("ds/")] == ["ds/2"]
    store.put_record("ds/3", {"x": 1})
    store.delete_record("ds/2")
    assert [k for k, _ in store.iter_records("ds/")] == ["ds/3"]
    assert store.stats()["records"] == 3


def test_map_full_grows_the_map(tmp_path):
    s = open_store(tmp_path, map_size=1 << 20)
    ids = []
    for _ in range(4):  # 4 batches x 5 MiB of stat-cache values through a 1 MiB map
        with s.batch(limit=2 << 20) as b:
            ids += [b.put_chunk(os.urandom(50_000), level=0) for _ in range(100)]
            for _ in range(100):
                b.put_statcache(os.urandom(16), os.urandom(50_000))
    assert s.env.info()["map_size"] >= 20 << 20
    assert s.stats()["chunks"] == 400
    for i in ids[::37]:
        assert chunk_id(s.get_chunk(i)) == i
    s.close()
    # reopening with the small size adopts the file's size
    with open_store(tmp_path, map_size=1 << 20) as s2:
        assert s2.stats()["chunks"] == 400


def test_map_grown_by_another_process(tmp_path):
    """A process with a small map keeps working after another one grew the file."""
    home = tmp_path / "h"
    s = open_store(home, map_size=1 << 20)
    s.put_record("before", 1)
    code = textwrap.dedent(
        f"""
        import os
        from dsvc.store import Store
        s = Store({str(home)!r}, map_size=1 << 20)
        with s.batch() as b:
            for _ in range(200):
                b.put_chunk(os.urandom(50_000), level=0)
        s.put_record("after", 2)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    assert s.get_record("after") == 2  # reads adopt the grown map
    assert s.stats()["chunks"] == 200
    s.put_record("again", 3)  # and so do writes
    assert s.get_record("again") == 3
    s.close()


def test_reader_clears_stale_slots_and_reopens(tmp_path):
    with open_store(tmp_path) as s:
        s.put_record("k", 1)
    # a process killed while holding a read transaction leaves a reader slot behind
    code = textwrap.dedent(
        f"""
        import os, signal
        from dsvc.store import Store
        s = Store({str(tmp_path)!r})
        txn = s.env.begin()
        txn.get(b"k")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    with open_store(tmp_path) as s:
        assert s.env.readers().count("\n") >= 1
        assert s.get_record("k") == 1
        s.put_record("k", 2)
        assert s.get_record("k") == 2


WRITER = """
import os, random, sys
from dsvc.ingest import ingest_path
from dsvc.objects import EMPTY_TREE_ID
from dsvc.store import Store
from dsvc.treeops import Trees, apply_edits
from tests.helpers_core import SMALL, make_tree

home, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(home, chunker_params=SMALL)
for i in range(n):
    rng = random.Random(i)
    folder = os.path.join(work, f"v{i}")
    files = {f"d{j % 3}/f{j}.bin": rng.randbytes(rng.randrange(1, 300_000)) for j in range(12)}
    make_tree(__import__("pathlib").Path(folder), files)
    entries, _ = ingest_path(store, folder, max_workers=2)
    with store.batch() as b:
        root = apply_edits(Trees(store, b), EMPTY_TREE_ID, entries)
    store.put_record(f"snap/{i:03d}", {"root": root, "n": len(entries)})
print("done")
"""


def expected_files(i: int) -> dict[tuple[str, ...], bytes]:
    import random

    rng = random.Random(i)
    return {(f"d{j % 3}", f"f{j}.bin"): rng.randbytes(rng.randrange(1, 300_000)) for j in range(12)}


def test_reader_process_sees_only_complete_snapshots(tmp_path):
    """One process ingests while this one reads: every published record is complete."""
    from dsvc.treeops import Trees, walk

    home = tmp_path / "home"
    n = 8
    reader = open_store(home)  # creates the store with the same params first
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home), str(tmp_path / "work"), str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    verified: set[str] = set()
    deadline = time.monotonic() + 60
    while len(verified) < n and time.monotonic() < deadline:
        for key, rec in reader.iter_records("snap/"):
            if key in verified:
                continue
            i = int(key.split("/")[1])
            got = {p: b"".join(reader.read_file(e)) for p, e in walk(Trees(reader), rec["root"])}
            assert got == expected_files(i)
            verified.add(key)
        time.sleep(0.01)
    assert proc.wait(timeout=60) == 0
    assert len(verified) == n
    reader.close()


def test_concurrent_writers_from_two_processes(tmp_path):
    home = tmp_path / "home"
    open_store(home).close()
    code = textwrap.dedent(
        """
        import sys
        from dsvc.store import Store
        s = Store(sys.argv[1])
        tag = sys.argv[2]
        for i in range(200):
            with s.batch() as b:
                b.put_chunk(f"{tag}-{i}".encode() * 50)
                b.put_remote(f"{tag}/{i:04d}".encode(), b"%d" % i)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), t], cwd=REPO) for t in "ab"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with open_store(home) as s:
        assert s.stats()["chunks"] == 400
        with s.reader() as r:
            assert len(list(r.remote_items(b"a/"))) == 200 == len(list(r.remote_items(b"b/")))
        assert s.get_chunk(chunk_id(b"a-7" * 50)) == b"a-7" * 50


def test_open_failure_is_a_config_error(tmp_path):
    from dsvc.errors import ConfigError

    (tmp_path / "store.lmdb").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot open"):
        Store(tmp_path)


def test_newer_format_is_refused(tmp_path):
    from dsvc.errors import ConfigError
    from dsvc.store import _pack

    with open_store(tmp_path) as s:
        s._apply([("config", b"format_version", _pack(99))])
    with pytest.raises(ConfigError, match="upgrade"):
        open_store(tmp_path)


def _mapped_bytes(path) -> int:
    """Bytes of ``path``'s mappings resident in this process (its pages in our RSS)."""
    target = os.path.realpath(path)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line
                inside = line.rstrip("\n").endswith(target)
            elif inside and head == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise")
def test_readers_keep_the_mapped_store_under_a_budget(tmp_path, monkeypatch):
    """Issue 11 (RSS flat from 1M to 3M files): the pages of the store's map that
    readers touch are unmapped once the process maps more than MAPPED_BUDGET, so
    a read of every value of a large store (a full local copy reads every file's chunk
    location) does not keep the whole store resident."""
    import dsvc.store as store_mod

    monkeypatch.setattr(store_mod, "MAPPED_BUDGET", 1 << 20, raising=False)
    monkeypatch.setattr(store_mod, "READ_CHECK_EVERY", 1, raising=False)
    s = open_store(tmp_path)
    value = 64 << 10
    with s.batch() as b:  # 32 MiB of incompressible objects (overflow pages in the map)
        oids = [b.put_object(TAG_BLOB, os.urandom(value)) for _ in range(512)]
    data = s.path / "data.mdb"
    worst = 0
    for oid in oids:
        assert len(s.get_object(oid, TAG_BLOB)) == value
        worst = max(worst, _mapped_bytes(data))
    # at most the pages one read maps, with the kernel's fault-around, stay between checks
    assert worst <= 1 << 20, worst
    s.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise")
def test_unmapping_the_store_keeps_open_views_valid(tmp_path, monkeypatch):
    """A zero-copy view of another reader (another thread) is read again from the page
    cache after the pages are unmapped: the same bytes, never zeros."""
    import dsvc.store as store_mod

    monkeypatch.setattr(store_mod, "MAPPED_BUDGET", 1 << 20, raising=False)
    monkeypatch.setattr(store_mod, "READ_CHECK_EVERY", 1, raising=False)
    s = open_store(tmp_path)
    payload = os.urandom(256 << 10)
    with s.batch() as b:
        oid = b.put_object(TAG_BLOB, payload)
        other = b.put_object(TAG_BLOB, os.urandom(256 << 10))
    with s.reader(buffers=True) as r:
        view = r.object_frame(oid)
        assert isinstance(view, memoryview)
        before = bytes(view)
        with s.reader() as r2:  # its exit unmaps the store (budget exceeded)
            assert r2.object(other, TAG_BLOB)
        assert _mapped_bytes(s.path / "data.mdb") < len(before)
        assert bytes(view) == before
        assert r.object(oid, TAG_BLOB) == payload
    s.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise")
def test_a_large_commit_keeps_the_mapped_store_under_a_budget(tmp_path, monkeypatch):
    """A write transaction maps every page it walks to: random keys into a large store
    (the first add's chunk locations and stat cache) map much of it, a share that grows
    with the store. They are unmapped as the transaction goes, once over the budget."""
    import dsvc.store as store_mod

    monkeypatch.setattr(store_mod, "MAPPED_BUDGET", 1 << 20, raising=False)
    monkeypatch.setattr(store_mod, "WRITE_CHECK_EVERY", 64, raising=False)
    s = open_store(tmp_path)
    keys = [os.urandom(16) for _ in range(60_000)]
    with s.batch(limit=1 << 30) as b:  # ~20 MB of stat-cache values under random keys
        for k in keys:
            b.put_statcache(k, os.urandom(200))
    data = s.path / "data.mdb"
    assert os.path.getsize(data) > 16 << 20
    with s.batch(limit=1 << 30) as b:  # one transaction that rewrites them all
        for k in keys:
            b.put_statcache(k, os.urandom(200))
    # what is mapped when it ends: at most the budget, and 64 writes' pages since
    assert _mapped_bytes(data) <= 6 << 20, _mapped_bytes(data)
    assert len(s.scan_prefix("statcache", b"")) == len(keys)
    s.close()


def test_an_unsynced_store_reports_a_failing_flush_as_a_disk_error(tmp_path, monkeypatch):
    """With DSVC_FSYNC=0 a record's write is where the packs are flushed, so that is where
    a failing disk shows (``fdatasync``'s EIO: no device here can fail on demand, hence
    the patched sync). It is the store's error that names the pack and says what to do,
    not a bare OSError reported as an internal error."""
    from dsvc.errors import StorageError

    monkeypatch.setenv("DSVC_FSYNC", "0")
    s = Store(str(tmp_path / "home"))
    pack = s.packs.folder / "pack-0001"

    def failing_sync() -> None:
        raise OSError(5, "Input/output error", str(pack))

    monkeypatch.setattr(s.packs, "sync", failing_sync)
    with pytest.raises(StorageError, match=r"the disk failed while writing .*pack-0001"):
        s.put_record("k", {"a": 1})
    s.close()
