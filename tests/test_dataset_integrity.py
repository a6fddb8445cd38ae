"""Issue 9: the dataset layer keeps what was committed and never acts on a guess.

Items covered here: 4 (an overwrite target that holds or is inside the store), 5
(ambiguous deletes), 6 (lookups without criteria, unknown arguments, the CLI's
remembered dataset), 19 (project and name validation at create).

ClearML behaviour cited from clearml/datasets/dataset.py (github:clearml/clearml at
0cc42633) by line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree

from dsvc import errors
from dsvc import registry as reg
from dsvc.dataset import Dataset, last_used
from dsvc.registry import open_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return h


def final(files: dict[str, bytes], tmp: Path, name: str = "ds", project: str = "proj", **kw):
    ds = Dataset.create(dataset_name=name, dataset_project=project, **kw)
    if files:
        ds.add_files(write_tree(tmp / f"src-{ds.id}", files))
    ds.finalize()
    return ds


def cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env["DSVC_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "dsvc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def ids() -> set[str]:
    return {r.id for r in reg.all_records(open_store())}


# -- item 4: never overwrite the store ---------------------------------------------------


def _store_intact(ds: Dataset, files: dict[str, bytes]) -> None:
    again = Dataset.get(dataset_id=ds.id)
    assert read_tree(again.get_local_copy()) == files


def test_mutable_copy_overwrite_refuses_a_folder_holding_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    monkeypatch.setenv("DSVC_HOME", str(work / ".dsvc"))  # a store inside the project folder
    files = {"a": b"1", "d/b": b"2"}
    ds = final(files, tmp_path)
    (work / "mine.txt").write_bytes(b"keep me")
    for target in (work, tmp_path):  # the store's folder, and a folder above it
        with pytest.raises(errors.InvalidPathError, match="store"):
            ds.get_mutable_local_copy(target, overwrite=True)
    assert ds.get_mutable_local_copy(work, overwrite=True, raise_on_error=False) is None
    assert (work / "mine.txt").read_bytes() == b"keep me"
    assert (work / ".dsvc" / "store.lmdb" / "data.mdb").is_file()
    _store_intact(ds, files)


def test_mutable_copy_refuses_a_folder_inside_the_store(tmp_path: Path, home: Path) -> None:
    files = {"a": b"1"}
    ds = final(files, tmp_path)
    for target in (home, home / "cache", home / "newdir"):
        with pytest.raises(errors.InvalidPathError, match="store"):
            ds.get_mutable_local_copy(target, overwrite=True)
    assert not (home / "newdir").exists()
    _store_intact(ds, files)


def test_mutable_copy_refuses_the_store_through_a_symlink(tmp_path: Path) -> None:
    files = {"a": b"1"}
    ds = final(files, tmp_path)
    link = tmp_path / "alias"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(errors.InvalidPathError, match="store"):
        ds.get_mutable_local_copy(link, overwrite=True)
    _store_intact(ds, files)


def test_cli_get_copy_dot_overwrite_keeps_the_store(tmp_path: Path) -> None:
    work = tmp_path / "work"
    store_home = work / ".dsvc"
    src = write_tree(tmp_path / "src", {"f.txt": b"data"})
    assert cli(store_home, "create", "--project", "p", "--name", "n").returncode == 0
    assert cli(store_home, "add", "--files", str(src)).returncode == 0
    assert cli(store_home, "close").returncode == 0
    p = cli(store_home, "get", "--copy", ".", "--overwrite", cwd=work)
    assert p.returncode == 2, p.stderr
    assert "store" in p.stderr and "Traceback" not in p.stderr
    assert (store_home / "store.lmdb" / "data.mdb").is_file()
    out = cli(store_home, "get", "--copy", str(tmp_path / "elsewhere"))
    assert out.returncode == 0, out.stderr
    assert read_tree(tmp_path / "elsewhere") == {"f.txt": b"data"}


# -- item 5: ambiguous deletes delete nothing -----------------------------------------------


def test_delete_entire_dataset_needs_force(tmp_path: Path) -> None:
    # ClearML refuses entire_dataset without force (dataset.py 1614-1618)
    v1 = final({"f": b"1"}, tmp_path, name="n")
    v2 = final({"f": b"2"}, tmp_path, name="n")
    with pytest.raises(ValueError, match="force"):
        Dataset.delete(dataset_project="proj", dataset_name="n", entire_dataset=True)
    assert {v1.id, v2.id} <= ids()
    Dataset.delete(dataset_project="proj", dataset_name="n", entire_dataset=True, force=True)
    assert not ({v1.id, v2.id} & ids())


def test_delete_by_name_with_several_versions_deletes_nothing(tmp_path: Path) -> None:
    # ClearML: "Multiple datasets found" (dataset.py 4047-4052, raise_on_multiple=True from
    # _get_dataset_ids_respecting_params 1626-1632)
    v1 = final({"f": b"1"}, tmp_path, name="n")
    v2 = final({"f": b"2"}, tmp_path, name="n")
    other = final({"f": b"3"}, tmp_path, name="single")
    with pytest.raises(ValueError, match="Multiple datasets found"):
        Dataset.delete(dataset_project="proj", dataset_name="n")
    assert {v1.id, v2.id, other.id} <= ids()
    # a given version, or a name with one version, is not ambiguous
    Dataset.delete(dataset_project="proj", dataset_name="n", dataset_version=v2.version)
    assert v2.id not in ids() and v1.id in ids()
    Dataset.delete(dataset_project="proj", dataset_name="single")
    assert other.id not in ids()


def test_delete_published_needs_force(tmp_path: Path) -> None:
    pub = final({"f": b"1"}, tmp_path, name="n")
    pub.publish()
    with pytest.raises(errors.StateError, match="published"):
        Dataset.delete(dataset_id=pub.id)
    with pytest.raises(errors.StateError, match="published"):
        Dataset.delete(dataset_project="proj", dataset_name="n")
    assert pub.id in ids()
    Dataset.delete(dataset_id=pub.id, force=True)
    assert pub.id not in ids()


def test_cli_delete_is_never_a_guess(tmp_path: Path, home: Path) -> None:
    v1 = final({"f": b"1"}, tmp_path, name="n")
    v2 = final({"f": b"2"}, tmp_path, name="n")
    pub = final({"f": b"3"}, tmp_path, name="pub")
    pub.publish()
    reg.close_all()
    p = cli(home, "delete", "--project", "proj", "--name", "n")
    assert p.returncode != 0 and "Multiple datasets found" in p.stderr, p.stderr
    p = cli(home, "delete", "--project", "proj", "--name", "n", "--entire-dataset")
    assert p.returncode != 0 and "--force" in p.stderr, p.stderr
    p = cli(home, "delete", "--id", pub.id)
    assert p.returncode == 4 and "published" in p.stderr and "--force" in p.stderr, p.stderr
    assert {v1.id, v2.id, pub.id} <= ids()
    reg.close_all()
    p = cli(home, "delete", "--project", "proj", "--name", "n", "--entire-dataset", "--force")
    assert p.returncode == 0, p.stderr
    p = cli(home, "delete", "--id", pub.id, "--force")
    assert p.returncode == 0, p.stderr
    assert not ({v1.id, v2.id, pub.id} & ids())


# -- item 6: lookups need criteria; Python calls leave the CLI's dataset alone ----------------


def test_get_without_criteria_is_a_value_error(tmp_path: Path) -> None:
    # ClearML: "Dataset selection criteria not met" (dataset.py 1863-1864)
    final({"f": b"1"}, tmp_path)
    with pytest.raises(ValueError, match="criteria"):
        Dataset.get()
    with pytest.raises(ValueError, match="criteria"):
        Dataset.get(dataset_id=None)  # os.environ.get("DATASET_ID") when it is unset
    with pytest.raises(ValueError, match="criteria"):
        Dataset.get(dataset_id="", only_completed=True)


def test_get_rejects_unknown_keyword_arguments(tmp_path: Path) -> None:
    # ClearML: "Invalid 'Dataset.get' arguments" for keys not starting with _ (1883-1885)
    ds = final({"f": b"1"}, tmp_path)
    with pytest.raises(ValueError, match="dataset_projet"):
        Dataset.get(dataset_projet="proj", dataset_name="ds")
    assert Dataset.get(dataset_id=ds.id, _dont_populate_runtime_props=True).id == ds.id


def test_python_calls_do_not_change_the_cli_dataset(tmp_path: Path, home: Path) -> None:
    src = write_tree(tmp_path / "src", {"f.txt": b"cli"})
    p = cli(home, "create", "--project", "p", "--name", "cli")
    assert p.returncode == 0, p.stderr
    store = open_store()
    chosen = last_used(store)
    assert chosen is not None
    other = final({"g": b"py"}, tmp_path, name="py")  # create + finalize from Python
    Dataset.get(dataset_id=other.id)
    Dataset.get(dataset_project="proj", dataset_name="py")
    Dataset.get(dataset_id=other.id, writable_copy=True)
    assert last_used(store) == chosen
    reg.close_all()
    assert cli(home, "add", "--files", str(src)).returncode == 0  # bare: the CLI's dataset
    assert cli(home, "close").returncode == 0
    assert Dataset.get(dataset_id=chosen).list_files() == ["f.txt"]
    assert Dataset.get(dataset_id=other.id).list_files() == ["g"]


def test_cli_commands_still_remember_their_dataset(tmp_path: Path, home: Path) -> None:
    src = write_tree(tmp_path / "src", {"f.txt": b"x"})
    a = final({"f": b"1"}, tmp_path, name="a")
    reg.close_all()
    p = cli(home, "create", "--project", "p", "--name", "b")
    assert p.returncode == 0, p.stderr
    b = last_used(open_store())
    assert b is not None and b != a.id
    reg.close_all()
    assert cli(home, "publish", "--id", a.id).returncode == 0
    assert last_used(open_store()) == a.id
    reg.close_all()
    assert cli(home, "add", "--id", b, "--files", str(src)).returncode == 0
    assert last_used(open_store()) == b


# -- item 19: project and name are checked at create, before any remote ----------------------

BAD_LABELS = [
    (".", "n"),
    ("..", "n"),
    ("p/..", "n"),
    ("p/./q", "n"),
    ("/p", "n"),
    ("p/", "n"),
    ("a//b", "n"),
    ("p", "."),
    ("p", ".."),
    ("p", "a/b"),
    ("p", "x" * 201),
    ("p" * 201, "n"),
    ("p", "é" * 34),  # 68 UTF-8 bytes, 204 percent-encoded
    ("p", "a\nb"),
    ("p\x00", "n"),
    ("p", "tab\there"),
    ("p", "del\x7f"),
    ("p", "c1\x85"),
    ("p", "   "),
]


@pytest.mark.parametrize(("project", "name"), BAD_LABELS)
def test_create_refuses_bad_project_or_name_before_the_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project: str, name: str
) -> None:
    remote = tmp_path / "remote"
    monkeypatch.setenv("DSVC_REMOTE", f"file://{remote}")
    with pytest.raises(errors.UsageError):  # InvalidPathError, or "needs a non-empty name"
        Dataset.create(dataset_name=name, dataset_project=project)
    assert not remote.exists()  # nothing reached the remote
    assert ids() == set()


def test_rename_and_move_refuse_bad_labels(tmp_path: Path) -> None:
    ds = final({"f": b"1"}, tmp_path, name="n", project="p")
    with pytest.raises(errors.InvalidPathError):
        Dataset.rename("..", dataset_project="p", dataset_name="n")
    with pytest.raises(errors.InvalidPathError):
        Dataset.move_to_project("a//b", dataset_project="p", dataset_name="n")
    assert (ds.project, ds.name) == ("p", "n")


def test_edge_labels_that_are_allowed_finalize_and_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = f"file://{tmp_path / 'remote'}"
    monkeypatch.setenv("DSVC_REMOTE", remote)
    # the longest allowed name (200 bytes percent-encoded), as ASCII and as UTF-8
    good = [("a/b/c", "x" * 200), ("p", "é" * 33), ("p q", "n.1"), ("p", "...")]
    made = {}
    for project, name in good:
        ds = Dataset.create(dataset_name=name, dataset_project=project)
        ds.add_files(write_tree(tmp_path / f"s{len(made)}", {"f": name.encode()}))
        ds.upload()
        assert ds.finalize()
        made[(project, name)] = ds.id
    reg.close_all()
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "fresh"))
    for (project, name), did in made.items():
        got = Dataset.get(dataset_project=project, dataset_name=name)
        assert got.id == did
        assert read_tree(got.get_local_copy()) == {"f": name.encode()}
