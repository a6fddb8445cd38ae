"""Store maintenance: local garbage collection, verification and repair (``gc``, ``fsck``).

Local gc marks everything a dataset record reaches (the staged, base and uploaded
trees of drafts; the tree, base tree and commit of versions, and, as in git, the
commits of their ancestry with their trees, so a forced delete of a parent leaves its
children whole), sweeps the rest from the ``chunks``
and ``objects`` databases, purges the stat-cache entries that named swept content,
then drops cached copies of deleted versions, content-cache files no copy links to any
more, and temporary folders left by killed copies.

Why gc never sweeps what a version that then finalizes needs (docs/architecture.md,
"gc and writers"). Call a *content writer* any operation that makes a record or a
stat-cache entry refer to content it wrote, or chose not to write because it found it
stored (dedup, a stat-cache hit, reusing a subtree). Every content writer runs from
its first such read to its last record write inside ``Store.lease``, which holds a
shared flock; ``local_gc`` holds the exclusive flock (``Store.exclusive``) from before
its mark to after its last sweep commit. The kernel keeps the two intervals disjoint,
so for any writer W either

* W's lease ended before gc took the lock: W's record update committed before gc's
  mark read the records, so the mark reaches what W refers to; or
* W's lease began after gc released the lock: every existence check of W reads a
  snapshot taken after gc's last sweep commit, so W sees swept content as absent and
  writes it again (and finds no stat-cache entry naming it: gc purged those in the
  same exclusive interval).

Everything else that changes records (delete, tags, rename, publish) only removes
references or keeps them, which can leave garbage for the next gc but never a dangling
reference. ``fsck_repair`` deletes values under the same exclusive lock, with the same
argument. Tests: tests/test_gc_integrity.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import msgpack

from dsvc import codec, external, reports, walk
from dsvc import registry as reg
from dsvc.checkout import CacheLayout, remove_tree, temp_in_use, verify_cache
from dsvc.errors import DsvcError, IntegrityError
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE, to_hex
from dsvc.ingest import DirSummary
from dsvc.lookup import remote_for
from dsvc.objects import (
    CHUNK_REF_KINDS,
    KIND_FILE,
    KIND_TREE,
    Blob,
    Commit,
    Entry,
    decode_tree,
)
from dsvc.progress import Progress
from dsvc.record import Record
from dsvc.registry import all_records
from dsvc.store import LEASE_PREFIX, Store, StoreReader
from dsvc.treeops import Trees, lookup
from dsvc.treeops import walk as walk_tree

_SWEEP_BATCH = 10_000
#: temporary files and folders younger than this are never reclaimed (a builder takes
#: its lock right after creating its folder; content-cache files are linked right
#: after they are written)
TEMP_GRACE = 60.0


# -- marking -----------------------------------------------------------------------------


class _Reader:
    """Decoded objects of one read snapshot (``txn``): the mark sees one state."""

    def __init__(self, store: Store, txn: StoreReader) -> None:
        self.txn = txn

    def raw(self, oid: bytes) -> bytes | memoryview | None:
        return self.txn.object_frame(oid)

    def payload(self, oid: bytes, tag: bytes) -> bytes | None:
        raw = self.raw(oid)
        if raw is None or raw[:1] != tag:
            return None
        return codec.decode_frame(raw[1:], tag, oid)

    def commit(self, oid: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        """``(tree, parents)`` of a stored commit, or None."""
        data = self.payload(oid, TAG_COMMIT)
        if data is None:
            return None
        c = Commit.decode(data, oid)
        return c.tree, c.parents


def reachable(store: Store, txn: StoreReader | None = None) -> set[bytes]:
    """Ids of every object and chunk some dataset record reaches (absent ones included:
    a blob's chunks are listed only when the blob is stored)."""
    if txn is None:
        with store.reader() as t:
            return reachable(store, t)
    rd = _Reader(store, txn)
    out: set[bytes] = set()
    for rec in reg.all_records(store):
        for root in (rec.tree, rec.base_tree, rec.uploaded_tree):
            if root:
                _mark_tree(rd, root, out)
        # the commit and its ancestry (git: a child keeps its history reachable, so a
        # forced delete of a parent never takes what the child's diff and graph read)
        for _c, tree in walk.history([rec.commit] if rec.commit else [], rd.commit, out):
            if tree is not None:
                _mark_tree(rd, tree, out)
    return out


def _mark_tree(rd: _Reader, tree: bytes, out: set[bytes]) -> None:
    """Add everything below ``tree`` to ``out`` (:func:`dsvc.walk.reach`); trees and blobs
    that are not local (a clone fetches them on demand) end the walk there."""

    def entries(tid: bytes) -> dict[str, Entry] | None:
        data = rd.payload(tid, TAG_TREE)
        return None if data is None else decode_tree(data, tid)

    def chunks(bid: bytes) -> list[bytes] | None:
        data = rd.payload(bid, TAG_BLOB)
        return None if data is None else [c for c, _ in Blob.decode(data, bid).chunks]

    for _step in walk.reach([tree], entries, chunks, out):
        pass  # the walk adds what it yields to ``out``


def _side_records(store: Store, txn: StoreReader, keep: set[bytes]) -> list[str]:
    """Keys of the records kept beside datasets that no dataset needs any more: the
    reports of a draft (``reports/<id>``) once no draft has that id (deleted, or
    finalized: the commit carries them), and the content a copy downloaded for an
    external file (``ext/<link id>``) once no version links it. The download of a link
    some version still reaches is marked in ``keep``, with its chunks: the source may
    be gone by the next copy."""
    drafts = {r.id for r in all_records(store) if r.status == reg.DRAFT}
    drop = [
        k for k, _ in store.iter_records(reports.PREFIX) if k[len(reports.PREFIX) :] not in drafts
    ]
    rd = _Reader(store, txn)
    for k, v in store.iter_records(external.CACHE_PREFIX):
        try:
            lid = bytes.fromhex(k[len(external.CACHE_PREFIX) :])
            kind, cid = int(v[0]), bytes(v[1])
        except (TypeError, ValueError, IndexError):
            drop.append(k)  # not an entry of ours: nothing reads it
            continue
        if lid not in keep:
            drop.append(k)
            continue
        keep.add(cid)
        if kind not in CHUNK_REF_KINDS:  # a blob: its chunks too
            data = rd.payload(cid, TAG_BLOB)
            if data is not None:
                keep.update(c for c, _ in Blob.decode(data, cid).chunks)
    return drop


def _statcache_target(raw: bytes) -> tuple[int, bytes, str | None] | None:
    """``(kind, id, path)`` of a stat-cache value (docs/format.md: a msgpack array whose
    fields 3 and 4 are the tree entry's kind and id, and field 8, when there, the file's
    absolute path), or None for anything else."""
    try:
        v = msgpack.unpackb(raw, raw=False)
    except ValueError:
        return None
    if isinstance(v, list) and len(v) > 4 and isinstance(v[4], bytes) and isinstance(v[3], int):
        path = os.fsdecode(v[8]) if len(v) > 8 and isinstance(v[8], bytes) else None
        return v[3], v[4], path
    return None


def _purge_statcache(
    store: Store, doomed: Any, sources: dict[bytes, list[str]] | None = None
) -> int:
    """Delete every stat-cache entry whose content id satisfies ``doomed(kind, id)``;
    ``sources`` collects, per doomed id, the files on disk the entries were made from."""
    keys: list[bytes] = []
    with store.reader() as txn:
        for k, v in txn.statcache_items():
            t = _statcache_target(v)
            if t is None or doomed(t[0], t[1]):
                keys.append(k)
                if t is not None and t[2] is not None and sources is not None:
                    sources.setdefault(t[1], []).append(t[2])
    for i in range(0, len(keys), _SWEEP_BATCH):
        with store.batch() as b:
            for k in keys[i : i + _SWEEP_BATCH]:
                b.delete_statcache(k)
    return len(keys)


def _purge_dirsum(store: Store, doomed: Any, dry_run: bool = False) -> int:
    """Delete every folder summary whose tree satisfies ``doomed(tree id)`` (and any
    value of another layout); returns how many. Runs before the sweep, so a gc killed
    midway never leaves a summary naming a tree whose content is half gone."""
    keys: list[bytes] = []
    with store.reader() as r:
        for k, v in r.dirsum_items():
            summary = DirSummary.decode(v)
            if summary is None or doomed(summary.tree):
                keys.append(k)
    if not dry_run:
        for i in range(0, len(keys), _SWEEP_BATCH):
            with store.batch() as b:
                for k in keys[i : i + _SWEEP_BATCH]:
                    b.delete_dirsum(k)
    return len(keys)


# -- gc ----------------------------------------------------------------------------------


def local_gc(store: Store, *, dry_run: bool = False, wait: float = 0.0) -> dict[str, Any]:
    """Remove unreachable chunks, objects, stat-cache entries and cache files; returns
    counts. Raises StateError when content writers keep the store busy for ``wait``
    seconds (see the module docstring for why gc and writers never overlap)."""
    stats: dict[str, Any] = {
        "chunks_deleted": 0,
        "objects_deleted": 0,
        "bytes_freed": 0,
        "statcache_purged": 0,
        "summaries_purged": 0,
        "cached_copies_deleted": 0,
        "cache_files_deleted": 0,
        "temp_deleted": 0,
        "packs_deleted": 0,
        "packs_rewritten": 0,
        "pack_bytes_freed": 0,
        "side_records_dropped": 0,
        "dry_run": dry_run,
    }
    with store.exclusive("gc", wait=wait):
        doomed: dict[str, list[bytes]] = {}
        with store.reader() as txn:  # mark and list the garbage in one snapshot
            keep = reachable(store, txn)
            side = _side_records(store, txn, keep)
            listings = (
                ("chunks", "chunks_deleted", txn.chunk_sizes()),
                ("objects", "objects_deleted", ((k, len(v)) for k, v in txn.objects())),
            )
            for db, counter, sizes in listings:
                doomed[db] = []
                for k, n in sizes:
                    if k not in keep:
                        doomed[db].append(k)
                        stats["bytes_freed"] += n
                stats[counter] = len(doomed[db])
        # folder summaries of swept trees go first: a re-add must not reuse those trees
        stats["summaries_purged"] = _purge_dirsum(store, lambda t: t not in keep, dry_run)
        stats["side_records_dropped"] = len(side)
        if not dry_run:  # before the sweep: an entry never names swept content
            for key in side:
                store.delete_record(key)
        if dry_run:
            stats.update(store.compact_packs(dry_run=True, dropping=set(doomed["chunks"])))
            with store.reader() as txn:
                stats["statcache_purged"] = sum(
                    1
                    for _, v in txn.statcache_items()
                    if (t := _statcache_target(v)) is None or t[1] not in keep
                )
        else:
            for db, ids in doomed.items():
                for i in range(0, len(ids), _SWEEP_BATCH):
                    with store.batch() as b:
                        delete = b.delete_chunk if db == "chunks" else b.delete_object
                        for k in ids[i : i + _SWEEP_BATCH]:
                            delete(k)
            # an entry naming content not kept would make a re-add refer to nothing
            stats["statcache_purged"] = _purge_statcache(store, lambda _k, i: i not in keep)
            # swept chunks' bytes stay in their pack files until the packs are compacted
            stats.update(store.compact_packs())
            # a lease record is written under the shared lock: with the exclusive one
            # held, every lease record left is a killed writer's
            for k, _ in store.scan_prefix("records", LEASE_PREFIX.encode()):
                store.delete_record(k.decode())
    # the caches below live outside LMDB and outside the lock: copies are rebuilt from
    # the store, and nothing here is a reference a version depends on
    live = {r.id for r in all_records(store)}
    layout = CacheLayout(store.home)
    copies = layout.copies
    now = time.time()
    if copies.is_dir():
        for d in copies.iterdir():
            owner = layout.dataset_of(d.name)
            if layout.is_temp(d.name):
                if _stale_temp(d, now):
                    stats["temp_deleted"] += 1
                    if not dry_run:
                        remove_tree(d)
            elif owner is not None and owner not in live:
                stats["cached_copies_deleted"] += 1
                if not dry_run:
                    remove_tree(d)  # iterative: a copy may be very deep
                    _unlink_quietly(layout.manifest_path(d.name))
    content = layout.content
    if content.is_dir():
        for sub in content.iterdir():
            for f in sub.iterdir() if sub.is_dir() else ():
                try:
                    st = f.lstat()
                except FileNotFoundError:
                    continue
                # nlink 1: no cached copy links to it any more (or a temporary file of a
                # killed writer); a recent ctime: being written or linked right now
                if st.st_nlink == 1 and now - st.st_ctime > TEMP_GRACE:
                    stats["cache_files_deleted"] += 1
                    if not dry_run:
                        _unlink(f)
    return stats


def _stale_temp(d: Path, now: float) -> bool:
    """A temporary copy whose builder is gone: unlocked (the builder holds a lock on it
    until it renames it into place; the kernel drops the lock of a killed process) and
    older than the moment between its creation and that lock."""
    try:
        age = now - d.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > TEMP_GRACE and not temp_in_use(d)


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


# -- fsck --------------------------------------------------------------------------------


def fsck(store: Store, progress: bool = True) -> dict[str, Any]:
    """Decode and hash every chunk and object, check each object's structure, then check
    that every dataset's content is in the store.

    Returns counts, stored bytes, the hex ids of bad chunks and bad objects, and
    ``missing``: per dataset whose content is incomplete, the files and folders that
    cannot be read (chunks are not counted as missing when a remote may hold them), and ``structure``: damage to the LMDB file
    itself (then nothing else is read).
    """
    out: dict[str, Any] = {
        "chunks": 0,
        "objects": 0,
        "bytes": 0,
        "bad_chunks": [],
        "bad_objects": [],
        "missing": [],
        "structure": store.structure_problems(),
    }
    if out["structure"]:
        return out  # reading values through LMDB could crash on the damaged pages
    # the index of records by project and name (derived: --repair rebuilds it)
    out["name_index"] = store.name_index_problems()
    parse = {TAG_BLOB: Blob.decode, TAG_TREE: decode_tree, TAG_COMMIT: Commit.decode}
    stats = store.stats()
    total = stats.get("chunks", 0) + stats.get("objects", 0)
    with Progress("fsck", total, enabled=progress, unit="obj") as bar, store.reader() as txn:
        for cid, frame in txn.chunks():
            out["chunks"] += 1
            try:
                if frame is None:  # its pack does not hold it where the index says
                    raise IntegrityError(f"chunk {to_hex(cid)} is not in its pack", cid)
                out["bytes"] += len(frame)
                codec.decode_frame(frame, TAG_CHUNK, cid)
            except IntegrityError:
                out["bad_chunks"].append(to_hex(cid))
            bar.update(1)
        for oid, raw in txn.objects():
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
    bad = {bytes.fromhex(h) for h in out["bad_chunks"] + out["bad_objects"]}
    out["missing"] = damaged_datasets(store, bad)
    out["cache"] = verify_cache(store)  # cached copies and content-cache files
    return out


def _may_fetch(rec: Record, any_remote: bool) -> bool:
    """Whether ``rec``'s chunks may legitimately be absent: it names a remote, or the
    store has one (a clone fetches content on demand, and a draft built on such a
    version holds its parents' files without their bytes). Only a store with no remote
    at all must hold every chunk of every dataset."""
    return any_remote or bool(rec.remote or rec.output_uri)


def damaged_datasets(
    store: Store, bad: AbstractSet[bytes] = frozenset(), *, lenient: bool = True
) -> list[dict[str, Any]]:
    """Per dataset, what of its content cannot be read locally: files whose content is
    absent or in ``bad`` (ids known to be corrupt), folders whose tree is, and the commit.
    With ``lenient``, chunks that a remote may hold are expected to be absent (see
    :func:`_may_fetch`); ``bad`` ones are reported even then."""
    out = []
    any_remote = bool(store.get_config("remotes"))
    with store.reader() as txn:
        rd = _Reader(store, txn)

        def ok(oid: bytes, tag: bytes) -> bool:
            return oid not in bad and rd.raw(oid) is not None

        def chunk_ok(cid: bytes, fetchable: bool) -> bool:
            return cid not in bad and (fetchable or txn.has_chunk(cid))

        def tree(tid: bytes) -> dict[str, Any] | None:
            try:
                data = rd.payload(tid, TAG_TREE) if ok(tid, TAG_TREE) else None
                return None if data is None else decode_tree(data, tid)
            except DsvcError:
                return None

        def blob_chunks(bid: bytes) -> list[bytes] | None:
            try:
                data = rd.payload(bid, TAG_BLOB) if ok(bid, TAG_BLOB) else None
                return None if data is None else [c for c, _ in Blob.decode(data, bid).chunks]
            except DsvcError:
                return None

        # per (tree, fetchable): damaged files and folders below it, relative to it;
        # versions share most subtrees, so each is walked once, not once per version
        memo: dict[tuple[bytes, bool], tuple[list[str], list[str]]] = {}

        def damage(root: bytes, fetchable: bool) -> tuple[list[str], list[str]]:
            # iterative post-order: a tree from a remote may be thousands of folders deep
            stack: list[tuple[bytes, dict[str, Any] | None]] = [(root, None)]
            while stack:
                tid, entries = stack.pop()
                if (tid, fetchable) in memo:
                    continue
                if entries is None:  # first visit: children first
                    entries = tree(tid)
                    if entries is None:
                        memo[(tid, fetchable)] = ([], [""])
                        continue
                    stack.append((tid, entries))
                    stack.extend(
                        (e.id, None)
                        for e in entries.values()
                        if e.kind == KIND_TREE and (e.id, fetchable) not in memo
                    )
                    continue
                files: list[str] = []
                folders: list[str] = []
                for name, e in entries.items():
                    if e.kind == KIND_TREE:
                        fs, ds = memo[(e.id, fetchable)]
                        files += [f"{name}/{f}" for f in fs]
                        folders += [f"{name}/{d}" if d else name for d in ds]
                    elif e.kind in CHUNK_REF_KINDS:
                        if not chunk_ok(e.id, fetchable):
                            files.append(name)
                    elif e.kind == KIND_FILE:
                        cs = blob_chunks(e.id)
                        if cs is None or not all(chunk_ok(c, fetchable) for c in cs):
                            files.append(name)
                memo[(tid, fetchable)] = (files, folders)
            return memo[(root, fetchable)]

        for rec in reg.all_records(store):
            fetchable = lenient and _may_fetch(rec, any_remote)
            files, folders = damage(rec.tree, fetchable)
            folders = [d or "." for d in folders]
            commit = rec.commit
            commit_bad = commit is not None and not ok(commit, TAG_COMMIT)
            if files or folders or commit_bad:
                out.append(
                    {
                        "id": rec.id,
                        "project": rec.project,
                        "name": rec.name,
                        "version": rec.version,
                        "status": rec.status,
                        "files": sorted(files),
                        "folders": sorted(folders),
                        "commit": commit_bad,
                    }
                )
    return out


# -- repair ------------------------------------------------------------------------------


def fsck_repair(store: Store, progress: bool = True, *, wait: float = 0.0) -> dict[str, Any]:
    """Verify the store, drop every bad value, then get the dropped content back.

    Dropping a bad chunk or object makes it absent, so a later write stores it fresh
    (objects are written with no-overwrite: a re-add would otherwise dedupe onto the
    corrupt value). With it go the stat-cache entries that name it (directly, or
    through a blob that lists a bad chunk), so re-adding the files reads them again,
    and the cached copies that hold it. Then each damaged dataset is fetched again from
    its remote (or the default remote) when there is one. Returns the fsck report plus
    ``dropped``, ``refetched`` (dataset ids) and ``unrepaired``: per dataset still
    damaged, the files to re-add (or folders and commit that only a remote can give
    back).
    """
    rep = fsck(store, progress=progress)
    rep.update(dropped=0, statcache_purged=0, cache_files_deleted=0, cached_copies_deleted=0)
    rep.update(refetched=[], unrepaired=[])
    if rep["structure"]:
        return rep  # the LMDB file itself is damaged: nothing can be dropped through it
    if rep["name_index"]:
        store.rebuild_name_index()
    bad = {bytes.fromhex(h) for h in rep["bad_chunks"] + rep["bad_objects"]}
    damaged = rep["missing"]
    sources: dict[bytes, list[str]] = {}  # content id -> files it was added from
    if bad:
        with store.exclusive("fsck --repair", wait=wait):
            # blobs listing a bad chunk: their stat-cache entries and cached files go too
            hit = set(bad)
            with store.reader() as txn:
                for oid, raw in txn.objects():
                    if oid in bad or raw[:1] != TAG_BLOB:
                        continue
                    blob = Blob.decode(codec.decode_frame(raw[1:], TAG_BLOB, oid), oid)
                    if any(c in bad for c, _ in blob.chunks):
                        hit.add(oid)
            # a folder summary vouches for the content below its tree: drop them all
            # (the next add rebuilds them), before any value goes
            _purge_dirsum(store, lambda _t: True)
            with store.batch() as b:
                for i in bad:
                    b.delete_chunk(i)
                    b.delete_object(i)
            rep["dropped"] = len(bad)
            rep["statcache_purged"] = _purge_statcache(store, lambda _k, i: i in hit, sources)
        rep["cache_files_deleted"] = _drop_cached_files(store, hit)
        rep["cached_copies_deleted"] = _drop_cached_copies(store, {d["id"] for d in damaged})
    # then get the content back, dataset by dataset, from where it was published
    rep["refetched"] = []
    for d in damaged:
        rec = reg.get(store, d["id"])
        if rec is not None and _refetch(store, rec, d):
            rep["refetched"].append(d["id"])
    # what is still unreadable, judged strictly (a remote that could not give it back
    # is no excuse), and only among the files that were damaged
    still = {x["id"]: x for x in damaged_datasets(store, lenient=False)}
    rep["unrepaired"] = []
    for d in damaged:
        x = still.get(d["id"])
        if x is None:
            continue
        under = tuple("" if f == "." else f + "/" for f in d["folders"])
        left = {
            "files": sorted(f for f in x["files"] if f in d["files"] or f.startswith(under)),
            "folders": sorted(x["folders"]),
            "commit": x["commit"],
        }
        if any(left.values()):
            rep["unrepaired"].append({**d, **left, "sources": _sources(store, d, left, sources)})
    rep["missing"] = rep["unrepaired"]
    rep["cache"] = verify_cache(store, repair=True)  # cached files changed on disk
    return rep


def _sources(
    store: Store, d: dict[str, Any], left: dict[str, Any], sources: dict[bytes, list[str]]
) -> dict[str, list[str]]:
    """For each file still to re-add, the files on disk it was added from (as the stat
    cache knew them; they may have changed or gone since)."""
    rec = reg.get(store, d["id"])
    if rec is None or not sources:
        return {}
    trees = Trees(store)
    out = {}
    for f in left["files"]:
        try:
            e = lookup(trees, rec.tree, tuple(f.split("/")))
        except DsvcError:
            continue
        if e is not None and e.id in sources:
            out[f] = sorted(set(sources[e.id]))
    return out


def _refetch(store: Store, rec: Record, damage: dict[str, Any]) -> bool:
    """Fetch the damaged content of ``rec`` from its remote; False when there is no
    remote or it cannot give everything back."""
    try:
        remote = remote_for(store, rec.remote or rec.output_uri)
    except DsvcError:
        return False
    if remote is None:
        return False
    try:
        remote.fetch_metadata(rec.tree, [rec.commit] if rec.commit else [])
        wanted = set(damage["files"])
        entries = [e for p, e in walk_tree(Trees(store), rec.tree) if "/".join(p) in wanted]
        if entries:
            remote.fetch_files(entries, show_progress=False)
    except DsvcError:
        return False
    return True


def _drop_cached_files(store: Store, ids: set[bytes]) -> int:
    """Remove content-cache files of ``ids`` (named ``<hex[:2]>/<hex>``, ``x`` for
    executables)."""
    root = CacheLayout(store.home).content
    n = 0
    for i in ids:
        h = i.hex()
        for name in (h, h + "x"):
            p = root / h[:2] / name
            if p.exists():
                _unlink(p)
                n += 1
    return n


def _drop_cached_copies(store: Store, dataset_ids: set[str]) -> int:
    """Remove the cached read-only copies (whole or partial) of ``dataset_ids``."""
    layout = CacheLayout(store.home)
    n = 0
    if layout.copies.is_dir():
        for d in layout.copies.iterdir():
            if layout.dataset_of(d.name) in dataset_ids:
                remove_tree(d)
                _unlink_quietly(layout.manifest_path(d.name))
                n += 1
    return n


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
