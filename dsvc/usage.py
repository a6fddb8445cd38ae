"""How much a version, a dataset and the whole store hold: logical bytes (the files'
sizes) against stored bytes (the compressed, deduplicated chunks), and what a version
added over its parents. The library calls behind ``Dataset.usage()``, ``dsvc show``
and ``dsvc du`` (and the numbers ``dsvc demo`` prints).

A chunk is counted once per version (and once per dataset, and once in the store)
however many files or versions use it; its stored size is the length of its frame in
the local store (compressed). Chunks of a version that are only on a remote are
counted in ``missing_chunks`` and add nothing to ``stored_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from dsvc import registry as reg
from dsvc.errors import ObjectNotFoundError
from dsvc.objects import KIND_CHUNKFILE, KIND_TREE
from dsvc.record import Record
from dsvc.store import Store
from dsvc.treeops import Trees


@dataclass(frozen=True)
class VersionUsage:
    """The sizes of one version (:func:`version_usage`)."""

    dataset_id: str
    files: int
    #: sum of the files' sizes (what a copy of the version takes on disk)
    logical_bytes: int
    #: distinct chunks the version uses
    chunks: int
    #: compressed bytes of those chunks that are in the local store
    stored_bytes: int
    #: chunks the local store does not hold (on a remote only)
    missing_chunks: int
    #: chunks no parent uses, and their compressed bytes: what this version added
    new_chunks: int
    new_bytes: int

    @property
    def dedup_ratio(self) -> float | None:
        """Logical over stored bytes (2.0: the files take half their size); None when
        nothing is stored locally."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


@dataclass
class DatasetUsage:
    """The sizes of every local version of one dataset (project and name)."""

    project: str
    name: str
    versions: int = 0
    #: sum over the versions of their logical bytes
    logical_bytes: int = 0
    #: distinct chunks used by any version of the dataset, and their compressed bytes
    chunks: int = 0
    stored_bytes: int = 0
    #: of those, the chunks another dataset uses too, and their compressed bytes
    shared_chunks: int = 0
    shared_bytes: int = 0

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


@dataclass
class StoreUsage:
    """The sizes of the whole local store (:func:`store_usage`)."""

    datasets: list[DatasetUsage] = field(default_factory=list)
    versions: int = 0
    logical_bytes: int = 0
    #: distinct chunks referenced by some version, and their compressed bytes
    chunks: int = 0
    stored_bytes: int = 0
    #: chunks used by more than one dataset, and their compressed bytes
    shared_chunks: int = 0
    shared_bytes: int = 0
    #: chunks no version references (`dsvc gc` deletes them), and their bytes
    unreferenced_chunks: int = 0
    unreferenced_bytes: int = 0

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


def _chunks(store: Store, trees: Trees, root: bytes, seen: set[bytes] | None) -> Iterator[bytes]:
    """Chunk ids below ``root`` (with repeats), skipping folders already in ``seen``
    (their chunks were counted): a folder shared by versions is read once."""
    stack = [root]
    while stack:
        tid = stack.pop()
        if seen is not None:
            if tid in seen:
                continue
            seen.add(tid)
        for e in trees.get(tid).values():
            if e.kind == KIND_TREE:
                stack.append(e.id)
            elif e.kind == KIND_CHUNKFILE:
                yield e.id
            else:
                yield from (c for c, _ in store.get_blob(e.id).chunks)


#: chunk sizes read per read snapshot (keeps each LMDB read transaction short)
_BATCH = 10_000


def _frame_sizes(store: Store, ids: Iterable[bytes]) -> dict[bytes, int | None]:
    """Compressed size of each chunk in the local store (None: not there)."""
    todo = list(ids)
    out: dict[bytes, int | None] = {}
    for i in range(0, len(todo), _BATCH):
        with store.reader() as r:
            out.update((c, r.chunk_size(c)) for c in todo[i : i + _BATCH])
    return out


def chunk_totals(store: Store) -> tuple[int, int]:
    """(chunks, their stored bytes) in the whole store."""
    n = total = 0
    with store.reader() as r:
        for _, size in r.chunk_sizes():
            n += 1
            total += size
    return n, total


def _files(trees: Trees, root: bytes) -> tuple[int, int]:
    """(files, logical bytes) below ``root``."""
    n = size = 0
    stack = [root]
    while stack:
        for e in trees.get(stack.pop()).values():
            if e.kind == KIND_TREE:
                stack.append(e.id)
            else:
                n += 1
                size += e.size
    return n, size


def version_usage(store: Store, record: Record) -> VersionUsage:
    """Files, logical and stored bytes, and what ``record``'s version added over its
    parents (chunks none of their trees use). Reads the version's trees and its
    parents' from the local store (``ObjectNotFoundError`` when they are not there)."""
    trees = Trees(store)
    files, logical = _files(trees, record.tree)
    sizes = _frame_sizes(store, set(_chunks(store, trees, record.tree, None)))
    parent_chunks: set[bytes] = set()
    seen: set[bytes] = set()
    for pid in record.parents or []:
        prec = reg.get(store, pid)
        if prec is not None and prec.tree is not None:
            parent_chunks.update(_chunks(store, trees, prec.tree, seen))
    new = [c for c in sizes if c not in parent_chunks]
    return VersionUsage(
        dataset_id=record.id,
        files=files,
        logical_bytes=logical,
        chunks=len(sizes),
        stored_bytes=sum(s for s in sizes.values() if s is not None),
        missing_chunks=sum(1 for s in sizes.values() if s is None),
        new_chunks=len(new),
        new_bytes=sum(sizes[c] or 0 for c in new),
    )


def store_usage(store: Store) -> StoreUsage:
    """Every local dataset's logical and stored bytes, the chunks datasets share, and
    the store's chunks no version references. Reads each folder once per dataset."""
    trees = Trees(store)
    by_name: dict[tuple[str, str], list[Record]] = {}
    for r in reg.all_records(store):
        if r.tree is not None:
            by_name.setdefault((r.project, r.name), []).append(r)
    owner: dict[bytes, int] = {}  # chunk -> index of the first dataset using it
    shared: set[bytes] = set()
    per: list[tuple[DatasetUsage, set[bytes]]] = []
    for i, ((project, name), recs) in enumerate(sorted(by_name.items())):
        du = DatasetUsage(project, name, versions=len(recs))
        mine: set[bytes] = set()
        seen: set[bytes] = set()
        for r in recs:
            try:
                du.logical_bytes += _files(trees, r.tree)[1]
                mine.update(_chunks(store, trees, r.tree, seen))
            except ObjectNotFoundError:
                continue  # a version whose trees are only on a remote
        for c in mine:
            if owner.setdefault(c, i) != i:
                shared.add(c)
        per.append((du, mine))
    sizes = _frame_sizes(store, owner)
    out = StoreUsage()
    for du, mine in per:
        du.chunks = len(mine)
        du.stored_bytes = sum(sizes[c] or 0 for c in mine)
        mine_shared = mine & shared
        du.shared_chunks = len(mine_shared)
        du.shared_bytes = sum(sizes[c] or 0 for c in mine_shared)
        out.datasets.append(du)
        out.versions += du.versions
        out.logical_bytes += du.logical_bytes
    out.chunks = sum(1 for s in sizes.values() if s is not None)
    out.stored_bytes = sum(s for s in sizes.values() if s is not None)
    out.shared_chunks = len(shared)
    out.shared_bytes = sum(sizes[c] or 0 for c in shared)
    total_chunks, total_bytes = chunk_totals(store)
    out.unreferenced_chunks = max(0, total_chunks - out.chunks)
    out.unreferenced_bytes = max(0, total_bytes - out.stored_bytes)
    return out
