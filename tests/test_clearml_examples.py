"""The examples of ClearML Data's SDK page (shared/reference/clearml-data-sdk.txt), run
as written; only ``from clearml import Dataset`` became ``from dsvc import Dataset``.

Each snippet is kept verbatim in a string and executed with ``exec`` in a namespace
that provides what the page leaves to the reader (the ids in capitals, an existing
``dataset`` object, the folders the paths name).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree

from dsvc import errors

IMPORT = "from dsvc import Dataset\n"

CREATE = """
# Preprocessing code here
dataset = Dataset.create(
dataset_name='dataset name',
dataset_project='dataset project',
parent_datasets=[PARENT_DS_ID_1, PARENT_DS_ID_2]
)
"""

SQUASH = """
# option 1 - list dataset IDs
squashed_dataset_1 = Dataset.squash(
dataset_name='squashed dataset\\'s name',
dataset_ids=[DS1_ID, DS2_ID, DS3_ID]
)
# option 2 - list project and dataset pairs
squashed_dataset_2 = Dataset.squash(
dataset_name='squashed dataset 2',
dataset_project_name_pairs=[('dataset1 project', 'dataset1 name'),
('dataset2 project', 'dataset2 name')]
)
"""

ADD_BARE = """
dataset = Dataset.create()
dataset.add_files(path="path/to/folder_or_file")
"""

ADD_WILDCARD = """
dataset.add_files(
path="path/to/folder",
wildcard="~/data/*.jpg",
recursive=True
)
"""

REMOVE = """
dataset.remove_files(dataset_path="*.csv", recursive=True)
"""


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(snippet: str, ns: dict) -> dict:
    exec(compile(IMPORT + textwrap.dedent(snippet), "<clearml-sdk-page>", "exec"), ns)
    return ns


def finalized(name: str, project: str, files: dict[str, bytes], tmp: Path):
    from dsvc import Dataset

    ds = Dataset.create(dataset_name=name, dataset_project=project)
    ds.add_files(write_tree(tmp / f"src-{project}-{name}", files))
    ds.upload()
    ds.finalize()
    return ds


def test_create_with_parents(env: Path) -> None:
    p1 = finalized("p1", "parents", {"a": b"1", "shared": b"from 1"}, env)
    p2 = finalized("p2", "parents", {"b": b"2", "shared": b"from 2"}, env)
    ns = run(CREATE, {"PARENT_DS_ID_1": p1.id, "PARENT_DS_ID_2": p2.id})
    ds = ns["dataset"]
    assert (ds.name, ds.project) == ("dataset name", "dataset project")
    ds.finalize()
    # "Each parent overrides any overlapping files from a previous parent dataset."
    assert read_tree(ds.get_local_copy()) == {"a": b"1", "b": b"2", "shared": b"from 2"}


def test_squash_both_options(env: Path) -> None:
    d1 = finalized("dataset1 name", "dataset1 project", {"x": b"1", "y": b"1"}, env)
    d2 = finalized("dataset2 name", "dataset2 project", {"y": b"2", "z": b"2"}, env)
    d3 = finalized("dataset3 name", "dataset3 project", {"z": b"3"}, env)
    ns = run(SQUASH, {"DS1_ID": d1.id, "DS2_ID": d2.id, "DS3_ID": d3.id})
    s1, s2 = ns["squashed_dataset_1"], ns["squashed_dataset_2"]
    assert s1.name == "squashed dataset's name" and s1.project == "dataset1 project"
    assert read_tree(s1.get_local_copy()) == {"x": b"1", "y": b"2", "z": b"3"}
    assert read_tree(s2.get_local_copy()) == {"x": b"1", "y": b"2", "z": b"2"}
    assert s1.get_dependency_graph() == {s1.id: []}


def test_get_and_local_copies(env: Path) -> None:
    ds = finalized("name", "project", {"f": b"1", "sub/g": b"2"}, env)
    assert Dataset_get(dataset_id=ds.id).id == ds.id
    assert Dataset_get(dataset_project="project", dataset_name="name").id == ds.id
    assert Dataset_get(dataset_project="project").id == ds.id
    path = Dataset_get(dataset_id=ds.id).get_local_copy()
    assert read_tree(path) == {"f": b"1", "sub/g": b"2"}
    target = env / "mutable"
    ds.get_mutable_local_copy(target_folder=str(target))
    (target / "f").write_bytes(b"changed")
    with pytest.raises(ValueError):  # non-empty target without overwrite
        ds.get_mutable_local_copy(target_folder=str(target))
    ds.get_mutable_local_copy(target_folder=str(target), overwrite=True)
    assert read_tree(target) == {"f": b"1", "sub/g": b"2"}


def Dataset_get(**kw):  # noqa: N802 - the page's call, spelled as a function
    from dsvc import Dataset

    return Dataset.get(**kw)


def test_bare_create_needs_a_project(env: Path) -> None:
    """``Dataset.create()`` with no argument relies on ClearML's current task; dsvc has
    no server or task, so it refuses with a message saying what to pass."""
    write_tree(env / "path/to/folder_or_file", {"f": b"1"})
    with pytest.raises(errors.UsageError, match="dataset_project") as e:
        run(ADD_BARE, {})
    assert isinstance(e.value, ValueError)


def test_add_files_wildcard_and_remove_files(env: Path) -> None:
    write_tree(
        env / "path/to/folder",
        {
            "~/data/a.jpg": b"a",
            "~/data/b.png": b"b",
            "deeper/~/data/c.jpg": b"c",
            "data/d.jpg": b"not below ~/data",
            "e.csv": b"e",
            "x/f.csv": b"f",
        },
    )
    from dsvc import Dataset

    dataset = Dataset.create(dataset_name="examples", dataset_project="clearml page")
    run(ADD_WILDCARD, {"dataset": dataset})
    # rglob("~/data/*.jpg"): the last three components match, at any depth
    assert dataset.list_files() == ["deeper/~/data/c.jpg", "~/data/a.jpg"]
    dataset.add_files(path="path/to/folder")
    assert "x/f.csv" in dataset.list_files() and "e.csv" in dataset.list_files()
    run(REMOVE, {"dataset": dataset})
    assert [f for f in dataset.list_files() if f.endswith(".csv")] == []
    # "Dataset files must be uploaded before a dataset is finalized."
    dataset.upload()
    assert not dataset.is_dirty()
    dataset.finalize()
    assert dataset.is_final()
    assert sorted(read_tree(dataset.get_local_copy())) == sorted(dataset.list_files())


def test_sync_folder(env: Path) -> None:
    from dsvc import Dataset

    folder = write_tree(env / "truth", {"a": b"1", "b": b"2"})
    v1 = Dataset.create(dataset_name="synced", dataset_project="sync")
    v1.sync_folder(local_path=str(folder))
    v1.finalize()
    (folder / "a").write_bytes(b"changed")
    os.unlink(folder / "b")
    (folder / "c").write_bytes(b"3")
    v2 = Dataset.create(dataset_name="synced", dataset_project="sync", parent_datasets=[v1.id])
    assert v2.sync_folder(local_path=str(folder)) == (1, 1, 1)
    v2.finalize()
    assert read_tree(v2.get_local_copy()) == {"a": b"changed", "c": b"3"}
