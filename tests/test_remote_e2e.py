"""End to end through the Dataset API on every kind of remote: push from one store, find,
fetch and materialize from a second, empty one; only the diff is sent; only what is
needed is fetched; squash uploads only trees and a commit.

Every test plays at least two machines: distinct ``DSVC_HOME`` folders in one process
(see remote_helpers.machine); the concurrency tests use real subprocesses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from remote_helpers import (
    add_origin,
    count_traffic,
    machine,
    mixed_files,
    rand_bytes,
    read_tree,
    remote_objects,
    remote_of,
    write_tree,
)

from dsvc.dataset import Dataset
from dsvc.errors import StateError
from dsvc.remote.config import add_remote
from dsvc.remote.packs import KIND_CHUNK

FILE_AND_S3 = [
    "file",
    pytest.param("s3", marks=pytest.mark.servers),
]


@pytest.fixture(params=FILE_AND_S3)
def fs3_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """file:// and S3 only (for tests whose logic does not depend on the backend)."""
    from conftest import _remote_spec

    return _remote_spec(request.param, request, tmp_path)


def publish(folder: Path, *, name: str = "data", project: str = "proj", **kw: Any) -> Dataset:
    ds = Dataset.create(dataset_name=name, dataset_project=project, **kw)
    ds.add_files(str(folder))
    ds.upload(show_progress=False)
    ds.finalize()
    return ds


def chunk_entries_sent(spec: dict[str, Any], keys: list[str]) -> int:
    """How many chunks the packs named by ``keys`` hold (read from their indexes)."""
    from remote_helpers import backend

    b = backend(spec)
    n = 0
    for k in keys:
        idx = msgpack.unpackb(b.get(k[: -len(".pack")] + ".idx"), raw=False)
        n += sum(1 for e in idx["entries"] if e[1] == KIND_CHUNK)
    return n


# ---------------------------------------------------------------------- round trip


def test_push_then_get_from_an_empty_store(
    remote_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = mixed_files(seed=1)
    src = write_tree(tmp_path / "src", files)
    machine(monkeypatch, tmp_path / "home-a", remote_spec)
    v1 = publish(src)
    (src / "added.txt").write_bytes(b"second version\n")
    v2 = Dataset.create(dataset_name="data", dataset_project="proj", parent_datasets=[v1.id])
    v2.add_files(str(src))
    v2.upload(show_progress=False)
    v2.finalize()
    keys = remote_objects(remote_spec)
    assert f"datasets/{v1.id}" in keys and f"datasets/{v2.id}" in keys
    assert "refs/names/proj/data" in keys and "dsvc.json" in keys
    assert all(k.endswith((".pack", ".idx")) for k in keys if k.startswith("packs/"))

    # a second machine: empty store, only the remote configured
    store_b = machine(monkeypatch, tmp_path / "home-b", remote_spec)
    assert store_b.stats()["chunks"] == 0
    listed = {d["id"]: d for d in Dataset.list_datasets(dataset_project="proj")}
    assert set(listed) == {v1.id, v2.id}
    found = Dataset.get(dataset_project="proj", dataset_name="data")
    assert found.id == v2.id and found.version == v2.version and found.is_final()
    assert store_b.stats()["chunks"] == 0  # get fetched metadata only

    want = {**files, "added.txt": b"second version\n"}
    assert read_tree(found.get_local_copy()) == want
    assert read_tree(found.get_mutable_local_copy(tmp_path / "mutable")) == want
    old = Dataset.get(dataset_id=v1.id)
    assert read_tree(old.get_local_copy()) == files
    assert sorted(old.list_files()) == sorted(files)


def test_list_datasets_merges_local_and_remote(
    remote_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    machine(monkeypatch, tmp_path / "home-a", remote_spec)
    pushed = publish(src, name="shared")

    # machine B first works offline, then adds the remote
    store_b = machine(monkeypatch, tmp_path / "home-b", None)
    local = publish(src, name="local-only")
    add_origin(store_b, remote_spec, monkeypatch)
    names = {d["id"]: d["name"] for d in Dataset.list_datasets(dataset_project="proj")}
    assert names == {pushed.id: "shared", local.id: "local-only"}
    assert Dataset.get(dataset_project="proj", dataset_name="shared").id == pushed.id


def test_without_a_remote_the_local_store_is_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": b"a" * 1000})
    machine(monkeypatch, tmp_path / "home", None)
    ds = publish(src)
    assert ds.is_final()
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == {"a.txt": b"a" * 1000}


def test_dsvc_remote_overrides_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default_url = f"file://{tmp_path / 'default'}"
    other_url = f"file://{tmp_path / 'other'}"
    store = machine(monkeypatch, tmp_path / "home", None)
    add_remote(store, "default", default_url)
    add_remote(store, "other", other_url)
    src = write_tree(tmp_path / "src", {"a.txt": b"hello"})
    monkeypatch.setenv("DSVC_REMOTE", "other")
    ds = publish(src)
    assert f"datasets/{ds.id}" in remote_objects({"url": other_url, "options": {}})
    assert not (tmp_path / "default" / "datasets").exists()
    monkeypatch.setenv("DSVC_REMOTE", default_url)  # a URL works as well as a name
    ds2 = publish(src, name="second")
    assert f"datasets/{ds2.id}" in remote_objects({"url": default_url, "options": {}})


# ---------------------------------------------------------------------- diff-only upload


def test_upload_sends_only_what_the_remote_lacks(
    remote_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"d{i % 4}/f{i:03d}.bin": rand_bytes(32 * 1024, i) for i in range(100)}
    total = sum(map(len, files.values()))
    src = write_tree(tmp_path / "src", files)
    store = machine(monkeypatch, tmp_path / "home", remote_spec)
    b = remote_of(store).backend

    v1 = Dataset.create(dataset_name="data", dataset_project="proj")
    v1.add_files(str(src))
    with count_traffic(b) as first:
        v1.upload(show_progress=False)
    assert total <= first.pack_bytes_sent < total * 1.05  # random data: stored as is
    with count_traffic(b) as again:
        v1.upload(show_progress=False)  # same content again: nothing is sent
    assert again.put == {}
    with count_traffic(b) as fin:
        v1.finalize()
    assert not fin.packs_sent[1:]  # at most the one-object pack of the commit
    assert all(k.startswith(("packs/", "datasets/", "refs/")) for k in fin.put)

    # 1% of the content changes: about 1% of the bytes are sent
    v2 = Dataset.create(dataset_name="data", dataset_project="proj", parent_datasets=[v1.id])
    (src / "d1/f001.bin").write_bytes(rand_bytes(32 * 1024, 1001))
    v2.sync_folder(str(src))
    with count_traffic(b) as diff:
        v2.upload(show_progress=False)
        v2.finalize()
    assert 32 * 1024 <= diff.pack_bytes_sent < total * 0.02
    assert chunk_entries_sent(remote_spec, diff.packs_sent) == 1

    # a renamed and a moved file: no content at all, only trees and a commit
    v3 = Dataset.create(dataset_name="data", dataset_project="proj", parent_datasets=[v2.id])
    (src / "d0/f000.bin").rename(src / "d0/renamed.bin")
    (src / "d2/f002.bin").rename(src / "d3/moved-here.bin")
    v3.sync_folder(str(src))
    assert set(v3.list_added_files()) == {"d0/renamed.bin", "d3/moved-here.bin"}
    with count_traffic(b) as moved:
        v3.upload(show_progress=False)
        v3.finalize()
    assert moved.packs_sent and chunk_entries_sent(remote_spec, moved.packs_sent) == 0
    assert moved.pack_bytes_sent < 16 * 1024

    # and the new version comes back complete on another machine
    machine(monkeypatch, tmp_path / "home-b", remote_spec)
    assert read_tree(Dataset.get(dataset_id=v3.id).get_local_copy()) == read_tree(src)


def test_push_stats_of_a_repeated_push(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tree(tmp_path / "src", mixed_files(seed=3))
    store = machine(monkeypatch, tmp_path / "home", fs3_spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(src))
    tree = ds._refresh().tree
    remote = remote_of(store)
    first = remote.push_tree(tree, show_progress=False, pack_size_mb=1)
    assert first.packs >= 3  # 1 MiB packs: several
    assert first.chunks > 0 and first.objects > 0
    assert first.bytes_sent == sum(remote_objects(fs3_spec, "packs/").values())
    second = remote.push_tree(tree, show_progress=False, pack_size_mb=1)
    assert (second.packs, second.bytes_sent, second.chunks, second.objects) == (0, 0, 0, 0)
    # a second store holding the same content sends nothing either (the index is remote)
    other = machine(monkeypatch, tmp_path / "home-2", fs3_spec)
    ds2 = Dataset.create(dataset_name="data", dataset_project="proj")
    ds2.add_files(str(src))
    third = remote_of(other).push_tree(ds2._refresh().tree, show_progress=False)
    assert third.bytes_sent == 0


# ---------------------------------------------------------------------- partial fetch


def test_get_local_copy_fetches_only_the_selected_files(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"part/f{i}.bin": rand_bytes(1_200_000, 100 + i) for i in range(8)}
    total = sum(map(len, files.values()))
    src = write_tree(tmp_path / "src", files)
    machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    ds = publish(src)

    store_b = machine(monkeypatch, tmp_path / "home-b", fs3_spec)
    got = Dataset.get(dataset_id=ds.id)
    b = remote_of(store_b).backend
    with count_traffic(b) as t:
        one = got.get_local_copy(files=["part/f3.bin"])
    assert read_tree(one) == {"part/f3.bin": files["part/f3.bin"]}
    packs_read = sum(n for k, n in t.got.items() if k.endswith(".pack"))
    assert len(files["part/f3.bin"]) <= packs_read < len(files["part/f3.bin"]) * 1.05
    chunks_one = store_b.stats()["chunks"]
    assert 1 <= chunks_one <= 6

    with count_traffic(b) as t:
        part = got.get_local_copy(part=1, num_parts=4)
    got_part = read_tree(part)
    assert got_part and len(got_part) < len(files)
    assert all(files[p] == v for p, v in got_part.items())
    assert t.received < total * 0.5

    with count_traffic(b) as t:  # the rest: only what is not local yet
        full = got.get_local_copy()
    assert read_tree(full) == files
    local = {"part/f3.bin", *got_part}
    rest = total - sum(len(files[p]) for p in local)
    assert rest <= t.received < rest * 1.01


# ---------------------------------------------------------------------- squash


def test_squash_to_a_remote_uploads_only_trees_and_a_commit(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_tree(tmp_path / "a", {"x.bin": rand_bytes(300_000, 1), "same.txt": b"a"})
    machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    v1 = publish(a)
    b = write_tree(tmp_path / "b", {"y.bin": rand_bytes(300_000, 2), "same.txt": b"b"})
    v2 = Dataset.create(dataset_name="data", dataset_project="proj", parent_datasets=[v1.id])
    v2.add_files(str(b))
    v2.upload(show_progress=False)
    v2.finalize()

    store_b = machine(monkeypatch, tmp_path / "home-b", fs3_spec)  # versions only remote
    with count_traffic(remote_of(store_b).backend) as t:
        sq = Dataset.squash("flat", dataset_ids=[v1.id, v2.id], output_url=fs3_spec["url"])
    assert sq.is_final()
    assert t.packs_sent and chunk_entries_sent(fs3_spec, t.packs_sent) == 0
    assert t.pack_bytes_sent < 4096
    assert store_b.stats()["chunks"] == 0  # squash copied no content, not even locally

    machine(monkeypatch, tmp_path / "home-c", fs3_spec)
    flat = Dataset.get(dataset_project="proj", dataset_name="flat")
    assert flat.id == sq.id
    want = {"x.bin": rand_bytes(300_000, 1), "y.bin": rand_bytes(300_000, 2), "same.txt": b"b"}
    assert read_tree(flat.get_local_copy()) == want


def test_finalize_refuses_unuploaded_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    machine(monkeypatch, tmp_path / "home", spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", {"a": b"1"})))
    with pytest.raises(StateError, match="not uploaded"):
        ds.finalize()
    assert "datasets" not in {k.split("/")[0] for k in remote_objects(spec)}
    assert ds.finalize(auto_upload=True)
    assert f"datasets/{ds.id}" in remote_objects(spec)


def test_push_of_a_version_chain_longer_than_the_recursion_limit(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review bug: ``_push_order`` walked parents recursively, so planning or pushing a
    version with more ancestors than Python's recursion limit (1,000 by default) died
    with RecursionError. The chain is built cheaply: one real version, then records that
    share its tree and commit, each the child of the one before."""
    import sys

    from dsvc import registry

    monkeypatch.setenv("DSVC_FSYNC", "0")  # thousands of record writes; rebuildable store
    src = write_tree(tmp_path / "src", {"a.txt": b"a" * 1000})
    store = machine(monkeypatch, tmp_path / "home", fs3_spec)
    root = registry.require(store, publish(src).id)
    limit = 1000  # Python's default (the test session raises it for deep folders)
    chain = [root]
    for i in range(limit + 200):
        rec = root.replace(
            id=f"{i + 1:032x}", version=f"2.{i}", parents=[chain[-1].id], remote=None
        )
        registry.insert(store, rec)
        chain.append(rec)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        plan = remote_of(store).plan_push([chain[-1].id])
    finally:
        sys.setrecursionlimit(old)
    # parents first; the root is already on the remote
    assert plan.datasets == [r.id for r in chain[1:]]
    assert plan.chunks == 0


def test_a_mistyped_output_url_fails_clearly_and_leaves_nothing(
    fs3_spec: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review bug: ``output_uri``/``output_url`` naming no configured remote was taken
    as a new remote without a word: ``create`` kept a draft bound to a bucket that does
    not exist (every later upload failed), and a mistyped folder became a new
    repository. A destination that is not a configured remote is now reached first: if
    it cannot be, the call fails naming it and the configured remotes, and writes
    nothing; if it can, the first upload starts a repository there (as ClearML's
    output_url does) and says so."""
    from dsvc import registry
    from dsvc.errors import RemoteError

    store = machine(monkeypatch, tmp_path / "home", fs3_spec)
    if fs3_spec["kind"] == "s3":  # the typo'd bucket's client: same server, no remote
        for k, v in fs3_spec["options"].items():
            monkeypatch.setenv(f"AWS_{k.upper()}", v)
        typo = fs3_spec["url"].replace("dsvc-test", "dsvc-tset")
        fresh = fs3_spec["url"] + "-new"
    else:
        typo = f"file://{tmp_path}/no-such-folder/remote"
        fresh = f"file://{tmp_path}/new-remote"
    remotes = store.get_config("remotes")

    with pytest.raises(RemoteError, match="not a configured remote") as e:
        Dataset.create(dataset_name="n", dataset_project="p", output_uri=typo)
    assert typo in str(e.value) and fs3_spec["url"] in str(e.value)  # names both
    assert list(store.iter_records("ds/")) == []  # no draft left bound to the typo

    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ds.add_files(write_tree(tmp_path / "src", {"a.txt": b"a"}))
    before = registry.require(store, ds.id)
    with pytest.raises(RemoteError, match="not a configured remote"):
        ds.upload(show_progress=False, output_url=typo)
    assert registry.require(store, ds.id) == before
    assert store.get_config("remotes") == remotes
    assert not (tmp_path / "no-such-folder").exists()

    capsys.readouterr()
    ds.upload(show_progress=False, output_url=fresh)  # reachable: ClearML's behaviour
    assert "new dsvc repository" in capsys.readouterr().err
    ds.finalize()
    assert registry.require(store, ds.id).remote == fresh
    assert store.get_config("remotes") == remotes  # an ad hoc URL is never configured
