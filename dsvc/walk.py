"""The one reachability walk over a version's trees (issue 12: local gc's mark, remote
gc's reach and push's plan all use it).

It knows nothing of where objects live: the caller passes how to read a tree's entries
and a blob's chunk ids (from a store snapshot, or the store, raising or returning None
for what is absent), which ids it has already seen, and which to skip with their whole
subtree (push: what the remote already holds, by the closure invariant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from dsvc.objects import CHUNK_REF_KINDS, KIND_TREE, Entry

TREE, BLOB, CHUNK = "tree", "blob", "chunk"


def reach(
    roots: Iterable[bytes],
    tree_entries: Callable[[bytes], dict[str, Entry] | None],
    blob_chunks: Callable[[bytes], Iterable[bytes] | None],
    seen: set[bytes],
    skip: Callable[[bytes], bool] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(TREE | BLOB | CHUNK, id)`` for everything below ``roots`` not in ``seen``
    (each id once; ``seen`` grows as the walk goes). A tree comes after everything below
    it (post-order: push uploads children first) and a blob after its chunks. A chunk
    entry (a single-chunk file's, or an external link's) yields its chunk.

    ``tree_entries(id)`` / ``blob_chunks(id)`` return None for what is not there (the
    id is still yielded, nothing below it is); ``skip(id)`` drops a tree or blob with
    everything below it. Iterative, so any depth works.
    """
    for root in roots:
        if root in seen or (skip is not None and skip(root)):
            continue
        seen.add(root)
        stack = [(root, iter((tree_entries(root) or {}).values()))]
        while stack:
            tid, todo = stack[-1]
            for e in todo:
                if e.id in seen:
                    continue
                if e.kind == KIND_TREE:
                    if skip is None or not skip(e.id):
                        seen.add(e.id)
                        stack.append((e.id, iter((tree_entries(e.id) or {}).values())))
                        break
                elif e.kind in CHUNK_REF_KINDS:
                    seen.add(e.id)
                    yield CHUNK, e.id
                elif skip is None or not skip(e.id):
                    seen.add(e.id)
                    for c in blob_chunks(e.id) or ():
                        if c not in seen:
                            seen.add(c)
                            yield CHUNK, c
                    yield BLOB, e.id
            else:
                stack.pop()
                yield TREE, tid


def history(
    commits: Iterable[bytes],
    read_commit: Callable[[bytes], tuple[bytes, Iterable[bytes]] | None],
    seen: set[bytes],
) -> Iterator[tuple[bytes, bytes | None]]:
    """Yield ``(commit id, its root tree or None)`` for ``commits`` and every ancestor
    not in ``seen`` (each once; ``seen`` grows). As in git, a version keeps its history
    reachable: a forced delete of a parent's record leaves the parent's commit and tree
    to its children. ``read_commit(id)`` returns ``(tree, parents)`` or None for a commit
    that is not there (yielded with tree None; the walk stops there). Iterative."""
    todo = [c for c in commits]
    while todo:
        cid = todo.pop()
        if cid in seen:
            continue
        seen.add(cid)
        got = read_commit(cid)
        if got is None:
            yield cid, None
            continue
        tree, parents = got
        yield cid, tree
        todo.extend(p for p in parents if p not in seen)
