"""Dataset records are a checked type (dsvc/record.py): the registry reads and writes
``Record`` values, unknown fields survive, and a damaged local record names its key."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from dsvc import registry as reg
from dsvc.dataset import Dataset
from dsvc.errors import IntegrityError
from dsvc.record import LOCAL_FIELDS, Record


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return tmp_path / "home"


def test_registry_returns_records(home: Path) -> None:
    ds = Dataset.create(dataset_name="n", dataset_project="p", dataset_tags=["a"])
    store = reg.open_store()
    rec = reg.require(store, ds.id)
    assert isinstance(rec, Record)
    assert (rec.id, rec.name, rec.project, rec.status, rec.tags) == (
        ds.id, "n", "p", reg.DRAFT, ["a"],
    )
    assert [r.id for r in reg.all_records(store)] == [ds.id]


def test_unknown_fields_survive_local_updates(home: Path) -> None:
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    store = reg.open_store()
    key = reg.key(ds.id)
    raw = store.get_record(key)
    store.cas_record(key, raw, {**raw, "from_the_future": {"x": [1, 2]}})
    ds.add_tags(["t"])  # a change through registry.update
    ds.set_description("d")
    after = store.get_record(key)
    assert after["from_the_future"] == {"x": [1, 2]}
    assert after["tags"] == ["t"] and after["description"] == "d"
    assert reg.require(store, ds.id).extra == {"from_the_future": {"x": [1, 2]}}


def test_record_round_trips_through_msgpack_with_unknown_fields() -> None:
    raw = {
        "id": "0" * 32,
        "name": "n",
        "project": "p",
        "status": "final",
        "tree": b"\x01" * 16,
        "commit": b"\x02" * 16,
        "created": 1,
        "newer": "kept",
    }
    rec = Record.from_msgpack(msgpack.packb(raw, use_bin_type=True), "datasets/x")
    back = Record.from_msgpack(rec.to_msgpack(), "datasets/x")
    assert back == rec and back.extra == {"newer": "kept"}
    assert "finalizing" not in rec.to_dict()  # absent when nil, as before it was a field
    frozen = rec.replace(finalizing={"commit": b"\x03" * 16, "meta": {}}, remote="file:///r")
    assert not set(frozen.published()) & set(LOCAL_FIELDS)
    assert frozen.published()["newer"] == "kept"


def test_damaged_local_record_names_its_key(home: Path) -> None:
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    store = reg.open_store()
    key = reg.key(ds.id)
    raw = store.get_record(key)
    store.cas_record(key, raw, {**raw, "tags": "not-a-list"})
    with pytest.raises(IntegrityError, match=key):
        reg.require(store, ds.id)
