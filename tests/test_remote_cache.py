"""The open remotes are attached to their store (one cache, issue 12): resolved once per
store, dropped when the store is closed, and a forked child keeps the parent's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from remote_helpers import machine

from dsvc import registry
from dsvc.remote import client


def test_a_remote_is_opened_once_per_store_and_goes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    store = machine(monkeypatch, tmp_path / "home", spec)
    r = client.resolve(store, None, required=True)
    assert client.resolve(store, "origin") is r
    assert client.resolve(store, spec["url"]) is r  # by URL: the same remote
    other = machine(monkeypatch, tmp_path / "other", spec)
    assert client.resolve(other, None) is not r  # another store, another Remote
    registry.close_store(tmp_path / "home")
    assert store.detach_all() == []  # closing the store dropped its remotes
    again = registry.open_store(tmp_path / "home")
    fresh = client.resolve(again, None, required=True)
    assert fresh is not r and fresh.url == r.url


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    store = machine(monkeypatch, tmp_path / "home", spec)
    parent_remote = client.resolve(store, None, required=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the inherited store is closed, a new one has a new Remote
        try:
            child_store = registry.open_store()
            child_remote = client.resolve(child_store, None, required=True)
            kept = parent_remote in registry._inherited_attached
            os.write(w, b"ok" if child_remote is not parent_remote and kept else b"no")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 2) == b"ok"
    assert client.resolve(store, None) is parent_remote  # the parent's is untouched
