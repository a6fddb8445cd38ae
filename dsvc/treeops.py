"""Tree algebra over nested, content-addressed trees: edit, diff, merge, walk.

All operations compare subtree ids before descending, so their cost is proportional to
what differs, not to the size of the trees: two versions that share a folder share its
id and the folder is never opened.

Rules (the stateful tests check them against a plain ``dict[path] -> bytes`` model):

* Datasets hold files; folders exist only as the path of some file. A folder left
  empty by an edit disappears.
* ``merge([t1, t2, ...])``: later trees override earlier ones path by path. Where one
  side has a file and the other a folder under the same name, the later side wins the
  whole name (a later file replaces an earlier folder, and the other way round).
* A tree entry for a folder carries the total size of the files below it.
"""

from __future__ import annotations

import gc
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack

from dsvc import objects
from dsvc.ids import TAG_TREE, object_id
from dsvc.objects import (
    EMPTY_TREE_BYTES,
    EMPTY_TREE_ID,
    KIND_TREE,
    MODE_DIR,
    Entry,
    decode_tree,
    encode_tree,
)
from dsvc.record import Record
from dsvc.store import Store, WriteBatch

Path = tuple[str, ...]
#: a raw tree entry as stored: ``(name, kind, id, size, mode)``
Row = tuple[Any, ...]


class Trees:
    """Tree reader/writer bound to a store and an open write batch.

    Trees written through ``put`` are kept in memory until the batch flushes, so they
    can be read back at once.
    """

    def __init__(self, store: Store, batch: WriteBatch | None = None) -> None:
        self.store = store
        self.batch = batch
        # trees known to be stored (or queued in ``batch``): ``put`` skips rewriting them
        self._mem: dict[bytes, dict[str, Entry]] = {}

    def get(self, tid: bytes) -> dict[str, Entry]:
        t = self._mem.get(tid)
        if t is None:
            if tid == EMPTY_TREE_ID:  # readable even before it is stored
                return {}
            t = self.store.get_tree(tid)
            if len(self._mem) < 100_000:
                self._mem[tid] = t
        return t

    def put(self, entries: Mapping[str, Entry]) -> Entry:
        """Store a tree; returns the entry that refers to it from its parent."""
        data = encode_tree(entries)
        tid = object_id(TAG_TREE, data)
        if tid not in self._mem or self.batch is not None:
            self._mem[tid] = dict(entries)
            if self.batch is not None:
                self.batch.put_object(TAG_TREE, data)
            else:
                with self.store.batch() as b:
                    b.put_object(TAG_TREE, data)
        return Entry(KIND_TREE, tid, sum(e.size for e in entries.values()), MODE_DIR)

    def rows(self, tid: bytes) -> tuple[Row, ...]:
        """A folder's entries as raw ``(name, kind, id, size, mode)`` rows, unvalidated
        (:func:`_differing` validates the rows it returns). No ``Entry`` is built and
        nothing is cached: a diff of 1,000 folders of 1,000 files builds and keeps only
        the entries that differ (profiled: building and validating every entry of both
        sides was 3/4 of ``list_modified_files``)."""
        t = self._mem.get(tid)
        if t is not None:
            return tuple((n, *e) for n, e in t.items())
        if tid == EMPTY_TREE_ID:
            return ()
        data = self.store.get_object(tid, TAG_TREE)
        # the cyclic gc would run every few hundred rows, as each row is a new tuple, and
        # scan them all: a third of the unpack time (these tuples cannot form cycles)
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            rows = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=False)
        except Exception:  # msgpack raises several unrelated types
            rows = None
        finally:
            if gc_was_on:
                gc.enable()
        if not isinstance(rows, tuple):  # malformed: the full decode raises the right error
            return tuple((n, *e) for n, e in self.get(tid).items())
        return rows

    def encoded(self, a: bytes, b: bytes) -> tuple[bytes, bytes] | None:
        """Two stored trees' verified bytes, read in one snapshot; None when either is
        held in memory (a tree put by this process: :meth:`rows` serves it without an
        encode)."""
        if a in self._mem or b in self._mem:
            return None
        with self.store.reader() as r:
            return tuple(  # type: ignore[return-value]
                EMPTY_TREE_BYTES if t == EMPTY_TREE_ID else r.object(t, TAG_TREE) for t in (a, b)
            )

    def ensure_empty(self) -> bytes:
        """Store the empty tree (a zero-file dataset's root) and return its id."""
        return self.put({}).id


def apply_edits(trees: Trees, root: bytes, edits: Mapping[Path, Entry | None]) -> bytes:
    """Return the root after setting each path to an entry (``None`` deletes).

    Only the folders on the edited paths are rewritten. Deleting a path removes the
    file or the whole folder under it; setting a file where a folder was replaces it.
    """
    if not edits:
        return root
    return _edit(trees, root, dict(edits)).id


class _Frame:
    """One folder being rebuilt by an iterative walk: its new entries, the work left in
    it, and the name whose child folder is being rebuilt (its result goes there)."""

    __slots__ = ("entries", "todo", "waiting")

    def __init__(self, entries: dict[str, Entry], todo: Iterator) -> None:
        self.entries = entries
        self.todo = todo
        self.waiting: str | None = None


def _edit(trees: Trees, tid: bytes | None, edits: dict[Path, Entry | None]) -> Entry:
    # an explicit stack instead of recursion: a tree from a remote may be thousands of
    # folders deep (Python's recursion limit is 1,000)
    def start(tid: bytes | None, edits: dict[Path, Entry | None]) -> _Frame:
        entries = dict(trees.get(tid)) if tid is not None else {}
        # per name: (replaced?, replacement, edits below it made after the replacement)
        groups: dict[str, tuple[bool, Entry | None, dict[Path, Entry | None]]] = {}
        for path, entry in edits.items():
            head, rest = path[0], path[1:]
            if not rest:
                groups[head] = (True, entry, {})
            else:
                groups.setdefault(head, (False, None, {}))[2][rest] = entry
        return _Frame(entries, iter(groups.items()))

    stack = [start(tid, edits)]
    child = Entry(KIND_TREE, EMPTY_TREE_ID, 0, MODE_DIR)
    while stack:
        fr = stack[-1]
        entries = fr.entries
        if fr.waiting is not None:  # the child folder just rebuilt
            if child.id == EMPTY_TREE_ID:
                entries.pop(fr.waiting, None)
            else:
                entries[fr.waiting] = child
            fr.waiting = None
        for name, (replaced, replacement, sub) in fr.todo:
            cur = replacement if replaced else entries.get(name)
            base = cur.id if cur is not None and cur.kind == KIND_TREE else None
            # no edits below, or only deletes below something that is not a folder
            # (which delete nothing): the entry is just set or removed
            if not sub or (base is None and all(e is None for e in sub.values())):
                if cur is None:
                    entries.pop(name, None)
                else:
                    entries[name] = cur
                continue
            fr.waiting = name
            stack.append(start(base, sub))
            break
        else:
            stack.pop()
            child = trees.put(entries)
    return child


def lookup(trees: Trees, root: bytes, path: Path) -> Entry | None:
    """The entry at ``path`` (file or folder), or None."""
    return lookup_with(trees.get, root, path)


def lookup_with(
    get_tree: Callable[[bytes], Mapping[str, Entry]], root: bytes, path: Path
) -> Entry | None:
    """:func:`lookup` over any tree source (the stream reader fetches trees on demand)."""
    tid = root
    for i, name in enumerate(path):
        e = get_tree(tid).get(name)
        if e is None:
            return None
        if i == len(path) - 1:
            return e
        if e.kind != KIND_TREE:
            return None
        tid = e.id
    return Entry(KIND_TREE, root, 0, MODE_DIR)


def _sorted(entries: Mapping[str, Entry]) -> Iterator[tuple[str, Entry]]:
    return iter(sorted(entries.items(), key=lambda x: x[0].encode()))


def walk(trees: Trees, root: bytes, prefix: Path = ()) -> Iterator[tuple[Path, Entry]]:
    """Every file below ``root`` as ``(path, entry)``, in canonical (sorted) order.

    Iterative (a stack of open folders), so any depth works."""
    stack = [(prefix, _sorted(trees.get(root)))]
    while stack:
        path, todo = stack[-1]
        for name, e in todo:
            p = (*path, name)
            if e.kind == KIND_TREE:
                stack.append((p, _sorted(trees.get(e.id))))
                break
            yield p, e
        else:
            stack.pop()


def walk_dirs(trees: Trees, root: bytes, prefix: Path = ()) -> Iterator[tuple[Path, bytes]]:
    """Every folder (including the root) as ``(path, tree id)``, parents first."""
    stack = [(prefix, root)]
    while stack:
        path, tid = stack.pop()
        yield path, tid
        kids = [((*path, n), e.id) for n, e in trees.get(tid).items() if e.kind == KIND_TREE]
        stack.extend(reversed(kids))


@dataclass(frozen=True)
class Change:
    """One file that differs between two trees."""

    path: Path
    old: Entry | None
    new: Entry | None

    @property
    def status(self) -> str:
        """``"added"``, ``"removed"`` or ``"modified"``."""
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "modified"

    @property
    def path_str(self) -> str:
        """The path as the dataset lists it (``a/b/c.txt``)."""
        return "/".join(self.path)


_Differing = tuple[dict[str, Entry], dict[str, Entry]]


def _differing(trees: Trees, a: bytes, b: bytes) -> _Differing:
    """The entries of folders ``a`` and ``b`` that are not equal on the other side (as
    validated ``name -> Entry`` maps): a merge of the encoded rows in C when the C
    module is built, else a set difference of the unpacked rows."""
    encoded = trees.encoded(a, b) if objects.treerows is not None else None
    if encoded is not None:
        found = objects.differing_entries(*encoded, a, b)
        if found is not None:
            return found
    ra, rb = trees.rows(a), trees.rows(b)
    try:
        if len(ra) == len(rb):
            # the common case, files modified in place: same names at the same places,
            # so a positional compare (no hashing) finds the rows that differ
            odd = [(x, y) for x, y in zip(ra, rb, strict=True) if x != y]
            if all(x[0] == y[0] for x, y in odd):
                return _validated({x for x, _ in odd}, a), _validated({y for _, y in odd}, b)
        sa, sb = set(ra), set(rb)
    except (TypeError, IndexError):  # a row that is not a tuple: the full decode says why
        return _differing_decoded(trees, a, b)
    return _validated(sa - sb, a), _validated(sb - sa, b)


def _validated(rows: set[Row], tid: bytes) -> dict[str, Entry]:
    """``rows`` of tree ``tid`` checked exactly as a full decode checks them (names,
    kinds, ids, sizes, one row per name), by decoding them as a tree."""
    if not rows:
        return {}
    try:
        ordered = sorted(rows, key=lambda r: r[0].encode())
    except (AttributeError, IndexError, TypeError, UnicodeEncodeError):
        ordered = list(rows)  # decode_tree names the bad row
    return decode_tree(msgpack.packb(ordered, use_bin_type=True), tid)


def _differing_decoded(
    trees: Trees, a: bytes, b: bytes
) -> tuple[dict[str, Entry], dict[str, Entry]]:
    ta, tb = trees.get(a), trees.get(b)
    return (
        {n: e for n, e in ta.items() if tb.get(n) != e},
        {n: e for n, e in tb.items() if ta.get(n) != e},
    )


def diff(trees: Trees, a: bytes, b: bytes, prefix: Path = ()) -> Iterator[Change]:
    """Files added, removed or modified from ``a`` to ``b``, streamed as
    :class:`Change` ``(path, old entry, new entry)`` in canonical (UTF-8 sorted) path
    order. Folders whose ids are equal on both sides are skipped without being read,
    so the cost is the folders on the changed paths, and memory is one folder per
    level being compared. The library call behind ``Dataset.diff``, ``list_*_files``
    and the CLI's ``diff``/``status``/``log``.

    A file whose content is unchanged but whose mode changed counts as modified.
    """
    if a == b:
        return
    ahead = _DiffAhead(trees)

    def pairs(a: bytes, b: bytes) -> Iterator[tuple[str, Entry | None, Entry | None]]:
        ta, tb = ahead.differing(a, b)
        names = sorted(ta.keys() | tb.keys(), key=lambda n: n.encode())
        rows = [(n, ta.get(n), tb.get(n)) for n in names]
        ahead.opened(
            [
                (ea.id, eb.id)
                for _, ea, eb in rows
                if ea is not None and eb is not None and ea.kind == eb.kind == KIND_TREE
            ]
        )
        return iter(rows)

    stack = [(prefix, pairs(a, b))]  # iterative: any depth works
    try:
        while stack:
            path, todo = stack[-1]
            for name, ea, eb in todo:
                p = (*path, name)
                a_dir = ea.id if ea is not None and ea.kind == KIND_TREE else None
                b_dir = eb.id if eb is not None and eb.kind == KIND_TREE else None
                if a_dir is not None and b_dir is not None:  # unequal, so different ids
                    stack.append((p, pairs(a_dir, b_dir)))
                    break
                if a_dir is not None:
                    yield from (Change(q, e, None) for q, e in walk(trees, a_dir, p))
                    ea = None
                if b_dir is not None:
                    yield from (Change(q, None, e) for q, e in walk(trees, b_dir, p))
                    eb = None
                if ea is not None or eb is not None:
                    yield Change(p, ea, eb)
            else:
                stack.pop()
    finally:
        ahead.close()


#: folder pairs a diff compares ahead of the walk (see _DiffAhead)
DIFF_AHEAD = 8


class _DiffAhead:
    """Compares the next folder pairs of a diff on a pool of two threads, while the
    walk handles the current one: the read, decompression and row merge of a pair run
    mostly without the GIL (zstd, the C merge). A diff of 1,000 changed folders took
    0.54 s on the walk's thread alone and 0.35 s with one more (docs/performance.md).

    The pairs are taken in the walk's order (depth first: a folder's subfolders come
    before its remaining siblings), so only pairs the walk will compare are read, and
    at most :data:`DIFF_AHEAD` results wait. Used only with the C merge (without it the
    work holds the GIL) and once a folder has more than one changed subfolder."""

    def __init__(self, trees: Trees) -> None:
        self.trees = trees
        self.order: deque[tuple[bytes, bytes]] = deque()  # pairs in the walk's order
        self.running: dict[tuple[bytes, bytes], Future[_Differing]] = {}
        self.pool: ThreadPoolExecutor | None = None

    def differing(self, a: bytes, b: bytes) -> _Differing:
        key = (a, b)
        if self.order and self.order[0] == key:
            self.order.popleft()
        f = self.running.pop(key, None)
        return f.result() if f is not None else _differing(self.trees, a, b)

    def opened(self, subs: list[tuple[bytes, bytes]]) -> None:
        """The subfolder pairs of the folder just compared: the walk's next ones."""
        self.order.extendleft(reversed(subs))
        if self.pool is None:
            if len(self.order) < 2 or objects.treerows is None:
                return
            self.pool = ThreadPoolExecutor(2, thread_name_prefix="dsvc-diff")
        for key in itertools.islice(self.order, DIFF_AHEAD):
            if key not in self.running:
                self.running[key] = self.pool.submit(_differing, self.trees, *key)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def diff_counts(
    trees: Trees,
    a: bytes,
    b: bytes,
    known: Mapping[tuple[bytes, bytes], tuple[int, int, int]] | None = None,
) -> tuple[int, int, int]:
    """``(removed, added, modified)``: the files :func:`diff` would yield, counted.

    ``known`` maps pairs of folder ids ``(a, b)`` to their counts when the caller knows
    them already (an ingest that compared each folder with its summary): those folders
    are not read. Trees are content-addressed, so a pair's counts never change. Equal
    ids are skipped as in :func:`diff`; only the folders that differ are read.
    """
    removed = added = modified = 0
    if a == b:
        return 0, 0, 0
    stack = [(a, b)]
    while stack:
        a, b = stack.pop()
        k = known.get((a, b)) if known else None
        if k is not None:
            removed, added, modified = removed + k[0], added + k[1], modified + k[2]
            continue
        ta, tb = _differing(trees, a, b)
        for name in ta.keys() | tb.keys():
            ea, eb = ta.get(name), tb.get(name)
            a_dir = ea.id if ea is not None and ea.kind == KIND_TREE else None
            b_dir = eb.id if eb is not None and eb.kind == KIND_TREE else None
            if a_dir is not None and b_dir is not None:  # unequal, so different ids
                stack.append((a_dir, b_dir))
                continue
            if a_dir is not None:
                removed += count_files(trees, a_dir)
                ea = None
            if b_dir is not None:
                added += count_files(trees, b_dir)
                eb = None
            if ea is None and eb is not None:
                added += 1
            elif eb is None and ea is not None:
                removed += 1
            elif ea is not None:
                modified += 1
    return removed, added, modified


@dataclass(frozen=True)
class DiffStats:
    """Counts and bytes of a diff (:func:`diff_stats`); ``bytes_*`` sum the new sizes of
    added files, the old sizes of removed ones, and new minus old size of modified ones."""

    added: int = 0
    removed: int = 0
    modified: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0
    bytes_delta: int = 0

    @property
    def changed(self) -> int:
        """Files that differ in any way."""
        return self.added + self.removed + self.modified


def diff_stats(changes: Iterable[Change]) -> DiffStats:
    """Sum a stream of changes (from :func:`diff`) into counts and bytes."""
    n = {"added": 0, "removed": 0, "modified": 0}
    added = removed = delta = 0
    for c in changes:
        n[c.status] += 1
        if c.old is None and c.new is not None:
            added += c.new.size
        elif c.new is None and c.old is not None:
            removed += c.old.size
        elif c.new is not None and c.old is not None:
            delta += c.new.size - c.old.size
    return DiffStats(n["added"], n["removed"], n["modified"], added, removed, delta)


def merge(trees: Trees, roots: list[bytes]) -> bytes:
    """Merge trees in order, later overriding earlier path by path."""
    if not roots:
        return trees.ensure_empty()
    acc = roots[0]
    for r in roots[1:]:
        acc = _merge2(trees, acc, r).id
    return acc


def _merge2(trees: Trees, a: bytes, b: bytes) -> Entry:
    def start(a: bytes, b: bytes) -> Entry | _Frame:
        if a in (b, EMPTY_TREE_ID):
            return Entry(KIND_TREE, b, _size(trees, b), MODE_DIR)
        if b == EMPTY_TREE_ID:
            return Entry(KIND_TREE, a, _size(trees, a), MODE_DIR)
        return _Frame(dict(trees.get(a)), iter(list(trees.get(b).items())))

    top = start(a, b)
    if isinstance(top, Entry):
        return top
    stack = [top]  # iterative, like _edit: any depth works
    child = Entry(KIND_TREE, EMPTY_TREE_ID, 0, MODE_DIR)
    while stack:
        fr = stack[-1]
        out = fr.entries
        if fr.waiting is not None:  # the merged child folder is done
            out[fr.waiting] = child
            fr.waiting = None
        for name, eb in fr.todo:
            ea = out.get(name)
            if ea is not None and ea.kind == KIND_TREE and eb.kind == KIND_TREE and ea.id != eb.id:
                sub = start(ea.id, eb.id)
                if isinstance(sub, Entry):
                    out[name] = sub
                    continue
                fr.waiting = name
                stack.append(sub)
                break
            out[name] = eb
        else:
            stack.pop()
            child = trees.put(out)
    return child


def _size(trees: Trees, tid: bytes) -> int:
    return sum(e.size for e in trees.get(tid).values())


def flatten(trees: Trees, roots: list[bytes]) -> bytes:
    """The content of a squash: the in-order merge of each version's full tree.

    Every version's tree already holds its full content (a draft starts from the merge
    of its parents), so flattening a lineage never needs to replay history.
    """
    return merge(trees, roots)


def count_files(trees: Trees, root: bytes) -> int:
    return sum(1 for _ in walk(trees, root))


def path_str(path: Path) -> str:
    return "/".join(path)


# -- tree algebra the dataset layer builds on ---------------------------------------------
# Records reach this layer as plain maps; only the fields that describe content are read
# (``id``, ``tree``, ``base_tree``, ``parents``, ``removed_any``). What "finalized" means
# stays in the dataset layer, which passes the record lookups in.

#: a dataset path as its names, root first (the dataset layer's name for :data:`Path`)
RelPath = Path


def edit_effects(trees: Trees, root: bytes, edits: Mapping[Path, Entry | None]) -> tuple[int, bool]:
    """``(files added or changed or removed, whether any existing file goes away)``.

    A file goes away when it is removed, when a file replaces a folder, or when a file
    is set below a path that is a file now (the folder replaces it).
    """
    changed = 0
    removes = False
    for path, new in edits.items():
        tid: bytes | None = root
        cur: Entry | None = None
        for i, name in enumerate(path):
            cur = trees.get(tid).get(name) if tid is not None else None
            if cur is None or i == len(path) - 1:
                break
            if cur.kind != KIND_TREE:  # a file where a folder is needed
                if new is not None:
                    removes = True
                cur = None
                break
            tid = cur.id
        if new is None:
            if cur is not None:
                changed += 1
                removes = True
        elif cur != new:
            changed += 1
            if cur is not None and cur.kind == KIND_TREE:
                removes = True
    return changed, removes


def squash_tree(
    trees: Trees, recs: Sequence[Record], last_parent: Callable[[Record], Record | None]
) -> bytes:
    """The in-order merge of the full trees of ``recs``.

    ``last_parent(rec)`` is the record of ``rec``'s last parent if that version is
    finalized (its tree can no longer change), else None.

    Along a lineage most steps need no merging: when a version only added or replaced
    files since its base (``removed_any`` is False), its tree holds every path of its
    base, and a base holds every path of its last parent, so merging any tree of that
    chain with the version's tree gives the version's tree. Only the other steps run
    the tree merge (whose cost is the tree entries that differ).
    """
    chains: dict[str, set[bytes]] = {}

    def covered(rec: Record) -> set[bytes]:
        """Trees whose every path is also in ``rec``'s tree."""
        path = []
        r: Record | None = rec
        while r is not None and r.id not in chains:
            path.append(r)
            clean = r.removed_any is False and r.base_tree is not None
            r = last_parent(r) if clean else None
        below = chains.get(r.id, set()) if r is not None else set()
        for x in reversed(path):
            own = {x.tree}
            if x.removed_any is False and x.base_tree is not None:
                own.add(x.base_tree)
                if x.parents and below:
                    own |= below
            chains[x.id] = below = own
        return chains[rec.id]

    acc: bytes | None = None
    for r in recs:
        skip = acc is None or acc in covered(r)
        acc = r.tree if skip or acc is None else merge(trees, [acc, r.tree])
    return acc if acc is not None else trees.ensure_empty()


def owners(
    trees: Trees,
    rec: Record,
    files: Mapping[str, Entry],
    get_record: Callable[[str], Record | None],
) -> dict[str, str]:
    """For each path of ``files`` (the content of ``rec``), the id of the version that
    introduced that content: the latest parent holding the same entry at the same path
    passes the question on to its own parents, else it is ``rec``'s own change.
    ``get_record`` finds a parent's record by id (None when it is unknown)."""
    out: dict[str, str] = {}
    todo: list[tuple[Record, Mapping[str, Entry]]] = [(rec, files)]
    while todo:
        r, remaining = todo.pop()
        for pid in reversed(r.parents):
            if not remaining:
                break
            prec = get_record(pid)
            if prec is None:
                continue
            same = {
                p: e
                for p, e in remaining.items()
                if lookup(trees, prec.tree, tuple(p.split("/"))) == e
            }
            if same:
                todo.append((prec, same))
                remaining = {p: e for p, e in remaining.items() if p not in same}
        out.update(dict.fromkeys(remaining, r.id))
    return out


class LeanTrees(Trees):
    """Trees that keep nothing in memory, for operations over millions of files, where
    :class:`Trees`' cache (every tree read or written) would hold the whole dataset.
    A tree written through it is not readable until its batch commits; edit and merge
    never read back what they wrote."""

    def get(self, tid: bytes) -> dict[str, Entry]:
        return {} if tid == EMPTY_TREE_ID else self.store.get_tree(tid)

    def put(self, entries: Mapping[str, Entry]) -> Entry:
        data = encode_tree(entries)
        if self.batch is not None:
            tid = self.batch.put_object(TAG_TREE, data)
        else:
            with self.store.batch() as b:
                tid = b.put_object(TAG_TREE, data)
        return Entry(KIND_TREE, tid, sum(e.size for e in entries.values()), MODE_DIR)
