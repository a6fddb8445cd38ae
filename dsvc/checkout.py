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
  ``cache/content`` (read-only) and reflinked (``FICLONE``, where the filesystem can)
  or hard-linked into every copy that holds it; a link that cannot be made (another
  filesystem, link limit) falls back to a copy.
* **Checked when served**: a shared copy has a manifest (each file's size, mtime,
  ctime, inode once the copy was complete); :func:`serve_copy` compares them with one
  ``lstat`` per file and repairs what differs from the store, so a write in place to a
  hard link (root ignores read-only modes) does not reach other versions.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import itertools
import os
import shutil
import stat
import threading
import time
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from dsvc import fsbatch
from dsvc.errors import (
    OVERWRITE,
    InvalidPathError,
    ObjectNotFoundError,
    StateError,
)
from dsvc.ids import TAG_TREE
from dsvc.ingest import content_id
from dsvc.objects import (
    KIND_CHUNKFILE,
    KIND_EXTERNAL,
    KIND_TREE,
    MODE_EXEC,
    MODE_FILE,
    Entry,
    decode_tree,
    differing_entries,
    validate_name,
)
from dsvc.parallel import default_workers, group_by_bytes
from dsvc.store import Store, StoreReader

RelPath = tuple[str, ...]
ProgressFn = Callable[[int], None]
#: chunk ids -> their verified payloads (content the store does not hold)
FetchFn = Callable[[list[bytes]], Mapping[bytes, Any]]
#: files -> the same files, external links replaced by the entries of their content
ResolveFn = Callable[[list[tuple[RelPath, Entry]]], list[tuple[RelPath, Entry]]]
#: a batch of files -> the files to write (links resolved, content made local) and a
#: fetcher for chunks still remote (or None)
PrepareFn = Callable[
    [list[tuple[RelPath, Entry]]], tuple[list[tuple[RelPath, Entry]], FetchFn | None]
]

_GROUP_BYTES = 8 << 20
_GROUP_FILES = 256
#: files per batch of a copy built from a listing (``materialize``, partial copies):
#: memory holds one batch of the listing, whatever the size of the dataset
BATCH_FILES = 20_000
#: :func:`build_copy` writes files smaller than this straight into the copy instead of
#: publishing them in the content cache: on ext4 the extra hard link in a hashed cache
#: folder cost as much as creating the file (1M files of 160-800 bytes: 20.3 s of system
#: time per 100k files with the link, 10.5 s without; docs/performance.md). A child
#: version's copy still shares them, by linking from its parent's copy.
SMALL_FILE = 4096


class CacheLayout:
    """Where local copies live below ``DSVC_HOME/cache``; the one place that says so
    (``Dataset.get_local_copy``, :func:`serve_copy`, ``dsvc cache``, local gc and
    ``fsck --repair`` all take their paths from here):

    * ``datasets/<name>``: read-only copies; ``<name>`` is the dataset id, plus
      ``-sel-<hash>`` for a selection of files and ``-part-<i>-of-<n>`` for a part;
    * ``datasets/.<name>.dsvc-tmp-<uuid>``: a copy being built (locked by its builder);
    * ``manifests/<name>``: what each copy held when complete (:class:`Manifest`);
    * ``content/<hex[:2]>/<hex>[x]``: the content cache (:class:`ContentCache`).
    """

    TEMP_MARK = ".dsvc-tmp-"

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.root = Path(home) / "cache"
        self.copies = self.root / "datasets"
        self.content = self.root / "content"
        self.manifests = self.root / "manifests"

    @staticmethod
    def copy_name(
        dataset_id: str,
        files: Sequence[str] | None = None,
        part: int | None = None,
        num_parts: int | None = None,
    ) -> str:
        """The name of the copy of a dataset (or of a selection or part of it)."""
        name = dataset_id
        if files:
            key = "\0".join(sorted(files))
            name += "-sel-" + hashlib.sha256(key.encode()).hexdigest()[:12]
        if num_parts is not None or part is not None:
            name += f"-part-{part}-of-{num_parts}"
        return name

    @classmethod
    def dataset_of(cls, name: str) -> str | None:
        """The dataset id a copy named ``name`` belongs to; None for a temporary or
        hidden entry."""
        if name.startswith(".") or cls.TEMP_MARK in name:
            return None
        return name.split("-", 1)[0]

    @classmethod
    def is_temp(cls, name: str) -> bool:
        """Whether ``name`` is a copy (or content file) being built."""
        return cls.TEMP_MARK in name

    @classmethod
    def temp_beside(cls, target: str) -> str:
        """A fresh temporary name for building ``target`` beside it (then renamed)."""
        parent, base = os.path.split(target)
        return os.path.join(parent, f".{base}{cls.TEMP_MARK}{uuid.uuid4().hex}")

    def copy_path(self, name: str) -> Path:
        return self.copies / name

    def manifest_path(self, name: str) -> Path:
        return self.manifests / name

    def content_cache(self) -> ContentCache:
        return ContentCache(self.content)


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


_O_CREATE = fsbatch.O_CREATE_NEW


def _write_all(fd: int, data: bytes | memoryview) -> None:
    n = os.write(fd, data)
    if n < len(data):
        mv = memoryview(data)
        while n < len(mv):
            n += os.write(fd, mv[n:])


def _write_file_txn(
    store: Store,
    txn: StoreReader,
    entry: Entry,
    dest: str,
    fetched: Mapping[bytes, Any] | None = None,
) -> None:
    """Write ``entry``'s content to a new file ``dest``, reading chunks through ``txn``
    (a reader with ``buffers=True``: raw chunks go from the map to the file without a
    copy). Every chunk is verified before a byte of it is written: those of the store
    by the reader, those in ``fetched`` (payloads read from a remote) by the fetcher."""
    chunks = txn.file_chunks(entry)
    # O_EXCL + O_NOFOLLOW: never write through a link or over something already there
    fd = os.open(dest, _O_CREATE, 0o644)
    try:
        for cid, _ in chunks:
            payload = fetched.get(cid) if fetched else None
            _write_all(fd, payload if payload is not None else txn.chunk(cid))
    except OSError as e:
        if e.filename is None:  # os.write names no file: say which one a full disk refused
            e.filename = dest
        raise
    finally:
        os.close(fd)
    if entry.mode == MODE_EXEC:
        os.chmod(dest, 0o755)


def _write_file(store: Store, entry: Entry, dest: str) -> None:
    with store.reader(buffers=True) as txn:
        _write_file_txn(store, txn, entry, dest)


#: FICLONE (linux/fs.h): make ``dest`` share ``src``'s blocks, copy-on-write
_FICLONE = 0x40049409
#: clone failures that mean "this filesystem (pair) has no reflinks": link instead
_NO_CLONE = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM)
_NS = 1_000_000_000


def _sentinel_ns(cid: bytes) -> int:
    """The nanoseconds part dsvc gives a cache file's mtime, derived from its content id.

    A write to the file (or to any hard link of it) sets the mtime to "now", whose
    nanoseconds match this value with probability 1e-9, so one ``stat`` tells a cache
    file, or a copy linked or cloned from it, that was changed after dsvc wrote it.
    """
    return int.from_bytes(cid[:4], "big") % _NS


def _keeps_mtime_ns(folder: Path) -> bool:
    """Whether files in ``folder`` keep the nanoseconds of an mtime set on them (ext3,
    FAT, some network filesystems round to seconds or coarser)."""
    probe = folder / f".mtime-probe-{uuid.uuid4().hex}"
    try:
        probe.touch()
        want = 1_000_000_000 * 1_600_000_000 + 123_456_789
        os.utime(probe, ns=(want, want))
        return os.stat(probe).st_mtime_ns == want
    except OSError:
        return False
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


class ContentCache:
    """Read-only files named by content id, shared by local copies: reflinked where the
    filesystem can (each copy its own inode, blocks shared copy-on-write), hard-linked
    otherwise (one inode for every copy of a content).

    Each file's mtime carries a sentinel (:func:`_sentinel_ns`), so a file changed in
    place (root ignores the read-only mode) is recognised by a ``stat`` and rewritten
    from the store instead of being linked into more copies.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root).rstrip(os.sep) + os.sep
        root.mkdir(parents=True, exist_ok=True)
        #: False once a clone failed: this filesystem has no reflinks (tests set it)
        self.reflink = os.environ.get("DSVC_REFLINK", "1") != "0"
        #: False on filesystems that drop mtime nanoseconds (then only sizes are checked)
        self.sentinel = _keeps_mtime_ns(root)

    def path_for(self, entry: Entry) -> str:
        h = entry.id.hex()
        return f"{self._prefix}{h[:2]}/{h}{'x' if entry.mode == MODE_EXEC else ''}"

    def valid(self, st: os.stat_result | fsbatch.Written, entry: Entry) -> bool:
        """Whether a file with stat ``st`` is an unchanged cache file of ``entry`` (or a
        hard link or clone of one): regular, right size, sentinel mtime."""
        return (
            stat.S_ISREG(st.st_mode)
            and st.st_size == entry.size
            and (not self.sentinel or st.st_mtime_ns % _NS == _sentinel_ns(entry.id))
        )

    def ensure(self, store: Store, entry: Entry, txn: StoreReader | None = None) -> str:
        """Path of a cached copy of ``entry``'s content, writing it first if missing.

        A cached file is published with ``link`` and never renamed over: another
        process may be linking it at that moment, and ``link`` to a name that is being
        renamed over can fail with ENOENT. A damaged one is unlinked first
        (:meth:`discard`), which linkers handle like a missing one.
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
            mtime = (time.time_ns() // _NS) * _NS + _sentinel_ns(entry.id)
            os.utime(tmp, ns=(mtime, mtime))
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

    def discard(self, entry: Entry) -> None:
        """Drop a damaged cache file (copies that link it keep their link until they are
        checked and repaired)."""
        try:
            os.unlink(self.path_for(entry))
        except FileNotFoundError:
            pass

    def clone(self, src: str, dest: str, entry: Entry) -> bool:
        """Reflink ``src`` to a new file ``dest`` (same mode and mtime); False when the
        filesystem cannot (then :attr:`reflink` turns off and nothing is left at dest)."""
        if not self.reflink:
            return False
        sfd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            dfd = os.open(dest, _O_CREATE, 0o644)
            try:
                fcntl.ioctl(dfd, _FICLONE, sfd)
                cloned = True
            except OSError as e:
                if e.errno not in _NO_CLONE:
                    raise
                cloned = False
            finally:
                os.close(dfd)
            if not cloned:
                os.unlink(dest)
                self.reflink = False
                return False
            st = os.fstat(sfd)
            os.chmod(dest, 0o555 if entry.mode == MODE_EXEC else 0o444)
            os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
            return True
        finally:
            os.close(sfd)


#: link failures that mean "copy instead" (another filesystem, link limit, no links)
_NO_LINK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)


def _place(
    store: Store,
    cache: ContentCache | None,
    entry: Entry,
    dest: str,
    txn: StoreReader,
    fetched: Mapping[bytes, Any] | None = None,
) -> bool:
    """Put one file at ``dest``; returns True when it was shared from the cache (a
    reflink or a hard link)."""
    if cache is None:
        _write_file_txn(store, txn, entry, dest, fetched)
        return False
    src = cache.path_for(entry)
    for attempt in range(2):
        try:  # for content already cached (the common case) one or two syscalls
            if cache.clone(src, dest, entry):
                return True
            os.link(src, dest)
            return True
        except FileNotFoundError:
            if attempt:
                raise
            cache.ensure(store, entry, txn)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            break
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o555 if entry.mode == MODE_EXEC else 0o444)
    st = os.stat(src)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # keeps the sentinel
    return False


# -- cached copies: manifests, checks, repairs --------------------------------------------


class Manifest:
    """What a cached copy held when it was complete: per file its path, tree entry
    (kind, id, size, mode) and ``lstat`` (inode, mtime_ns, ctime_ns, link count).

    Stored column by column (paths joined by NUL, which no name holds; numbers as
    machine arrays), so 100,000 files load in a few milliseconds. A manifest file is a
    stream of such parts, one per folder for copies built folder by folder (so a check
    holds one folder in memory, whatever the size of the copy).
    """

    def __init__(self, paths: list[str], entries: list[Entry]) -> None:
        self.paths = paths
        self.ids = b"".join(e.id for e in entries)
        self.kinds = array("B", [e.kind for e in entries])
        self.sizes = array("Q", [e.size for e in entries])
        self.modes = array("I", [e.mode for e in entries])
        n = len(paths)
        self.inos = array("Q", bytes(8 * n))
        self.mtimes = array("q", bytes(8 * n))
        self.ctimes = array("q", bytes(8 * n))
        # 0: unknown (a version 1 manifest), so a ctime change is always hashed
        self.nlinks = array("I", bytes(4 * n))

    def entry(self, i: int) -> Entry:
        return Entry(self.kinds[i], self.ids[16 * i : 16 * i + 16], self.sizes[i], self.modes[i])

    def set_stat(self, i: int, st: os.stat_result | fsbatch.Written | None) -> None:
        self.inos[i] = st.st_ino if st else 0
        self.mtimes[i] = st.st_mtime_ns if st else 0
        self.ctimes[i] = st.st_ctime_ns if st else 0
        self.nlinks[i] = min(st.st_nlink, 0xFFFFFFFF) if st else 0

    def _doc(self) -> dict[str, Any]:
        cols = {k: getattr(self, k).tobytes() for k in _COLUMNS}
        return {"paths": "\0".join(self.paths), "ids": self.ids, **cols}

    def dump(self) -> bytes:
        """A whole manifest file holding just this part."""
        return _MANIFEST_HEADER + self.dump_part()

    def dump_part(self) -> bytes:
        return msgpack.packb(self._doc(), use_bin_type=True)

    @classmethod
    def load(cls, data: bytes) -> Manifest:
        """A manifest file as one part (all its parts joined)."""
        return cls.join(list(_parts(msgpack.Unpacker(io.BytesIO(data), raw=False))))

    @classmethod
    def from_doc(cls, doc: Any) -> Manifest:
        m = cls.__new__(cls)
        m.paths = doc["paths"].split("\0") if doc["paths"] else []
        m.ids = doc["ids"]
        for k, code in _COLUMNS.items():
            col = array(code)
            if k == "nlinks" and k not in doc:  # version 1
                col.frombytes(bytes(col.itemsize * len(m.paths)))
            else:
                col.frombytes(doc[k])
            if len(col) != len(m.paths):
                raise ValueError(f"manifest column {k} has {len(col)} values")
            setattr(m, k, col)
        if len(m.ids) != 16 * len(m.paths):
            raise ValueError("manifest ids do not match its paths")
        return m

    @classmethod
    def join(cls, parts: list[Manifest]) -> Manifest:
        m = cls([], [])
        for p in parts:
            m.paths += p.paths
            m.ids += p.ids
            for k in _COLUMNS:
                getattr(m, k).extend(getattr(p, k))
        return m


_COLUMNS = {
    "kinds": "B",
    "sizes": "Q",
    "modes": "I",
    "inos": "Q",
    "mtimes": "q",
    "ctimes": "q",
    "nlinks": "I",
}
#: a manifest file (version 2): this header, then one msgpack map per part
_MANIFEST_HEADER = msgpack.packb({"v": 2})


def _parts(unpacker: msgpack.Unpacker) -> Iterator[Manifest]:
    """The parts of a manifest stream (version 1: a single map with ``v`` = 1)."""
    head = next(unpacker)
    if head.get("v") == 1:
        yield Manifest.from_doc(head)
        return
    if head != {"v": 2}:
        raise ValueError("unknown manifest version")
    for doc in unpacker:
        yield Manifest.from_doc(doc)


_MANIFEST_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    StopIteration,
    msgpack.UnpackException,
)


def manifest_path(cache: ContentCache, name: str) -> str:
    """Where the manifest of the cached copy ``name`` lives (see :class:`CacheLayout`)."""
    return str(CacheLayout(cache.root.parent.parent).manifest_path(name))


def read_manifest(path: str) -> Manifest | None:
    """The manifest at ``path`` as one part; None when it is missing or unreadable (then
    the copy is verified by content once and the manifest written again)."""
    try:
        with open(path, "rb") as f:
            return Manifest.load(f.read())
    except _MANIFEST_ERRORS:
        return None


def manifest_ok(path: str) -> bool:
    """Whether the manifest at ``path`` reads to its end (parts are then streamed)."""
    try:
        with open(path, "rb") as f:
            for _ in _parts(msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 30)):
                pass
        return True
    except _MANIFEST_ERRORS:
        return False


def iter_manifest(path: str) -> Iterator[Manifest]:
    """The parts of the manifest at ``path``, one at a time (check :func:`manifest_ok`
    first: an error here comes from a manifest changed since)."""
    with open(path, "rb") as f:
        yield from _parts(msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 30))


def write_manifest(path: str, man: Manifest | Iterable[Manifest]) -> None:
    """Write a manifest (one part, or parts streamed) atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(_MANIFEST_HEADER)
            for part in [man] if isinstance(man, Manifest) else man:
                f.write(part.dump_part())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _stat_copy(
    store: Store,
    cache: ContentCache,
    root: str,
    files: Sequence[tuple[RelPath, Entry]],
    *,
    hash_check: bool = False,
) -> tuple[Manifest, list[int]]:
    """Stat every file of a copy (after it is complete: a later link of the same
    content changes the ctime). Returns the manifest and the indexes of files that are
    missing, not regular, the wrong size, or (cache files) lost their sentinel -- or,
    with ``hash_check``, whose bytes do not hash to their id."""
    prefix = root.rstrip(os.sep) + os.sep
    man = Manifest(["/".join(rel) for rel, _ in files], [e for _, e in files])
    bad: list[int] = []
    for i, (_, e) in enumerate(files):
        path = prefix + man.paths[i]
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        man.set_stat(i, st)
        if (
            st is None
            or not cache.valid(st, e)
            or (hash_check and not file_matches(store, path, e))
        ):
            bad.append(i)
    return man, bad


def file_matches(store: Store, path: str, entry: Entry) -> bool:
    """Whether the bytes of ``path`` hash to ``entry``'s id (chunked as the store does)."""
    try:
        with open(path, "rb") as f:
            return content_id(store.chunker, f) == entry.id
    except OSError:
        return False


def check_copy(store: Store, root: str, man: Manifest) -> tuple[list[int], bool]:
    """Check a cached copy against its manifest with one ``lstat`` per file.

    A file is bad when it is missing or its inode, size or mtime differ from the
    manifest. A file whose ctime alone differs is hashed: a hard link made or removed
    elsewhere changes the ctime of every link of a content, which is no damage (the
    manifest takes the new ctime), but so does a write whose mtime was set back.
    Returns the indexes of bad files and whether the manifest changed.

    A ctime change that comes with a changed link count is taken as a link made or
    removed and not hashed (a write whose mtime was put back *and* whose link count
    changed meanwhile is the case this misses).
    """
    prefix = root.rstrip(os.sep) + os.sep
    bad: list[int] = []
    changed = False
    lstat = os.lstat
    inos, sizes, mtimes, ctimes, nlinks = man.inos, man.sizes, man.mtimes, man.ctimes, man.nlinks
    for i, rel in enumerate(man.paths):
        try:
            st = lstat(prefix + rel)
        except (FileNotFoundError, NotADirectoryError):
            bad.append(i)
            continue
        if st.st_ino != inos[i] or st.st_size != sizes[i] or st.st_mtime_ns != mtimes[i]:
            bad.append(i)
        elif st.st_ctime_ns != ctimes[i]:
            # a link made or removed elsewhere (another version's copy sharing this
            # content) changes the link count with the ctime: no need to read the file
            # (which, after a child version's copy, would be every file of this one)
            relinked = nlinks[i] != 0 and st.st_nlink != nlinks[i] and stat.S_ISREG(st.st_mode)
            if relinked or (
                stat.S_ISREG(st.st_mode) and file_matches(store, prefix + rel, man.entry(i))
            ):
                ctimes[i] = st.st_ctime_ns
                nlinks[i] = min(st.st_nlink, 0xFFFFFFFF)
                changed = True
            else:
                bad.append(i)
    return bad, changed


def repair_copy(
    store: Store, cache: ContentCache, root: str, man: Manifest, bad: list[int]
) -> None:
    """Replace the ``bad`` files of a cached copy by good ones from the store, and update
    the manifest. A damaged file that is a hard link of the cache file damaged the
    cache file too: that one is rewritten first, so no later copy links it."""
    prefix = root.rstrip(os.sep) + os.sep
    with store.reader(buffers=True) as txn:
        for i in bad:
            e = man.entry(i)
            dest = prefix + man.paths[i]
            try:
                damaged_ino = os.lstat(dest).st_ino
            except (FileNotFoundError, NotADirectoryError):
                damaged_ino = None
            try:
                cst = os.stat(cache.path_for(e))
                if cst.st_ino == damaged_ino or not cache.valid(cst, e):
                    cache.discard(e)
            except FileNotFoundError:
                pass
            parent = os.path.dirname(dest)
            if os.path.lexists(parent) and not os.path.isdir(parent):
                os.unlink(parent)  # a file where a folder of the copy belongs
            os.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.{os.path.basename(dest)}.dsvc-repair-{uuid.uuid4().hex}"
            _place(store, cache, e, tmp, txn)
            if os.path.isdir(dest) and not os.path.islink(dest):
                remove_tree(dest)
            os.replace(tmp, dest)
    # stat after every repair: repairs of one content share (and re-link) one inode
    for i in bad:
        man.set_stat(i, os.lstat(prefix + man.paths[i]))


def serve_copy(
    store: Store,
    cache: ContentCache,
    name: str,
    entries: Callable[[], Sequence[tuple[RelPath, Entry]]],
    ensure_content: Callable[[list[tuple[tuple[str, ...], Entry]]], None] | None = None,
) -> int:
    """Check the cached copy ``name`` (:class:`CacheLayout`) before it is handed out, and
    repair what differs. ``entries`` lists the copy's files; it is called only when the
    manifest is missing (then every file is hashed once). ``ensure_content`` makes the
    content of the files to repair local first. The manifest is checked part by part
    (folder by folder), so memory holds one part. Returns the number of files repaired.
    """
    root = str(CacheLayout(cache.root.parent.parent).copy_path(name))
    mpath = manifest_path(cache, name)
    if not manifest_ok(mpath):
        man, bad = _stat_copy(store, cache, root, list(entries()), hash_check=True)
        if bad:
            if ensure_content is not None:
                ensure_content([(tuple(man.paths[i].split("/")), man.entry(i)) for i in bad])
            repair_copy(store, cache, root, man, bad)
        write_manifest(mpath, man)
        return len(bad)
    repaired = 0
    changed_any = False

    def checked() -> Iterator[Manifest]:
        nonlocal repaired, changed_any
        for man in iter_manifest(mpath):
            bad, changed = check_copy(store, root, man)
            if bad:
                if ensure_content is not None:
                    ensure_content([(tuple(man.paths[i].split("/")), man.entry(i)) for i in bad])
                repair_copy(store, cache, root, man, bad)
                repaired += len(bad)
            changed_any = changed_any or changed or bool(bad)
            yield man

    for _ in checked():  # one part in memory at a time; nothing written if all is well
        pass
    if changed_any:
        # a second pass streams the parts, checked again (repairs are done, so this only
        # takes the new stats), into the new manifest
        write_manifest(mpath, checked())
    return repaired


def verify_cache(store: Store, *, repair: bool = False) -> dict[str, Any]:
    """Check the whole content cache under ``DSVC_HOME/cache`` (``dsvc fsck``, ``dsvc
    cache verify``): hash every content file against its name, and check every cached
    copy against its manifest (a stat per file, a hash where only the ctime moved).

    With ``repair``: bad content files are dropped, bad files of copies are replaced
    from the store, copies without a manifest (a crash right after they were built)
    and manifests without a copy are removed. Copies are rebuilt on demand, so nothing
    is lost. Returns counts and the bad items.
    """
    layout = CacheLayout(store.home)
    cache = layout.content_cache()
    out: dict[str, Any] = {
        "cache_files": 0,
        "bad_cache_files": [],
        "cached_copies": 0,
        "bad_copy_files": [],
        "copies_without_manifest": [],
        "repaired": 0,
        "unrepairable": [],
    }
    for sub in sorted(cache.root.iterdir()):
        for f in sorted(sub.iterdir()) if sub.is_dir() else ():
            name = f.name
            if ".tmp-" in name:  # a content file being written (ContentCache.ensure)
                continue
            hexid = name[:-1] if name.endswith("x") else name
            try:
                cid = bytes.fromhex(hexid)
            except ValueError:
                continue
            out["cache_files"] += 1
            mode = MODE_EXEC if name.endswith("x") else MODE_FILE
            e = Entry(KIND_CHUNKFILE, cid, f.stat().st_size, mode)
            if not file_matches(store, str(f), e):  # by content: older files lack the sentinel
                out["bad_cache_files"].append(name)
                if repair:
                    os.unlink(f)
    copies = layout.copies
    names = (
        sorted(d.name for d in copies.iterdir() if layout.dataset_of(d.name) is not None)
        if copies.is_dir()
        else []
    )
    for name in names:
        out["cached_copies"] += 1
        root = str(copies / name)
        mpath = manifest_path(cache, name)
        man = read_manifest(mpath)
        if man is None:
            out["copies_without_manifest"].append(name)
            if repair and time.time() - os.stat(root).st_mtime > 60:  # not one being built
                remove_tree(root)
            continue
        bad, changed = check_copy(store, root, man)
        out["bad_copy_files"] += [f"{name}/{man.paths[i]}" for i in bad]
        if repair and (bad or changed):
            try:
                repair_copy(store, cache, root, man, bad)
                out["repaired"] += len(bad)
            except ObjectNotFoundError:
                out["unrepairable"].append(name)  # content gone from the store: rebuild
                remove_tree(root)
                os.unlink(mpath)
                continue
            write_manifest(mpath, man)
    mdir = layout.manifests
    if repair and mdir.is_dir():
        for m in mdir.iterdir():
            if ".tmp-" not in m.name and m.name not in names:
                os.unlink(m)
    return out


def clear_cache(store: Store) -> dict[str, int]:
    """Remove every cached copy, content-cache file and manifest (the store keeps the
    content; copies are rebuilt on demand). Returns what was removed."""
    layout = CacheLayout(store.home)
    out = {"cached_copies": 0, "cache_files": 0}
    copies = layout.copies
    if copies.is_dir():
        for d in copies.iterdir():
            out["cached_copies"] += layout.dataset_of(d.name) is not None
            remove_tree(d) if d.is_dir() else os.unlink(d)
    content = layout.content
    if content.is_dir():
        out["cache_files"] = sum(len(os.listdir(s)) for s in content.iterdir() if s.is_dir())
    for sub in (layout.content, layout.manifests):
        remove_tree(sub)
    return out


def _batches(
    files: Iterable[tuple[RelPath, Entry]], prepare: PrepareFn | None, fetch: FetchFn | None
) -> Iterator[tuple[list[tuple[RelPath, Entry]], FetchFn | None]]:
    """``files`` in batches of :data:`BATCH_FILES`, each passed through ``prepare``."""
    it = iter(files)
    while batch := list(itertools.islice(it, BATCH_FILES)):
        yield prepare(batch) if prepare is not None else (batch, fetch)


def materialize(
    store: Store,
    files: Iterable[tuple[RelPath, Entry]],
    target: str | os.PathLike[str],
    *,
    content_cache: ContentCache | None = None,
    overwrite: bool = False,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
    fetch: FetchFn | None = None,
    prepare: PrepareFn | None = None,
) -> CheckoutStats:
    """Write ``files`` into a new folder ``target``, atomically.

    ``files`` may be a lazy listing: it is consumed in batches of :data:`BATCH_FILES`
    (memory holds one batch), each first passed through ``prepare`` when given (which
    resolves links and makes content local, returning the batch and its fetcher).

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
        raise StateError(f"target folder {target!r} is not empty", remedy=OVERWRITE)
    tmp = CacheLayout.temp_beside(target)
    os.mkdir(tmp)
    lock = _claim(tmp)
    stats = CheckoutStats()
    try:
        for batch, batch_fetch in _batches(files, prepare, fetch):
            stats.files += len(batch)
            stats.bytes += sum(e.size for _, e in batch)
            _fill(store, batch, tmp, content_cache, max_workers, progress, stats, batch_fetch)
        _swap_in(tmp, target, overwrite)
    except BaseException:
        remove_tree(tmp)
        raise
    finally:
        _release(lock)
    return stats


def materialize_shared(
    store: Store,
    files: Iterable[tuple[RelPath, Entry]],
    target: str | os.PathLike[str],
    *,
    content_cache: ContentCache,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
    prepare: PrepareFn | None = None,
) -> tuple[CheckoutStats, bool]:
    """Build a shared read-only copy at ``target`` unless one is already there.

    Safe with concurrent builders in several processes: the first rename wins and the
    others discard their work. ``files`` is consumed in batches as in
    :func:`materialize` (``prepare`` must return no fetcher: content is made local);
    the manifest gets one part per batch. Returns ``(stats, built_by_this_call)``.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.isdir(target):
        return CheckoutStats(), False
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = CacheLayout.temp_beside(target)
    os.mkdir(tmp)
    lock = _claim(tmp)
    mpath = manifest_path(content_cache, os.path.basename(target))
    mtmp = f"{mpath}.tmp-{uuid.uuid4().hex}"
    stats = CheckoutStats()

    def parts() -> Iterator[Manifest]:
        for batch, _ in _batches(files, prepare, None):
            stats.files += len(batch)
            stats.bytes += sum(e.size for _, e in batch)
            _fill(store, batch, tmp, content_cache, max_workers, progress, stats)
            # the manifest: each file's stat once its links exist (a later link of the
            # same content changes a ctime with the link count, which a check accepts);
            # a file whose cache file was changed in place is rewritten right away
            man, bad = _stat_copy(store, content_cache, tmp, batch)
            if bad:
                repair_copy(store, content_cache, tmp, man, bad)
            yield man

    try:
        write_manifest(mtmp, parts())
        try:
            os.rename(tmp, target)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and os.path.isdir(target):
                remove_tree(tmp)
                os.unlink(mtmp)
                return stats, False
            raise
    except BaseException:
        remove_tree(tmp)
        try:
            os.unlink(mtmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        _release(lock)
    # after the rename: a crash in between leaves a copy without manifest, which is
    # verified by content when next served
    os.replace(mtmp, mpath)
    return stats, True


def build_copy(
    store: Store,
    root: bytes,
    target: str | os.PathLike[str],
    *,
    content_cache: ContentCache,
    ensure_content: Callable[[list[tuple[tuple[str, ...], Entry]]], None] | None = None,
    resolve: ResolveFn | None = None,
    max_workers: int | None = None,
    progress: ProgressFn | None = None,
    base: tuple[bytes, str] | None = None,
) -> tuple[CheckoutStats, bool]:
    """Build the shared read-only copy of tree ``root`` at ``target`` (a
    :class:`CacheLayout` copy path) unless one is there, folder by folder.

    What :func:`materialize_shared` does for a list of files, with memory bounded by
    the largest folder instead of the dataset: folders are read from the store as they
    are built (a few at a time, in parallel), each file is linked from the content
    cache when its content is there already (a child version's copy links what its
    parent's copy wrote, and writes only its new content), and the manifest is written
    part by part as folders finish. ``ensure_content`` makes the content of files that
    must be written local first, and ``resolve`` replaces external links by the entries
    of their downloaded content (each called with one folder's files at a time, never
    concurrently). Returns ``(stats, built_by_this_call)``.

    ``base`` is ``(tree id, path)`` of a complete cached copy of another version (the
    parent's): a file whose entry equals the one at the same path of that tree is
    linked (or reflinked) from there, so a child's copy writes only what changed, small
    files included (those are not in the content cache, see :data:`SMALL_FILE`). Its
    files are checked like cache files (size, sentinel mtime) once linked, and one that
    is gone (the copy being removed) is placed the usual way.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.isdir(target):
        return CheckoutStats(), False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = CacheLayout.temp_beside(target)
    os.mkdir(tmp)
    lock = _claim(tmp)
    mpath = manifest_path(content_cache, os.path.basename(target))
    mtmp = f"{mpath}.tmp-{uuid.uuid4().hex}"
    stats = CheckoutStats()
    try:
        parts = _fill_folders(
            store,
            root,
            tmp,
            content_cache,
            ensure_content,
            resolve,
            max_workers,
            progress,
            stats,
            base,
        )
        write_manifest(mtmp, parts)
        try:
            os.rename(tmp, target)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and os.path.isdir(target):
                remove_tree(tmp)
                os.unlink(mtmp)
                return stats, False
            raise
    except BaseException:
        remove_tree(tmp)
        try:
            os.unlink(mtmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        _release(lock)
    # after the rename: a crash in between leaves a copy without manifest, which is
    # verified by content when next served
    os.replace(mtmp, mpath)
    return stats, True


def _with_base(
    store: Store, tid: bytes, btid: bytes | None
) -> tuple[dict[str, Entry], Callable[[str, Entry], Entry | None]]:
    """Folder ``tid`` decoded, and a lookup of its entries in the same folder of the
    base copy's tree ``btid``: ``base_of(name, entry)`` is the base's entry for that
    name, or None. The base is not decoded: the rows the two trees do not share are
    found on their bytes (objects.differing_entries), and every other name has the same
    entry on both sides (a child with 1% changed: one decode per folder, not two)."""
    with store.reader() as r:
        raw = r.object(tid, TAG_TREE)
        braw = r.object(btid, TAG_TREE) if btid is not None and btid != tid else None
    tree = decode_tree(raw, tid)
    if btid is None:
        return tree, lambda n, e: None
    if braw is None:  # the same tree
        return tree, lambda n, e: e
    delta = differing_entries(braw, raw, btid, tid)
    if delta is None:  # no C module, or bytes it does not take: decode the base too
        btree = decode_tree(braw, btid)
        return tree, lambda n, e: btree.get(n)
    base, changed = delta
    return tree, lambda n, e: base.get(n) if n in changed else e


def _fill_folders(
    store: Store,
    root: bytes,
    top: str,
    cache: ContentCache,
    ensure_content: Callable[[list[tuple[tuple[str, ...], Entry]]], None] | None,
    resolve: ResolveFn | None,
    max_workers: int | None,
    progress: ProgressFn | None,
    stats: CheckoutStats,
    base: tuple[bytes, str] | None = None,
) -> Iterator[Manifest]:
    """Fill ``top`` with tree ``root``, yielding each folder's manifest part when done.

    At most ``2 * workers`` folders are in flight; the queue of folders still to do
    holds ids only. Names come from ``Store.get_tree``, which validates them (no
    ``/``, ``.``, ``..`` or NUL), so ``folder + "/" + name`` stays below ``top``.
    """
    prog = progress or (lambda n: None)
    content_lock = threading.Lock()

    base_top = base[1] if base is not None else ""

    def folder(
        rel: str, tid: bytes, btid: bytes | None
    ) -> tuple[Manifest, list[tuple[str, bytes, bytes | None]], int]:
        tree, base_of = _with_base(store, tid, btid)
        d = f"{top}/{rel}" if rel else top
        bd = f"{base_top}/{rel}" if rel else base_top
        if rel:
            os.mkdir(d)
        subs = []
        for n, e in tree.items():
            if e.kind == KIND_TREE:
                b = base_of(n, e)
                bsub = b.id if b is not None and b.kind == KIND_TREE else None
                subs.append((f"{rel}/{n}" if rel else n, e.id, bsub))
        files = [(n, e) for n, e in tree.items() if e.kind != KIND_TREE]
        at = tuple(rel.split("/")) if rel else ()  # full paths: errors name the file
        if resolve is not None and any(e.kind == KIND_EXTERNAL for _, e in files):
            with content_lock:
                files = [(p[-1], e) for p, e in resolve([((*at, n), e) for n, e in files])]
        man = Manifest([f"{rel}/{n}" if rel else n for n, _ in files], [e for _, e in files])
        dests = [f"{d}/{n}" for n, _ in files]
        written: dict[int, os.stat_result | fsbatch.Written] = {}
        # resolved external links never equal the base's entries (those are links)
        same = [i for i, (n, e) in enumerate(files) if base_of(n, tree[n]) == e]
        linked = set()
        if same and not cache.reflink:
            # no reflinks here: the unchanged files are hard-linked from the base copy
            # in one call (the GIL released), their stats kept for the manifest
            got = fsbatch.link_files(bd, d, [files[i][0] for i in same])
            for i, w in zip(same, got):
                if w is not None:
                    written[i] = w
                    linked.add(i)
        else:
            linked = {
                i for i in same if _link_from(cache, f"{bd}/{files[i][0]}", files[i][1], dests[i])
            }
        missing = []
        for i, (_, e) in enumerate(files):
            if i in linked:
                continue
            if e.size < SMALL_FILE or not _link_from(cache, cache.path_for(e), e, dests[i]):
                missing.append(i)
        absent = _write_missing(store, cache, files, dests, missing, written)
        if absent:  # content not in the local store: fetched first, then written
            if ensure_content is not None:
                with content_lock:
                    ensure_content([((*at, files[i][0]), files[i][1]) for i in absent])
            still = _write_missing(store, cache, files, dests, absent, written)
            if still:  # raises, naming the content
                _write_missing(store, cache, files, dests, still[:1], written, strict=True)
        # the manifest: each file's stat once its links exist (a written file's from its
        # descriptor); a linked file whose source was changed in place (sentinel gone) is
        # rewritten from the store right away. A file this call wrote is its own stat.
        bad = []
        for i, (_, e) in enumerate(files):
            st = written.get(i)
            if st is not None and i not in linked:
                man.set_stat(i, st)
                continue
            if st is None:
                try:
                    st = os.lstat(dests[i])
                except FileNotFoundError:
                    st = None
            man.set_stat(i, st)
            if st is None or not cache.valid(st, e):
                bad.append(i)
        if bad:
            repair_copy(store, cache, top, man, bad)
        prog(sum(e.size for _, e in files))
        return man, subs, len(missing)

    workers = max(1, max_workers or default_workers())
    todo: deque[tuple[str, bytes, bytes | None]] = deque(
        [("", root, base[0] if base is not None else None)]
    )
    with ThreadPoolExecutor(workers, thread_name_prefix="dsvc-copy") as pool:
        running: deque[Future[tuple[Manifest, list[tuple[str, bytes, bytes | None]], int]]] = (
            deque()
        )
        while todo or running:
            while todo and len(running) < 2 * workers:
                running.append(pool.submit(folder, *todo.popleft()))
            man, subs, written = running.popleft().result()
            todo.extend(subs)
            stats.files += len(man.paths)
            stats.bytes += sum(man.sizes)
            stats.written += written
            stats.linked += len(man.paths) - written
            yield man


#: one copy thread at a time reads and decodes a folder's small chunks. That loop holds
#: the GIL but for many tiny releases (an LMDB lookup, a zstd call per chunk); threads
#: running it side by side hand the GIL to each other on every release, and the futex
#: traffic cost more than they gained: 35 s against 16 s of wall for the chunks of a
#: million files with 4 threads (docs/performance.md, session 8). The other threads go
#: on creating files meanwhile, which runs without the GIL.
_DECODE_GATE = threading.Lock()

#: a batch of small files handed to :func:`dsvc.fsbatch.write_files` at once
_BATCH_FILES = 4096
_BATCH_BYTES = 8 << 20


def _write_missing(
    store: Store,
    cache: ContentCache,
    files: list[tuple[str, Entry]],
    dests: list[str],
    todo: list[int],
    written: dict[int, os.stat_result | fsbatch.Written],
    *,
    strict: bool = False,
) -> list[int]:
    """Write the files ``todo`` (their content is not in the content cache) from the
    store, in one read snapshot; the stat of each goes to ``written``. Returns those
    whose content the store lacks (nothing is left at their path), or with ``strict``
    raises for the first of them. Content absent is found while writing, so the
    common case (everything local) costs no separate existence check.

    ``files`` are one folder's: small files (never in the content cache, see
    :data:`SMALL_FILE`) are read here and created in batches by one call each
    (:func:`dsvc.fsbatch.write_files`, the GIL released for the batch)."""
    absent: list[int] = []
    if not todo:
        return absent
    with store.reader(buffers=True) as txn:
        small = [i for i in todo if files[i][1].size < SMALL_FILE]
        if small:
            absent += _write_small(txn, files, dests, small, written, strict)
        for i in todo:
            entry = files[i][1]
            if entry.size < SMALL_FILE:
                continue
            try:
                if cache.reflink:  # each copy its own inode: cache, clone
                    _place(store, cache, entry, dests[i], txn)
                else:
                    written[i] = _write_shared(store, cache, txn, entry, dests[i])
            except ObjectNotFoundError:
                if strict:
                    raise
                absent.append(i)
    return absent


def _write_small(
    txn: StoreReader,
    files: list[tuple[str, Entry]],
    dests: list[str],
    todo: list[int],
    written: dict[int, os.stat_result | fsbatch.Written],
    strict: bool,
) -> list[int]:
    """:func:`_write_missing` for files under :data:`SMALL_FILE` of one folder: their
    verified bytes gathered, then created in batches; returns the absent ones."""
    absent: list[int] = []
    folder = os.path.dirname(dests[todo[0]])
    now = (time.time_ns() // _NS) * _NS
    at: list[int] = []
    names: list[str] = []
    datas: list[bytes | memoryview] = []
    modes: list[int] = []
    mtimes: list[int] = []
    nbytes = 0

    def flush() -> None:
        nonlocal nbytes
        if at:
            for i, w in zip(at, fsbatch.write_files(folder, names, datas, modes, mtimes)):
                written[i] = w
        for batch in (at, names, datas, modes, mtimes):
            batch.clear()
        nbytes = 0

    # the single-chunk files' chunks in one read (a folder's small files lie in a row
    # in a pack: one pread for many of them)
    single = [files[i][1].id for i in todo if files[i][1].kind == KIND_CHUNKFILE]
    with _DECODE_GATE:
        payloads = iter(txn.read_chunks(single))
    for i in todo:
        entry = files[i][1]
        try:
            if entry.kind == KIND_CHUNKFILE:
                data = next(payloads)
                if data is None:  # absent: the store's own error, naming it
                    data = txn.chunk(entry.id)
            else:
                parts = [txn.chunk(cid) for cid, _ in txn.file_chunks(entry)]
                data = parts[0] if len(parts) == 1 else b"".join(parts)
        except ObjectNotFoundError:
            if strict:
                raise
            absent.append(i)
            continue
        at.append(i)
        names.append(files[i][0])
        datas.append(data)
        modes.append(0o555 if entry.mode == MODE_EXEC else 0o444)
        # the cache's sentinel, as every file of a copy carries (see _write_shared)
        mtimes.append(now + _sentinel_ns(entry.id))
        nbytes += entry.size
        if len(at) >= _BATCH_FILES or nbytes >= _BATCH_BYTES:
            flush()
    flush()
    return absent


def _write_shared(
    store: Store,
    cache: ContentCache,
    txn: StoreReader,
    entry: Entry,
    dest: str,
    publish: bool = True,
) -> os.stat_result:
    """Write ``entry``'s content to the new read-only file ``dest`` and (``publish``)
    publish it as the content-cache file too (a hard link); returns its stat. The mtime
    carries the cache's sentinel either way: a later copy may link this file.

    Profiled on a 200,000-file copy, file creation and linking were most of the time:
    this writes each new content once, where the cache-first path wrote a temporary
    file in the cache, linked it twice and removed it (four names, two modes set).
    """
    chunks = txn.file_chunks(entry)
    fd = os.open(dest, _O_CREATE, 0o555 if entry.mode == MODE_EXEC else 0o444)
    try:
        for cid, _ in chunks:
            _write_all(fd, txn.chunk(cid))  # verified; ObjectNotFoundError if absent
        mtime = (time.time_ns() // _NS) * _NS + _sentinel_ns(entry.id)
        os.utime(fd, ns=(mtime, mtime))
        src = cache.path_for(entry)
        for attempt in range(2 if publish else 0):
            try:
                os.link(dest, src)
            except FileExistsError:
                pass  # the same content, cached by another copy meanwhile
            except FileNotFoundError:
                if attempt:
                    raise
                os.makedirs(os.path.dirname(src), exist_ok=True)
                continue
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
            break
        return os.fstat(fd)  # after the link: its ctime is the one a check will see
    except BaseException as e:
        os.close(fd)
        fd = -1
        os.unlink(dest)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = dest  # os.write names no file: say which one a full disk refused
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _link_from(cache: ContentCache, src: str, entry: Entry, dest: str) -> bool:
    """Share ``src`` (the content-cache file of ``entry``, or the file of a complete
    copy that holds it) at ``dest``: a reflink, else a hard link. False when ``src`` is
    missing or the filesystem cannot link (then the file is written or copied)."""
    try:
        if cache.clone(src, dest, entry):
            return True
        os.link(src, dest)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno in _NO_LINK:
            return False
        raise


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
        fetched = None
        if fetch is not None:  # network reads happen outside any read snapshot
            with store.reader() as txn:
                want = {
                    cid
                    for i in idx
                    for cid, _ in txn.file_chunks(files[i][1])
                    if not txn.has_chunk(cid)
                }
            fetched = fetch(list(want)) if want else None
        # one read snapshot per group; raw chunks are written straight from the map
        with store.reader(buffers=True) as txn:
            for i in idx:
                entry = files[i][1]
                if _place(store, cache, entry, dests[i], txn, fetched):
                    linked += 1
                nbytes += entry.size
        prog(nbytes)
        return linked, len(idx)

    groups = list(
        group_by_bytes(range(len(files)), lambda i: files[i][1].size, _GROUP_BYTES, _GROUP_FILES)
    )
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
