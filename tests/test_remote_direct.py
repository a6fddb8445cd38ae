"""Writable copies from a remote go straight into the files, not through the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from remote_helpers import machine, read_tree, write_tree

from dsvc import dataset as dsmod
from dsvc.dataset import Dataset
from dsvc.store import Store


def _files() -> dict[str, bytes]:
    return {
        "a/one.bin": os.urandom(300_000),
        "a/two.txt": b"row,value\n" * 50_000,
        "b/empty": b"",
        "c/tiny.txt": b"hi",
    }


def _publish_then_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict) -> Store:
    """Push ``files`` as p/n from one store; return a second, empty store on the remote."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    src = write_tree(tmp_path / "src", files)
    machine(monkeypatch, tmp_path / "home-a", spec)
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ds.add_files(src)
    ds.finalize(auto_upload=True)
    return machine(monkeypatch, tmp_path / "home-b", spec)


def test_writable_copy_streams_from_the_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files()
    store_b = _publish_then_switch(tmp_path, monkeypatch, files)
    got = Dataset.get(dataset_project="p", dataset_name="n")
    out = got.get_mutable_local_copy(tmp_path / "out")
    assert read_tree(Path(out)) == files
    assert store_b.stats()["chunks"] == 0  # nothing went through the store

    # a read-only copy is cached: its content is fetched into the store
    cached = got.get_local_copy()
    assert read_tree(Path(cached)) == files
    assert store_b.stats()["chunks"] > 0


def test_large_files_still_go_through_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dsmod, "DIRECT_FETCH_MAX", 1000)  # every file above it is "large"
    files = _files()
    store_b = _publish_then_switch(tmp_path, monkeypatch, files)
    out = Dataset.get(dataset_project="p", dataset_name="n").get_mutable_local_copy(
        tmp_path / "out"
    )
    assert read_tree(Path(out)) == files
    assert store_b.stats()["chunks"] > 0
