"""Reading from a remote: ranged reads of packs (neighbours coalesced), every value
verified against its id before it is stored locally or handed out (invariant 4 of
docs/remote-protocol.md)."""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from dsvc import codec
from dsvc.errors import IntegrityError, NotFoundError
from dsvc.ids import TAG_CHUNK, to_hex
from dsvc.objects import KIND_FILE, KIND_TREE, Commit, Entry
from dsvc.progress import Progress
from dsvc.remote.packs import (
    KIND_CHUNK,
    pack_name,
)
from dsvc.remote.repo import DEFAULT_WORKERS, RemoteRepo

#: ranges closer than this are read with one request
COALESCE_GAP = 1 << 20
#: ...and one request reads at most this many bytes
RANGE_MAX = 16 << 20
#: bound on decompressed bytes all fetch threads of the process hold at once while they
#: verify values (the format bounds each value, codec.LIMITS; this bounds their sum)
FETCH_DECODE_MEMORY = 256 << 20
_decode_budget = codec.MemoryBudget(FETCH_DECODE_MEMORY)


@dataclass
class FetchStats:
    objects: int = 0
    bytes_received: int = 0
    requests: int = 0


def _range_jobs(locs: dict[bytes, Any]) -> list[tuple[bytes, list[tuple[bytes, Any]]]]:
    """Group object locations into reads: per pack, by offset, merging neighbours closer
    than COALESCE_GAP into one range of at most RANGE_MAX bytes."""
    by_pack: dict[bytes, list[tuple[bytes, Any]]] = defaultdict(list)
    for oid, loc in locs.items():
        by_pack[loc.pack].append((oid, loc))
    jobs = []
    for pack, items in by_pack.items():
        items.sort(key=lambda x: x[1].offset)
        group: list[tuple[bytes, Any]] = []
        for it in items:
            if group:
                last = group[-1][1]
                span = it[1].offset + it[1].length - group[0][1].offset
                if it[1].offset - (last.offset + last.length) > COALESCE_GAP or span > RANGE_MAX:
                    jobs.append((pack, group))
                    group = []
            group.append(it)
        if group:
            jobs.append((pack, group))
    return jobs


def _verify(
    value: bytes | memoryview, oid: bytes, kind: int, pack: str, chunk_limit: int | None = None
) -> bytes | memoryview:
    """The payload of a stored value read from ``pack``, checked against its id (and
    against the format's size bounds before anything is decompressed)."""
    try:  # the *_view decoder: a raw payload is hashed in place, not copied
        if kind == KIND_CHUNK:
            return codec.decode_frame_view(value, TAG_CHUNK, oid, chunk_limit)
        return codec.decode_frame_view(memoryview(value)[1:], bytes(value[:1]), oid)
    except IntegrityError as e:
        raise IntegrityError(
            f"remote pack {pack}: object {to_hex(oid)} is corrupted ({e}); the remote copy is "
            "damaged: push the version again from a store that has it",
            oid,
        ) from None


class RemoteFetch(RemoteRepo):
    """Fetching values (chunks, trees, blobs, commits) of a remote into the local store."""

    def _fetch_values(
        self,
        ids: Iterable[bytes],
        *,
        workers: int | None = None,
        bar: Progress | None = None,
    ) -> FetchStats:
        """Read the values of ``ids`` from packs (ranged reads), verify, store locally.

        A pack that vanished since its index was cached (``gc`` swept it; the objects
        may have been pushed again in another pack) gets one retry on fresh indexes.
        """
        store = self.store
        want = list(dict.fromkeys(ids))
        try:
            return self._fetch_once(want, workers=workers, bar=bar)
        except NotFoundError:
            self.refresh_index()
            chunks = set(store.missing("chunks", want))
            rest = [i for i in store.missing("objects", want) if i in chunks]
            return self._fetch_once(rest, workers=workers, bar=bar)

    def _fetch_once(
        self,
        want: list[bytes],
        *,
        workers: int | None = None,
        bar: Progress | None = None,
    ) -> FetchStats:
        store = self.store
        stats = FetchStats()
        if not want:
            return stats
        locs = self._locate(want)
        jobs = _range_jobs(locs)
        run = self._read_range

        # Ranges are read and verified by the pool; one batch (this thread) stores them,
        # committing every BATCH_BYTES: one fsync per 64 MiB instead of one per range
        # from every thread. At most 2 x workers ranges wait in memory.
        n_workers = workers or DEFAULT_WORKERS
        todo = iter(jobs)
        with (
            ThreadPoolExecutor(n_workers, thread_name_prefix="dsvc-fetch") as pool,
            store.lease("fetch", announce=False),  # local gc waits (docs/architecture.md)
            store.batch() as b,
        ):
            pending = deque(pool.submit(run, j) for j in itertools.islice(todo, 2 * n_workers))
            while pending:
                values, nbytes = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(run, nxt))
                for oid, kind, value, _payload in values:
                    if kind == KIND_CHUNK:
                        b.put_chunk_frame(oid, value)
                    else:
                        b.put_object_frame(oid, value)
                stats.objects += len(values)
                stats.bytes_received += nbytes
                stats.requests += 1
                if bar is not None:
                    bar.update(nbytes)
        return stats

    def _locate(self, want: list[bytes]) -> dict[bytes, Any]:
        """Where each of ``want`` is on the remote (NotFoundError if anything is not)."""
        locs = self.index.locate(want)
        if len(locs) < len(want):
            self.refresh_index()
            locs = self.index.locate(want)
        if len(locs) < len(want):  # a cached location may have been forgotten: reload all
            self.index.reset_packs()
            self.refresh_index()
            locs = self.index.locate(want)
        missing = [i for i in want if i not in locs]
        damaged = {oid for _, oid in self._damaged} & set(missing)
        if damaged:
            oid = next(iter(damaged))
            raise IntegrityError(
                f"remote {self.url}: object {to_hex(oid)} is damaged there (found by `dsvc "
                "fsck --remote`) and no good copy was pushed since; push the version again "
                "from a store that has it (`dsvc push`)",
                oid,
            )
        if missing:
            raise NotFoundError(
                f"remote {self.url} lacks {len(missing)} objects (e.g. {to_hex(missing[0])}); "
                "the version was not completely pushed, or was garbage-collected"
            )
        return locs

    def _read_range(
        self, job: tuple[bytes, list[tuple[bytes, Any]]], keep: bool = False
    ) -> tuple[list[tuple], int]:
        """Read one coalesced range of a pack; verify each value in it (as a view).
        Returns ``[(id, kind, stored value, payload)]`` and the bytes read; the payload
        is None unless ``keep`` (decompressed payloads are dropped as soon as they are
        verified, within the process-wide :data:`FETCH_DECODE_MEMORY`)."""
        pack, group = job
        name = pack_name(pack)
        start = group[0][1].offset
        end = group[-1][1].offset + group[-1][1].length
        data = memoryview(self.backend.get_range(f"packs/{name}.pack", start, end - start))
        if len(data) != end - start:
            raise IntegrityError(
                f"remote pack {name}: read {len(data)} bytes at {start}, its index promised "
                f"{end - start}; the pack is truncated or its index is wrong"
            )
        values = []
        for oid, loc in group:  # views into the range: verified, never copied
            value = data[loc.offset - start : loc.offset - start + loc.length]
            frame = value if loc.kind == KIND_CHUNK else value[1:]
            with _decode_budget.hold(codec.declared_size(frame)):
                payload = _verify(value, oid, loc.kind, name, self._chunk_limit)
                values.append((oid, loc.kind, value, payload if keep else None))
                del payload
        return values, end - start

    def read_chunks(self, ids: Sequence[bytes]) -> dict[bytes, Any]:
        """Verified payloads of the chunks ``ids``, read from the remote into memory (not
        into the store): for writing files straight from the remote. The caller bounds
        how much it asks for at once."""
        out: dict[bytes, Any] = {}
        want = list(dict.fromkeys(ids))
        if not want:
            return out
        for job in _range_jobs(self._locate(want)):
            values, _ = self._read_range(job, keep=True)
            for oid, _kind, _frame, payload in values:
                out[oid] = payload
        return out

    def plan_chunks(self, ids: Sequence[bytes]) -> list[tuple[bytes, list[tuple[bytes, Any]]]]:
        """The ranged reads that fetch the chunks ``ids``: per pack, neighbours closer
        than :data:`COALESCE_GAP` in one range (the planner ``get_local_copy`` uses), so
        the chunks of several files stored together cost one request."""
        return _range_jobs(self._locate(list(dict.fromkeys(ids))))

    def read_verified(
        self, job: tuple[bytes, list[tuple[bytes, Any]]]
    ) -> tuple[list[tuple[bytes, memoryview, bytes]], int]:
        """Read one planned range (:meth:`plan_chunks`) and verify each chunk in it,
        storing nothing: ``[(chunk id, stored frame, payload)]`` and the bytes read. The
        frames are views into the range (no copy; they keep it alive), the payloads
        bytes of their own (a cache holding one does not hold the whole range)."""
        values, nbytes = self._read_range(job, keep=True)
        return [(oid, frame, bytes(payload)) for oid, _kind, frame, payload in values], nbytes

    def fetch_range(
        self, job: tuple[bytes, list[tuple[bytes, Any]]]
    ) -> tuple[dict[bytes, bytes], int]:
        """Read one planned range (:meth:`plan_chunks`), verify each chunk in it and keep
        it in the local store; the payloads by chunk id, and the bytes read."""
        got, nbytes = self.read_verified(job)
        out: dict[bytes, bytes] = {}
        with self.store.batch() as b:
            for oid, frame, payload in got:
                # the batch writes frames views and all (WriteBatch._frames) before the
                # block ends, while the range they view is alive
                b.put_chunk_frame(oid, cast(bytes, frame))
                out[oid] = payload
        return out, nbytes

    def fetch_chunks(
        self, ids: Sequence[bytes], *, workers: int | None = None
    ) -> tuple[dict[bytes, bytes], FetchStats]:
        """Ranged reads for streaming: the verified payloads of the chunks ``ids`` (those
        adjacent in a pack coalesced into one request, requests run in parallel), each
        also kept in the local store so later reads and local copies reuse it."""
        out: dict[bytes, bytes] = {}
        stats = FetchStats()
        jobs = self.plan_chunks(ids)
        if not jobs:
            return out, stats
        with ThreadPoolExecutor(
            min(len(jobs), workers or DEFAULT_WORKERS), thread_name_prefix="dsvc-range"
        ) as pool:
            for got, nbytes in pool.map(self.fetch_range, jobs):
                out.update(got)
                stats.objects += len(got)
                stats.bytes_received += nbytes
                stats.requests += 1
        return out, stats

    def fetch_objects(self, ids: Sequence[bytes]) -> FetchStats:
        """Fetch the objects ``ids`` (trees, blobs, commits) not yet local, and only those:
        for reading one path of a version without its whole metadata."""
        store = self.store
        return self._fetch_values(store.missing("objects", list(ids)))

    def fetch_metadata(self, tree: bytes, extra: Sequence[bytes] = ()) -> FetchStats:
        """Fetch every tree and blob below ``tree`` (and ``extra`` objects) not yet local."""
        store = self.store
        total = FetchStats()
        level = [tree]
        first = True
        while level:
            need = store.missing("objects", level + (list(extra) if first else []))
            first = False
            s = self._fetch_values(need)
            total.objects += s.objects
            total.bytes_received += s.bytes_received
            nxt: list[bytes] = []
            blobs: list[bytes] = []
            for tid in level:
                for e in store.get_tree(tid).values():
                    if e.kind == KIND_TREE:
                        nxt.append(e.id)
                    elif e.kind == KIND_FILE:
                        blobs.append(e.id)
            s = self._fetch_values(store.missing("objects", blobs))
            total.objects += s.objects
            level = list(dict.fromkeys(nxt))
        return total

    def fetch_blobs(self, entries: Sequence[Entry]) -> None:
        """Fetch the blob objects (chunk lists) of ``entries`` that are not local."""
        store = self.store
        blobs = [e.id for e in entries if e.kind == KIND_FILE]
        self._fetch_values(store.missing("objects", blobs))

    def fetch_files(
        self,
        entries: Sequence[Entry],
        *,
        max_workers: int | None = None,
        show_progress: bool = True,
    ) -> FetchStats:
        """Fetch the chunks of ``entries`` that are not local, verifying each."""
        store = self.store
        self.fetch_blobs(entries)
        chunks: list[bytes] = []
        for e in entries:
            chunks.extend(c for c, _ in store.file_chunks(e))
        need = store.missing("chunks", list(dict.fromkeys(chunks)))
        locs = self.index.locate(need)
        total = sum(loc.length for loc in locs.values())
        with Progress(f"fetch {self.url}", total or None, enabled=show_progress) as bar:
            return self._fetch_values(need, workers=max_workers, bar=bar)

    def fetch_commit(self, commit_id: bytes) -> Commit:
        """The commit ``commit_id``, fetched (verified) into the store if not local."""
        store = self.store
        if not store.has_object(commit_id):
            self._fetch_values([commit_id])
        return store.get_commit(commit_id)
