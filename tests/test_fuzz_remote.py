"""Fuzzing the remote read path (issue 10): hypothesis rewrites one object of an honest
remote -- a record, a name ref, gc/marks, a pack index, dsvc.json, or a tree or blob
(stored with its correct id, so only decoding stands in the way) -- with random bytes, random
msgpack, or the honest value with one part replaced or a few bytes changed. A fresh
client then lists, looks up, copies (cached and writable) and plans gc.

Asserted for every example: only DsvcError subclasses come out; nothing is written
outside the client's own store and target folder; peak memory stays bounded.
``DSVC_FUZZ_EXAMPLES`` sets the examples per object kind (default 40; S3 uses a third).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remote_helpers import all_paths, backend, machine, remote_objects, remote_of, write_tree
from test_hostile_remote import craft_version, honest_setup, publish, rm_deep, tree_value

from dsvc import registry
from dsvc.dataset import Dataset
from dsvc.errors import DsvcError
from dsvc.ids import TAG_BLOB, TAG_TREE, object_id
from dsvc.objects import KIND_CHUNKFILE, KIND_FILE, Blob, encode_tree
from dsvc.remote import repo

EXAMPLES = int(os.environ.get("DSVC_FUZZ_EXAMPLES", "40"))
#: peak RSS growth allowed over the whole run (the honest data is a few KB)
RSS_BOUND_MIB = 300

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda ch: (
        st.lists(ch, max_size=5)
        | st.dictionaries(
            st.one_of(st.text(max_size=10), st.binary(max_size=5), st.integers()), ch, max_size=5
        )
    ),
    max_leaves=20,
)


def _nodes(v: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every node of a decoded msgpack/JSON value."""
    out = [path]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _nodes(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _nodes(x, (*path, i))
    return out


def _replace(v: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(v, dict):
        return {**v, head: _replace(v[head], rest, new)}
    out = list(v)
    out[head] = _replace(v[head], rest, new)
    return out


def _drop(v: Any, path: tuple) -> Any:
    if not path:
        return v
    if len(path) == 1:
        if isinstance(v, dict):
            return {k: x for k, x in v.items() if k != path[0]}
        return [x for i, x in enumerate(v) if i != path[0]]
    return _replace(v, path[:-1], _drop(_get(v, path[:-1]), path[-1:]))


def _get(v: Any, path: tuple) -> Any:
    for p in path:
        v = v[p]
    return v


def mutations(honest: bytes, decoded: Any, encode: Any) -> st.SearchStrategy[bytes]:
    """Random bytes, random values, and the honest object with one part replaced or
    dropped, or with a few bytes changed."""
    nodes = _nodes(decoded)

    def one_part(args: tuple[int, Any, bool]) -> bytes:
        i, new, drop = args
        path = nodes[i % len(nodes)]
        v = _drop(decoded, path) if drop else _replace(decoded, path, new)
        try:
            return encode(v)
        except (TypeError, ValueError, OverflowError):
            return honest[: i % (len(honest) + 1)]

    def flips(changes: list[tuple[int, int]]) -> bytes:
        b = bytearray(honest)
        for pos, byte in changes:
            b[pos % len(b)] = byte
        return bytes(b)

    def safe_encode(v: Any) -> bytes:
        try:
            return encode(v)
        except (TypeError, ValueError, OverflowError):
            return b"\xc1"

    return st.one_of(
        st.binary(max_size=300),
        values.map(safe_encode),
        st.tuples(st.integers(0, 10**6), values, st.booleans()).map(one_part),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4).map(
            flips
        ),
        st.integers(0, len(honest)).map(lambda n: honest[:n]),
    )


def _pack(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def _json(v: Any) -> bytes:
    return json.dumps(v).encode()


# ---------------------------------------------------------------------- the read path


def read_everything(spec: dict[str, Any], root: Path, n: int, ids: list[str]) -> None:
    """A fresh client (its own store in ``root/n``) does every read a user would."""
    home = root / f"{n}" / "home"
    out = root / f"{n}" / "out"
    mp = pytest.MonkeyPatch()
    try:
        machine(mp, home, spec)
        calls = [
            lambda: Dataset.list_datasets(),
            lambda: Dataset.get(dataset_project="proj", dataset_name="data").id,
        ]
        for did in ids:
            calls += [
                lambda did=did: Dataset.get(dataset_id=did).get_local_copy(),
                lambda did=did: Dataset.get(dataset_id=did).get_mutable_local_copy(out),
            ]
        calls.append(
            lambda: remote_of(registry.open_store()).gc(dry_run=True)
        )
        for call in calls:
            try:
                call()
            except DsvcError:
                if n < 0:
                    raise  # the honest remote must read without error
                # refusing is right; anything else escapes and fails the example
    finally:
        mp.undo()
        registry.close_all()
    inside = {p.split("/")[0] for p in all_paths(root / f"{n}")}
    assert inside <= {"home", "out"}, inside
    rm_deep(root / f"{n}")


def _peak_reset() -> bool:
    try:  # "5" resets VmHWM (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024


KINDS = ["record", "ref", "marks", "index", "dsvc.json", "tree", "blob"]


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_objects_give_only_dsvc_errors(
    kind: str, fs3_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = fs3_spec
    did, rec_key = honest_setup(spec, tmp_path, monkeypatch)
    machine(monkeypatch, tmp_path / "home-a", spec)
    publish(write_tree(tmp_path / "src-b", {"b.txt": b"bee"}), name="data")  # a second version
    b = backend(spec)
    store_a = registry.open_store()
    # an honest gc/marks: one pack marked (not one of ours), none being deleted
    b.put(repo.GC_MARKS, _pack({"marked": {"ab" * 16: 1.7e9}, "deleting": {}}))
    ids = [did]
    if kind == "tree":  # a real tree payload: the root of the honest version
        honest = encode_tree(store_a.get_tree(registry.get(store_a, did).tree))
        key, decoded, encode = None, msgpack.unpackb(honest, raw=False), _pack
    elif kind == "blob":  # a real blob payload: two chunks of the honest version
        files = store_a.get_tree(registry.get(store_a, did).tree)
        chunks = tuple((e.id, e.size) for e in files.values() if e.kind == KIND_CHUNKFILE)
        honest = Blob(chunks).encode()
        key, decoded, encode = None, msgpack.unpackb(honest, raw=False), _pack
    else:
        key = {
            "record": rec_key,
            "ref": next(k for k in remote_objects(spec, "refs/")),
            "marks": repo.GC_MARKS,
            "index": next(k for k in remote_objects(spec, "packs/") if k.endswith(".idx")),
            "dsvc.json": "dsvc.json",
        }[kind]
        honest = b.get(key)
        if kind == "dsvc.json":
            decoded, encode = json.loads(honest), _json
        else:
            decoded, encode = msgpack.unpackb(honest, raw=False), _pack
    victims = tmp_path / "victims"
    victims.mkdir()
    read_everything(spec, victims, -1, ids)  # the honest remote reads without error
    outside_before = {p for p in all_paths(tmp_path) if not p.startswith("victims")}
    counter = itertools.count()
    peak_ok = _peak_reset()
    base = _mib("VmRSS:")
    examples = EXAMPLES if fs3_spec["kind"] == "file" else max(3, EXAMPLES // 3)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=mutations(honest, decoded, encode))
    def one(data: bytes) -> None:
        n = next(counter)
        if kind == "tree":
            tid = object_id(TAG_TREE, data)  # the right id: only decoding can refuse it
            evil = craft_version(
                spec, store_a, tid, [(tid, 1, TAG_TREE + b"\x00" + data)], name="fuzz"
            )
            read_everything(spec, victims, n, [did, evil])
            return
        if kind == "blob":  # a root with one file whose blob is the example
            bid = object_id(TAG_BLOB, data)
            root, root_value = tree_value([["f", KIND_FILE, bid, 7, 0o644]])
            stored = [(bid, 1, TAG_BLOB + b"\x00" + data), (root, 1, root_value)]
            evil = craft_version(spec, store_a, root, stored, name="fuzz")
            read_everything(spec, victims, n, [did, evil])
            return
        b.put(key, data)
        try:
            read_everything(spec, victims, n, ids)
        finally:
            b.put(key, honest)

    one()
    assert next(counter) >= examples // 2  # the examples ran (each counted once)
    outside_after = {p for p in all_paths(tmp_path) if not p.startswith("victims")}
    new = {p for p in outside_after - outside_before if not p.startswith(("remote", "home-a"))}
    assert not new, new
    if peak_ok:
        assert _mib("VmHWM:") - base < RSS_BOUND_MIB
