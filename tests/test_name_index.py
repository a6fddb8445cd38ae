"""The index of dataset records by project and name (issue 11, thousands of versions).

Lookups by name and version numbering read the summaries of that name's versions from
the store's name index (kept in the record's own LMDB transaction), and a remote's ref
plus the records at the top of it, never every record. These tests prove the index is
used (by counting record reads) and correct (index == a scan of the records, after
creates, renames, edits, deletes, a kill -9 at any commit, and in a store made before
the index existed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remote_helpers import machine

from dsvc import maintenance, registry
from dsvc.dataset import Dataset
from dsvc.record import Record
from dsvc.remote.refs import RemoteRefs, _ref_key
from dsvc.store import (
    NAME_INDEX_PREFIX,
    NAME_INDEX_READY,
    RECORD_PREFIX,
    Store,
    record_summary,
)

REPO = Path(__file__).resolve().parent.parent


def scanned(store: Store) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """What the index must hold: summaries of every record, by project and name."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, rec in store.iter_records(RECORD_PREFIX):
        s = record_summary(rec)
        if s is not None:
            out.setdefault((s["project"], s["name"]), []).append(s)
    return out


def assert_index_matches_records(store: Store) -> None:
    assert store.name_index_problems() == []
    want = scanned(store)
    names = {k: None for k in want}
    for k, _ in store.iter_records(NAME_INDEX_PREFIX):
        assert k.count("/") == 3, k
    for project, name in names:
        got = sorted(store.name_index(project, name), key=lambda s: s["id"])
        assert got == sorted(want[(project, name)], key=lambda s: s["id"])
    # and nothing else: every index entry belongs to a record
    assert len(list(store.iter_records(NAME_INDEX_PREFIX))) == sum(map(len, want.values()))


def finalized_record(project: str, name: str, version: str, **kw: Any) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "id": uuid.uuid4().hex,
        "name": name,
        "project": project,
        "version": version,
        "tags": [],
        "description": "",
        "status": registry.FINAL,
        "parents": [],
        "parent_commits": [],
        "base_tree": b"t" * 16,
        "tree": b"t" * 16,
        "uploaded_tree": None,
        "commit": b"c" * 16,
        "created": now,
        "modified": now,
        "finalized": now,
        "output_uri": None,
        "remote": None,
        "metadata": {},
        "archived": False,
        "removed_any": False,
        **kw,
    }


def insert(store: Store, rec: dict[str, Any]) -> None:
    registry.insert(store, Record.from_dict(rec, RECORD_PREFIX + rec["id"]))


class CountingStore:
    """Counts the dataset records a block reads (one get, or one per record scanned)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        get, scan = Store.get_record, Store.iter_records

        def get_record(store: Store, key: str) -> Any:
            self.reads += key.startswith(RECORD_PREFIX)
            return get(store, key)

        def iter_records(store: Store, prefix: str = "") -> Any:
            out = list(scan(store, prefix))
            self.reads += sum(k.startswith(RECORD_PREFIX) for k, _ in out)
            return iter(out)

        monkeypatch.setattr(Store, "get_record", get_record)
        monkeypatch.setattr(Store, "iter_records", iter_records)


def test_create_and_get_by_name_read_only_that_names_top_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = machine(monkeypatch, tmp_path / "home", None)
    for i in range(300):  # other datasets, and many versions of this one
        insert(store, finalized_record("p", f"other{i % 30}", f"1.0.{i}"))
        insert(store, finalized_record("p", "many", f"1.{i}.0"))
    counter = CountingStore(monkeypatch)
    ds = Dataset.create(dataset_name="many", dataset_project="p")
    assert ds.version == "1.299.1"  # the bump of the highest version
    create_reads = counter.reads
    counter.reads = 0
    got = Dataset.get(dataset_project="p", dataset_name="many", only_completed=True)
    assert got.version == "1.299.0"
    # before the index: every one of the 600 records was read, by each call
    assert create_reads <= 3, create_reads
    assert counter.reads <= 3, counter.reads


def test_lookup_by_name_follows_renames_edits_and_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = machine(monkeypatch, tmp_path / "home", None)
    a = finalized_record("p", "n", "2.0.0")
    b = finalized_record("p", "n", "1.0.0")
    insert(store, a)
    insert(store, b)
    assert Dataset.get(dataset_project="p", dataset_name="n").id == a["id"]
    registry.update(store, a["id"], lambda r: r.replace(name="m"))  # renamed away
    assert Dataset.get(dataset_project="p", dataset_name="n").id == b["id"]
    assert Dataset.get(dataset_project="p", dataset_name="m").id == a["id"]
    registry.update(store, b["id"], lambda r: r.replace(archived=True))
    with pytest.raises(Exception, match="no dataset found"):
        Dataset.get(dataset_project="p", dataset_name="n")
    assert Dataset.get(dataset_project="p", dataset_name="n", include_archived=True).id == b["id"]
    registry.remove(store, b["id"])
    assert store.name_index("p", "n") == []
    assert Dataset.create(dataset_name="n", dataset_project="p").version == "1.0.0"
    assert_index_matches_records(store)


ops = st.lists(
    st.tuples(
        st.sampled_from(["create", "rename", "edit", "delete", "draft"]),
        st.integers(0, 7),
        st.sampled_from(["a", "b", "a/b", "ü x"]),
        st.sampled_from(["n", "m", "n%2F", "v"]),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops)
def test_index_equals_a_scan_of_the_records(tmp_path_factory: Any, steps: list) -> None:
    home = tmp_path_factory.mktemp("home")
    store = registry.open_store(home)
    try:
        ids: list[str] = []
        for op, i, project, name in steps:
            if op == "create" or not ids:
                rec = finalized_record(project, name, f"1.0.{i}")
                insert(store, rec)
                ids.append(rec["id"])
            elif op == "draft":
                os.environ["DSVC_HOME"] = str(home)
                ds = Dataset.create(dataset_name=name, dataset_project=project)
                ids.append(ds.id)
            else:
                did = ids[i % len(ids)]
                if op == "rename":
                    change = {"project": project, "name": name}
                else:
                    change = {"version": f"9.{i}", "tags": [name], "archived": i % 2 == 0}
                if op in ("rename", "edit"):
                    registry.update(store, did, lambda r, c=change: r.replace(**c))
                else:
                    registry.remove(store, did)
                    ids.remove(did)
            assert_index_matches_records(store)
    finally:
        os.environ.pop("DSVC_HOME", None)
        registry.close_store(home)


def test_a_store_without_the_index_gets_it_built_and_fsck_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = machine(monkeypatch, tmp_path / "home", None)
    recs = [finalized_record("p", "n", f"1.0.{i}") for i in range(5)]
    for r in recs:
        insert(store, r)
    # as an older dsvc left it: records, no index, no marker
    for k, _ in list(store.iter_records(NAME_INDEX_PREFIX)):
        store._apply([("records", k.encode(), None)])
    store._apply([("config", NAME_INDEX_READY.encode(), None)])
    assert store.name_index_problems() == []  # not built yet: nothing to be out of step
    assert Dataset.get(dataset_project="p", dataset_name="n").version == "1.0.4"
    assert store.get_config(NAME_INDEX_READY) is not None
    assert_index_matches_records(store)
    # out of step (an older dsvc wrote after the index was built): fsck says so, repair fixes
    store._apply([("records", RECORD_PREFIX.encode() + recs[0]["id"].encode(), None)])
    store._apply(
        [("records", b"nx/p/n/" + b"f" * 32, msgpack.packb({"id": "f" * 32}, use_bin_type=True))]
    )
    problems = maintenance.fsck(store, progress=False)["name_index"]
    assert any("lacks" not in p and "f" * 32 in p for p in problems), problems
    assert any(recs[0]["id"] in p for p in problems), problems
    maintenance.fsck_repair(store, progress=False)
    assert_index_matches_records(store)


CRASH_WORKLOAD = """
import os, sys, time, uuid
sys.path.insert(0, sys.argv[1])
from dsvc import registry
from dsvc.dataset import Dataset
store = registry.open_store()
ids = []
for i in range(4):
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ids.append(ds.id)
registry.update(store, ids[0], lambda r: r.replace(name="m"))
registry.update(store, ids[1], lambda r: r.replace(version="7.0"))
registry.remove(store, ids[2])
"""


def test_a_kill_at_any_commit_leaves_index_and_records_in_step(tmp_path: Path) -> None:
    def run(home: Path, spec: str, log: Path | None = None) -> int:
        env = {**os.environ, "DSVC_HOME": str(home), "DSVC_FAULT_POINTS": spec}
        if log is not None:
            env["DSVC_FAULT_LOG"] = str(log)
        return subprocess.run(
            [sys.executable, "-c", CRASH_WORKLOAD, str(REPO)], env=env, capture_output=True
        ).returncode

    log = tmp_path / "points.log"
    assert run(tmp_path / "count", "count", log) == 0
    points = [ln.split("\t") for ln in log.read_text().splitlines()]
    record_commits = [int(p[0]) for p in points if "records" in p[3] and p[2] == "before"]
    assert len(record_commits) >= 7
    for n in record_commits:
        home = tmp_path / f"kill{n}"
        assert run(home, f"kill:{n}") == -9
        store = registry.open_store(home)
        assert_index_matches_records(store)
        registry.close_store(home)


# -- remotes: the ref, not every record ---------------------------------------------------


def test_lookup_on_a_remote_reads_the_ref_not_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_helpers import backend

    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    machine(monkeypatch, tmp_path / "pusher", spec)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    ds = Dataset.create(dataset_name="n", dataset_project="p", dataset_version="1.0.0")
    ds.add_files(str(src))
    ds.finalize(auto_upload=True)
    first = registry.require(registry.open_store(), ds.id).to_dict()
    be = backend(spec)
    ref = msgpack.unpackb(be.get(_ref_key("p", "n")), raw=False)
    for i in range(1, 60):  # as after 60 pushes of this name (and 20 of another)
        rec = {**first, "id": uuid.uuid4().hex, "version": f"1.0.{i}", "modified": i, "created": i}
        for f in ("uploaded_tree", "remote"):
            rec.pop(f)
        be.put(f"datasets/{rec['id']}", msgpack.packb(rec, use_bin_type=True))
        ref["versions"][rec["id"]] = rec["version"]
        if i % 3 == 0:
            other = {**rec, "id": uuid.uuid4().hex, "name": "other"}
            be.put(f"datasets/{other['id']}", msgpack.packb(other, use_bin_type=True))
    be.put(_ref_key("p", "n"), msgpack.packb(ref, use_bin_type=True))
    registry.close_all()

    machine(monkeypatch, tmp_path / "fresh", spec)
    reads: list[str] = []
    get = RemoteRefs.get_record

    def counting(self: Any, dataset_id: str, *a: Any) -> Any:
        reads.append(dataset_id)
        return get(self, dataset_id, *a)

    monkeypatch.setattr(RemoteRefs, "get_record", counting)
    got = Dataset.get(dataset_project="p", dataset_name="n")
    assert got.version == "1.0.59"
    assert len(reads) == 1, len(reads)  # before: every one of the 80 records
    reads.clear()
    assert Dataset.create(dataset_name="n", dataset_project="p").version == "1.0.60"
    assert len(reads) <= 1, len(reads)
    # a version filter reads only the versions the ref lists under it
    reads.clear()
    assert Dataset.get(dataset_project="p", dataset_name="n", dataset_version="1.0.7").version == "1.0.7"
    assert len(reads) == 1
