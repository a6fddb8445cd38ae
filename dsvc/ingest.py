"""Scanning folders and turning files into stored content.

Pipeline: ``scan`` lists files (with their ``stat``); the stat cache answers for every
file whose (path, size, mtime_ns, ctime_ns, inode, device) is unchanged and whose content
is still in the store (:func:`stat_cache_entries`), so those are never read; the
others go to a thread pool where each file is read through a window, cut by FastCDC,
hashed (xxh3-128) and compressed (zstd) -- all three release the GIL for the bulk of
the work. Large files fan their chunks out to a second pool so one big file uses every
core. A single writer thread owns the LMDB write batch.

Ordering invariant (crash safety): a file's chunks are queued to the writer before its
blob object and its stat-cache entry, and the writer commits in queue order, so a
committed stat-cache entry or blob never points at a missing chunk.

Symlinks (documented in docs/guide.md): a link to a file is followed wherever it points
and the target's content is stored as a regular file, as ClearML does; a dangling link or
a loop is skipped and reported. Folders reached through links are not entered (no
cycles).

Left out by ``scan`` (docs/matching.md): the store's own folder (``DSVC_HOME``: the LMDB
files and the cache) wherever it lies below the added folder, and whatever the
``.dsvcignore`` files found in the added folder exclude (gitignore syntax, via
``pathspec``).
"""

from __future__ import annotations

import collections
import fnmatch
import gc
import itertools
import math
import operator
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import msgpack
import pathspec
import xxhash
import zstandard

from dsvc import codec, fsbatch, libc, objects
from dsvc.chunker import Chunker, ReadInto
from dsvc.errors import DsvcError, InvalidPathError, NotFoundError, WildcardError
from dsvc.ids import TAG_BLOB, TAG_TREE, chunk_id, object_id
from dsvc.objects import (
    KIND_CHUNKFILE,
    KIND_FILE,
    KIND_TREE,
    MODE_DIR,
    MODE_EXEC,
    MODE_FILE,
    Blob,
    Entry,
    encode_tree_rows,
    validate_name,
)
from dsvc.parallel import default_workers, group_by_bytes
from dsvc.store import Store, StoreReader, statcache_key

RelPath = tuple[str, ...]
ProgressFn = Callable[[int], None]

#: files up to this size are grouped several per task (per-task overhead dominates)
SMALL_FILE = 256 * 1024
#: chunks up to this size are framed without a lookup and queued as unchecked: the
#: writer thread looks them up before writing them. Framing a small chunk costs less
#: than a lookup that waits on pages the writer is flushing: in a sync of 1% of 1M
#: tiny files rewritten, the reading thread's 10,000 lookups took 1.4 s, stalled by
#: 2,300 page faults on index pages under writeback (docs/performance.md)
LOOKUP_ABOVE = 16 * 1024
SMALL_GROUP_BYTES = 4 << 20
SMALL_GROUP_FILES = 256
#: files above this size spread their chunks over the chunk pool
LARGE_FILE = 32 << 20
#: bytes of chunk data in flight per large file (bounds memory)
INFLIGHT_BYTES = 64 << 20


def file_id(chunks: Sequence[tuple[bytes, int]]) -> tuple[int, bytes, bytes | None]:
    """``(kind, id, blob bytes or None)`` of a file made of ``chunks`` ((id, length) in
    order): the one rule (docs/format.md section 4.2) by which a file's tree entry is
    derived from its chunks. One chunk: the chunk itself (kind 3, no blob); more: a blob
    listing them (kind 2), whose bytes the caller stores."""
    if len(chunks) == 1:
        return KIND_CHUNKFILE, chunks[0][0], None
    data = Blob(tuple(chunks)).encode()
    return KIND_FILE, object_id(TAG_BLOB, data), data


def content_id(
    chunker: Chunker, f: ReadInto, progress: Callable[[int], None] | None = None
) -> bytes:
    """The id the content of ``f`` gets when added (cut and hashed as ingest does;
    nothing is stored). ``progress`` is called with each chunk's length."""
    chunks = []
    for c in chunker.cut_stream(f):
        chunks.append((chunk_id(c), len(c)))
        if progress is not None:
            progress(len(c))
    return file_id(chunks)[1]


class ScanItem(NamedTuple):
    """A file found by ``scan``: where it is on disk and where it goes in the dataset.

    A NamedTuple, not a dataclass: scans create one per file, and a frozen dataclass
    costs several times more to build (9% of re-adding 100k unchanged files).
    """

    abs_path: str
    rel: RelPath
    size: int
    mtime_ns: int
    ino: int
    mode: int
    ctime_ns: int
    dev: int


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
    # fast path: names from the OS never hold "/" or NUL and are never "." or ".."
    if name.isascii() and "\\" not in name:
        return name
    try:
        return validate_name(name)
    except InvalidPathError as e:
        raise InvalidPathError(f"{os.path.join(parent, name)!r}: {e}") from e


def _validated(rel: RelPath, root: str) -> RelPath:
    """Check every component of a kept path; the error names the file on disk."""
    for i, n in enumerate(rel):
        _decode_name(n, os.path.join(root, *rel[:i]))
    return rel


def check_wildcards(patterns: Iterable[str]) -> None:
    """Refuse what pathlib refuses: an absolute pattern such as ``/*.jpg`` (ClearML's
    ``add_files`` passes the wildcard to ``Path.rglob``, which raises
    ``NotImplementedError("Non-relative patterns are unsupported")``)."""
    for pat in patterns:
        if pat.startswith(("/", "\\")):
            raise WildcardError(
                f"wildcard {pat!r} is absolute; wildcards match paths relative to the added "
                f"folder (write {pat.lstrip('/')!r})"
            )


def _match_parts(rel: RelPath, parts: list[str]) -> bool:
    """pathlib's glob: ``**`` stands for zero or more folders, any other part matches one
    name with fnmatch (``*`` never crosses ``/``, and matches names starting with a dot)."""
    if not parts:
        return not rel
    head, rest = parts[0], parts[1:]
    if head == "**":
        if not rest:  # a trailing ``**`` selects folders only, never a file
            return False
        return any(_match_parts(rel[i:], rest) for i in range(len(rel)))
    return bool(rel) and fnmatch.fnmatchcase(rel[0], head) and _match_parts(rel[1:], rest)


def matches_wildcard(rel: RelPath, patterns: list[str], recursive: bool) -> bool:
    """ClearML's ``add_files`` wildcard rule: ``Path.rglob(w)`` when recursive, else
    ``Path.glob(w)``, over the added folder.

    ``rglob(w)`` is ``glob("**/" + w)``: ``*.jpg`` and ``**/*.jpg`` match JPEGs at every
    depth, the top level included, and ``a/*.jpg`` matches ``x/a/1.jpg``. ``glob`` matches
    from the top (``*.jpg``: top-level files only), but its ``**`` still crosses folders.
    """
    for pat in patterns:
        parts = [p for p in pat.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            continue
        if recursive:
            parts = ["**", *parts]
        # consecutive ``**`` match what one does; folding them keeps matching linear
        parts = [p for i, p in enumerate(parts) if not (p == "**" and i and parts[i - 1] == "**")]
        if _match_parts(rel, parts):
            return True
    return False


#: name of the ignore files ``scan`` honours (gitignore syntax)
IGNORE_FILE = ".dsvcignore"
_STORE_SKIPPED = "the dsvc store (DSVC_HOME) is never added"
_Ignores = tuple[tuple[int, pathspec.PathSpec], ...]  # (depth of its folder, spec)


def _load_ignore(path: str) -> pathspec.PathSpec:
    try:
        with open(path, encoding="utf-8") as f:
            return pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidPathError(f"cannot read the ignore file {path!r}: {e}") from e


def _ignored(ignores: _Ignores, rel: RelPath, is_dir: bool) -> bool:
    """gitignore precedence: the deepest ignore file with a matching pattern decides (its
    last matching pattern wins, ``!`` re-includes); paths are relative to its folder."""
    for depth, spec in reversed(ignores):
        sub = "/".join(rel[depth:]) + ("/" if is_dir else "")
        include = spec.check_file(sub).include
        if include is not None:
            return include
    return False


def _store_dirs(store: Store | None) -> frozenset[str]:
    """Real paths of the store's folders that ``scan`` never enters."""
    if store is None:
        return frozenset()
    home = os.path.realpath(store.home)
    return frozenset({home, os.path.realpath(store.path), os.path.join(home, "cache")})


def _refuse_store_db(root: str, store: Store | None) -> None:
    if store is not None:
        db = os.path.realpath(store.path)
        real = os.path.realpath(root)
        if real == db or real.startswith(db + os.sep):
            raise InvalidPathError(f"cannot add {root!r}: it is the dsvc store's database")


def scan(
    path: str | os.PathLike[str],
    *,
    wildcard: str | list[str] | None = None,
    recursive: bool = True,
    store: Store | None = None,
) -> ScanResult:
    """List the files under ``path`` (a folder, or a single file).

    ``store``: its folder (``DSVC_HOME``) is never listed, wherever it lies below
    ``path``. ``.dsvcignore`` files in the folder leave out what they match
    (gitignore syntax; see docs/matching.md). Raises NotFoundError when ``path`` does
    not exist and InvalidPathError for names that cannot be stored (not UTF-8), for an
    unreadable ignore file, and for a path inside the store's database.
    """
    root = os.path.abspath(os.fspath(path))
    out = ScanResult()
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise NotFoundError(f"cannot add {root!r}: no such file or folder") from None
    store_dirs = _store_dirs(store)
    _refuse_store_db(root, store)
    patterns = [wildcard] if isinstance(wildcard, str) else list(wildcard or [])
    check_wildcards(patterns)
    if statmod.S_ISREG(st.st_mode):
        # a single file is added whatever the wildcard says, as ClearML does
        name = _decode_name(os.path.basename(root), os.path.dirname(root))
        out.items.append(_item(root, (name,), st))
        return out
    if not statmod.S_ISDIR(st.st_mode):
        raise InvalidPathError(f"cannot add {root!r}: not a regular file or folder")
    ctx = _ScanCtx(root, os.path.realpath(root), store_dirs, patterns, recursive)
    stack: list[tuple[str, RelPath, _Ignores]] = [(root, (), ())]
    while stack:
        ls = _list_folder(ctx, *stack.pop())
        out.items += ls.items()
        out.skipped += ls.skipped
        stack += ls.subdirs
    if not recursive and not patterns:
        out.items = [i for i in out.items if len(i.rel) == 1]
    out.items.sort(key=_rel_key)
    return out


@dataclass
class _ScanCtx:
    """What every folder of one scan is listed with."""

    root: str
    real_root: str
    store_dirs: frozenset[str]
    patterns: list[str]
    recursive: bool


#: what a scan keeps of a file's ``lstat`` (of its target's, for a link): size,
#: mtime_ns, ctime_ns, ino, dev -- the order :func:`same_stat` compares -- and st_mode.
#: Kept as the plain tuple ``attrgetter`` builds in C: a folder of unchanged files is
#: answered by its summary without one Python object made per file.
Sig = tuple[int, int, int, int, int, int]
_SIG = operator.attrgetter("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev", "st_mode")
_NAME = operator.attrgetter("name")
_IS_FILE = operator.methodcaller("is_file", follow_symlinks=False)
_LSTAT = operator.methodcaller("stat", follow_symlinks=False)
_SIG_SIZE = operator.itemgetter(0)
_SIG_MTIME = operator.itemgetter(1)
_SIG_MODE = operator.itemgetter(5)


class _Listing:
    """One folder as a scan lists it: its selected files as two parallel lists,
    ``names`` and ``sigs`` (in the order the file system lists them) and their number,
    ``count``; ``subdirs``, the subfolders to enter as ``(path, relative path, ignore
    rules)``; ``skipped``, what was left out with a reason; ``nbytes``, the files' total
    size. A listing made by :func:`dsvc.fsbatch.list_regular` holds the names and stats
    as msgpack bytes only (:meth:`packed`), decoded into the lists on first use: a
    folder that matches its summary never makes a Python object per file."""

    __slots__ = (
        "_names",
        "_packed",
        "_sigs",
        "count",
        "nbytes",
        "path",
        "rel",
        "skipped",
        "subdirs",
        "summary",
    )

    def __init__(self, path: str, rel: RelPath) -> None:
        self.path = path
        self.rel = rel
        #: the folder's summary as read by the scan thread (see _Scanner), or UNREAD
        self.summary: DirSummary | None | object = UNREAD
        self._names: list[str] | None = []
        self._sigs: list[Sig] | None = []
        self.count = 0
        self.subdirs: list[tuple[str, RelPath, _Ignores]] = []
        self.skipped: list[tuple[str, str]] = []
        self.nbytes = 0
        self._packed: tuple[bytes, bytes] | None = None

    @classmethod
    def from_packed(
        cls, path: str, rel: RelPath, names: bytes, sigs: bytes, count: int, nbytes: int
    ) -> _Listing:
        ls = cls(path, rel)
        ls._names = ls._sigs = None
        ls._packed = (names, sigs)
        ls.count = count
        ls.nbytes = nbytes
        return ls

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._unpack()
        return self._names  # type: ignore[return-value]

    @property
    def sigs(self) -> list[Sig]:
        if self._sigs is None:
            self._unpack()
        return self._sigs  # type: ignore[return-value]

    def _unpack(self) -> None:
        assert self._packed is not None
        packed_names, packed_sigs = self._packed
        self._names = msgpack.unpackb(packed_names, raw=False)
        # tuples, as attrgetter makes them: a Sig compares equal to a summary's stat
        self._sigs = list(msgpack.unpackb(packed_sigs, use_list=False))

    def item(self, name: str, sig: Sig) -> ScanItem:
        """The :class:`ScanItem` of the file ``name`` of this folder."""
        size, mtime_ns, ctime_ns, ino, dev, mode = sig
        return ScanItem(
            os.path.join(self.path, name),
            (*self.rel, name),
            size,
            mtime_ns,
            ino,
            _mode(mode),
            ctime_ns,
            dev,
        )

    def items(self) -> list[ScanItem]:
        return list(map(self.item, self.names, self.sigs))

    def packed(self) -> tuple[bytes, bytes]:
        """``names`` and ``sigs`` packed (msgpack), made once (the scan thread makes
        them for the walk: see :class:`_Scanner`)."""
        if self._packed is None:
            self._packed = (_packb(self.names), _packb(self.sigs))
        return self._packed


_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def _plain(names: Iterable[str]) -> bool:
    """Whether every name is ASCII without a backslash (taken without validation)."""
    joined = "".join(names)
    return joined.isascii() and "\\" not in joined


def _list_folder(ctx: _ScanCtx, d: str, rel: RelPath, ignores: _Ignores) -> _Listing:
    """One folder of a scan (its files with their ``lstat``, see :class:`_Listing`).

    Safe to run on another thread than the walk's: it only reads ``ctx``."""
    if not ignores and not ctx.patterns and fsbatch.native is not None and _plain(rel):
        native = _list_native(ctx, d, rel)
        if native is not None:
            return native
    out = _Listing(d, rel)
    try:
        # listed through a descriptor: each entry's lstat is then an ``fstatat`` of
        # its name, not a walk of its whole path (~15% of a scan's system time)
        fd = os.open(d, _O_DIR)
    except PermissionError as e:
        raise InvalidPathError(f"cannot read folder {d!r}: {e.strerror}") from e
    except FileNotFoundError:
        out.skipped.append((d, "folder vanished during the scan"))
        return out
    try:
        try:
            with os.scandir(fd) as it:
                listing = list(it)
        except PermissionError as e:
            raise InvalidPathError(f"cannot read folder {d!r}: {e.strerror}") from e
        _list_entries(ctx, out, listing, ignores)
    finally:
        os.close(fd)
    out.nbytes = sum(map(_SIG_SIZE, out.sigs))
    out.count = len(out.names)
    return out


def _list_native(ctx: _ScanCtx, d: str, rel: RelPath) -> _Listing | None:
    """:func:`_list_folder` of a folder with no ignore rules or wildcards, its regular
    files listed and lstat'ed in one C call with the GIL released (so the scan threads
    run side by side); None when the folder needs the Python rules throughout."""
    try:
        got = fsbatch.list_regular(d, IGNORE_FILE)
    except PermissionError as e:
        raise InvalidPathError(f"cannot read folder {d!r}: {e.strerror}") from e
    except FileNotFoundError:
        out = _Listing(d, rel)
        out.skipped.append((d, "folder vanished during the scan"))
        return out
    except OSError:
        return None  # the Python listing raises what it raises
    if got is None:
        return None
    packed_names, packed_sigs, count, nbytes, others = got
    if IGNORE_FILE in others:  # a link or folder by that name: the Python rules
        return None
    out = _Listing.from_packed(d, rel, packed_names, packed_sigs, count, nbytes)
    if others:
        # folders, links and the rest: the entry-by-entry rules of _list_entries, on
        # just those entries (a link to a file adds a file: then re-packed)
        wanted = set(others)
        extra = _Listing(d, rel)
        try:
            fd = os.open(d, _O_DIR)
        except OSError:
            return None
        try:
            try:
                with os.scandir(fd) as it:
                    listing = [de for de in it if de.name in wanted]
            except OSError:
                return None
            # the entries stat through the folder's descriptor: still open here
            _list_entries(ctx, extra, listing, ())
        finally:
            os.close(fd)
        out.subdirs = extra.subdirs
        out.skipped = extra.skipped
        if extra.count or extra.names:
            out.names.extend(extra.names)
            out.sigs.extend(extra.sigs)
            out._packed = None
            out.count = len(out.names)
            out.nbytes += sum(map(_SIG_SIZE, extra.sigs))
    return out


def _list_entries(
    ctx: _ScanCtx, out: _Listing, listing: list[os.DirEntry[str]], ignores: _Ignores
) -> None:
    """Sort the entries of one folder's listing (made through a descriptor: an entry's
    ``path`` is its name) into ``out``."""
    d = out.path
    rel = out.rel
    names = out.names
    sigs = out.sigs
    subdirs = out.subdirs
    skipped = out.skipped
    patterns = ctx.patterns
    all_names = list(map(_NAME, listing))
    if IGNORE_FILE in all_names:
        de = listing[all_names.index(IGNORE_FILE)]
        if de.is_file():
            ignores = (*ignores, (len(rel), _load_ignore(os.path.join(d, IGNORE_FILE))))
    # the folder's own path needs a check only when some part is not plain ASCII
    rel_plain = all(n.isascii() and "\\" not in n for n in rel)
    if not ignores and not patterns:
        # The common case, in C-level loops (map over the entries): regular files
        # (by the listing's d_type) that no rule filters. Anything else -- folders,
        # links, other types, a file that vanished or changed type since the
        # listing -- goes through the entry-by-entry rules below, as all would.
        flags = list(map(_IS_FILE, listing))
        regular = listing if all(flags) else list(itertools.compress(listing, flags))
        try:
            found = list(map(_SIG, map(_LSTAT, regular)))
        except OSError:
            regular = []
        if regular and not all(map(statmod.S_ISREG, map(_SIG_MODE, found))):
            regular = []
        if regular:
            kept = all_names if regular is listing else list(map(_NAME, regular))
            joined = "".join(kept)
            if not (rel_plain and joined.isascii() and "\\" not in joined):
                for name in kept:
                    _validated((*rel, name), ctx.root)
            names += kept
            sigs += found
            # the entries left for the rules below
            listing = list(itertools.compress(listing, map(operator.not_, flags)))
    for de in listing:
        # names are validated only for files that are kept (below): a name the
        # wildcard leaves out must not stop the add
        name = de.name
        path = os.path.join(d, name)
        r = (*rel, name)
        try:
            is_dir = de.is_dir(follow_symlinks=False)
            if ignores and _ignored(ignores, r, is_dir):
                continue
            if de.is_symlink():
                # a link to a file is followed wherever it points (ClearML adds the
                # target's content: a folder of links into a raw data store is
                # common); a link to a folder is never entered, so no cycle
                try:
                    lst = os.stat(path)
                except FileNotFoundError:
                    skipped.append((path, "dangling symlink"))
                    continue
                except OSError as e:  # a loop, or a target we may not stat
                    skipped.append((path, f"broken symlink ({e.strerror})"))
                    continue
                if not statmod.S_ISREG(lst.st_mode):
                    skipped.append((path, "symlink to a folder is not entered"))
                    continue
            elif is_dir:
                if ctx.store_dirs and ctx.real_root + path[len(ctx.root) :] in ctx.store_dirs:
                    skipped.append((path, _STORE_SKIPPED))
                elif ctx.recursive or patterns:
                    subdirs.append((path, r, ignores))
                continue
            else:
                lst = de.stat(follow_symlinks=False)
                if not statmod.S_ISREG(lst.st_mode):
                    skipped.append((path, "not a regular file"))
                    continue
        except FileNotFoundError:
            skipped.append((path, "vanished during the scan"))
            continue
        except PermissionError as e:
            # the folder can be listed (read) but not entered (no search permission)
            raise InvalidPathError(
                f"cannot read {path!r}: {e.strerror}. Give the folder {d!r} search (x) "
                "permission, or leave it out of the add (a .dsvcignore rule)"
            ) from e
        if patterns and not matches_wildcard(r, patterns, ctx.recursive):
            continue
        if not (rel_plain and name.isascii() and "\\" not in name):
            _validated(r, ctx.root)
        names.append(name)
        sigs.append(_SIG(lst))


_rel_key = operator.attrgetter("rel")
_item_size = operator.attrgetter("size")


def _item(path: str, rel: RelPath, st: os.stat_result) -> ScanItem:
    return ScanItem(
        path,
        rel,
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        _mode(st.st_mode),
        st.st_ctime_ns,
        st.st_dev,
    )


#: what the stat-cache hit test compares, from a ScanItem: (size, mtime_ns, ctime_ns,
#: ino, dev)
_stat_of = operator.itemgetter(2, 3, 6, 4, 7)


def same_stat(recorded: Sequence[int], item: ScanItem) -> bool:
    """The stat-cache hit test: ``recorded`` -- ``(size, mtime_ns, ctime_ns, ino,
    dev)`` as stored with a file's entry (stat cache, folder summary row) or as ``fstat``
    gives it after reading -- equals ``item``'s stat from the scan.

    As git does, ctime, inode and device are compared besides size and mtime: a file
    replaced by one of the same size and mtime (``cp -p``, ``shutil.copy2``, ``os.utime``
    restoring the mtime) gets a new ctime (and often a new inode), which no user-space
    call can set back.
    """
    return tuple(recorded) == _stat_of(item)


def stat_cache_entries(store: Store, items: list[ScanItem]) -> list[Entry | None]:
    """The tree entries the stat cache answers for ``items`` (None: the file must be read).

    The one stat-cache lookup (ingest and ``dsvc diff``/``status`` of a folder both use
    it). A hit needs an entry recorded for the same path (the key is a hash of it), the
    same stat (:func:`same_stat`) and its content still in the store -- the single chunk,
    or the blob and every chunk it lists -- checked in the same read snapshot, so a
    chunk dropped by ``gc`` or ``fsck`` makes the file be read again instead of
    referenced while absent.
    """
    out: list[Entry | None] = []
    present: dict[bytes, bool] = {}  # content id -> in the store
    with store.reader() as r:
        for item in items:
            e = r.statcache(os.fsencode(item.abs_path))
            if e is None or not same_stat((e.size, e.mtime_ns, e.ctime_ns, e.ino, e.dev), item):
                out.append(None)
                continue
            ok = present.get(e.id)
            if ok is None:
                ok = present[e.id] = _content_present(e.kind, e.id, r)
            out.append(Entry(e.kind, e.id, item.size, item.mode) if ok else None)
    return out


def _content_present(kind: int, oid: bytes, r: StoreReader) -> bool:
    """Whether a file's content is in the store (``r``: one read snapshot)."""
    if kind == KIND_CHUNKFILE:
        return r.has_chunk(oid)
    try:
        blob = r.blob(oid)
    except DsvcError:  # absent, or damaged: read the file again (fsck reports damage)
        return False
    return all(r.has_chunk(cid) for cid, _ in blob.chunks)


# -- the pipeline ------------------------------------------------------------------

_STOP = object()

#: bytes of frames waiting in the writer's queue (bounds memory; producers block)
QUEUE_BYTES = 16 << 20
#: what one queued write costs beyond its value's bytes, counted against QUEUE_BYTES:
#: its tuple, its key and the value's object header. A tiny file queues two writes
#: (its chunk and its stat entry) of ~190 bytes of values in ~450 bytes of objects
#: (tracemalloc), so counting only the values let the queue hold ~80,000 tiny files
#: (~36 MB), and it fills whenever the writer pauses (a level merge, a large commit)
QUEUE_ITEM_BYTES = 128
#: the writer appends the chunk frames it holds to the pack file once they reach this
#: many bytes (bounded memory). Small appends bound memory (the frames, and the pages
#: of the pack the kernel keeps dirty): 8 MiB keeps a 4 GiB ingest at ~260 MB peak RSS
#: against ~380 MB with 32 MiB, for no measurable change in CPU time.
WRITE_BATCH_BYTES = 8 << 20
#: chunk ids an ingest remembers as queued (so it frames each new chunk once)
QUEUED_IDS = 200_000
#: the writer commits its index writes (chunk locations, blobs, trees, stat cache,
#: summaries) once it holds this many writes of random keys (chunk locations, blobs,
#: trees, summaries; not the stat cache, whose keys are grouped by folder) or
#: WRITE_INDEX_BYTES of them. Each commit rewrites every B-tree page it dirtied, and a
#: random key dirties its own page: committing every 8,192 writes made the first add of
#: 1M tiny files rewrite the whole chunk index ~250 times (44.6 GB written for 480 MB of
#: files, docs/performance.md). Larger commits amortize the rewrites; memory is the
#: queued writes (~0.4 KB per tiny file) plus LMDB's dirty pages until the commit.
#: Since new chunk locations go to the small ``chunknew`` (store.LEVEL_FORMAT), a
#: commit rewrites at most that level, and half the commit halves that memory. First
#: add, 131,072 -> 65,536: 1M tiny files 330 -> 286 MiB peak RSS, 1.01 -> 1.37 GB
#: written; 3M 425-438 -> 346 MiB, 5.96-5.99 -> 6.93 GB (all-in-one-index main:
#: 351 and 401 MiB, 0.93 and 27.5 GB; docs/performance.md, session 9)
WRITE_BATCH_OPS = 65536
#: ... or once its queued index writes hold this many bytes
WRITE_INDEX_BYTES = 32 << 20
#: ... or once the trees, blobs and folder summaries among them hold this many bytes.
#: These are large values (~22 and ~36 KB as stored for a folder of 1,000 files) that
#: cost memory out of proportion to their byte count until the commit (queued, then
#: LMDB's dirty overflow pages, in the writer thread's malloc arena): a sync that
#: changed every folder of 1M files peaked at 554 MB with only the 32 MiB limit, 379 MB
#: with 8 MiB for everything (whose smaller commits made the first add write 6.4x its
#: data, not 1.6x). With this limit: 351 MB for that sync and 367 MB for the first add
#: (1.37 GB written, was 1.14)
WRITE_LARGE_BYTES = 8 << 20
#: ... and, once the random-key databases outgrow it, a commit dirties about this many
#: of their pages (64 MiB held in memory by LMDB until the commit): n random writes
#: into L leaf pages dirty L * (1 - exp(-n / L)) of them. New chunk locations go to
#: ``chunknew``, which ``store.NEW_LEVEL_MAX`` keeps under this (the large
#: ``chunkloc`` is written by merges, in key order), so the cap now binds only when
#: ``objects`` grows past it
WRITE_DIRTY_PAGES = 16384
#: mapped store pages (RSS) above which the writer unmaps them after a pack append
#: (1M tiny files: peak RSS 369 -> 353 MB)
WRITER_MAPPED_BUDGET = 64 << 20
#: windows (of ``Chunker.window`` bytes) in flight across every file read at once,
#: beyond one per file thread. A stream holds one window while it waits for its next,
#: so with more windows than file threads some window is always held by a chunk job,
#: which frees it without waiting for another: no deadlock. (Three per file, as before,
#: let 4 large files hold 12 windows (192 MiB): a 2.5 GB ingest peaked at 414 MB RSS.)
WINDOWS_EXTRA = 2


class _Writer(threading.Thread):
    """The one thread that writes to LMDB; everything else queues to it.

    The queue is bounded in bytes (not items), so a fast reader cannot pile up
    frames: memory stays bounded whatever the file sizes.
    """

    def __init__(self, store: Store, limit: int = QUEUE_BYTES) -> None:
        super().__init__(name="dsvc-writer", daemon=True)
        self.store = store
        self.q: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.limit = limit
        self.queued = 0
        self.error: BaseException | None = None
        self.new_chunks = 0
        self.new_bytes = 0

    def run(self) -> None:
        try:
            with self.store.batch(WRITE_INDEX_BYTES + WRITE_BATCH_BYTES) as b:
                put_chunk = b.put_chunk_frame
                put_stat = b.put_statcache
                trimmer = _MapTrimmer(self.store)
                ops = 0  # writes of random keys queued since the last commit
                large = 0  # bytes of trees and folder summaries queued since then
                most = _ops_per_commit(self.store)
                while True:
                    with self.cv:
                        while not self.q:
                            self.cv.wait()
                        items, size = self.q.popleft()
                        self.queued -= size
                        self.cv.notify_all()
                    if items is _STOP:
                        break
                    before = b.pending_bytes
                    stored = self._stored(items, trimmer)
                    for kind, key, value in items:
                        if kind == "c" or kind == "C":
                            if not b.has(key) and key not in stored:
                                put_chunk(key, value)
                                self.new_chunks += 1
                                self.new_bytes += len(value)
                                ops += 1
                        elif kind == "s":
                            put_stat(key, value)
                        else:
                            ops += 1
                            # the bytes the batch holds for it: a tree or blob as
                            # stored (compressed: a 1,000-file tree holds 22 KB, not
                            # its 40 KB), so the limit means the same for every kind
                            held = b.pending_bytes
                            if kind == "t":
                                b.put_object(TAG_TREE, value)
                            elif kind == "d":
                                b.put_dirsum(key, value)
                            else:
                                b.put_object(TAG_BLOB, value)
                            large += b.pending_bytes - held
                        if b.pending_bytes < before:  # the batch committed (size limit)
                            trimmer.trim()
                            before = ops = large = 0
                            most = _ops_per_commit(self.store)
                            continue
                        if b.frame_bytes >= WRITE_BATCH_BYTES:
                            b.write_frames()  # the bytes to the pack; the index waits
                            # lookups map index pages between the (rarer) commits
                            trimmer.trim_over(WRITER_MAPPED_BUDGET)
                        if (
                            ops >= most
                            or b.pending_bytes >= WRITE_INDEX_BYTES
                            or large >= WRITE_LARGE_BYTES
                        ):
                            b.flush()
                            trimmer.trim()
                            ops = large = 0
                            most = _ops_per_commit(self.store)
                        before = b.pending_bytes
        except BaseException as e:  # reported to the caller by finish()
            self.error = e
            with self.cv:
                self.q.clear()
                self.queued = 0
                self.cv.notify_all()

    def _stored(
        self, items: list[tuple], trimmer: _MapTrimmer
    ) -> set[bytes] | frozenset[bytes]:
        """The ids of the unchecked chunks (kind ``"C"``) of ``items`` that the store
        has, looked up here in one snapshot (see :data:`LOOKUP_ABOVE`)."""
        unchecked = [key for kind, key, _ in items if kind == "C"]
        if not unchecked:
            return frozenset()
        with self.store.reader() as r:
            found = {key for key in unchecked if r.has_chunk(key)}
        # each lookup of a random id maps its own leaf page and, by the kernel's
        # fault-around, the 64 KiB around it: a group of 256 small files maps ~16 MB,
        # more than the store's check every 16 readers allows for (a 3M-file first add
        # had 232 MB of the store mapped at its peak, for a 128 MiB budget)
        trimmer.trim_over(WRITER_MAPPED_BUDGET)
        return found

    def put(self, items: list[tuple], size: int = 0) -> None:
        """Queue writes (``size``: their byte count); they are applied in queue order."""
        if self.error is not None:
            raise self.error
        if not items:
            return
        size += QUEUE_ITEM_BYTES * len(items)
        with self.cv:
            while self.queued and self.queued + size > self.limit and self.error is None:
                self.cv.wait()
            if self.error is not None:
                raise self.error
            self.q.append((items, size))
            self.queued += size
            self.cv.notify_all()

    def finish(self) -> None:
        with self.cv:
            self.q.append((_STOP, 0))
            self.cv.notify_all()
        self.join()
        if self.error is not None:
            raise self.error


def _ops_per_commit(store: Store) -> int:
    """How many random-key writes the ingest writer queues before it commits: as many
    as WRITE_BATCH_OPS, fewer once the random-key databases are so large that these
    writes would dirty more than WRITE_DIRTY_PAGES of their leaf pages."""
    leaves = store.leaf_pages("chunknew") + store.leaf_pages("objects")
    budget = WRITE_DIRTY_PAGES
    if leaves <= budget:
        return WRITE_BATCH_OPS
    return max(1024, min(WRITE_BATCH_OPS, int(-leaves * math.log1p(-budget / leaves))))


class _MapTrimmer:
    """Unmaps this process's pages of the store's LMDB map (``Store.unmap``) for the
    ingest, which maps more of them between the store's own checks than a reader does.

    Measured here (py-lmdb 3.0, non-writemap): every commit leaves pages of the shared
    file mapping of ``data.mdb`` resident in this process, about 4x the batch size (fault
    -around of the 64 KiB around each page LMDB touches, mostly fresh chunk data). They
    are clean page cache, but they count as RSS: a 4 GiB ingest peaked at ~250 MB of
    them. The ingest writer trims after each commit; the walk trims over a budget.
    """

    def __init__(self, store: Store, check_every: int = 1) -> None:
        self.store = store
        # trim_over reads /proc/self/statm only every this many calls: a walk calls it
        # per changed folder, and the read (open, read, close of a proc file) cost as
        # much as the folder's summary decode (8% of the walk's samples at 1% changed)
        self.check_every = check_every
        self._calls = 0

    def trim(self) -> None:
        self.store.unmap()
        _release_free_heap()

    def trim_over(self, budget: int) -> None:
        """Unmap the store's pages as :meth:`trim` does (without its heap release) once
        this process maps more than ``budget`` bytes of files, looked at every
        ``check_every`` calls."""
        self._calls += 1
        if self._calls < self.check_every:
            return
        self._calls = 0
        self.store.unmap(over=budget)


def _release_free_heap() -> None:
    """Give the free pages inside this process's malloc arenas back to the system
    (glibc ``malloc_trim(0)``; a no-op elsewhere). The ingest's threads free as much as
    they allocate, but each thread's arena keeps its free pages: a first add of 3M tiny
    files held 269-275 MB of anonymous memory for most of its run without this, and
    241-251 MB with it after each commit of the writer (a few ms per call: 4.9 ms at
    most in a 300k-file add; ~400 commits in the 3M add, whose call took 267 s with it
    and 278 s without)."""
    malloc_trim = libc.function("malloc_trim", "c_size_t")  # glibc only
    if malloc_trim is not None:
        malloc_trim(0)


class _BufferPool:
    """Reusable window buffers: reading a large file allocates (and page-faults) its
    windows once, not once per window."""

    def __init__(self, size: int, max_free: int) -> None:
        self.size = size
        self.max_free = max_free
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self.max_free:
                self._free.append(buf)


def _unchanged_since_scan(fd: int, item: ScanItem) -> None:
    """Raise _Changed unless the open file still has the stat seen by the scan: the stat
    cache pairs it with the content just read, so a same-size rewrite in between must
    not be cached (it would be served for the new content)."""
    st = os.fstat(fd)
    if not same_stat((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev), item):
        raise _Changed(item)


class _Session:
    """The single writer thread and the two pools of one ingest run."""

    def __init__(self, store: Store, workers: int) -> None:
        self.writer = _Writer(store)
        self.writer.start()
        self.chunk_pool = ThreadPoolExecutor(workers, thread_name_prefix="dsvc-chunk")
        self.file_pool = ThreadPoolExecutor(workers, thread_name_prefix="dsvc-file")

    def close(self, failed: BaseException | None) -> None:
        self.file_pool.shutdown(wait=True, cancel_futures=failed is not None)
        self.chunk_pool.shutdown(wait=True, cancel_futures=failed is not None)
        try:
            self.writer.finish()
        except BaseException:
            if failed is None:
                raise


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
        # Small files are mostly Python work under the GIL: by default, threads beyond
        # the cores left after the writer thread only add contention (measured on 2
        # cores: 100k small files 5.2 s with one thread, 7.0 s with four). An explicit
        # max_workers is honoured as given.
        small = self.workers if max_workers else max(1, (os.cpu_count() or 2) - 1)
        self._small_slots = threading.BoundedSemaphore(min(self.workers, small))
        self.progress = progress or (lambda n: None)
        self.use_stat_cache = use_stat_cache
        # chunk ids handed to the writer during the current ``ingest`` call: anything
        # queued later is applied after them, so it may refer to them
        self._queued: set[bytes] = set()
        windows = self.workers + WINDOWS_EXTRA
        self._bufs = _BufferPool(self.chunker.window, windows)
        self._windows = threading.BoundedSemaphore(windows)

    # chunk-level work (runs in pool threads) -----------------------------------

    def _stat_entry(self, item: ScanItem, entry: Entry, sink: list[tuple]) -> None:
        if self.use_stat_cache and not _racy(item):
            path = os.fsencode(item.abs_path)
            value = [item.size, item.mtime_ns, item.ino, entry.kind, entry.id, entry.mode]
            value += [item.ctime_ns, item.dev, path]  # StatEntry's field order
            sink.append(("s", statcache_key(path), _packb(value)))

    def _file_entry(
        self, item: ScanItem, chunks: list[tuple[bytes, int]], sink: list[tuple]
    ) -> tuple[Entry, int]:
        """The entry for a file of ``chunks``; queues its blob and stat-cache entry."""
        kind, fid, data = file_id(chunks)
        size = 0
        if data is not None:
            sink.append(("b", None, data))
            size = len(data)
        entry = Entry(kind, fid, sum(n for _, n in chunks), item.mode)
        self._stat_entry(item, entry, sink)
        return entry, size

    def _encode_new(
        self, chunks: list[memoryview] | list[bytes], r: StoreReader, sink: list[tuple]
    ) -> tuple[list[tuple[bytes, int]], int]:
        """Hash ``chunks``; frame those neither queued nor stored into ``sink``.

        ``r``: a read snapshot of the store. Returns the (id, length) list and the
        bytes added to ``sink``.
        """
        out = []
        size = 0
        queued = self._queued
        level = self.level
        local: set[bytes] = set()
        for c in chunks:
            cid = chunk_id(c)
            out.append((cid, len(c)))
            if cid in queued or cid in local:
                continue
            if len(c) > LOOKUP_ABOVE:
                if r.has_chunk(cid):
                    continue
                kind = "c"
            else:
                kind = "C"  # the writer looks it up (LOOKUP_ABOVE)
            local.add(cid)
            frame = codec.encode_frame(c, level)
            sink.append((kind, cid, frame))
            size += len(frame)
        return out, size

    def _run_small(
        self, group: list[ScanItem], writer: _Writer
    ) -> tuple[dict[RelPath, Entry], list[tuple[str, str]]]:
        """Files of at most SMALL_FILE bytes: read whole, cut in memory, one writer item
        and one LMDB read snapshot for the group."""
        done: dict[RelPath, Entry] = {}
        skipped: list[tuple[str, str]] = []
        sink: list[tuple] = []
        size = 0
        nbytes = 0
        cut = self.chunker.cut
        min_size = self.min_size
        with self._small_slots:
            # one call for the group: in C, the GIL is released for all of it
            reads = fsbatch.read_files([it.abs_path for it in group], [it.size for it in group])
            read: list[tuple[ScanItem, bytes]] = []
            for item, got in zip(group, reads):
                if isinstance(got, OSError):
                    if _skip(item, got, skipped):
                        continue
                    raise got
                # the stat cache pairs this stat with the content just read, so a
                # same-size rewrite since the scan must not be cached (it would be
                # served for the new content)
                if len(got.data) != item.size or not same_stat(got[1:], item):
                    skipped.append((item.abs_path, _CHANGED))
                    continue
                read.append((item, got.data))
            del reads
            with self.store.reader() as r:
                for item, data in read:
                    pieces = [data] if len(data) <= min_size else list(cut(data))
                    chunks, n = self._encode_new(pieces, r, sink)
                    entry, m = self._file_entry(item, chunks, sink)
                    size += n + m
                    nbytes += item.size
                    done[item.rel] = entry
        self._queue(writer, sink, size)
        self.progress(nbytes)
        return done, skipped

    def _queue(self, writer: _Writer, sink: list[tuple], size: int) -> None:
        writer.put(sink, size)
        # only now may others skip these chunks: what they queue comes after
        if len(self._queued) > QUEUED_IDS:
            # long since committed, most of them: forgetting them costs at worst a chunk
            # framed twice (the store keeps one), and memory stays bounded (1M files)
            self._queued = set()
        self._queued.update(k for kind, k, _ in sink if kind in ("c", "C"))

    def _window_job(self, chunks: list[memoryview], writer: _Writer) -> list[tuple[bytes, int]]:
        sink: list[tuple] = []
        with self.store.reader() as r:
            out, size = self._encode_new(chunks, r, sink)
        self._queue(writer, sink, size)
        self.progress(sum(n for _, n in out))
        return out

    def _read_stream(
        self, item: ScanItem, writer: _Writer, pool: ThreadPoolExecutor | None
    ) -> Entry:
        """A file above SMALL_FILE: cut window by window (bounded memory). With a
        ``pool``, the windows' chunks are hashed and compressed there while the next
        window is read."""
        bufs = self._bufs
        slots = self._windows
        pending: list[Future | list[tuple[bytes, int]]] = []
        total = 0

        def get_buffer() -> bytearray:
            slots.acquire()
            return bufs.get()

        def done(buf: bytearray) -> None:
            bufs.put(buf)
            slots.release()

        def job(buf: bytearray, chunks: list[memoryview]) -> list[tuple[bytes, int]]:
            try:
                return self._window_job(chunks, writer)
            finally:
                del chunks
                done(buf)

        try:
            with open(item.abs_path, "rb", buffering=0) as f:
                for buf, chunks in self.chunker.cut_windows(f, get_buffer):
                    total += sum(len(c) for c in chunks)
                    if pool is None:
                        pending.append(job(buf, chunks))
                    else:
                        pending.append(pool.submit(job, buf, chunks))
                    del chunks
                _unchanged_since_scan(f.fileno(), item)
        finally:
            # never leave while a job still uses a window (or an error is unreported)
            results = [p.result() if isinstance(p, Future) else p for p in _wait_all(pending)]
        if total != item.size:
            raise _Changed(item)
        chunks_all = [c for r in results for c in r]
        if not chunks_all:  # empty file
            chunks_all = self._window_job([memoryview(b"")], writer)
        sink: list[tuple] = []
        entry, size = self._file_entry(item, chunks_all, sink)
        writer.put(sink, size)
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
        with self.session() as ses:
            done, skipped = self.read_files(ses, todo)
        result.update(done)
        stats.skipped += skipped
        stats.read_bytes = sum(i.size for i in todo)
        stats.new_chunks = ses.writer.new_chunks
        stats.new_bytes_stored = ses.writer.new_bytes
        return result, stats

    @contextmanager
    def session(self) -> Iterator[_Session]:
        """The writer thread and the pools, shared by every :meth:`read_files` call of
        the block; leaving it commits what was queued (also on error: what was queued
        is valid content)."""
        self._queued = set()
        ses = _Session(self.store, self.workers)
        failed: BaseException | None = None
        try:
            yield ses
        except BaseException as e:
            failed = e
            raise
        finally:
            try:
                ses.close(failed)
            finally:
                self._queued = set()

    def read_files(
        self, ses: _Session, todo: list[ScanItem]
    ) -> tuple[dict[RelPath, Entry], list[tuple[str, str]]]:
        """Read, cut, hash and queue for storing every file of ``todo``; returns their
        entries and the files skipped (vanished or changed while read)."""
        result: dict[RelPath, Entry] = {}
        skipped: list[tuple[str, str]] = []
        tasks = [
            ses.file_pool.submit(self._run_group, g, ses.writer, ses.chunk_pool)
            for g in _groups(todo)
        ]
        try:
            for t in tasks:
                done, sk = t.result()
                result.update(done)
                skipped += sk
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return result, skipped

    def _run_group(
        self, group: list[ScanItem], writer: _Writer, pool: ThreadPoolExecutor
    ) -> tuple[dict[RelPath, Entry], list[tuple[str, str]]]:
        if group[0].size <= SMALL_FILE:
            return self._run_small(group, writer)
        done: dict[RelPath, Entry] = {}
        skipped: list[tuple[str, str]] = []
        for item in group:
            try:
                big = item.size > LARGE_FILE
                done[item.rel] = self._read_stream(item, writer, pool if big else None)
            except _Changed:
                skipped.append((item.abs_path, _CHANGED))
            except Exception as e:
                if not _skip(item, e, skipped):
                    raise
        return done, skipped

    def _from_stat_cache(
        self, items: list[ScanItem], result: dict[RelPath, Entry], stats: IngestStats
    ) -> list[ScanItem]:
        if not self.use_stat_cache:
            return list(items)
        todo = []
        cached_bytes = 0
        for item, entry in zip(items, stat_cache_entries(self.store, items)):
            if entry is not None:
                result[item.rel] = entry
                cached_bytes += item.size
            else:
                todo.append(item)
        stats.cached_files = len(items) - len(todo)
        if stats.cached_files:
            self.progress(cached_bytes)
        return todo


_CHANGED = "changed while being read; add it again"


def _skip(item: ScanItem, e: BaseException, skipped: list[tuple[str, str]]) -> bool:
    """Record why ``item`` is left out; False when ``e`` must propagate instead."""
    if isinstance(e, FileNotFoundError):
        skipped.append((item.abs_path, "vanished before it could be read"))
    elif isinstance(e, _Changed):
        skipped.append((item.abs_path, _CHANGED))
    elif isinstance(e, IsADirectoryError):
        skipped.append((item.abs_path, "became a folder during the scan"))
    elif isinstance(e, PermissionError):
        raise InvalidPathError(
            f"cannot read {item.abs_path!r}: {e.strerror}; fix its permissions or leave it out"
        ) from e
    else:
        return False
    return True


def _wait_all(pending: list) -> list:
    """Wait for every future in ``pending``; re-raise the first failure after that."""
    err: BaseException | None = None
    for p in pending:
        if isinstance(p, Future):
            try:
                p.result()
            except BaseException as e:
                err = err or e
    if err is not None:
        raise err
    return pending


_tls = threading.local()


def _packb(v: object) -> bytes:
    # a Packer per thread: msgpack.packb builds a new one per call (~3x slower)
    p = getattr(_tls, "packer", None)
    if p is None:
        p = _tls.packer = msgpack.Packer(use_bin_type=True)
    return p.pack(v)


class _Changed(DsvcError):
    def __init__(self, item: ScanItem) -> None:
        super().__init__(item.abs_path)


def _racy(item: ScanItem) -> bool:
    """A file modified within the filesystem's timestamp granularity of now may change
    again without its mtime changing, so it is not cached (git's "racily clean" rule)."""
    return _racy_mtime(item.mtime_ns, time.time_ns())


#: the racy window of an mtime with whole-second resolution (the widest)
_RACY_WIDE = 2_000_000_000


def _racy_mtime(mtime_ns: int, now_ns: int) -> bool:
    """:func:`_racy` for an mtime, at the time ``now_ns``."""
    window = _RACY_WIDE if mtime_ns % 1_000_000_000 == 0 else 100_000_000
    return mtime_ns >= now_ns - window


def _never(mtime_ns: int, now_ns: int) -> bool:
    return False


def _groups(items: Iterable[ScanItem]) -> list[list[ScanItem]]:
    """Small files grouped into tasks of a few MiB; larger files get a task each."""
    small: list[ScanItem] = []
    groups: list[list[ScanItem]] = []
    for it in items:
        if it.size > SMALL_FILE:
            groups.append([it])
        else:
            small.append(it)
    groups += group_by_bytes(small, _item_size, SMALL_GROUP_BYTES, SMALL_GROUP_FILES)
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
    sr = scan(Path(path), wildcard=wildcard, recursive=recursive, store=store)
    with store.lease("ingest", announce=False):  # stat-cache entries vs a concurrent gc
        entries, stats = Ingestor(store, max_workers=max_workers, progress=progress).ingest(
            sr.items
        )
    stats.skipped[:0] = sr.skipped
    return entries, stats


# -- folder by folder: bounded memory, O(change) re-adds ----------------------------------

#: bytes of the store's file pages a walk lets this process map before it unmaps them.
#: Each chunk lookup faults in 64 KiB around its page (the kernel's fault-around; LMDB's
#: MADV_RANDOM does not stop it), so checking the content of 1,000 folders of 1,000
#: files maps the whole chunks database (~550 MB of RSS at 1M files). Unmapping every
#: 2,000 files kept it at ~110 MB but cost ~6 us per file in faults again (measured at
#: 300k files); a budget unmaps rarely and bounds RSS all the same.
MAPPED_BUDGET = 160 << 20
#: layout version of a folder summary (the ``dirsum`` database, docs/format.md section 5).
#: Layout 3 compresses the body's names, stats and kinds (layout 2 did not): 65 KB ->
#: 36 KB for a folder of 1,000 files, written again whenever one of its files changes
DIRSUM_VERSION = 3
#: zstd level of a summary body's compressed part: level 1 makes 47 KB of names, stats
#: and kinds 18 KB in ~170 us; level 3 saves 1% more for 45% more time
DIRSUM_ZSTD_LEVEL = 1
#: the largest decompressed body part a summary may declare (a damaged value is then
#: ignored, never inflated): ~50 bytes per file, so 5 million files in one folder
DIRSUM_MAX_HEAD = 256 << 20


class DirSummary(NamedTuple):
    """What the last ingest of one folder found and made (the ``dirsum`` value).

    ``digest`` is the xxh3-128 of the folder's listing: the files' names and stats
    (:data:`Sig`) in listing order, and per subfolder its name and tree id; None when
    some file was racily clean or skipped (never a whole-folder hit). ``body``
    (:class:`_Body`, partly compressed) holds, per file of the tree, its name, its stat
    (nil when racily clean: never trusted), its entry kind and its id, in listing
    order: a changed folder reuses the entries of its unchanged files from there, as
    git's index does. It is a nested bin, so a whole-folder hit never decodes it.
    """

    digest: bytes | None
    tree: bytes
    size: int
    files: int
    path: bytes
    body: bytes
    epoch: int  # the store's content epoch when this content was last seen present

    def encode(self) -> bytes:
        return _packb([DIRSUM_VERSION, *self])

    @classmethod
    def decode(cls, raw: bytes) -> DirSummary | None:
        """The summary, or None for a value of another layout."""
        try:
            v = msgpack.unpackb(raw, raw=False)
        except ValueError:
            return None
        if isinstance(v, list) and len(v) == 10 and v[0] == 1:
            return cls._from_layout_1(v)
        # layouts 2 and 3 have the same fields; their bodies differ (see _Body.decode)
        if not isinstance(v, list) or len(v) != len(cls._fields) + 1 or v[0] not in (2, 3):
            return None
        return cls(*v[1:])

    @classmethod
    def _from_layout_1(cls, v: list[Any]) -> DirSummary | None:
        """A summary written by layout 1 (``rows`` of ``[name, size, mtime_ns, ctime_ns,
        ino, dev, kind, id]``), as layout 2 with 5-element stats (no st_mode: compared
        as layout 1 did) and no digest, so a store's first add or sync after the change
        still reuses every unchanged file's entry instead of reading it."""
        try:
            _, _digest, tree, size, files, path, rows, _chunks, _blobs, epoch = v
            rows = msgpack.unpackb(rows, raw=False)
            body = _packb(
                [
                    [r[0] for r in rows],
                    [r[1:6] for r in rows],
                    [r[6] for r in rows],
                    [r[7] for r in rows],
                ]
            )
        except (ValueError, TypeError, IndexError):
            return None
        return cls(None, tree, size, files, path, body, epoch)


class _Body(NamedTuple):
    """A summary's files, as parallel columns in listing order (tuples, as msgpack
    decodes them with ``use_list=False``: a stat compares equal to a scanned
    :data:`Sig`).

    Encoded (layout 3) as ``array(bin head, array(bin ids))``, ``head`` the zstd frame of
    ``array(names, stats, kinds)``: names and stats compress 2.6x, the ids not at all
    (so they stay out of the compressor). Layout 2 was ``array(names, stats, kinds,
    ids)`` uncompressed; both decode."""

    names: Sequence[str]
    sigs: Sequence[Sig | None]
    kinds: Sequence[int]
    ids: Sequence[bytes]

    @staticmethod
    def encode(head: bytes, ids: Sequence[bytes]) -> bytes:
        """The body of ``head`` (the msgpack ``array(names, stats, kinds)``) and
        ``ids``."""
        c = getattr(_tls, "zc", None)
        if c is None:
            c = _tls.zc = zstandard.ZstdCompressor(level=DIRSUM_ZSTD_LEVEL, write_content_size=True)
        return b"\x92" + _packb(c.compress(head)) + _packb(ids)

    @staticmethod
    def columns(raw: bytes) -> tuple[bytes, tuple] | tuple[tuple, None] | None:
        """``(head, ids)`` of a layout-3 body, ``head`` decompressed and not decoded;
        ``(columns, None)`` of a layout-2 body; None when it is neither."""
        try:
            v = msgpack.unpackb(raw, raw=False, use_list=False)
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], bytes):
                head = v[0]
                if not 0 <= zstandard.frame_content_size(head) <= DIRSUM_MAX_HEAD:
                    return None
                d = getattr(_tls, "zd", None)
                if d is None:
                    d = _tls.zd = zstandard.ZstdDecompressor()
                ids = v[1]
                return (d.decompress(head), ids) if isinstance(ids, tuple) else None
        except (ValueError, zstandard.ZstdError):
            return None
        return (v, None) if isinstance(v, tuple) else None

    @classmethod
    def decode(cls, raw: bytes) -> _Body | None:
        got = cls.columns(raw)
        if got is None:
            return None
        if got[1] is None:  # layout 2
            v = got[0]
        else:
            try:
                cols = msgpack.unpackb(got[0], raw=False, use_list=False)
            except ValueError:
                return None
            if not isinstance(cols, tuple) or len(cols) != 3:
                return None
            v = (*cols, got[1])
        if (
            not isinstance(v, tuple)
            or len(v) != 4
            or not all(isinstance(c, tuple) for c in v)
            or len({len(c) for c in v}) != 1
        ):
            return None
        return cls(*v)

    def content(self) -> tuple[list[bytes], list[bytes]]:
        """The ids of the single-chunk files' chunks and of the other files' blobs."""
        chunks = [i for k, i in zip(self.kinds, self.ids) if k == KIND_CHUNKFILE]
        blobs = [i for k, i in zip(self.kinds, self.ids) if k != KIND_CHUNKFILE]
        return chunks, blobs


def dirsum_key(path: bytes) -> bytes:
    """The ``dirsum`` key of a folder's absolute path (file-system bytes): its xxh3-128."""
    return xxhash.xxh3_128_digest(path)


@dataclass
class TreeResult:
    """What :func:`ingest_tree` made: the entry of the added folder's tree (None when
    nothing was selected), the number of files in it and the run's statistics."""

    entry: Entry | None
    files: int
    stats: IngestStats
    #: ``(old tree id, new tree id) -> (removed, added, modified)`` file counts of the
    #: changed folders whose difference the walk knows without reading a tree: a folder
    #: of files only, the same names in the same order as its summary, whose summary's
    #: tree is ``old`` (see :func:`dsvc.treeops.diff_counts`)
    changes: dict[tuple[bytes, bytes], tuple[int, int, int]] = field(default_factory=dict)


#: at most this many folders' counts in :attr:`TreeResult.changes` (~200 bytes each);
#: past it the diff reads the trees of the others
MAX_KNOWN_CHANGES = 100_000


class _Folder:
    """A folder being walked: its listing, and the entries of the subfolders done."""

    __slots__ = ("kids", "listing", "next", "path")

    def __init__(self, listing: _Listing) -> None:
        self.listing = listing
        self.path = listing.path
        self.next = 0  # index in listing.subdirs of the next subfolder to walk
        self.kids: dict[str, tuple[Entry, int]] = {}


#: folders the scan thread lists ahead of the walk (each held until walked: memory is
#: bounded by this many listings of the largest folder)
SCAN_AHEAD = 8
#: threads listing folders ahead of the walk. ``scandir`` and ``lstat`` release the GIL,
#: so the next folders are listed while the walk compares and writes this one.
SCAN_THREADS = 2


def _list_packed(
    ctx: _ScanCtx, d: str, rel: RelPath, ignores: _Ignores, store: Store | None = None
) -> _Listing:
    ls = _list_folder(ctx, d, rel, ignores)
    ls.packed()
    if store is not None:
        pathb = os.fsencode(d)
        with store.reader() as r:
            ls.summary = _read_summary(r, dirsum_key(pathb), pathb)
    return ls


#: :attr:`_Listing.summary` of a listing whose summary was not read ahead
UNREAD = object()


def _read_summary(r: StoreReader, key: bytes, pathb: bytes) -> DirSummary | None:
    """The summary of folder ``pathb`` if it is one of this layout, for this path, and
    its tree is stored (the content it names is checked by _TreeBuilder._summary)."""
    raw = r.dirsum(key)
    old = DirSummary.decode(raw) if raw is not None else None
    if old is None or old.path != pathb or not r.has_object(old.tree):
        return None
    return old


#: at most this many files to read in a folder are read by the walk's own thread
_INLINE_FILES = 64


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block. Closing a changed folder decodes,
    compares and re-encodes a thousand small tuples (summary body, listing, tree rows)
    that cannot form cycles and die with the folder: the collections their allocation
    triggers scan them for nothing and promote the live ones, and cost as much as the
    work itself (summary body decode: 470 us with collections, 230 us without)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Scanner:
    """Lists the folders of one walk, up to :data:`SCAN_AHEAD` of them ahead on
    :data:`SCAN_THREADS` threads, and with a ``store`` reads each one's summary there
    too (:func:`_read_summary`). A listing's error (an unreadable folder) is raised when
    the walk reaches that folder, as a listing done in line would.

    Why the summaries: the walk's thread is the one that decides and builds every
    changed folder, and a summary read there waited on index pages the ingest writer
    was flushing (1% of 1M files rewritten: 0.9-1.2 s of its time in 1,000 reads)."""

    def __init__(
        self, ctx: _ScanCtx, threads: int = SCAN_THREADS, store: Store | None = None
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.pool = ThreadPoolExecutor(threads, "dsvc-scan") if threads > 0 else None
        self.ahead: dict[str, Future[_Listing]] = {}

    def prefetch(self, todo: Sequence[tuple[str, RelPath, _Ignores]]) -> None:
        """Start listing the first folders of ``todo`` (those the walk enters next)."""
        if self.pool is None:
            return
        ahead = self.ahead
        for t in todo:
            if len(ahead) >= SCAN_AHEAD:
                break
            if t[0] not in ahead:
                ahead[t[0]] = self.pool.submit(_list_packed, self.ctx, *t, self.store)

    def get(self, t: tuple[str, RelPath, _Ignores]) -> _Listing:
        f = self.ahead.pop(t[0], None)
        return f.result() if f is not None else _list_folder(self.ctx, *t)

    def close(self) -> None:
        if self.pool is not None:
            for f in self.ahead.values():
                f.cancel()
            self.pool.shutdown(wait=True)
            self.ahead.clear()


def ingest_tree(
    store: Store,
    path: str | os.PathLike[str],
    *,
    wildcard: str | list[str] | None = None,
    recursive: bool = True,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
) -> TreeResult:
    """Scan and ingest ``path`` folder by folder, building its tree bottom-up.

    Selection is :func:`scan`'s (wildcards, ``.dsvcignore``, symlinks, the store's own
    folder). Memory is bounded by the largest folder, never by the number of files: a
    folder's listing is held only until its tree is written. A folder whose listing
    (names and stats of its files, ids of its subtrees) equals its summary from the last
    ingest is not looked at further: its tree id is reused (one lookup). In a changed
    folder each file whose stat is unchanged reuses its entry from the summary (or, with
    no summary, from the stat cache); only the others are read. A path that is a file
    gives a tree holding just that file.

    Trees and summaries go through the ingest writer after the content they name, so
    a killed run leaves nothing that refers to missing content. The caller holds the
    store's lease (gc drops the summaries whose trees it sweeps, before it sweeps).
    """
    root = os.path.abspath(os.fspath(path))
    ing = Ingestor(store, max_workers=max_workers, progress=progress)
    stats = IngestStats()
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise NotFoundError(f"cannot add {root!r}: no such file or folder") from None
    if not statmod.S_ISDIR(st.st_mode):
        sr = scan(root, wildcard=wildcard, recursive=recursive, store=store)
        entries, stats = ing.ingest(sr.items)
        stats.skipped[:0] = sr.skipped
        if not entries:
            return TreeResult(None, 0, stats)
        with store.batch() as b:  # after ingest committed the content
            tid = b.put_tree({rel[-1]: e for rel, e in entries.items()})
        size = sum(e.size for e in entries.values())
        return TreeResult(Entry(KIND_TREE, tid, size, MODE_DIR), len(entries), stats)
    # the checks and the selection rules of scan, applied folder by folder
    _refuse_store_db(root, store)
    patterns = [wildcard] if isinstance(wildcard, str) else list(wildcard or [])
    check_wildcards(patterns)
    ctx = _ScanCtx(root, os.path.realpath(root), _store_dirs(store), patterns, recursive)
    skipped: list[tuple[str, str]] = []
    scanner = _Scanner(ctx, store=store)
    try:
        with ing.session() as ses:
            build = _TreeBuilder(store, ing, ses, stats)
            first = _list_folder(ctx, root, (), ())
            skipped += first.skipped
            scanner.prefetch(first.subdirs)
            stack = [_Folder(first)]
            top: tuple[Entry | None, int] = (None, 0)
            while stack:
                fr = stack[-1]
                subdirs = fr.listing.subdirs
                if fr.next < len(subdirs):
                    ls = scanner.get(subdirs[fr.next])
                    fr.next += 1
                    skipped += ls.skipped
                    # the folders walked next: this one's subfolders, then its siblings
                    scanner.prefetch(ls.subdirs)
                    scanner.prefetch(subdirs[fr.next : fr.next + SCAN_AHEAD])
                    stack.append(_Folder(ls))
                    continue
                stack.pop()
                with _gc_paused():
                    done = build.close(fr)
                if not stack:
                    top = done
                elif done[0] is not None:
                    stack[-1].kids[os.path.basename(fr.path)] = done  # type: ignore[assignment]
    finally:
        scanner.close()
    stats.new_chunks = ses.writer.new_chunks
    stats.new_bytes_stored = ses.writer.new_bytes
    stats.skipped[:0] = skipped
    return TreeResult(top[0], top[1], stats, build.changes)


class _Splice:
    """A changed folder with the same files in the same order as its summary and no
    subfolder (files rewritten in place: the common change), taken on the packed
    listing: the stats that changed are the listing items whose bytes differ from the
    summary's (both packed by one packer), found in C (``dsvc._treerows``), and its new
    tree is the old one with the read files' rows replaced. Nothing is decoded for the
    files not read: 1% of 1M files rewritten across 1,000 folders, each folder cost
    ~9 ms in Python before (docs/performance.md, "Changed folders and diffs on the
    encoded bytes").

    Taken only when no file of the folder is racily clean (its newest mtime is older
    than the widest racy window), so the new summary holds every stat as listed."""

    __slots__ = ("kinds", "ids", "todo_at")

    def __init__(
        self, kinds: list[int | None], ids: list[bytes | None], todo_at: list[int]
    ) -> None:
        self.kinds = kinds
        self.ids = ids
        self.todo_at = todo_at

    @classmethod
    def of(cls, old: DirSummary, ls: _Listing) -> _Splice | None:
        """The folder's splice, or None when it is not that case (or the C module is
        not in use): :meth:`_TreeBuilder._known` then compares it in Python."""
        tr = objects.treerows
        if tr is None or not ls.count:
            return None
        got = _Body.columns(old.body)
        if got is None or got[1] is None:
            return None
        head, ids = got
        packed_names, packed_sigs = ls.packed()
        names_end = tr.skip(head, 1) if head[:1] == b"\x93" else None
        if names_end is None or head[1:names_end] != packed_names:
            return None
        sigs_end = tr.skip(head, names_end)
        if sigs_end is None:
            return None
        newest = tr.max_field(packed_sigs, 1)
        if newest is None or newest >= time.time_ns() - _RACY_WIDE:
            return None
        todo_at = tr.array_delta(memoryview(head)[names_end:sigs_end], packed_sigs)
        try:
            kinds = msgpack.unpackb(memoryview(head)[sigs_end:], use_list=True)
        except ValueError:
            return None
        if todo_at is None or not isinstance(kinds, list) or not len(kinds) == len(ids) == ls.count:
            return None
        ids_at: list[bytes | None] = list(ids)
        for i in todo_at:
            kinds[i] = ids_at[i] = None
        return cls(kinds, ids_at, todo_at)

    def todo_files(self, ls: _Listing) -> Iterator[tuple[str, Sig]]:
        """The name and stat of each file to read."""
        tr = objects.treerows
        packed_names, packed_sigs = ls.packed()
        names = tr.array_items(packed_names, self.todo_at)
        sigs = tr.array_items(packed_sigs, self.todo_at)
        for n, s in zip(names, sigs):
            yield msgpack.unpackb(n, raw=False), msgpack.unpackb(s, use_list=False)


class _TreeBuilder:
    """Turns one walked folder into its tree entry (see :func:`ingest_tree`)."""

    def __init__(self, store: Store, ing: Ingestor, ses: _Session, stats: IngestStats) -> None:
        self.store = store
        self.ing = ing
        self.ses = ses
        self.stats = stats
        # checking that content is present maps the store's pages into this process:
        # unmapped again every so often, so they never pile up as RSS (see _MapTrimmer).
        # A changed folder maps ~1 MB (its summary, its new files' chunk lookups), so
        # looking every 16 calls overshoots the budget by a few MB at most
        self._trimmer = _MapTrimmer(store, check_every=16)
        # the caller's lease keeps gc and fsck --repair (the deleters) away until the
        # walk ends, so the epoch read now holds for every summary written by it
        with store.reader() as r:
            self.epoch = r.content_epoch()
        self.changes: dict[tuple[bytes, bytes], tuple[int, int, int]] = {}

    def close(self, fr: _Folder) -> tuple[Entry | None, int]:
        stats = self.stats
        ls = fr.listing
        nfound = ls.count
        # the listing as scanned: the files' names and their (size, mtime_ns, ctime_ns,
        # ino, dev, st_mode) in the order the file system lists them (not sorted: a
        # listing in another order only misses, and is then compared file by file),
        # and each subfolder's tree
        kids = sorted((n, e.id) for n, (e, _) in fr.kids.items())
        # msgpack concatenates: an array's bytes are its header and its items' bytes,
        # so the names and stats packed once serve the digest and the body
        packed_names, packed_sigs = ls.packed()
        h = xxhash.xxh3_128(b"\x93")
        h.update(packed_names)
        h.update(packed_sigs)
        h.update(_packb(kids))
        digest = h.digest()  # = xxh3_128(packb([names, sigs, kids]))
        pathb = os.fsencode(fr.path)
        key = dirsum_key(pathb)
        old = self._summary(key, pathb, ls)
        nbytes = ls.nbytes
        below = sum(n for _, n in fr.kids.values())
        stats.files += nfound
        stats.bytes += nbytes
        if old is not None and old.digest == digest:
            stats.cached_files += nfound
            self.ing.progress(nbytes)
            if old.epoch != self.epoch:  # checked present now: no need to look again
                value = old._replace(epoch=self.epoch).encode()
                self.ses.writer.put([("d", key, value)], len(value))
            return Entry(KIND_TREE, old.tree, old.size, MODE_DIR), nfound + below
        # a changed folder: per file (listing order) its entry's kind and id, None
        # where it must be read; the common case on the packed listing (_Splice)
        splice = _Splice.of(old, ls) if old is not None and not fr.kids else None
        same: _Body | None = None
        if splice is not None:
            kinds, ids, todo_at = splice.kinds, splice.ids, splice.todo_at
            todo = [ls.item(n, s) for n, s in splice.todo_files(ls)]
        else:
            kinds, ids, todo_at, same = self._known(old, ls)
            todo = [ls.item(ls.names[i], ls.sigs[i]) for i in todo_at]
        stats.cached_files += nfound - len(todo_at)
        self.ing.progress(nbytes - sum(it.size for it in todo))
        keep: Sequence[int] | None = None  # the files in the tree, when not all of them
        if todo:
            if len(todo) <= _INLINE_FILES and max(it.size for it in todo) <= SMALL_FILE:
                # a few small files (a folder with a few changes): read here, not handed
                # to the pool and waited for (two thread switches per folder)
                done, skipped = self.ing._run_small(todo, self.ses.writer)
            else:
                done, skipped = self.ing.read_files(self.ses, todo)
            stats.skipped += skipped
            stats.read_bytes += sum(it.size for it in todo)
            for i, it in zip(todo_at, todo):
                e = done.get(it.rel)
                if e is not None:
                    kinds[i] = e.kind
                    ids[i] = e.id
            if None in kinds:  # skipped: vanished or changed while read
                keep = [i for i, k in enumerate(kinds) if k is not None]
        if splice is not None and old is not None and keep is None:
            done_splice = self._spliced(splice, old, ls, todo, key, pathb, digest)
            if done_splice is not None:
                return done_splice
        # the files as Python objects from here on
        names = ls.names
        sigs = ls.sigs
        if keep is not None:
            names, sigs = [names[i] for i in keep], [sigs[i] for i in keep]
            kinds, ids = [kinds[i] for i in keep], [ids[i] for i in keep]
        sizes = list(map(_SIG_SIZE, sigs))
        st_modes = list(map(_SIG_MODE, sigs))
        modes = list(map({m: _mode(m) for m in set(st_modes)}.__getitem__, st_modes))
        # every kind and id is set now (the files not read are gone with ``keep``)
        rows: list[tuple[str, int, bytes, int, int]]
        rows = list(zip(names, kinds, ids, sizes, modes))  # type: ignore[arg-type]
        rows += [(n, KIND_TREE, e.id, e.size, MODE_DIR) for n, (e, _) in fr.kids.items()]
        if not rows:
            return None, 0
        data = encode_tree_rows(rows)
        tid = object_id(TAG_TREE, data)
        if same is not None and old is not None and keep is None and not fr.kids:
            self._count_changes(old, same, tid, todo_at, kinds, ids, sizes, modes)
        size = sum(sizes) + sum(e.size for e, _ in fr.kids.values())
        nfiles = len(names) + below
        # racily clean files keep no stat in the body (see _racy): never trusted. None
        # can be when the newest mtime is older than the widest window
        now = time.time_ns()
        body_sigs: Sequence[Sig | None] = sigs
        if max(map(_SIG_MTIME, sigs), default=0) >= now - _RACY_WIDE:
            body_sigs = [None if _racy_mtime(s[1], now) else s for s in sigs]
        trusted = keep is None and None not in body_sigs  # nothing racy, nothing skipped
        if keep is None and body_sigs is sigs:
            head = b"\x93" + packed_names + packed_sigs + _packb(kinds)
        else:
            head = _packb([names, body_sigs, kinds])
        body = _Body.encode(head, ids)  # type: ignore[arg-type]
        value = DirSummary(
            digest if trusted else None, tid, size, nfiles, pathb, body, self.epoch
        ).encode()
        # queued after the content of every file in it (the writer keeps queue order)
        self.ses.writer.put([("t", tid, data), ("d", key, value)], len(data) + len(value))
        # the summaries and content read for changed folders map the store's pages
        # (1% of 1M files changed: peak RSS 389 MB without this, 336 MB with it)
        self._trimmer.trim_over(MAPPED_BUDGET)
        return Entry(KIND_TREE, tid, size, MODE_DIR), nfiles

    def _spliced(
        self,
        splice: _Splice,
        old: DirSummary,
        ls: _Listing,
        todo: list[ScanItem],
        key: bytes,
        pathb: bytes,
        digest: bytes,
    ) -> tuple[Entry, int] | None:
        """:meth:`close` of a :class:`_Splice` folder whose files were all read: the old
        tree with the read files' rows replaced, and the summary of the new listing;
        None when the old tree does not have the summary's rows (close() then builds
        the tree from every row)."""
        rows = [
            (it.rel[-1], splice.kinds[i], splice.ids[i], it.size, it.mode)
            for i, it in zip(splice.todo_at, todo)
        ]
        new_rows = encode_tree_rows(rows)  # type: ignore[arg-type]
        old_tree = self.store.get_object(old.tree, TAG_TREE)
        got = objects.treerows.splice_rows(old_tree, new_rows, ls.count)
        if got is None:
            return None
        data, modified = got
        tid = object_id(TAG_TREE, data)
        if old.tree != tid and old.files == ls.count and len(self.changes) < MAX_KNOWN_CHANGES:
            self.changes[(old.tree, tid)] = (0, 0, modified)
        # nothing racy (_Splice.of), nothing skipped: the listing is the summary's
        packed_names, packed_sigs = ls.packed()
        head = b"\x93" + packed_names + packed_sigs + _packb(splice.kinds)
        body = _Body.encode(head, splice.ids)  # type: ignore[arg-type]
        value = DirSummary(digest, tid, ls.nbytes, ls.count, pathb, body, self.epoch).encode()
        self.ses.writer.put([("t", tid, data), ("d", key, value)], len(data) + len(value))
        self._trimmer.trim_over(MAPPED_BUDGET)
        return Entry(KIND_TREE, tid, ls.nbytes, MODE_DIR), ls.count

    def _summary(self, key: bytes, pathb: bytes, ls: _Listing) -> DirSummary | None:
        """The folder's summary, if its tree and the content of every file it lists are
        still stored (the stat cache's rule: content that ``gc`` or ``fsck --repair``
        dropped makes the files be read again). The scan thread reads it ahead: the
        caller's lease keeps the deleters away until the walk ends, so what it found
        still holds here.

        Content leaves the store only through a write batch that deletes, which bumps
        the store's content epoch in the same transaction; while the epoch is the one
        the summary recorded, its content is known present without a lookup. Looking
        every chunk up costs more than the lstat of the file: each lookup maps 64 KiB
        of the store (the kernel's fault-around), so a run over 1M files would map the
        whole chunks database, or fault it in again and again if unmapped to bound RSS
        (measured: +6 us per file). After a deletion the ids are looked up once, and the
        summary takes the new epoch."""
        if ls.summary is not UNREAD:  # read by the scan thread
            old = cast(DirSummary | None, ls.summary)
            if old is None or old.epoch == self.epoch:
                return old
        with self.store.reader() as r:
            old = _read_summary(r, key, pathb)
            if old is None or old.epoch == self.epoch:
                return old
            body = _Body.decode(old.body)
            if body is None:
                return None
            chunks, blobs = body.content()
            if not all(map(r.has_chunk, chunks)):
                return None
            for bid in blobs:
                if not _content_present(KIND_FILE, bid, r):
                    return None
        self._trimmer.trim_over(MAPPED_BUDGET)
        return old

    def _count_changes(
        self,
        old: DirSummary,
        body: _Body,
        tid: bytes,
        todo_at: list[int],
        kinds: Sequence[int | None],
        ids: Sequence[bytes | None],
        sizes: list[int],
        modes: list[int],
    ) -> None:
        """Record the files modified from ``old.tree`` to ``tid`` (a folder of files
        only whose names, in order, are those of ``body``: only the files read can
        differ). Nothing is recorded unless every entry of ``old.tree`` is known from
        ``body``: no subfolder in it, and a stat (size and mode) for each file read."""
        if old.tree == tid or old.files != len(body.names):
            return
        if len(self.changes) >= MAX_KNOWN_CHANGES:
            return
        modified = 0
        for i in todo_at:
            sig = body.sigs[i]
            if sig is None:  # racily clean then: its size and mode are not in the body
                return
            was = (body.kinds[i], body.ids[i], sig[0], _mode(sig[5]))
            modified += was != (kinds[i], ids[i], sizes[i], modes[i])
        self.changes[(old.tree, tid)] = (0, 0, modified)

    def _known(
        self, old: DirSummary | None, ls: _Listing
    ) -> tuple[list[int | None], list[bytes | None], list[int], _Body | None]:
        """Per file of ``ls`` (listing order) the kind and id of its entry when its stat
        is unchanged, None otherwise; the positions of the Nones (the files to read);
        and the summary's body when it lists the same names in the same order.
        """
        n = len(ls.names)
        body = _Body.decode(old.body) if old is not None else None
        if body is None:  # no summary: the stat cache answers file by file
            if not self.ing.use_stat_cache:
                return [None] * n, [None] * n, list(range(n)), None
            found = stat_cache_entries(self.store, ls.items())
            self._trimmer.trim_over(MAPPED_BUDGET)  # its content checks map the store
            kinds = [None if e is None else e.kind for e in found]
            ids = [None if e is None else e.id for e in found]
            return kinds, ids, [i for i, e in enumerate(found) if e is None], None
        # a layout-1 summary's stats have no st_mode (5 elements): compared without it
        partial = bool(body.sigs) and len(body.sigs[0] or ()) == 5
        if not partial and tuple(ls.names) == body.names:
            # the same files in the same order (files rewritten in place, the common
            # change): their stats compare in one C-level pass
            same = list(map(operator.eq, ls.sigs, body.sigs))
            kinds_k: list[int | None] = list(body.kinds)
            ids_k: list[bytes | None] = list(body.ids)
            todo_at = list(itertools.compress(range(n), map(operator.not_, same)))
            for i in todo_at:
                kinds_k[i] = ids_k[i] = None
            return kinds_k, ids_k, todo_at, body
        at = dict(zip(body.names, range(len(body.names))))
        kinds_k, ids_k, todo_at = [], [], []
        for i, (name, sig) in enumerate(zip(ls.names, ls.sigs)):
            j = at.get(name)
            if j is not None and body.sigs[j] == (sig[:5] if partial else sig):
                kinds_k.append(body.kinds[j])
                ids_k.append(body.ids[j])
            else:
                kinds_k.append(None)
                ids_k.append(None)
                todo_at.append(i)
        return kinds_k, ids_k, todo_at, None
