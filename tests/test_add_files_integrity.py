"""``add_files`` integrity at the Dataset layer (issue 9): the stat cache never makes a
version point at content the store lacks, the store never ingests itself, ignore files,
and colliding paths are reported."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree
from test_cli import dsvc, js, new_id

from dsvc.dataset import Dataset
from dsvc.ids import chunk_id
from dsvc.registry import open_store

OLD = 1_600_000_000  # an mtime outside the stat cache's racily-clean window


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    return h


def old_tree(root: Path, files: dict[str, bytes]) -> Path:
    write_tree(root, files)
    for dirpath, _, names in os.walk(root):
        for n in names:
            os.utime(os.path.join(dirpath, n), (OLD, OLD))
    return root


def test_re_add_after_content_left_the_store_makes_a_readable_version(tmp_path: Path) -> None:
    # issue 9.1, ingest side: the stat cache still answers for the folder, but the chunk
    # behind one file is gone (as after `delete` + `gc`); the file must be read again
    files = {"a.txt": b"alpha" * 100, "b.bin": os.urandom(3 << 20)}
    src = old_tree(tmp_path / "src", files)
    v1 = Dataset.create(dataset_name="d", dataset_project="p")
    v1.add_files(src)
    v1.finalize()
    store = open_store()
    with store.env.begin(write=True) as txn:  # a.txt is one chunk
        assert txn.delete(chunk_id(files["a.txt"]), db=store.db("chunks"))
    v2 = Dataset.create(dataset_name="d", dataset_project="p")
    v2.add_files(src)
    assert v2.finalize()
    assert read_tree(Dataset.get(dataset_id=v2.id).get_local_copy()) == files


def test_cli_folder_diff_sees_a_same_size_same_mtime_replacement(tmp_path: Path) -> None:
    # issue 9.3 / issue 12: `dsvc diff VERSION FOLDER` uses the same stat-cache hit test
    # as add_files, so a `cp -p` replacement shows as modified there too
    home = tmp_path / "cli-home"
    src = old_tree(tmp_path / "src", {"a.txt": b"A" * 1000, "b.txt": b"B" * 1000})
    v = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    dsvc(home, "add", "--files", str(src))
    dsvc(home, "close")
    before = os.stat(src / "a.txt").st_ctime_ns
    other = old_tree(tmp_path / "other", {"a.txt": b"Z" * 1000})
    while os.stat(other / "a.txt").st_ctime_ns <= before:  # the next ctime tick
        os.utime(other / "a.txt", (OLD, OLD))
    subprocess.run(["cp", "-p", str(other / "a.txt"), str(src / "a.txt")], check=True)
    assert os.stat(src / "a.txt").st_mtime_ns == OLD * 10**9
    changes = js(home, "diff", v, str(src))
    assert [c["path"] for c in changes["modified"]] == ["a.txt"]
    assert changes["added"] == changes["removed"] == []
