"""External files: dataset entries whose content stays at a URL (ClearML's
``add_external_files``).

A link is a tree entry of kind ``KIND_EXTERNAL`` whose id is a chunk holding the
:class:`~dsvc.objects.Link` (URL, size, ETag/version, mtime), so links travel with
push/fetch, diff, merge and squash like any other entry (docs/format.md §4.4).

Sources: ``s3://``, ``gs://``, ``azure://``/``az://`` (through obstore, with the options
of a configured remote on the same bucket, else the usual ``AWS_*``/``GOOGLE_*``/
``AZURE_*`` variables), ``http(s)://`` (obstore's HTTP store; one file per URL, since
plain HTTP cannot list), and ``file://`` or a local path.

A copy (:func:`resolve`) downloads each link once into the store, after checking the
recorded size and ETag (or version, or mtime) against the source; a source that changed
is an :class:`IntegrityError` that names the file. The downloaded content is
remembered under ``ext/<link chunk id>`` in the records db (a local cache: a later copy
reuses it while it is in the store, and gc may drop it, then it is downloaded again).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from obstore.store import HTTPStore

from dsvc.errors import (
    ConflictError,
    DsvcError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from dsvc.ids import to_hex
from dsvc.ingest import Ingestor, ScanItem, matches_wildcard
from dsvc.objects import (
    KIND_EXTERNAL,
    MODE_FILE,
    Entry,
    Link,
    validate_name,
)
from dsvc.remote.backend import Backend
from dsvc.remote.config import list_remotes, lookup
from dsvc.store import Store

RelPath = tuple[str, ...]
#: the store format that introduced external links (docs/format.md §6)
LINK_FORMAT = 2
CACHE_PREFIX = "ext/"
_OBJECT_SCHEMES = {"s3": "s3", "gs": "gs", "azure": "azure", "az": "az", "abfs": "abfs"}


def is_url(text: str) -> bool:
    """True for a URL dsvc can link to (``scheme://``), False for a plain path."""
    return "://" in text and urlsplit(text).scheme.lower() in (
        *_OBJECT_SCHEMES,
        "http",
        "https",
        "file",
    )


# -- listing ------------------------------------------------------------------------


def list_links(
    store: Store,
    source_url: str,
    wildcard: str | Sequence[str] | None = None,
    recursive: bool = True,
) -> list[tuple[RelPath, Link]]:
    """The files at ``source_url`` as ``(path relative to it, Link)``: one file, or every
    object/file below a prefix/folder. Paths are filtered by ``wildcard`` as ClearML
    does (clearml/datasets/dataset.py ``_add_external_files``: the path relative to the
    source, a single file's base name). An empty list when nothing is there."""
    url = str(source_url)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "file"):
        found = _list_local(url)
    elif scheme in ("http", "https"):
        found = _list_http(url)
    elif scheme in _OBJECT_SCHEMES:
        found = _list_object_store(store, url)
    else:
        raise UsageError(
            f"cannot link to {url!r}: use s3://, gs://, azure://, http(s)://, file:// or a "
            "local path"
        )
    patterns = [wildcard] if isinstance(wildcard, str) else list(wildcard or [])
    out = []
    for rel, link in found:
        try:
            parts = tuple(validate_name(p) for p in rel.split("/") if p)
        except DsvcError as e:
            raise UsageError(f"cannot link to {link.url!r}: {e}") from None
        if parts and (not patterns or matches_wildcard(parts, patterns, recursive)):
            out.append((parts, link))
    return out


def _list_local(url: str) -> list[tuple[str, Link]]:
    path = unquote(urlsplit(url).path) if url.startswith("file:") else url
    root = os.path.abspath(os.path.expanduser(path))
    try:
        st = os.stat(root)
    except OSError:
        return []
    if stat.S_ISREG(st.st_mode):
        return [(os.path.basename(root), _local_link(root, st))]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(folder, name)
            try:
                fst = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(fst.st_mode):
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), _local_link(p, fst)))
    return out


def _local_link(path: str, st: os.stat_result) -> Link:
    return Link(Path(path).as_uri(), st.st_size, mtime_ns=st.st_mtime_ns)


def _http_backend(url: str) -> tuple[Backend, str]:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}/"
    if parts.query:
        raise UsageError(f"cannot link to {url!r}: URLs with a query string are not supported")
    key = unquote(parts.path).lstrip("/")
    http = HTTPStore.from_url(
        base,
        client_options={"allow_http": parts.scheme == "http", "connect_timeout": "10s"},
        retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=20)},
    )
    return Backend(http, base.rstrip("/")), key


def _list_http(url: str) -> list[tuple[str, Link]]:
    backend, key = _http_backend(url)
    info = backend.head(key)
    if info is None:
        return []
    name = os.path.basename(urlsplit(url).path.rstrip("/")) or urlsplit(url).netloc
    return [(name, _object_link(url, info))]


def _etag(raw: str | None) -> str | None:
    """An ETag without its quotes: stores quote it in some answers and not in others
    (GCS lists it bare and heads it quoted), and it must compare equal either way."""
    return raw.strip('"') if raw else None


def _object_link(url: str, info: Any) -> Link:
    mtime = info.last_modified
    return Link(
        url,
        info.size,
        etag=_etag(info.version.etag),
        version=info.version.version,
        mtime_ns=int(mtime.timestamp() * 1e9)
        if mtime is not None and not info.version.etag
        else None,
    )


def _object_backend(store: Store, url: str) -> tuple[Backend, str, str]:
    """``(backend on the bucket, key, bucket URL)``; options from a configured remote on
    the same bucket (credentials from its environment variables), else the environment."""
    parts = urlsplit(url)
    bucket_url = f"{parts.scheme}://{parts.netloc}"
    options: dict[str, str] = {}
    for r in list_remotes(store):
        rp = urlsplit(r["url"])
        if rp.scheme.lower() == parts.scheme.lower() and rp.netloc == parts.netloc:
            found = lookup(store, r["name"])
            if found is not None:
                options = found[2]
            break
    return Backend.from_url(bucket_url, options), unquote(parts.path).lstrip("/"), bucket_url


def _list_object_store(store: Store, url: str) -> list[tuple[str, Link]]:
    backend, key, bucket_url = _object_backend(store, url)
    if key and not key.endswith("/"):
        info = backend.head(key)
        if info is not None:
            return [(key.rsplit("/", 1)[-1], _object_link(f"{bucket_url}/{key}", info))]
    prefix = key.rstrip("/") + "/" if key else ""
    return [
        (info.key[len(prefix) :], _object_link(f"{bucket_url}/{info.key}", info))
        for info in sorted(backend.list(prefix), key=lambda i: i.key)
        if not info.key.endswith("/")
    ]


# -- entries ------------------------------------------------------------------------


def link_entries(store: Store, links: list[tuple[RelPath, Link]]) -> dict[RelPath, Entry]:
    """Store each link's chunk and return its tree entry (raises the store's format to
    :data:`LINK_FORMAT` first, so an older dsvc refuses the store rather than its trees)."""
    if not links:
        return {}
    store.require_format(LINK_FORMAT)
    out: dict[RelPath, Entry] = {}
    with store.batch() as b:
        for rel, link in links:
            out[rel] = Entry(KIND_EXTERNAL, b.put_chunk(link.encode()), link.size, MODE_FILE)
    return out


def read_link(store: Store, entry: Entry) -> Link:
    """The Link of an external entry (its chunk must be local)."""
    return Link.decode(store.get_chunk(entry.id), entry.id)


def fetch_links(store: Store, entries: Sequence[Entry], remote: Any) -> None:
    """Bring the link chunks of ``entries`` that are not local from ``remote``."""
    ids = [e.id for e in entries if e.kind == KIND_EXTERNAL]
    missing = store.missing("chunks", list(dict.fromkeys(ids)))
    if not missing:
        return
    if remote is None:
        raise NotFoundError(
            f"{len(missing)} external links of this dataset are not in the local store and "
            "no remote is configured; add the remote the dataset was pushed to"
        )
    remote.fetch_chunks(missing)


# -- copies -------------------------------------------------------------------------


def resolve(
    store: Store,
    entries: list[tuple[RelPath, Entry]],
    *,
    remote: Any = None,
    label: str = "",
    max_workers: int | None = None,
) -> list[tuple[RelPath, Entry]]:
    """``entries`` with every external link replaced by the entry of its content,
    downloaded into the store (once; later calls reuse it). A source whose size or
    ETag/version/mtime differs from the recorded one raises :class:`IntegrityError`
    naming the file; nothing is stored for it."""
    links = [(p, e) for p, e in entries if e.kind == KIND_EXTERNAL]
    if not links:
        return entries
    fetch_links(store, [e for _, e in links], remote)
    done: dict[bytes, Entry] = {}
    todo: dict[bytes, tuple[RelPath, Link]] = {}
    for p, e in links:
        if e.id in done or e.id in todo:
            continue
        cached = _cached(store, e.id)
        if cached is not None:
            done[e.id] = cached
        else:
            todo[e.id] = (p, read_link(store, e))
    if todo:
        with store.lease("external files", announce=False):  # content, then the cache record
            tmp = store.home / "tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=tmp, prefix="ext-") as d:

                def one(item: tuple[bytes, tuple[RelPath, Link]]) -> tuple[bytes, str]:
                    lid, (p, link) = item
                    target = os.path.join(d, to_hex(lid))
                    _download(store, link, target, "/".join(p), label)
                    return lid, target

                workers = max(1, min(len(todo), max_workers or 8))
                with ThreadPoolExecutor(workers, thread_name_prefix="dsvc-ext") as pool:
                    files = dict(pool.map(one, todo.items()))
                ing = Ingestor(store, use_stat_cache=False, max_workers=max_workers)
                items = [_scan_item(files[lid], (to_hex(lid),)) for lid in todo]
                got, _stats = ing.ingest(items)
                for lid, (p, link) in todo.items():
                    stored = got.get((to_hex(lid),))
                    if stored is None or stored.size != link.size:
                        raise IntegrityError(
                            f"external file {'/'.join(p)}{label}: {link.url} could not be "
                            "stored; try again"
                        )
                    e = Entry(stored.kind, stored.id, stored.size, MODE_FILE)
                    store.put_record(CACHE_PREFIX + to_hex(lid), [e.kind, e.id, e.size])
                    done[lid] = e
    return [(p, done[e.id] if e.kind == KIND_EXTERNAL else e) for p, e in entries]


def _scan_item(path: str, rel: RelPath) -> ScanItem:
    st = os.stat(path)
    return ScanItem(
        path, rel, st.st_size, st.st_mtime_ns, st.st_ino, MODE_FILE, st.st_ctime_ns, st.st_dev
    )


def _cached(store: Store, lid: bytes) -> Entry | None:
    """The stored content of link ``lid`` if a copy downloaded it and it is still local."""
    raw = store.get_record(CACHE_PREFIX + to_hex(lid))
    try:
        kind, cid, size = raw
        e = Entry(int(kind), bytes(cid), int(size), MODE_FILE)
    except (TypeError, ValueError):
        return None
    try:
        store.file_chunks(e)  # a blob that is gone raises
        if store.missing("chunks", [c for c, _ in store.file_chunks(e)]):
            return None
    except DsvcError:
        return None
    return e


def _changed(path: str, label: str, link: Link, what: str) -> IntegrityError:
    return IntegrityError(
        f"external file {path}{label} changed at its source {link.url} since it was added "
        f"({what}); add it again (add_external_files) in a new version, or restore the source"
    )


def _download(store: Store, link: Link, target: str, path: str, label: str) -> None:
    """Write the link's content to ``target``, checking it against the recorded link."""
    scheme = urlsplit(link.url).scheme.lower()
    try:
        if scheme == "file":
            _copy_local(link, target, path, label)
            return
        if scheme in ("http", "https"):
            backend, key = _http_backend(link.url)
        else:
            backend, key, _ = _object_backend(store, link.url)
        info = backend.head(key)
        if info is None:
            raise NotFoundError(
                f"external file {path}{label}: {link.url} does not exist any more; restore it "
                "or remove the file from a new version"
            )
        _check(link, _object_link(link.url, info), path, label)
        with open(target, "wb") as out:
            try:
                # conditional on the ETag just checked, in the store's own spelling
                got = backend.download(key, out, if_match=info.version.etag)
            except ConflictError:
                raise _changed(path, label, link, "its ETag changed during the download") from None
        size = os.path.getsize(target)
        if size != link.size:
            raise _changed(path, label, link, f"{size} bytes downloaded, {link.size} recorded")
        _check(link, _object_link(link.url, got), path, label)
    except DsvcError as e:
        if isinstance(e, IntegrityError | NotFoundError):
            raise
        raise type(e)(f"external file {path}{label} ({link.url}): {e}") from None


def _check(link: Link, now: Link, path: str, label: str) -> None:
    if now.size != link.size:
        raise _changed(path, label, link, f"size {now.size}, recorded {link.size}")
    if link.etag and now.etag and now.etag != link.etag:
        raise _changed(path, label, link, f"ETag {now.etag}, recorded {link.etag}")
    if link.version and now.version and now.version != link.version:
        raise _changed(path, label, link, f"version {now.version}, recorded {link.version}")
    if link.mtime_ns is not None and now.mtime_ns is not None and now.mtime_ns != link.mtime_ns:
        raise _changed(path, label, link, "modification time differs")


def _copy_local(link: Link, target: str, path: str, label: str) -> None:
    src = unquote(urlsplit(link.url).path)
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise NotFoundError(
            f"external file {path}{label}: cannot read {link.url} ({e.strerror}); restore it "
            "or remove the file from a new version"
        ) from None
    with os.fdopen(fd, "rb") as f, open(target, "wb") as out:
        st = os.fstat(f.fileno())
        _check(link, Link(link.url, st.st_size, mtime_ns=st.st_mtime_ns), path, label)
        while piece := f.read(1 << 20):
            out.write(piece)
        if os.fstat(f.fileno()).st_mtime_ns != st.st_mtime_ns or out.tell() != link.size:
            raise _changed(path, label, link, "it was written to during the copy")


# -- upload(upload_as_external_links=True) ------------------------------------------


def upload_as_links(
    store: Store,
    files: list[tuple[RelPath, Entry]],
    dest_url: str,
    options: dict[str, str] | None = None,
    *,
    max_workers: int | None = None,
) -> list[tuple[RelPath, Link]]:
    """Write each file's content as a plain object ``<dest_url>/<path>`` and return the
    links to them (ClearML's ``upload(upload_as_external_links=True)``, dataset.py:761-800,
    writes to ``<output_url>/external_links/<dataset id>/<relative path>``)."""
    if not files:
        return []
    dest = dest_url.rstrip("/")
    backend = Backend.from_url(dest, options)
    tmp = store.home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[RelPath, Entry]) -> tuple[RelPath, Link]:
        rel, e = item
        key = "/".join(rel)
        with tempfile.NamedTemporaryFile(dir=tmp, prefix="up-") as f:
            for piece in store.read_file(e):
                f.write(piece)
            f.flush()
            backend.put_file(key, f.name)
        found = list_links(store, f"{dest}/{key}")
        if len(found) != 1 or found[0][1].size != e.size:
            raise IntegrityError(
                f"{key}: uploaded to {dest}, but {dest}/{key} does not read back with its "
                f"{e.size} bytes; check the destination and upload again"
            )
        return rel, found[0][1]

    with ThreadPoolExecutor(max(1, min(len(files), max_workers or 4))) as pool:
        return list(pool.map(one, files))


def backend_for(store: Store, url: str) -> tuple[Backend, str]:
    """``(backend, key)`` for one object or file URL (``http(s)://``, ``s3://``,
    ``gs://``, ``azure://``, ``file://`` or a path); object-store options as for links."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return _http_backend(url)
    if scheme in _OBJECT_SCHEMES:
        backend, key, _ = _object_backend(store, url)
        return backend, key
    if scheme in ("", "file"):
        path = unquote(urlsplit(url).path) if scheme == "file" else url
        folder, _, name = os.path.abspath(os.path.expanduser(path)).rpartition(os.sep)
        return Backend.from_url(folder or os.sep), name
    raise UsageError(f"unsupported URL {url!r}: use s3://, gs://, azure://, http(s)://, file://")


def download_url(store: Store, url: str, target: str) -> None:
    """Download ``url`` to the file ``target`` (for ``dsvc.compat.StorageManager``;
    nothing is checked against a link)."""
    backend, key = backend_for(store, url)
    with open(target, "wb") as out:
        backend.download(key, out)
