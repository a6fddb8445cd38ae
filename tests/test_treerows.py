"""The C merge of two encoded trees (dsvc/_treerows.c) against the Python path.

``objects.differing_entries`` must give exactly what decoding both trees and comparing
them gives, for any pair of trees; on bytes that are not a tree it must return None
(the Python path then raises the right error), never crash or misread.
"""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc import objects
from dsvc.ids import ID_SIZE, TAG_TREE, object_id
from dsvc.objects import (
    KIND_CHUNKFILE,
    KIND_FILE,
    KIND_TREE,
    MODE_DIR,
    MODE_EXEC,
    MODE_FILE,
    Entry,
    decode_tree,
    differing_entries,
    encode_tree,
)
from dsvc.treeops import Trees, diff
from tests.helpers_core import open_store

native_only = pytest.mark.skipif(objects.treerows is None, reason="dsvc._treerows is not built")
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# names that sort differently as str and as UTF-8 bytes, prefixes of each other, and
# the msgpack string-header boundaries (fixstr 31 / str8 255 bytes)
names = st.one_of(
    st.sampled_from(["a", "ab", "b", "é", "\uffff", "\U0001f600", "a b", "x" * 31, "x" * 32]),
    st.text(
        st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=8,
    ).filter(lambda n: n not in (".", "..")),
    st.just("n" * 300),
)
entries = st.builds(
    Entry,
    st.sampled_from([KIND_FILE, KIND_CHUNKFILE, KIND_TREE]),
    st.binary(min_size=ID_SIZE, max_size=ID_SIZE),
    st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63]),
    st.sampled_from([MODE_FILE, MODE_EXEC, MODE_DIR]),
)
trees = st.dictionaries(names, entries, max_size=40)


def _expected(a: dict[str, Entry], b: dict[str, Entry]) -> tuple[dict, dict]:
    return (
        {n: e for n, e in a.items() if b.get(n) != e},
        {n: e for n, e in b.items() if a.get(n) != e},
    )


@native_only
@given(trees, trees, st.data())
@SETTINGS
def test_differing_entries_match_the_decoded_compare(a, b, data):
    # mostly-shared pairs (the case the merge is for) as well as unrelated ones
    if data.draw(st.booleans()):
        b = {**a, **b}
        for name in data.draw(st.lists(st.sampled_from(sorted(a)), max_size=5)) if a else []:
            b.pop(name, None)
    got = differing_entries(encode_tree(a), encode_tree(b))
    assert got == _expected(a, b)


@native_only
def test_equal_values_in_other_encodings_are_not_reported():
    """A row whose size is a non-minimal msgpack integer has other bytes but the same
    value: the merge returns the pair, and the equal pair is dropped after decoding."""
    e = Entry(KIND_FILE, b"i" * ID_SIZE, 5, MODE_FILE)
    canon = encode_tree({"a": e, "b": e})
    row = b"\x95\xa1a\x02\xc4\x10" + b"i" * 16 + b"\xcd\x00\x05\xcd\x01\xa4"  # uint16 5, 0o644
    other = b"\x92" + row + msgpack.packb(["b", KIND_FILE, e.id, 5, MODE_FILE])
    assert decode_tree(other) == decode_tree(canon)
    assert objects.treerows.row_delta(canon, other) is not None
    assert differing_entries(canon, other) == ({}, {})


@native_only
@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x80",  # a map
        b"\x91\x07",  # a row that is not an array
        b"\x91\x90",  # an empty row
        b"\x91\x91\x07",  # a row whose first item is not a string
        msgpack.packb([["b", 1, b"i" * 16, 1, 1], ["a", 1, b"i" * 16, 1, 1]]),  # unsorted
        msgpack.packb([["a", 1, b"i" * 16, 1, 1], ["a", 1, b"j" * 16, 1, 1]]),  # a name twice
        msgpack.packb([["a", 1, b"i" * 16, 1, 1]]) + b"\x00",  # trailing bytes
        msgpack.packb([["a", 1, b"i" * 16, 1, 1]])[:-1],  # truncated
        b"\xdd\xff\xff\xff\xff",  # claims 4G rows
        b"\x91\xdd\xff\xff\xff\xff\xa1a",  # a row claiming 4G items
        b"\x91\x92\xa1a\xc1",  # the never-used byte
    ],
)
def test_bytes_that_are_not_a_tree_take_the_python_path(bad):
    good = encode_tree({"a": Entry(KIND_FILE, b"i" * ID_SIZE, 1, MODE_FILE)})
    assert objects.treerows.row_delta(bad, good) is None
    assert objects.treerows.row_delta(good, bad) is None


@native_only
@given(st.binary(max_size=200), st.binary(max_size=200))
@settings(max_examples=2000, deadline=None)
def test_any_bytes_give_none_or_two_msgpack_arrays(x, y):
    """Hostile stored trees: the parser never reads past the bytes it is given, and
    what it returns is only ever whole rows of its input."""
    for a, b in ((x, y), (b"\x91" + x, b"\x91" + y), (b"\x92\x92\xa1a" + x, y)):
        out = objects.treerows.row_delta(a, b)
        if out is not None:
            assert isinstance(msgpack.unpackb(out[0], strict_map_key=False), list)
            assert isinstance(msgpack.unpackb(out[1], strict_map_key=False), list)


@native_only
def test_the_rows_returned_are_validated_like_a_full_decode():
    from dsvc.errors import IntegrityError

    good = encode_tree({"a": Entry(KIND_FILE, b"i" * ID_SIZE, 1, MODE_FILE)})
    for rows in ([["..", 3, b"i" * 16, 1, 0o644]], [["a", 3, b"short", 1, 0o644]]):
        bad = msgpack.packb(rows, use_bin_type=True)
        assert objects.treerows.row_delta(good, bad) is not None  # parsed: a row shape
        with pytest.raises(IntegrityError):
            differing_entries(good, bad, b"g" * 16, object_id(TAG_TREE, bad))


@pytest.mark.parametrize("use_native", [True, False])
def test_diff_of_stored_folders_is_the_same_on_both_paths(tmp_path, monkeypatch, use_native):
    if use_native and objects.treerows is None:
        pytest.skip("dsvc._treerows is not built")
    if not use_native:
        monkeypatch.setattr(objects, "treerows", None)
    s = open_store(tmp_path)
    e = [Entry(KIND_FILE, bytes([i]) * ID_SIZE, i, MODE_FILE) for i in range(5)]
    with s.batch() as b:
        t = Trees(s, b)
        one = t.put({"k": e[0], "m": e[1], "z": e[2]}).id
        two = t.put({"a": e[3], "k": e[0], "m": e[4]}).id
        r1 = t.put({"d": Entry(KIND_TREE, one, 3, MODE_DIR)}).id
        r2 = t.put({"d": Entry(KIND_TREE, two, 7, MODE_DIR)}).id
    changes = [(c.path_str, c.status) for c in diff(Trees(s), r1, r2)]  # a fresh cache
    assert changes == [("d/a", "added"), ("d/m", "modified"), ("d/z", "removed")]
    s.close()


# -- a changed folder of a re-ingest, spliced (ingest._Splice) ----------------------

_T0 = 1_600_000_000_123_456_789  # mtimes far in the past: no file is racily clean
folder_names = st.lists(
    st.sampled_from(["a.txt", "b", "c.csv", "z", "é.txt", "x" * 40, "d e", "0"]),
    min_size=1,
    max_size=8,
    unique=True,
)
rewrites = st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from([b"", b"x", b"same size", b"longer content"])),
    max_size=6,
)


def _write(folder, name, data, step):
    p = folder / name
    p.write_bytes(data)
    os.utime(p, ns=(_T0 + step, _T0 + step))


@given(folder_names, rewrites, st.booleans(), st.booleans())
@settings(max_examples=60, deadline=None)
def test_a_spliced_folder_is_the_tree_a_full_build_makes(
    tmp_path_factory, names, edits, make_subfolder, mode_change
):
    """Re-ingests with the C splice and without it give the same trees and change
    counts, and both equal a first ingest of the same files (no summary to reuse)."""
    from dsvc.ingest import ingest_tree

    base = tmp_path_factory.mktemp("splice")
    data = base / "data"
    data.mkdir()
    for i, n in enumerate(names):
        _write(data, n, n.encode() * 3, i)
    stores = {}
    for label in ("native", "python"):
        stores[label] = open_store(base / label)
        ingest_tree(stores[label], data)
    for step, (i, content) in enumerate(edits, start=100):
        _write(data, names[i % len(names)], content, step)
    if mode_change:
        os.chmod(data / names[0], 0o755)
        os.utime(data / names[0], ns=(_T0 + 999, _T0 + 999))
    if make_subfolder:
        (data / "sub").mkdir(exist_ok=True)
        _write(data / "sub", "f", b"below", 7)
    results = {}
    for label, store in stores.items():
        if label == "python":
            saved, objects.treerows = objects.treerows, None
        try:
            results[label] = ingest_tree(store, data)
        finally:
            if label == "python":
                objects.treerows = saved
    fresh = open_store(base / "fresh")
    first = ingest_tree(fresh, data)
    assert results["native"].entry == results["python"].entry == first.entry
    assert results["native"].changes == results["python"].changes
    for s in (*stores.values(), fresh):
        s.close()


@native_only
def test_a_rewritten_file_is_read_through_the_splice(tmp_path, monkeypatch):
    """The splice is the path taken for a folder rewritten in place (not a fallback
    that would make the property above pass on the Python path alone)."""
    from dsvc import ingest
    from dsvc.ingest import ingest_tree

    data = tmp_path / "data"
    data.mkdir()
    for i in range(20):
        _write(data, f"f{i:02}", b"v1 %d" % i, i)
    s = open_store(tmp_path / "s")
    ingest_tree(s, data)
    _write(data, "f07", b"v2 7", 50)
    calls = []
    real = ingest._TreeBuilder._spliced
    monkeypatch.setattr(
        ingest._TreeBuilder, "_spliced", lambda *a: calls.append(a[1].todo_at) or real(*a)
    )
    res = ingest_tree(s, data)
    assert len(calls) == 1 and len(calls[0]) == 1  # one folder, one file read
    assert res.stats.cached_files == 19
    fresh = open_store(tmp_path / "fresh")
    want = Trees(fresh).get(ingest_tree(fresh, data).entry.id)
    assert Trees(s).get(res.entry.id) == want
    fresh.close()
    assert res.changes == {(next(iter(res.changes))[0], res.entry.id): (0, 0, 1)}
    s.close()


def test_a_bad_folder_compared_ahead_raises_from_the_diff(tmp_path):
    """Folder pairs compared ahead on another thread (treeops._DiffAhead) raise their
    errors where the walk reaches them, and the other changes come out as without it."""
    from dsvc.errors import IntegrityError

    s = open_store(tmp_path)
    bad_rows = msgpack.packb([["..", KIND_FILE, b"i" * 16, 1, 0o644]], use_bin_type=True)
    e = [Entry(KIND_FILE, bytes([i]) * ID_SIZE, i, MODE_FILE) for i in range(30)]
    with s.batch() as b:
        t = Trees(s, b)
        bad = b.put_object(TAG_TREE, bad_rows)
        old = {f"d{i}": Entry(KIND_TREE, t.put({"f": e[i]}).id, i, MODE_DIR) for i in range(12)}
        new = {
            f"d{i}": Entry(KIND_TREE, t.put({"f": e[i + 12]}).id, i, MODE_DIR) for i in range(12)
        }
        r1, r2 = t.put(old).id, t.put(new).id
        new["d5"] = Entry(KIND_TREE, bad, 1, MODE_DIR)
        r3 = t.put(new).id
    paths = sorted(f"d{i}/f" for i in range(12))
    assert [c.path_str for c in diff(Trees(s), r1, r2)] == paths
    seen = []
    with pytest.raises(IntegrityError):
        for c in diff(Trees(s), r1, r3):
            seen.append(c.path_str)
    assert seen == paths[: paths.index("d5/f")]  # all before the bad folder
    s.close()
