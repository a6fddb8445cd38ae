"""Reading a version without materializing it: the code path behind ``Dataset.open``,
``Dataset.read_bytes``, ``dsvc ls``/``dsvc cat`` and the ``dsvc://`` fsspec filesystem.

* **Paths come from trees.** A path is looked up folder by folder from the version's
  root tree; a tree or blob missing locally is fetched alone (one ranged read), so
  opening one file of a big version reads only the trees on its path.
* **Reads fetch only what they touch.** Bytes ``[a, b)`` of a file map to the chunks
  covering them (a blob lists each chunk's length). Each chunk comes from an in-memory
  LRU bounded in bytes, else the local store, else the remote, where the chunks of one
  read are fetched together: neighbours in a pack become one ranged request, requests
  run in parallel. Every chunk is verified against its id and kept in the local store,
  so a later read or ``get_local_copy`` reuses it.
* **Read-ahead** (:class:`ReadAhead`): when the order of reads is known, the chunks of
  the next :data:`AHEAD_WINDOW` bytes are fetched in the background while the caller
  reads. The order is known for a file read sequentially (a read that starts where the
  previous one ended), and for a sequence of files the caller declares (``fs.cat`` of
  many paths, ``fs.iter_files``, ``cat_ranges``, the files of a ``find`` or of the torch
  dataset opened one after the other). The chunks of the window that are neither in
  memory nor in the local store are planned by the remote's fetch planner (the one
  ``get_local_copy`` uses: neighbours in a pack, across files, coalesced into one ranged
  read; a step's partial last range waits for the next step, so requests are as few
  and as large as ``get_local_copy``'s), fetched by at most :data:`AHEAD_WORKERS`
  threads, verified and put in the LRU; a read that reaches a chunk still in flight
  waits for it. The chunks are then written into the local store in batches of
  :data:`KEEP_BATCH` bytes by one thread at a time, off the reader's path (until then
  a read finds them in memory even if the LRU dropped them: at most twice that batch
  beyond the LRU's bound). Nothing past the window is fetched, and the threads exit
  when there is nothing to do. A file in a declared order that is read sequentially
  starts the order's read-ahead (the files after it are fetched while it is read).
* **Fork-safe**: LMDB environments and obstore clients must not cross ``fork``
  (DataLoader workers). A :class:`Reader` re-opens the store and the remote in a
  process other than the one that created it (pid check); ``registry`` and the remote
  cache drop what a child inherited (``os.register_at_fork``). obstore's tokio runtime
  does not survive ``fork`` either (its threads stay in the parent): a forked child
  that reads a remote loads its own copy of obstore (``dsvc.remote.backend``).
"""

from __future__ import annotations

import bisect
import io
import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsvc import external
from dsvc import registry as reg
from dsvc.errors import InvalidPathError, NotFoundError, RemoteError, UsageError
from dsvc.ids import to_hex
from dsvc.lookup import warn
from dsvc.objects import (
    EMPTY_TREE_ID,
    KIND_CHUNKFILE,
    KIND_EXTERNAL,
    KIND_FILE,
    KIND_TREE,
    Entry,
)
from dsvc.record import Record
from dsvc.store import Store
from dsvc.treeops import lookup_with

#: default bound of the in-memory chunk cache of a reader
DEFAULT_CACHE_BYTES = 256 << 20
#: read-ahead: bytes of the declared order fetched ahead of the reader's position (at
#: most half the chunk cache, so what is fetched ahead is still in memory when read)
AHEAD_WINDOW = 128 << 20
#: ...planned in steps of this many bytes (each step: coalesced ranged reads)
AHEAD_STEP = 16 << 20
#: threads fetching ahead for one reader (ranged requests in flight at once; as many as
#: get_local_copy's fetch uses: fewer left moto S3 at 70-75% of its rate, measured)
AHEAD_WORKERS = 8
#: the blobs (chunk lists) of up to this many upcoming files are fetched in one batch
AHEAD_BLOBS = 256
#: read-ahead writes the chunks it fetched into the local store once this many bytes of
#: them wait (or when no fetch is left): one pack append + fdatasync + LMDB commit per
#: batch, from one thread at a time, off the reader's path. Storing each 16 MiB range
#: as it arrived, from 8 threads contending for the pack and LMDB write locks, took
#: ~1 s per range and the reader waited for it (folder remote, 500 MB: 68 MB/s).
KEEP_BATCH = 32 << 20

RelPath = tuple[str, ...]


class ChunkCache:
    """Chunk payloads by id, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.size = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cid: bytes) -> bytes | None:
        with self._lock:
            data = self._items.get(cid)
            if data is not None:
                self._items.move_to_end(cid)
            return data

    def put(self, cid: bytes, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if cid in self._items:
                self._items.move_to_end(cid)
                return
            self._items[cid] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class ReadStats:
    """What a reader's reads cost: chunks by source, remote requests and bytes."""

    cache_chunks: int = 0
    local_chunks: int = 0
    remote_chunks: int = 0
    remote_requests: int = 0
    remote_bytes: int = 0
    metadata_objects: int = 0
    #: of remote_chunks: fetched ahead by a :class:`ReadAhead`
    ahead_chunks: int = 0


@dataclass
class Version:
    """A resolved dataset version: its record and root tree."""

    id: str
    tree: bytes
    record: Record = field(repr=False)

    @property
    def label(self) -> str:
        r = self.record
        return f"{r.project}/{r.name}@{r.version} ({self.id})"


class Reader:
    """Trees, blobs and chunks of one store (and optionally one remote), for reading.

    ``home`` is the store folder (None: ``$DSVC_HOME``); ``remote`` a remote name or URL
    (None: the store's default remote), with obstore ``remote_options`` for a URL that is
    not configured in the store. The store and the remote are opened lazily, and again
    in a forked child.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        remote: str | None = None,
        remote_options: dict[str, str] | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        store: Store | None = None,
    ) -> None:
        self.home = None if home is None else os.path.abspath(os.fspath(home))
        self.remote_spec = remote
        self.remote_options = dict(remote_options or {})
        self.cache = ChunkCache(cache_bytes)
        self.stats = ReadStats()
        self._pid = os.getpid()
        self._store = store
        self._remote: Any = None
        self._remote_resolved = False
        self._trees: dict[bytes, dict[str, Entry]] = {}
        self._blobs: dict[bytes, list[tuple[bytes, int]]] = {}
        self._lock = threading.Lock()
        # chunks a read-ahead is fetching: a read that needs one waits for it
        self._inflight: dict[bytes, threading.Event] = {}
        self._pool: _Pool | None = None
        self._reset_kept()

    def _reset_kept(self) -> None:
        # chunks read ahead, verified and in the cache, waiting to be written into the
        # local store (:meth:`store_kept`): their frames, in order, and their payloads
        # (a read finds one here if the cache dropped it before it was stored)
        self._kept: list[tuple[bytes, bytes | memoryview]] = []
        self._kept_bytes = 0
        self._unstored: dict[bytes, bytes] = {}
        self._jobs = 0  # read-ahead fetches queued or running
        self._keep_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one thread writes kept chunks at a time

    # -- process-local handles -----------------------------------------------------

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # forked: nothing opened by the parent is usable
            self._pid = os.getpid()
            self._store = None
            self._remote = None
            self._remote_resolved = False
            self.cache = ChunkCache(self.cache.max_bytes)
            self._lock = threading.Lock()
            # the parent's read-ahead threads did not come along: nothing is in flight
            self._inflight = {}
            self._pool = None
            self._reset_kept()  # the parent writes what it fetched

    @property
    def pool(self) -> _Pool:
        """The read-ahead threads of this reader (of this process)."""
        self._check_pid()
        with self._lock:
            if self._pool is None:
                self._pool = _Pool(AHEAD_WORKERS)
            return self._pool

    def close(self) -> None:
        """Stop read-ahead: queued fetches are dropped, running ones finish (joined), and
        what they fetched is in the local store."""
        self._check_pid()
        pool = self._pool
        if pool is not None:
            pool.close()
        self.store_kept(wait=True)

    def _keep(self, values: Sequence[tuple[bytes, bytes | memoryview, bytes]]) -> None:
        """Queue verified chunks (``(id, stored frame, payload)``) for the local store."""
        with self._keep_lock:
            for cid, frame, payload in values:
                if cid not in self._unstored:
                    self._unstored[cid] = payload
                    self._kept.append((cid, frame))
                    self._kept_bytes += len(frame)

    def store_kept(self, wait: bool = False) -> None:
        """Write the chunks read ahead into the local store: when :data:`KEEP_BATCH`
        bytes of them wait, or no read-ahead fetch is queued or running. With ``wait``:
        every chunk queued so far, after the write another thread is doing (so that,
        on return, every chunk read ahead and handed to a read is in the store).

        One thread writes at a time; a caller that finds the write taken leaves its
        chunks to that writer (which looks again when it is done), unless twice the
        batch waits: then it waits its turn, so fetching cannot outrun the disk by more
        than that."""
        while True:
            with self._keep_lock:
                queued = self._kept_bytes
                due = bool(self._kept) and (wait or queued >= KEEP_BATCH or self._jobs == 0)
            if not due and not wait:
                return
            if not self._flush_lock.acquire(blocking=wait or queued >= 2 * KEEP_BATCH):
                return  # the writer stores these after its batch
            try:
                with self._keep_lock:
                    batch, self._kept, self._kept_bytes = self._kept, [], 0
                try:
                    if batch:
                        with self.store.batch() as b:
                            for cid, frame in batch:
                                # WriteBatch writes frames (bytes or views) before the
                                # block ends
                                b.put_chunk_frame(cid, frame)  # type: ignore[arg-type]
                finally:
                    with self._keep_lock:
                        for cid, _ in batch:
                            self._unstored.pop(cid, None)
            finally:
                self._flush_lock.release()
            if wait:
                return

    @property
    def store(self) -> Store:
        self._check_pid()
        if self._store is None:
            self._store = reg.open_store(self.home)
        return self._store

    @property
    def remote(self) -> Any:
        """The remote (a ``dsvc.remote.client.Remote``), or None when none is configured."""
        store = self.store
        if not self._remote_resolved:
            from dsvc.remote import client  # transport: loaded only when reading needs it

            spec = self.remote_spec
            if spec is not None and self.remote_options:
                self._remote = client.Remote(store, None, spec, self.remote_options)
            else:
                self._remote = client.resolve(store, spec)
            self._remote_resolved = True
        return self._remote

    def _need_remote(self, what: str) -> Any:
        remote = self.remote
        if remote is None:
            raise NotFoundError(
                f"{what} is not in the local store {self.store.home} and no remote is "
                "configured; add the remote it was pushed to (`dsvc remote add NAME URL`, "
                "or storage_options={'remote': URL})"
            )
        return remote

    # -- versions ------------------------------------------------------------------

    def version_by_id(self, dataset_id: str) -> Version:
        """The version with this id: the local record, else the remote's."""
        rec = reg.get(self.store, dataset_id)
        if rec is None and self.remote is not None:
            rec = self.remote.get_record(dataset_id)
        if rec is None:
            raise NotFoundError(
                f"no dataset with id {dataset_id} in the local store or on the remote; list "
                "them with `dsvc search`"
            )
        return Version(rec.id, rec.tree, rec)

    def version_by_name(self, project: str, name: str, version: str | None = None) -> Version:
        """A finalized version of ``project/name``: ``version``, else the highest one.

        Local records and the remote's ref of the name are both considered (another
        machine may have pushed a newer version); only the records of that name are read.
        """
        store = self.store
        cands = {
            r.id: r
            for r in reg.filter_records(
                reg.all_records(store), project=project, name=name, only_completed=True
            )
        }
        remote = self.remote
        if remote is not None:
            try:
                ref = (
                    remote.read_ref(project, name)
                    if remote.ensure_repo(create=False)
                    else None
                )
                for did, ver in ((ref or {}).get("versions") or {}).items():
                    if did in cands or (version is not None and ver != version):
                        continue
                    rec = remote.get_record(did)
                    if rec is not None:
                        cands[did] = rec
            except RemoteError as e:
                if not cands:
                    raise
                warn(f"{e}; looking in the local store only")
        found = reg.filter_records(cands.values(), version=version)
        best = reg.latest(found)
        if best is None:
            what = f"{project}/{name}" + (f" version {version}" if version else "")
            raise NotFoundError(
                f"no finalized dataset {what} in the local store or on the remote; list them "
                "with `dsvc search`"
            )
        return Version(best.id, best.tree, best)

    # -- metadata ------------------------------------------------------------------

    def _fetch_objects(self, ids: list[bytes], what: str) -> None:
        need = self.store.missing("objects", ids)
        if need:
            s = self._need_remote(what).fetch_objects(need)
            self.stats.metadata_objects += s.objects

    def tree(self, tid: bytes) -> dict[str, Entry]:
        """One folder (immutable, so kept in memory once read)."""
        self._check_pid()
        t = self._trees.get(tid)
        if t is None:
            if tid == EMPTY_TREE_ID:
                return {}
            self._fetch_objects([tid], f"tree {to_hex(tid)}")
            t = self.store.get_tree(tid)
            if len(self._trees) < 100_000:
                self._trees[tid] = t
        return t

    def prefetch_trees(self, tids: Sequence[bytes]) -> None:
        """Fetch the missing trees of one level together (one batch of ranged reads)."""
        want = [t for t in tids if t not in self._trees and t != EMPTY_TREE_ID]
        if want:
            self._fetch_objects(want, "trees")

    def chunks(self, entry: Entry) -> list[tuple[bytes, int]]:
        """``(chunk id, length)`` of a file entry (its blob fetched if not local). An
        external link's content is downloaded into the store first, checked against its
        recorded size and ETag (dsvc.external)."""
        if entry.kind == KIND_EXTERNAL:
            [(_, entry)] = external.resolve(self.store, [((), entry)], remote=self.remote)
        if entry.kind == KIND_CHUNKFILE:
            return [(entry.id, entry.size)]
        got = self._blobs.get(entry.id)
        if got is None:
            self._fetch_objects([entry.id], f"blob {to_hex(entry.id)}")
            got = list(self.store.get_blob(entry.id).chunks)
            if len(self._blobs) < 100_000:
                self._blobs[entry.id] = got
        return got

    def lookup(self, root: bytes, path: RelPath) -> Entry | None:
        """The entry at ``path`` below ``root`` (a folder entry for ``()``), or None."""
        if not path:  # the root, with its size (fsspec's info reports it)
            return Entry(KIND_TREE, root, sum(e.size for e in self.tree(root).values()), 0)
        return lookup_with(self.tree, root, path)

    def walk(self, root: bytes, prefix: RelPath = ()) -> Iterator[tuple[RelPath, Entry]]:
        """Every entry below ``root`` (folders and files, parents first, sorted by name);
        each level's missing trees fetched in one batch."""
        level: list[tuple[RelPath, bytes]] = [(prefix, root)]
        while level:
            self.prefetch_trees([t for _, t in level])
            nxt: list[tuple[RelPath, bytes]] = []
            for p, tid in level:
                entries = self.tree(tid)
                for name in sorted(entries, key=lambda n: n.encode()):
                    e = entries[name]
                    yield (*p, name), e
                    if e.kind == KIND_TREE:
                        nxt.append(((*p, name), e.id))
            level = nxt

    # -- content -------------------------------------------------------------------

    def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """Verified payloads of ``ids``: from memory, the local store, else the remote
        (fetched together, kept in the local store)."""
        store = self.store
        out: dict[bytes, bytes] = {}
        need: list[bytes] = []
        for cid in dict.fromkeys(ids):
            data = self.cache.get(cid)
            if data is None and (ev := self._inflight.get(cid)) is not None:
                ev.wait()  # a read-ahead is fetching it: one request, not two
                data = self.cache.get(cid)
            if data is None:  # read ahead, dropped from the cache, not yet stored
                data = self._unstored.get(cid)
            if data is None:
                need.append(cid)
            else:
                out[cid] = data
                self.stats.cache_chunks += 1
        if not need:
            return out
        absent = set(store.missing("chunks", need))
        for cid in need:
            if cid not in absent:
                data = store.get_chunk(cid)  # decode_frame verifies the id
                self.cache.put(cid, data)
                out[cid] = data
                self.stats.local_chunks += 1
        if absent:
            remote = self._need_remote(f"chunk {to_hex(next(iter(absent)))}")
            # marked in flight, so a read-ahead planning now does not fetch them again
            mine = {c: threading.Event() for c in absent}
            mine = {c: ev for c, ev in mine.items() if self._inflight.setdefault(c, ev) is ev}
            try:
                got, s = remote.fetch_chunks([c for c in need if c in absent])
                for cid, data in got.items():
                    self.cache.put(cid, data)
                    out[cid] = data
            finally:
                for c, ev in mine.items():
                    if self._inflight.get(c) is ev:
                        self._inflight.pop(c, None)
                    ev.set()
            with self._lock:
                self.stats.remote_chunks += len(got)
                self.stats.remote_requests += s.requests
                self.stats.remote_bytes += s.bytes_received
        return out

    def open(
        self,
        entry: Entry,
        name: str = "",
        ahead: ReadAhead | None = None,
        index: int = 0,
    ) -> DsvcFile:
        """A read-only binary file over a file entry; ``ahead``: the read-ahead of a
        declared order in which this file is item ``index``."""
        if entry.kind == KIND_TREE:
            raise IsADirectoryError(f"{name or 'path'} is a folder, not a file")
        return DsvcFile(self, entry, name, ahead, index)


class _Pool:
    """At most ``n`` daemon threads, started when work is queued, each exiting as soon as
    the queue is empty: nothing lingers once a read-ahead is done. :meth:`close` drops
    the queue and joins the running ones.

    ``fork`` waits for the running tasks (``os.register_at_fork``): a child must not
    inherit a lock one of them held (the store's, obstore's, the fetch decode budget's),
    and gets an empty pool; the parent's pool resumes after the fork.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._queue: deque[tuple[Callable[[], None], Callable[[], None] | None]] = deque()
        self._threads: set[threading.Thread] = set()
        self._cond = threading.Condition()
        self._running = 0
        self._paused = False
        _POOLS.add(self)

    def submit(
        self, fn: Callable[[], None], cancel: Callable[[], None] | None = None, first: bool = False
    ) -> None:
        """Run ``fn`` on a pool thread (before what is queued if ``first``); ``cancel``
        instead if the pool is closed first."""
        with self._cond:
            if first:
                self._queue.appendleft((fn, cancel))
            else:
                self._queue.append((fn, cancel))
            if len(self._threads) < self.n:
                t = threading.Thread(target=self._run, name="dsvc-ahead", daemon=True)
                self._threads.add(t)
                t.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while self._paused:
                    self._cond.wait()
                if not self._queue:
                    self._threads.discard(me)
                    return
                fn, _ = self._queue.popleft()
                self._running += 1
            try:
                fn()  # tasks handle their own errors (a failed fetch is retried by the read)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            dropped = list(self._queue)
            self._queue.clear()
            threads = list(self._threads)
        for _, cancel in dropped:  # they release what they hold (waiters, in-flight marks)
            if cancel is not None:
                cancel()
        for t in threads:
            if t is not threading.current_thread():
                t.join()

    def _pause(self) -> None:
        self._cond.acquire()  # held across the fork: nothing changes the pool meanwhile
        self._paused = True
        while self._running and threading.current_thread() not in self._threads:
            self._cond.wait()

    def _resume(self) -> None:
        self._paused = False
        self._cond.notify_all()
        self._cond.release()

    def _reset_in_child(self) -> None:
        # the parent's threads did not come along; their tasks belong to the parent's
        # read state, which the child's reader drops (Reader._check_pid)
        self._cond = threading.Condition()
        self._queue.clear()
        self._threads = set()
        self._running = 0
        self._paused = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._threads)


_POOLS: weakref.WeakSet[_Pool] = weakref.WeakSet()


def _before_fork() -> None:
    for pool in list(_POOLS):
        pool._pause()


def _after_fork_parent() -> None:
    for pool in list(_POOLS):
        if pool._paused:
            pool._resume()


def _after_fork_child() -> None:
    for pool in list(_POOLS):
        pool._reset_in_child()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
)


class _Job:
    """One planned ranged read of a read-ahead (a pool task); its chunks are marked in
    flight from planning until they are in the cache (or the fetch failed)."""

    def __init__(self, ahead: ReadAhead, job: Any, events: dict[bytes, threading.Event]) -> None:
        self.ahead = ahead
        self.job = job
        self.events = events

    def __call__(self) -> None:
        reader = self.ahead.reader
        try:
            if not self.ahead.closed:
                # verified, into the cache and the waiting readers' hands first; written
                # into the local store in batches (Reader.store_kept), off their path
                got, nbytes = reader.remote.read_verified(self.job)
                for cid, _frame, payload in got:
                    reader.cache.put(cid, payload)
                reader._keep(got)
                with reader._lock:
                    reader.stats.remote_chunks += len(got)
                    reader.stats.ahead_chunks += len(got)
                    reader.stats.remote_requests += 1
                    reader.stats.remote_bytes += nbytes
        except Exception:
            pass  # the read that needs these chunks fetches them itself and reports errors
        finally:
            self.cancel()
        try:
            reader.store_kept()
        except Exception:
            pass  # not kept locally: a later read fetches the chunk again

    def cancel(self) -> None:
        """Release the chunks' waiters and in-flight marks (the job ran, or was dropped)."""
        reader = self.ahead.reader
        for cid, ev in self.events.items():
            if reader._inflight.get(cid) is ev:
                reader._inflight.pop(cid, None)
            ev.set()
        with reader._keep_lock:
            reader._jobs -= 1


#: one item of a read-ahead: a file entry and the byte range ``[a, b)`` that will be read
AheadItem = tuple[Entry, int, int]


class ReadAhead:
    """Fetch the chunks of a declared sequence of reads ahead of the reader.

    ``items`` are ``(file entry, a, b)`` in the order they will be read; the reader says
    where it is with :meth:`at`. The chunks of the next ``window`` bytes (default
    :data:`AHEAD_WINDOW`, at most half the chunk cache) that are neither in memory nor
    in the local store are planned in steps of :data:`AHEAD_STEP` with the remote's
    fetch planner (``plan_chunks``: neighbours in a pack coalesced into one ranged read,
    across files), fetched on the reader's pool (:data:`AHEAD_WORKERS` threads),
    verified, put in the chunk cache and written into the local store in batches
    (:meth:`Reader.store_kept`). A step is planned once a whole step fits in the window
    (not at every read call), and its partial last range is planned with the next
    step. Nothing past the window is fetched; :meth:`close` stops it. Not shared across ``fork`` (a child's
    read-ahead does nothing; its reads fetch what they need).
    """

    def __init__(
        self, reader: Reader, items: Sequence[AheadItem], window: int | None = None
    ) -> None:
        self.reader = reader
        self.items = list(items)
        cap = max(1, reader.cache.max_bytes // 2)
        self.window = min(AHEAD_WINDOW if window is None else window, cap)
        self.step = max(1, min(AHEAD_STEP, self.window // 2))
        self._starts: list[int] = []  # where each item starts in the sequence (bytes)
        pos = 0
        for _, a, b in self.items:
            self._starts.append(pos)
            pos += max(0, b - a)
        self.total = pos
        self.closed = False
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._pos = -1  # the reader's position in the sequence (bytes; -1: not started)
        self._next = (0, 0)  # (item, chunk index) of the first chunk not yet planned
        self._planned = 0  # where that chunk starts in the sequence
        self._planning = False
        self._at = (0, 0)  # (item, file offset) of the reader's position
        # the chunks of the last, partial ranged read of the latest step, held back to be
        # planned with the next step: ``(chunk id, sequence offset)``. A step of the
        # sequence rarely ends where a coalesced range does; sending its tail alone
        # cost one small request per step (moto S3: 287 requests for 2 GB where
        # get_local_copy sends 193, and every request costs the server a read of the
        # whole pack). Held only while it stays half a window ahead of the reader.
        self._carry: list[tuple[bytes, int]] = []

    def at(self, index: int, offset: int = 0) -> None:
        """The reader is at byte ``offset`` of item ``index`` (a file offset, as in
        ``[a, b)``): plan and fetch up to ``window`` bytes past it, in the background."""
        if self.closed or not 0 <= index < len(self.items):
            return
        if os.getpid() != self.pid:  # forked: the parent's state is not ours
            self.closed = True
            return
        _, a, b = self.items[index]
        pos = self._starts[index] + min(max(0, offset - a), max(0, b - a))
        with self._lock:
            if pos <= self._pos:
                return
            self._pos, self._at = pos, (index, offset)
            if self._planning or not self._due():
                return
            self._planning = True
        try:
            # before queued fetches: the plan must stay a window ahead of the reader, or
            # the reader, finding its chunks neither fetched nor in flight, asks itself
            self.reader.pool.submit(self._plan, self._unplan, first=True)
        except BaseException:
            self._unplan()
            raise

    def _due(self) -> bool:
        """Whether a step is to be planned (under ``_lock``): the reader is past the plan,
        or a whole step fits in the window, or the window reaches the end. Planning in
        whole steps, not each time the reader moves, makes each step's ranged reads
        full-sized (a few large requests, not one per read call)."""
        limit = min(self.total, self._pos + self.window)
        if self._planned >= limit:
            return False
        behind = self._pos > self._planned
        return behind or limit == self.total or limit - self._planned >= self.step

    def _unplan(self) -> None:
        with self._lock:
            self._planning = False

    def close(self) -> None:
        """Fetch nothing more (fetches already running finish)."""
        self.closed = True

    def _chunks(self, index: int) -> list[tuple[bytes, int]]:
        entry, _, _ = self.items[index]
        if entry.kind not in (KIND_FILE, KIND_CHUNKFILE):
            return []  # external links are resolved by the read itself
        reader = self.reader
        if (
            entry.kind == KIND_FILE
            and entry.id not in reader._blobs
            and not reader.store.has_object(entry.id)
        ):
            # the chunk lists of the next files in one batch, not one request per file
            ids = [
                e.id
                for e, _, _ in self.items[index : index + AHEAD_BLOBS]
                if e.kind == KIND_FILE and e.id not in reader._blobs
            ]
            reader._fetch_objects(list(dict.fromkeys(ids)), "blobs")
        return reader.chunks(entry)

    def _plan(self) -> None:
        """Pool task: plan (and queue the fetches of) steps until the window is covered."""
        try:
            while not self.closed:
                with self._lock:
                    if not self._due():
                        self._planning = False
                        return
                    (i, j), planned = self._next, self._planned
                    limit = min(self.total, self._pos + self.window)
                    behind = self._pos > planned
                    at_index, at_offset = self._at
                    carry, self._carry = self._carry, []
                if behind:  # the reader is past the plan (it skipped, or read first)
                    i, j, planned = self._seek(at_index, at_offset)
                    carry = []  # behind the reader now, or about to be
                step_end = min(limit, planned + self.step)
                ids: list[tuple[bytes, int]] = list(carry)  # (chunk id, sequence offset)
                while i < len(self.items) and planned < step_end:
                    entry, a, b = self.items[i]
                    if b > a:
                        pos = 0
                        chunks = self._chunks(i)
                        for k, (cid, n) in enumerate(chunks):
                            if k < j:
                                pos += n
                                continue
                            if planned >= step_end:
                                break
                            j = k + 1
                            if pos + n > a and pos < b:  # the chunk overlaps [a, b)
                                ids.append((cid, planned))
                                planned += min(b, pos + n) - max(a, pos)
                            pos += n
                        else:
                            i, j = i + 1, 0
                            planned = self._starts[i] if i < len(self.items) else self.total
                    else:
                        i, j = i + 1, 0
                with self._lock:
                    self._next, self._planned = (i, j), planned
                    pos_now = self._pos
                held = self._fetch(
                    ids, hold=planned < self.total, soon=planned < limit, reader_at=pos_now
                )
                if held:
                    with self._lock:
                        self._carry = held
        except Exception:
            pass  # reads fetch what read-ahead could not (and report why)
        self._unplan()

    def _seek(self, index: int, offset: int) -> tuple[int, int, int]:
        """The plan cursor ``(item, chunk, sequence offset)`` at the chunk of item
        ``index`` that holds file offset ``offset``."""
        _, a, b = self.items[index]
        pos = 0
        for k, (_, n) in enumerate(self._chunks(index) if b > a else []):
            if pos + n > offset:
                return index, k, self._starts[index] + max(0, pos - a)
            pos += n
        nxt = index + 1
        return nxt, 0, self._starts[nxt] if nxt < len(self.items) else self.total

    def _fetch(
        self,
        ids: list[tuple[bytes, int]],
        hold: bool = False,
        soon: bool = False,
        reader_at: int = 0,
    ) -> list[tuple[bytes, int]]:
        """Plan the ranged reads of the chunks ``ids`` (``(chunk id, sequence offset)``)
        not in memory, in flight or in the local store, and queue them. With ``hold``
        (more of the sequence follows), the read holding the last of them is returned
        instead of queued, to be planned with the next step, if that step is planned
        right away (``soon``), or if the read starts at least half a window ahead of
        the reader (``reader_at``) and the window is at least 4 steps (the next step,
        planned when the reader has moved one step, still reaches it in time)."""
        reader = self.reader
        where: dict[bytes, int] = {}
        for cid, pos in ids:
            where.setdefault(cid, pos)
        todo = [c for c in where if c not in reader._inflight]
        todo = [c for c in todo if reader.cache.get(c) is None]
        if not todo:
            return []
        need = reader.store.missing("chunks", todo)
        remote = reader.remote if need else None
        if remote is None:
            return []
        jobs = remote.plan_chunks(need)
        held: list[tuple[bytes, int]] = []
        if hold and jobs:
            last = max(range(len(jobs)), key=lambda x: max(where[c] for c, _ in jobs[x][1]))
            tail = sorted((where[c], c) for c, _ in jobs[last][1])
            far = self.window >= 4 * self.step and tail[0][0] - reader_at >= self.window // 2
            if soon or far:
                held = [(c, p) for p, c in tail]
                del jobs[last]
        for job in jobs:
            events = {}
            for cid, _ in job[1]:
                ev = threading.Event()
                if reader._inflight.setdefault(cid, ev) is ev:
                    events[cid] = ev
            if events:  # else every chunk of it is being fetched already
                task = _Job(self, job, events)
                with reader._keep_lock:
                    reader._jobs += 1
                reader.pool.submit(task, task.cancel)
        return held


def open_mode(mode: str) -> bool:
    """True for text mode; a UsageError for anything but reading."""
    if mode in ("rb", "br"):
        return False
    if mode in ("r", "rt", "tr"):
        return True
    raise UsageError(f"dsvc versions are read-only: open mode {mode!r} is not supported; use 'rb'")


def clean_path(path: str) -> RelPath:
    """A dataset path as components; ``..`` and empty names are refused."""
    parts = tuple(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise InvalidPathError(f"path {path!r} leaves the dataset ('..')")
    return parts


class DsvcFile(io.BufferedIOBase):
    """A seekable, read-only binary file over one file of a version.

    Reads map to the chunks they touch (see the module docstring); nothing is written to
    disk except verified chunks into the local store.
    """

    def __init__(
        self,
        reader: Reader,
        entry: Entry,
        name: str = "",
        ahead: ReadAhead | None = None,
        index: int = 0,
    ) -> None:
        super().__init__()
        self.name = name
        self.size = entry.size
        self._reader = reader
        self.entry = entry
        # the read-ahead this file's reads report to: the caller's (a declared order of
        # files, this one item ``index``), else one of its own once reads are sequential
        self._ahead_of = ahead
        self._index = index
        self._own_ahead = False
        #: when this file is read sequentially without a read-ahead, the read-ahead to
        #: report to instead of one of its own (None: its own): the declared order this
        #: file is item ``index`` of, so the files after it are fetched while it is read
        self.sequel: Callable[[], ReadAhead | None] | None = None
        self._chunks = [(c, n) for c, n in reader.chunks(entry) if n > 0]
        self._starts: list[int] = []
        pos = 0
        for _, n in self._chunks:
            self._starts.append(pos)
            pos += n
        self._pos = 0
        self._seq_end = -1  # where the last read ended: a read starting there is sequential

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        a = self._pos
        b = self.size if size is None or size < 0 else min(self.size, a + size)
        if b <= a:
            return b""
        data = self.read_range(a, b)
        self._pos = b
        return data

    read1 = read

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    readinto1 = readinto

    def readall(self) -> bytes:
        return self.read(-1)

    def read_range(self, a: int, b: int) -> bytes:
        """Bytes ``[a, b)`` of the file (clamped to its size), without moving the position."""
        b = min(b, self.size)
        if b <= a:
            return b""
        sequential = a == self._seq_end
        self._seq_end = b
        ahead = self._ahead_of
        if ahead is None and sequential and b < self.size:
            # sequential reads: fetch the next window while these are read, along the
            # declared order if this file is in one (no stall at its end), else its own
            ahead = self._ahead_of = self.sequel() if self.sequel is not None else None
            if ahead is None:
                ahead = self._ahead_of = ReadAhead(self._reader, [(self.entry, 0, self.size)])
                self._index, self._own_ahead = 0, True
        if ahead is not None:
            ahead.at(self._index, a)
        lo = bisect.bisect_right(self._starts, a) - 1
        hi = bisect.bisect_left(self._starts, b)  # chunks [lo, hi) cover [a, b)
        wanted = [c for c, _ in self._chunks[lo:hi]]
        cache = self._reader.cache
        cached = {c: v for c in wanted if (v := cache.get(c)) is not None}
        got = self._reader.get_chunks(wanted) if len(cached) < len(set(wanted)) else cached
        parts = []
        for i in range(lo, hi):
            cid, n = self._chunks[i]
            start = self._starts[i]
            data = got[cid]
            parts.append(memoryview(data)[max(0, a - start) : min(n, b - start)])
        return b"".join(parts)

    def attach(self, ahead: ReadAhead | None, index: int) -> None:
        """Report this file's reads to ``ahead`` (a declared order; this file is item
        ``index`` of it)."""
        self._ahead_of, self._index, self._own_ahead = ahead, index, False

    def chunks_between(self, a: int, b: int) -> list[tuple[bytes, int]]:
        """``(chunk id, length)`` of the chunks that bytes ``[a, b)`` touch."""
        if min(b, self.size) <= a:
            return []
        lo = bisect.bisect_right(self._starts, a) - 1
        return self._chunks[lo : bisect.bisect_left(self._starts, min(b, self.size))]

    def close(self) -> None:
        if self._own_ahead and self._ahead_of is not None:
            self._ahead_of.close()
            # what this file read is in the store once it is closed (a new reader of
            # the same store finds it); chunks read ahead of the order, whose files are
            # still to be read, are written in batches meanwhile (Reader.store_kept)
            self._reader.store_kept(wait=True)
        super().close()

    def __repr__(self) -> str:
        return f"<DsvcFile {self.name!r} size={self.size}>"
