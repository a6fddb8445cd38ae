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
* **Sequential reads read ahead**: a read that starts where the previous one ended
  doubles the read-ahead window (up to :data:`READAHEAD_MAX`), so streaming a file costs
  a few large requests instead of one per ``read`` call.
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
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsvc import external
from dsvc import registry as reg
from dsvc.errors import InvalidPathError, NotFoundError, RemoteError, UsageError
from dsvc.ids import to_hex
from dsvc.lookup import warn
from dsvc.objects import EMPTY_TREE_ID, KIND_CHUNKFILE, KIND_EXTERNAL, KIND_TREE, Entry
from dsvc.record import Record
from dsvc.store import Store
from dsvc.treeops import lookup_with

#: default bound of the in-memory chunk cache of a reader
DEFAULT_CACHE_BYTES = 256 << 20
#: read-ahead of sequential reads grows from this window...
READAHEAD_MIN = 4 << 20
#: ...doubling up to this one (several ranged requests in parallel)
READAHEAD_MAX = 64 << 20

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

    # -- process-local handles -----------------------------------------------------

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # forked: nothing opened by the parent is usable
            self._pid = os.getpid()
            self._store = None
            self._remote = None
            self._remote_resolved = False
            self.cache = ChunkCache(self.cache.max_bytes)
            self._lock = threading.Lock()

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
            got, s = remote.fetch_chunks([c for c in need if c in absent])
            with self._lock:
                self.stats.remote_chunks += len(got)
                self.stats.remote_requests += s.requests
                self.stats.remote_bytes += s.bytes_received
            for cid, data in got.items():
                self.cache.put(cid, data)
                out[cid] = data
        return out

    def open(self, entry: Entry, name: str = "") -> DsvcFile:
        """A read-only binary file over a file entry."""
        if entry.kind == KIND_TREE:
            raise IsADirectoryError(f"{name or 'path'} is a folder, not a file")
        return DsvcFile(self, entry, name)


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

    def __init__(self, reader: Reader, entry: Entry, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.size = entry.size
        self._reader = reader
        self._chunks = [(c, n) for c, n in reader.chunks(entry) if n > 0]
        self._starts: list[int] = []
        pos = 0
        for _, n in self._chunks:
            self._starts.append(pos)
            pos += n
        self._pos = 0
        self._seq_end = -1  # where the last read ended: a read starting there is sequential
        self._ahead = 0  # current read-ahead window (bytes)

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
        if sequential:
            self._ahead = min(max(self._ahead * 2, READAHEAD_MIN), self._readahead_cap())
        else:
            self._ahead = 0
        lo = bisect.bisect_right(self._starts, a) - 1
        hi = bisect.bisect_left(self._starts, b)  # chunks [lo, hi) cover [a, b)
        wanted = [c for c, _ in self._chunks[lo:hi]]
        cache = self._reader.cache
        cached = {c: v for c in wanted if (v := cache.get(c)) is not None}
        if len(cached) < len(set(wanted)):
            ids = wanted
            if self._ahead:  # the chunks of the read-ahead window come in the same batch
                end = bisect.bisect_left(self._starts, b + self._ahead)
                ids = [c for c, _ in self._chunks[lo : max(hi, end)]]
            got = self._reader.get_chunks(ids)
        else:
            got = cached
        parts = []
        for i in range(lo, hi):
            cid, n = self._chunks[i]
            start = self._starts[i]
            data = got[cid]
            parts.append(memoryview(data)[max(0, a - start) : min(n, b - start)])
        return b"".join(parts)

    def chunks_between(self, a: int, b: int) -> list[tuple[bytes, int]]:
        """``(chunk id, length)`` of the chunks that bytes ``[a, b)`` touch."""
        if min(b, self.size) <= a:
            return []
        lo = bisect.bisect_right(self._starts, a) - 1
        return self._chunks[lo : bisect.bisect_left(self._starts, min(b, self.size))]

    def _readahead_cap(self) -> int:
        return max(READAHEAD_MIN, min(READAHEAD_MAX, self._reader.cache.max_bytes // 4))

    def __repr__(self) -> str:
        return f"<DsvcFile {self.name!r} size={self.size}>"
