"""``add_files`` integrity at the Dataset layer (issue 9): the stat cache never makes a
version point at content the store lacks, the store never ingests itself, ignore files,
and colliding paths are reported."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree
from test_cli import dsvc, js, new_id

from dsvc.dataset import Dataset
from dsvc.ids import chunk_id
from dsvc.registry import open_store
from tests.helpers_core import drop_chunk

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
    assert drop_chunk(store, chunk_id(files["a.txt"]))  # a.txt is one chunk
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


# -- the store is never ingested; .dsvcignore; colliding paths (issue 9.10) ---------------


def test_cli_add_of_a_folder_holding_the_store_leaves_the_store_out(tmp_path: Path) -> None:
    work = old_tree(tmp_path / "work", {"a.txt": b"a", "sub/b.txt": b"b"})
    env = {"DSVC_HOME": "./.dsvc"}  # relative, below the folder that is added
    dsvc(None, "create", "--project", "p", "--name", "n", cwd=work, env=env)
    out = dsvc(None, "add", "--files", ".", cwd=work, env=env)
    assert "DSVC_HOME" in out.stderr
    dsvc(None, "close", cwd=work, env=env)
    files = [f["path"] for f in json.loads(dsvc(None, "list", "--json", cwd=work, env=env).stdout)]
    assert files == ["a.txt", "sub/b.txt"]
    # sync of the same folder (into a new version) does not see the store either
    out = dsvc(None, "sync", "--project", "p", "--name", "m", "--folder", ".", cwd=work, env=env)
    assert "0 files removed, 2 added, 0 modified" in out.stdout


def test_add_files_honours_dsvcignore(tmp_path: Path) -> None:
    src = old_tree(
        tmp_path / "src",
        {".dsvcignore": b"*.tmp\n.dsvcignore\n", "a.txt": b"a", "x.tmp": b"x", "s/y.tmp": b"y"},
    )
    ds = Dataset.create(dataset_name="d", dataset_project="p")
    assert ds.add_files(src) == 1
    assert ds.list_files() == ["a.txt"]
    (src / "new.tmp").write_bytes(b"n")
    assert ds.sync_folder(src) == (0, 0, 0)


def test_colliding_files_from_two_folders_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cats = old_tree(tmp_path / "cats", {"a.jpg": b"cat a", "c.jpg": b"cat c"})
    dogs = old_tree(tmp_path / "dogs", {"a.jpg": b"dog a", "d.jpg": b"dog d"})
    ds = Dataset.create(dataset_name="d", dataset_project="p")
    ds.add_files(cats)
    ds.add_files(cats)  # the same files again (an edit): no collision
    assert "replaced" not in capsys.readouterr().err
    ds.add_files(dogs)
    err = capsys.readouterr().err
    assert "1 file(s) replaced" in err
    assert f"a.jpg: {cats / 'a.jpg'} replaced by {dogs / 'a.jpg'}" in err
    assert "c.jpg" not in err and "d.jpg" not in err
    # twice into the same dataset_path
    ds.add_files(cats, dataset_path="x")
    ds.add_files(dogs / "a.jpg", dataset_path="x")
    assert f"x/a.jpg: {cats / 'a.jpg'} replaced by {dogs / 'a.jpg'}" in capsys.readouterr().err
    # different dataset paths keep both, silently
    ds.add_files(dogs, dataset_path="dogs")
    assert "replaced" not in capsys.readouterr().err


def test_cli_add_of_two_folders_names_the_collisions(tmp_path: Path) -> None:
    home = tmp_path / "cli-home"
    cats = old_tree(tmp_path / "cats", {"a.jpg": b"cat a", "s/b.jpg": b"cat b"})
    dogs = old_tree(tmp_path / "dogs", {"a.jpg": b"dog a", "s/b.jpg": b"dog b"})
    dsvc(home, "create", "--project", "p", "--name", "n")
    err = dsvc(home, "add", "--files", str(cats), str(dogs)).stderr
    assert "2 file(s) replaced" in err
    assert str(cats / "a.jpg") in err and str(dogs / "s" / "b.jpg") in err
