"""Reading a remote from a forked child after the parent read it (issue 15).

A ``DataLoader(num_workers>0)`` forks its workers after the parent has read through the
filesystem: the parent's LMDB environment and obstore client (and obstore's tokio
runtime, whose threads do not survive ``fork``) must not be what the child uses. These
tests fork with ``multiprocessing``'s ``fork`` start method, like DataLoader on Linux,
and need no torch; a child that hangs is killed and fails the test instead of hanging
the run.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from fs_helpers import ROOT, fresh_fs, publish

from dsvc import registry

FILES = {f"s/{i:02d}.bin": bytes([i]) * (3000 + i) for i in range(6)}
CHILD_TIMEOUT = 60  # a hung child is killed after this (no timing assert: it only bounds a hang)


def _child(fs: Any, paths: list[str], out: Any) -> None:
    try:
        reader = fs.reader
        got = [fs.cat_file(f"dsvc://{ROOT}/{p}") for p in paths]
        remote = reader.remote
        out.send(
            (
                os.getpid(),
                got,
                id(reader.store.env),
                id(remote.backend._store) if remote is not None else 0,
                reader.stats.remote_chunks,
            )
        )
    except BaseException as e:  # report, don't hang the parent on a dead pipe
        out.send(("error", repr(e)))


def _run_forked(fs: Any, paths: list[str]) -> tuple[Any, ...]:
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fs, paths, send))
    p.start()
    try:
        if not recv.poll(CHILD_TIMEOUT):
            raise AssertionError(f"the forked child read nothing in {CHILD_TIMEOUT} s (hung)")
        got = recv.recv()
    finally:
        if p.is_alive():
            p.kill()
        p.join()
    assert got[0] != "error", got[1]
    return got


@pytest.fixture(
    params=[
        "file",
        pytest.param("s3", marks=pytest.mark.servers),
        pytest.param("azure", marks=pytest.mark.servers),
    ]
)
def fs3_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A folder, S3 (moto) and Azure (Azurite) remote: each client must survive fork."""
    from conftest import _remote_spec

    return _remote_spec(request.param, request, tmp_path)


def test_forked_child_reads_from_the_remote_after_the_parent_did(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(monkeypatch, tmp_path / "a", fs3_spec, FILES)
    registry.close_all()
    fs = fresh_fs(tmp_path / "b", fs3_spec)
    # the parent reads first: its store, its remote client and obstore's runtime are live
    assert fs.cat_file(f"dsvc://{ROOT}/s/00.bin") == FILES["s/00.bin"]
    # kept referenced, so alive in the child too: a new object there cannot reuse its id
    inherited = (fs.reader.store.env, fs.reader.remote.backend._store)
    parent_env, parent_client = map(id, inherited)
    assert fs.reader.stats.remote_chunks >= 1
    # the child reads files the parent never fetched: their chunks come from the remote
    paths = ["s/03.bin", "s/04.bin", "s/05.bin"]
    pid, got, env_id, client_id, remote_chunks = _run_forked(fs, paths)
    assert pid != os.getpid()
    assert got == [FILES[p] for p in paths]
    assert remote_chunks >= 1, "the child read the remote (its chunks were not local)"
    assert env_id != parent_env, "the child used the parent's LMDB environment"
    assert client_id != parent_client, "the child used the parent's obstore client"
    # and the parent still works after the fork (its handles were left alone)
    assert fs.cat_file(f"dsvc://{ROOT}/s/01.bin") == FILES["s/01.bin"]


def test_two_generations_of_forks_read_the_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A child that reloaded obstore can fork again (DataLoader inside a worker)."""
    from conftest import _remote_spec

    spec = _remote_spec("file", request, tmp_path)
    publish(monkeypatch, tmp_path / "a", spec, FILES)
    registry.close_all()
    fs = fresh_fs(tmp_path / "b", spec)
    assert fs.cat_file(f"dsvc://{ROOT}/s/00.bin") == FILES["s/00.bin"]

    def grandchild_read(fs: Any, out: Any) -> None:
        try:
            assert fs.cat_file(f"dsvc://{ROOT}/s/01.bin") == FILES["s/01.bin"]
            got = _run_forked(fs, ["s/02.bin"])
            out.send(("ok", got[1]))
        except BaseException as e:
            out.send(("error", repr(e)))

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=grandchild_read, args=(fs, send))
    p.start()
    try:
        assert recv.poll(2 * CHILD_TIMEOUT), "the forked child hung"
        status, got = recv.recv()
    finally:
        if p.is_alive():
            p.kill()
        p.join()
    assert status == "ok", got
    assert got == [FILES["s/02.bin"]]
