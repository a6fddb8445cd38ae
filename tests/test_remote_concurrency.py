"""Several writers on one remote: processes racing on one dataset name, threads racing on
one ref, and garbage collection (mark, then sweep after a grace period) while others push."""

from __future__ import annotations

import threading
import time
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
    start_script,
    write_tree,
)

from dsvc.dataset import Dataset
from dsvc.remote import client, repo
from dsvc.remote.packs import PackBuilder, pack_name


def publish(folder: Path, *, name: str = "data", **kw: Any) -> Dataset:
    ds = Dataset.create(dataset_name=name, dataset_project="proj", **kw)
    ds.add_files(str(folder))
    ds.upload(show_progress=False)
    ds.finalize()
    return ds


# ---------------------------------------------------------------------- racing pushers


@pytest.mark.slow
def test_eight_processes_push_versions_of_one_dataset_at_once(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = rand_bytes(400_000, 7)  # in every version: pushed by whoever is first
    expected = {}
    procs = []
    for i in range(8):
        files = {"shared.bin": shared, f"own/{i}.bin": rand_bytes(100_000 + i, 100 + i)}
        src = write_tree(tmp_path / f"src{i}", files)
        args = {
            **fs3_spec,
            "folder": str(src),
            "project": "proj",
            "name": "race",
            "version": f"1.0.{i}",
        }
        procs.append((start_script("push", args, home=tmp_path / f"home{i}"), files))
    for proc, files in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ds_id, done = out.split()
        assert done == "done"
        expected[ds_id] = files

    machine(monkeypatch, tmp_path / "fresh", fs3_spec)
    listed = Dataset.list_datasets(dataset_project="proj", partial_name="race")
    assert {d["id"] for d in listed} == set(expected)
    ref = remote_of(machine(monkeypatch, tmp_path / "fresh", fs3_spec)).read_ref("proj", "race")
    assert ref is not None
    assert ref["versions"] == {i: f"1.0.{n}" for n, i in enumerate(expected)}
    records = {k.split("/", 1)[1] for k in remote_objects(fs3_spec, "datasets/")}
    assert records == set(ref["versions"])  # refs and records agree
    for ds_id, files in expected.items():
        assert read_tree(Dataset.get(dataset_id=ds_id).get_local_copy()) == files
    newest = Dataset.get(dataset_project="proj", dataset_name="race")
    assert newest.version == "1.0.7"


def test_threads_racing_on_one_ref_lose_nothing(
    remote_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = machine(monkeypatch, tmp_path / "home", remote_spec)
    # separate clients (as separate machines would have), all on one ref
    remotes = [
        client.Remote(store, None, remote_spec["url"], remote_spec["options"]) for _ in range(6)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(len(remotes))

    def work(n: int, r: client.Remote) -> None:
        try:
            start.wait()
            for j in range(3):
                r.update_ref("proj", "hot", f"{n:02d}{j}" + "0" * 29, f"{n}.{j}")
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n, r)) for n, r in enumerate(remotes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ref = remotes[0].read_ref("proj", "hot")
    assert ref is not None and len(ref["versions"]) == 18


# ---------------------------------------------------------------------- garbage collection


def _orphan_pack(spec: dict[str, Any], seed: int) -> str:
    """An unreferenced, complete pack (what a push killed before its ref leaves)."""
    from dsvc.ids import chunk_id
    from dsvc.remote.packs import KIND_CHUNK

    payload = rand_bytes(5000, seed)
    pb = PackBuilder()
    pb.add(chunk_id(payload), KIND_CHUNK, b"\x00" + payload)
    pid, data, index = pb.finish()
    b = backend(spec)
    b.put(f"packs/{pack_name(pid)}.pack", data)
    b.put(f"packs/{pack_name(pid)}.idx", index)
    return pack_name(pid)


@pytest.mark.slow
def test_gc_marks_then_sweeps_only_unreferenced_packs_after_the_grace_period(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"a.bin": rand_bytes(200_000, 1), "b.txt": b"b" * 1000}
    store = machine(monkeypatch, tmp_path / "home", fs3_spec)
    ds = publish(write_tree(tmp_path / "src", files))
    referenced = {k for k in remote_objects(fs3_spec, "packs/")}
    old = _orphan_pack(fs3_spec, 1)
    remote = remote_of(store)

    grace = 1.5
    time.sleep(grace + 0.1)
    young = _orphan_pack(fs3_spec, 2)
    dry = remote.gc(grace_seconds=grace, dry_run=True)
    assert dry["packs_deleted"] == 0 and dry["dry_run"]
    first = remote.gc(grace_seconds=grace)  # marks the old orphan only
    assert first["packs_marked"] == 1 and first["packs_deleted"] == 0
    assert first["packs_kept"] == len({k for k in referenced if k.endswith(".pack")})
    marks = msgpack.unpackb(backend(fs3_spec).get(repo.GC_MARKS), raw=False)
    assert set(marks["marked"]) == {old}

    time.sleep(grace + 0.1)
    second = remote.gc(grace_seconds=grace)  # sweeps it; marks the other one
    assert second["packs_deleted"] == 1 and second["packs_marked"] == 1
    left = set(remote_objects(fs3_spec, "packs/"))
    assert f"packs/{old}.pack" not in left and f"packs/{old}.idx" not in left
    assert f"packs/{young}.pack" in left
    assert referenced <= left

    # the data is still complete for a fresh machine
    machine(monkeypatch, tmp_path / "fresh", fs3_spec)
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == files


def test_gc_during_a_push_keeps_the_pushed_packs(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, tmp_path / "pusher", fs3_spec)
    files = {"x.bin": rand_bytes(300_000, 3)}
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", files)))
    ds.upload(show_progress=False)  # packs are up, no ref yet: unreferenced and young

    gc_store = machine(monkeypatch, tmp_path / "gc", fs3_spec)
    stats = remote_of(gc_store).gc(grace_seconds=3600)
    assert stats["packs_deleted"] == 0 and stats["packs_too_young"] >= 1

    machine(monkeypatch, tmp_path / "pusher", fs3_spec)
    ds.finalize()
    machine(monkeypatch, tmp_path / "fresh", fs3_spec)
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == files


def test_push_does_not_rely_on_packs_marked_by_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed push whose finished packs were marked by gc re-sends their content (or
    takes the mark off a pack it rebuilds byte for byte), so the sweep cannot delete
    data that a new version references."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    files = {f"f{i}.bin": rand_bytes(300_000, 60 + i) for i in range(4)}
    src = write_tree(tmp_path / "src", files)
    store = machine(monkeypatch, tmp_path / "home", spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(src))
    ds.upload(show_progress=False)  # "killed" before finalize: packs without a ref
    orphans = {k for k in remote_objects(spec, "packs/") if k.endswith(".pack")}

    gc_store = machine(monkeypatch, tmp_path / "gc", spec)
    gc_remote = remote_of(gc_store)
    gc_remote.gc(grace_seconds=0.5, dry_run=False)  # too young: nothing
    time.sleep(0.6)
    marked = gc_remote.gc(grace_seconds=0.5)
    assert marked["packs_marked"] == len(orphans) and marked["packs_deleted"] == 0

    # the pusher comes back: uploads again (rebuilding the same packs), then finalizes
    machine(monkeypatch, tmp_path / "home", spec)
    ds.upload(show_progress=False)
    marks = msgpack.unpackb(backend(spec).get(repo.GC_MARKS), raw=False)
    assert not marks["marked"]  # the rebuilt packs took their marks off
    time.sleep(0.6)
    swept = gc_remote.gc(grace_seconds=0.5)  # before the ref exists
    assert swept["packs_deleted"] == 0
    ds.finalize()
    assert store is not None
    machine(monkeypatch, tmp_path / "fresh", spec)
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == files
