"""Issue 9.8: a crashed or raced ``finalize`` can always be retried, and converges.

A child process runs ``finalize`` and is SIGKILLed after its N-th remote write, for
every N the test counts in a run that is not killed (the kill points are enumerated,
not picked). After each kill the draft's content can no longer change, a retry
returns True, and the local version, the remote record and a fresh clone all hold the
same content. A draft whose remote record already exists (a crash of an older dsvc,
or any other way) is recognised as finalized with the published content, and an
``add_files`` racing ``finalize`` either lands in the version or is refused: the
draft never ends up unable to finalize.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from remote_helpers import machine, read_tree, remote_of, write_tree

from dsvc import errors
from dsvc import registry as reg
from dsvc.dataset import Dataset
from dsvc.record import Record

REPO = Path(__file__).resolve().parent.parent

#: the child: finalize one draft; with "kill_after": N, SIGKILL itself right after its
#: N-th remote write; with "pause_file", wait after the record write until it exists.
#: Prints the number of remote writes it made.
CHILD = r"""
import json, os, signal, sys, time
from dsvc.remote import backend as B
args = json.loads(sys.argv[1])
writes = 0

def wrap(name):
    orig = getattr(B.Backend, name)
    def method(self, key, *a, **kw):
        global writes
        if key.startswith("_probe/"):
            return orig(self, key, *a, **kw)  # the conditional-write probe, not finalize's
        out = orig(self, key, *a, **kw)
        writes += 1
        if args.get("kill_after") == writes:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.get("pause_file") and key.startswith("datasets/"):
            open(args["pause_file"] + ".reached", "w").close()
            while not os.path.exists(args["pause_file"]):
                time.sleep(0.02)
        return out
    setattr(B.Backend, name, method)

for name in ("put", "put_file", "create", "compare_and_swap", "delete"):
    wrap(name)
from dsvc.dataset import Dataset
ok = Dataset.get(dataset_id=args["id"]).finalize(auto_upload=args.get("auto_upload", False))
print(json.dumps({"ok": ok, "writes": writes}), flush=True)
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DSVC_QUIET"] = "1"
    return env


def run_child(args: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_child(args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


FILES = {"a.txt": b"alpha\n", "d/b.bin": os.urandom(70_000), "d/e/c": b"c" * 1000}


def uploaded_draft(tmp: Path, files: dict[str, bytes] = FILES) -> Dataset:
    """A draft whose content is uploaded: what finalize() starts from."""
    parent = Dataset.create(dataset_name="base", dataset_project="proj")
    parent.add_files(write_tree(tmp / "parent", {"p.txt": b"parent"}))
    parent.upload(show_progress=False)
    parent.finalize()
    ds = Dataset.create(dataset_name="data", dataset_project="proj", parent_datasets=[parent])
    ds.add_files(write_tree(tmp / "src", files))
    ds.upload(show_progress=False)
    reg.close_all()  # the child opens the store alone (and so does the next access here)
    return ds


def check_converged(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], ds: Dataset, want: dict
) -> None:
    """Local version final; remote record with the same commit; a fresh clone reads the
    same bytes through the project/name ref."""
    store = reg.open_store()
    rec = reg.require(store, ds.id)
    assert rec.status == reg.FINAL and rec.commit is not None
    assert not rec.finalizing
    remote = remote_of(store)
    pub = remote.get_record(ds.id)
    assert pub is not None and pub.commit == rec.commit and pub.tree == rec.tree
    assert read_tree(Dataset.get(dataset_id=ds.id).get_local_copy()) == want
    home = os.environ["DSVC_HOME"]
    clone = tmp / f"clone-{ds.id[:8]}-{time.monotonic_ns()}"
    machine(monkeypatch, clone, spec)
    got = Dataset.get(dataset_project="proj", dataset_name="data")
    assert got.id == ds.id
    assert read_tree(got.get_local_copy()) == want
    monkeypatch.setenv("DSVC_HOME", home)


def _writes_of_a_clean_finalize(tmp: Path, monkeypatch: pytest.MonkeyPatch, spec: dict) -> int:
    machine(monkeypatch, tmp / "count-home", {**spec, "url": spec["url"] + "-count"})
    ds = uploaded_draft(tmp / "count")
    p = run_child({"id": ds.id})
    assert p.returncode == 0, p.stderr
    n = json.loads(p.stdout)["writes"]
    assert n >= 2  # at least the record and the ref
    return n


def test_finalize_killed_after_each_remote_write_is_retried_to_one_version(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = _writes_of_a_clean_finalize(tmp_path, monkeypatch, fs3_spec)
    want = {**FILES, "p.txt": b"parent"}
    for n in range(1, total + 1):
        spec = {**fs3_spec, "url": f"{fs3_spec['url']}-k{n}"}
        machine(monkeypatch, tmp_path / f"home-{n}", spec)
        ds = uploaded_draft(tmp_path / f"w{n}")
        p = run_child({"id": ds.id, "kill_after": n})
        assert p.returncode == -9, (n, p.returncode, p.stderr)
        reg.close_all()
        ds = Dataset.get(dataset_id=ds.id)
        assert not ds.is_final()
        # the content being finalized can no longer change (it may already be published)
        with pytest.raises(errors.StateError, match="finaliz"):
            ds.add_files(write_tree(tmp_path / f"late{n}", {"late.txt": b"late"}))
        assert ds.finalize() is True
        assert ds.is_final()
        check_converged(tmp_path, monkeypatch, spec, ds, want)


def test_draft_already_published_remotely_becomes_that_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state an older dsvc left after a kill past the remote record: a plain draft,
    edited since, whose id is published on the remote with the pre-edit content."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    machine(monkeypatch, tmp_path / "home", spec)
    ds = uploaded_draft(tmp_path / "w")
    store = reg.open_store()
    remote = remote_of(store)
    rec = reg.require(store, ds.id)
    commit = _put_commit_of(store, rec)
    remote.publish(rec.replace(status=reg.FINAL, commit=commit))
    ds = Dataset.get(dataset_id=ds.id)
    ds.add_files(write_tree(tmp_path / "late", {"late.txt": b"late"}))  # allowed back then
    capsys.readouterr()
    assert ds.finalize() is True
    assert "late.txt" not in ds.list_files()
    assert "already published" in capsys.readouterr().err
    check_converged(tmp_path, monkeypatch, spec, ds, {**FILES, "p.txt": b"parent"})


def _put_commit_of(store: Any, rec: Record) -> bytes:
    from dsvc.finalize import commit_meta as _commit_meta
    from dsvc.objects import Commit

    return store.put_commit(
        Commit(tree=rec.tree, parents=tuple(rec.parent_commits), meta=_commit_meta(rec))
    )


def test_add_files_while_finalize_is_publishing_is_refused_and_nothing_is_stuck(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, tmp_path / "home", fs3_spec)
    ds = uploaded_draft(tmp_path / "w")
    gate = tmp_path / "go"
    child = start_child({"id": ds.id, "pause_file": str(gate)})
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{gate}.reached").exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # the remote record exists now; the draft's content must not move any more
        reg.close_all()
        with pytest.raises(errors.StateError, match="finaliz"):
            Dataset.get(dataset_id=ds.id).add_files(
                write_tree(tmp_path / "late", {"late.txt": b"late"})
            )
        with pytest.raises(errors.StateError, match="finaliz"):
            Dataset.get(dataset_id=ds.id).remove_files("a.txt")
    finally:
        gate.touch()
        out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert json.loads(out)["ok"] is True
    reg.close_all()
    check_converged(tmp_path, monkeypatch, fs3_spec, ds, {**FILES, "p.txt": b"parent"})


def test_add_files_racing_finalize_lands_or_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stress: a child finalizes (auto_upload) while this process adds a file to the same
    draft. Whichever wins, the version is final, and holds the file iff add_files
    returned normally."""
    for trial in range(6):
        spec = {"url": f"file://{tmp_path / f'remote{trial}'}", "options": {}}
        machine(monkeypatch, tmp_path / f"home{trial}", spec)
        ds = uploaded_draft(tmp_path / f"w{trial}")
        late = write_tree(tmp_path / f"late{trial}", {"late.txt": b"late %d" % trial})
        child = start_child({"id": ds.id, "auto_upload": True})
        time.sleep(0.05 * trial)
        landed: list[bool] = []

        def add(did: str, folder: Path, landed: list[bool]) -> None:
            try:
                Dataset.get(dataset_id=did).add_files(folder)
                landed.append(True)
            except errors.StateError:
                landed.append(False)

        t = threading.Thread(target=add, args=(ds.id, late, landed))
        t.start()
        t.join(60)
        out, err = child.communicate(timeout=120)
        reg.close_all()
        if child.returncode != 0 or not json.loads(out)["ok"]:
            # the add landed after the upload: finalize said so; a retry converges
            assert landed == [True], err
            assert Dataset.get(dataset_id=ds.id).finalize(auto_upload=True) is True
        want = {**FILES, "p.txt": b"parent"}
        if landed == [True]:
            want["late.txt"] = b"late %d" % trial
        check_converged(tmp_path, monkeypatch, spec, ds, want)
