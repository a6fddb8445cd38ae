"""Issue 11.3: partial, selected and writable copies are built batch by batch from a
lazy listing (memory holds one batch, never a flat list of every file), and still hold
exactly the right files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree

from dsvc import checkout
from dsvc.dataset import Dataset, split_parts
from dsvc.registry import open_store
from dsvc.treeops import Trees, walk


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return h


FILES = {
    f"d{i}/s{j}/f{k}": (f"{i}.{j}.{k}-" * (1 + (i * 7 + j * 3 + k) % 40)).encode()
    for i in range(4)
    for j in range(3)
    for k in range(5)
}
FILES.update({"top": b"t" * 50, "d1/big": os.urandom(9000), "d2/empty": b""})


@pytest.fixture
def ds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    d = Dataset.create(dataset_name="b", dataset_project="p")
    d.add_files(write_tree(tmp_path / "src", FILES))
    d.finalize()
    monkeypatch.setattr(checkout, "BATCH_FILES", 7)  # many batches, some mid-folder

    def no_flat_listing(*_a: object, **_k: object) -> None:
        raise AssertionError("a copy must not list every file")

    monkeypatch.setattr(Dataset, "_selected", no_flat_listing)
    return d


def expected_part(ds: Dataset, part: int, num_parts: int) -> dict[str, bytes]:
    """What the part holds, from a flat listing split the way it always was."""
    entries = list(walk(Trees(open_store()), ds._refresh().tree))
    return {"/".join(p): FILES["/".join(p)] for p, _ in split_parts(entries, part, num_parts)}


@pytest.mark.parametrize("num_parts", [1, 3, 5])
def test_parts_are_built_in_batches_and_hold_exactly_their_files(
    ds: Dataset, num_parts: int
) -> None:
    seen: dict[str, bytes] = {}
    for part in range(num_parts):
        got = read_tree(ds.get_local_copy(part=part, num_parts=num_parts))
        assert got == expected_part(ds, part, num_parts)
        assert not set(got) & set(seen)  # each file in exactly one part
        seen.update(got)
        # served again: the manifest (one part per batch) checks out, nothing repaired
        assert read_tree(ds.get_local_copy(part=part, num_parts=num_parts)) == got
    assert seen == FILES


def test_a_selection_is_built_in_batches(ds: Dataset) -> None:
    got = read_tree(ds.get_local_copy(files=["d1/*", "top"]))
    assert got == {k: v for k, v in FILES.items() if k.startswith("d1/") or k == "top"}
    sel = read_tree(ds.get_local_copy(files="d2/s1", part=1, num_parts=2))
    inside = {k for k in FILES if k.startswith("d2/s1/")}
    assert set(sel) < inside and sel
    assert set(sel) | set(read_tree(ds.get_local_copy(files="d2/s1", part=0, num_parts=2))) == (
        inside
    )


def test_a_damaged_part_is_repaired_batch_by_batch(ds: Dataset) -> None:
    p = Path(ds.get_local_copy(part=0, num_parts=2))
    victim = sorted(read_tree(p))[-1]
    os.chmod(p / victim, 0o644)
    (p / victim).write_bytes(b"EVIL")
    assert read_tree(ds.get_local_copy(part=0, num_parts=2)) == expected_part(ds, 0, 2)


@pytest.mark.parametrize("part", [None, 0, 1])
def test_a_writable_copy_is_built_in_batches(ds: Dataset, tmp_path: Path, part: int | None) -> None:
    kw = {} if part is None else {"part": part, "num_parts": 2}
    out = ds.get_mutable_local_copy(tmp_path / f"out-{part}", **kw)
    want = FILES if part is None else expected_part(ds, part, 2)
    assert read_tree(out) == want
    victim = sorted(want)[0]
    (Path(out) / victim).write_bytes(b"mine")  # writable and independent
    assert read_tree(ds.get_local_copy())[victim] == FILES[victim]


def test_a_bad_part_number_is_refused_before_anything_is_built(
    ds: Dataset, home: Path, tmp_path: Path
) -> None:
    from dsvc.errors import UsageError

    with pytest.raises(UsageError, match="part must be in"):
        ds.get_local_copy(part=3, num_parts=3)
    with pytest.raises(UsageError, match="part must be in"):
        ds.get_mutable_local_copy(tmp_path / "x", part=-1, num_parts=2)
    copies = checkout.CacheLayout(home).copies
    assert not copies.exists() or os.listdir(copies) == []
    assert not (tmp_path / "x").exists()
