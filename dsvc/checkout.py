"""Materializing files of a tree into a folder.

Rules (checked by tests, relied on by the dataset layer):

* **Atomic**: the folder is built under a temporary name beside the target and renamed
  into place, so a reader (another process included) sees no folder or a whole one. A
  builder that loses the race to another one discards its copy and uses the winner's.
* **Contained**: every path is joined from validated names (no ``/``, ``.``, ``..``,
  NUL; trees from a remote are validated when decoded) and checked to stay below the
  target, so no tree, however hostile, writes outside the folder asked for.
* **Verified**: chunks are checked against their ids as they are read.
* **Shared**: with a content cache, each distinct file content is written once into
  ``cache/content`` (read-only) and hard-linked into every copy that holds it; a link
  that cannot be made (another filesystem, link limit) falls back to a copy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsvc import codec
from dsvc.errors import IntegrityError, InvalidPathError, ObjectNotFoundError, StateError
from dsvc.ids import TAG_BLOB, TAG_CHUNK, to_hex
from dsvc.objects import KIND_CHUNKFILE, KIND_FILE, MODE_EXEC, Blob, Entry, validate_name
from dsvc.store import Store

RelPath = tuple[str, ...]
ProgressFn = Callable[[int], None]
#: chunk ids -> their verified payloads (content the store does not hold)
FetchFn = Callable[[list[bytes]], Mapping[bytes, Any]]

_GROUP_BYTES = 8 << 20
_GROUP_FILES = 256


@dataclass
class CheckoutStats:
    files: int = 0
    bytes: int = 0
    linked: int = 0  # files hard-linked from the content cache
    written: int = 0  # files whose bytes were written by this call


def safe_join(root: str, rel: RelPath) -> str:
    """Join validated names below ``root``; refuses anything that would escape it."""
    if not rel:
        raise InvalidPathError(f"empty path below {root!r}")
    for name in rel:
        validate_name(name)
    full = os.path.join(root, *rel)
    if os.path.commonpath([root, os.path.normpath(full)]) != root:
        raise InvalidPathError(f"path {'/'.join(rel)!r} would escape {root!r}")
    return full


def _joiner(root: str) -> Callable[[RelPath], str]:
    """``safe_join`` for many paths below one ``root``: each distinct name is validated
    once. A validated name holds no ``/``, ``\\`` or NUL and is not ``.`` or ``..``,
    so joining such names below ``root`` cannot leave it (what ``safe_join`` checks)."""
    ok: set[str] = set()
    prefix = root.rstrip(os.sep) + os.sep

    def join(rel: RelPath) -> str:
        if not rel:
            raise InvalidPathError(f"empty path below {root!r}")
        for name in rel:
            if name not in ok:
                validate_name(name)
                ok.add(name)
        return prefix + "/".join(rel)

    return join


_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _file_chunks(store: Store, txn: Any, entry: Entry) -> list[tuple[bytes, int]]:
    if entry.kind == KIND_CHUNKFILE:
        return [(entry.id, entry.size)]
    if entry.kind != KIND_FILE:
        raise ValueError("not a file entry")
    raw = txn.get(entry.id, db=store.db("objects"))
    if raw is None:
        raise ObjectNotFoundError(
            f"blob {to_hex(entry.id)} is not in the store {store.path}", entry.id
        )
    if bytes(raw[:1]) != TAG_BLOB:
        raise IntegrityError(
            f"object {to_hex(entry.id)} has type {bytes(raw[:1])!r}, expected {TAG_BLOB!r}",
            entry.id,
        )
    data = codec.decode_frame(memoryview(raw)[1:], TAG_BLOB, entry.id)
    return list(Blob.decode(data, entry.id).chunks)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    n = os.write(fd, data)
    if n < len(data):
        mv = memoryview(data)
        while n < len(mv):
            n += os.write(fd, mv[n:])


def _write_file_txn(
    store: Store, txn: Any, entry: Entry, dest: str, fetched: Mapping[bytes, Any] | None = None
) -> None:
    """Write ``entry``'s content to a new file ``dest``, reading chunks in ``txn`` (a
    read transaction with ``buffers=True``: raw chunks go from the map to the file
    without a copy). Every chunk is verified before a byte of it is written: those of
    the store here, those in ``fetched`` (payloads read from a remote) by the fetcher."""
    chunks = _file_chunks(store, txn, entry)
    # O_EXCL + O_NOFOLLOW: never write through a link or over something already there
    fd = os.open(dest, _O_CREATE, 0o644)
    try:
        cdb = store.db("chunks")
        for cid, _ in chunks:
            payload = fetched.get(cid) if fetched else None
            if payload is not None:
                _write_all(fd, payload)
                continue
            frame = txn.get(cid, db=cdb)
            if frame is None:
                raise ObjectNotFoundError(
                    f"chunk {to_hex(cid)} is not in the store {store.path}", cid
                )
            _write_all(fd, codec.decode_frame_view(frame, TAG_CHUNK, cid))
    except OSError as e:
        if e.filename is None:  # os.write names no file: say which one a full disk refused
            e.filename = dest
        raise
    finally:
        os.close(fd)
    if entry.mode == MODE_EXEC:
        os.chmod(dest, 0o755)


def _write_file(store: Store, entry: Entry, dest: str) -> None:
    with store._begin(buffers=True) as txn:
        _write_file_txn(store, txn, entry, dest)


class ContentCache:
    """Read-only files named by content id, hard-linked into local copies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root).rstrip(os.sep) + os.sep
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, entry: Entry) -> str:
        h = entry.id.hex()
        return f"{self._prefix}{h[:2]}/{h}{'x' if entry.mode == MODE_EXEC else ''}"

    def ensure(self, store: Store, entry: Entry, txn: Any = None) -> str:
        """Path of a cached copy of ``entry``'s content, writing it first if missing.

        A cached file is published with ``link`` and never replaced once there: another
        process may be linking it at that moment, and ``link`` to a name that is being
        renamed over can fail with ENOENT.
        """
        p = self.path_for(entry)
        if os.path.exists(p):
            return p
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex}"
        try:
            if txn is None:
                _write_file(store, entry, tmp)
            else:
                _write_file_txn(store, txn, entry, tmp)
            os.chmod(tmp, 0o555 if entry.mode == MODE_EXEC else 0o444)
            try:
                os.link(tmp, p)
            except FileExistsError:
                pass  # same content, written by someone else first
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return p


#: link failures that mean "copy instead" (another filesystem, link limit, no links)
_NO_LINK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)


def _place(
    store: Store,
    cache: ContentCache | None,
    entry: Entry,
    dest: str,
    txn: Any,
    fetched: Mapping[bytes, Any] | None = None,
) -> bool:
    """Put one file at ``dest``; returns True when it was linked from the cache."""
    if cache is None:
        _write_file_txn(store, txn, entry, dest, fetched)
        return False
    src = cache.path_for(entry)
    try:  # link first: for content already cached (the common case) one syscall
        os.link(src, dest)
        return True
    except FileNotFoundError:
        cache.ensure(store, entry, txn)
        try:
            os.link(src, dest)
            return True
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o555 if entry.mode == MODE_EXEC else 0o444)
    return False


def materialize(
    store: Store,
    files: Sequence[tuple[RelPath, Entry]],
    target: str | os.PathLike[str],
    *,
    content_cache: ContentCache | None = None,
    overwrite: bool = False,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
    fetch: FetchFn | None = None,
) -> CheckoutStats:
    """Write ``files`` into a new folder ``target``, atomically.

    ``fetch`` (ids -> verified payloads) supplies chunks the store lacks, group by
    group, so content from a remote goes straight into the files instead of through
    the store first (half the writes; nothing of it is kept in the store).

    If ``target`` already exists: with ``overwrite`` it is replaced (the old content is
    moved aside and removed only after the new folder is in place); an existing empty
    folder is simply replaced; otherwise StateError.
    """
    target = os.path.abspath(os.fspath(target))
    refuse_store_overlap(store, target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(target) and not overwrite and not _is_empty_dir(target):
        raise StateError(
            f"target folder {target!r} is not empty; pass overwrite=True to replace it"
        )
    tmp = os.path.join(parent, f".{os.path.basename(target)}.dsvc-tmp-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    lock = _claim(tmp)
    stats = CheckoutStats(files=len(files), bytes=sum(e.size for _, e in files))
    try:
        _fill(store, files, tmp, content_cache, max_workers, progress, stats, fetch)
        _swap_in(tmp, target, overwrite)
    except BaseException:
        remove_tree(tmp)
        raise
    finally:
        _release(lock)
    return stats


def materialize_shared(
    store: Store,
    files: Sequence[tuple[RelPath, Entry]],
    target: str | os.PathLike[str],
    *,
    content_cache: ContentCache,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[CheckoutStats, bool]:
    """Build a shared read-only copy at ``target`` unless one is already there.

    Safe with concurrent builders in several processes: the first rename wins and the
    others discard their work. Returns ``(stats, built_by_this_call)``.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.isdir(target):
        return CheckoutStats(), False
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.dsvc-tmp-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    lock = _claim(tmp)
    stats = CheckoutStats(files=len(files), bytes=sum(e.size for _, e in files))
    try:
        _fill(store, files, tmp, content_cache, max_workers, progress, stats)
        try:
            os.rename(tmp, target)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and os.path.isdir(target):
                remove_tree(tmp)
                return stats, False
            raise
    except BaseException:
        remove_tree(tmp)
        raise
    finally:
        _release(lock)
    return stats, True


def refuse_store_overlap(store: Store, target: str) -> None:
    """Refuse a writable copy's ``target`` that holds the store or lies inside it.

    Replacing such a folder would delete the store (``DSVC_HOME=./.dsvc`` and
    ``dsvc get --copy . --overwrite``), and writing inside it mixes user files with the
    store's own. Paths are compared after resolving symlinks, so an alias of the
    folder is refused too.
    """
    home = os.path.realpath(store.home)
    real = os.path.realpath(target)
    common = os.path.commonpath([home, real])
    if common not in (home, real):
        return
    where = "is" if real == home else ("holds" if common == real else "is inside")
    raise InvalidPathError(
        f"target folder {target!r} {where} the dsvc store {str(store.home)!r}; pick a "
        "folder outside the store (DSVC_HOME)"
    )


def _claim(tmp: str) -> int:
    """Lock the temporary folder ``tmp`` for as long as it is being built: ``gc``
    reclaims only temporary folders nobody holds (the kernel drops the lock of a
    killed builder). Returns the descriptor to pass to :func:`_release`."""
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child may share the descriptor
    os.close(fd)


def temp_in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the temporary folder ``path`` (see :func:`_claim`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _is_empty_dir(p: str) -> bool:
    return os.path.isdir(p) and not os.path.islink(p) and not os.listdir(p)


def _swap_in(tmp: str, target: str, overwrite: bool) -> None:
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if _is_empty_dir(target):
        os.rmdir(target)
        os.rename(tmp, target)
        return
    if not overwrite:  # appeared while we were building
        raise StateError(f"target folder {target!r} appeared while building; not overwriting")
    trash = f"{tmp}.old"
    os.rename(target, trash)
    os.rename(tmp, target)
    if os.path.isdir(trash) and not os.path.islink(trash):
        remove_tree(trash)
    else:
        os.unlink(trash)


def remove_tree(top: str | os.PathLike[str]) -> None:
    """``shutil.rmtree(top, ignore_errors=True)`` without recursion: rmtree recurses
    once per level, and a copy of a remote's tree may be thousands of folders deep.
    Read-only folders (cached copies) are made writable first."""
    stack: list[tuple[str, bool]] = [(os.fspath(top), False)]
    while stack:
        d, emptied = stack.pop()
        try:
            if emptied:
                os.rmdir(d)
            elif os.path.islink(d) or not os.path.isdir(d):
                os.unlink(d)
            else:
                os.chmod(d, 0o700)
                stack.append((d, True))
                with os.scandir(d) as it:
                    stack.extend((e.path, False) for e in it)
        except OSError:
            continue  # ignore_errors: what cannot be removed stays


def _makedirs(root: str, d: str) -> None:
    """``os.makedirs(d)`` below the existing ``root``, without recursion: os.makedirs
    recurses once per missing level, and a tree from a remote may be thousands deep."""
    missing = []
    while d != root and not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for m in reversed(missing):
        try:
            os.mkdir(m)
        except FileExistsError:
            if not os.path.isdir(m):
                raise


def _fill(
    store: Store,
    files: Sequence[tuple[RelPath, Entry]],
    root: str,
    cache: ContentCache | None,
    max_workers: int | None,
    progress: ProgressFn | None,
    stats: CheckoutStats,
    fetch: FetchFn | None = None,
) -> None:
    if fetch is not None and cache is not None:
        raise ValueError("fetch writes files directly; it does not fill a content cache")
    join = _joiner(root)
    dests = [join(rel) for rel, _ in files]
    for d in sorted({os.path.dirname(d) for d in dests}):
        if d != root:
            _makedirs(root, d)
    prog = progress or (lambda n: None)

    def run(idx: list[int]) -> tuple[int, int]:
        linked = 0
        nbytes = 0
        # one read snapshot per group; raw chunks are written straight from the map
        with store._begin(buffers=True) as txn:
            fetched = None
            if fetch is not None:
                cur = txn.cursor(db=store.db("chunks"))
                want = {
                    cid
                    for i in idx
                    for cid, _ in _file_chunks(store, txn, files[i][1])
                    if not cur.set_key(cid)
                }
                fetched = fetch(list(want)) if want else None
            for i in idx:
                entry = files[i][1]
                if _place(store, cache, entry, dests[i], txn, fetched):
                    linked += 1
                nbytes += entry.size
        prog(nbytes)
        return linked, len(idx)

    groups: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    for i, (_, e) in enumerate(files):
        cur.append(i)
        cur_bytes += e.size
        if cur_bytes >= _GROUP_BYTES or len(cur) >= _GROUP_FILES:
            groups.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        groups.append(cur)
    workers = min(max_workers or default_workers(), len(groups))
    if workers <= 1:
        for g in groups:
            linked, n = run(g)
            stats.linked += linked
            stats.written += n - linked
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="dsvc-checkout") as pool:
        for linked, n in pool.map(run, groups):
            stats.linked += linked
            stats.written += n - linked


def default_workers() -> int:
    """Threads for materializing: creating files and copying bytes release the GIL."""
    return min(32, (os.cpu_count() or 1) + 2)
