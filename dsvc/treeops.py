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

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dsvc.ids import TAG_TREE, object_id
from dsvc.objects import (
    EMPTY_TREE_ID,
    KIND_TREE,
    MODE_DIR,
    Entry,
    encode_tree,
)
from dsvc.store import Store, WriteBatch

Path = tuple[str, ...]


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


def _edit(trees: Trees, tid: bytes | None, edits: dict[Path, Entry | None]) -> Entry:
    entries = dict(trees.get(tid)) if tid is not None else {}
    # per name: (replaced?, replacement, edits below it made after the replacement)
    groups: dict[str, tuple[bool, Entry | None, dict[Path, Entry | None]]] = {}
    for path, entry in edits.items():
        head, rest = path[0], path[1:]
        if not rest:
            groups[head] = (True, entry, {})
        else:
            groups.setdefault(head, (False, None, {}))[2][rest] = entry
    for name, (replaced, replacement, sub) in groups.items():
        cur = replacement if replaced else entries.get(name)
        if not sub:
            if cur is None:
                entries.pop(name, None)
            else:
                entries[name] = cur
            continue
        base = cur.id if cur is not None and cur.kind == KIND_TREE else None
        if base is None and all(e is None for e in sub.values()):
            # deleting below something that is not a folder deletes nothing below it
            if cur is None:
                entries.pop(name, None)
            else:
                entries[name] = cur
            continue
        child = _edit(trees, base, sub)
        if child.id == EMPTY_TREE_ID:
            entries.pop(name, None)
        else:
            entries[name] = child
    return trees.put(entries)


def lookup(trees: Trees, root: bytes, path: Path) -> Entry | None:
    """The entry at ``path`` (file or folder), or None."""
    tid = root
    for i, name in enumerate(path):
        e = trees.get(tid).get(name)
        if e is None:
            return None
        if i == len(path) - 1:
            return e
        if e.kind != KIND_TREE:
            return None
        tid = e.id
    return Entry(KIND_TREE, root, 0, MODE_DIR)


def walk(trees: Trees, root: bytes, prefix: Path = ()) -> Iterator[tuple[Path, Entry]]:
    """Every file below ``root`` as ``(path, entry)``, in canonical (sorted) order."""
    entries = trees.get(root)
    for name in sorted(entries, key=lambda n: n.encode()):
        e = entries[name]
        p = (*prefix, name)
        if e.kind == KIND_TREE:
            yield from walk(trees, e.id, p)
        else:
            yield p, e


def walk_dirs(trees: Trees, root: bytes, prefix: Path = ()) -> Iterator[tuple[Path, bytes]]:
    """Every folder (including the root) as ``(path, tree id)``, parents first."""
    yield prefix, root
    for name, e in trees.get(root).items():
        if e.kind == KIND_TREE:
            yield from walk_dirs(trees, e.id, (*prefix, name))


@dataclass(frozen=True)
class Change:
    """One file that differs between two trees."""

    path: Path
    old: Entry | None
    new: Entry | None

    @property
    def status(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "modified"


def diff(trees: Trees, a: bytes, b: bytes, prefix: Path = ()) -> Iterator[Change]:
    """Files added, removed or modified from ``a`` to ``b``; equal subtrees are skipped.

    A file whose content is unchanged but whose mode changed counts as modified.
    """
    if a == b:
        return
    ta, tb = trees.get(a), trees.get(b)
    for name in sorted(ta.keys() | tb.keys(), key=lambda n: n.encode()):
        ea, eb = ta.get(name), tb.get(name)
        if ea == eb:
            continue
        p = (*prefix, name)
        a_dir = ea is not None and ea.kind == KIND_TREE
        b_dir = eb is not None and eb.kind == KIND_TREE
        if a_dir and b_dir:
            yield from diff(trees, ea.id, eb.id, p)
            continue
        if a_dir:
            yield from (Change(q, e, None) for q, e in walk(trees, ea.id, p))
            ea = None
        if b_dir:
            yield from (Change(q, None, e) for q, e in walk(trees, eb.id, p))
            eb = None
        if ea is not None or eb is not None:
            yield Change(p, ea, eb)


def merge(trees: Trees, roots: list[bytes]) -> bytes:
    """Merge trees in order, later overriding earlier path by path."""
    if not roots:
        return trees.ensure_empty()
    acc = roots[0]
    for r in roots[1:]:
        acc = _merge2(trees, acc, r).id
    return acc


def _merge2(trees: Trees, a: bytes, b: bytes) -> Entry:
    if a in (b, EMPTY_TREE_ID):
        return Entry(KIND_TREE, b, _size(trees, b), MODE_DIR)
    ta, tb = trees.get(a), trees.get(b)
    if b == EMPTY_TREE_ID:
        return Entry(KIND_TREE, a, _size(trees, a), MODE_DIR)
    out = dict(ta)
    for name, eb in tb.items():
        ea = out.get(name)
        if ea is not None and ea.kind == KIND_TREE and eb.kind == KIND_TREE and ea.id != eb.id:
            out[name] = _merge2(trees, ea.id, eb.id)
        else:
            out[name] = eb
    return trees.put(out)


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
