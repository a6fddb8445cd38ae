"""Dataset API: creation, lookup, editing, listings, local copies, squash and bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from dataset_helpers import is_read_only_tree, read_tree, write_tree

from dsvc import errors
from dsvc.dataset import Dataset, split_parts
from dsvc.registry import open_store

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    return h


def final(files: dict[str, bytes], tmp: Path, name: str = "ds", project: str = "proj", **kw):
    ds = Dataset.create(dataset_name=name, dataset_project=project, **kw)
    if files:
        ds.add_files(write_tree(tmp / f"src-{ds.id}", files))
    ds.finalize()
    return ds


# -- create / get / versions -------------------------------------------------------------


def test_create_has_id_at_once_and_persists(tmp_path: Path) -> None:
    ds = Dataset.create(dataset_name="a", dataset_project="p", dataset_tags=["t1"])
    assert HEX32.match(ds.id)
    again = Dataset.get(dataset_id=ds.id)
    assert (again.name, again.project, again.version, again.tags) == ("a", "p", "1.0.0", ["t1"])
    assert not again.is_final() and again.status == "draft"


def test_versions_bump_from_highest_semantic_version(tmp_path: Path) -> None:
    assert final({}, tmp_path).version == "1.0.0"
    assert final({}, tmp_path).version == "1.0.1"
    Dataset.create(dataset_name="v", dataset_project="p", dataset_version="1.2")
    assert Dataset.create(dataset_name="v", dataset_project="p").version == "1.3"
    Dataset.create(dataset_name="w", dataset_project="p", dataset_version="1.10.0")
    Dataset.create(dataset_name="w", dataset_project="p", dataset_version="1.9.0")
    assert Dataset.create(dataset_name="w", dataset_project="p").version == "1.10.1"
    # ClearML allows an explicit version twice (clearml/datasets/dataset.py create);
    # the lookup then picks the most recently updated of the two
    twin = Dataset.create(dataset_name="v", dataset_project="p", dataset_version="1.2")
    assert twin.version == "1.2"


def test_parents_merge_in_order_later_wins(tmp_path: Path) -> None:
    a = final({"same": b"A", "only_a": b"a", "x": b"file in A"}, tmp_path, project="pa")
    b = final({"same": b"B", "only_b": b"b", "x/inner": b"folder in B"}, tmp_path, project="pb")
    ab = Dataset.create(dataset_name="m", parent_datasets=[a.id, b])
    assert ab.project == "pb"  # the last parent's project
    ab.finalize()
    assert read_tree(ab.get_local_copy()) == {
        "same": b"B",
        "only_a": b"a",
        "only_b": b"b",
        "x/inner": b"folder in B",
    }
    ba = Dataset.create(dataset_name="m", parent_datasets=[b, a])
    ba.finalize()
    assert read_tree(ba.get_local_copy()) == {
        "same": b"A",
        "only_a": b"a",
        "only_b": b"b",
        "x": b"file in A",
    }
    assert ab.get_dependency_graph() == {ab.id: [a.id, b.id], a.id: [], b.id: []}


def test_create_errors_leave_nothing_behind(tmp_path: Path) -> None:
    draft = Dataset.create(dataset_name="d", dataset_project="p")
    with pytest.raises(errors.StateError, match="not finalized") as e:
        Dataset.create(dataset_name="c", dataset_project="p", parent_datasets=[draft.id])
    assert isinstance(e.value, ValueError) and draft.id in str(e.value)
    with pytest.raises(errors.NotFoundError, match="0" * 32):
        Dataset.create(dataset_name="c", dataset_project="p", parent_datasets=["0" * 32])
    with pytest.raises(errors.UsageError, match="dataset_project"):
        Dataset.create(dataset_name="c")
    with pytest.raises(errors.UsageError, match="dataset_name"):
        Dataset.create(dataset_name="", dataset_project="p")
    with pytest.raises(ValueError):
        Dataset.create(dataset_name="   ", dataset_project="p")
    assert [d["id"] for d in Dataset.list_datasets(only_completed=False)] == [draft.id]


def test_get_by_name_project_tag_and_writable_copy(tmp_path: Path) -> None:
    v1 = final({"f": b"1"}, tmp_path, name="n", dataset_tags=["red"])
    v2 = final({"f": b"2"}, tmp_path, name="n", dataset_version="2.0.0")
    v3 = final({"f": b"3"}, tmp_path, name="n", dataset_version="1.5.0")  # newest, lower version
    other = final({}, tmp_path, name="other", dataset_tags=["red"])
    assert Dataset.get(dataset_project="proj", dataset_name="n").id == v2.id
    assert (
        Dataset.get(dataset_project="proj", dataset_name="n", dataset_version="1.0.0").id == v1.id
    )
    # project-only and tags-only lookups pick the highest version, as ClearML's code does
    # (Dataset._get_dataset_id), not the most recent one its SDK page promises
    assert Dataset.get(dataset_project="proj").id == v2.id
    assert Dataset.get(dataset_tags=["red"]).id == other.id  # 1.0.0 twice: latest updated
    with pytest.raises(errors.NotFoundError, match="nope"):
        Dataset.get(dataset_project="proj", dataset_name="nope")
    with pytest.raises(errors.NotFoundError):
        Dataset.get(dataset_id="f" * 32)
    child = Dataset.get(dataset_id=v3.id, writable_copy=True)
    assert not child.is_final() and child.id not in (v1.id, v2.id, v3.id)
    assert child.get_dependency_graph()[child.id] == [v3.id]
    assert child.list_files() == ["f"]
    child.add_files(write_tree(tmp_path / "c", {"g": b"g"}))
    assert v3.list_files() == ["f"]  # the found version is untouched


def test_list_datasets_rename_move_delete(tmp_path: Path) -> None:
    a = final({}, tmp_path, name="alpha", dataset_tags=["x"])
    b = final({}, tmp_path, name="beta", project="proj/sub")
    draft = Dataset.create(dataset_name="gamma", dataset_project="proj")
    rows = Dataset.list_datasets()
    assert {r["id"] for r in rows} == {a.id, b.id}  # only_completed by default
    assert set(rows[0]) >= {"name", "project", "id", "tags", "version", "created", "status"}
    assert [r["id"] for r in Dataset.list_datasets(partial_name="alp")] == [a.id]
    assert [r["id"] for r in Dataset.list_datasets(tags=["x"])] == [a.id]
    assert [r["id"] for r in Dataset.list_datasets(ids=[b.id])] == [b.id]
    assert draft.id in {r["id"] for r in Dataset.list_datasets(only_completed=False)}
    Dataset.rename("alpha2", dataset_project="proj", dataset_name="alpha")
    assert Dataset.get(dataset_id=a.id).name == "alpha2"
    Dataset.move_to_project("elsewhere", dataset_project="proj", dataset_name="alpha2")
    assert Dataset.get(dataset_project="elsewhere", dataset_name="alpha2").id == a.id
    with pytest.raises(errors.NotFoundError):
        Dataset.rename("z", dataset_project="proj", dataset_name="alpha")
    child = Dataset.create(dataset_name="c", dataset_project="proj", parent_datasets=[b])
    with pytest.raises(errors.StateError, match="force=True"):
        Dataset.delete(dataset_id=b.id)
    Dataset.delete(dataset_id=child.id)
    Dataset.delete(dataset_id=b.id)
    with pytest.raises(errors.NotFoundError):
        Dataset.get(dataset_id=b.id)


def test_finalize_publish_metadata_description(tmp_path: Path) -> None:
    ds = Dataset.create(dataset_name="m", dataset_project="p")
    ds.set_metadata({"rows": 3, "cols": ["a", "b"], "blob": b"\x00\x01"})
    ds.set_metadata(b"raw", metadata_name="bytes")
    ds.set_description("first cut")
    with pytest.raises(errors.UsageError, match="cannot be stored"):
        ds.set_metadata(object(), metadata_name="bad")
    assert ds.get_metadata("bad") is None
    assert ds.finalize() is True
    assert ds.is_final()
    again = Dataset.get(dataset_id=ds.id)
    assert again.get_metadata() == {"rows": 3, "cols": ["a", "b"], "blob": b"\x00\x01"}
    assert again.get_metadata("bytes") == b"raw"
    assert again.description == "first cut"
    # ClearML raises on a second finalize whatever raise_on_error says (dataset.py:970)
    for kw in ({}, {"raise_on_error": False}):
        with pytest.raises(errors.StateError, match="already finalized"):
            ds.finalize(**kw)
    assert ds.publish() is True and ds.status == "published" and ds.is_final()
    draft = Dataset.create(dataset_name="m", dataset_project="p")
    with pytest.raises(errors.StateError, match="finalized before publishing"):
        draft.publish(raise_on_error=False)  # ClearML: ValueError either way (dataset.py:1054)


# -- editing ------------------------------------------------------------------------------


def test_modifying_a_finalized_dataset_is_refused(tmp_path: Path) -> None:
    ds = final({"a": b"1"}, tmp_path)
    src = write_tree(tmp_path / "more", {"b": b"2"})
    for call in (
        lambda: ds.add_files(src),
        lambda: ds.remove_files("a"),
        lambda: ds.sync_folder(src),
        lambda: ds.set_metadata({"k": 1}),
    ):
        with pytest.raises(errors.StateError, match="finalized") as e:
            call()
        assert isinstance(e.value, ValueError)
        assert ds.id in str(e.value) and "parent_datasets" in str(e.value)
    assert ds.list_files() == ["a"]


def test_add_files_counts_prefix_wildcards(tmp_path: Path) -> None:
    src = write_tree(
        tmp_path / "src",
        {
            "a.jpg": b"1",
            "b.txt": b"2",
            "sub/c.jpg": b"3",
            "sub/deep/d.jpg": b"4",
            "sub/e.txt": b"5",
        },
    )
    ds = Dataset.create(dataset_name="w", dataset_project="p")
    assert ds.add_files(src, wildcard="*.jpg", recursive=False) == 1
    assert ds.list_files() == ["a.jpg"]
    # a.jpg is re-added before any upload: ClearML counts it (its "Re-Added" case)
    assert ds.add_files(src, wildcard="*.jpg") == 3
    assert ds.list_files() == ["a.jpg", "sub/c.jpg", "sub/deep/d.jpg"]
    assert ds.add_files(src, wildcard=["*.txt", "nothing*"], dataset_path="/t") == 2
    assert "t/b.txt" in ds.list_files() and "t/sub/e.txt" in ds.list_files()
    assert ds.add_files(src / "b.txt", dataset_path="single") == 1
    assert "single/b.txt" in ds.list_files()
    assert ds.add_files(src, wildcard="*.none") == 0
    # local_base_folder: paths relative to the base, not to `path`
    assert ds.add_files(src / "sub" / "deep", local_base_folder=src, dataset_path="lb") == 1
    assert "lb/sub/deep/d.jpg" in ds.list_files()
    with pytest.raises(errors.InvalidPathError, match="local_base_folder"):
        ds.add_files(src, local_base_folder=src / "sub")


def test_modified_file_stores_only_new_chunks_and_stat_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    big = os.urandom(3 << 20)
    write_tree(src, {"big.bin": big, "small": b"s"})
    old = 1_600_000_000
    for p in src.iterdir():
        os.utime(p, (old, old))
    ds = Dataset.create(dataset_name="b", dataset_project="p")
    assert ds.add_files(src) == 2
    ds.upload()  # uploaded files that are re-added unchanged are not counted (ClearML)
    store = open_store()
    chunks_before = store.stats()["chunks"]
    # unchanged folder: nothing changes, nothing is read (a chmod to make the file
    # unreadable would change its ctime, which the stat cache compares, as git does)
    capsys.readouterr()
    assert ds.add_files(src, verbose=True) == 0
    assert "2 files, 2 unchanged, 0 new chunks" in capsys.readouterr().out
    # modify the middle: only the chunks around the edit are new
    changed = big[: 1 << 20] + b"EDIT" + big[(1 << 20) + 4 :]
    (src / "big.bin").write_bytes(changed)
    os.utime(src / "big.bin", (old + 10, old + 10))
    assert ds.add_files(src) == 0  # ClearML counts modified files apart, not as added
    new_chunks = store.stats()["chunks"] - chunks_before
    assert 1 <= new_chunks <= 4
    ds.finalize()
    assert read_tree(ds.get_local_copy())["big.bin"] == changed


def test_remove_files_matching_rules(tmp_path: Path) -> None:
    files = {
        "top.csv": b"1",
        "a/x.csv": b"2",
        "a/b/y.csv": b"3",
        "data/x.jpg": b"4",
        "data/sub/x.jpg": b"5",
        "other/data/z.jpg": b"6",
        "keep.txt": b"7",
    }
    src = write_tree(tmp_path / "src", files)

    def fresh() -> Dataset:
        d = Dataset.create(dataset_name="r", dataset_project="p")
        d.add_files(src)
        return d

    cases = [
        ("*.csv", True, ["top.csv", "a/x.csv", "a/b/y.csv"]),
        ("*.csv", False, ["top.csv"]),
        ("data/*.jpg", True, ["data/x.jpg", "data/sub/x.jpg"]),
        ("data/*.jpg", False, ["data/x.jpg"]),
        ("/a", True, ["a/x.csv", "a/b/y.csv"]),  # a folder: everything below it
        ("a/", False, ["a/x.csv", "a/b/y.csv"]),
        ("x.jpg", True, ["data/x.jpg", "data/sub/x.jpg"]),  # a bare name at any depth
        ("*/b/*", True, ["a/b/y.csv"]),
        ("nothing*", True, []),
        ("keep.txt", True, ["keep.txt"]),
    ]
    for pattern, recursive, gone in cases:
        d = fresh()
        assert d.remove_files(pattern, recursive=recursive) == len(gone), pattern
        assert d.list_files() == sorted(set(files) - set(gone)), pattern
        assert sorted(d.list_removed_files()) == [], pattern  # no parent: nothing to remove
    with pytest.raises(errors.UsageError):
        fresh().remove_files("")
    d = fresh()
    assert d.list_files("*.jpg") == ["data/sub/x.jpg", "data/x.jpg", "other/data/z.jpg"]
    assert d.list_files("*.jpg", recursive=False) == []


def test_sync_folder_counts_and_prefix(tmp_path: Path) -> None:
    base = final({"a": b"1", "b": b"2", "sub/c": b"3", "keep/k": b"k"}, tmp_path)
    ds = Dataset.create(dataset_name="s", dataset_project="p", parent_datasets=[base])
    src = write_tree(tmp_path / "sync", {"a": b"1", "b": b"changed", "new": b"n", "sub/d": b"4"})
    # keep/k and sub/c go, new and sub/d come, b changes; the folder is the whole dataset
    assert ds.sync_folder(src) == (2, 2, 1)
    assert ds.list_files() == ["a", "b", "new", "sub/d"]
    assert sorted(ds.list_removed_files()) == ["keep/k", "sub/c"]
    assert sorted(ds.list_added_files()) == ["new", "sub/d"]
    assert ds.list_modified_files() == ["b"]
    assert ds.sync_folder(src) == (0, 0, 0)
    # with dataset_path only that folder is synced
    assert ds.sync_folder(write_tree(tmp_path / "s2", {"z": b"z"}), dataset_path="sub") == (1, 1, 0)
    assert ds.list_files() == ["a", "b", "new", "sub/z"]
    # a file where the folder goes is replaced by the folder
    assert ds.sync_folder(write_tree(tmp_path / "s3", {"q": b"q"}), dataset_path="a") == (1, 1, 0)
    assert ds.list_files() == ["a/q", "b", "new", "sub/z"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ds.sync_folder(empty) == (4, 0, 0)
    assert ds.list_files() == []
    with pytest.raises(errors.NotFoundError, match="not a folder"):
        ds.sync_folder(tmp_path / "missing")


def test_listings_against_given_version(tmp_path: Path) -> None:
    v1 = final({"a": b"1", "b": b"2"}, tmp_path)
    v2 = Dataset.create(dataset_name="l", dataset_project="p", parent_datasets=[v1])
    v2.add_files(write_tree(tmp_path / "x", {"a": b"changed", "c": b"3"}))
    v2.remove_files("b")
    v2.finalize()
    v3 = Dataset.create(dataset_name="l", dataset_project="p", parent_datasets=[v2])
    v3.add_files(write_tree(tmp_path / "y", {"d": b"4"}))
    assert v3.list_added_files() == ["d"]
    assert v3.list_added_files(dataset_id=v1.id) == ["c", "d"]
    assert v3.list_removed_files(dataset_id=v1.id) == ["b"]
    assert v3.list_modified_files(dataset_id=v1.id) == ["a"]
    entries = v3.file_entries_dict
    assert {p: e.parent_dataset_id for p, e in entries.items()} == {
        "a": v2.id,
        "c": v2.id,
        "d": v3.id,
    }
    assert entries["a"].size == len(b"changed") and HEX32.match(entries["a"].hash)
    # ClearML: list_files(dataset_id=X) lists the files whose content X introduced
    assert v3.list_files(dataset_id=v2.id) == ["a", "c"]
    assert v3.list_files(dataset_id=v1.id) == []
    v1_only = Dataset.create(dataset_name="l", dataset_project="p", parent_datasets=[v1])
    assert v1_only.list_files(dataset_id=v1.id) == ["a", "b"]


def test_diff_and_stats_are_a_library_call(tmp_path: Path) -> None:
    """Dataset.diff streams (path, old, new) from another version (default: the parents'
    merge) to this one; stats sums it. The CLI's diff/status/log build on these."""
    v1 = final({"a": b"1", "b": b"22", "keep/k": b"k"}, tmp_path)
    v2 = Dataset.create(dataset_name="l", dataset_project="p", parent_datasets=[v1])
    v2.add_files(write_tree(tmp_path / "x", {"a": b"changed", "c/d": b"333"}))
    v2.remove_files("b")
    got = [(c.path_str, c.status) for c in v2.diff()]
    assert got == [("a", "modified"), ("b", "removed"), ("c/d", "added")]
    by_path = {c.path_str: c for c in v2.diff()}
    assert by_path["a"].old.size == 1 and by_path["a"].new.size == len(b"changed")
    assert by_path["b"].new is None and by_path["c/d"].old is None
    st = v2.stats()
    assert (st.added, st.removed, st.modified, st.changed) == (1, 1, 1, 3)
    assert (st.bytes_added, st.bytes_removed, st.bytes_delta) == (3, 2, 6)
    v2.finalize()
    # against an explicit version (object or id), both directions mirror each other
    assert [(c.path_str, c.status) for c in v1.diff(v2.id)] == [
        ("a", "modified"),
        ("b", "added"),
        ("c/d", "removed"),
    ]
    assert [c.path_str for c in v2.diff(v2)] == []
    assert v1.stats().added == 3  # a root version: everything is added


# -- local copies ---------------------------------------------------------------------------


def test_local_copy_read_only_shared_and_instant(tmp_path: Path, home: Path) -> None:
    v1 = final({"a": b"same", "dir/b": b"bbb", "empty": b""}, tmp_path)
    v2 = Dataset.create(dataset_name="lc", dataset_project="p", parent_datasets=[v1])
    v2.add_files(write_tree(tmp_path / "x", {"c": b"new"}))
    with pytest.raises(errors.StateError, match="not finalized") as e:
        v2.get_local_copy()
    assert v2.id in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(errors.StateError, match="not finalized"):  # ClearML: dataset.py:1116
        v2.get_local_copy(raise_on_error=False)
    v2.finalize()
    p1, p2 = v1.get_local_copy(), v2.get_local_copy()
    assert Path(p1).is_relative_to(home) and p1 != p2
    assert read_tree(p1) == {"a": b"same", "dir/b": b"bbb", "empty": b""}
    assert read_tree(p2) == {"a": b"same", "dir/b": b"bbb", "empty": b"", "c": b"new"}
    assert is_read_only_tree(p1) and is_read_only_tree(p2)
    # identical content shares one inode across versions
    assert os.stat(Path(p1) / "a").st_ino == os.stat(Path(p2) / "a").st_ino
    assert v2.get_local_copy() == p2
    assert v2.verify_dataset_hash() == []


def test_local_copy_files_and_parts(tmp_path: Path) -> None:
    files = {
        f"d{i % 3}/f{i:02d}.{'csv' if i % 2 else 'bin'}": bytes([i]) * (i * 37) for i in range(20)
    }
    ds = final(files, tmp_path)
    sel = ds.get_local_copy(files=["*.csv"])
    assert read_tree(sel) == {k: v for k, v in files.items() if k.endswith(".csv")}
    assert sel != ds.get_local_copy()
    parts = [read_tree(ds.get_local_copy(part=i, num_parts=3)) for i in range(3)]
    assert all(parts)
    union: dict[str, bytes] = {}
    for p in parts:
        assert not union.keys() & p.keys()
        union.update(p)
    assert union == files
    # contiguous in canonical order and deterministic
    order = sorted(files, key=lambda s: tuple(x.encode() for x in s.split("/")))
    flat = [k for p in parts for k in sorted(p, key=order.index)]
    assert flat == order
    assert read_tree(ds.get_local_copy(part=1, num_parts=3)) == parts[1]
    with pytest.raises(errors.UsageError):
        ds.get_local_copy(part=3, num_parts=3)
    with pytest.raises(errors.UsageError):
        ds.get_local_copy(part=0)


def test_split_parts_balances_bytes() -> None:
    from dsvc.objects import KIND_CHUNKFILE, Entry

    entries = [((f"f{i}",), Entry(KIND_CHUNKFILE, bytes(16), s)) for i, s in enumerate([90, 5, 5])]
    assert [p for p, _ in split_parts(entries, 0, 2)] == [("f0",)]
    assert [p for p, _ in split_parts(entries, 1, 2)] == [("f1",), ("f2",)]
    zero = [((f"f{i}",), Entry(KIND_CHUNKFILE, bytes(16), 0)) for i in range(4)]
    assert [len(split_parts(zero, k, 2)) for k in range(2)] == [2, 2]


def test_mutable_copy_overwrite_rules(tmp_path: Path) -> None:
    ds = final({"a": b"1", "d/b": b"2"}, tmp_path)
    target = tmp_path / "t"
    assert ds.get_mutable_local_copy(target) == str(target)
    assert read_tree(target) == {"a": b"1", "d/b": b"2"}
    (target / "a").write_bytes(b"mine")  # writable and independent of the cache
    assert read_tree(ds.get_local_copy())["a"] == b"1"
    assert ds.verify_dataset_hash(local_copy_path=str(target)) == ["a"]
    with pytest.raises(errors.StateError, match="overwrite=True"):
        ds.get_mutable_local_copy(target)
    assert ds.get_mutable_local_copy(target, raise_on_error=False) is None
    assert (target / "a").read_bytes() == b"mine"  # a refused call changed nothing
    ds.get_mutable_local_copy(target, overwrite=True)
    assert read_tree(target) == {"a": b"1", "d/b": b"2"}
    draft = Dataset.create(dataset_name="dr", dataset_project="p", parent_datasets=[ds])
    draft.remove_files("a")
    assert read_tree(draft.get_mutable_local_copy(tmp_path / "t2")) == {"d/b": b"2"}


def test_verify_dataset_hash_reports_mismatches(tmp_path: Path) -> None:
    ds = final({"a": b"1" * 100, "b": b"2", "c": b"3"}, tmp_path)
    t = tmp_path / "copy"
    ds.get_mutable_local_copy(t)
    (t / "a").write_bytes(b"0" + b"1" * 99)  # same size, other content
    (t / "b").write_bytes(b"22")
    (t / "c").unlink()
    assert sorted(ds.verify_dataset_hash(local_copy_path=str(t))) == ["a", "b", "c"]
    assert sorted(ds.verify_dataset_hash(local_copy_path=str(t), skip_hash=True)) == ["b", "c"]


# -- squash -------------------------------------------------------------------------------


def test_squash_merges_full_content_in_order(tmp_path: Path) -> None:
    v1 = final({"a": b"1", "b": b"1", "gone": b"g"}, tmp_path, project="first")
    v2 = Dataset.create(dataset_name="ds", parent_datasets=[v1])
    v2.add_files(write_tree(tmp_path / "x", {"a": b"2"}))
    v2.remove_files("gone")
    v2.finalize()
    other = final({"b": b"other", "o": b"o"}, tmp_path, name="other", project="second")
    sq = Dataset.squash("sq", dataset_ids=[v1.id, v2, other.id])
    assert sq.is_final() and sq.project == "first" and sq.name == "sq"
    assert sq.get_dependency_graph() == {sq.id: []}
    # v1's full content still contributes "gone" (removed in v2 but v1 is listed)
    assert read_tree(sq.get_local_copy()) == {"a": b"2", "b": b"other", "gone": b"g", "o": b"o"}
    by_name = Dataset.squash(
        "sq2", dataset_project_name_pairs=[("second", "other"), ("first", "ds")]
    )
    assert read_tree(by_name.get_local_copy()) == {"a": b"2", "b": b"1", "o": b"o"}


def test_squash_writes_no_chunk(tmp_path: Path) -> None:
    files = {f"f{i}": os.urandom(1000) for i in range(20)}
    v1 = final(files, tmp_path)
    v2 = Dataset.create(dataset_name="ds", dataset_project="proj", parent_datasets=[v1])
    v2.add_files(write_tree(tmp_path / "y", {"f0": b"new"}))
    v2.finalize()
    store = open_store()
    before = store.stats()
    sq = Dataset.squash("sq", dataset_ids=[v1.id, v2.id])
    after = store.stats()
    assert after["chunks"] == before["chunks"]
    assert sq.list_files() == sorted(files)


def test_squash_errors(tmp_path: Path) -> None:
    draft = Dataset.create(dataset_name="d", dataset_project="p")
    with pytest.raises(errors.StateError, match="not finalized"):
        Dataset.squash("s", dataset_ids=[draft.id])
    with pytest.raises(errors.NotFoundError):
        Dataset.squash("s", dataset_ids=["a" * 32])
    with pytest.raises(errors.UsageError):
        Dataset.squash("s")
    v = final({}, tmp_path)
    with pytest.raises(errors.UsageError, match="dataset_name"):
        Dataset.squash("", dataset_ids=[v.id])
    assert len(Dataset.list_datasets(only_completed=False)) == 2


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "..", "a/./..", "x\x00y"])
def test_dataset_path_traversal_is_refused(tmp_path: Path, bad: str) -> None:
    ds = Dataset.create(dataset_name="t", dataset_project="p")
    src = write_tree(tmp_path / "src", {"f": b"1"})
    with pytest.raises(errors.InvalidPathError) as e:
        ds.add_files(src, dataset_path=bad)
    assert isinstance(e.value, ValueError)
    with pytest.raises(errors.InvalidPathError):
        ds.sync_folder(src, dataset_path=bad)
    assert ds.list_files() == []


def test_absolute_dataset_path_is_relative_to_dataset_root(tmp_path: Path) -> None:
    ds = Dataset.create(dataset_name="t", dataset_project="p")
    src = write_tree(tmp_path / "src", {"f": b"1"})
    assert ds.add_files(src, dataset_path="/etc/data") == 1
    assert ds.list_files() == ["etc/data/f"]
    ds.finalize()
    copy = Path(ds.get_local_copy())
    assert (copy / "etc" / "data" / "f").read_bytes() == b"1"
    assert not Path("/etc/data/f").exists()


def test_missing_path_and_empty_inputs(tmp_path: Path) -> None:
    ds = Dataset.create(dataset_name="t", dataset_project="p")
    with pytest.raises(errors.NotFoundError, match="no such file") as e:
        ds.add_files(tmp_path / "nope")
    assert ds.id in str(e.value) and isinstance(e.value, ValueError)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ds.add_files(empty) == 0
    assert ds.add_files(write_tree(tmp_path / "e", {"zero": b""})) == 1
    assert ds.remove_files("no-such-*") == 0
    ds.finalize()
    assert read_tree(ds.get_local_copy()) == {"zero": b""}
    zero = final({}, tmp_path, name="zero")
    assert zero.list_files() == []
    copy = zero.get_local_copy()
    assert os.path.isdir(copy) and os.listdir(copy) == []
    assert zero.verify_dataset_hash() == []
    assert zero.get_mutable_local_copy(tmp_path / "z") == str(tmp_path / "z")
    sq = Dataset.squash("sq", dataset_ids=[zero.id])
    assert sq.list_files() == []


def test_deep_and_wide_folders(tmp_path: Path) -> None:
    deep = "/".join(f"l{i}" for i in range(60)) + "/leaf"
    wide = {f"w/f{i:04d}": str(i).encode() for i in range(1500)}
    ds = final({deep: b"deep", **wide}, tmp_path)
    assert len(ds.list_files()) == 1501
    got = read_tree(ds.get_local_copy())
    assert got[deep] == b"deep" and len(got) == 1501 and got["w/f1499"] == b"1499"
    child = Dataset.create(dataset_name="ds", dataset_project="proj", parent_datasets=[ds])
    assert child.remove_files("l0/*") == 1
    assert child.remove_files("w/f00*") == 100
    assert len(child.list_files()) == 1400


def test_get_local_copy_of_missing_content_says_what_to_do(tmp_path: Path) -> None:
    ds = final({"a": b"content that will vanish"}, tmp_path)
    store = open_store()
    from dsvc.treeops import Trees, walk

    ((_, entry),) = list(walk(Trees(store), store.get_record("ds/" + ds.id)["tree"]))
    with store.batch() as b:
        b.delete_chunk(entry.id)
    with pytest.raises(errors.NotFoundError, match="no remote is configured") as e:
        ds.get_local_copy()
    assert ds.id in str(e.value)
    assert ds.get_local_copy(raise_on_error=False) == ""
    assert not (Path(store.home) / "cache" / "datasets" / ds.id).exists()
