"""Store maintenance: local garbage collection and full verification (``gc``, ``fsck``).

Local gc marks everything a dataset record reaches (the staged, base and uploaded
trees of drafts; the tree and commit of versions) and sweeps the rest from the
``chunks`` and ``objects`` databases, then drops cached copies of deleted versions and
content-cache files no copy links to any more.

Safety with concurrent writers: content written by an ingest is referenced by a record
only when the ingest's call finishes, so every ingest holds a lease (``Store.lease``)
and gc refuses to sweep while a live lease exists.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from dsvc import codec
from dsvc.errors import DsvcError, IntegrityError, StateError
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE, to_hex
from dsvc.objects import KIND_CHUNKFILE, KIND_TREE, Blob, Commit, decode_tree
from dsvc.progress import Progress
from dsvc.registry import all_records
from dsvc.store import Store

_SWEEP_BATCH = 10_000


def reachable(store: Store) -> set[bytes]:
    """Ids of every object and chunk some dataset record reaches."""
    out: set[bytes] = set()
    for rec in all_records(store):
        for field in ("tree", "base_tree", "uploaded_tree"):
            t = rec.get(field)
            if t and store.has_object(t):
                _mark_tree(store, t, out)
        c = rec.get("commit")
        if c and store.has_object(c):
            out.add(c)
            _mark_tree(store, store.get_commit(c).tree, out)
    return out


def _mark_tree(store: Store, tree: bytes, out: set[bytes]) -> None:
    stack = [tree]
    while stack:
        tid = stack.pop()
        if tid in out:
            continue
        out.add(tid)
        for e in store.get_tree(tid).values():
            if e.kind == KIND_TREE:
                stack.append(e.id)
            elif e.kind == KIND_CHUNKFILE:
                out.add(e.id)
            elif e.id not in out:
                out.add(e.id)
                if store.has_object(e.id):
                    out.update(c for c, _ in store.get_blob(e.id).chunks)


def local_gc(store: Store, *, dry_run: bool = False) -> dict[str, Any]:
    """Remove unreachable chunks, objects and cache entries; returns counts."""
    leases = store.live_leases()
    if leases:
        who = ", ".join(f"{v.get('what')} (pid {v.get('pid')})" for v in leases)
        raise StateError(f"not collecting garbage while other work is writing: {who}; retry later")
    keep = reachable(store)
    stats = {
        "chunks_deleted": 0,
        "objects_deleted": 0,
        "bytes_freed": 0,
        "cached_copies_deleted": 0,
        "cache_files_deleted": 0,
        "dry_run": dry_run,
    }
    for db, counter in (("chunks", "chunks_deleted"), ("objects", "objects_deleted")):
        doomed: list[bytes] = []
        with store.read() as txn:
            for k, v in txn.cursor(db=store.db(db)):
                if k not in keep:
                    doomed.append(k)
                    stats["bytes_freed"] += len(v)
        stats[counter] = len(doomed)
        if not dry_run:
            for i in range(0, len(doomed), _SWEEP_BATCH):
                with store.batch() as b:
                    for k in doomed[i : i + _SWEEP_BATCH]:
                        b.delete(db, k)
    ids = {r["id"] for r in all_records(store)}
    copies = store.home / "cache" / "datasets"
    if copies.is_dir():
        for d in copies.iterdir():
            if d.name.split("-", 1)[0] not in ids and not d.name.startswith("."):
                stats["cached_copies_deleted"] += 1
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True)
    content = store.home / "cache" / "content"
    if content.is_dir():
        for sub in content.iterdir():
            for f in sub.iterdir() if sub.is_dir() else ():
                if f.stat().st_nlink == 1:  # no cached copy links to it any more
                    stats["cache_files_deleted"] += 1
                    if not dry_run:
                        os.unlink(f)
    return stats


def fsck(store: Store, progress: bool = True) -> dict[str, Any]:
    """Decode and hash every chunk and object, then check each object's structure.

    Returns counts, stored bytes, the hex ids of bad chunks and bad objects, and
    ``structure``: damage to the LMDB file itself (then nothing else is read).
    """
    out: dict[str, Any] = {
        "chunks": 0,
        "objects": 0,
        "bytes": 0,
        "bad_chunks": [],
        "bad_objects": [],
        "structure": store.structure_problems(),
    }
    if out["structure"]:
        return out  # reading values through LMDB could crash on the damaged pages
    parse = {TAG_BLOB: Blob.decode, TAG_TREE: decode_tree, TAG_COMMIT: Commit.decode}
    stats = store.stats()
    total = stats.get("chunks", 0) + stats.get("objects", 0)
    with Progress("fsck", total, enabled=progress, unit="obj") as bar, store.read() as txn:
        for cid, frame in txn.cursor(db=store.db("chunks")):
            out["chunks"] += 1
            out["bytes"] += len(frame)
            try:
                codec.decode_frame(frame, TAG_CHUNK, cid)
            except IntegrityError:
                out["bad_chunks"].append(to_hex(cid))
            bar.update(1)
        for oid, raw in txn.cursor(db=store.db("objects")):
            out["objects"] += 1
            out["bytes"] += len(raw)
            try:
                tag = bytes(raw[:1])
                if tag not in parse:
                    raise IntegrityError(f"object {to_hex(oid)}: unknown type tag {tag!r}", oid)
                parse[tag](codec.decode_frame(raw[1:], tag, oid), oid)  # hash, then structure
            except DsvcError:
                out["bad_objects"].append(to_hex(oid))
            bar.update(1)
    return out
