"""What goes wrong with remotes, and what the user sees: corrupted packs, unreachable or
misconfigured remotes, hostile trees, stores that ignore conditional writes, and a push
killed with SIGKILL then resumed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import servers
from remote_helpers import (
    all_paths,
    backend,
    count_traffic,
    machine,
    mixed_files,
    rand_bytes,
    read_tree,
    remote_objects,
    remote_of,
    run_script,
    start_script,
    write_tree,
)

from dsvc import codec, registry
from dsvc.dataset import Dataset
from dsvc.errors import (
    ConfigError,
    DsvcError,
    IntegrityError,
    RemoteError,
)
from dsvc.ids import TAG_COMMIT, TAG_TREE, object_id
from dsvc.objects import KIND_CHUNKFILE, KIND_TREE, Commit
from dsvc.remote import client, repo
from dsvc.remote.backend import Backend, ObjectVersion
from dsvc.remote.packs import KIND_CHUNK, KIND_OBJECT, MAGIC, PackBuilder, pack_name


def publish(folder: Path, *, name: str = "data", project: str = "proj") -> Dataset:
    ds = Dataset.create(dataset_name=name, dataset_project=project)
    ds.add_files(str(folder))
    ds.upload(show_progress=False)
    ds.finalize()
    return ds


def snapshot(store: Any) -> tuple[Any, ...]:
    """What a failed remote operation must not change in the local store."""
    return (
        sorted((r.id, r.status, r.uploaded_tree) for r in registry.all_records(store)),
        store.stats()["chunks"],
        store.stats().get("objects"),
    )


# ---------------------------------------------------------------------- integrity


def test_a_corrupted_pack_byte_is_an_integrity_error_naming_the_file(
    remote_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = mixed_files(seed=5)
    store_a = machine(monkeypatch, tmp_path / "home-a", remote_spec)
    ds = publish(write_tree(tmp_path / "src", files))

    # flip one byte in the middle of the last chunk of big/random.bin
    target_chunk = store_a.file_chunks(ds._files()["big/random.bin"])[-1][0]
    b = backend(remote_spec)
    victim = rand_chunk = None
    for key in remote_objects(remote_spec, "packs/"):
        if not key.endswith(".idx"):
            continue
        for oid, kind, off, length in msgpack.unpackb(b.get(key), raw=False)["entries"]:
            if kind == KIND_CHUNK and bytes(oid) == target_chunk:
                victim, rand_chunk = key[: -len(".idx")] + ".pack", (off, length)
                break
    assert victim is not None and rand_chunk is not None
    data = bytearray(b.get(victim))
    data[rand_chunk[0] + rand_chunk[1] // 2] ^= 0x40
    b.put(victim, bytes(data))

    store_b = machine(monkeypatch, tmp_path / "home-b", remote_spec)
    got = Dataset.get(dataset_id=ds.id)
    with pytest.raises(IntegrityError) as err:
        got.get_local_copy()
    msg = str(err.value)
    assert "big/random.bin" in msg and Path(victim).stem in msg, msg
    assert not (store_b.home / "cache" / "datasets" / ds.id).exists()
    with pytest.raises(IntegrityError):
        got.get_mutable_local_copy(tmp_path / "out")
    # the files that are intact can still be fetched
    assert read_tree(got.get_local_copy(files=["tiny.txt"])) == {"tiny.txt": b"x"}


# ---------------------------------------------------------------------- unreachable remotes


def _bad_remote(kind: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], str]:
    if kind == "down":
        port = servers.free_port()  # nothing listens there
        opts = servers.s3_options(f"http://{servers.HOST}:{port}")
        return {"url": "s3://dsvc-test/x", "options": opts}, "cannot reach"
    if kind == "no-bucket":
        srv = request.getfixturevalue("s3_server")
        return {"url": "s3://no-such-bucket-dsvc/x", "options": srv["options"]}, "does not exist"
    if kind == "no-container":
        srv = request.getfixturevalue("azure_server")
        return {"url": "az://no-such-container/x", "options": srv["options"]}, "does not exist"
    assert kind == "bad-key"
    srv = request.getfixturevalue("azure_server")
    opts = {**srv["options"], "account_key": "d3Jvbmcta2V5" * 8}
    return {"url": f"az://{srv['bucket']}/x", "options": opts}, "access denied"


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["down", "no-bucket", "no-container", "bad-key"])
def test_unusable_remote_is_a_clear_error_and_changes_nothing_locally(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec, hint = _bad_remote(kind, request)
    store = machine(monkeypatch, tmp_path / "home", spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", {"a.bin": rand_bytes(10_000, 1)})))
    before = snapshot(store)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        ds.upload(show_progress=False)
    assert time.monotonic() - t0 < 30  # within the retry budget
    msg = str(err.value)
    assert hint in msg and spec["url"].split("/")[2] in msg, msg
    for secret in (servers.S3_SECRET, spec["options"].get("account_key", "unset-secret")):
        assert secret not in msg
    assert "\n" not in msg
    assert snapshot(store) == before
    with pytest.raises(DsvcError, match="not uploaded"):
        ds.finalize()
    assert snapshot(store) == before

    # a fresh machine looking for a version gets the same clear error; a search by
    # name warns about the remote and goes on with the local store
    machine(monkeypatch, tmp_path / "home-b", spec)
    with pytest.raises(RemoteError, match=hint):
        Dataset.get(dataset_id=ds.id)
    capsys.readouterr()
    with pytest.raises(DsvcError):
        Dataset.get(dataset_project="proj", dataset_name="data")
    assert hint in capsys.readouterr().err


def test_remote_down_in_the_middle_of_a_fetch_is_a_remote_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    machine(monkeypatch, tmp_path / "home-a", spec)
    ds = publish(write_tree(tmp_path / "src", {"a.bin": rand_bytes(50_000, 1)}))
    store_b = machine(monkeypatch, tmp_path / "home-b", spec)
    got = Dataset.get(dataset_id=ds.id)
    for p in (tmp_path / "remote" / "packs").glob("*.pack"):
        p.unlink()  # the packs vanish after the index was read
    before = snapshot(store_b)
    with pytest.raises(DsvcError) as err:
        got.get_local_copy()
    assert "pack" in str(err.value)
    assert snapshot(store_b) == before
    assert not (store_b.home / "cache" / "datasets" / ds.id).exists()


# ---------------------------------------------------------------------- hostile remote


def _craft_hostile_version(spec: dict[str, Any], store: Any, bad_name: str, nested: bool) -> str:
    """Add to the remote a version whose tree names a file ``bad_name``: a pack with the
    chunk, the trees and the commit, its index, a record and a ref -- all with valid ids,
    so only name validation stands between the tree and the file system."""
    b = backend(spec)
    payload = b"pwned\n" * 10
    cid = object_id(b"C", payload)
    evil = msgpack.packb([[bad_name, KIND_CHUNKFILE, cid, len(payload), 0o644]], use_bin_type=True)
    evil_id = object_id(TAG_TREE, evil)
    values = [(cid, KIND_CHUNK, codec.encode_frame(payload, 0))]
    values.append((evil_id, KIND_OBJECT, TAG_TREE + codec.encode_frame(evil, 0)))
    root_id = evil_id
    if nested:
        root = msgpack.packb([["sub", KIND_TREE, evil_id, 0, 0]], use_bin_type=True)
        root_id = object_id(TAG_TREE, root)
        values.append((root_id, KIND_OBJECT, TAG_TREE + codec.encode_frame(root, 0)))
    commit = Commit(tree=root_id, parents=(), meta={"name": "evil"}).encode()
    commit_id = object_id(TAG_COMMIT, commit)
    values.append((commit_id, KIND_OBJECT, TAG_COMMIT + codec.encode_frame(commit, 0)))
    pb = PackBuilder()
    for oid, kind, value in values:
        pb.add(oid, kind, value)
    pid, data, index = pb.finish()
    assert data.startswith(MAGIC)
    b.put(f"packs/{pack_name(pid)}.pack", data)
    b.put(f"packs/{pack_name(pid)}.idx", index)
    honest = next(iter(remote_objects(spec, "datasets/")))
    rec = msgpack.unpackb(b.get(honest), raw=False)
    evil_rec_id = "e" * 32
    rec.update(
        id=evil_rec_id, tree=root_id, commit=commit_id, name="evil", version="6.6.6", created=1
    )
    b.put(f"datasets/{evil_rec_id}", msgpack.packb(rec, use_bin_type=True))
    client.Remote(store, None, spec["url"], spec["options"]).update_ref(
        "proj", "evil", evil_rec_id, "6.6.6"
    )
    return evil_rec_id


@pytest.mark.parametrize(
    ("bad_name", "nested"),
    [
        ("../evil", False),
        ("../evil", True),
        ("/abs-evil", False),
        ("..", True),
        ("a/../../x", True),
    ],
)
def test_hostile_tree_names_cannot_write_outside_the_target(
    bad_name: str, nested: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    store_a = machine(monkeypatch, tmp_path / "home-a", spec)
    publish(write_tree(tmp_path / "src", {"ok.txt": b"fine"}))
    evil_id = _craft_hostile_version(spec, store_a, bad_name, nested)

    work = tmp_path / "victim"
    work.mkdir()
    home_b = work / "home"
    machine(monkeypatch, home_b, spec)
    def outside_home() -> set[str]:  # what the victim has outside its own store folder
        return {p for p in all_paths(tmp_path) if not p.startswith("victim/home")}

    before = outside_home()
    out = work / "out" / "target"
    for attempt in (
        lambda: Dataset.get(dataset_id=evil_id).get_local_copy(),
        lambda: Dataset.get(dataset_project="proj", dataset_name="evil").get_local_copy(),
        lambda: Dataset.get(dataset_id=evil_id).get_mutable_local_copy(out),
    ):
        with pytest.raises(DsvcError) as err:
            attempt()
        assert isinstance(err.value, IntegrityError | ValueError), err.value
    after = outside_home()
    assert after - before <= {"victim/out", "victim/out/target"}
    assert not list(tmp_path.rglob("*evil*")) or all(
        "remote" in p.parts or "evil" not in p.name for p in tmp_path.rglob("*evil*")
    )
    for p in home_b.rglob("*"):
        assert "pwned" not in (
            p.read_text(errors="ignore") if p.is_file() and "cache" in p.parts else ""
        )


# ---------------------------------------------------------------------- conditional writes


class IgnoresConditions(Backend):
    """A store that accepts If-None-Match / If-Match and ignores them (old S3 clones)."""

    def create(self, key: str, data: bytes) -> bool:
        self.put(key, data)
        return True

    def compare_and_swap(
        self, key: str, data: bytes, expected: ObjectVersion | None
    ) -> ObjectVersion:
        return self.put(key, data)


@pytest.mark.parametrize("initialized", [False, True])
def test_a_store_that_ignores_conditional_writes_is_refused(
    initialized: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    if initialized:  # an honest client set the remote up; a lying one must still be refused
        machine(monkeypatch, tmp_path / "home-0", spec)
        publish(write_tree(tmp_path / "src0", {"a": b"a"}), name="first")
    before = remote_objects(spec)
    monkeypatch.setattr(repo, "Backend", IgnoresConditions)
    store = machine(monkeypatch, tmp_path / "home", spec)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src", {"a.bin": b"1234" * 100})))
    snap = snapshot(store)
    with pytest.raises(ConfigError, match="ignores conditional writes"):
        ds.upload(show_progress=False)
    assert remote_objects(spec) == before  # nothing written (the probe cleaned up)
    assert snapshot(store) == snap


# ---------------------------------------------------------------------- kill -9, resume


def _wait_for(cond: Any, timeout: float, proc: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"pusher exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_push_killed_with_sigkill_resumes_without_resending_finished_packs(
    fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1 is on the remote; v2 (24 MiB of new content, 1 MiB packs) is pushed by a
    # subprocess that we SIGKILL after some packs are complete
    home = tmp_path / "home"
    machine(monkeypatch, home, fs3_spec)
    v1 = publish(write_tree(tmp_path / "v1", {"base.bin": rand_bytes(500_000, 1)}))
    files = {f"f{i:02d}.bin": rand_bytes(1_000_000, 10 + i) for i in range(24)}
    src = write_tree(tmp_path / "v2", files)
    args = {
        **fs3_spec,
        "folder": str(src),
        "project": "proj",
        "name": "data",
        "chunk_mb": 1,
        "put_delay": 0.15,
    }
    proc = start_script("push", args, home=home)
    idx = lambda: [k for k in remote_objects(fs3_spec, "packs/") if k.endswith(".idx")]  # noqa: E731
    n_before = len(idx())
    try:
        _wait_for(lambda: len(idx()) >= n_before + 4, 60, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    draft_id = proc.stdout.read().split()[0] if proc.stdout else ""
    assert proc.returncode == -signal.SIGKILL
    finished = {k[: -len(".idx")] + ".pack" for k in idx()}
    on_remote = remote_objects(fs3_spec, "packs/")
    assert all(k in on_remote for k in finished)  # no index without its pack

    # the remote is still valid: v1 comes back complete on a fresh machine, and the
    # half-pushed version is not visible anywhere
    machine(monkeypatch, tmp_path / "fresh", fs3_spec)
    assert [d["id"] for d in Dataset.list_datasets(dataset_project="proj")] == [v1.id]
    assert read_tree(Dataset.get(dataset_id=v1.id).get_local_copy()) == {
        "base.bin": rand_bytes(500_000, 1)
    }

    # resume in the killed store: finished packs are not sent again
    store = machine(monkeypatch, home, fs3_spec)
    draft = Dataset.get(dataset_id=draft_id)
    with count_traffic(remote_of(store).backend) as t:
        draft.upload(show_progress=False, chunk_size=1)
    assert not set(t.packs_sent) & finished
    sent_before = sum(on_remote[k] for k in finished)
    total = sum(map(len, files.values()))
    assert t.pack_bytes_sent <= total - sent_before + 2 * (1 << 20)
    assert t.pack_bytes_sent + sent_before >= total
    draft.finalize()

    machine(monkeypatch, tmp_path / "fresh-2", fs3_spec)
    got = Dataset.get(dataset_project="proj", dataset_name="data")
    assert got.id == draft_id
    assert read_tree(got.get_local_copy()) == files


@pytest.mark.slow
def test_push_killed_repeatedly_always_leaves_a_valid_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the pusher at random moments (including during publish); every time, a fresh
    machine sees only complete versions, and the last re-run completes."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    files = {f"f{i}.bin": rand_bytes(300_000, 40 + i) for i in range(8)}
    src = write_tree(tmp_path / "src", files)
    args = {**spec, "folder": str(src), "project": "proj", "name": "data", "chunk_mb": 1}
    args["put_delay"] = 0.1  # packs trickle out: the kills land at different stages
    for i, delay in enumerate((0.9, 1.3, 1.8)):
        proc = start_script("push", {**args, "version": f"1.0.{i}"}, home=tmp_path / f"h{i}")
        time.sleep(delay)
        proc.kill()
        proc.wait()
        store = machine(monkeypatch, tmp_path / f"check{i}", spec)
        for d in Dataset.list_datasets(dataset_project="proj"):
            assert read_tree(Dataset.get(dataset_id=d["id"]).get_local_copy()) == files
        del store
    done = run_script("push", {**args, "version": "2.0.0"}, home=tmp_path / "last")
    assert done.returncode == 0, done.stderr
    machine(monkeypatch, tmp_path / "final", spec)
    got = Dataset.get(dataset_project="proj", dataset_name="data", dataset_version="2.0.0")
    assert read_tree(got.get_local_copy()) == files
