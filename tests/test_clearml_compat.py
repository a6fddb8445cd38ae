"""ClearML compatibility, row by row (issue 13).

Each test states what ClearML 2.1 does, names the line of clearml/datasets/dataset.py
(or of the module it calls) that does it, and checks that dsvc does the same. The
scenarios are our own: they make the calls a ClearML script makes, in the same order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc import errors
from dsvc.dataset import Dataset, FileEntry
from dsvc.ingest import scan
from dsvc.registry import bump


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return h


def final(tmp: Path, files: dict[str, bytes], name: str = "ds", **kw) -> Dataset:
    ds = Dataset.create(dataset_name=name, dataset_project=kw.pop("project", "p"), **kw)
    if files:
        ds.add_files(write_tree(tmp / f"src-{ds.id}", files))
    ds.finalize()
    return ds


# -- list_datasets status values --------------------------------------------------------


def test_list_datasets_reports_clearml_task_statuses(tmp_path: Path) -> None:
    # dataset.py:2171 filters on task statuses and :2190 returns `dataset.status`, the task
    # status: "in_progress" while edited, "completed" once finalized, "published".
    draft = Dataset.create(dataset_name="d", dataset_project="p")
    done = final(tmp_path, {"a": b"1"}, name="f")
    pub = final(tmp_path, {"a": b"2"}, name="g")
    pub.publish()
    rows = {r["id"]: r["status"] for r in Dataset.list_datasets(only_completed=False)}
    assert rows == {draft.id: "in_progress", done.id: "completed", pub.id: "published"}
    assert [r for r in Dataset.list_datasets() if r["status"] == "completed"][0]["id"] == done.id


# -- add_files wildcards: pathlib's glob/rglob (dataset.py:2245-2247) -----------------------


FILES = {
    "a.jpg": b"1",
    "b.txt": b"2",
    "s/c.jpg": b"3",
    "s/t/d.jpg": b"4",
    "s/t/e.txt": b"5",
    ".hidden.jpg": b"6",
}


def _added(tmp: Path, **kw) -> list[str]:
    src = write_tree(tmp / "src", FILES)
    ds = Dataset.create(dataset_name="w", dataset_project="p")
    ds.add_files(src, **kw)
    return ds.list_files()


def test_double_star_wildcard_includes_top_level_files(tmp_path: Path) -> None:
    # rglob("**/*.jpg") == glob("**/**/*.jpg"): "**" matches zero folders too
    assert _added(tmp_path, wildcard="**/*.jpg") == [".hidden.jpg", "a.jpg", "s/c.jpg", "s/t/d.jpg"]


def test_non_recursive_double_star_still_crosses_folders(tmp_path: Path) -> None:
    # Path.glob("**/*.jpg") (recursive=False) recurses through "**" all the same
    got = _added(tmp_path, wildcard="**/*.jpg", recursive=False)
    assert got == [".hidden.jpg", "a.jpg", "s/c.jpg", "s/t/d.jpg"]
    assert _added(tmp_path / "x", wildcard="*.jpg", recursive=False) == [".hidden.jpg", "a.jpg"]


def test_single_file_is_added_whatever_the_wildcard(tmp_path: Path) -> None:
    # dataset.py:2234: a file path skips the wildcard loop entirely
    f = write_tree(tmp_path / "one", {"data.csv": b"x"}) / "data.csv"
    ds = Dataset.create(dataset_name="w", dataset_project="p")
    assert ds.add_files(f, wildcard="*.jpg") == 1
    assert ds.list_files() == ["data.csv"]


def test_absolute_wildcard_is_not_implemented(tmp_path: Path) -> None:
    # pathlib: NotImplementedError("Non-relative patterns are unsupported")
    src = write_tree(tmp_path / "src", FILES)
    ds = Dataset.create(dataset_name="w", dataset_project="p")
    with pytest.raises(NotImplementedError, match="absolute"):
        ds.add_files(src, wildcard="/*.jpg")
    with pytest.raises(errors.UsageError):
        ds.add_files(src, wildcard=["*.txt", "/*.jpg"])
    assert ds.list_files() == []


_name = st.sampled_from(["a", "b", ".c", "a.jpg", "b.txt", "x.jpg"])
_pattern_part = st.sampled_from(["*", "**", "*.jpg", "a*", "?.txt", "a", "[ab]*", "x.jpg"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.lists(st.lists(_name, min_size=1, max_size=3), min_size=1, max_size=8),
    pattern=st.lists(_pattern_part, min_size=1, max_size=3).map("/".join),
    recursive=st.booleans(),
)
def test_wildcard_selection_equals_pathlib(
    tmp_path_factory: pytest.TempPathFactory, files: list[list[str]], pattern: str, recursive: bool
) -> None:
    """The oracle is pathlib itself, which is what ClearML calls."""
    root = tmp_path_factory.mktemp("glob")
    for parts in files:
        p = root.joinpath(*parts)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():
                p.write_bytes(b"x")
        except (FileExistsError, NotADirectoryError):
            continue  # a name used as both file and folder: keep the first
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    expected = sorted(f.relative_to(root).as_posix() for f in found if f.is_file())
    got = sorted("/".join(i.rel) for i in scan(root, wildcard=pattern, recursive=recursive).items)
    assert got == expected, pattern


# -- add_files return value (dataset.py:2300-2360) ------------------------------------------


def test_add_files_counts_as_clearml(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1", "b": b"2"})
    ds = Dataset.create(dataset_name="c", dataset_project="p")
    assert ds.add_files(src) == 2  # new paths
    assert ds.add_files(src) == 2  # "Re-Added": unchanged, added by this draft, not uploaded
    ds.upload()
    assert ds.add_files(src) == 0  # uploaded since: "Skipping"
    (src / "a").write_bytes(b"changed")
    (src / "c").write_bytes(b"new")
    assert ds.add_files(src) == 1  # the modified file is not counted, the new one is
    ds.finalize()
    child = Dataset.create(dataset_name="c", dataset_project="p", parent_datasets=[ds.id])
    assert child.add_files(src) == 0  # the parent's files: "Unchanged"


# -- symlinks pointing outside the added folder --------------------------------------------


def test_symlinks_into_a_raw_data_store_add_their_targets(tmp_path: Path) -> None:
    # dataset.py:2245-2247: rglob + is_file() follow a link to a file wherever it points
    raw = write_tree(tmp_path / "raw", {"img1.png": b"one", "img2.png": b"two"})
    view = tmp_path / "view"
    view.mkdir()
    for n in ("img1.png", "img2.png"):
        os.symlink(raw / n, view / n)
    os.symlink("loop-b", view / "loop-a")  # a loop is still skipped, not followed forever
    os.symlink("loop-a", view / "loop-b")
    ds = Dataset.create(dataset_name="links", dataset_project="p")
    assert ds.add_files(view) == 2
    ds.finalize()
    assert read_tree(ds.get_local_copy()) == {"img1.png": b"one", "img2.png": b"two"}


# -- versions --------------------------------------------------------------------------------


def test_explicit_version_may_repeat(tmp_path: Path) -> None:
    # create() takes dataset_version as given; ClearML has no uniqueness check
    a = Dataset.create(dataset_name="v", dataset_project="p", dataset_version="1.0")
    b = Dataset.create(dataset_name="v", dataset_project="p", dataset_version="1.0")
    assert a.id != b.id and a.version == b.version == "1.0"


@pytest.mark.parametrize(
    "given_,bumped",
    [
        ("1.0.0", "1.0.1"),
        ("1.2", "1.3"),
        ("1.0.0rc1", "1.0.0rc2"),
        ("v2.0.0", "2.0.1"),
        ("1.0.0.post1", "1.0.0.post2"),
        ("1.0.dev3", "1.0.dev4"),
        ("1!1.0", "1!1.1"),
        ("1.0+local.7", "1.1+local.7"),
    ],
)
def test_pep440_versions_bump_as_clearml(given_: str, bumped: str) -> None:
    # clearml/utilities/version.py Version.get_next_version: dev, else post, else pre,
    # else the last release number, then str() in PEP 440 normal form
    assert bump(given_) == bumped


def test_version_strings_are_stripped_and_bumped_from_the_highest(tmp_path: Path) -> None:
    Dataset.create(dataset_name="s", dataset_project="p", dataset_version="  1.0.0rc1 ")
    assert Dataset.get(dataset_project="p", dataset_name="s").version == "1.0.0rc1"
    Dataset.create(dataset_name="s", dataset_project="p", dataset_version="1.0.0")
    # 1.0.0 > 1.0.0rc1 (PEP 440), so the next one bumps 1.0.0
    assert Dataset.create(dataset_name="s", dataset_project="p").version == "1.0.1"


# -- small members and state ---------------------------------------------------------------


def test_fresh_draft_is_not_dirty(tmp_path: Path) -> None:
    # dataset.py:320 `self._dirty = False`; set True by add/remove/sync calls
    parent = final(tmp_path, {"a": b"1"})
    for ds in (
        Dataset.create(dataset_name="n", dataset_project="p"),
        Dataset.create(dataset_name="n", dataset_project="p", parent_datasets=[parent.id]),
    ):
        assert not ds.is_dirty()
        ds.add_files(write_tree(tmp_path / f"x{ds.id}", {"new": b"n"}))
        assert ds.is_dirty()
        ds.upload()
        assert not ds.is_dirty()


def test_tags_none_clears_tags(tmp_path: Path) -> None:
    # dataset.py:402: `self._task.set_tags(values or [])`
    ds = Dataset.create(dataset_name="t", dataset_project="p", dataset_tags=["a"])
    ds.tags = None
    assert ds.tags == []


def test_remote_error_is_a_value_error() -> None:
    # ClearML documents upload failures as ValueError
    assert issubclass(errors.RemoteError, ValueError)
    with pytest.raises(ValueError):
        raise errors.RemoteError("x")


def test_file_entry_as_dict_and_artifact_name(tmp_path: Path) -> None:
    # dataset.py:82-101: attrs FileEntry with artifact_name; as_dict adds local_path if set
    ds = final(tmp_path, {"a/b.bin": b"xyz"})
    fe = ds.file_entries_dict["a/b.bin"]
    assert isinstance(fe, FileEntry) and fe.artifact_name is None
    assert fe.as_dict() == {
        "relative_path": "a/b.bin",
        "hash": fe.hash,
        "parent_dataset_id": ds.id,
        "size": 3,
        "artifact_name": None,
    }
    assert FileEntry("x", "h", 1, local_path="/tmp/x").as_dict()["local_path"] == "/tmp/x"
    assert ds.link_entries == [] and ds.link_entries_dict == {}


def test_get_default_storage(tmp_path: Path) -> None:
    # dataset.py:1376: the task's output_uri, else the default upload destination
    remote = f"file://{tmp_path / 'remote'}"
    ds = Dataset.create(dataset_name="s", dataset_project="p", output_uri=remote)
    assert ds.get_default_storage() == remote
    local = Dataset.create(dataset_name="l", dataset_project="p")
    assert local.get_default_storage() is None


def test_offline_mode_calls_are_harmless(tmp_path: Path) -> None:
    # dataset.py:3090/3099 delegate to Task; dsvc is always serverless
    Dataset.set_offline(offline_mode=True)
    Dataset.set_offline(offline_mode=False)
    assert Dataset.is_offline() is True
    ds = final(tmp_path, {"a": b"1"})
    assert Dataset.get(dataset_id=ds.id).id == ds.id  # still works


def test_set_metadata_numpy_round_trip(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    ds = Dataset.create(dataset_name="m", dataset_project="p")
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    ds.set_metadata(arr, metadata_name="weights")
    back = Dataset.get(dataset_id=ds.id).get_metadata("weights")
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    assert (back == arr).all() and back.shape == (3, 4)
    with pytest.raises(ValueError, match="data_"):  # dataset.py:1006
        ds.set_metadata({"a": 1}, metadata_name="data_x")


def test_squash_can_leave_the_result_a_draft(tmp_path: Path) -> None:
    # dataset.py:2110: upload and finalize only when close_squashed_dataset
    a = final(tmp_path, {"x": b"1"})
    b = final(tmp_path, {"y": b"2"}, name="other")
    sq = Dataset.squash("sq", dataset_ids=[a.id, b.id], close_squashed_dataset=False)
    assert not sq.is_final()
    assert sq.list_files() == ["x", "y"]
    sq.add_files(write_tree(tmp_path / "more", {"z": b"3"}))
    sq.finalize()
    assert read_tree(sq.get_local_copy()) == {"x": b"1", "y": b"2", "z": b"3"}
    assert Dataset.squash("sq2", dataset_ids=[a.id]).is_final()


def test_project_or_tags_only_get_picks_highest_version(tmp_path: Path) -> None:
    # Dataset._get_dataset_id (dataset.py:4050-4078), used by every get without an id:
    # the highest valid version wins; among equal versions the most recently updated
    hi = final(tmp_path, {}, name="a", dataset_version="3.0", dataset_tags=["t"])
    final(tmp_path, {}, name="b", dataset_version="2.0", dataset_tags=["t"])
    assert Dataset.get(dataset_project="p").id == hi.id
    assert Dataset.get(dataset_tags=["t"]).id == hi.id


def test_remove_tree_then_readd_counts(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"f": b"1"})
    ds = Dataset.create(dataset_name="r", dataset_project="p")
    ds.add_files(src)
    shutil.rmtree(src)
    write_tree(src, {"f": b"1", "g": b"2"})
    assert ds.add_files(src) == 2


# -- get by id, raise_on_error ----------------------------------------------------------------


def test_get_by_id_ignores_the_other_filters(tmp_path: Path) -> None:
    # Dataset.get: with dataset_id, get_instance(dataset_id) is returned as is; the
    # status/version/tags filters only shape the _get_dataset_id query (dataset.py:1955-1975)
    ds = final(tmp_path, {"a": b"1"}, dataset_tags=["t"])
    draft = Dataset.create(dataset_name="d", dataset_project="p")
    for kw in (
        {"only_published": True},
        {"dataset_version": "9.9.9"},
        {"dataset_tags": ["other"]},
    ):
        assert Dataset.get(dataset_id=ds.id, **kw).id == ds.id
    assert Dataset.get(dataset_id=draft.id, only_completed=True).id == draft.id
    # mutually_exclusive(dataset_id=..., dataset_project=...) raises ValueError
    with pytest.raises(ValueError, match="not both"):
        Dataset.get(dataset_id=ds.id, dataset_project="p")


def test_raise_on_error_false_covers_what_clearml_covers(tmp_path: Path) -> None:
    remote = f"file://{tmp_path / 'remote'}"
    ds = Dataset.create(dataset_name="r", dataset_project="p", output_uri=remote)
    ds.add_files(write_tree(tmp_path / "src", {"a": b"1"}))
    # pending uploads: False instead of an error (dataset.py:960-967)
    assert ds.finalize(raise_on_error=False) is False
    with pytest.raises(errors.PendingUploadError):
        ds.finalize()
    # a draft cannot be published or copied, whatever raise_on_error says
    # (dataset.py:1054 and :1116 raise ValueError unconditionally)
    with pytest.raises(ValueError, match="finalized"):
        ds.publish(raise_on_error=False)
    with pytest.raises(ValueError, match="not finalized"):
        ds.get_local_copy(raise_on_error=False)
    assert ds.finalize(auto_upload=True) is True
    # finalizing twice is an error even with raise_on_error=False (dataset.py:970-971)
    with pytest.raises(ValueError, match="already finalized"):
        ds.finalize(raise_on_error=False)


# -- clearml-data flags (clearml/cli/data/__main__.py) --------------------------------------


def _cli(home: Path, *args: str) -> str:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env["DSVC_HOME"] = str(home)
    p = subprocess.run(
        [sys.executable, "-m", "dsvc", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout + p.stderr


def test_clearml_data_flags_are_accepted(tmp_path: Path, home: Path) -> None:
    import re

    remote = tmp_path / "remote"
    src = write_tree(tmp_path / "src", {"a.txt": b"1"})
    # create --output-uri (__main__.py:85), add, close
    out = _cli(home, "create", "--project", "p", "--name", "n", "--output-uri", str(remote))
    did = re.search(r"id=([0-9a-f]{32})", out).group(1)
    _cli(home, "add", "--id", did, "--files", str(src))
    _cli(home, "close", "--id", did)
    assert Dataset.get(dataset_id=did).get_default_storage() == str(remote)
    # sync --output-uri (:209)
    out = _cli(
        home, "sync", "--folder", str(src), "--project", "p", "--name", "s",
        "--output-uri", str(remote),
    )  # fmt: skip
    # get --verbose (:550) prints clearml-data's line (:672) without --copy
    out = _cli(home, "get", "--id", did, "--verbose")
    assert "Dataset local copy available for files at: " in out
    path = out.split("Dataset local copy available for files at: ")[1].splitlines()[0]
    assert read_tree(path) == {"a.txt": b"1"}
    assert _cli(home, "-q", "get", "--id", did).strip() == path
    # squash --verbose (:438)
    out = _cli(home, "squash", "--name", "sq", "--ids", did, "--verbose")
    assert "Squashed dataset created" in out and did[:8] in out


# -- add_external_files (dataset.py:479-571, :3835-3950) -----------------------------------


def _serve_http(root: Path):
    """A plain http.server on loopback serving ``root`` (no ETag, Last-Modified only)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_external_local_files_are_linked_not_stored(tmp_path: Path, home: Path) -> None:
    # dataset.py:3866-3873 lists a folder (or takes one file) and :3882-3889 names each
    # link by its path below the source, under dataset_path; :3886 filters by wildcard.
    # list_files lists links with files (:1216), file_entries keep them apart (:354, :371).
    raw = write_tree(tmp_path / "raw", {"a.jpg": b"A" * 10, "sub/b.jpg": b"B" * 2000, "c.txt": b"c"})
    ds = Dataset.create(dataset_name="ext", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "own", {"own.txt": b"mine"}))
    assert ds.add_external_files(f"file://{raw}", wildcard="*.jpg", dataset_path="imgs") == 2
    assert ds.add_external_files(str(raw / "c.txt"), dataset_path="/one/") == 1
    assert ds.add_external_files(str(raw / "c.txt"), dataset_path="one") == 0  # a re-add
    assert ds.add_external_files(str(tmp_path / "nothing-here")) == 0  # as ClearML: 0, a warning
    assert ds.list_files() == ["imgs/a.jpg", "imgs/sub/b.jpg", "one/c.txt", "own.txt"]
    assert sorted(ds.file_entries_dict) == ["own.txt"]
    links = ds.link_entries_dict
    assert {p: (e.link, e.size) for p, e in links.items()} == {
        "imgs/a.jpg": ((raw / "a.jpg").as_uri(), 10),
        "imgs/sub/b.jpg": ((raw / "sub/b.jpg").as_uri(), 2000),
        "one/c.txt": ((raw / "c.txt").as_uri(), 1),
    }
    assert links["one/c.txt"].as_dict() == {
        "link": (raw / "c.txt").as_uri(),
        "relative_path": "one/c.txt",
        "parent_dataset_id": ds.id,
        "size": 1,
        "hash": None,
    }
    # the content is not in the store: only a small link chunk per file
    from dsvc import registry
    from dsvc.ids import object_id

    store = registry.open_store()
    # docs/format.md §6: links need format 2 (packed chunks, here too, raise it to 3)
    assert store.get_config("format_version") >= 2
    content = object_id(b"C", b"A" * 10)
    assert store.missing("chunks", [content]) == [content]
    assert ds.get_num_chunks() == 1  # own.txt only
    mutable = ds.get_mutable_local_copy(tmp_path / "mut")
    assert read_tree(mutable) == {
        "imgs/a.jpg": b"A" * 10,
        "imgs/sub/b.jpg": b"B" * 2000,
        "one/c.txt": b"c",
        "own.txt": b"mine",
    }
    ds.finalize()
    assert read_tree(ds.get_local_copy()) == read_tree(mutable)
    assert ds.read_bytes("imgs/sub/b.jpg") == b"B" * 2000  # streaming reads serve links
    assert ds.verify_dataset_hash() == []


def test_external_file_changed_at_its_source_is_an_error_naming_it(tmp_path: Path) -> None:
    # The link records size and mtime (local) or ETag (object stores); a copy of a source
    # that changed must not hand out other bytes than the version recorded.
    raw = write_tree(tmp_path / "raw", {"x.bin": b"1" * 100, "y.bin": b"2" * 100})
    ds = Dataset.create(dataset_name="ext", dataset_project="p")
    ds.add_external_files(raw.as_uri())
    ds.finalize()
    (raw / "y.bin").write_bytes(b"3" * 101)
    with pytest.raises(errors.IntegrityError, match=r"external file y\.bin .*changed at its source"):
        ds.get_local_copy()
    (raw / "y.bin").write_bytes(b"2" * 100)
    os.utime(raw / "y.bin", ns=(1, 1))  # same size, other mtime: still a change
    with pytest.raises(errors.IntegrityError, match=r"y\.bin"):
        ds.get_mutable_local_copy(tmp_path / "m")
    (raw / "y.bin").unlink()
    with pytest.raises(errors.NotFoundError, match=r"y\.bin"):
        ds.get_local_copy()


def test_external_links_diff_remove_and_squash_like_files(tmp_path: Path) -> None:
    # remove_files matches dataset paths and, for links, the link itself (dataset.py:606-611);
    # squash merges link entries like file entries (:2110).
    raw = write_tree(tmp_path / "raw", {"a.csv": b"a", "b.csv": b"bb", "c.csv": b"ccc"})
    v1 = Dataset.create(dataset_name="ext", dataset_project="p")
    v1.add_external_files(raw.as_uri(), wildcard="a.csv")
    v1.finalize()
    v2 = Dataset.create(dataset_name="ext", dataset_project="p", parent_datasets=[v1.id])
    v2.add_external_files(raw.as_uri(), wildcard=["b.csv", "c.csv"])
    assert v2.list_added_files() == ["b.csv", "c.csv"]
    assert v2.remove_files((raw / "c.csv").as_uri()) == 1
    assert v2.remove_files("a.csv") == 1
    assert v2.list_removed_files() == ["a.csv"]
    assert v2.link_entries_dict["b.csv"].parent_dataset_id == v2.id
    v2.finalize()
    other = Dataset.create(dataset_name="other", dataset_project="p")
    other.add_external_files(raw.as_uri(), wildcard="c.csv", dataset_path="z")
    other.finalize()
    sq = Dataset.squash("sq", dataset_ids=[v1.id, v2.id, other.id])
    assert sq.list_files() == ["a.csv", "b.csv", "z/c.csv"]
    assert read_tree(sq.get_local_copy()) == {"a.csv": b"a", "b.csv": b"bb", "z/c.csv": b"ccc"}


def test_external_http_files(tmp_path: Path) -> None:
    # http(s) links are single files (dataset.py:3870 lists only non-http URLs).
    served = write_tree(tmp_path / "www", {"data/file.txt": b"over http\n"})
    srv = _serve_http(served)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/data/file.txt"
        ds = Dataset.create(dataset_name="web", dataset_project="p")
        assert ds.add_external_files(url, dataset_path="web") == 1
        assert ds.link_entries_dict["web/file.txt"].link == url
        ds.finalize()
        f = served / "data/file.txt"
        st = f.stat()
        f.write_bytes(b"changed!!!!\n")
        with pytest.raises(errors.IntegrityError, match=r"web/file\.txt .*changed at its source"):
            ds.get_local_copy()
        f.write_bytes(b"over http\n")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # Last-Modified as recorded
        assert read_tree(ds.get_local_copy()) == {"web/file.txt": b"over http\n"}
        f.write_bytes(b"later edit\n")  # once copied, the version keeps what it recorded
        assert ds.read_bytes("web/file.txt") == b"over http\n"
    finally:
        srv.shutdown()


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_external_s3_files_travel_with_push_and_are_checked_by_etag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, kind: str
) -> None:
    # S3 (and GCS) sources are listed with their size and ETag; the link travels with
    # push/fetch (the content stays in its bucket) and a copy on another machine
    # downloads and checks it. Options (endpoint, keys) come from a remote on the bucket.
    import uuid

    from remote_helpers import backend, machine

    srv = request.getfixturevalue(f"{kind}_server")
    scheme = {"s3": "s3", "gcs": "gs"}[kind]
    uid = uuid.uuid4().hex[:8]
    spec = {"url": f"{scheme}://{srv['bucket']}/repo-{uid}", "options": srv["options"]}
    raw = backend({"url": f"{scheme}://{srv['bucket']}/raw-{uid}", "options": srv["options"]})
    raw.put("img/1.jpg", b"one" * 100)
    raw.put("img/deep/2.jpg", b"two" * 50)
    raw.put("img/notes.txt", b"n")
    machine(monkeypatch, tmp_path / "m1", spec)
    ds = Dataset.create(dataset_name="s3ext", dataset_project="p")
    src = f"{scheme}://{srv['bucket']}/raw-{uid}/img"
    assert ds.add_external_files(src, wildcard="*.jpg", dataset_path="imgs") == 2
    assert ds.add_external_files(f"{src}/notes.txt") == 1
    ds.upload()
    ds.finalize()
    assert not backend(spec).head(f"raw-{uid}/img/1.jpg")  # nothing copied into the repo
    machine(monkeypatch, tmp_path / "m2", spec)
    got = Dataset.get(dataset_id=ds.id)
    assert got.link_entries_dict["imgs/deep/2.jpg"].link == f"{src}/deep/2.jpg"
    assert read_tree(got.get_local_copy()) == {
        "imgs/1.jpg": b"one" * 100,
        "imgs/deep/2.jpg": b"two" * 50,
        "notes.txt": b"n",
    }
    raw.put("img/1.jpg", b"ONE" * 100)  # same size, new ETag
    machine(monkeypatch, tmp_path / "m3", spec)
    with pytest.raises(errors.IntegrityError, match=r"imgs/1\.jpg .*ETag"):
        Dataset.get(dataset_id=ds.id).get_mutable_local_copy(tmp_path / "copy")


def test_cli_add_links(tmp_path: Path, home: Path) -> None:
    # clearml-data add --links (clearml/cli/data/__main__.py:123, ds_add :925 calls
    # add_external_files with the same --wildcard/--dataset-folder/--non-recursive)
    import re

    raw = write_tree(tmp_path / "raw", {"x.jpg": b"x", "y.txt": b"y", "own/z.jpg": b"z"})
    out = _cli(home, "create", "--project", "p", "--name", "links")
    did = re.search(r"id=([0-9a-f]{32})", out).group(1)
    out = _cli(
        home, "add", "--id", did, "--links", raw.as_uri(), "--wildcard", "*.jpg",
        "--dataset-folder", "ext",
    )  # fmt: skip
    assert "2 files added" in out
    ds = Dataset.get(dataset_id=did)
    assert sorted(ds.link_entries_dict) == ["ext/own/z.jpg", "ext/x.jpg"]
    _cli(home, "close", "--id", did)
    assert read_tree(Dataset.get(dataset_id=did).get_local_copy()) == {
        "ext/x.jpg": b"x",
        "ext/own/z.jpg": b"z",
    }


@pytest.mark.parametrize("where", ["output_url", "default remote"])
def test_upload_as_external_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fs3_spec: dict, where: str
) -> None:
    # dataset.py:761-800: the draft's files go as plain objects to
    # <output_url>/external_links/<id>/<path> and become links; no output url: ValueError
    from remote_helpers import machine, remote_objects

    machine(monkeypatch, tmp_path / "m1", fs3_spec if where == "default remote" else None)
    parent = Dataset.create(dataset_name="ds", dataset_project="p")
    parent.add_files(write_tree(tmp_path / "old", {"old.txt": b"old"}))
    parent.finalize(auto_upload=True)
    ds = Dataset.create(dataset_name="ds", dataset_project="p", parent_datasets=[parent.id])
    ds.add_files(write_tree(tmp_path / "new", {"a.txt": b"a", "d/b.bin": b"b" * 5000}))
    if where == "output_url":
        if fs3_spec["kind"] != "file":
            pytest.skip("the S3 destination is covered through the default remote")
        with pytest.raises(ValueError, match="output_url must be set"):
            ds.upload(upload_as_external_links=True)
        ds.upload(output_url=fs3_spec["url"], upload_as_external_links=True)
    else:
        ds.upload(upload_as_external_links=True)
    objs = remote_objects(fs3_spec, "external_links/")
    assert objs == {f"external_links/{ds.id}/a.txt": 1, f"external_links/{ds.id}/d/b.bin": 5000}
    assert sorted(ds.link_entries_dict) == ["a.txt", "d/b.bin"]
    assert ds.link_entries_dict["d/b.bin"].link.endswith(f"external_links/{ds.id}/d/b.bin")
    assert sorted(ds.file_entries_dict) == ["old.txt"]  # inherited files stay files
    ds.finalize()
    want = {"old.txt": b"old", "a.txt": b"a", "d/b.bin": b"b" * 5000}
    assert read_tree(ds.get_local_copy()) == want
    if where == "default remote":  # another machine: links come with the version
        machine(monkeypatch, tmp_path / "m2", fs3_spec)
        assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == want


# -- get_logger (dataset.py get_logger returns the task's Logger; the urbansounds examples
# -- call report_table/report_histogram/report_image/report_media on it) ----------------


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of a PNG written by dsvc.reports.png_bytes."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(tag + body)
        if tag == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    return w, h, zlib.decompress(idat)


def test_logger_reports_travel_with_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fs3_spec: dict
) -> None:
    # urbansounds_get_data.py:39-47 and urbansounds_dataset_preprocessing.py:79-91, 125-130
    # report a DataFrame, a value_counts histogram, images and audio on dataset.get_logger()
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    from remote_helpers import machine

    from dsvc.reports import render_html

    machine(monkeypatch, tmp_path / "m1", fs3_spec)
    ds = Dataset.create(dataset_name="sounds", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "src", {"a.wav": b"RIFF" + b"\0" * 40}))
    log = ds.get_logger()
    meta = pd.DataFrame({"class": ["dog", "cat", "dog"], "fold": [1, 2, 3]})
    log.report_table(title="Raw Dataset Metadata", series="Raw Dataset Metadata", table_plot=meta)
    counts = meta["class"].value_counts()
    log.report_histogram(
        title="Class distribution", series="Class distribution", values=counts,
        iteration=0, xlabels=counts.index.tolist(), yaxis="Amount of samples",
    )  # fmt: skip
    for i in range(3):
        log.report_scalar("loss", "train", 1.0 / (i + 1), i)
    log.report_text("preprocessing done", print_console=False)
    img = np.zeros((2, 3, 3))
    img[0, 0] = [1.0, 0.0, 0.0]  # floats in 0..1, as matplotlib colormaps give them
    log.report_image(title="a", series="spectrogram", image=img)
    log.report_media(title="a", series="original_audio", local_path=tmp_path / "src" / "a.wav")
    ds.finalize(auto_upload=True)
    with pytest.raises(errors.StateError, match="finalized"):
        ds.get_logger().report_scalar("late", "x", 1, 0)

    machine(monkeypatch, tmp_path / "m2", fs3_spec)  # another machine: from the remote
    got = Dataset.get(dataset_id=ds.id)
    ev = got.get_reports()
    assert [e["kind"] for e in ev] == [
        "table", "histogram", "scalar", "scalar", "scalar", "text", "image", "media",
    ]  # fmt: skip
    assert ev[0]["columns"] == ["class", "fold"] and ev[0]["rows"][2] == ["dog", 3]
    assert ev[1]["values"] == [2, 1] and ev[1]["xlabels"] == ["dog", "cat"]
    assert [e["value"] for e in ev[2:5]] == [1.0, 0.5, 1.0 / 3]
    w, h, raw = _png_pixels(ev[6]["data"])
    assert (w, h) == (3, 2) and raw[:4] == b"\x00\xff\x00\x00"  # filter byte, then red
    assert ev[7]["data"] == b"RIFF" + b"\0" * 40 and ev[7]["mime"] == "audio/x-wav"
    page = render_html(got._refresh(), ev)
    assert "<td>dog</td>" in page and "preprocessing done" in page
    assert "data:image/png;base64," in page and "<audio controls" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


# -- the member table of docs/coming-from-clearml.md ---------------------------------------

CLEARML_MIRROR = Path(os.environ.get("CLEARML_REPO", "/work/.mirror/clearml+clearml/repo"))
CLEARML_COMMIT = "0cc42633ff5805ba809549028c90954678ef19e3"
MEMBERS_FILE = Path(__file__).with_name("clearml_dataset_members.txt")


def clearml_public_members(source: str) -> list[str]:
    """Public members of ClearML's ``class Dataset``: methods/properties not starting with
    ``_`` in file order, then public attributes assigned on ``self``."""
    import ast

    cls = next(
        n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Dataset"
    )
    names: list[str] = []
    for n in cls.body:
        if isinstance(n, ast.FunctionDef) and not n.name.startswith("_") and n.name not in names:
            names.append(n.name)
    for n in ast.walk(cls):
        for t in n.targets if isinstance(n, ast.Assign) else []:
            if (
                isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Name)
                and t.value.id == "self"
                and not t.attr.startswith("_")
                and t.attr not in names
            ):
                names.append(t.attr)
    return names


def _git_show(rev_path: str) -> str | None:
    import subprocess

    if not CLEARML_MIRROR.exists():
        return None
    r = subprocess.run(
        ["git", "-C", str(CLEARML_MIRROR), "show", rev_path], capture_output=True, text=True
    )
    return r.stdout if r.returncode == 0 else None


def test_the_member_table_lists_every_public_clearml_member() -> None:
    listed = [
        ln.strip()
        for ln in MEMBERS_FILE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    source = _git_show(f"{CLEARML_COMMIT}:clearml/datasets/dataset.py")
    if source is not None:  # the checked-in list is ClearML's, at the commit it names
        assert clearml_public_members(source) == listed
    doc = (Path(__file__).parent.parent / "docs" / "coming-from-clearml.md").read_text()
    section = doc.split("## Python: every public member of ClearML's `Dataset`")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert sorted(rows) == sorted(listed), "docs/coming-from-clearml.md: one row per member"
    assert set(rows.values()) <= {"same", "differs", "n/a"}
    from dsvc.dataset import Dataset

    for name in listed:  # every member exists on dsvc's Dataset (n/a ones answer harmlessly)
        assert hasattr(Dataset, name), name


def test_members_without_a_server_answer_harmlessly(tmp_path: Path) -> None:
    # dataset.py:2514 update_changed_files (task counters), :3107 get_offline_mode_folder,
    # :3116 import_offline_session (a server-side session import: refused, clearly)
    ds = Dataset.create(dataset_name="d", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "s", {"a": b"1", "b": b"2"}))
    assert ds.update_changed_files(num_files_added=5) is None
    assert ds.changed_files == {"files added": 2, "files removed": 0, "files modified": 0}
    assert ds.get_offline_mode_folder() is None
    with pytest.raises(ValueError, match="offline session"):
        Dataset.import_offline_session(str(tmp_path / "session.zip"))


# -- dsvc.compat: Task and StorageManager for ClearML's example scripts -----------------


def test_storage_manager_downloads_once_and_extracts(tmp_path: Path) -> None:
    # clearml/storage/manager.py get_local_copy: cached per URL (cache.py:109 names the
    # file), archives extracted next to it (extract_archive=True is the default)
    import zipfile

    from dsvc.compat import StorageManager

    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "data.zip", "w") as z:
        z.writestr("TRAIN/a.txt", b"a")
        z.writestr("TEST/b.txt", b"b")
    (www / "plain.csv").write_bytes(b"x,y\n1,2\n")
    srv = _serve_http(www)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        folder = Path(StorageManager.get_local_copy(f"{base}/data.zip", name="DATA"))
        csv_copy = StorageManager.get_local_copy(f"{base}/plain.csv")
    finally:
        srv.shutdown()
        srv.server_close()
    assert read_tree(folder) == {"TRAIN/a.txt": b"a", "TEST/b.txt": b"b"}
    assert Path(csv_copy).read_bytes() == b"x,y\n1,2\n"
    # the server is gone: the cached copies answer
    assert StorageManager.get_local_copy(f"{base}/data.zip", name="DATA") == str(folder)
    assert StorageManager.get_local_copy(f"{base}/plain.csv") == csv_copy
    assert StorageManager.get_local_copy(str(www / "plain.csv")) == str(www / "plain.csv")


@pytest.mark.servers
def test_storage_manager_upload_and_get_on_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: dict
) -> None:
    import uuid

    from remote_helpers import machine

    from dsvc.compat import StorageManager

    uid = uuid.uuid4().hex[:8]
    spec = {"url": f"s3://{s3_server['bucket']}/repo-{uid}", "options": s3_server["options"]}
    machine(monkeypatch, tmp_path / "m1", spec)  # the bucket's options come from this remote
    src = tmp_path / "w.bin"
    src.write_bytes(b"w" * 3000)
    url = f"s3://{s3_server['bucket']}/up-{uid}/w.bin"
    assert StorageManager.upload_file(str(src), url) == url
    assert StorageManager.exists_file(url)
    assert StorageManager.list(f"s3://{s3_server['bucket']}/up-{uid}/") == ["w.bin"]
    assert Path(StorageManager.get_local_copy(url)).read_bytes() == b"w" * 3000


def test_compat_task_keeps_parameters_and_artifacts(tmp_path: Path) -> None:
    # urbansounds_get_data.py:21 task.connect(configuration), :84 dataset._task.upload_artifact;
    # urbansounds_dataset_preprocessing.py:65 Task.get_task(task_id=ds._task.id).artifacts
    pd = pytest.importorskip("pandas")
    from dsvc.compat import Task

    Task._current = None
    task = Task.init(project_name="p", task_name="t")
    conf = {"classes": ["a", "b"]}
    assert task.connect(conf) is conf
    task.connect({"rate": 3})
    task.upload_artifact("table", artifact_object=pd.DataFrame({"x": [1, 2]}))
    again = Task.get_task(task_id=task.id)
    assert again.get_parameters() == {"General/classes": ["a", "b"], "General/rate": 3}
    assert again.artifacts["table"].get()["x"].tolist() == [1, 2]
    ds = Dataset.create(dataset_name="d", dataset_project="p")
    ds._task.upload_artifact(name="metadata", artifact_object=pd.DataFrame({"f": ["a.wav"]}))
    ds.finalize()
    got = Task.get_task(task_id=Dataset.get(dataset_id=ds.id)._task.id)
    assert got.artifacts["metadata"].get()["f"].tolist() == ["a.wav"]
    task.close()


def test_show_reports_writes_one_html_page_from_a_pushed_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reports come with the version on another machine (clone), and `dsvc show
    # --reports ID` writes them as a self-contained page
    from remote_helpers import machine

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    machine(monkeypatch, tmp_path / "m1", spec)
    ds = Dataset.create(dataset_name="rep", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "src", {"a.csv": b"x\n1\n"}))
    log = ds.get_logger()
    log.report_table("Rows", "a.csv", table_plot=[["x", "y"], [1, "<b>"]])
    log.report_scalar("loss", "train", 0.25, 1)
    ds.finalize(auto_upload=True)
    m2 = tmp_path / "m2"
    _cli(m2, "remote", "add", "origin", spec["url"])
    _cli(m2, "fetch")
    page = tmp_path / "out" / "page.html"
    page.parent.mkdir()
    out = _cli(m2, "show", "--reports", ds.id, "-o", str(page))
    assert "3 reports" in out and str(page) in out  # the two above, and upload's preview
    html = page.read_text()
    assert "<td>&lt;b&gt;</td>" in html and "loss" in html and "<polyline" in html
    bare = _cli(m2, "show", ds.id)  # without --reports: the usual summary
    assert f"dataset {ds.id}" in bare and "written to" not in bare


def test_upload_preview_reports_tables_and_images(tmp_path: Path) -> None:
    # dataset.py:742-743 upload(preview=True) calls _report_dataset_preview (:3524), which
    # reports the first rows of tabular files and small images
    from dsvc.reports import png_bytes

    png = png_bytes(b"\xff\x00\x00", 1, 1, 3)
    rows = "".join(f"{i},{i * i}\n" for i in range(30))
    files = {"t/a.csv": ("n,sq\n" + rows).encode(), "img.png": png, "other.bin": b"\0" * 9}
    ds = Dataset.create(dataset_name="pv", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "s", files))
    ds.upload(preview=False)
    assert ds.get_reports() == []
    ds.get_logger().report_text("mine", print_console=False)
    ds.upload()
    ds.upload()  # a second upload replaces the preview, keeps what the user reported
    ev = ds.get_reports()
    assert [(e["kind"], e["series"]) for e in ev] == [
        ("text", "INFO"), ("image", "img.png"), ("table", "t/a.csv"),
    ]  # fmt: skip
    assert ev[2]["columns"] == ["n", "sq"] and len(ev[2]["rows"]) == 10
    assert ev[2]["rows"][9] == ["9", "81"] and ev[1]["data"] == png
