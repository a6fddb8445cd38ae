"""Canonical encodings of blobs, trees and commits; name validation (dsvc.objects)."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dsvc.errors import IntegrityError, InvalidPathError
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE, object_id
from dsvc.objects import (
    EMPTY_TREE_ID,
    KIND_CHUNKFILE,
    KIND_FILE,
    KIND_TREE,
    MODE_DIR,
    MODE_EXEC,
    MODE_FILE,
    Blob,
    Commit,
    Entry,
    decode_tree,
    encode_tree,
    iter_entries,
    split_path,
    tree_id,
    validate_name,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.binary(min_size=16, max_size=16)
sizes = st.integers(min_value=0, max_value=2**64 - 1)
# ordinary unicode names: no '/', '\\', NUL, no surrogates, not '.' or '..'
names = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/\\\x00"),
    min_size=1,
    max_size=20,
).filter(lambda n: n not in (".", ".."))
entries = st.builds(
    Entry,
    st.sampled_from([KIND_TREE, KIND_FILE, KIND_CHUNKFILE]),
    ids,
    sizes,
    st.sampled_from([MODE_FILE, MODE_EXEC, MODE_DIR]),
)
trees = st.dictionaries(names, entries, max_size=12)
blobs = st.builds(Blob, st.lists(st.tuples(ids, st.integers(0, 2**40)), max_size=20).map(tuple))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
)
meta_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=15,
)
metas = st.dictionaries(st.text(max_size=8), meta_values, max_size=6)
commits = st.builds(Commit, ids, st.lists(ids, max_size=3).map(tuple), metas)


def shuffled(obj, rng: random.Random):
    """The same value with every map's insertion order shuffled, recursively."""
    if isinstance(obj, dict):
        items = [(k, shuffled(v, rng)) for k, v in obj.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(obj, list):
        return [shuffled(v, rng) for v in obj]
    return obj


# -- names -------------------------------------------------------------------------


@given(names)
@SETTINGS
def test_validate_name_accepts_ordinary_unicode(name):
    assert validate_name(name) == name
    assert split_path(name) == (name,)


@given(st.lists(names, min_size=1, max_size=5))
@SETTINGS
def test_split_path_round_trip(parts):
    path = "/".join(parts)
    assert split_path(path) == tuple(parts)
    assert split_path("/" + path + "/") == tuple(parts)
    assert split_path("./" + path.replace("/", "/./")) == tuple(parts)
    assert split_path(path.replace("/", "\\")) == tuple(parts)


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "a/b", "/", "a\x00b", "\x00", "a\\b", "\udcff", "ok\ud800"]
)
def test_validate_name_rejects(bad):
    with pytest.raises(InvalidPathError):
        validate_name(bad)


@pytest.mark.parametrize("bad", [None, b"abc", 3])
def test_validate_name_rejects_non_text(bad):
    with pytest.raises(InvalidPathError):
        validate_name(bad)


@pytest.mark.parametrize("bad", ["..", "a/../b", "a/..", "x/\x00", "a/b\udcfe/c", "../../etc"])
def test_split_path_rejects(bad):
    with pytest.raises(InvalidPathError):
        split_path(bad)


@given(names, st.sampled_from(["/", "\x00", "\\"]), names)
@SETTINGS
def test_validate_name_rejects_separators_anywhere(a, sep, b):
    with pytest.raises(InvalidPathError):
        validate_name(a + sep + b)


def test_lone_surrogate_from_fs_name_is_reported_as_bad_utf8():
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    with pytest.raises(InvalidPathError, match="not valid UTF-8") as ei:
        validate_name(name)
    assert "caf\\xe9" in str(ei.value)


# -- blobs -------------------------------------------------------------------------


@given(blobs)
@SETTINGS
def test_blob_round_trip(blob):
    data = blob.encode()
    back = Blob.decode(data)
    assert back == blob
    assert back.encode() == data
    assert back.id == blob.id == object_id(TAG_BLOB, data)
    assert blob.size == sum(n for _, n in blob.chunks)


def test_blob_exact_shape():
    c1, c2 = b"\x01" * 16, b"\x02" * 16
    blob = Blob(((c1, 5), (c2, 70000)))
    assert msgpack.unpackb(blob.encode()) == [[c1, 5], [c2, 70000]]
    assert (
        blob.encode()
        == b"\x92\x92\xc4\x10" + c1 + b"\x05\x92\xc4\x10" + c2 + b"\xce\x00\x01\x11\x70"
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"a": 1},
        [[b"\x01" * 15, 3]],
        [[b"\x01" * 17, 3]],
        [[b"\x01" * 16, -1]],
        [[b"\x01" * 16]],
        [[16, 3]],  # an integer is not an id, even though bytes(16) has 16 bytes
        [[b"\x01" * 16, "3"]],
        [[b"\x01" * 16, 1.0]],
        [["x" * 16, 3]],
        [[list(range(16)), 3]],
    ],
)
def test_blob_decode_rejects_malformed(raw):
    data = msgpack.packb(raw, use_bin_type=True)
    with pytest.raises(IntegrityError):
        Blob.decode(data, object_id(TAG_BLOB, data))


def test_blob_decode_rejects_garbage():
    with pytest.raises(IntegrityError, match="malformed"):
        Blob.decode(b"\xc1\xc1")


# -- trees -------------------------------------------------------------------------


@given(trees, st.randoms())
@SETTINGS
def test_tree_canonical(entries, rng):
    data = encode_tree(entries)
    back = decode_tree(data)
    assert back == entries
    assert encode_tree(back) == data
    # insertion order never matters
    items = list(entries.items())
    rng.shuffle(items)
    assert encode_tree(dict(items)) == data
    assert tree_id(dict(items)) == tree_id(entries) == object_id(TAG_TREE, data)
    # entries are sorted by the UTF-8 bytes of their names
    order = [n for n, _ in iter_entries(entries)]
    assert [r[0] for r in msgpack.unpackb(data)] == order
    assert [n.encode() for n in order] == sorted(n.encode() for n in entries)


def test_tree_sort_is_by_utf8_bytes_not_code_units():
    # U+FF61 sorts before U+1F600 by code point and by UTF-8 bytes, but after it by
    # UTF-16 code units; and 'B' < 'a' < 'é' (bytes), case-sensitive
    e = Entry(KIND_CHUNKFILE, b"\x00" * 16, 1, MODE_FILE)
    names = ["\U0001f600", "\uff61", "é", "a", "B"]
    data = encode_tree(dict.fromkeys(names, e))
    assert [r[0] for r in msgpack.unpackb(data)] == ["B", "a", "é", "\uff61", "\U0001f600"]


def test_tree_entry_exact_shape_and_empty_tree():
    cid = bytes(range(16))
    data = encode_tree({"x": Entry(KIND_CHUNKFILE, cid, 3, MODE_FILE)})
    assert msgpack.unpackb(data) == [["x", 3, cid, 3, 0o644]]
    assert encode_tree({}) == b"\x90"
    assert object_id(TAG_TREE, b"\x90") == EMPTY_TREE_ID


GOOD = ["a", KIND_CHUNKFILE, b"\x01" * 16, 3, MODE_FILE]


def _tree_bytes(items) -> bytes:
    return msgpack.packb(items, use_bin_type=True)


@pytest.mark.parametrize(
    "items",
    [
        [["b", *GOOD[1:]], GOOD],  # unsorted
        [GOOD, GOOD],  # duplicate name
        [["..", *GOOD[1:]]],
        [[".", *GOOD[1:]]],
        [["", *GOOD[1:]]],
        [["a/b", *GOOD[1:]]],
        [["/abs", *GOOD[1:]]],
        [["../x", *GOOD[1:]]],
        [["a\x00", *GOOD[1:]]],
        [["a\\b", *GOOD[1:]]],
        [[b"a", *GOOD[1:]]],  # name as bin
        [["a", 9, b"\x01" * 16, 3, MODE_FILE]],  # unknown kind
        [["a", True, b"\x01" * 16, 3, MODE_FILE]],  # bool is not a kind
        [["a", [1], b"\x01" * 16, 3, MODE_FILE]],  # unhashable kind (hostile remote)
        [["a", {"k": 1}, b"\x01" * 16, 3, MODE_FILE]],
        [["a", KIND_FILE, b"\x01" * 15, 3, MODE_FILE]],
        [["a", KIND_FILE, b"\x01" * 17, 3, MODE_FILE]],
        [["a", KIND_FILE, 16, 3, MODE_FILE]],  # int is not an id
        [["a", KIND_FILE, "0123456789abcdef", 3, MODE_FILE]],
        [["a", KIND_FILE, b"\x01" * 16, -3, MODE_FILE]],
        [["a", KIND_FILE, b"\x01" * 16, 3.0, MODE_FILE]],
        [["a", KIND_FILE, b"\x01" * 16, 3, "644"]],
        [["a", KIND_FILE, b"\x01" * 16, 3]],  # short entry
        [["a", KIND_FILE, b"\x01" * 16, 3, MODE_FILE, 0]],  # long entry
        {"a": GOOD},  # not a list
        ["abcde"],
    ],
)
def test_decode_tree_rejects_malformed(items):
    data = _tree_bytes(items)
    oid = object_id(TAG_TREE, data)
    with pytest.raises(IntegrityError) as ei:
        decode_tree(data, oid)
    assert ei.value.object_id == oid
    assert oid.hex() in str(ei.value)


def test_decode_tree_rejects_invalid_utf8_name():
    # msgpack str holding invalid UTF-8 (a hostile remote can write any bytes)
    data = b"\x91\x95\xa2\xff\xfe\x03\xc4\x10" + b"\x01" * 16 + b"\x03\xcd\x01\xa4"
    with pytest.raises(IntegrityError):
        decode_tree(data)


@given(trees, st.integers(0, 11), st.sampled_from(["..", ".", "", "a/b", "/x", "\x00", "..\\x"]))
@SETTINGS
def test_decode_tree_rejects_any_bad_name(entries, idx, bad):
    assume(entries)
    items = [[n, *e] for n, e in iter_entries(entries)]
    items[idx % len(items)][0] = bad
    items.sort(key=lambda it: it[0].encode())
    with pytest.raises(IntegrityError):
        decode_tree(_tree_bytes(items))


# -- commits -----------------------------------------------------------------------


@given(commits, st.randoms())
@SETTINGS
def test_commit_canonical(commit, rng):
    data = commit.encode()
    back = Commit.decode(data)
    assert back.encode() == data
    assert back.tree == commit.tree and back.parents == commit.parents
    assert back.id == commit.id == object_id(TAG_COMMIT, data)
    # nested dict insertion order never changes the bytes
    other = Commit(commit.tree, commit.parents, shuffled(dict(commit.meta), rng))
    assert other.encode() == data
    assert other.id == commit.id


@given(commits)
@SETTINGS
def test_commit_maps_are_sorted(commit):
    raw = msgpack.unpackb(commit.encode(), raw=False)
    assert list(raw) == ["meta", "parents", "tree"]

    def check(v):
        if isinstance(v, dict):
            keys = list(v)
            assert keys == sorted(keys, key=lambda k: (isinstance(k, bytes), k))
            for x in v.values():
                check(x)
        elif isinstance(v, list):
            for x in v:
                check(x)

    check(raw)


def test_commit_parent_order_matters_and_tuples_equal_lists():
    a, b, t = b"\x0a" * 16, b"\x0b" * 16, b"\x0c" * 16
    assert Commit(t, (a, b)).id != Commit(t, (b, a)).id
    assert Commit(t, (), {"x": (1, 2)}).encode() == Commit(t, (), {"x": [1, 2]}).encode()
    assert Commit(t, (), {"f": 1.5}).encode() != Commit(t, (), {"f": 1}).encode()


def test_commit_rejects_non_string_keys():
    with pytest.raises(TypeError):
        Commit(b"\x00" * 16, (), {1: "x"}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        {"meta": {}, "parents": [], "tree": b"\x00" * 15},
        {"meta": {}, "parents": [b"\x00" * 17], "tree": b"\x00" * 16},
        {"meta": {}, "parents": [], "tree": 16},
        {"meta": {}, "parents": [16], "tree": b"\x00" * 16},
        {"meta": {}, "parents": b"\x00" * 16, "tree": b"\x00" * 16},
        {"meta": [], "parents": [], "tree": b"\x00" * 16},
        {"parents": [], "tree": b"\x00" * 16},
        {"meta": {}, "tree": b"\x00" * 16},
        [b"\x00" * 16],
    ],
)
def test_commit_decode_rejects_malformed(raw):
    data = msgpack.packb(raw, use_bin_type=True)
    with pytest.raises(IntegrityError):
        Commit.decode(data, object_id(TAG_COMMIT, data))


def test_commit_decode_rejects_non_string_map_keys():
    data = msgpack.packb({"meta": {1: 2}, "parents": [], "tree": b"\x00" * 16})
    with pytest.raises(IntegrityError):
        Commit.decode(data)


def test_external_link_entries_and_their_link_chunk() -> None:
    # docs/format.md §4.2 kind 4 and §4.4: the link is a sorted msgpack map in a chunk
    from dsvc.objects import KIND_EXTERNAL, Link

    link = Link("file:///data/a.txt", 5, mtime_ns=1764558216000000000)
    raw = link.encode()
    assert raw == msgpack.packb(
        {
            "etag": None,
            "mtime_ns": 1764558216000000000,
            "size": 5,
            "url": "file:///data/a.txt",
            "version": None,
        },
        use_bin_type=True,
    )
    assert Link.decode(raw) == link
    lid = object_id(TAG_CHUNK, raw)
    tree = {"a.txt": Entry(KIND_EXTERNAL, lid, 5, MODE_FILE)}
    assert decode_tree(encode_tree(tree)) == tree
    for bad in ({"url": "", "size": 1}, {"url": "s3://b/k", "size": -1}, [1, 2]):
        with pytest.raises(IntegrityError, match="link"):
            Link.decode(msgpack.packb(bad))
    with pytest.raises(IntegrityError, match="bad kind"):
        decode_tree(msgpack.packb([["a", 5, lid, 5, MODE_FILE]], use_bin_type=True))
