"""Grafting an added tree into a draft's staged tree, with what ClearML's
``add_files`` reports about it: how many files it adds, whether a file goes away, and
which files replace a file an earlier add took from elsewhere.

``Dataset.add_files`` and ``add_external_files`` ingest a folder into a tree
(:mod:`dsvc.ingest`) and graft it here; like every tree operation
(:mod:`dsvc.treeops`), a graft opens a folder only where the trees differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from dsvc.objects import EMPTY_TREE_ID, KIND_TREE, Entry
from dsvc.record import Record
from dsvc.treeops import RelPath, Trees, lookup

_NO_UPLOAD = Entry(0, b"", 0, 0)  # the draft was never uploaded (no uploaded tree)


def _eq(a: Entry | None, b: Entry | None) -> bool:
    """Equal entries; folders by id alone (a root's entry from ``lookup`` has no size)."""
    if a is None or b is None or a.kind != KIND_TREE or b.kind != KIND_TREE:
        return a == b
    return a.id == b.id


def _sub(trees: Trees, e: Entry | None) -> dict[str, Entry]:
    return trees.get(e.id) if e is not None and e.kind == KIND_TREE else {}


def add_effects(
    trees: Trees, t: Entry, c: Entry | None, b: Entry | None, u: Entry | None
) -> tuple[int, bool]:
    """``(added, removes)`` of putting ``t`` (a file or folder entry) where the staged
    tree holds ``c``, the base ``b`` and the last upload ``u`` (``_NO_UPLOAD``: none).

    ``added`` is what ClearML's ``add_files`` reports: files at paths that hold no file
    yet, plus files with unchanged content that this draft itself added (they differ
    from the base) and has not uploaded since. ``removes``: some existing file goes
    away (a file replaces a folder, or a folder a file). A folder is opened only where
    something in it can count: one equal in the staged tree and in the base (or the
    upload) is skipped.
    """
    added = 0
    removes = False
    stack: list[tuple[Entry, Entry | None, Entry | None, Entry | None]] = [(t, c, b, u)]
    while stack:
        t, c, b, u = stack.pop()
        if t.kind != KIND_TREE:
            if c is None or c.kind == KIND_TREE:
                added += 1
                removes = removes or c is not None
            elif c == t and b != t and u != t:
                added += 1
            continue
        if c is not None and c.kind != KIND_TREE:
            removes = True
        if _eq(c, t) and (_eq(b, t) or _eq(u, t)):
            continue  # every file in it is staged and in the base (or uploaded)
        tc = _sub(trees, c)
        tb = tc if _eq(b, c) else _sub(trees, b)
        tu = None if u is _NO_UPLOAD else tc if _eq(u, c) else _sub(trees, u)
        for name, te in trees.get(t.id).items():
            stack.append(
                (te, tc.get(name), tb.get(name), tu.get(name) if tu is not None else _NO_UPLOAD)
            )
    return added, removes


class _GraftFrame:
    """A folder of ``graft_tree`` where the new and the staged tree differ."""

    __slots__ = ("b", "new", "out", "todo", "u", "waiting")

    def __init__(self, trees: Trees, t: Entry, c: Entry, b: Entry | None, u: Entry | None):
        tt = trees.get(t.id)
        tc = trees.get(c.id)
        self.new = (t, tt)
        self.out = dict(tc)  # the staged folder, overridden name by name
        self.b = tc if _eq(b, c) else _sub(trees, b)
        self.u = None if u is _NO_UPLOAD else tc if _eq(u, c) else _sub(trees, u)
        self.todo = iter(tt.items())
        self.waiting: str | None = None


def graft_tree(
    trees: Trees, rec: Record, dest: RelPath, new: Entry, files: int
) -> tuple[Entry, int, bool]:
    """Merge the tree ``new`` (``files`` files) into ``rec``'s staged tree at ``dest``
    (later wins path by path, as :func:`dsvc.treeops.merge`): the merged entry for
    ``dest``, with ``add_files``' count and whether a file goes away
    (:func:`add_effects`), in one walk that opens a folder only where the two trees
    differ. A merged folder equal to the new one is not written again."""
    cur = lookup(trees, rec.tree, dest)
    base = lookup(trees, rec.base_tree, dest) if rec.base_tree else None
    up_root = rec.uploaded_tree
    up = lookup(trees, up_root, dest) if up_root else _NO_UPLOAD
    if cur is None or cur.id == EMPTY_TREE_ID:  # nothing there: every file is new
        return new, files, False
    if not (cur.kind == KIND_TREE and new.kind == KIND_TREE and cur.id != new.id):
        added, removes = add_effects(trees, new, cur, base, up)
        return new, added, removes
    added = 0
    removes = False
    stack = [_GraftFrame(trees, new, cur, base, up)]
    done = new
    while stack:
        fr = stack[-1]
        if fr.waiting is not None:  # the child folder just merged
            fr.out[fr.waiting] = done
            fr.waiting = None
        for name, te in fr.todo:
            ce = fr.out.get(name)
            be = fr.b.get(name)
            ue = fr.u.get(name) if fr.u is not None else _NO_UPLOAD
            if te.kind == KIND_TREE and ce is not None and ce.kind == KIND_TREE and ce.id != te.id:
                fr.waiting = name
                stack.append(_GraftFrame(trees, te, ce, be, ue))
                break
            n, r = add_effects(trees, te, ce, be, ue)
            added += n
            removes = removes or r
            fr.out[name] = te
        else:
            stack.pop()
            t, tt = fr.new
            done = t if fr.out == tt else trees.put(fr.out)
    return done, added, removes


def collisions(
    trees: Trees,
    earlier: list[tuple[RelPath, str, bytes]],
    dest: RelPath,
    srcdir: str,
    tid: bytes,
    shown: int = 10,
) -> tuple[int, list[tuple[RelPath, str, str]]]:
    """How many files of the tree ``tid`` (added at ``dest`` from ``srcdir``) replace a
    file that the latest of the ``earlier`` adds holding that path took from another
    file, and the first ``shown`` of them as ``(dataset path, earlier file, new file)``.

    Only the paths two adds have in common are visited, so re-adding a folder costs
    nothing here (its mapping is the same: no file can differ).
    """
    total = 0
    out: list[tuple[RelPath, str, str]] = []
    for i in range(len(earlier) - 1, -1, -1):
        d0, s0, t0 = earlier[i]
        n = min(len(d0), len(dest))
        if d0[:n] != dest[:n]:
            continue  # disjoint folders
        # one tree is placed below the other: align them at the deeper folder
        a: Entry | None
        b: Entry | None
        if len(d0) <= len(dest):
            same = os.path.join(s0, *dest[len(d0) :]) == srcdir
            a, b, at = lookup(trees, t0, dest[len(d0) :]), Entry(KIND_TREE, tid, 0, 0), dest
        else:
            same = os.path.join(srcdir, *d0[len(dest) :]) == s0
            a, b, at = Entry(KIND_TREE, t0, 0, 0), lookup(trees, tid, d0[len(dest) :]), d0
        if same or a is None or b is None or a.kind != KIND_TREE or b.kind != KIND_TREE:
            continue
        for p in common_files(trees, a.id, b.id, at):
            # a later add that also holds p decided where it came from
            if any(
                p[: len(d)] == d and lookup(trees, t, p[len(d) :]) is not None
                for d, _, t in earlier[i + 1 :]
            ):
                continue
            total += 1
            if len(out) < shown:
                out.append(
                    (p, os.path.join(s0, *p[len(d0) :]), os.path.join(srcdir, *p[len(dest) :]))
                )
    return total, out


def common_files(trees: Trees, a: bytes, b: bytes, prefix: RelPath) -> Iterator[RelPath]:
    """Paths that are files in both trees (a file in one and a folder in the other
    is not a common file)."""
    stack = [(prefix, a, b)]
    while stack:
        p, x, y = stack.pop()
        tx, ty = trees.get(x), trees.get(y)
        for name in sorted(tx.keys() & ty.keys()):
            ex, ey = tx[name], ty[name]
            if ex.kind == KIND_TREE and ey.kind == KIND_TREE:
                stack.append(((*p, name), ex.id, ey.id))
            elif ex.kind != KIND_TREE and ey.kind != KIND_TREE:
                yield (*p, name)
