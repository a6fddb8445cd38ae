"""The local store: one LMDB environment under ``DSVC_HOME/store.lmdb``.

Named databases (keys and values are documented in docs/format.md):

============  ==========================================================================
``chunkloc``  chunk id -> (pack, offset, length) of its frame in a pack file under
              ``store.lmdb/packs/`` (:mod:`dsvc.packfile`)
``chunknew``  the same, for the newest chunks: a small level merged into ``chunkloc``
              in key order (:meth:`Store.merge_chunk_levels`)
``chunks``    chunk id -> frame, chunks written before format 2 (read, never written)
``objects``   object id -> type tag + frame, for blobs, trees and commits
``records``   record key (utf-8) -> msgpack map (dataset records, drafts, remote state)
``statcache`` xxh3-64 of a file's folder + xxh3-64 of its name -> msgpack [size, mtime_ns, ino, kind, id, mode,
              ctime_ns, dev, path] (see :class:`StatEntry`)
``config``    key (utf-8) -> msgpack value (format version, chunker parameters...)
``remote``    per-remote caches (pack indexes) kept by the transport layer
``dirsum``    xxh3-128 of a folder's absolute path -> its summary from the last ingest
              (owned by the work layer: ``dsvc.ingest.DirSummary``)
============  ==========================================================================

Invariants (what crash safety rests on):

* Every write goes through an LMDB write transaction, so a process killed at any
  moment leaves the old or the new state, never a torn one.
* A write batch puts content before anything that refers to it: chunks, then blobs and
  trees, then commits, then records. Chunk bytes are appended to a pack file and made
  durable (``fdatasync``) before the transaction that indexes them commits (a batch's
  appends between two commits are synced once, before the second). A batch that
  commits early (size limit) therefore never publishes a reference to missing content.
* Objects are immutable and content-addressed; writing one twice is a no-op.
* One writer at a time (LMDB's lock, across processes); readers never block.
* A chunk id is in at most one of ``chunkloc`` and ``chunknew``: a location is put into
  ``chunknew`` only when ``chunkloc`` lacks the id, and a merge moves each entry (delete
  from one, put into the other) inside one transaction.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence, Set
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import lmdb
import msgpack
import xxhash

from dsvc import codec, faultpoints, libc, packfile, storecheck
from dsvc.chunker import DEFAULT_PARAMS, Chunker, ChunkerParams
from dsvc.errors import (
    ConfigError,
    ConflictError,
    DiskFullError,
    DsvcError,
    IntegrityError,
    ObjectNotFoundError,
    StateError,
    StorageError,
    StoreCorruptError,
)
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE, object_id, to_hex
from dsvc.objects import (
    CHUNK_REF_KINDS,
    KIND_CHUNKFILE,
    KIND_FILE,
    Blob,
    Commit,
    Entry,
    decode_tree,
    encode_tree,
)
from dsvc.retry import cas_retry

#: the newest store format this dsvc reads and writes (docs/format.md §6)
FORMAT_VERSION = 4
#: the format a new store starts at; its first external link raises it to 2
#: (:meth:`Store.require_format`), so stores without links stay readable by older dsvc
INITIAL_FORMAT_VERSION = 1
#: chunk bytes in pack files, located through ``chunkloc`` (issue 11): the transaction
#: that indexes a store's first packed chunk raises it to 3. Chunks an older format
#: wrote into ``chunks`` are read where they are, never rewritten.
PACK_FORMAT = 3
#: chunk locations in two levels (issue 11). Chunk ids are random keys: once one B-tree
#: of every location outgrew the ingest's commits, each commit rewrote thousands of its
#: leaf pages for a few inserts each (the first add of 3M tiny files wrote 27 GB for
#: 1.4 GB stored). New locations go to ``chunknew``, kept small, and move to
#: ``chunkloc`` in key order, which rewrites each of its leaf pages once per merge. The
#: transaction that first puts into ``chunknew`` raises the store to this format, so an
#: older dsvc refuses the store instead of missing the chunks there.
LEVEL_FORMAT = 4
#: ``chunknew`` is merged once it holds this many entries and at least 1/NEW_LEVEL_RATIO
#: as many as ``chunkloc``, or NEW_LEVEL_MAX. The ratio bounds the bytes merges write
#: (each rewrites ``chunkloc``, which grows by 1/ratio between merges: ~ratio + 1 times
#: its final size in all); the minimum spares a store of up to 2M chunks most of those
#: merges (the first add of 1M tiny files wrote 1.48 GB with a minimum of 65,536,
#: 1.0 GB with 262,144, whose ~3,300 leaf pages an ingest commit may dirty); the cap
#: bounds the pages an ingest commit dirties in ``chunknew`` (1M locations: ~12,500
#: leaf pages, under ingest.WRITE_DIRTY_PAGES)
NEW_LEVEL_MIN = 1 << 18
NEW_LEVEL_RATIO = 8
NEW_LEVEL_MAX = 1 << 20
#: locations one merge transaction moves at most: a run of ids in key order, so the
#: ``chunkloc`` pages it dirties are neighbours (~13 MiB of dirty pages per
#: transaction at 1M chunks, plus the run itself, ~2 MiB)
MERGE_STEP = 32768
#: ... and fewer once the run would span more than this many ``chunkloc`` leaf pages
#: (it spans the pages of its share of the key space: ``leaves * run / new ids``).
#: LMDB keeps the dirty pages of its largest transaction allocated (``me_dpages``)
#: for the life of the environment; at 3M chunks a run of 32,768 spanned ~3,500
#: pages, twice the 1M store's
MERGE_DIRTY_PAGES = 2048
#: ids a merge puts between two checks of the mapped store (see MAPPED_BUDGET): the
#: ``chunkloc`` pages a run walks to are neighbours in key order, not in the file, so
#: each maps the 64 KiB around it. Checked once per run, the first add of 3M tiny
#: files peaked at 425-474 MiB during merges (124 MiB of the store mapped), ~345
#: between them ...
MERGE_CHECK_EVERY = 4096
#: ... and fewer once those ids would span more than this many leaf pages (~4 MiB
#: mapped between two checks), against a budget of MERGE_MAPPED_BUDGET: the merge
#: walks every page of ``chunkloc``, which grows with the store (256 pages, ~16 MiB,
#: let the 3M first add map 130 MiB at its peak; see WRITE_CHECK_EVERY)
MERGE_CHECK_PAGES = 64
MERGE_MAPPED_BUDGET = 64 << 20
#: Virtual size reserved for the map. LMDB files are sparse: only written pages use disk.
DEFAULT_MAP_SIZE = 1 << 40
DB_NAMES = (
    "chunks",
    "chunkloc",
    "chunknew",
    "objects",
    "records",
    "statcache",
    "config",
    "remote",
    "dirsum",
)
#: a write batch commits once it holds this many bytes (bounded memory, bounded redo)
BATCH_BYTES = 64 << 20
#: key prefix of dataset records in the ``records`` database
RECORD_PREFIX = "ds/"
#: key prefix of the index of dataset records by project and name, in the ``records``
#: database: ``nx/<project>/<name>/<id>`` (project and name percent-encoded) -> a summary
#: of the record (:func:`record_summary`). Every record write updates it in the same
#: transaction, so a lookup by name reads the summaries of that name's versions, never
#: every record (issue 11).
NAME_INDEX_PREFIX = "nx/"
#: config key set once the index holds every record (a store made by an older dsvc gets
#: it built on first use, :meth:`Store.name_index`)
NAME_INDEX_READY = "name_index"
#: the record fields a summary keeps: what lookups filter and order versions by
SUMMARY_FIELDS = (
    "id",
    "project",
    "name",
    "version",
    "status",
    "tags",
    "archived",
    "created",
    "modified",
)
LEASE_PREFIX = "lease/"
#: config key naming the stat cache's key layout: absent, keyed by the path itself;
#: 2, by the xxh3-128 of the path (issue 9.18); 3, by folder hash + name hash (issue
#: 11, :func:`statcache_key`). A store of another layout has its stat cache dropped
#: once when opened (it is a cache: the next add refills it)
STATCACHE_FORMAT_KEY = b"statcache_format"
#: config key counting the write batches that deleted chunks or objects: content only
#: leaves the store through one, so a cache that recorded the count when it saw its
#: content present may trust it while the count is the same (docs/format.md section 6)
CONTENT_EPOCH_KEY = b"content_epoch"
STATCACHE_FORMAT = 3
#: file in ``store.lmdb/`` whose flock keeps local gc and content writers apart
GC_LOCK = "gc.lock"
#: pages of the store's map a process may keep mapped (RSS) before they are unmapped
#: (:class:`_MapBudget`). Every page a read or a write transaction touches stays
#: mapped otherwise: a read of every file's chunk location (a full ``get_local_copy``),
#: of every folder's tree (a diff that touches every folder), or the commits of the
#: first add (random keys: each commit walks to thousands of leaf pages, and the
#: kernel's fault-around maps the 64 KiB around each) leave resident a share of the
#: store that grows with it. Measured at 3M files, main e02b378: the first add's mapped
#: store pages peaked at ~300 MB (peak RSS 533 MB, 335 MB at 1M); issue 11 asks for
#: RSS flat from 1M to 3M files. The count (statm's shared pages) includes ~40 MB of
#: the interpreter's and libraries' own files. With 128 MiB the first add peaked at
#: 354-379 MiB at 1M and 407 MiB at 3M; with 96 MiB at 329-347 and 377 MiB, for ~0.5 s
#: more of re-mapping in a 1% sync at 1M (4.4-4.5 s, was 3.6-4.3; docs/performance.md)
MAPPED_BUDGET = 96 << 20
#: a reader's exit checks the budget once per this many readers (a check reads
#: /proc/self/statm: ~3 syscalls, too many for the per-file readers of some paths)
READ_CHECK_EVERY = 16
#: a write transaction checks the budget once per this many writes (a random-key write
#: may map 64 KiB: 128 of them at most 8 MiB between checks). A check costs ~23 us (it
#: reads /proc/self/statm), ~1 s of a 250 s first add of 3M files. With 512, the
#: mapped store overshot the budget in proportion to the index it walked: 92-97 MiB
#: at the peak of a 1M first add, 130 MiB at 3M (105 with 128 and MERGE_CHECK_PAGES
#: at 64; peak RSS 306 -> 292 MiB, docs/performance.md, session 11)
WRITE_CHECK_EVERY = 128

T = TypeVar("T")


def default_home() -> Path:
    """``$DSVC_HOME`` or ``~/.dsvc``."""
    return Path(os.environ.get("DSVC_HOME") or Path.home() / ".dsvc").expanduser().absolute()


def name_index_prefix(project: str, name: str) -> bytes:
    """The index keys of the versions of ``project``/``name`` start with this."""
    return f"{NAME_INDEX_PREFIX}{quote(project, safe='')}/{quote(name, safe='')}/".encode()


def record_summary(rec: Any) -> dict[str, Any] | None:
    """What the name index keeps of a dataset record (None: not indexable)."""
    if not isinstance(rec, dict) or not all(
        isinstance(rec.get(f), str) for f in ("id", "project", "name")
    ):
        return None
    return {f: rec.get(f) for f in SUMMARY_FIELDS}


def _index_key(rec: dict[str, Any]) -> bytes:
    return name_index_prefix(rec["project"], rec["name"]) + rec["id"].encode()


def _index_ops(
    key: bytes, old_raw: bytes | memoryview | None, new: Any
) -> list[tuple[bytes, bytes | None]]:
    """The name-index writes that go with replacing record ``key`` (``old_raw``, packed;
    None: absent) by ``new`` (None: deleted): the old entry out, the new one in."""
    if not key.startswith(RECORD_PREFIX.encode()):
        return []
    ops: list[tuple[bytes, bytes | None]] = []
    old = record_summary(_unpack(old_raw)) if old_raw is not None else None
    now = record_summary(new)
    if old is not None and (now is None or _index_key(old) != _index_key(now)):
        ops.append((_index_key(old), None))
    if now is not None:
        ops.append((_index_key(now), _pack(now)))
    return ops


def _pack(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def _unpack(b: bytes | memoryview) -> Any:
    return msgpack.unpackb(b, raw=False)


class StatEntry(NamedTuple):
    """A stat-cache value: the ``stat`` of a file when it was read, and its tree entry.

    Stored as a msgpack array in this field order (docs/format.md). ``path`` is the
    absolute path the key was hashed from, compared on lookup to rule out a collision.
    """

    size: int
    mtime_ns: int
    ino: int
    kind: int
    id: bytes
    mode: int
    ctime_ns: int
    dev: int
    path: bytes

    def encode(self) -> bytes:
        return _pack(list(self))

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> StatEntry | None:
        """The entry, or None for a value of another layout (an older format)."""
        try:
            v = _unpack(raw)
        except ValueError:
            return None
        if not isinstance(v, list) or len(v) != len(cls._fields):
            return None
        return cls(*v)


def statcache_key(path: bytes) -> bytes:
    """The stat-cache key of an absolute path (file-system bytes): the xxh3-64 of its
    folder followed by the xxh3-64 of its name (16 bytes, far below LMDB's 511-byte key
    limit whatever the path's length).

    The folder first (issue 11): a folder's entries are contiguous in the B-tree, so
    writing them dirties a few pages per folder instead of one page per file (a random
    key each made the first add of 1M tiny files rewrite ~70 MB per commit), and
    :func:`statcache_folder_prefix` finds them by one range scan."""
    folder, _, name = path.rpartition(b"/")
    return xxhash.xxh3_64_digest(folder or b"/") + xxhash.xxh3_64_digest(name)


def statcache_folder_prefix(folder: bytes) -> bytes:
    """The first 8 bytes of the stat-cache key of every file directly in ``folder``
    (an absolute path without a trailing slash, file-system bytes)."""
    return xxhash.xxh3_64_digest(folder.rstrip(b"/") or b"/")


#: LMDB errors that mean the file itself is damaged (not a bug, not a full disk)
_CORRUPT = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.PanicError,
    lmdb.VersionMismatchError,
    lmdb.IncompatibleError,
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: free bytes below which an I/O error on write is taken for a full disk: LMDB reports
#: a short write (the disk filled up during the write) as EIO, not ENOSPC
_NEARLY_FULL = 64 << 20


def corrupt_message(home: Path, detail: str) -> str:
    """The message of a damaged store: what is wrong, and the two ways out."""
    return (
        f"the store {home} is damaged: {detail}. dsvc cannot use it. If its versions are on "
        f"a remote: move {home} away, then `dsvc clone REMOTE_URL {home}` and `dsvc pull` "
        f"restore them; otherwise move {home} away (keep it for forensics) and add the "
        "data again into a new store"
    )


def disk_error(home: Path, where: str | os.PathLike[str] | None, err: BaseException) -> DsvcError:
    """A dsvc error for an OS or LMDB error met while writing under ``home``.

    ENOSPC, EDQUOT and EFBIG (a file size limit) are a full disk; EIO is one too when
    the filesystem is (nearly) full, since LMDB reports a short write as EIO."""
    place = Path(where) if where else home
    code = getattr(err, "errno", None)
    probe = place
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the file may not exist (yet): ask its filesystem
    text = str(err)
    if code is None:  # lmdb.Error carries only a message ("mdb_txn_commit: No space ...")
        for c in _FULL_ERRNOS | {errno.EIO}:
            if os.strerror(c) in text:
                code = c
                break
    free = None
    try:
        st = os.statvfs(probe)
        free = st.f_bavail * st.f_frsize
    except OSError:
        pass
    if code == errno.EIO and _over_file_size_limit(probe):
        code = errno.EFBIG  # a short write against `ulimit -f`, reported as EIO by LMDB
    if code in _FULL_ERRNOS or (code == errno.EIO and free is not None and free < _NEARLY_FULL):
        what = (
            "the file size limit (ulimit -f) was reached"
            if code == errno.EFBIG
            else ("no space left on the device")
        )
        in_store = place == home or home in place.parents
        room = (
            f"free space (`dsvc gc`, or move DSVC_HOME={home} to a bigger disk)"
            if in_store
            else f"free space on {probe}'s filesystem or choose another folder"
        )
        return DiskFullError(
            f"{what} while writing {place}. Nothing committed was lost: {room}, then run the "
            "command again"
        )
    return StorageError(
        f"the disk failed while writing {place}: {text}. Committed versions are intact; check "
        "the disk (dmesg, SMART) and run the command again"
    )


def _over_file_size_limit(path: Path) -> bool:
    """Whether ``path`` (a file) is within reach of this process's RLIMIT_FSIZE."""
    try:
        import resource  # ~0.6 ms, and this module loads at every CLI start

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft == resource.RLIM_INFINITY:
            return False
        return path.is_file() and path.stat().st_size + BATCH_BYTES * 2 > soft
    except (ImportError, OSError, ValueError):
        return False


def _fault_label(ops: list[tuple[str, bytes, bytes | None]]) -> str:
    """What a commit writes, for :mod:`dsvc.faultpoints`: its databases, and the kinds
    of record (key up to the first ``/``), e.g. ``chunks,records[ds]``."""
    dbs: dict[str, set[str]] = {}
    for db, key, _ in ops:
        kinds = dbs.setdefault(db, set())
        if db == "records":
            kinds.add(key.split(b"/", 1)[0].decode(errors="replace"))
    return ",".join(f"{db}[{','.join(sorted(k))}]" if k else db for db, k in sorted(dbs.items()))


#: the exception type of the store's database library, for callers that turn errors
#: raised outside the store's own guards into dsvc errors (:func:`lmdb_error`)
BackendError = lmdb.Error


def lmdb_error(home: Path, e: lmdb.Error) -> DsvcError:
    """The dsvc error for an LMDB error of the store at ``home``."""
    if isinstance(e, _CORRUPT):
        return StoreCorruptError(corrupt_message(home, f"LMDB: {e}"))
    if any(os.strerror(c) in str(e) for c in _FULL_ERRNOS | {errno.EIO}):
        return disk_error(home, home / "store.lmdb" / "data.mdb", e)
    if isinstance(e, lmdb.ReadonlyError) or "Permission denied" in str(e):
        return ConfigError(f"the store {home} is not writable: {e}; check its owner and mode")
    return StorageError(f"the store {home} failed: {e}; run `dsvc fsck`, then retry")


class WriteBatch:
    """Buffered writes that land in LMDB in one or more transactions.

    Not thread-safe: one batch belongs to one thread. ``flush`` commits; leaving the
    ``Store.batch()`` block flushes, and an exception discards what was not flushed.
    """

    def __init__(self, store: Store, limit: int = BATCH_BYTES) -> None:
        self.store = store
        self.limit = limit
        self._ops: list[tuple[str, bytes, bytes | None]] = []
        self._frames: list[tuple[bytes, bytes | memoryview]] = []  # for the pack file
        self._bytes = 0
        self._frame_bytes = 0  # of _frames
        self._pending: set[bytes] = set()  # ids queued but not yet committed
        self.new_chunk_bytes = 0  # stored (framed) bytes of chunks added by this batch
        self.new_chunks = 0

    def _add(self, db: str, key: bytes, value: bytes | None) -> None:
        self._ops.append((db, key, value))
        self._bytes += len(key) + (len(value) if value else 0)
        if self._bytes >= self.limit:
            self.flush()

    def has(self, oid: bytes) -> bool:
        return oid in self._pending

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet committed (drops when the batch flushes)."""
        return self._bytes

    def put_chunk_frame(self, cid: bytes, frame: bytes) -> None:
        """Queue a framed chunk (see :func:`dsvc.codec.encode_frame`)."""
        if cid in self._pending:
            return
        self._pending.add(cid)
        self.new_chunks += 1
        self.new_chunk_bytes += len(frame)
        self._frames.append((cid, frame))
        self._bytes += len(cid) + len(frame)
        self._frame_bytes += len(frame)
        if self._bytes >= self.limit:
            self.flush()

    def put_chunk(self, data: bytes | memoryview, level: int | None = None) -> bytes:
        cid = object_id(TAG_CHUNK, data)
        if cid not in self._pending and not self.store.has_chunk(cid):
            self.put_chunk_frame(
                cid, codec.encode_frame(data, self.store.level if level is None else level)
            )
        return cid

    def put_object(self, tag: bytes, data: bytes) -> bytes:
        oid = object_id(tag, data)
        if oid not in self._pending:
            self._pending.add(oid)
            self._add("objects", oid, tag + codec.encode_frame(data, self.store.level))
        return oid

    def put_tree(self, entries: dict[str, Entry]) -> bytes:
        return self.put_object(TAG_TREE, encode_tree(entries))

    def put_blob(self, blob: Blob) -> bytes:
        return self.put_object(TAG_BLOB, blob.encode())

    def put_commit(self, commit: Commit) -> bytes:
        return self.put_object(TAG_COMMIT, commit.encode())

    def put_object_frame(self, oid: bytes, raw: bytes) -> None:
        """Queue an object already framed (``tag + frame``, e.g. fetched from a remote);
        its readers verify it against ``oid``."""
        if oid not in self._pending:
            self._pending.add(oid)
            self._add("objects", oid, raw)

    def put_statcache(self, key: bytes, value: bytes) -> None:
        """Queue a stat-cache entry (``key``: :func:`statcache_key`; ``value``: an
        encoded :class:`StatEntry`)."""
        self._add("statcache", key, value)

    def delete_statcache(self, key: bytes) -> None:
        self._add("statcache", key, None)

    def put_dirsum(self, key: bytes, value: bytes) -> None:
        """Queue a folder summary (layout owned by ``dsvc.ingest.DirSummary``)."""
        self._add("dirsum", key, value)

    def delete_dirsum(self, key: bytes) -> None:
        self._add("dirsum", key, None)

    def put_remote(self, key: bytes, value: bytes) -> None:
        """Queue a value of the transport layer's cache (pack indexes, cached records)."""
        self._add("remote", key, value)

    def delete_remote(self, key: bytes) -> None:
        self._add("remote", key, None)

    def delete_chunk(self, cid: bytes) -> None:
        """Queue the removal of a chunk (gc, fsck --repair); its bytes stay in their
        pack file until gc compacts it."""
        self._add("chunkloc", cid, None)
        self._add("chunks", cid, None)

    def delete_object(self, oid: bytes) -> None:
        self._add("objects", oid, None)

    @property
    def frame_bytes(self) -> int:
        """Bytes of chunk frames queued and not yet appended to the pack file."""
        return self._frame_bytes

    @property
    def pending_ops(self) -> int:
        """Index writes queued and not yet committed (chunk locations included)."""
        return len(self._ops) + len(self._frames)

    def write_frames(self) -> None:
        """Append the queued chunk frames to the pack file now (durable, ``fdatasync``)
        and keep only their locations queued: the memory of a batch whose commit is
        deferred is then its index writes, not its chunk bytes. Crash-safe as a flush:
        until the commit indexes them, the appended bytes are unreferenced pack space
        (gc reclaims it)."""
        if self._frames:
            frames, self._frames, self._frame_bytes = self._frames, [], 0
            # not waited for: the commit that indexes them syncs them first (_apply)
            locs = self.store._append_frames(frames, defer_sync=True)
            self._bytes -= sum(len(cid) + len(f) for cid, f in frames)
            del frames
            self._ops += locs  # committed with the rest: one transaction, order moot
            self._bytes += sum(len(cid) + len(loc or b"") for _, cid, loc in locs)

    def flush(self) -> None:
        if not self._ops and not self._frames:
            return
        ops, frames = self._ops, self._frames
        self._ops, self._frames, self._bytes, self._frame_bytes = [], [], 0, 0
        due = self.store._apply(ops, frames)
        self._pending.clear()
        if due:
            del ops, frames  # a merge's pages need the memory more than these
            self.store.merge_chunk_levels()


class _MapBudget:
    """Keeps the pages of a store's LMDB map that this process has mapped (Linux) under
    a budget, by unmapping them all once they exceed it.

    LMDB reads through a shared, read-only file mapping: every page a lookup touches
    (and, through the kernel's fault-around, the 64 KiB around it) stays mapped in the
    process and counts as its RSS until the map is closed. ``MADV_DONTNEED`` on a shared
    file mapping only drops the page-table entries: the data stays in the page cache
    and the next access maps it again, with the same content, so it is safe while other
    threads read (zero-copy views included). Best effort: any failure disables it.

    The map's address is read from ``/proc/self/maps`` at each trim, never kept: a
    mapping of the file that another ``Store`` of this process opened is trimmed too
    (harmless, for the same reason), and an address the map has left (a resize, a
    closed store) is never advised, where it could hold other memory by then. Resizes
    of this store's map hold :attr:`lock`, as a trim does.
    """

    def __init__(self, data_file: Path, budget: int) -> None:
        self.target = os.path.realpath(data_file)
        self.budget = budget
        self.ok = sys.platform.startswith("linux")
        self.lock = threading.Lock()
        self.trims = 0  # times the map was unmapped (tests, diagnostics)
        self._count = 0

    def reader_done(self) -> None:
        """Count a finished reader; every :data:`READ_CHECK_EVERY` readers,
        :meth:`check`."""
        self._count += 1  # unlocked: a lost increment only delays a check
        if self._count >= READ_CHECK_EVERY:
            self._count = 0
            self.check()

    def check(self, budget: int | None = None) -> None:
        """:meth:`trim` when the process maps more than ``budget`` (default: the
        store's) bytes of files (``/proc/self/statm``'s shared pages: file-backed,
        mostly the store's map)."""
        if not self.ok:
            return
        try:
            with open("/proc/self/statm", "rb") as f:
                shared = int(f.read().split()[2]) * _PAGE
        except (OSError, ValueError, IndexError):
            self.ok = False
            return
        if shared > (self.budget if budget is None else budget):
            self.trim()

    def trim(self) -> None:
        """Unmap every page of the store's map from this process."""
        if not self.ok:
            return
        try:
            with self.lock:
                madvise = libc.function("madvise", "c_void_p", "c_size_t", "c_int")
                if madvise is None:
                    self.ok = False
                    return
                # only the part backed by the file holds pages, not the whole 1 TiB map
                size = (os.stat(self.target).st_size + _PAGE - 1) & ~(_PAGE - 1)
                for lo, hi in self._mappings():
                    if madvise(lo, min(hi - lo, size), 4) != 0:  # MADV_DONTNEED
                        self.ok = False
                self.trims += 1
        except Exception:
            self.ok = False

    def _mappings(self) -> list[tuple[int, int]]:
        """The address ranges at which this process maps the store's file now."""
        out = []
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip("\n").endswith(self.target):
                    lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                    out.append((lo, hi))
        return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _level_full(new: int, merged: int) -> bool:
    """Whether ``chunknew`` (``new`` entries) is due to be merged into ``chunkloc``."""
    return new >= NEW_LEVEL_MIN and (new * NEW_LEVEL_RATIO >= merged or new >= NEW_LEVEL_MAX)


class StoreReader:
    """A typed read view of one snapshot of the store (``with store.reader() as r``).

    Everything read through one reader is one consistent state. Keep a reader short:
    LMDB cannot reuse pages freed after the oldest open snapshot, so no network request
    or long computation belongs inside the block. Chunk and object payloads returned
    by :meth:`chunk` and :meth:`object` are verified against their ids; ``*_frame``
    methods return stored frames unverified (callers that forward them verify later).
    With ``buffers=True`` values are zero-copy views valid only inside the block.
    """

    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self.store = store
        self._txn = txn
        self._dbs = store._dbs
        self._curs: list[lmdb.Cursor] | None = None
        # bound once: :meth:`_location` runs per chunk of every read (a million per
        # full copy of 1M files)
        self._get = txn.get
        self._levels = (store._dbs["chunkloc"], store._dbs["chunknew"])

    # -- chunks ------------------------------------------------------------------
    # Chunks live in pack files, located through ``chunkloc`` or ``chunknew`` (one of
    # them: the module's invariants); a store of format 1 also has chunks in ``chunks``
    # (frames in LMDB), read as they are.

    def has_chunk(self, cid: bytes) -> bool:
        curs = self._curs
        if curs is None:
            # only the databases that hold ids: a miss (every new chunk of an ingest)
            # probes each, and most stores have no format-1 ``chunks``
            txn, dbs = self._txn, self._dbs
            curs = self._curs = [
                txn.cursor(db=dbs[n])
                for n in ("chunkloc", "chunknew", "chunks")
                if txn.stat(dbs[n])["entries"]
            ]
        return any(cur.set_key(cid) for cur in curs)

    def _location(self, cid: bytes) -> bytes | memoryview | None:
        """A packed chunk's raw index value, from whichever level holds it: the merged
        level first, which after the first add holds nearly every id."""
        merged, new = self._levels
        return self._get(cid, db=merged) or self._get(cid, db=new)

    def missing_chunks(self, ids: Iterable[bytes]) -> list[bytes]:
        """The ids of ``ids`` not stored, in order."""
        return [i for i in ids if not self.has_chunk(i)]

    def chunk_frame(self, cid: bytes) -> bytes | memoryview | None:
        """A chunk's stored frame (codec byte + payload), unverified, or None.
        IntegrityError when its pack file does not hold it where the index says."""
        loc = self._location(cid)
        if loc is not None:
            return self.store.packs.read(cid, loc)
        return self._txn.get(cid, db=self._dbs["chunks"])

    def chunk_size(self, cid: bytes) -> int | None:
        """Stored bytes of a chunk's frame, or None when absent (no pack read)."""
        loc = self._location(cid)
        if loc is not None:
            return packfile.decode_loc(loc)[2]
        frame = self._txn.get(cid, db=self._dbs["chunks"])
        return None if frame is None else len(frame)

    def chunk(self, cid: bytes) -> bytes | memoryview:
        """A chunk's bytes, verified against its id (ObjectNotFoundError if absent)."""
        frame = self.chunk_frame(cid)
        if frame is None:
            raise ObjectNotFoundError(
                f"chunk {to_hex(cid)} is not in the store {self.store.path}", cid
            )
        return codec.decode_frame_view(frame, TAG_CHUNK, cid)

    def read_chunks(self, cids: Sequence[bytes]) -> list[bytes | memoryview | None]:
        """:meth:`chunk` of many ids at once, None for those not stored: the packed
        ones are read in runs (:meth:`Packs.read_many`), each verified against its id."""
        get, olddb, location = self._get, self._dbs["chunks"], self._location
        locs = [location(cid) for cid in cids]
        at = [i for i, loc in enumerate(locs) if loc is not None]
        frames = [None if loc is not None else get(cid, db=olddb) for cid, loc in zip(cids, locs)]
        got = self.store.packs.read_many([(c, loc) for c, loc in zip(cids, locs) if loc is not None])
        for i, frame in zip(at, got):
            frames[i] = frame
        return codec.decode_frames_view(frames, TAG_CHUNK, cids)

    def chunks(self) -> Iterator[tuple[bytes, bytes | memoryview | None]]:
        """Every ``(chunk id, frame)`` (fsck): packed chunks in pack and offset order
        (sequential reads), then those of format 1. The frame is None when the pack
        does not hold it where the index says (a damaged chunk)."""
        for cid, _loc, loc in sorted(self.chunk_locations(), key=lambda t: (t[1][0], t[1][1])):
            try:
                yield cid, self.store.packs.read(cid, loc)
            except IntegrityError:
                yield cid, None
        for k, v in self._txn.cursor(db=self._dbs["chunks"]):
            yield bytes(k), v

    def chunk_locations(self) -> Iterator[tuple[bytes, tuple[int, int, int], bytes]]:
        """Every packed chunk: ``(id, (pack, offset, length), raw index value)``, in id
        order across both levels."""
        levels = [
            ((bytes(k), v) for k, v in self._txn.cursor(db=self._dbs[db]))
            for db in ("chunkloc", "chunknew")
        ]
        for k, v in heapq.merge(*levels, key=lambda kv: kv[0]):
            try:
                loc = packfile.decode_loc(v)
            except ValueError:
                loc = (-1, 0, 0)  # a malformed entry: reads of it raise IntegrityError
            yield k, loc, bytes(v)

    def chunk_sizes(self) -> Iterator[tuple[bytes, int]]:
        """Every ``(chunk id, stored bytes)``, without reading payloads."""
        for k, loc, _ in self.chunk_locations():
            yield k, loc[2]
        for ck, cv in self._txn.cursor(db=self._dbs["chunks"]):
            yield bytes(ck), len(cv)

    # -- objects -----------------------------------------------------------------

    def has_object(self, oid: bytes) -> bool:
        return self._txn.get(oid, db=self._dbs["objects"]) is not None

    def object_frame(self, oid: bytes) -> bytes | memoryview | None:
        """``tag + frame`` of an object, unverified, or None."""
        return self._txn.get(oid, db=self._dbs["objects"])

    def object(self, oid: bytes, tag: bytes) -> bytes:
        """An object's payload, verified against its id and type."""
        raw = self.object_frame(oid)
        if raw is None:
            kind = {TAG_TREE: "tree", TAG_BLOB: "blob", TAG_COMMIT: "commit"}.get(tag, "object")
            raise ObjectNotFoundError(
                f"{kind} {to_hex(oid)} is not in the store {self.store.path}", oid
            )
        if bytes(raw[:1]) != tag:
            raise IntegrityError(
                f"object {to_hex(oid)} has type {bytes(raw[:1])!r}, expected {tag!r}", oid
            )
        return codec.decode_frame(memoryview(raw)[1:], tag, oid)

    def objects(self) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """Every ``(object id, tag + frame)``, in id order."""
        for k, v in self._txn.cursor(db=self._dbs["objects"]):
            yield bytes(k), v

    def tree(self, oid: bytes) -> dict[str, Entry]:
        return decode_tree(self.object(oid, TAG_TREE), oid)

    def blob(self, oid: bytes) -> Blob:
        return Blob.decode(self.object(oid, TAG_BLOB), oid)

    def commit(self, oid: bytes) -> Commit:
        return Commit.decode(self.object(oid, TAG_COMMIT), oid)

    def file_chunks(self, entry: Entry) -> list[tuple[bytes, int]]:
        """The ``(chunk id, length)`` list of a file entry."""
        if entry.kind == KIND_CHUNKFILE:
            return [(entry.id, entry.size)]
        if entry.kind == KIND_FILE:
            return list(self.blob(entry.id).chunks)
        raise ValueError("not a file entry")

    # -- stat cache, transport cache, config -------------------------------------

    def statcache(self, path: bytes) -> StatEntry | None:
        """The stat-cache entry of an absolute path (None: absent, or another path's)."""
        raw = self._txn.get(statcache_key(path), db=self._dbs["statcache"])
        e = None if raw is None else StatEntry.decode(raw)
        return e if e is not None and e.path == path else None

    def statcache_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every raw ``(key, value)`` of the stat cache (gc, fsck --repair)."""
        for k, v in self._txn.cursor(db=self._dbs["statcache"]):
            yield bytes(k), bytes(v)

    def content_epoch(self) -> int:
        """How many write batches have deleted chunks or objects (``CONTENT_EPOCH_KEY``)."""
        v = self._txn.get(CONTENT_EPOCH_KEY, db=self._dbs["config"])
        return 0 if v is None else int(_unpack(v))

    def dirsum(self, key: bytes) -> bytes | None:
        """A folder summary, raw (``dsvc.ingest.DirSummary`` decodes it), or None."""
        v = self._txn.get(key, db=self._dbs["dirsum"])
        return None if v is None else bytes(v)

    def dirsum_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every raw ``(key, value)`` of the folder summaries (gc, fsck --repair)."""
        for k, v in self._txn.cursor(db=self._dbs["dirsum"]):
            yield bytes(k), bytes(v)

    def remote(self, key: bytes) -> bytes | None:
        """A value of the transport layer's cache, or None."""
        v = self._txn.get(key, db=self._dbs["remote"])
        return None if v is None else bytes(v)

    def remote_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The transport cache's ``(key, value)`` pairs under ``prefix``, in key order."""
        cur = self._txn.cursor(db=self._dbs["remote"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not bytes(k).startswith(prefix):
                    break
                yield bytes(k), bytes(v)

    def config_items(self) -> Iterator[tuple[str, Any]]:
        """Every store setting, decoded."""
        for k, v in self._txn.cursor(db=self._dbs["config"]):
            yield bytes(k).decode(), _unpack(v)


class Store:
    """A dsvc store rooted at ``home`` (the folder holding ``store.lmdb``, ``cache/``...)."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        chunker_params: ChunkerParams | None = None,
        level: int | None = None,
        map_size: int | None = None,
    ) -> None:
        self.home = Path(home).expanduser().absolute() if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "store.lmdb"
        self._map_budget = _MapBudget(self.path / "data.mdb", MAPPED_BUDGET)
        size = map_size or int(os.environ.get("DSVC_MAP_SIZE", DEFAULT_MAP_SIZE))
        # Durability (docs/architecture.md): by default every commit fsyncs its data pages
        # but not the meta page (MDB_NOMETASYNC): a system crash may undo the last commit
        # but never corrupts the store, and a killed process loses nothing. DSVC_FSYNC=0
        # skips fsync on commits (MDB_NOSYNC) and flushes only when a record or ref is
        # written: ~2x faster on disk-bound ingests, for stores that can be rebuilt
        # (scratch, CI caches), since a system crash between flushes may corrupt them.
        self.durable = os.environ.get("DSVC_FSYNC", "1") != "0"
        # LMDB trusts its file: a truncated one is a SIGBUS on the first read, which no
        # handler can turn into an error. Two small reads rule that out first.
        problem = storecheck.quick_check(self.path / "data.mdb")
        if problem:
            raise StoreCorruptError(corrupt_message(self.home, problem))
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=size,
                max_dbs=len(DB_NAMES) + 2,
                subdir=True,
                max_readers=1024,
                lock=True,
                sync=self.durable,
                metasync=False,
                readahead=False,
            )
        except lmdb.Error as e:
            err = lmdb_error(self.home, e)
            if isinstance(err, StoreCorruptError | DiskFullError):
                raise err from None
            raise ConfigError(f"cannot open the store at {self.path}: {e}") from e
        try:
            # the top of the B-trees (main database, each database's root page) decides
            # whether LMDB can even find its databases; damage there reads past the file
            # or trips an assert() in LMDB, so look first (a dozen page reads)
            problems = self.structure_problems(shallow=True)
            if problems:
                raise StoreCorruptError(corrupt_message(self.home, "; ".join(problems[:3])))
            with self.errors():
                self.env.reader_check()  # clear reader slots left by killed processes
                with self._begin(write=True) as txn:
                    self._dbs = {n: self.env.open_db(n.encode(), txn=txn) for n in DB_NAMES}
                    if faultpoints.ENABLED:
                        faultpoints.hit("lmdb.commit", "before", "open")
                if faultpoints.ENABLED:
                    faultpoints.hit("lmdb.commit", "after", "open")
        except DsvcError:
            self.env.close()
            raise
        self._write_lock = threading.Lock()
        self.packs = packfile.Packs(self.path / packfile.PACK_DIR, durable=self.durable)
        self._leveled = False  # format_version known to be >= LEVEL_FORMAT
        self._attached: dict[Hashable, Any] = {}
        self._attached_lock = threading.Lock()
        self.chunker_params = self._init_config(chunker_params)
        self.chunker = Chunker(self.chunker_params)
        stored_level = self.get_config("zstd_level")
        self.level = level if level is not None else int(stored_level)

    # -- configuration ---------------------------------------------------------

    def _init_config(self, params: ChunkerParams | None) -> ChunkerParams:
        with self.errors(), self._begin(write=True) as txn:
            cfg = self._dbs["config"]
            raw = txn.get(b"chunker", db=cfg)
            if raw is None:
                chosen = params or DEFAULT_PARAMS
                txn.put(b"format_version", _pack(INITIAL_FORMAT_VERSION), db=cfg)
                txn.put(b"chunker", _pack(chosen.to_config()), db=cfg)
                txn.put(b"zstd_level", _pack(codec.DEFAULT_LEVEL), db=cfg)
                txn.put(STATCACHE_FORMAT_KEY, _pack(STATCACHE_FORMAT), db=cfg)
                # a new store's name index is complete from its first record on
                txn.put(NAME_INDEX_READY.encode(), _pack(1), db=cfg)
                return chosen
            if txn.get(STATCACHE_FORMAT_KEY, db=cfg) != _pack(STATCACHE_FORMAT):
                # entries of another key layout would never be found (nor overwritten)
                txn.drop(self._dbs["statcache"], delete=False)
                txn.put(STATCACHE_FORMAT_KEY, _pack(STATCACHE_FORMAT), db=cfg)
            version = _unpack(txn.get(b"format_version", db=cfg) or _pack(FORMAT_VERSION))
            if version > FORMAT_VERSION:
                raise ConfigError(
                    f"store {self.path} has format {version}, this dsvc reads up to "
                    f"{FORMAT_VERSION}: upgrade dsvc"
                )
            stored = ChunkerParams.from_config(_unpack(raw))
            if params is not None and params != stored:
                raise ConfigError(
                    f"store {self.path} was created with chunker {stored.to_config()}; it cannot "
                    f"change to {params.to_config()} (dedup would break). Use a new DSVC_HOME."
                )
            return stored

    def get_config(self, key: str, default: Any = None) -> Any:
        with self.errors(), self._begin() as txn:
            raw = txn.get(key.encode(), db=self._dbs["config"])
        return default if raw is None else _unpack(raw)

    def set_config(self, key: str, value: Any) -> None:
        if key in ("chunker", "format_version"):
            raise ConfigError(f"config key {key!r} is fixed when the store is created")
        self._apply([("config", key.encode(), _pack(value))])

    def require_format(self, version: int) -> None:
        """Raise the store's ``format_version`` to ``version`` (never lowers it); called
        before the first data that needs it is written, so an older dsvc refuses the
        store instead of meeting data it cannot read."""
        if self.get_config("format_version", INITIAL_FORMAT_VERSION) < version:
            self._apply([("config", b"format_version", _pack(version))])

    def delete_config(self, key: str) -> None:
        """Remove a setting (``dsvc config unset``); the fixed ones cannot be."""
        if key in ("chunker", "format_version"):
            raise ConfigError(f"config key {key!r} is fixed when the store is created")
        self._apply([("config", key.encode(), None)])

    # -- transactions ----------------------------------------------------------

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn LMDB and disk errors met inside the block into dsvc errors that name
        this store and say what to do (damaged file, full disk, failing disk)."""
        try:
            yield
        except lmdb.MapFullError:
            raise
        except lmdb.Error as e:
            raise lmdb_error(self.home, e) from None

    def _begin(self, **kw: Any) -> lmdb.Transaction:
        """``env.begin``, adopting a map grown by another process (MDB_MAP_RESIZED)."""
        try:
            return self.env.begin(**kw)
        except lmdb.MapResizedError:
            with self._map_budget.lock:  # the map moves: not while a trim advises it
                self.env.set_mapsize(0)  # 0 = take the size recorded in the file
            return self.env.begin(**kw)

    @contextmanager
    def batch(self, limit: int = BATCH_BYTES) -> Iterator[WriteBatch]:
        """Buffered writes, committed on exit (and whenever ``limit`` bytes are queued)."""
        b = WriteBatch(self, limit)
        yield b
        b.flush()

    def _apply(
        self,
        ops: list[tuple[str, bytes, bytes | None]],
        frames: list[tuple[bytes, bytes | memoryview]] | None = None,
    ) -> bool:
        """Commit ``ops`` (after appending ``frames`` to a pack) in one transaction;
        True when it filled ``chunknew``: the caller then calls
        :meth:`merge_chunk_levels`, once it has dropped its own copy of the writes."""
        dbs = self._dbs
        if frames:
            ops = self._append_frames(frames) + ops
        # the bytes of deferred appends (WriteBatch.write_frames) are durable before any
        # transaction that may index them commits (invariant 25)
        self._sync_packs()
        # and none that points into bytes whose write or sync failed (Packs._lost)
        self.packs.check_written(v for db, _, v in ops if db == "chunkloc" and v is not None)
        merged, new = dbs["chunkloc"], dbs["chunknew"]
        while True:
            try:
                with self.errors(), self._write_lock, self._begin(write=True) as txn:
                    dropped = located = False
                    check = self._map_budget.check
                    for i, (db, key, value) in enumerate(ops):
                        if i % WRITE_CHECK_EVERY == WRITE_CHECK_EVERY - 1:
                            # the pages this transaction walked to are mapped, and it
                            # may walk to thousands (see MAPPED_BUDGET)
                            check()
                        if value is None:
                            txn.delete(key, db=dbs[db])
                            if db == "chunkloc":  # either level
                                txn.delete(key, db=new)
                            dropped = dropped or db in ("chunkloc", "chunks", "objects")
                        elif db == "chunkloc":
                            # one level per id (module invariants): a merged id keeps
                            # its location, as no-overwrite keeps the first one
                            if txn.get(key, db=merged) is None:
                                txn.put(key, value, db=new, overwrite=False)
                                located = True
                        elif db in ("chunks", "objects"):
                            txn.put(key, value, db=dbs[db], overwrite=False)
                        else:
                            txn.put(key, value, db=dbs[db])
                    if dropped:  # in the same transaction as the deletes
                        epoch = txn.get(CONTENT_EPOCH_KEY, db=dbs["config"])
                        n = _unpack(epoch) + 1 if epoch is not None else 1
                        txn.put(CONTENT_EPOCH_KEY, _pack(n), db=dbs["config"])
                    full = located and _level_full(
                        txn.stat(new)["entries"], txn.stat(merged)["entries"]
                    )
                    if faultpoints.ENABLED:
                        faultpoints.hit("lmdb.commit", "before", _fault_label(ops))
                if faultpoints.ENABLED:
                    faultpoints.hit("lmdb.commit", "after", _fault_label(ops))
                if located:
                    self._leveled = True
                return full
            except lmdb.MapFullError:
                self._grow_map()

    def _grow_map(self) -> None:
        """Double the map after MapFullError (only reachable with a small
        DSVC_MAP_SIZE); the caller redoes its transaction."""
        with self._map_budget.lock:  # the map moves: not while a trim advises it
            self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def merge_chunk_levels(self) -> int:
        """Move every location of ``chunknew`` into ``chunkloc`` (see LEVEL_FORMAT), in
        key order, MERGE_STEP per transaction at most; returns how many moved. Each transaction
        moves its run whole, so every snapshot finds each id in exactly one level, and
        a process killed between two transactions leaves a store as sound as before
        (the next merge goes on). Called by the write that fills ``chunknew``."""
        moved = 0
        dbs = self._dbs
        merged, new = dbs["chunkloc"], dbs["chunknew"]
        with self.errors(), self._begin() as txn:
            leaves = txn.stat(merged)["leaf_pages"]
            # ids of the run per leaf page of ``chunkloc`` it spans
            density = txn.stat(new)["entries"] / max(1, leaves)
        step = min(MERGE_STEP, max(1, int(MERGE_DIRTY_PAGES * density)))
        check_every = min(MERGE_CHECK_EVERY, max(1, int(MERGE_CHECK_PAGES * density)))
        while True:
            try:
                with self.errors(), self._write_lock, self._begin(write=True) as txn:
                    cur = txn.cursor(db=new)
                    cur.first()
                    run = list(itertools.islice(cur.iternext(), step))
                    n = len(run)
                    # in C: 1.7 s per million ids, against 2.8 s for a put per id
                    put = txn.cursor(db=merged).putmulti
                    for i in range(0, n, check_every):
                        put(run[i : i + check_every], overwrite=False)
                        # the pages it walked to are mapped
                        self._map_budget.check(MERGE_MAPPED_BUDGET)
                    del run
                    cur.first()
                    for _ in range(n):
                        cur.delete()  # and on to the next id
                    if faultpoints.ENABLED and n:
                        faultpoints.hit("lmdb.commit", "before", "chunkloc[merge]")
            except lmdb.MapFullError:
                self._grow_map()
                continue
            if n == 0:
                return moved
            if faultpoints.ENABLED:
                faultpoints.hit("lmdb.commit", "after", "chunkloc[merge]")
            moved += n

    def _append_frames(
        self, frames: list[tuple[bytes, bytes | memoryview]], *, defer_sync: bool = False
    ) -> list[tuple[str, bytes, bytes | None]]:
        """Append chunk frames to the pack file, durably (``defer_sync``: made durable by
        the next :meth:`_apply`, before its commit); returns the index writes that
        locate them (plus the format raise the first packed chunk needs), to be
        committed after the bytes are durable, before anything that refers to them."""
        with self._pack_errors():
            locs = self.packs.append(frames, defer_sync=defer_sync)
        if faultpoints.ENABLED:
            faultpoints.hit("pack.append", "after", "chunks")
        ops: list[tuple[str, bytes, bytes | None]] = [("chunkloc", cid, loc) for cid, loc in locs]
        # the first packed chunk raises the format, in the transaction that indexes it
        # (``_leveled`` is set once such a transaction has committed, by ``_apply``)
        if (
            not self._leveled
            and self.get_config("format_version", INITIAL_FORMAT_VERSION) < LEVEL_FORMAT
        ):
            ops.append(("config", b"format_version", _pack(LEVEL_FORMAT)))
        return ops

    @contextmanager
    def reader(self, *, buffers: bool = False) -> Iterator[StoreReader]:
        """A typed read view of one snapshot (:class:`StoreReader`). ``buffers=True``:
        values are zero-copy views into the map, valid only inside the block."""
        with self.errors(), self._begin(buffers=buffers) as txn:
            yield StoreReader(self, txn)
        # after the snapshot ends (no view of it is used any more): the pages it mapped
        # are unmapped once the process holds too many (see _MapBudget)
        self._map_budget.reader_done()

    def unmap(self, over: int | None = None) -> None:
        """Unmap this process's pages of the store's LMDB map (see :class:`_MapBudget`:
        they stay in the page cache): now, or with ``over`` only once the process maps
        more than ``over`` bytes of files. For writers that map many pages between the
        store's own checks (the ingest writer after each commit)."""
        if over is None:
            self._map_budget.trim()
        else:
            self._map_budget.check(over)

    # -- content ---------------------------------------------------------------

    def has_chunk(self, cid: bytes) -> bool:
        with self.reader() as r:
            return r.has_chunk(cid)

    def has_object(self, oid: bytes) -> bool:
        with self.reader() as r:
            return r.has_object(oid)

    def missing(self, db: str, ids: list[bytes]) -> list[bytes]:
        """The subset of ``ids`` absent from ``db`` (``"chunks"`` or ``"objects"``), in
        one snapshot."""
        with self.reader() as r:
            if db == "chunks":
                return r.missing_chunks(ids)
            if db == "objects":
                return [i for i in ids if not r.has_object(i)]
        raise ValueError(f"missing() looks up chunks or objects, not {db!r}")

    def get_chunk_frame(self, cid: bytes) -> bytes:
        with self.reader() as r:
            frame = r.chunk_frame(cid)
        if frame is None:
            raise ObjectNotFoundError(f"chunk {to_hex(cid)} is not in the store {self.path}", cid)
        return bytes(frame)  # a reader without buffers gives bytes: no copy

    def get_chunk(self, cid: bytes) -> bytes:
        """A chunk's bytes, verified against its id."""
        return codec.decode_frame(self.get_chunk_frame(cid), TAG_CHUNK, cid)

    def get_object_frame(self, oid: bytes) -> bytes | None:
        """``tag + frame`` of an object, or None."""
        with self.reader() as r:
            frame = r.object_frame(oid)
        return None if frame is None else bytes(frame)  # bytes already: no copy

    def get_object(self, oid: bytes, tag: bytes) -> bytes:
        with self.reader() as r:
            return r.object(oid, tag)

    def get_tree(self, oid: bytes) -> dict[str, Entry]:
        return decode_tree(self.get_object(oid, TAG_TREE), oid)

    def get_blob(self, oid: bytes) -> Blob:
        return Blob.decode(self.get_object(oid, TAG_BLOB), oid)

    def get_commit(self, oid: bytes) -> Commit:
        return Commit.decode(self.get_object(oid, TAG_COMMIT), oid)

    def put_tree(self, entries: dict[str, Entry]) -> bytes:
        with self.batch() as b:
            return b.put_tree(entries)

    def put_commit(self, commit: Commit) -> bytes:
        with self.batch() as b:
            return b.put_commit(commit)

    def file_chunks(self, entry: Entry) -> list[tuple[bytes, int]]:
        """The ``(chunk id, length)`` list of a file entry."""
        with self.reader() as r:
            return r.file_chunks(entry)

    def missing_content(self, entries: Iterable[Entry]) -> list[Entry]:
        """The file entries whose content is not complete in this store: a chunk entry's
        chunk is absent, or a file's blob, or one of the blob's chunks (the one missing-
        content check, issue 12; a few snapshots, not one per entry)."""
        entries = list(entries)
        unique = list({e.id: e for e in entries}.values())
        single = [e for e in unique if e.kind in CHUNK_REF_KINDS]  # a link: its chunk
        blobs = [e for e in unique if e.kind not in CHUNK_REF_KINDS]
        absent = set(self.missing("chunks", [e.id for e in single]))
        absent |= set(self.missing("objects", [e.id for e in blobs]))
        need: dict[bytes, list[bytes]] = {}
        with self.reader() as r:
            for e in blobs:
                if e.id not in absent:
                    need[e.id] = [c for c, _ in r.blob(e.id).chunks]
        if need:
            lacking = set(self.missing("chunks", list({c for cs in need.values() for c in cs})))
            if lacking:
                absent |= {b for b, cs in need.items() if lacking.intersection(cs)}
        return [e for e in entries if e.id in absent]

    def read_file(self, entry: Entry) -> Iterator[bytes]:
        """Yield a file's content chunk by chunk, each verified against its id."""
        for cid, _ in self.file_chunks(entry):
            yield self.get_chunk(cid)

    # -- refs and records ------------------------------------------------------

    @contextmanager
    def _pack_errors(self) -> Iterator[None]:
        """Turn an OS error of the pack files into the dsvc error that names the file and
        says what to do (full disk, failing disk)."""
        try:
            yield
        except OSError as e:
            raise disk_error(self.home, e.filename or self.packs.folder, e) from None

    def _sync_packs(self) -> None:
        """Make every pack append of this process durable (a no-op when none waits)."""
        if self.durable:
            with self._pack_errors():
                self.packs.sync()

    def _durable_point(self) -> None:
        """With DSVC_FSYNC=0, flush everything committed so far: a record or ref that
        is written is durable, with all the content it refers to."""
        if not self.durable:
            with self._pack_errors():
                self.packs.sync()
            with self.errors():
                self.env.sync(True)

    def scan_prefix(self, db: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of ``db`` whose key starts with ``prefix``, in key order,
        read in one snapshot."""
        out = []
        with self.errors(), self._begin(db=self._dbs[db]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    key, value = bytes(k), bytes(v)  # bytes already (no buffers): no copy
                    if not key.startswith(prefix):
                        break
                    out.append((key, value))
        return out

    def get_record(self, key: str) -> Any:
        with self.errors(), self._begin() as txn:
            raw = txn.get(key.encode(), db=self._dbs["records"])
        return None if raw is None else _unpack(raw)

    def put_record(self, key: str, value: Any) -> None:
        if key.startswith(RECORD_PREFIX):  # keeps the name index in step
            self._replace_record(key, value)
            return
        self._apply([("records", key.encode(), _pack(value))])
        self._durable_point()

    def _replace_record(self, key: str, new: Any) -> None:
        """Write (or, with None, delete) a record whatever it holds now, by CAS."""
        cas_retry(
            lambda: self.cas_record(key, self.get_record(key), new),
            f"record {key!r}: too many concurrent updates, try again",
        )

    def cas_record(self, key: str, old: Any, new: Any) -> None:
        """Replace record ``key`` by ``new`` only if it still equals ``old``.

        ``old=None`` means the record must not exist; ``new=None`` deletes it. Raises
        ConflictError when another writer got there first.
        """
        k = key.encode()
        old_raw = None if old is None else _pack(old)
        with (
            self.errors(),
            self._write_lock,
            self._begin(write=True, db=self._dbs["records"]) as txn,
        ):
            cur = txn.get(k)
            if cur != old_raw:
                raise ConflictError(f"record {key!r} was changed by another writer")
            if new is None:
                txn.delete(k)
            else:
                txn.put(k, _pack(new))
            for ik, iv in _index_ops(k, cur, new):  # the name index, in the same transaction
                if iv is None:
                    txn.delete(ik)
                else:
                    txn.put(ik, iv)
            if faultpoints.ENABLED:
                faultpoints.hit("lmdb.commit", "before", _fault_label([("records", k, None)]))
        if faultpoints.ENABLED:
            faultpoints.hit("lmdb.commit", "after", _fault_label([("records", k, None)]))
        self._durable_point()

    def delete_record(self, key: str) -> None:
        if key.startswith(RECORD_PREFIX):  # keeps the name index in step
            self._replace_record(key, None)
            return
        self._apply([("records", key.encode(), None)])
        self._durable_point()

    # -- the name index (NAME_INDEX_PREFIX) ------------------------------------

    def name_index(self, project: str, name: str) -> list[dict[str, Any]]:
        """Summaries (:func:`record_summary`) of the dataset records of ``project``/``name``,
        read from the name index; the index is built first if this store predates it."""
        if self.get_config(NAME_INDEX_READY) is None:
            try:
                self.rebuild_name_index()
            except DsvcError:  # cannot write (a read-only store): scan instead
                return [
                    s
                    for _, r in self.iter_records(RECORD_PREFIX)
                    if (s := record_summary(r)) is not None
                    and (s["project"], s["name"]) == (project, name)
                ]
        return [
            _unpack(v) for _, v in self.scan_prefix("records", name_index_prefix(project, name))
        ]

    def _expected_name_index(self, txn: Any) -> dict[bytes, bytes]:
        out = {}
        cur = txn.cursor(db=self._dbs["records"])
        if cur.set_range(RECORD_PREFIX.encode()):
            for k, v in cur:
                if not k.startswith(RECORD_PREFIX.encode()):
                    break
                for ik, iv in _index_ops(k, None, _unpack(v)):
                    if iv is not None:
                        out[ik] = iv
        return out

    def _name_index_now(self, txn: Any) -> dict[bytes, bytes]:
        out = {}
        cur = txn.cursor(db=self._dbs["records"])
        if cur.set_range(NAME_INDEX_PREFIX.encode()):
            for k, v in cur:
                if not k.startswith(NAME_INDEX_PREFIX.encode()):
                    break
                out[bytes(k)] = bytes(v)
        return out

    def rebuild_name_index(self) -> None:
        """Rewrite the name index from the records, in one transaction (a store made by
        an older dsvc, or one fsck found out of step)."""
        with (
            self.errors(),
            self._write_lock,
            self._begin(write=True, db=self._dbs["records"]) as txn,
        ):
            for k in self._name_index_now(txn):
                txn.delete(k)
            for k, v in self._expected_name_index(txn).items():
                txn.put(k, v)
            txn.put(NAME_INDEX_READY.encode(), _pack(1), db=self._dbs["config"])
        self._durable_point()

    def name_index_problems(self) -> list[str]:
        """How the name index differs from the records (fsck); empty when in step, or
        when the store has no index yet (it is built on first use)."""
        if self.get_config(NAME_INDEX_READY) is None:
            return []
        with self.errors(), self._begin(db=self._dbs["records"]) as txn:
            want, have = self._expected_name_index(txn), self._name_index_now(txn)
        out = []
        for k in sorted(want.keys() | have.keys()):
            what = k.decode(errors="replace")
            if k not in have:
                out.append(f"name index lacks {what}")
            elif k not in want:
                out.append(f"name index has {what}, which no record matches")
            elif want[k] != have[k]:
                out.append(f"name index entry {what} differs from its record")
        return out

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return iter(
            [(k.decode(), _unpack(v)) for k, v in self.scan_prefix("records", prefix.encode())]
        )

    # -- leases ----------------------------------------------------------------
    #
    # gc safety (docs/architecture.md, "gc and writers"): every operation that writes
    # content, or decides not to write it because it is already stored (dedup, a
    # stat-cache hit, reusing a subtree), and then makes a record or stat-cache entry
    # refer to it, runs inside ``lease``, which holds a *shared* flock on
    # ``store.lmdb/gc.lock`` from before its first such read to after its last record
    # write. Local gc holds the *exclusive* flock (``exclusive``) from before it marks
    # to after its last sweep commits. The kernel keeps the two intervals disjoint, and
    # releases the lock of a killed process, so no stale lock ever blocks gc.

    def _gc_lock(self, mode: int) -> int:
        fd = os.open(self.path / GC_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _gc_unlock(fd: int) -> None:
        # unlock explicitly: a forked child may hold a copy of the descriptor
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def lease(self, what: str, *, announce: bool = True) -> Iterator[None]:
        """Announce work that writes content not yet referenced by any record (an
        ingest, a commit before its record update...), so a concurrent ``gc`` does not
        sweep it: waits while a gc runs, then keeps gc out until the block ends.

        ``announce`` also writes a ``lease/`` record naming the work, which gc cites
        when it must wait (long operations); short ones skip the two extra commits. A
        killed process leaves its record behind; :meth:`live_leases` ignores leases of
        dead processes (the lock itself dies with the process)."""
        fd = self._gc_lock(fcntl.LOCK_SH)
        key = f"{LEASE_PREFIX}{uuid.uuid4().hex}" if announce else None
        try:
            if key is not None:
                self.put_record(
                    key,
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "what": what,
                        "started": time.time(),
                    },
                )
            yield
        finally:
            try:
                if key is not None:
                    self.delete_record(key)
            finally:
                self._gc_unlock(fd)

    @contextmanager
    def exclusive(self, what: str = "gc", wait: float = 0.0) -> Iterator[None]:
        """Keep every :meth:`lease` out while inside (local gc and repair, which delete
        content). Raises StateError, naming the announced leases, when the lock is not
        free within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = self._gc_lock(fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who = ", ".join(
                        f"{v.get('what')} (pid {v.get('pid')})" for v in self.live_leases()
                    )
                    raise StateError(
                        f"cannot run {what} on {self.home} while other work is writing to it"
                        f" ({who or 'another dsvc process'}); retry when it has finished"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            self._gc_unlock(fd)

    def live_leases(self, max_age: float = 86400.0) -> list[dict[str, Any]]:
        """Announced leases of processes still running (same host) or younger than
        ``max_age``: who holds the gc lock, for messages."""
        host = socket.gethostname()
        out = []
        for _, v in self.iter_records(LEASE_PREFIX):
            if v.get("host") == host:
                try:
                    os.kill(int(v["pid"]), 0)
                except ProcessLookupError:
                    continue
                except PermissionError:
                    pass
                out.append(v)
            elif time.time() - float(v.get("started", 0)) < max_age:
                out.append(v)
        return out

    # -- stat cache ------------------------------------------------------------

    def statcache_get_many(self, paths: list[bytes]) -> list[StatEntry | None]:
        """The stat-cache entries of absolute ``paths`` (None: absent, or another path's)."""
        with self.reader() as r:
            return [r.statcache(p) for p in paths]

    # -- maintenance -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Entry counts per database plus the size of the data file."""
        out: dict[str, int] = {}
        with self.errors(), self._begin() as txn:
            for n, h in self._dbs.items():
                out[n] = txn.stat(h)["entries"]
        # packed (either level) and format-1 chunks alike
        out["chunks"] += out.pop("chunkloc") + out.pop("chunknew")
        out["file_bytes"] = (self.path / "data.mdb").stat().st_size
        out["pack_bytes"] = sum(self.packs.packs().values())
        return out

    def leaf_pages(self, db: str) -> int:
        """The leaf pages of database ``db`` now (how many pages random writes into it
        can dirty: the ingest writer sizes its commits by it)."""
        with self.errors(), self._begin() as txn:
            return int(txn.stat(self._dbs[db])["leaf_pages"])

    def used_bytes(self) -> int:
        """Bytes the store's content occupies: LMDB pages in use (all databases, free
        pages excluded), plus pack files. What a size comparison with another tool
        should count (the LMDB file itself is sparse and grows in steps)."""
        with self.errors(), self._begin() as txn:
            psize = txn.stat()["psize"]
            pages = 0
            for h in [*self._dbs.values(), None]:
                st = txn.stat(h) if h is not None else txn.stat()
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * psize + sum(self.packs.packs().values())

    def _readers_active(self) -> bool:
        """Whether any process (this one included) has a read snapshot open now: one
        taken before a compaction committed may still read the pack it emptied."""
        rows = self.env.readers().splitlines()[1:]
        return any(r.split()[-1] != "-" for r in rows if r.split())

    def compact_packs(
        self,
        live_fraction: float = packfile.REPACK_LIVE,
        *,
        dry_run: bool = False,
        dropping: Set[bytes] = frozenset(),
    ) -> dict[str, int]:
        """Reclaim pack-file space after a sweep (call under :meth:`exclusive`).

        A pack no index entry points into is deleted; one whose live entries fill less
        than ``live_fraction`` of it has them copied to a new pack (verified first,
        made durable, then re-pointed in one transaction per batch), and is deleted
        once empty. Crash-safe at every step: until the transaction commits, the old
        locations stand; after it, the old pack is garbage a later gc deletes. A pack
        another process appends to is left alone, and so is an emptied pack while some
        read snapshot that predates the move is still open (the next gc deletes it).
        ``dry_run`` only estimates, counting the chunks in ``dropping`` as swept.
        """
        out = {"packs_deleted": 0, "packs_rewritten": 0, "pack_bytes_freed": 0}
        self.packs.close_writer()  # our own pack may be compacted too
        sizes = self.packs.packs()
        live = dict.fromkeys(sizes, 0)
        with self.reader() as r:
            for cid, (pack, _off, length), _ in r.chunk_locations():
                if pack in live and cid not in dropping:
                    live[pack] += packfile.entry_bytes(length)
        hdr = len(packfile.MAGIC)
        doomed = [
            p for p, size in sizes.items() if live[p] == 0 or live[p] + hdr < size * live_fraction
        ]
        doomed = [p for p in doomed if not self.packs.locked_by_other(p)]
        if dry_run:
            out["pack_bytes_freed"] = sum(sizes[p] - live[p] for p in doomed)
            return out
        moving = set(p for p in doomed if live[p])
        # empty packs first: deleting them needs no room, copying live chunks does
        for p in doomed:
            if p not in moving and self.packs.delete(p):
                out["packs_deleted"] += 1
                out["pack_bytes_freed"] += sizes[p]
        if moving:
            self.packs.avoid = set(doomed)
            try:
                self.packs.start_new_pack()
                self._move_live(moving)
                self.packs.close_writer()
                out["packs_rewritten"] = len(moving)
            except (DiskFullError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in _FULL_ERRNOS:
                    raise
                # no room to copy: free the dead blocks in place instead (holes)
                self.packs.close_writer()
                out["pack_bytes_freed"] += self._punch_dead(moving)
                return out
            finally:
                self.packs.avoid = set()
        busy = self._readers_active()
        for p in moving:
            if busy:
                continue  # an older snapshot may still read it: the next gc deletes it
            if self.packs.delete(p):
                out["packs_deleted"] += 1
                out["pack_bytes_freed"] += sizes[p] - live[p]  # net: live bytes were copied
        return out

    def _punch_dead(self, packs: set[int]) -> int:
        """Punch holes over every byte range of ``packs`` no index entry covers."""
        live: dict[int, list[tuple[int, int]]] = {p: [] for p in packs}
        with self.reader() as r:
            for _cid, (p, off, length), _ in r.chunk_locations():
                if p in live:
                    live[p].append((off - packfile.HEADER.size, off + length))
        return sum(self.packs.punch_dead(p, ranges) for p, ranges in live.items())

    def _move_live(self, packs: set[int]) -> None:
        """Copy every chunk located in ``packs`` to the current pack, batch by batch."""
        with self.reader() as r:
            todo = [(cid, loc) for cid, (p, _o, _l), loc in r.chunk_locations() if p in packs]
        todo.sort(key=lambda t: packfile.decode_loc(t[1])[:2])  # sequential reads
        i = 0
        while i < len(todo):
            frames: list[tuple[bytes, bytes | memoryview]] = []
            old: dict[bytes, bytes] = {}
            size = 0
            while i < len(todo) and size < BATCH_BYTES:
                cid, loc = todo[i]
                i += 1
                frame = self.packs.read(cid, loc)
                codec.decode_frame(frame, TAG_CHUNK, cid)  # never copy a damaged chunk
                frames.append((cid, frame))
                old[cid] = loc
                size += len(frame)
            with self._pack_errors():
                locs = self.packs.append(frames)
            if faultpoints.ENABLED:
                faultpoints.hit("pack.append", "after", "compact")
            with self.errors(), self._write_lock, self._begin(write=True) as txn:
                levels = (self._dbs["chunkloc"], self._dbs["chunknew"])
                for cid, loc in locs:
                    for h in levels:  # the level that holds it now
                        if txn.get(cid, db=h) == old[cid]:  # not dropped meanwhile
                            txn.put(cid, loc, db=h)
                            break
                if faultpoints.ENABLED:
                    faultpoints.hit("lmdb.commit", "before", "chunkloc[compact]")
            if faultpoints.ENABLED:
                faultpoints.hit("lmdb.commit", "after", "chunkloc[compact]")

    def structure_problems(self, shallow: bool = False) -> list[str]:
        """Damage to the LMDB file's page structure (see :mod:`dsvc.storecheck`); empty
        when every reachable page is sound. Walks a snapshot held open meanwhile, so
        concurrent writers neither disturb the walk nor get reported as damage."""
        data = self.path / "data.mdb"
        for _ in range(20):
            with self.errors(), self.env.begin() as txn:
                try:
                    return storecheck.walk(data, txn.id(), shallow=shallow).problems
                except storecheck.Moved:
                    continue  # a writer committed twice between begin and the meta read
                except (OSError, ValueError) as e:
                    return [f"{data}: {e}"]
        return []  # pragma: no cover - twenty commits raced twenty meta reads

    # -- objects attached to this store ------------------------------------------

    def attached(self, key: Hashable, make: Callable[[], T]) -> T:
        """The object attached to this store under ``key``, made by ``make`` the first
        time: the one process-wide cache of things bound to a store (the open remotes of
        ``dsvc.remote.client.resolve``), so closing or forgetting the store drops them
        with it and no second cache has to be kept in step (issue 12)."""
        with self._attached_lock:
            if key not in self._attached:
                self._attached[key] = make()
            return self._attached[key]

    def detach_all(self, *, after_fork: bool = False) -> list[Any]:
        """Forget (and return) every attached object. ``after_fork``: in a forked child,
        where a parent's thread may have held the lock at the fork."""
        if after_fork:
            self._attached_lock = threading.Lock()
        with self._attached_lock:
            out = list(self._attached.values())
            self._attached.clear()
        return out

    def close(self) -> None:
        self.detach_all()
        self.packs.close()
        with self._map_budget.lock:  # the map goes: not while a trim advises it
            self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.home)!r})"
