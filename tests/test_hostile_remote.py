"""A hostile (or broken) remote: someone with write access rewrites records, refs,
marks, indexes, dsvc.json and packs. The client must refuse with a dsvc error that
names the object, never write outside the folders it was asked for, never exhaust
memory or the stack, and never let a remote's text drive the terminal (issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from remote_helpers import (
    all_paths,
    backend,
    machine,
    remote_objects,
    remote_of,
    write_tree,
)

from dsvc import codec
from dsvc.dataset import Dataset
from dsvc.errors import ConfigError, DsvcError, IntegrityError, NotFoundError
from dsvc.ids import TAG_COMMIT, TAG_TREE, chunk_id, object_id
from dsvc.objects import KIND_CHUNKFILE, KIND_TREE, Commit
from dsvc.remote import client, fetch
from dsvc.remote.packs import KIND_CHUNK, KIND_OBJECT, PackBuilder, pack_name

HERE = Path(__file__).resolve().parent


def publish(folder: Path, *, name: str = "data", project: str = "proj") -> Dataset:
    ds = Dataset.create(dataset_name=name, dataset_project=project)
    ds.add_files(str(folder))
    ds.upload(show_progress=False)
    ds.finalize()
    return ds


def honest_setup(
    spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """Machine A publishes proj/data; returns (its id, the record's key on the remote)."""
    machine(monkeypatch, tmp_path / "home-a", spec)
    ds = publish(write_tree(tmp_path / "src", {"a.txt": b"alpha", "d/b.txt": b"beta" * 50}))
    return ds.id, f"datasets/{ds.id}"


def victim(spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "victim" / "home"
    machine(monkeypatch, home, spec)
    return home


def rewrite(spec: dict[str, Any], key: str, change: Any) -> None:
    """Replace the object ``key`` on the remote: ``change`` maps its decoded value to
    the new value (bytes are written as they are)."""
    b = backend(spec)
    cur = msgpack.unpackb(b.get(key), raw=False)
    new = change(cur)
    b.put(key, new if isinstance(new, bytes) else msgpack.packb(new, use_bin_type=True))


# ---------------------------------------------------------------------- item 1


@pytest.mark.parametrize("evil", ["ABS", "../../..", "../escape"])
def test_a_record_id_that_is_a_path_is_refused_and_writes_nothing_outside(
    evil: str, fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    did, key = honest_setup(fs3_spec, tmp_path, monkeypatch)
    existing = tmp_path / "precious"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    target = str(existing) if evil == "ABS" else evil
    rewrite(fs3_spec, key, lambda r: {**r, "id": target})
    home = victim(fs3_spec, tmp_path, monkeypatch)
    before = all_paths(tmp_path) - all_paths(home)

    with pytest.raises(IntegrityError, match=key):
        Dataset.get(dataset_id=did).get_local_copy()
    # by name the bad record is skipped (reported), so the version is not found
    with pytest.raises(NotFoundError):
        Dataset.get(dataset_project="proj", dataset_name="data").get_local_copy()
    with pytest.raises(DsvcError):
        Dataset.get(dataset_id=did).get_mutable_local_copy(tmp_path / "victim" / "out")

    assert all_paths(tmp_path) - all_paths(home) - before <= {"victim/out"}
    assert sorted(os.listdir(existing)) == ["keep.txt"]
    assert not (home / "cache" / "datasets").exists() or not any(
        (home / "cache" / "datasets").iterdir()
    )


def test_record_checks_every_field() -> None:
    from dsvc.record import Record

    good = {
        "id": "a" * 32,
        "name": "n",
        "project": "p",
        "status": "final",
        "tree": b"t" * 16,
        "commit": b"c" * 16,
        "created": 1,
        "future_field": [1, 2],
    }
    rec = Record.from_msgpack(msgpack.packb(good), "datasets/" + "a" * 32, expect_id="a" * 32)
    assert rec.id == "a" * 32 and rec.tree == b"t" * 16 and rec.tags == []
    assert rec.extra == {"future_field": [1, 2]}  # kept for a newer dsvc's sake
    again = Record.from_msgpack(rec.to_msgpack(), "k", finalized=True)
    assert again == rec
    bad_cases = [
        ("id", "A" * 32),
        ("id", 12),
        ("id", "b" * 32),  # not the key's id
        ("version", 3),
        ("tree", b"short"),
        ("tree", None),
        ("created", -1),
        ("created", "yesterday"),
        ("status", "weird"),
        ("parents", ["../x"]),
        ("tags", "notalist"),
        ("metadata", [1]),
        ("archived", "yes"),
        ("commit", None),  # a remote only holds finalized versions
    ]
    for field, value in bad_cases:
        with pytest.raises(IntegrityError, match="datasets/k1") as err:
            Record.from_dict(
                {**good, field: value}, "datasets/k1", expect_id="a" * 32, finalized=True
            )
        assert field in str(err.value)
    for missing in ("tree", "created", "name", "id"):
        raw = {k: v for k, v in good.items() if k != missing}
        with pytest.raises(IntegrityError, match=f"'{missing}' is missing"):
            Record.from_dict(raw, "datasets/k1")
    with pytest.raises(IntegrityError, match="datasets/k1"):
        Record.from_msgpack(b"\xc1\x00", "datasets/k1")
    with pytest.raises(IntegrityError, match="a map was expected"):
        Record.from_msgpack(msgpack.packb([1, 2]), "datasets/k1")


# ---------------------------------------------------------------------- item 3


@pytest.mark.parametrize(
    "bad",
    ["list", "two-bytes", "no-tree", "no-created", "int-version", "int-id", "key-not-an-id"],
)
def test_one_malformed_record_is_reported_once_and_skipped(
    bad: str,
    fs3_spec: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    did, key = honest_setup(fs3_spec, tmp_path, monkeypatch)
    b = backend(fs3_spec)
    bad_key = f"datasets/{'f' * 32}" if bad != "key-not-an-id" else "datasets/not-an-id"
    honest = msgpack.unpackb(b.get(key), raw=False)
    value = {
        "list": msgpack.packb([1, 2, 3]),
        "two-bytes": b"\x92\x01",
        "no-tree": {**honest, "id": "f" * 32, "tree": None},
        "no-created": {k: v for k, v in {**honest, "id": "f" * 32}.items() if k != "created"},
        "int-version": {**honest, "id": "f" * 32, "version": 7},
        "int-id": {**honest, "id": 7},
        "key-not-an-id": msgpack.packb(honest),
    }[bad]
    b.put(bad_key, value if isinstance(value, bytes) else msgpack.packb(value))
    victim(fs3_spec, tmp_path, monkeypatch)
    capsys.readouterr()

    # every client of the remote keeps working: list, create, get by name
    assert [d["id"] for d in Dataset.list_datasets(dataset_project="proj")] == [did]
    child = Dataset.create(dataset_name="data", dataset_project="proj")
    assert child.version == "1.0.1"
    assert Dataset.get(dataset_project="proj", dataset_name="data", only_completed=True).id == did
    err = capsys.readouterr().err
    assert err.count(bad_key) == 1, err  # reported once, naming the key
    if bad != "key-not-an-id":
        with pytest.raises(IntegrityError, match=bad_key):
            remote_of(child._store).get_record("f" * 32)


def test_dsvc_create_on_the_cli_survives_a_malformed_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    honest_setup(spec, tmp_path, monkeypatch)
    backend(spec).put(f"datasets/{'f' * 32}", b"\x92\x01")
    # listed in the name's ref too: lookups by name read the ref's records, not every one
    (ref_key,) = [k for k in remote_objects(spec, "refs/")]
    ref = msgpack.unpackb(backend(spec).get(ref_key), raw=False)
    ref["versions"]["f" * 32] = "9.9.9"
    backend(spec).put(ref_key, msgpack.packb(ref))
    home = victim(spec, tmp_path, monkeypatch)
    env = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "dsvc", "create", "--project", "proj", "--name", "data"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert f"datasets/{'f' * 32}" in out.stderr


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (b"[1, 2]", IntegrityError),
        (b'{"format": 1, "chunker": {}, "id": true}', IntegrityError),
        (b'{"format": "1", "chunker": {}}', IntegrityError),
        (b'{"format": 1, "chunker": []}', IntegrityError),
        (b"not json", IntegrityError),
        (b'{"format": 99, "chunker": {}}', ConfigError),
    ],
)
def test_a_malformed_dsvc_json_is_a_dsvc_error(
    doc: bytes,
    error: type[Exception],
    fs3_spec: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    did, _ = honest_setup(fs3_spec, tmp_path, monkeypatch)
    backend(fs3_spec).put("dsvc.json", doc)
    victim(fs3_spec, tmp_path, monkeypatch)
    with pytest.raises(error, match="dsvc.json|format"):
        Dataset.get(dataset_id=did)
    with pytest.raises(error):
        Dataset.list_datasets()


@pytest.mark.parametrize(
    "marks",
    [
        [1, 2],
        {"marked": [1], "deleting": {}},
        {"marked": {"../../x": 1.0}, "deleting": {}},
        {"marked": {"a" * 32: "soon"}, "deleting": {}},
        {"marked": {}, "deleting": {"zz" * 16: 1.0}},
    ],
)
def test_malformed_gc_marks_are_an_integrity_error(
    marks: Any, fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest_setup(fs3_spec, tmp_path, monkeypatch)
    backend(fs3_spec).put("gc/marks", msgpack.packb(marks))
    store = victim(fs3_spec, tmp_path, monkeypatch)
    del store
    ds = Dataset.create(dataset_name="other", dataset_project="proj")
    src = write_tree(tmp_path / "src2", {"x.txt": b"x"})
    ds.add_files(str(src))
    with pytest.raises(IntegrityError, match="gc/marks"):
        ds.upload(show_progress=False)
    r = remote_of(ds._store)
    with pytest.raises(IntegrityError, match="gc/marks"):
        r.gc(grace_seconds=0)


def _index_keys(spec: dict[str, Any]) -> list[str]:
    return [k for k in remote_objects(spec, "packs/") if k.endswith(".idx")]


@pytest.mark.parametrize(
    "damage",
    ["length-2^32", "offset-negative", "entries-dict", "entry-short", "index-list", "kind-str"],
)
def test_a_malformed_pack_index_is_an_integrity_error(
    damage: str, fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    did, _ = honest_setup(fs3_spec, tmp_path, monkeypatch)

    def change(idx: dict[str, Any]) -> Any:
        e = idx["entries"]
        if damage == "length-2^32":
            e[0][3] = 1 << 32
        elif damage == "offset-negative":
            e[0][2] = -5
        elif damage == "entries-dict":
            idx["entries"] = {"a": 1}
        elif damage == "entry-short":
            e[0] = e[0][:2]
        elif damage == "index-list":
            return [1]
        elif damage == "kind-str":
            e[0][1] = "chunk"
        return idx

    for k in _index_keys(fs3_spec):
        rewrite(fs3_spec, k, change)
    victim(fs3_spec, tmp_path, monkeypatch)
    with pytest.raises(IntegrityError, match=r"\.idx is malformed"):
        Dataset.get(dataset_id=did).get_local_copy()


@pytest.mark.parametrize(
    "ref",
    [
        [1],
        {"project": "proj", "name": "data", "versions": [1]},
        {"project": "proj", "name": "data", "versions": {"../x": "1.0.0"}},
        {"project": 5, "name": "data", "versions": {}},
        {"project": "proj", "name": "data", "versions": {"a" * 32: 3}},
    ],
)
def test_a_malformed_ref_is_an_integrity_error(
    ref: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    honest_setup(spec, tmp_path, monkeypatch)
    (key,) = [k for k in remote_objects(spec, "refs/")]
    backend(spec).put(key, msgpack.packb(ref))
    victim(spec, tmp_path, monkeypatch)
    ds = Dataset.create(dataset_name="data", dataset_project="proj")
    ds.add_files(str(write_tree(tmp_path / "src2", {"x.txt": b"x"})))
    ds.upload(show_progress=False)
    with pytest.raises(IntegrityError, match="refs/names/proj/data"):
        ds.finalize()
    r = remote_of(ds._store)
    with pytest.raises(IntegrityError, match="refs/names/proj/data"):
        r.read_ref("proj", "data")


def test_gc_refuses_to_run_past_a_malformed_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping a record there would delete the packs it references."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    honest_setup(spec, tmp_path, monkeypatch)
    backend(spec).put(f"datasets/{'f' * 32}", b"\x92\x01")
    packs = {k for k in remote_objects(spec, "packs/")}
    store = victim(spec, tmp_path, monkeypatch)
    del store
    ds_store = Dataset.create(dataset_name="x", dataset_project="proj")._store
    with pytest.raises(IntegrityError, match="gc needs every record"):
        remote_of(ds_store).gc(grace_seconds=0)
    assert {k for k in remote_objects(spec, "packs/")} == packs


# ---------------------------------------------------------------------- crafting


def craft_version(
    spec: dict[str, Any],
    store: Any,
    root: bytes,
    values: list[tuple[bytes, int, bytes]],
    *,
    name: str = "evil",
) -> str:
    """Publish on the remote, as an attacker would, a version whose root tree is ``root``
    with the stored ``values`` in one pack (plus its commit), a record and a ref; returns
    the version's id. Needs one honest version on the remote (its record is the model)."""
    b = backend(spec)
    commit = Commit(tree=root, parents=(), meta={"name": name}).encode()
    commit_id = object_id(TAG_COMMIT, commit)
    pb = PackBuilder()
    for oid, kind, value in [*values, (commit_id, KIND_OBJECT, TAG_COMMIT + b"\x00" + commit)]:
        pb.add(oid, kind, value)
    pid, data, index = pb.finish()
    b.put(f"packs/{pack_name(pid)}.pack", data)
    b.put(f"packs/{pack_name(pid)}.idx", index)
    honest = next(k for k in remote_objects(spec, "datasets/"))
    rec = msgpack.unpackb(b.get(honest), raw=False)
    evil_id = object_id(b"x", name.encode()).hex()
    rec.update(id=evil_id, tree=root, commit=commit_id, name=name, version="6.6.6", created=1)
    b.put(f"datasets/{evil_id}", msgpack.packb(rec, use_bin_type=True))
    client.Remote(store, None, spec["url"], spec["options"]).update_ref(
        "proj", name, evil_id, "6.6.6"
    )
    return evil_id


def tree_value(entries: list[list[Any]]) -> tuple[bytes, bytes]:
    """(id, stored value) of a tree with ``entries`` (sorted by the caller)."""
    data = msgpack.packb(entries, use_bin_type=True)
    return object_id(TAG_TREE, data), TAG_TREE + b"\x00" + data


# ---------------------------------------------------------------------- item 2

BOMB = 128 << 20  # what each frame expands to
FRAMES = 12

_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from dsvc.dataset import Dataset
    from dsvc.errors import DsvcError
    out = {}
    try:
        ds = Dataset.get(dataset_id=sys.argv[1])
        if sys.argv[2] == "cached":
            ds.get_local_copy()
        else:
            ds.get_mutable_local_copy(sys.argv[3])
        out["error"] = None
    except DsvcError as e:
        out["error"], out["message"] = type(e).__name__, str(e)
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Linux carries ru_maxrss across fork+exec (the test process's own peak would
    # count); VmHWM is the peak of this process's memory alone
    try:
        with open("/proc/self/status") as f:
            hwm = [l for l in f if l.startswith("VmHWM:")][0].split()[1]
        out["peak_mib"] = int(hwm) / 1024
    except OSError:
        out["peak_mib"] = out["maxrss_mib"]
    print(json.dumps(out))
    """
)


def _zstd(data: bytes) -> bytes:
    frame = codec._compressor(1).compress(data)  # declares its content size
    assert len(frame) < 8 << 10
    return frame


def run_measured(home: Path, evil_id: str, how: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(HERE.parent)}
    env.pop("DSVC_REMOTE", None)
    env["DSVC_QUIET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, evil_id, how, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("as_kind", ["chunks", "trees"])
@pytest.mark.parametrize("how", ["cached", "mutable"])
def test_decompression_bombs_are_refused_with_bounded_memory(
    as_kind: str, how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~50 KB pack of zstd frames that each expand to 128 MiB: before the fix,
    get_local_copy decompressed all of them at once (1.5 GiB RSS)."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    honest_setup(spec, tmp_path, monkeypatch)
    store = machine(monkeypatch, tmp_path / "home-a", spec)
    if as_kind == "chunks":
        # a root tree of files whose single chunks are the bombs: real content with its
        # real id (so every frame verifies), just far larger than any chunk can be
        ids, values = [], []
        for n in range(FRAMES):  # one at a time: this process stays small too
            content = bytes([n]) * BOMB
            ids.append(chunk_id(content))
            values.append((ids[-1], KIND_CHUNK, b"\x01" + _zstd(content)))
            del content
        entries = [[f"f{n:02d}", KIND_CHUNKFILE, i, BOMB, 0o644] for n, i in enumerate(ids)]
    else:
        # a root tree of folders whose trees are the bombs (they declare 128 MiB, within
        # the tree bound: decompressed one budget at a time, then refused by their ids)
        frame = _zstd(bytes(BOMB))
        ids = [object_id(TAG_TREE, b"%d" % i) for i in range(FRAMES)]
        values = [(i, KIND_OBJECT, TAG_TREE + b"\x01" + frame) for i in ids]
        entries = [[f"d{n:02d}", KIND_TREE, i, BOMB, 0] for n, i in enumerate(ids)]
    root, root_value = tree_value(entries)
    evil = craft_version(spec, store, root, [*values, (root, KIND_OBJECT, root_value)])
    pack_bytes = sum(v for k, v in remote_objects(spec, "packs/").items() if k.endswith("pack"))
    assert pack_bytes < 200 << 10

    home = tmp_path / "victim"
    machine(monkeypatch, home, spec)
    got = run_measured(home, evil, how, tmp_path / "out")
    assert got["error"] == "IntegrityError", got
    assert "declares" in got["message"] or "does not match" in got["message"], got
    # the budget: one 128 MiB payload at a time at most, plus the interpreter
    assert got["peak_mib"] < 450, got


def test_fetch_threads_share_one_bound_on_decompressed_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    machine(monkeypatch, tmp_path / "home-a", spec)
    files = {f"t{i}.csv": (b"%d,row,%d\n" % (i, i)) * 150_000 for i in range(8)}  # ~1.6 MB
    ds = publish(write_tree(tmp_path / "src", files))
    budget = codec.MemoryBudget(2 << 20)
    monkeypatch.setattr(fetch, "_decode_budget", budget)
    machine(monkeypatch, tmp_path / "victim", spec)
    out = Dataset.get(dataset_id=ds.id).get_local_copy(max_workers=8)
    assert {p.name: p.read_bytes() for p in Path(out).iterdir()} == files
    assert 0 < budget.peak <= 2 << 20  # every decompressed value went through it
    assert budget.used == 0


def test_memory_budget_bounds_concurrent_holders() -> None:
    import threading
    import time

    budget = codec.MemoryBudget(10)
    inside: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with budget.hold(n):
            with lock:
                inside.append(budget.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(n,)) for n in (4, 4, 4, 4, 25, 3, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(inside) == 7 and budget.used == 0
    # several held at once, never beyond the limit except one request larger than it alone
    assert max(u for u in inside if u <= 10) > 4
    assert all(u <= 10 or u == 25 for u in inside)


def test_frames_are_bounded_by_their_type_and_their_header() -> None:
    big = bytes(2 << 20)
    frame = b"\x01" + codec._compressor(1).compress(big)
    cid = chunk_id(big)
    assert codec.decode_frame(frame, b"C", cid) == big  # within the format's chunk bound
    with pytest.raises(IntegrityError, match="declares 2097152"):
        codec.decode_frame(frame, b"C", cid, limit=1 << 20)  # the store's chunker max
    with pytest.raises(IntegrityError, match="more than the format allows"):
        codec.decode_frame(b"\x00" + big, b"C", cid, limit=1 << 20)
    no_size = b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(IntegrityError, match="declares no content size"):
        codec.decode_frame(no_size, b"C", chunk_id(b"x" * 100))
    for tag, bound in codec.LIMITS.items():
        assert codec.payload_limit(tag) == bound
        assert codec.payload_limit(tag, 5) == 5


# ---------------------------------------------------------------------- item 4

DEPTH = 1_100


def deep_values(depth: int, payload: bytes = b"deep\n") -> tuple[bytes, list[tuple]]:
    """A chain of ``depth`` folders ``d/d/.../d`` holding one file ``f``: (root id,
    stored values: the chunk and every tree)."""
    cid = chunk_id(payload)
    values: list[tuple[bytes, int, bytes]] = [(cid, KIND_CHUNK, b"\x00" + payload)]
    tid, value = tree_value([["f", KIND_CHUNKFILE, cid, len(payload), 0o644]])
    values.append((tid, KIND_OBJECT, value))
    for _ in range(depth):
        tid, value = tree_value([["d", KIND_TREE, tid, len(payload), 0]])
        values.append((tid, KIND_OBJECT, value))
    return tid, values


def rm_deep(top: Path) -> None:
    """Remove what is in ``top`` at any depth (shutil.rmtree, and so pytest's own
    clean-up of old temporary folders, recurses and fails on a 1,100-deep folder)."""
    stack: list[tuple[str, bool]] = [(e.path, False) for e in os.scandir(top)]
    while stack:
        d, emptied = stack.pop()
        if os.path.islink(d) or not os.path.isdir(d):
            os.unlink(d)
        elif emptied:
            os.rmdir(d)
        else:
            os.chmod(d, 0o700)  # cached copies are read-only
            stack.append((d, True))
            stack.extend((e.path, False) for e in os.scandir(d))


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Any:
    yield tmp_path
    rm_deep(tmp_path)


def test_a_deep_remote_tree_is_walked_without_recursion(
    deep_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = deep_tmp
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    honest_setup(spec, tmp_path, monkeypatch)
    store = machine(monkeypatch, tmp_path / "home-a", spec)
    root, values = deep_values(DEPTH)
    evil = craft_version(spec, store, root, values, name="deep")
    assert len(msgpack.packb(values)) < 80 << 10  # about 50 KB of trees

    machine(monkeypatch, tmp_path / "v", spec)
    deep_path = "/".join(["d"] * DEPTH + ["f"])
    ds = Dataset.get(dataset_id=evil)
    assert ds.list_files() == [deep_path]
    copy = ds.get_local_copy()
    assert (Path(copy) / deep_path).read_bytes() == b"deep\n"
    out = tmp_path / "m"
    ds.get_mutable_local_copy(out)
    assert (out / deep_path).read_bytes() == b"deep\n"
    ds.get_mutable_local_copy(out, overwrite=True)  # the old copy is removed
    assert (out / deep_path).read_bytes() == b"deep\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["home-a", "m", "remote", "src", "v"]
    child = Dataset.create(dataset_name="deep2", dataset_project="proj", parent_datasets=[ds, ds])
    child.remove_files(deep_path)
    assert child.list_files() == [] and child.list_removed_files() == [deep_path]
    r = remote_of(ds._store)
    assert r.gc(grace_seconds=0)["packs_deleted"] == 0
    from dsvc import maintenance, registry

    registry.remove(ds._store, evil)  # forgotten locally: local gc drops its cached copy
    assert maintenance.local_gc(ds._store)["cached_copies_deleted"] == 1
    assert not Path(copy).exists()


def test_treeops_handle_deep_trees_iteratively(tmp_path: Path) -> None:
    from dsvc.objects import Entry
    from dsvc.store import Store
    from dsvc.treeops import Trees, apply_edits, diff, merge, walk, walk_dirs

    store = Store(tmp_path / "s")
    try:
        trees = Trees(store)
        with store.batch() as b:
            trees.batch = b
            f1 = Entry(KIND_CHUNKFILE, chunk_id(b"1"), 1, 0o644)
            f2 = Entry(KIND_CHUNKFILE, chunk_id(b"22"), 2, 0o644)
            path = ("d",) * 1500
            a = apply_edits(trees, trees.ensure_empty(), {(*path, "x"): f1})
            b_ = apply_edits(trees, a, {(*path, "y"): f2})
            c = apply_edits(trees, a, {(*path, "x"): f2})
            assert list(walk(trees, b_)) == [((*path, "x"), f1), ((*path, "y"), f2)]
            assert len(list(walk_dirs(trees, a))) == 1501
            assert [(ch.path[-1], ch.status) for ch in diff(trees, a, b_)] == [("y", "added")]
            assert [ch.status for ch in diff(trees, b_, a)] == ["removed"]
            m = merge(trees, [b_, c])
            assert list(walk(trees, m)) == [((*path, "x"), f2), ((*path, "y"), f2)]
            gone = apply_edits(trees, m, {(*path, "x"): None, (*path, "y"): None})
            assert list(walk(trees, gone)) == []
    finally:
        store.close()


# ---------------------------------------------------------------------- item 5

EVIL_NAME = "data\x1b]0;owned\x07\x1b[2J\x9b31m\u202etxt.exe\nFAKE LINE"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


def dsvc_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(HERE.parent)}
    env.pop("DSVC_REMOTE", None)
    return subprocess.run(
        [sys.executable, "-m", "dsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_names_from_a_remote_cannot_drive_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    did, key = honest_setup(spec, tmp_path, monkeypatch)
    rewrite(
        spec,
        key,
        lambda r: {**r, "name": EVIL_NAME, "project": "proj\x1b[31m", "tags": ["t\x1b]8;;x\x07"]},
    )
    home = victim(spec, tmp_path, monkeypatch)
    for args in (["fetch"], ["search"], ["search", "--json"], ["log", "--id", did]):
        out = dsvc_cli(home, *args)
        assert out.returncode == 0, (args, out.stderr)
        text = out.stdout + out.stderr
        for c in RAW_CONTROLS:
            assert c not in text, (args, repr(text))
        assert "FAKE LINE" in text, (args, text)
        assert not any(line.startswith("FAKE LINE") for line in text.splitlines()), text
        if "--json" in args:
            assert json.loads(out.stdout)[0]["name"] == EVIL_NAME  # JSON keeps the value
        else:
            assert "\\x1b]0;owned\\x07" in text, (args, text)  # shown, not obeyed


def test_printable_escapes_every_control_sequence() -> None:
    from dsvc.cli.render import printable

    assert printable("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert printable("x\x9b1m\x7f\x00") == "x\\x9b1m\\x7f\\x00"
    assert printable("r\u202el \u2066") == "r\\u202el \\u2066"
    assert printable("two\nlines\ttab\r") == "two\\x0alines\\x09tab\\x0d"
    assert printable("two\nlines\ttab\r", keep_lines=True) == "two\nlines\ttab\\x0d"
    assert printable("plain é 日本 😀") == "plain é 日本 😀"


_LIST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from dsvc.dataset import Dataset
    from dsvc.errors import DsvcError
    out = {"listed": [d["id"] for d in Dataset.list_datasets()]}
    try:
        Dataset.get(dataset_id=sys.argv[1])
        out["error"] = None
    except DsvcError as e:
        out["error"], out["message"] = type(e).__name__, str(e)
    with open("/proc/self/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM:")][0].split()[1]
    out["peak_mib"] = int(hwm) / 1024
    print(json.dumps(out))
    """
)


def test_an_oversized_record_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 MiB object under datasets/ (the bound is 64 MiB) is refused from its size,
    before its bytes are read into memory."""
    spec = {"url": f"file://{tmp_path / 'remote'}", "options": {}}
    did, _ = honest_setup(spec, tmp_path, monkeypatch)
    big = "c" * 32
    with open(tmp_path / "remote" / "datasets" / big, "wb") as f:
        f.truncate(200 << 20)  # sparse: no disk used
    home = victim(spec, tmp_path, monkeypatch)
    env = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(HERE.parent)}
    env.pop("DSVC_REMOTE", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LIST_SCRIPT, big],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["listed"] == [did]
    assert got["error"] == "IntegrityError" and f"datasets/{big}" in got["message"], got
    assert f"datasets/{big}" in proc.stderr  # the listing reported it
    assert got["peak_mib"] < 150, got


def test_a_long_lineage_renders_without_recursion() -> None:
    """A remote's records may chain thousands of parents (or loop): drawing the
    lineage must neither recurse nor loop."""
    from dsvc.cli.render import render_svg, render_text
    from dsvc.record import Record

    ids = [f"{i:032x}" for i in range(1_500)]
    nodes: dict[str, Record | None] = {
        d: Record(
            id=d, project="p", name="n", version=str(i), status="final", tree=bytes(16), created=i
        )
        for i, d in enumerate(ids)
    }
    edges = [(ids[i + 1], ids[i], "parent") for i in range(len(ids) - 1)]
    edges.append((ids[0], ids[-1], "parent"))  # a loop, as a hostile remote may write
    text = render_text(ids[0], nodes, edges)
    assert len(text.splitlines()) == len(ids) + 1 and "(shown above)" in text
    svg = render_svg(nodes, edges)
    assert svg.count("<rect x=") == len(ids)
