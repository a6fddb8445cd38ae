"""``dsvc fsck --repair`` (issue 9.13): a corrupt local value is dropped, with the
stat-cache entries and cached copies made from it, then fetched again from a remote or
listed for re-adding; a re-add or a pull writes it fresh.

Corruption is real: a byte of ``data.mdb`` is flipped where an incompressible chunk is
stored raw (as in tests/test_cli.py::test_fsck_finds_a_corrupted_byte).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dataset_helpers import read_tree, write_tree
from remote_helpers import add_origin

from dsvc import registry
from dsvc.dataset import Dataset
from dsvc.errors import IntegrityError
from dsvc.maintenance import fsck, fsck_repair

_BIN = shutil.which("dsvc", path=str(Path(sys.executable).parent))
DSVC = [_BIN] if _BIN else [sys.executable, "-m", "dsvc"]
EXIT_INTEGRITY = 5


def cli(home: Path, *args: str, rc: int = 0) -> Any:
    """``dsvc ARGS --json`` with DSVC_HOME=home; the parsed output (exit code checked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env["DSVC_HOME"] = str(home)
    p = subprocess.run(
        [*DSVC, *args, "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == rc, f"dsvc {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return h


def _settled(root: Path) -> Path:
    """Age the files past the stat cache's racy window, so a re-add would hit it."""
    old = time.time() - 60
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))
    return root


def _flip(home: Path, payload: bytes) -> None:
    """Flip one byte of ``payload`` (stored raw: incompressible) in the pack file that
    holds it."""
    registry.close_all()  # no map of the file stays open in this process
    for db in sorted((home / "store.lmdb" / "packs").glob("*.pack")):
        raw = bytearray(db.read_bytes())
        at = raw.find(payload[1000:1064])
        if at > 0:
            raw[at + 10] ^= 0xFF
            db.write_bytes(bytes(raw))
            return
    raise AssertionError("payload not found in any pack")


def _files() -> dict[str, bytes]:
    # big.bin spans several chunks (a blob); the others are one chunk each
    return {"big.bin": os.urandom(700_000), "d/one.bin": os.urandom(5000), "t.txt": b"t" * 99}


def test_repair_refetches_from_a_folder_remote(tmp_path: Path, home: Path) -> None:
    files = _files()
    src = write_tree(tmp_path / "src", files)
    store = registry.open_store()
    add_origin(store, {"url": f"file://{tmp_path / 'remote'}", "options": {}})
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ds.add_files(src)
    ds.upload(show_progress=False)
    ds.finalize()
    cached = Path(ds.get_local_copy())
    _flip(home, files["d/one.bin"])
    rep = cli(home, "fsck", rc=EXIT_INTEGRITY)
    assert len(rep["bad_chunks"]) == 1 and not rep["ok"]
    assert [(d["id"], d["files"]) for d in rep["missing"]] == [(ds.id, ["d/one.bin"])]
    rep = cli(home, "fsck", "--repair")
    assert rep["ok"] and rep["dropped"] == 1 and rep["refetched"] == [ds.id]
    assert rep["cached_copies_deleted"] == 1 and not cached.exists()
    cli(home, "pull")
    rep = cli(home, "fsck")
    assert rep["ok"] and rep["bad_chunks"] == [] and rep["missing"] == []
    got = Dataset.get(dataset_id=ds.id).get_mutable_local_copy(tmp_path / "out")
    assert read_tree(got) == files


def test_repair_without_remote_lists_files_and_readd_restores(tmp_path: Path, home: Path) -> None:
    files = _files()
    src = _settled(write_tree(tmp_path / "src", files))
    v1 = Dataset.create(dataset_name="n", dataset_project="p")
    v1.add_files(src)
    v1.finalize()
    v1.get_local_copy()
    _flip(home, files["big.bin"])  # a chunk of a multi-chunk file: the stat cache names its blob
    with pytest.raises(IntegrityError):
        Dataset.get(dataset_id=v1.id).get_mutable_local_copy(tmp_path / "bad")
    rep = cli(home, "fsck", "--repair", rc=EXIT_INTEGRITY)
    assert rep["dropped"] == 1 and rep["statcache_purged"] == 1 and rep["refetched"] == []
    assert [(d["id"], d["files"]) for d in rep["unrepaired"]] == [(v1.id, ["big.bin"])]
    # it says where the file was added from, as the stat cache knew it
    assert rep["unrepaired"][0]["sources"] == {"big.bin": [str(src / "big.bin")]}
    # re-adding the unchanged folder reads big.bin again (its stat-cache entry is gone)
    # and writes the dropped chunk fresh: both versions read back byte for byte
    v2 = Dataset.create(dataset_name="n", dataset_project="p")
    v2.add_files(src)
    assert v2.finalize()
    for d in (v1, v2):
        got = Dataset.get(dataset_id=d.id).get_mutable_local_copy(tmp_path / f"out-{d.id}")
        assert read_tree(got) == files
    assert read_tree(Dataset.get(dataset_id=v1.id).get_local_copy()) == files
    rep = fsck(registry.open_store(), progress=False)
    assert rep["bad_chunks"] == [] and rep["missing"] == []


def test_repair_of_a_sound_store_changes_nothing(tmp_path: Path, home: Path) -> None:
    files = _files()
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "src", files))
    ds.finalize()
    copy = Path(ds.get_local_copy())
    store = registry.open_store()
    before = store.stats()
    rep = fsck_repair(store, progress=False)
    assert rep["dropped"] == 0 and rep["unrepaired"] == [] and rep["refetched"] == []
    assert store.stats()["chunks"] == before["chunks"] and copy.is_dir()


def test_fsck_of_a_clone_does_not_count_remote_content_as_missing(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files()
    remote = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    add_origin(registry.open_store(), remote)
    v1 = Dataset.create(dataset_name="n", dataset_project="p")
    v1.add_files(write_tree(tmp_path / "src", files))
    v1.finalize(auto_upload=True)
    # another machine: records and metadata only, content stays on the remote
    clone = tmp_path / "clone"
    monkeypatch.setenv("DSVC_HOME", str(clone))
    add_origin(registry.open_store(), remote)
    Dataset.get(dataset_id=v1.id)  # imports the record and its metadata
    child = Dataset.create(dataset_name="n", dataset_project="p", parent_datasets=[v1.id])
    child.add_files(write_tree(tmp_path / "more", {"new.txt": b"new"}))
    rep = cli(clone, "fsck")
    assert rep["ok"] and rep["missing"] == []


def _flip_value(home: Path, db: str, key: bytes) -> None:
    """Flip one byte inside the stored value of ``key`` in ``db``, in data.mdb."""
    store = registry.open_store()
    with store.env.begin() as txn:
        value = bytes(txn.get(key, db=store._dbs[db]))
    registry.close_all()
    path = home / "store.lmdb" / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.find(value)
    assert at > 0 and raw.find(value, at + 1) < 0
    raw[at + len(value) - 3] ^= 0xFF  # inside the last entry's fields
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("with_remote", [True, False])
def test_repair_of_a_damaged_folder_listing(tmp_path: Path, home: Path, with_remote: bool) -> None:
    files = {"d/e/x.bin": os.urandom(3000), "d/e/y.txt": b"y" * 10, "top.txt": b"top"}
    if with_remote:
        add_origin(registry.open_store(), {"url": f"file://{tmp_path / 'remote'}", "options": {}})
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "src", files))
    ds.finalize(auto_upload=True)
    from dsvc.treeops import Trees, lookup

    store = registry.open_store()
    sub = lookup(Trees(store), registry.get(store, ds.id).tree, ("d", "e"))
    assert sub is not None
    _flip_value(home, "objects", sub.id)
    rep = cli(home, "fsck", rc=EXIT_INTEGRITY)
    assert rep["bad_objects"] == [sub.id.hex()]
    assert [(d["folders"], d["files"]) for d in rep["missing"]] == [(["d/e"], [])]
    if with_remote:
        rep = cli(home, "fsck", "--repair")
        assert rep["refetched"] == [ds.id] and rep["unrepaired"] == []
        got = Dataset.get(dataset_id=ds.id).get_mutable_local_copy(tmp_path / "out")
        assert read_tree(got) == files
    else:
        rep = cli(home, "fsck", "--repair", rc=EXIT_INTEGRITY)
        assert [(d["id"], d["folders"]) for d in rep["unrepaired"]] == [(ds.id, ["d/e"])]


def test_fsck_reports_missing_content_below_a_very_deep_tree(home: Path) -> None:
    """Trees from a remote may be thousands of folders deep: the walk is not recursive."""
    from dsvc.ids import chunk_id
    from dsvc.objects import KIND_CHUNKFILE, MODE_FILE, Entry
    from dsvc.treeops import Trees

    store = registry.open_store()
    with store.batch() as b:
        trees = Trees(store, b)
        cid = b.put_chunk(b"leaf")
        top = trees.put({"leaf": Entry(KIND_CHUNKFILE, chunk_id(b"leaf"), 4, MODE_FILE)})
        for _ in range(5000):
            top = trees.put({"d": top})
    ds = Dataset.create(dataset_name="deep", dataset_project="p")
    registry.update(store, ds.id, lambda r: r.replace(tree=top.id))
    assert fsck(store, progress=False)["missing"] == []
    with store.batch() as b:
        b.delete_chunk(cid)
    (damage,) = fsck(store, progress=False)["missing"]
    assert damage["id"] == ds.id and damage["files"] == ["d/" * 5000 + "leaf"]
