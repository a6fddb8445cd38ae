"""Tree algebra (dsvc.treeops) against a plain ``dict[path] -> entry`` model."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc.ids import TAG_TREE
from dsvc.objects import (
    EMPTY_TREE_ID,
    KIND_TREE,
    MODE_EXEC,
    MODE_FILE,
    Entry,
    decode_tree,
)
from dsvc.treeops import (
    Trees,
    apply_edits,
    count_files,
    diff,
    diff_counts,
    diff_stats,
    flatten,
    lookup,
    merge,
    path_str,
    walk,
    walk_dirs,
)
from tests.helpers_core import content_entry, open_store

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

Path = tuple[str, ...]
Model = dict[Path, Entry]

NAMES = ["a", "b", "é"]  # few names so files and folders collide
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple)
file_entries = st.builds(
    content_entry,
    st.sampled_from([b"", b"x", b"yy", b"zzz", b"hello world"]),
    st.sampled_from([MODE_FILE, MODE_EXEC]),
)
ops = st.one_of(
    st.tuples(st.just("set"), paths, file_entries),
    st.tuples(st.just("del"), paths, st.none()),
)
op_lists = st.lists(ops, max_size=25)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = open_store(tmp_path_factory.mktemp("treeops"))
    yield s
    s.close()


# -- the model ---------------------------------------------------------------------


def _under(p: Path, q: Path) -> bool:
    """``p`` is ``q`` or below it."""
    return p[: len(q)] == q


def model_apply(model: Model, op: tuple) -> None:
    kind, p, e = op
    if kind == "set":
        # a file replaces a file or folder at p, and any file at a prefix of p
        for k in [k for k in model if _under(k, p) or _under(p, k)]:
            del model[k]
        model[p] = e
    else:
        for k in [k for k in model if _under(k, p)]:
            del model[k]


def model_of(op_seq: Iterable[tuple]) -> Model:
    m: Model = {}
    for op in op_seq:
        model_apply(m, op)
    return m


def model_merge(models: list[Model]) -> Model:
    acc: Model = {}
    for m in models:
        for p, e in m.items():
            model_apply(acc, ("set", p, e))
    return acc


def model_diff(a: Model, b: Model) -> set[tuple]:
    out = set()
    for p in a.keys() | b.keys():
        ea, eb = a.get(p), b.get(p)
        if ea != eb:
            out.add((p, ea, eb))
    return out


def sort_key(p: Path) -> tuple[bytes, ...]:
    return tuple(n.encode() for n in p)


# -- helpers -----------------------------------------------------------------------


def build(trees: Trees, op_seq: Iterable[tuple], root: bytes = EMPTY_TREE_ID) -> bytes:
    """Apply ops one at a time (each as its own apply_edits call)."""
    for kind, p, e in op_seq:
        root = apply_edits(trees, root, {p: e if kind == "set" else None})
    return root


def check_sizes(trees: Trees, root: bytes) -> None:
    """Every folder entry carries the total size of the files below it."""
    for _, tid in walk_dirs(trees, root):
        for _name, e in trees.get(tid).items():
            if e.kind == KIND_TREE:
                assert e.size == sum(f.size for _, f in walk(trees, e.id))
                assert e.id != EMPTY_TREE_ID  # empty folders disappear


def listing(trees: Trees, root: bytes) -> list[tuple[Path, Entry]]:
    return list(walk(trees, root))


# -- properties --------------------------------------------------------------------


@given(op_lists)
@SETTINGS
def test_edits_match_model_step_by_step(store, op_seq):
    with store.batch() as b:
        trees = Trees(store, b)
        root, model = EMPTY_TREE_ID, {}
        for op in op_seq:
            kind, p, e = op
            root = apply_edits(trees, root, {p: e if kind == "set" else None})
            model_apply(model, op)
            got = listing(trees, root)
            assert dict(got) == model
            # walk order is the canonical order (UTF-8 bytes of each component)
            assert [p for p, _ in got] == sorted(model, key=sort_key)
        check_sizes(trees, root)
        assert count_files(trees, root) == len(model)
        for p, e in model.items():
            assert lookup(trees, root, p) == e


@given(st.lists(ops, max_size=25, unique_by=lambda op: op[1]))
@SETTINGS
def test_one_batch_of_edits_equals_applying_them_in_order(store, op_seq):
    with store.batch() as b:
        trees = Trees(store, b)
        edits = {p: (e if kind == "set" else None) for kind, p, e in op_seq}
        root = apply_edits(trees, EMPTY_TREE_ID, edits)
        assert dict(listing(trees, root)) == model_of(op_seq)
        assert root == build(trees, op_seq)  # same content -> same root id


@given(op_lists, op_lists)
@SETTINGS
def test_equal_content_gives_equal_ids(store, ops1, ops2):
    with store.batch() as b:
        trees = Trees(store, b)
        r1, r2 = build(trees, ops1), build(trees, ops2)
        m1, m2 = model_of(ops1), model_of(ops2)
        assert (r1 == r2) == (m1 == m2)
        # rebuilding from the flat listing gives the same id (history-independent)
        r3 = apply_edits(trees, EMPTY_TREE_ID, dict(listing(trees, r1)))
        assert r3 == r1


@given(op_lists, op_lists)
@SETTINGS
def test_diff_matches_model(store, base_ops, more_ops):
    with store.batch() as b:
        trees = Trees(store, b)
        a = build(trees, base_ops)
        bb = build(trees, more_ops, a)
        ma = model_of(base_ops)
        mb = model_of([*base_ops, *more_ops])
        changes = list(diff(trees, a, bb))
        got = {(c.path, c.old, c.new) for c in changes}
        assert len(got) == len(changes)  # no path reported twice
        assert got == model_diff(ma, mb)
        for c in changes:
            assert c.status == (
                "added" if c.old is None else "removed" if c.new is None else "modified"
            )
        # reverse diff is the mirror image, and a tree has no diff with itself
        assert {(c.path, c.new, c.old) for c in diff(trees, bb, a)} == got
        assert list(diff(trees, a, a)) == []


@given(op_lists, op_lists, st.data())
@SETTINGS
def test_diff_counts_match_the_model(store, base_ops, more_ops, data):
    with store.batch() as b:
        trees = Trees(store, b)
        a = build(trees, base_ops)
        bb = build(trees, more_ops, a)
        want = model_diff(model_of(base_ops), model_of([*base_ops, *more_ops]))
        counts = (
            sum(new is None for _, _, new in want),
            sum(old is None for _, old, _ in want),
            sum(old is not None and new is not None for _, old, new in want),
        )
        assert diff_counts(trees, a, bb) == counts
        assert diff_counts(trees, bb, a) == (counts[1], counts[0], counts[2])
        assert diff_counts(trees, a, a) == (0, 0, 0)
        # counts the caller knows for some pairs of differing folders are taken as
        # given (a pair's counts are a function of its ids): a known pair for the
        # roots answers alone, and the true counts of inner pairs change nothing
        assert diff_counts(trees, a, bb, {(a, bb): (7, 8, 9)}) == (
            (7, 8, 9) if a != bb else (0, 0, 0)
        )
        pairs = _differing_pairs(trees, a, bb)
        chosen = data.draw(st.sets(st.sampled_from(sorted(pairs))) if pairs else st.just(set()))
        known = {p: diff_counts(trees, *p) for p in chosen}
        assert diff_counts(trees, a, bb, known) == counts


def _differing_pairs(trees: Trees, a: bytes, b: bytes) -> set[tuple[bytes, bytes]]:
    """The pairs of folder ids, one per side, that diff compares from roots ``a``, ``b``."""
    out: set[tuple[bytes, bytes]] = set()
    todo = [(a, b)] if a != b else []
    while todo:
        x, y = todo.pop()
        out.add((x, y))
        tx, ty = trees.get(x), trees.get(y)
        for n in tx.keys() & ty.keys():
            ex, ey = tx[n], ty[n]
            if ex.kind == KIND_TREE and ey.kind == KIND_TREE and ex.id != ey.id:
                todo.append((ex.id, ey.id))
    return out


@given(st.lists(op_lists, min_size=1, max_size=4))
@SETTINGS
def test_merge_matches_model(store, op_seqs):
    with store.batch() as b:
        trees = Trees(store, b)
        roots = [build(trees, s) for s in op_seqs]
        models = [model_of(s) for s in op_seqs]
        m = merge(trees, roots)
        expected = model_merge(models)
        assert dict(listing(trees, m)) == expected
        check_sizes(trees, m)
        assert flatten(trees, roots) == m
        # the merge's id only depends on its content
        assert m == apply_edits(trees, EMPTY_TREE_ID, expected)


def test_merge_file_folder_collisions_later_kind_wins(store):
    x, y, z = content_entry(b"x"), content_entry(b"y"), content_entry(b"z")
    with store.batch() as b:
        trees = Trees(store, b)
        folder = apply_edits(trees, EMPTY_TREE_ID, {("d", "in"): x, ("keep",): y})
        file_ = apply_edits(trees, EMPTY_TREE_ID, {("d",): z})
        # later file replaces the earlier folder as a whole
        assert dict(walk(trees, merge(trees, [folder, file_]))) == {("d",): z, ("keep",): y}
        # later folder replaces the earlier file as a whole
        assert dict(walk(trees, merge(trees, [file_, folder]))) == {
            ("d", "in"): x,
            ("keep",): y,
        }
        # folders on both sides merge path by path
        other = apply_edits(trees, EMPTY_TREE_ID, {("d", "other"): z, ("d", "in"): y})
        assert dict(walk(trees, merge(trees, [folder, other]))) == {
            ("d", "in"): y,
            ("d", "other"): z,
            ("keep",): y,
        }


def test_merge_of_nothing_is_the_stored_empty_tree(store):
    trees = Trees(store)
    assert merge(trees, []) == EMPTY_TREE_ID
    assert store.has_object(EMPTY_TREE_ID)
    assert store.get_tree(EMPTY_TREE_ID) == {}


def test_empty_tree_is_stored_without_a_batch(tmp_path):
    # regression: Trees pre-seeded its cache with the empty tree, so put({}) without a
    # batch never wrote it and a zero-file dataset's root was missing from the store
    s = open_store(tmp_path)
    trees = Trees(s)
    x = content_entry(b"x")
    root = apply_edits(trees, EMPTY_TREE_ID, {("a",): x})
    assert apply_edits(trees, root, {("a",): None}) == EMPTY_TREE_ID
    assert s.has_object(EMPTY_TREE_ID)
    assert Trees(s).ensure_empty() == EMPTY_TREE_ID
    assert s.get_tree(EMPTY_TREE_ID) == {}
    s.close()


@given(op_lists, paths, file_entries)
@SETTINGS
def test_only_the_edited_path_is_rewritten(store, op_seq, p, e):
    with store.batch() as b:
        trees = Trees(store, b)
        r1 = build(trees, op_seq)
        r2 = apply_edits(trees, r1, {p: e})
        before, after = dict(walk_dirs(trees, r1)), dict(walk_dirs(trees, r2))
        for d, tid in after.items():
            if not _under(p, d) and d in before:
                # a folder off the edited path keeps its id (and is never reopened)
                assert before[d] == tid


def test_deep_edit_rewrites_only_its_path(tmp_path):
    s = open_store(tmp_path)
    files = {
        (f"d{i}", f"e{j}", f"f{k}.bin"): content_entry(f"{i}{j}{k}".encode())
        for i in range(4)
        for j in range(4)
        for k in range(4)
    }
    trees = Trees(s)
    with s.batch() as b:
        root = apply_edits(Trees(s, b), EMPTY_TREE_ID, files)
    n0 = s.stats()["objects"]
    before = dict(walk_dirs(trees, root))
    root2 = apply_edits(trees, root, {("d1", "e2", "f3.bin"): content_entry(b"newer")})
    after = dict(walk_dirs(trees, root2))
    changed = {d for d in after if before.get(d) != after[d]}
    assert changed == {(), ("d1",), ("d1", "e2")}
    assert s.stats()["objects"] == n0 + 3  # three folders rewritten, nothing else
    # sibling subtrees are shared by id
    t1, t2 = s.get_tree(root), s.get_tree(root2)
    assert t1["d0"] == t2["d0"] and t1["d3"] == t2["d3"]
    assert s.get_tree(t1["d1"].id)["e0"] == s.get_tree(t2["d1"].id)["e0"]
    # sizes follow the edit
    assert t2["d1"].size == t1["d1"].size + 2 and t2["d0"].size == 16 * 3
    # a reader that never saw the batch can read everything back
    fresh = Trees(s)
    assert dict(walk(fresh, root2)) == {**files, ("d1", "e2", "f3.bin"): content_entry(b"newer")}
    s.close()


def test_deleting_below_a_file_or_missing_path_is_a_no_op(store):
    x = content_entry(b"x")
    trees = Trees(store)
    root = apply_edits(trees, EMPTY_TREE_ID, {("a",): x, ("b", "c"): x})
    assert apply_edits(trees, root, {("a", "z"): None}) == root
    assert apply_edits(trees, root, {("q",): None}) == root
    assert apply_edits(trees, root, {("b", "c", "d"): None}) == root
    assert apply_edits(trees, root, {}) == root
    # deleting the last file of a folder removes the folder
    r = apply_edits(trees, root, {("b", "c"): None})
    assert "b" not in store.get_tree(r)
    assert lookup(trees, r, ("b",)) is None
    assert lookup(trees, root, ("a", "z")) is None
    assert lookup(trees, root, ("b",)).kind == KIND_TREE


def test_stored_trees_decode_and_validate(store):
    trees = Trees(store)
    x = content_entry(b"x")
    root = apply_edits(trees, EMPTY_TREE_ID, {("k", "é", "z"): x, ("k", "a"): x})
    for _, tid in walk_dirs(trees, root):
        raw = store.get_object(tid, b"T")
        assert decode_tree(raw, tid) == store.get_tree(tid)
    assert path_str(("k", "é", "z")) == "k/é/z"


def test_diff_and_merge_read_only_the_folders_that_differ(tmp_path, monkeypatch):
    """docs/architecture.md invariant 8: tree operations descend only where subtree ids
    differ, so comparing or merging two large versions costs the changed paths."""
    s = open_store(tmp_path)
    files = {
        (f"d{i}", f"e{j}", f"f{k}.bin"): content_entry(f"{i}{j}{k}".encode())
        for i in range(4)
        for j in range(4)
        for k in range(4)
    }
    with s.batch() as b:
        t = Trees(s, b)
        root = apply_edits(t, EMPTY_TREE_ID, files)
        root2 = apply_edits(t, root, {("d1", "e2", "f3.bin"): content_entry(b"new")})
    read: list[bytes] = []
    from dsvc.store import StoreReader

    reader_object = StoreReader.object

    def counted(self, oid: bytes, tag: bytes):
        if tag == TAG_TREE:  # every tree read (decoded, raw rows, or bytes) comes here
            read.append(oid)
        return reader_object(self, oid, tag)

    monkeypatch.setattr(StoreReader, "object", counted)
    changes = list(diff(Trees(s), root, root2))
    assert [c.path for c in changes] == [("d1", "e2", "f3.bin")]
    assert len(read) == 6  # (), d1, d1/e2 of each side: 3 of 21 folders per version
    read.clear()
    merged = merge(Trees(s), [root, root2])
    assert merged == root2
    assert len(set(read)) <= 6, len(set(read))
    s.close()


class _Counting(Trees):
    """Trees that records every folder it is asked for (sharing a builder's memory, so
    trees still in an unflushed batch can be read)."""

    def __init__(self, src: Trees) -> None:
        super().__init__(src.store, src.batch)
        self._mem = src._mem
        self.read: list[bytes] = []

    def get(self, tid: bytes):
        self.read.append(tid)
        return super().get(tid)

    def rows(self, tid: bytes):
        self.read.append(tid)
        return super().rows(tid)


def _differing_folders(trees: Trees, a: bytes, b: bytes) -> set[bytes]:
    """Ids of the folders whose id differs from the other side's at the same path (the
    only folders a diff or merge of ``a`` and ``b`` may open), plus the two roots."""
    da, db = dict(walk_dirs(trees, a)), dict(walk_dirs(trees, b))
    out = {a, b}
    out |= {t for p, t in da.items() if db.get(p) != t}
    out |= {t for p, t in db.items() if da.get(p) != t}
    return out


@given(op_lists, op_lists)
@SETTINGS
def test_diff_and_merge_open_only_folders_whose_ids_differ(store, base_ops, more_ops):
    """Invariant 8 as a property: on any pair of nested trees, diff and merge read only
    folders whose id differs at their path; equal subtrees are skipped unread."""
    with store.batch() as b:
        trees = Trees(store, b)
        a = build(trees, base_ops)
        bb = build(trees, more_ops, a)
        allowed = _differing_folders(trees, a, bb)
        for x, y in ((a, bb), (bb, a)):
            c = _Counting(trees)
            got = list(diff(c, x, y))
            assert set(c.read) <= allowed
            # and the diff is complete: applying it to x (removals first) gives y
            edits = {ch.path: None for ch in got if ch.new is None}
            edits.update({ch.path: ch.new for ch in got if ch.new is not None})
            assert apply_edits(trees, x, edits) == y
            c = _Counting(trees)
            m = merge(c, [x, y])
            assert set(c.read) <= allowed
            assert dict(listing(trees, m)) == model_merge(
                [dict(listing(trees, x)), dict(listing(trees, y))]
            )


@given(op_lists, op_lists)
@SETTINGS
def test_diff_stats_match_model(store, base_ops, more_ops):
    with store.batch() as b:
        trees = Trees(store, b)
        a = build(trees, base_ops)
        bb = build(trees, more_ops, a)
        ma, mb = model_of(base_ops), model_of([*base_ops, *more_ops])
        st = diff_stats(diff(trees, a, bb))
        added = [p for p in mb if p not in ma]
        removed = [p for p in ma if p not in mb]
        modified = [p for p in ma if p in mb and ma[p] != mb[p]]
        assert (st.added, st.removed, st.modified) == (len(added), len(removed), len(modified))
        assert st.bytes_added == sum(mb[p].size for p in added)
        assert st.bytes_removed == sum(ma[p].size for p in removed)
        assert st.bytes_delta == sum(mb[p].size - ma[p].size for p in modified)


@pytest.mark.parametrize(
    "rows",
    [
        [["..", 3, b"i" * 16, 1, 0o644]],  # an escaping name
        [["a", 3, b"short", 1, 0o644]],  # a bad id
        [["a", 3, b"i" * 16, 1, 0o644], ["a", 3, b"j" * 16, 2, 0o644]],  # a name twice
        [7],  # not a row
        {"a": 1},  # not a list
    ],
)
def test_diff_validates_the_entries_it_reports(tmp_path, rows):
    """The diff compares raw rows and builds entries only for those that differ: those
    are validated exactly as a full decode validates a tree (hostile remote trees)."""
    import msgpack

    from dsvc.errors import IntegrityError

    s = open_store(tmp_path)
    with s.batch() as b:
        bad = b.put_object(TAG_TREE, msgpack.packb(rows, use_bin_type=True))
        good = Trees(s, b).put({"a": content_entry(b"x")}).id
    for x, y in ((EMPTY_TREE_ID, bad), (bad, EMPTY_TREE_ID), (good, bad)):
        with pytest.raises(IntegrityError):
            list(diff(Trees(s), x, y))
    s.close()
