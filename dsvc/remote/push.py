"""Writing to a remote: plan what it lacks below a tree, build and upload packs (chunks
first, then objects children first: the closure invariant), publish a version's record
and ref (refs last)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dsvc import codec, walk
from dsvc.errors import ConflictError, DsvcError, IntegrityError, NotFoundError, StateError
from dsvc.ids import TAG_CHUNK, to_hex
from dsvc.objects import KIND_FILE, KIND_TREE
from dsvc.progress import Progress
from dsvc.record import (
    MAX_RECORD_BYTES,
    Record,
)
from dsvc.remote.packs import (
    KIND_CHUNK,
    KIND_OBJECT,
    PackBuilder,
    decode_index,
    pack_name,
)
from dsvc.remote.refs import RemoteRefs, local_record
from dsvc.remote.repo import DEFAULT_WORKERS, _encode
from dsvc.store import Store

DEFAULT_PACK_MB = 64
#: bound on pack bytes a push holds in memory at once
PUSH_MEMORY = 256 << 20
#: records we drop before publishing (local bookkeeping only)


@dataclass
class PushStats:
    packs: int = 0
    objects: int = 0
    chunks: int = 0
    bytes_sent: int = 0
    skipped_objects: int = 0


@dataclass
class PushPlan:
    """What a push would send (:meth:`RemotePush.plan_push`, ``dsvc push --dry-run``)."""

    #: versions whose record the remote lacks, parents first
    datasets: list[str]
    #: trees, blobs and commits, and chunks, the remote lacks
    objects: int
    chunks: int
    #: their stored (compressed) bytes: about what goes into packs
    bytes: int


def _label(record: Record) -> str:
    """How errors name a dataset version."""
    return f"dataset {record.project}/{record.name} ({record.id})"


class _Damaged(Exception):
    """A local value failed verification while packing (turned into an IntegrityError
    with the file it belongs to by :meth:`Remote.push_tree`)."""

    def __init__(self, oid: bytes, error: IntegrityError) -> None:
        super().__init__(str(error))
        self.oid = oid
        self.error = error


def _verify_local(value: bytes | memoryview, oid: bytes, kind: int) -> None:
    """Decode and hash a value of the local store before it is packed."""
    try:
        if kind == KIND_CHUNK:
            codec.decode_frame_view(value, TAG_CHUNK, oid)
        else:
            codec.decode_frame_view(memoryview(value)[1:], bytes(value[:1]), oid)
    except IntegrityError as e:
        raise _Damaged(oid, e) from None


def _path_of(store: Store, tree: bytes, oid: bytes) -> str | None:
    """The path below ``tree`` of the file or folder that is or holds ``oid`` ("" for the
    root), or None. Only used to word an error, so damaged trees are skipped."""
    if tree == oid:
        return ""
    todo = [("", tree)]
    while todo:
        prefix, tid = todo.pop()
        try:
            entries = store.get_tree(tid)
        except DsvcError:
            continue
        for name, e in entries.items():
            path = f"{prefix}{name}"
            if e.id == oid:
                return path
            if e.kind == KIND_TREE:
                todo.append((path + "/", e.id))
            elif e.kind == KIND_FILE:
                try:
                    if any(c == oid for c, _ in store.get_blob(e.id).chunks):
                        return path
                except DsvcError:
                    continue
    return None


def _damage_error(
    store: Store, url: str, tree: bytes, oid: bytes, error: IntegrityError, label: str | None
) -> IntegrityError:
    path = _path_of(store, tree, oid)
    where = ""
    if path == "":
        where = " (the root folder)"
    elif path is not None:
        where = f" (of {path!r})"
    what = f" of {label}" if label else ""
    return IntegrityError(
        f"{error}{where}{what}: the local store {store.path} holds a damaged copy, so it was "
        f"not pushed to {url}; run `dsvc fsck --repair`, then re-add the files (or fetch them "
        "from a remote that has them) and push again",
        oid,
    )


class RemotePush(RemoteRefs):
    """Pushing content and publishing versions to a remote."""

    def _plan(self, roots: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Objects (children first) and chunks the remote lacks below ``roots``."""
        store = self.store
        objects: list[bytes] = []
        chunks: dict[bytes, None] = {}
        doomed = self._doomed  # packs gc marked: their content does not count
        suspect = self._incomplete  # copies fsck found above damage: descend into them
        for kind, oid in walk.reach(
            roots,
            store.get_tree,
            lambda b: [c for c, _ in store.get_blob(b).chunks],
            set(),
            # closure invariant: what the remote holds, it holds with its whole subtree
            skip=lambda o: self.index.has(o, doomed, suspect),
        ):
            if kind == walk.CHUNK:
                chunks[oid] = None
            else:
                objects.append(oid)  # post-order: children first
        return objects, self.index.missing(chunks, doomed)

    def _upload_pack(self, builder: PackBuilder, stats: PushStats, bar: Progress | None) -> None:
        for oid, kind, value in builder.values():  # a damaged local value never leaves
            _verify_local(value, oid, kind)
        pid, data, index = builder.finish()
        name = pack_name(pid)
        if pid in self._doomed and not self._rescue(name):
            # same bytes as a pack a sweep is deleting: a random tail (not covered by the
            # index, so readers never see it) gives the copy a name of its own
            pid, data, index = builder.finish(tail=os.urandom(16))
            name = pack_name(pid)
        self.backend.put(f"packs/{name}.pack", data)
        self.backend.put(f"packs/{name}.idx", index)  # index last: the pack now counts
        entries = decode_index(index, name)
        self.index.add_pack(pid, entries)
        with self._lock:
            stats.packs += 1
            stats.bytes_sent += len(data) + len(index)
        if bar is not None:
            bar.update(len(data))

    def push_tree(
        self,
        tree: bytes,
        *,
        show_progress: bool = True,
        verbose: bool = False,
        pack_size_mb: int | None = None,
        max_workers: int | None = None,
        retries: int = 3,
        extra_objects: Sequence[bytes] = (),
        label: str | None = None,
        refresh: bool = True,
        extra_trees: Sequence[bytes] = (),
    ) -> PushStats:
        """Upload what the remote lacks of ``tree`` and ``extra_trees`` (and
        ``extra_objects``, e.g. a commit, which go last). A second push of the same
        content sends nothing.

        Every value is decoded and hashed against its id before it goes into a pack: a
        value damaged in the local store is an ``IntegrityError`` naming it, the file or
        folder of ``tree`` it belongs to and ``label`` (the dataset), and is never sent.

        ``refresh=False`` skips re-reading the remote's identity and indexes (for a caller
        that just did, e.g. :meth:`push_dataset`).
        """
        store = self.store
        try:
            return self._push_tree(
                tree,
                show_progress=show_progress,
                verbose=verbose,
                pack_size_mb=pack_size_mb,
                max_workers=max_workers,
                extra_objects=extra_objects,
                refresh=refresh,
                extra_trees=extra_trees,
            )
        except _Damaged as d:
            raise _damage_error(store, self.url, tree, d.oid, d.error, label) from None

    def _push_tree(
        self,
        tree: bytes,
        *,
        show_progress: bool,
        verbose: bool,
        pack_size_mb: int | None,
        max_workers: int | None,
        extra_objects: Sequence[bytes],
        refresh: bool,
        extra_trees: Sequence[bytes] = (),
    ) -> PushStats:
        store = self.store
        if refresh:
            self.ensure_repo(create=True, recheck=True)
            self.refresh_index()
        stats = PushStats()
        try:
            objects, chunks = self._plan([tree, *extra_trees])
        except IntegrityError as e:  # a damaged tree or blob met while planning
            if e.object_id is None:
                raise
            raise _Damaged(e.object_id, e) from None
        objects += [
            o for o in extra_objects if not self.index.has(o, self._doomed, self._incomplete)
        ]
        limit = (pack_size_mb or DEFAULT_PACK_MB) << 20
        workers = max_workers or DEFAULT_WORKERS
        # sizes from one short snapshot; then each pack's frames are read in a snapshot
        # of their own, closed before the pack waits for an upload slot (LMDB cannot
        # reuse pages freed after the oldest open snapshot)
        with store.reader(buffers=True) as r:
            sizes = [r.chunk_size(c) for c in chunks]
        if None in sizes:
            gone = chunks[sizes.index(None)]
            raise NotFoundError(f"chunk {to_hex(gone)} is missing from the local store")
        with Progress(f"push {self.url}", None, enabled=show_progress) as bar:
            bar.set_total(sum(n for n in sizes if n is not None))
            # 1. chunks, packs in parallel; wait for all (closure invariant)
            # packs held in memory (being built or uploaded): at most ~PUSH_MEMORY bytes
            slots = threading.BoundedSemaphore(max(2, min(workers + 1, PUSH_MEMORY // limit)))
            futures: list[Future] = []
            with ThreadPoolExecutor(workers, thread_name_prefix="dsvc-push") as pool:

                def submit(b: PackBuilder) -> None:
                    slots.acquire()
                    fut = pool.submit(self._upload_pack, b, stats, bar)
                    fut.add_done_callback(lambda _f: slots.release())
                    futures.append(fut)

                builder = PackBuilder()
                i = 0
                while i < len(chunks):
                    with store.reader() as r:
                        while i < len(chunks) and builder.size < limit:
                            frame = r.chunk_frame(chunks[i])
                            if frame is None:
                                raise NotFoundError(
                                    f"chunk {to_hex(chunks[i])} is missing from the local store"
                                )
                            builder.add(chunks[i], KIND_CHUNK, frame)
                            i += 1
                    if builder.size >= limit:
                        submit(builder)
                        builder = PackBuilder()
                if len(builder):
                    submit(builder)
                for f in futures:
                    f.result()
            # 2. objects, children first, one pack at a time
            builder = PackBuilder()
            for oid in objects:
                raw = store.get_object_frame(oid)
                if raw is None:
                    raise NotFoundError(f"object {to_hex(oid)} is missing from the local store")
                builder.add(oid, KIND_OBJECT, raw)
                if builder.size >= limit:
                    self._upload_pack(builder, stats, None)
                    builder = PackBuilder()
            if len(builder):
                self._upload_pack(builder, stats, None)
        stats.chunks = len(chunks)
        stats.objects = len(objects)
        if verbose:
            print(
                f"pushed {stats.chunks} chunks and {stats.objects} objects in {stats.packs} packs "
                f"({stats.bytes_sent} bytes) to {self.url}"
            )
        return stats

    def publish(
        self,
        record: Record,
        *,
        show_progress: bool = False,
        refresh: bool = True,
    ) -> PushStats:
        """Make a finalized version visible: content and commit (whatever the remote lacks
        of them), record (create-only), then its ref. Idempotent: nothing is skipped on
        the word of the local cache alone (the record's presence is asked of the remote)."""
        store = self.store
        commit = record.commit
        # the base tree (the merge of the parents) goes too: the version's diff reads it,
        # and a parent deleted (or never pushed) must not take it along
        base = record.base_tree
        stats = self.push_tree(
            record.tree,
            show_progress=show_progress,
            extra_objects=[commit] if commit is not None else [],  # none: refused below
            label=_label(record),
            refresh=refresh,
            extra_trees=[base] if base is not None and store.has_object(base) else [],
        )
        rec = record.published()
        key = f"datasets/{record.id}"
        Record.from_dict(rec, key, finalized=True)  # never publish what readers refuse
        if not self.backend.create(key, _encode(rec)):
            got = self.backend.get(key, limit=MAX_RECORD_BYTES)
            existing = Record.from_msgpack(got, key, expect_id=record.id)
            if existing.commit != commit:
                raise ConflictError(
                    f"remote {self.url} already has dataset {record.id} with another commit"
                )
        with store.batch() as b:  # re-read on the next get_record
            b.delete_remote(self._record_cache_key(record.id))
        self.update_ref(record.project, record.name, record.id, record.version)
        return stats

    def push_dataset(
        self, dataset_id: str, *, show_progress: bool = True
    ) -> PushStats:
        """Push a finalized local version, its parents first; idempotent.

        Every version is checked against the remote itself (identity, indexes, record),
        never skipped because the local cache says it was pushed before: after the remote
        was emptied or replaced, this sends everything again."""
        store = self.store
        total = PushStats()
        order = _push_order(store, [dataset_id])
        self.ensure_repo(create=True, recheck=True)
        self.refresh_index()
        for rec in order:
            s = self.publish(rec, show_progress=show_progress, refresh=False)
            self.sync_meta(rec.id)  # tags, description, status... changed since
            total.packs += s.packs
            total.objects += s.objects
            total.chunks += s.chunks
            total.bytes_sent += s.bytes_sent
        return total

    def plan_push(self, dataset_ids: Sequence[str]) -> PushPlan:
        """What :meth:`push_dataset` of each of ``dataset_ids`` would send (their local
        parents included), without writing anything: the versions the remote has no
        record of, and the objects and chunks it lacks with their stored size."""
        store = self.store
        order = _push_order(store, dataset_ids)
        if self.ensure_repo(create=False):
            self.refresh_index()
        bases = [r.base_tree for r in order if r.base_tree and store.has_object(r.base_tree)]
        objects, chunks = self._plan([*(r.tree for r in order), *bases])  # as publish sends
        commits = [r.commit for r in order if r.commit is not None]  # _push_order checks
        objects += [c for c in commits if not self.index.has(c, self._doomed, self._incomplete)]
        size = 0
        with store.reader() as r:
            size += sum(r.chunk_size(c) or 0 for c in chunks)
            size += sum(len(r.object_frame(o) or b"") for o in dict.fromkeys(objects))
        return PushPlan(
            datasets=[r.id for r in order if self.get_record(r.id) is None],
            objects=len(dict.fromkeys(objects)),
            chunks=len(chunks),
            bytes=size,
        )


def _push_order(store: Store, dataset_ids: Sequence[str]) -> list[Record]:
    """The local records of ``dataset_ids`` and their local ancestors, parents first.

    Iterative (an explicit stack), so a chain of any length works: a recursive walk died
    with RecursionError past ~1,000 ancestors."""
    order: list[Record] = []
    seen: set[str] = set()
    for top in dataset_ids:
        if top in seen:
            continue
        seen.add(top)
        rec = _pushable(store, top)
        if rec is None:
            continue
        # (record, index of the next parent to visit): a post-order walk, parents first
        stack: list[tuple[Record, int]] = [(rec, 0)]
        while stack:
            cur, i = stack[-1]
            if i < len(cur.parents):
                stack[-1] = (cur, i + 1)
                p = cur.parents[i]
                if p not in seen:
                    seen.add(p)
                    prec = _pushable(store, p)
                    if prec is not None:
                        stack.append((prec, 0))
                continue
            stack.pop()
            order.append(cur)
    return order


def _pushable(store: Store, did: str) -> Record | None:
    """The local record of ``did`` (None: known only remotely, so already there); a
    draft is refused."""
    rec = local_record(store, did)
    if rec is not None and rec.commit is None:  # a state problem, not a configuration one
        raise StateError(f"dataset {did} is a draft; finalize it before pushing")
    return rec
