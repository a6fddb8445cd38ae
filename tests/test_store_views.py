"""The store's typed views (issue 12): ``Store.reader()`` and the write batch, and that
callers keep read snapshots short (no network I/O inside one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dsvc.checkout import materialize
from dsvc.errors import IntegrityError, ObjectNotFoundError
from dsvc.ids import TAG_BLOB, TAG_TREE, chunk_id
from dsvc.ingest import ingest_path
from dsvc.objects import EMPTY_TREE_ID, KIND_CHUNKFILE, KIND_FILE, MODE_FILE, Blob, Entry
from dsvc.store import Store, StoreReader
from dsvc.treeops import Trees, apply_edits, walk
from tests.helpers_core import make_tree, open_store, read_tree


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "home")
    yield s
    s.close()


def open_snapshots(store: Store) -> int:
    """Read transactions of this process that are open now (LMDB's reader table lists a
    txn id for an active one and ``-`` for an idle slot)."""
    rows = store.env.readers().splitlines()[1:]
    return sum(1 for r in rows if r.split()[0] == str(os.getpid()) and r.split()[-1] != "-")


def test_reader_reads_chunks_objects_and_files_verified(store: Store) -> None:
    with store.batch() as b:
        a = b.put_chunk(b"a" * 5000)
        c = b.put_chunk(b"c" * 7000)
        blob = Blob(((a, 5000), (c, 7000)))
        bid = b.put_blob(blob)
        tid = b.put_tree({"f": Entry(KIND_FILE, bid, blob.size, MODE_FILE)})
    with store.reader() as r:
        assert isinstance(r, StoreReader)
        assert r.has_chunk(a) and not r.has_chunk(b"\x01" * 16)
        assert bytes(r.chunk(a)) == b"a" * 5000
        assert r.chunk_size(c) is not None and r.chunk_size(b"\x01" * 16) is None
        assert r.missing_chunks([a, b"\x01" * 16, c]) == [b"\x01" * 16]
        assert r.file_chunks(Entry(KIND_FILE, bid, 12000, MODE_FILE)) == [(a, 5000), (c, 7000)]
        assert r.file_chunks(Entry(KIND_CHUNKFILE, a, 5000, MODE_FILE)) == [(a, 5000)]
        assert set(r.tree(tid)) == {"f"}
        assert {k for k, _ in r.chunk_sizes()} == {a, c}
        assert {k for k, _ in r.objects()} == {bid, tid}
        with pytest.raises(IntegrityError, match="expected"):
            r.object(bid, TAG_TREE)
        with pytest.raises(ObjectNotFoundError) as got:
            r.file_chunks(Entry(KIND_FILE, b"\x02" * 16, 1, MODE_FILE))
    # the Store's one-shot helpers are the same code: same error, same text
    with pytest.raises(ObjectNotFoundError) as again:
        store.file_chunks(Entry(KIND_FILE, b"\x02" * 16, 1, MODE_FILE))
    assert str(got.value) == str(again.value)
    with pytest.raises(ObjectNotFoundError, match="chunk"):
        store.get_chunk(b"\x03" * 16)
    assert store.get_object(bid, TAG_BLOB) == blob.encode()


def test_write_batch_typed_methods(store: Store) -> None:
    with store.batch() as b:
        b.put_statcache(b"k" * 16, b"v")
        b.put_remote(b"r/1", b"one")
        b.put_remote(b"r/2", b"two")
        b.put_remote(b"s/1", b"other")
        cid = b.put_chunk(b"x" * 100)
    with store.reader() as r:
        assert list(r.remote_items(b"r/")) == [(b"r/1", b"one"), (b"r/2", b"two")]
        assert r.remote(b"s/1") == b"other" and r.remote(b"nope") is None
        assert dict(r.statcache_items()) == {b"k" * 16: b"v"}
    with store.batch() as b:
        b.delete_remote(b"r/1")
        b.delete_statcache(b"k" * 16)
        b.delete_chunk(cid)
    with store.reader() as r:
        assert [k for k, _ in r.remote_items(b"r/")] == [b"r/2"]
        assert list(r.statcache_items()) == []
        assert not r.has_chunk(cid)
    assert "refs" not in store.stats()  # the unused local refs database is gone


def test_checkout_fetches_outside_any_read_snapshot(store: Store, tmp_path: Path) -> None:
    """``checkout._fill`` asks the fetcher for missing chunks with no read transaction
    open: a slow network read must not pin LMDB's old pages (issue 12)."""
    files = {f"d/f{i}.bin": os.urandom(900 + i) for i in range(6)}  # one chunk each
    make_tree(tmp_path / "src", files)
    entries, _ = ingest_path(store, tmp_path / "src")
    with store.batch() as b:
        root = apply_edits(Trees(store, b), EMPTY_TREE_ID, entries)
    listing = list(walk(Trees(store), root))
    gone = chunk_id(files["d/f2.bin"])
    assert store.has_chunk(gone)  # below the chunker's minimum: the file is one chunk
    with store.batch() as b:
        b.delete_chunk(gone)
    seen: list[int] = []

    def fetch(ids: list[bytes]) -> dict[bytes, Any]:
        seen.append(open_snapshots(store))
        assert ids == [gone]
        return {gone: files["d/f2.bin"]}

    materialize(store, listing, tmp_path / "out", fetch=fetch, max_workers=1)
    assert seen == [0]
    assert read_tree(tmp_path / "out") == files


def test_push_uploads_outside_any_read_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Remote.push_tree`` reads each pack's chunks in a short snapshot and uploads
    with none open (it held one snapshot for the whole upload before issue 12)."""
    from dsvc.dataset import Dataset
    from tests.remote_helpers import machine, remote_of

    spec = {"kind": "file", "url": f"file://{tmp_path / 'remote'}", "options": {}}
    store = machine(monkeypatch, tmp_path / "home", spec)
    src = tmp_path / "src"
    make_tree(src, {f"f{i}.bin": os.urandom(200_000) for i in range(8)})
    ds = Dataset.create(dataset_project="p", dataset_name="views")
    ds.add_files(str(src))
    remote = remote_of(store)
    during: list[int] = []
    orig = type(remote.backend).put

    def put(self: Any, key: str, data: Any) -> Any:
        if key.endswith(".pack"):
            during.append(open_snapshots(store))
        return orig(self, key, data)

    monkeypatch.setattr(type(remote.backend), "put", put)
    ds.upload(show_progress=False, chunk_size=1)  # 1 MB packs: several uploads
    assert len(during) >= 2
    assert set(during) == {0}
