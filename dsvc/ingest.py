"""Scanning folders and turning files into stored content.

Pipeline: ``scan`` lists files (with their ``stat``); the stat cache answers for every
file whose (path, size, mtime_ns, inode) is unchanged, so those are never read; the
others go to a thread pool where each file is read through a window, cut by FastCDC,
hashed (xxh3-128) and compressed (zstd) -- all three release the GIL for the bulk of
the work. Large files fan their chunks out to a second pool so one big file uses every
core. A single writer thread owns the LMDB write batch.

Ordering invariant (crash safety): a file's chunks are queued to the writer before its
blob object and its stat-cache entry, and the writer commits in queue order, so a
committed stat-cache entry or blob never points at a missing chunk.

Symlinks (documented in docs/guide.md): a link whose target resolves inside the folder
being added is followed and stored as a regular file; a link pointing outside that
folder, or dangling, is skipped and reported, unless ``follow_symlinks=True``. Folders
reached through links are not entered (no cycles).
"""

from __future__ import annotations

import fnmatch
import os
import queue
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from dsvc import codec
from dsvc.errors import DsvcError, InvalidPathError, NotFoundError
from dsvc.ids import TAG_BLOB, chunk_id
from dsvc.objects import (
    KIND_CHUNKFILE,
    KIND_FILE,
    MODE_EXEC,
    MODE_FILE,
    Blob,
    Entry,
    validate_name,
)
from dsvc.store import Store

RelPath = tuple[str, ...]
ProgressFn = Callable[[int], None]

#: files up to this size are grouped several per task (per-task overhead dominates)
SMALL_FILE = 256 * 1024
SMALL_GROUP_BYTES = 4 << 20
SMALL_GROUP_FILES = 256
#: files above this size spread their chunks over the chunk pool
LARGE_FILE = 32 << 20
#: bytes of chunk data in flight per large file (bounds memory)
INFLIGHT_BYTES = 64 << 20


def default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 2)


@dataclass(frozen=True)
class ScanItem:
    """A file found by ``scan``: where it is on disk and where it goes in the dataset."""

    abs_path: str
    rel: RelPath
    size: int
    mtime_ns: int
    ino: int
    mode: int


@dataclass
class ScanResult:
    items: list[ScanItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


@dataclass
class IngestStats:
    files: int = 0
    bytes: int = 0
    cached_files: int = 0  # answered by the stat cache, not read
    read_bytes: int = 0
    new_chunks: int = 0
    new_bytes_stored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _mode(st_mode: int) -> int:
    return MODE_EXEC if st_mode & 0o111 else MODE_FILE


def _decode_name(name: str, parent: str) -> str:
    try:
        return validate_name(name)
    except InvalidPathError as e:
        raise InvalidPathError(f"{os.path.join(parent, name)!r}: {e}") from e


def matches_wildcard(rel: RelPath, patterns: list[str], recursive: bool) -> bool:
    """ClearML's ``add_files`` wildcard rule (pathlib ``rglob``/``glob`` semantics).

    Recursive: a pattern of k components matches the last k components of the path at
    any depth (``*.jpg`` matches ``a/b/x.jpg``). Not recursive: the pattern matches the
    whole relative path (``*.jpg`` matches only top-level files).
    """
    for pat in patterns:
        parts = [p for p in pat.replace("\\", "/").split("/") if p not in ("", ".")]
        k = len(parts)
        if k == 0:
            continue
        if recursive:
            if len(rel) >= k and all(
                fnmatch.fnmatchcase(a, b) for a, b in zip(rel[-k:], parts, strict=True)
            ):
                return True
        elif len(rel) == k and all(
            fnmatch.fnmatchcase(a, b) for a, b in zip(rel, parts, strict=True)
        ):
            return True
    return False


def scan(
    path: str | os.PathLike[str],
    *,
    wildcard: str | list[str] | None = None,
    recursive: bool = True,
    follow_symlinks: bool = False,
) -> ScanResult:
    """List the files under ``path`` (a folder, or a single file).

    Raises NotFoundError when ``path`` does not exist and InvalidPathError for names
    that cannot be stored (not UTF-8).
    """
    root = os.path.abspath(os.fspath(path))
    out = ScanResult()
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise NotFoundError(f"cannot add {root!r}: no such file or folder") from None
    patterns = [wildcard] if isinstance(wildcard, str) else list(wildcard or [])
    if statmod.S_ISREG(st.st_mode):
        name = _decode_name(os.path.basename(root), os.path.dirname(root))
        if not patterns or matches_wildcard((name,), patterns, recursive):
            out.items.append(
                ScanItem(root, (name,), st.st_size, st.st_mtime_ns, st.st_ino, _mode(st.st_mode))
            )
        return out
    if not statmod.S_ISDIR(st.st_mode):
        raise InvalidPathError(f"cannot add {root!r}: not a regular file or folder")
    real_root = os.path.realpath(root)
    stack: list[tuple[str, RelPath]] = [(root, ())]
    while stack:
        d, rel = stack.pop()
        try:
            it = os.scandir(d)
        except PermissionError as e:
            raise InvalidPathError(f"cannot read folder {d!r}: {e.strerror}") from e
        except FileNotFoundError:
            out.skipped.append((d, "folder vanished during the scan"))
            continue
        with it:
            for de in it:
                name = _decode_name(de.name, d)
                r = (*rel, name)
                try:
                    if de.is_symlink():
                        target = os.path.realpath(de.path)
                        inside = target == real_root or target.startswith(real_root + os.sep)
                        if not (inside or follow_symlinks):
                            out.skipped.append((de.path, "symlink pointing outside the folder"))
                            continue
                        try:
                            lst = os.stat(de.path)
                        except FileNotFoundError:
                            out.skipped.append((de.path, "dangling symlink"))
                            continue
                        if not statmod.S_ISREG(lst.st_mode):
                            out.skipped.append((de.path, "symlink to a folder is not entered"))
                            continue
                    elif de.is_dir(follow_symlinks=False):
                        if recursive or patterns:
                            stack.append((de.path, r))
                        continue
                    else:
                        lst = de.stat(follow_symlinks=False)
                        if not statmod.S_ISREG(lst.st_mode):
                            out.skipped.append((de.path, "not a regular file"))
                            continue
                except FileNotFoundError:
                    out.skipped.append((de.path, "vanished during the scan"))
                    continue
                if patterns and not matches_wildcard(r, patterns, recursive):
                    continue
                out.items.append(
                    ScanItem(
                        de.path, r, lst.st_size, lst.st_mtime_ns, lst.st_ino, _mode(lst.st_mode)
                    )
                )
    if not recursive and not patterns:
        out.items = [i for i in out.items if len(i.rel) == 1]
    out.items.sort(key=lambda i: i.rel)
    return out


# -- the pipeline ------------------------------------------------------------------

_STOP = object()


class _Writer(threading.Thread):
    """The one thread that writes to LMDB; everything else queues to it."""

    def __init__(self, store: Store) -> None:
        super().__init__(name="dsvc-writer", daemon=True)
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=32)
        self.error: BaseException | None = None
        self.new_chunks = 0
        self.new_bytes = 0

    def run(self) -> None:
        try:
            with self.store.batch() as b:
                while True:
                    items = self.q.get()
                    if items is _STOP:
                        break
                    for kind, key, value in items:
                        if kind == "c":
                            if not b.has(key):
                                b.put_chunk_frame(key, value)
                                self.new_chunks += 1
                                self.new_bytes += len(value)
                        elif kind == "b":
                            b.put_object(TAG_BLOB, value)
                        else:
                            b.put("statcache", key, value)
        except BaseException as e:  # reported to the caller by finish()
            self.error = e
            while self.q.get() is not _STOP:  # drain so producers never block forever
                pass

    def put(self, items: list[tuple]) -> None:
        """Queue writes; they are applied in queue order."""
        if self.error is not None:
            raise self.error
        if items:
            self.q.put(items)

    def finish(self) -> None:
        self.q.put(_STOP)
        self.join()
        if self.error is not None:
            raise self.error


class Ingestor:
    """Turns scanned files into tree entries, storing whatever content is new."""

    def __init__(
        self,
        store: Store,
        *,
        max_workers: int | None = None,
        progress: ProgressFn | None = None,
        use_stat_cache: bool = True,
    ) -> None:
        self.store = store
        self.chunker = store.chunker
        self.level = store.level
        self.min_size = store.chunker_params.min_size
        self.workers = max_workers or default_workers()
        self.progress = progress or (lambda n: None)
        self.use_stat_cache = use_stat_cache
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    # chunk-level work (runs in pool threads) -----------------------------------

    def _store_chunk(self, data: memoryview | bytes, sink: list[tuple]) -> bytes:
        cid = chunk_id(data)
        if cid in self._seen:
            return cid
        self._seen.add(cid)
        if not self.store.has_chunk(cid):
            sink.append(("c", cid, codec.encode_frame(data, self.level)))
        return cid

    def _file_entry(
        self, item: ScanItem, chunks: list[tuple[bytes, int]], sink: list[tuple]
    ) -> Entry:
        if len(chunks) == 1:
            entry = Entry(KIND_CHUNKFILE, chunks[0][0], chunks[0][1], item.mode)
        else:
            blob = Blob(tuple(chunks))
            data = blob.encode()
            sink.append(("b", None, data))
            entry = Entry(KIND_FILE, blob.id, blob.size, item.mode)
        if self.use_stat_cache and not _racy(item):
            key = os.fsencode(item.abs_path)
            val = msgpack.packb(
                [item.size, item.mtime_ns, item.ino, entry.kind, entry.id, entry.mode],
                use_bin_type=True,
            )
            sink.append(("s", key, val))
        return entry

    def _read_small(self, item: ScanItem, sink: list[tuple]) -> Entry:
        with open(item.abs_path, "rb") as f:
            data = f.read()
        if len(data) != item.size:
            raise _Changed(item)
        chunks = [(self._store_chunk(c, sink), len(c)) for c in self.chunker.cut(data)]
        return self._file_entry(item, chunks, sink)

    def _read_medium(self, item: ScanItem, writer: _Writer) -> Entry:
        chunks: list[tuple[bytes, int]] = []
        total = 0
        sink: list[tuple] = []
        with open(item.abs_path, "rb", buffering=0) as f:
            for c in self.chunker.cut_stream(f):
                chunks.append((self._store_chunk(c, sink), len(c)))
                total += len(c)
                writer.put(sink)
                sink = []
                self.progress(len(c))
        if total != item.size:
            raise _Changed(item)
        entry = self._file_entry(item, chunks, sink)
        writer.put(sink)
        return entry

    def _read_large(self, item: ScanItem, writer: _Writer, pool: ThreadPoolExecutor) -> Entry:
        futures: list[tuple[Future, int]] = []
        budget = threading.BoundedSemaphore(max(1, INFLIGHT_BYTES // self.chunker.params.max_size))
        total = 0

        def job(data: bytes) -> bytes:
            try:
                sink: list[tuple] = []
                cid = self._store_chunk(data, sink)
                writer.put(sink)
                self.progress(len(data))
                return cid
            finally:
                budget.release()

        with open(item.abs_path, "rb", buffering=0) as f:
            for c in self.chunker.cut_stream(f):
                budget.acquire()
                # the window is reused for the next read: the job gets its own copy
                futures.append((pool.submit(job, bytes(c)), len(c)))
                total += len(c)
        chunks = [(fut.result(), n) for fut, n in futures]
        if total != item.size:
            raise _Changed(item)
        sink: list[tuple] = []
        entry = self._file_entry(item, chunks, sink)
        writer.put(sink)
        return entry

    # file-level driver ----------------------------------------------------------

    def ingest(self, items: list[ScanItem]) -> tuple[dict[RelPath, Entry], IngestStats]:
        """Store the content of ``items``; return their tree entries by relative path.

        Files that vanish or change size while being read are skipped and reported in
        ``stats.skipped``; an unreadable file raises InvalidPathError naming it. Either
        way, everything stored before the error stays valid (content-addressed).
        """
        stats = IngestStats(files=len(items), bytes=sum(i.size for i in items))
        result: dict[RelPath, Entry] = {}
        todo = self._from_stat_cache(items, result, stats)
        if not todo:
            return result, stats
        writer = _Writer(self.store)
        writer.start()
        chunk_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dsvc-chunk")
        file_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dsvc-file")
        failed: BaseException | None = None
        tasks: list[Future] = []
        try:
            for g in _groups(todo):
                tasks.append(file_pool.submit(self._run_group, g, writer, chunk_pool))
            for t in tasks:
                done, skipped = t.result()
                result.update(done)
                stats.skipped.extend(skipped)
        except BaseException as e:
            failed = e
            raise
        finally:
            file_pool.shutdown(wait=True, cancel_futures=failed is not None)
            chunk_pool.shutdown(wait=True, cancel_futures=failed is not None)
            try:
                writer.finish()
            except BaseException:
                if failed is None:
                    raise
        stats.read_bytes = sum(i.size for i in todo)
        stats.new_chunks = writer.new_chunks
        stats.new_bytes_stored = writer.new_bytes
        return result, stats

    def _run_group(
        self, group: list[ScanItem], writer: _Writer, pool: ThreadPoolExecutor
    ) -> tuple[dict[RelPath, Entry], list[tuple[str, str]]]:
        done: dict[RelPath, Entry] = {}
        skipped: list[tuple[str, str]] = []
        sink: list[tuple] = []
        small_bytes = 0
        for item in group:
            try:
                if item.size <= SMALL_FILE:
                    e = self._read_small(item, sink)
                    small_bytes += item.size
                elif item.size <= LARGE_FILE:
                    e = self._read_medium(item, writer)
                else:
                    e = self._read_large(item, writer, pool)
                done[item.rel] = e
            except FileNotFoundError:
                skipped.append((item.abs_path, "vanished before it could be read"))
            except _Changed:
                skipped.append((item.abs_path, "changed size while being read; add it again"))
            except PermissionError as e:
                raise InvalidPathError(
                    f"cannot read {item.abs_path!r}: {e.strerror}; fix its permissions or leave it out"
                ) from e
            except IsADirectoryError:
                skipped.append((item.abs_path, "became a folder during the scan"))
        writer.put(sink)  # a group's small files go to the writer as one item
        self.progress(small_bytes)
        return done, skipped

    def _from_stat_cache(
        self, items: list[ScanItem], result: dict[RelPath, Entry], stats: IngestStats
    ) -> list[ScanItem]:
        if not self.use_stat_cache:
            return list(items)
        cached = self.store.statcache_get_many([os.fsencode(i.abs_path) for i in items])
        todo = []
        for item, c in zip(items, cached):
            if c is not None and c[0] == item.size and c[1] == item.mtime_ns and c[2] == item.ino:
                result[item.rel] = Entry(c[3], c[4], item.size, item.mode)
                stats.cached_files += 1
            else:
                todo.append(item)
        if stats.cached_files:
            self.progress(sum(result[i.rel].size for i in items if i.rel in result))
        return todo


class _Changed(DsvcError):
    def __init__(self, item: ScanItem) -> None:
        super().__init__(item.abs_path)


def _racy(item: ScanItem) -> bool:
    """A file modified within the filesystem's timestamp granularity of now may change
    again without its mtime changing, so it is not cached (git's "racily clean" rule)."""
    window = 2_000_000_000 if item.mtime_ns % 1_000_000_000 == 0 else 100_000_000
    return item.mtime_ns >= time.time_ns() - window


def _groups(items: Iterable[ScanItem]) -> list[list[ScanItem]]:
    """Small files grouped into tasks of a few MiB; larger files get a task each."""
    groups: list[list[ScanItem]] = []
    cur: list[ScanItem] = []
    cur_bytes = 0
    for it in items:
        if it.size > SMALL_FILE:
            groups.append([it])
            continue
        cur.append(it)
        cur_bytes += it.size
        if cur_bytes >= SMALL_GROUP_BYTES or len(cur) >= SMALL_GROUP_FILES:
            groups.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        groups.append(cur)
    # big files first: the tail of the run is then made of short tasks
    groups.sort(key=lambda g: -sum(i.size for i in g))
    return groups


def ingest_path(
    store: Store,
    path: str | os.PathLike[str],
    *,
    wildcard: str | list[str] | None = None,
    recursive: bool = True,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[RelPath, Entry], IngestStats]:
    """Scan ``path`` and ingest what it holds (a convenience for tools and benchmarks)."""
    sr = scan(Path(path), wildcard=wildcard, recursive=recursive)
    entries, stats = Ingestor(store, max_workers=max_workers, progress=progress).ingest(sr.items)
    stats.skipped[:0] = sr.skipped
    return entries, stats
