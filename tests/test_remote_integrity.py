"""Remote integrity (issue 9, items 9, 11, 12, 14, 15): push never uploads damaged local
values, damage on a remote can be found and repaired, push does not trust a cache of a
remote that was emptied or replaced, gc never deletes a pack a pusher rescued, and
mutable metadata travels through the remote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from remote_helpers import (
    backend,
    machine,
    rand_bytes,
    read_tree,
    remote_objects,
    remote_of,
    write_tree,
)

from dsvc.dataset import Dataset
from dsvc.errors import IntegrityError
from dsvc.ids import to_hex
from dsvc.store import Store
from tests.helpers_core import flip_chunk


def flip_local(store: Store, db: str, oid: bytes, where: int | None = None) -> None:
    """Flip one byte of a stored value (what a bad disk sector does): a chunk's in its
    pack file, an object's in the local LMDB."""
    if db == "chunks":
        flip_chunk(store, oid, where)
        return
    with store.env.begin(write=True) as txn:
        value = bytearray(txn.get(oid, db=store._dbs[db]))
        i = len(value) // 2 if where is None else where
        value[i] ^= 0x40
        txn.put(oid, bytes(value), db=store._dbs[db])


def remote_entries(spec: dict[str, Any]) -> dict[bytes, str]:
    """Every object id an index on the remote lists -> its pack name."""
    b = backend(spec)
    out = {}
    for key in remote_objects(spec, "packs/"):
        if key.endswith(".idx"):
            for oid, *_ in msgpack.unpackb(b.get(key), raw=False)["entries"]:
                out[bytes(oid)] = key[len("packs/") : -len(".idx")]
    return out


# ---------------------------------------------------------------------- item 11


@pytest.mark.parametrize("what", ["chunk", "tree"])
def test_push_refuses_a_corrupt_local_value_and_names_it(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    store = machine(monkeypatch, tmp_path / "home", spec)
    files = {"sub/big.bin": rand_bytes(900_000, 1), "small.txt": b"hello" * 100}
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", files)))
    entry = ds._files()["sub/big.bin"]
    if what == "chunk":
        victim, db = store.file_chunks(entry)[-1][0], "chunks"
    else:
        victim, db = store.get_tree(ds._rec.tree)["sub"].id, "objects"
    flip_local(store, db, victim, where=-1)

    with pytest.raises(IntegrityError) as err:
        ds.upload(show_progress=False)
    msg = str(err.value)
    assert to_hex(victim) in msg, msg
    assert "dsvc fsck --repair" in msg, msg
    assert ("sub/big.bin" if what == "chunk" else "sub") in msg, msg
    assert "proj/data" in msg, msg
    assert err.value.object_id == victim
    assert victim not in remote_entries(spec)  # the damaged value never left
    assert ds.is_dirty()  # nothing recorded as uploaded
    with pytest.raises(IntegrityError):
        ds.finalize(auto_upload=True)
    assert not remote_objects(spec, "datasets/")


# ---------------------------------------------------------------------- item 14


def _cli(home: Path, *args: str) -> Any:
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env.update(DSVC_HOME=str(home), DSVC_QUIET="1")
    p = subprocess.run(
        [sys.executable, "-m", "dsvc", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return json.loads(p.stdout) if "--json" in args else p.stdout


@pytest.mark.parametrize("how", ["emptied", "recreated"])
def test_push_does_not_trust_its_cache_of_a_remote_that_was_emptied(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    home = tmp_path / "home"
    store = machine(monkeypatch, home, spec)
    files = {"a.bin": rand_bytes(700_000, 3), "b.txt": b"b" * 5000}
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", files)))
    ds.upload(show_progress=False)
    ds.finalize()
    assert remote_of(store).get_record(ds.id) is not None  # cached now

    shutil.rmtree(tmp_path / "remote")
    if how == "recreated":  # someone else starts a new repository at the same URL
        other = machine(monkeypatch, tmp_path / "other", spec)
        d2 = Dataset.create(dataset_name="else", dataset_project="proj")
        d2.add_files(str(write_tree(tmp_path / "src2", {"c.txt": b"c" * 100})))
        d2.finalize(auto_upload=True)
        assert other is not None
    from dsvc import registry

    registry.close_all()
    # an emptied remote holds no repository any more: starting it again is explicit
    out = _cli(home, "push", "--init", "--json")
    assert out["objects"] > 0 and out["packs"] > 0, out
    assert remote_objects(spec, f"datasets/{ds.id}")

    machine(monkeypatch, tmp_path / "fresh", spec)
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == files


def test_the_remote_has_an_identity_and_a_changed_one_drops_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    store = machine(monkeypatch, tmp_path / "home", spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", {"x.txt": b"x" * 3000})))
    ds.finalize(auto_upload=True)
    doc = json.loads(backend(spec).get("dsvc.json"))
    assert len(doc["id"]) == 32 and int(doc["id"], 16) >= 0

    # a remote without an id (created by an older dsvc) gets one from the next writer
    b = backend(spec)
    got = b.get_versioned("dsvc.json")
    assert got is not None
    old = {k: v for k, v in doc.items() if k != "id"}
    b.compare_and_swap("dsvc.json", json.dumps(old).encode(), got[1])
    r = remote_of(store)
    r._checked = False
    r.ensure_repo(create=True)
    new_id = json.loads(backend(spec).get("dsvc.json"))["id"]
    assert len(new_id) == 32 and new_id != doc["id"]
    # the cache was dropped with the identity change: the record is read again
    assert not list(store.scan_prefix("remote", r.index.prefix + b"r/"))
    assert r.get_record(ds.id) is not None


# ---------------------------------------------------------------------- item 15


def _orphaned_draft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any]) -> Any:
    """A draft whose upload finished but which was never finalized: its packs are on the
    remote, unreferenced, and get marked by gc."""
    files = {f"f{i}.bin": rand_bytes(300_000, 80 + i) for i in range(4)}
    machine(monkeypatch, tmp_path / "pusher", spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", files)))
    ds.upload(show_progress=False, chunk_size=1)
    return ds, files


def _hook_first_delete(remote: Any, hook: Any) -> list[str]:
    """Run ``hook`` inside the sweep, right before its first delete; returns the keys the
    sweep deleted."""
    orig = remote.backend.delete
    deleted: list[str] = []

    def delete(key: str) -> None:
        if not deleted:
            deleted.append("<hook>")
            hook()
        deleted.append(key)
        orig(key)

    remote.backend.delete = delete
    return deleted


def test_a_sweep_never_deletes_a_pack_that_a_pusher_rescued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pusher finds its pack in the sweep's "deleting" list, gives up waiting (a slow
    sweep) and uploads; the sweep then goes on deleting: the pusher's version must still
    read back."""
    import time

    from dsvc.remote import push

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    ds, files = _orphaned_draft(tmp_path, monkeypatch, spec)
    gc_store = machine(monkeypatch, tmp_path / "gc", spec)
    gc_remote = remote_of(gc_store)
    time.sleep(0.3)
    assert gc_remote.gc(grace_seconds=0.2)["packs_marked"] >= 2
    time.sleep(0.3)
    # before the fix the pusher waited RESCUE_WAIT for the sweep, then cancelled it
    monkeypatch.setattr(push, "RESCUE_WAIT", 0.2, raising=False)

    def pusher_comes_back() -> None:
        machine(monkeypatch, tmp_path / "pusher", spec)
        ds.upload(show_progress=False, chunk_size=1)  # rebuilds the same packs
        ds.finalize()

    deleted = _hook_first_delete(gc_remote, pusher_comes_back)
    gc_remote.gc(grace_seconds=0.2)
    assert deleted and deleted[0] == "<hook>"

    machine(monkeypatch, tmp_path / "fresh", spec)
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == files


def test_the_sweep_rechecks_the_marks_before_each_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from dsvc.remote import repo

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    _orphaned_draft(tmp_path, monkeypatch, spec)
    packs = sorted(k for k in remote_objects(spec, "packs/") if k.endswith(".pack"))
    assert len(packs) >= 2
    gc_store = machine(monkeypatch, tmp_path / "gc", spec)
    gc_remote = remote_of(gc_store)
    time.sleep(0.3)
    gc_remote.gc(grace_seconds=0.2)
    time.sleep(0.3)
    b = backend(spec)
    spared: list[str] = []

    def someone_takes_marks_off() -> None:
        # between the sweep's commit of its list and its deletes, another party (a
        # concurrent gc that found the packs reachable) takes every pack off the list
        raw, ver = b.get_versioned(repo.GC_MARKS)
        doc = msgpack.unpackb(raw, raw=False)
        spared.extend(doc["deleting"])
        doc["deleting"] = {}
        b.compare_and_swap(repo.GC_MARKS, msgpack.packb(doc, use_bin_type=True), ver)

    deleted = _hook_first_delete(gc_remote, someone_takes_marks_off)
    gc_remote.gc(grace_seconds=0.2)
    assert len(spared) >= 2
    left = remote_objects(spec, "packs/")
    # at most the pack whose delete was already under way is gone; every other spared
    # pack and its index are still there
    gone = {k for k in deleted if k != "<hook>"}
    assert len({k.rsplit(".", 1)[0] for k in gone}) <= 1, gone
    for name in spared:
        if f"packs/{name}.idx" not in gone:
            assert f"packs/{name}.pack" in left and f"packs/{name}.idx" in left


# ---------------------------------------------------------------------- item 12


def _flip_remote(spec: dict[str, Any], oid: bytes) -> str:
    """Flip a byte in the middle of ``oid``'s value in its remote pack; returns the pack."""
    b = backend(spec)
    for key in remote_objects(spec, "packs/"):
        if key.endswith(".idx"):
            for eid, _kind, off, length in msgpack.unpackb(b.get(key), raw=False)["entries"]:
                if bytes(eid) == oid:
                    pack = key[: -len(".idx")] + ".pack"
                    data = bytearray(b.get(pack))
                    data[off + length // 2] ^= 0x40
                    b.put(pack, bytes(data))
                    return pack[len("packs/") : -len(".pack")]
    raise AssertionError("object not on the remote")


def _cli_rc(home: Path, *args: str) -> Any:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env.update(DSVC_HOME=str(home), DSVC_QUIET="1")
    return subprocess.run(
        [sys.executable, "-m", "dsvc", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_fsck_remote_finds_damage_and_a_push_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from dsvc import registry

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    files = {"big.bin": rand_bytes(1_500_000, 21), "small.txt": b"s" * 4000}
    src = write_tree(tmp_path / "src", files)
    store_a = machine(monkeypatch, tmp_path / "home-a", spec)
    v1 = Dataset.create(dataset_name="data", dataset_project="proj")
    v1.add_files(str(src))
    v1.finalize(auto_upload=True)
    victim = store_a.file_chunks(v1._files()["big.bin"])[-1][0]
    pack = _flip_remote(spec, victim)

    # fsck --remote, from another machine: finds the damaged value and names the version
    registry.close_all()
    home_c = tmp_path / "home-c"
    assert _cli_rc(home_c, "remote", "add", "origin", spec["url"]).returncode == 0
    p = _cli_rc(home_c, "fsck", "--remote", "--json")
    assert p.returncode == 5, (p.stdout, p.stderr)
    rep = json.loads(p.stdout)
    assert rep["damaged"] == [{"pack": pack, "object": to_hex(victim)}], rep
    assert v1.id in rep["datasets"] and not rep["ok"]
    p = _cli_rc(home_c, "fsck", "--remote")
    assert p.returncode == 5 and to_hex(victim) in p.stdout + p.stderr, (p.stdout, p.stderr)
    assert "dsvc push" in p.stderr, p.stderr

    # a new version of the same files, from a store that never had them, does not
    # dedupe onto the damaged copy
    machine(monkeypatch, tmp_path / "home-d", spec)
    v2 = Dataset.create(dataset_name="data", dataset_project="proj")
    v2.add_files(str(src))
    v2.finalize(auto_upload=True)
    machine(monkeypatch, tmp_path / "fresh-1", spec)
    assert read_tree(Dataset.get(dataset_id=v2.id).get_local_copy()) == files

    # the store that has v1 pushes it again: the remote is whole
    registry.close_all()
    out = _cli(tmp_path / "home-a", "push", "--json")
    assert v1.id in out["datasets"], out
    machine(monkeypatch, tmp_path / "fresh-2", spec)
    assert read_tree(Dataset.get(dataset_id=v1.id).get_local_copy()) == files
    registry.close_all()
    p = _cli_rc(home_c, "fsck", "--remote", "--json")
    assert p.returncode == 0, (p.stdout, p.stderr)
    rep = json.loads(p.stdout)
    assert rep["ok"] and not rep["datasets"], rep



# ---------------------------------------------------------------------- item 9


def test_metadata_changes_travel_through_the_remote_field_by_field(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsvc.errors import NotFoundError

    files = {"a.txt": b"a" * 3000}
    store_a = machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    v1 = Dataset.create(dataset_name="data", dataset_project="proj", description="d0")
    v1.add_files(str(write_tree(tmp_path / "src", files)))
    v1.finalize(auto_upload=True)

    store_b = machine(monkeypatch, tmp_path / "home-b", fs3_spec)
    assert Dataset.get(dataset_id=v1.id).description == "d0"  # imported into B

    # A publishes, describes, tags and renames, then pushes
    machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    v1.publish()
    v1.set_description("d1")
    v1.add_tags("gold")
    Dataset.rename("renamed", dataset_project="proj", dataset_name="data")
    remote_of(store_a).push_dataset(v1.id, show_progress=False)

    # a fresh clone sees all of it
    machine(monkeypatch, tmp_path / "fresh", fs3_spec)
    got = Dataset.get(dataset_project="proj", dataset_name="renamed", only_published=True)
    assert got.id == v1.id and got.description == "d1" and "gold" in got.tags
    assert got.status == "published"
    assert read_tree(got.get_local_copy()) == files

    # B, which imported it before, takes the changes on fetch
    machine(monkeypatch, tmp_path / "home-b", fs3_spec)
    rec = remote_of(store_b).sync_meta(v1.id)
    assert rec is not None
    assert (rec.description, rec.name, rec.status) == ("d1", "renamed", "published")

    # both change different fields: per field, the later writer wins, nothing is lost
    machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    v1.set_description("d2")
    machine(monkeypatch, tmp_path / "home-b", fs3_spec)
    Dataset.get(dataset_id=v1.id).tags = ["b-tag"]
    machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    remote_of(store_a).sync_meta(v1.id)
    machine(monkeypatch, tmp_path / "home-b", fs3_spec)
    rec_b = remote_of(store_b).sync_meta(v1.id)
    machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    rec_a = remote_of(store_a).sync_meta(v1.id)
    for rec in (rec_a, rec_b):
        assert rec is not None
        assert (rec.description, rec.tags) == ("d2", ["b-tag"]), rec

    # an explicit delete from the remote: fetch no longer brings the version back
    Dataset.delete(dataset_id=v1.id, force=True, remote=True)
    machine(monkeypatch, tmp_path / "fresh-2", fs3_spec)
    assert v1.id not in [d["id"] for d in Dataset.list_datasets()]
    with pytest.raises(NotFoundError):
        Dataset.get(dataset_id=v1.id)


@pytest.mark.parametrize("how", ["rename", "move"])
def test_after_a_rename_the_old_name_is_gone_locally_and_on_the_remote(
    how: str, fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review bug: a renamed (or moved) dataset still answered to its old name: the
    remote's ref of the old name kept listing its versions after the push. Now the old
    name fails clearly and is not listed, locally, on the remote and in a fresh clone,
    and the new name resolves everywhere."""
    from dsvc.errors import NotFoundError

    store_a = machine(monkeypatch, tmp_path / "home-a", fs3_spec)
    versions = []
    for i in range(2):
        v = Dataset.create(dataset_name="data", dataset_project="proj")
        v.add_files(str(write_tree(tmp_path / f"src{i}", {"a.txt": b"a" * (i + 1)})))
        v.finalize(auto_upload=True)
        versions.append(v.id)
    if how == "rename":
        Dataset.rename("renamed", dataset_project="proj", dataset_name="data")
        new = ("proj", "renamed")
    else:
        Dataset.move_to_project("elsewhere", dataset_project="proj", dataset_name="data")
        new = ("elsewhere", "data")

    def check() -> None:
        with pytest.raises(NotFoundError, match="proj.*data"):
            Dataset.get(dataset_project="proj", dataset_name="data")
        listed = {(d["project"], d["name"]) for d in Dataset.list_datasets()}
        assert listed == {new}
        got = Dataset.get(dataset_project=new[0], dataset_name=new[1])
        assert got.id == versions[-1]

    check()  # locally, before any push
    for vid in versions:
        remote_of(store_a).push_dataset(vid, show_progress=False)
    check()  # with the remote consulted
    old = remote_of(store_a).read_ref("proj", "data")
    assert old is None or old["versions"] == {}  # the old name lists nothing
    ref = remote_of(store_a).read_ref(*new)
    assert ref is not None and set(ref["versions"]) == set(versions)

    machine(monkeypatch, tmp_path / "fresh", fs3_spec)  # another machine
    check()
