"""``dsvc://``: any file of any version as an fsspec filesystem, read-only and streamed.

URL grammar (docs/streaming.md)::

    dsvc://<project>/<name>@<version>/<path>     one version
    dsvc://<project>/<name>/<path>               the highest finalized version of the name
    dsvc://id:<dataset id>/<path>                a version by id

``<project>`` and ``<name>`` are percent-encoded (``quote(s, safe="")``), so a ClearML
subproject ``a/b`` is written ``a%2Fb`` and a name holding ``@`` is ``x%40y``.
``dsvc://`` alone lists projects, ``dsvc://<project>`` the names in it.

``storage_options``: ``home`` (the store folder, default ``$DSVC_HOME``), ``remote`` (a
remote name or URL, default the store's default remote), ``remote_options`` (obstore
options for a URL not configured in the store, e.g. ``{"endpoint": ...}``) and
``cache_bytes`` (bound of the in-memory chunk cache). ``ls``/``info``/``find``/``glob``
read trees only; ``open``/``cat_file``/``cat_ranges`` read only the chunks they touch
(see :mod:`dsvc.stream`). "Latest" is resolved once per filesystem instance;
``invalidate_cache()`` resolves it again.

Read-ahead across files (:class:`dsvc.stream.ReadAhead`) when the caller's order is
known: ``cat`` of several paths and ``iter_files(paths)`` read ahead from the first
file; ``cat_ranges`` past half the chunk cache; and the files of the last ``find`` (or
of ``set_read_order(paths)``) read ahead once two of them are opened one after the
other (file ``i + 1`` after file ``i``), and stop when the caller jumps elsewhere.
``close()`` stops read-ahead.

Registered through the ``fsspec.specs`` entry point, so ``fsspec.open("dsvc://...")``,
``pandas.read_csv("dsvc://...")`` and friends work once dsvc is installed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from fsspec.spec import AbstractFileSystem

from dsvc import registry as reg
from dsvc.errors import UsageError
from dsvc.ids import to_hex
from dsvc.objects import KIND_TREE, Entry
from dsvc.record import Record
from dsvc.stream import (
    DEFAULT_CACHE_BYTES,
    AheadItem,
    DsvcFile,
    ReadAhead,
    Reader,
    Version,
    clean_path,
)

__all__ = ["DsvcFileSystem", "format_url", "parse_url"]


def format_url(project: str, name: str, version: str | None = None, path: str = "") -> str:
    """The ``dsvc://`` URL of ``path`` in ``project/name`` (at ``version``, else latest)."""
    root = f"{quote(project, safe='')}/{quote(name, safe='')}"
    if version is not None:
        root += f"@{quote(version, safe='')}"
    return f"dsvc://{root}/{path.lstrip('/')}".rstrip("/")


#: an open of a file of the declared order within this many places of the previous open
#: keeps its read-ahead (threads or DataLoader batches open files slightly out of order)
ORDER_SLACK = 16


@dataclass
class _Order:
    """Files in the order the caller will read them (``find``, ``set_read_order``)."""

    names: dict[str, int]
    items: list[AheadItem]
    last: int | None = None
    ahead: ReadAhead | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self, name: str, reader: Reader) -> tuple[ReadAhead | None, int]:
        """The read-ahead an open of ``name`` reports to: started when the previous open
        was the file before it, dropped when the caller jumps away."""
        i = self.names.get(name)
        if i is None:
            return None, 0
        with self.lock:
            prev, self.last = self.last, i
            ahead = self.ahead
            if ahead is not None and (ahead.closed or ahead.pid != os.getpid()):
                ahead = None  # closed, or the parent's (a forked worker starts its own)
            if ahead is not None and prev is not None and abs(i - prev) > ORDER_SLACK:
                ahead.close()
                ahead = None
            elif ahead is None and prev is not None and i == prev + 1:
                ahead = ReadAhead(reader, self.items)
            self.ahead = ahead
        return ahead, i

    def start(self, index: int, reader: Reader) -> ReadAhead | None:
        """The read-ahead of the order from item ``index`` on, started for a file that is
        read sequentially (a big first file: the files after it are fetched while it
        is read, not once the next one is opened); None if another file was opened
        since."""
        with self.lock:
            if self.last != index:
                return None
            ahead = self.ahead
            if ahead is None or ahead.closed or ahead.pid != os.getpid():
                ahead = self.ahead = ReadAhead(reader, self.items)
            return ahead


def parse_url(path: str) -> tuple[str, dict[str, str | None], tuple[str, ...]]:
    """``(root, version selector, path components)`` of a ``dsvc://`` URL or path.

    The selector is ``{"id": ...}`` or ``{"project", "name", "version"}``; root is the
    URL's first one or two components as written (names keep it, so globs match);
    for ``dsvc://`` and ``dsvc://<project>`` the selector has no name.
    """
    p = DsvcFileSystem._strip_protocol(path)
    parts = [x for x in p.split("/") if x]
    if not parts:
        return "", {}, ()
    if parts[0].startswith("id:"):
        did = parts[0][3:].strip().lower()
        if not did:
            raise UsageError(f"{path!r}: empty dataset id after 'id:'")
        return parts[0], {"id": did}, clean_path("/".join(parts[1:]))
    project = unquote(parts[0])
    if len(parts) == 1:
        return parts[0], {"project": project}, ()
    name, at, version = parts[1].partition("@")
    sel = {"project": project, "name": unquote(name), "version": unquote(version) if at else None}
    if not sel["name"]:
        raise UsageError(f"{path!r}: empty dataset name")
    return f"{parts[0]}/{parts[1]}", sel, clean_path("/".join(parts[2:]))


class DsvcFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over dsvc versions (see the module docstring)."""

    protocol = ("dsvc",)
    root_marker = ""
    async_impl = False

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        remote: str | None = None,
        remote_options: dict[str, str] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reader = Reader(home, remote, remote_options, cache_bytes=cache_bytes)
        self._versions: dict[str, Version] = {}
        self._order: _Order | None = None

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        path = str(path)
        if path.startswith("dsvc://"):
            path = path[len("dsvc://") :]
        elif path.startswith("dsvc:"):
            path = path[len("dsvc:") :]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return "dsvc://" + self._strip_protocol(name)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget resolved versions ("latest" is looked up again on the next access)."""
        self._versions.clear()
        super().invalidate_cache(path)

    # -- resolution ----------------------------------------------------------------

    def version(self, path: str) -> Version:
        """The version a ``dsvc://`` path points into."""
        root, sel, _ = parse_url(path)
        v = self._versions.get(root)
        if v is None:
            if "id" in sel:
                v = self.reader.version_by_id(sel["id"] or "")
            elif (name := sel.get("name")) is None:
                raise UsageError(f"{path!r} names no dataset: use dsvc://<project>/<name>/<path>")
            else:
                v = self.reader.version_by_name(sel["project"] or "", name, sel["version"])
            self._versions[root] = v
        return v

    def _entry(self, path: str) -> tuple[str, Version, tuple[str, ...], Entry]:
        root, _, rel = parse_url(path)
        v = self.version(path)
        e = self.reader.lookup(v.tree, rel)
        if e is None:
            raise FileNotFoundError(f"dsvc://{root}/{'/'.join(rel)}: no such file in {v.label}")
        return root, v, rel, e

    def _info(self, root: str, rel: tuple[str, ...], e: Entry, v: Version) -> dict[str, Any]:
        is_dir = e.kind == KIND_TREE
        return {
            "name": "/".join((root, *rel)),
            "size": e.size,
            "type": "directory" if is_dir else "file",
            "mode": e.mode,
            "id": to_hex(e.id),
            "dataset_id": v.id,
        }

    # -- listing (trees only) ---------------------------------------------------------

    def _records(self) -> list[Record]:
        recs = {r.id: r for r in reg.all_records(self.reader.store)}
        remote = self.reader.remote
        if remote is not None:
            for r in remote.list_records():
                recs.setdefault(r.id, r)
        return [r for r in recs.values() if r.status in reg.COMPLETED_STATES]

    def _ls_top(self, sel: dict[str, str | None]) -> list[dict[str, Any]]:
        recs = self._records()
        if "project" not in sel:
            names = {quote(r.project, safe="") for r in recs}
        else:
            names = {
                f"{quote(r.project, safe='')}/{quote(r.name, safe='')}"
                for r in recs
                if r.project == sel["project"]
            }
            if not names:
                raise FileNotFoundError(
                    f"dsvc://{quote(sel['project'] or '', safe='')}: no such project"
                )
        return [{"name": n, "size": 0, "type": "directory"} for n in sorted(names)]

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        root, sel, rel = parse_url(path)
        if sel.get("name") is None and "id" not in sel:
            out = self._ls_top(sel)
        else:
            root, v, rel, e = self._entry(path)
            if e.kind != KIND_TREE:
                out = [self._info(root, rel, e, v)]
            else:
                tree = self.reader.tree(e.id)
                out = [
                    self._info(root, (*rel, n), tree[n], v)
                    for n in sorted(tree, key=lambda n: n.encode())
                ]
        return out if detail else [o["name"] for o in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        root, sel, rel = parse_url(path)
        if sel.get("name") is None and "id" not in sel:
            if root and not self._ls_top(sel):
                raise FileNotFoundError(path)
            return {"name": root, "size": 0, "type": "directory"}
        root, v, rel, e = self._entry(path)
        return self._info(root, rel, e, v)

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        root, sel, rel = parse_url(path)
        if sel.get("name") is None and "id" not in sel:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        try:
            root, v, rel, e = self._entry(path)
        except FileNotFoundError:
            return {} if detail else []
        out: dict[str, dict[str, Any]] = {}
        entries: dict[str, Entry] = {}
        if e.kind != KIND_TREE:
            info = self._info(root, rel, e, v)
            out[info["name"]] = info
            entries[info["name"]] = e
        else:
            if withdirs and rel:
                info = self._info(root, rel, e, v)
                out[info["name"]] = info
            for sub, se in self.reader.walk(e.id, rel):
                if maxdepth is not None and len(sub) - len(rel) > maxdepth:
                    continue
                if se.kind == KIND_TREE and not withdirs:
                    continue
                info = self._info(root, sub, se, v)
                out[info["name"]] = info
                if se.kind != KIND_TREE:
                    entries[info["name"]] = se
        names = sorted(out)
        # the order a find-then-open loop reads in (read ahead once it does)
        self._set_order([(n, entries[n]) for n in names if n in entries])
        return {n: out[n] for n in names} if detail else names

    # -- declared order (read-ahead across files) ----------------------------------------

    def _set_order(self, files: list[tuple[str, Entry]]) -> None:
        old, self._order = self._order, None
        if old is not None and old.ahead is not None:
            old.ahead.close()
        if len(files) > 1:
            self._order = _Order(
                {n: i for i, (n, _) in enumerate(files)}, [(e, 0, e.size) for _, e in files]
            )

    def set_read_order(self, paths: Iterable[str]) -> None:
        """Declare the order files will be opened in (replacing the last ``find``'s):
        once two of them are opened one after the other, the chunks of the next ones are
        fetched ahead (a bounded window, see :class:`dsvc.stream.ReadAhead`)."""
        known = self._order
        files = []
        for p in paths:
            root, _, rel = parse_url(p)
            name = "/".join((root, *rel))
            if known is not None and (i := known.names.get(name)) is not None:
                files.append((name, known.items[i][0]))  # from the last find: no lookup
                continue
            root, _, rel, e = self._entry(p)
            if e.kind != KIND_TREE:
                files.append(("/".join((root, *rel)), e))
        self._set_order(files)

    def iter_files(
        self, paths: Iterable[str], on_error: str = "raise"
    ) -> Iterator[tuple[str, Any]]:
        """``(path, open file)`` for each of ``paths`` in turn, reading ahead across them
        from the first: the next files' chunks are fetched (coalesced ranged reads per
        pack, a bounded window ahead) while the current one is read. A path that cannot
        be opened raises (``on_error="raise"``), is skipped (``"omit"``) or comes with
        its exception instead of a file (``"return"``). Each file is closed when the
        next one is requested."""
        plan: list[tuple[str, Any]] = []
        items: list[AheadItem] = []
        for p in paths:
            try:
                root, _, rel, e = self._entry(p)
                if e.kind == KIND_TREE:
                    raise IsADirectoryError(f"dsvc://{'/'.join((root, *rel))} is a folder")
            except Exception as exc:
                if on_error == "raise":
                    raise
                if on_error == "return":
                    plan.append((p, exc))
                continue
            plan.append((p, (len(items), e, "dsvc://" + "/".join((root, *rel)))))
            items.append((e, 0, e.size))
        ahead = ReadAhead(self.reader, items) if len(items) > 1 else None
        try:
            for p, got in plan:
                if isinstance(got, Exception):
                    yield p, got
                    continue
                i, e, name = got
                with self.reader.open(e, name, ahead, i) as f:
                    yield p, f
        finally:
            if ahead is not None:
                ahead.close()

    def cat(
        self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> Any:
        """fsspec's ``cat``; several paths are read with read-ahead across them."""
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) > 1 or isinstance(path, list) or paths[0] != self._strip_protocol(path):
            out: dict[str, Any] = {}
            for p, f in self.iter_files(paths, on_error=on_error):
                out[p] = f if isinstance(f, Exception) else f.read()
            return out
        return self.cat_file(paths[0], **kwargs)

    def close(self) -> None:
        """Stop read-ahead (fetches running finish; nothing more is fetched)."""
        order = self._order
        if order is not None and order.ahead is not None:
            order.ahead.close()
        self.reader.close()

    def ukey(self, path: str) -> str:
        """The content id of the file (equal content, equal key)."""
        return self.info(path)["id"]

    # -- reading (only the chunks touched) ---------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> DsvcFile:
        if "r" not in mode or any(c in mode for c in "wax+"):
            raise PermissionError(f"dsvc:// is read-only: cannot open {path!r} with mode {mode!r}")
        root, v, rel, e = self._entry(path)
        name = "/".join((root, *rel))
        if e.kind == KIND_TREE:
            raise IsADirectoryError(f"dsvc://{name} is a folder")
        order = self._order
        ahead, index = order.follow(name, self.reader) if order else (None, 0)
        f = self.reader.open(e, "dsvc://" + name, ahead, index)
        if order is not None and ahead is None and name in order.names:
            reader = self.reader
            f.sequel = lambda: order.start(index, reader)
        return f

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        with self._open(path) as f:
            a, b = _bounds(f.size, start, end)
            return f.read_range(a, b)

    def cat_ranges(
        self,
        paths: list[str],
        starts: Any,
        ends: Any,
        max_gap: Any = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        """Byte ranges of files; the chunks of all ranges are fetched in one batch (as
        long as they fit half the chunk cache; else they are read one after the other,
        with read-ahead across them), then each range is cut out of them."""
        n = len(paths)
        starts = starts if isinstance(starts, list) else [starts] * n
        ends = ends if isinstance(ends, list) else [ends] * n
        if not (len(starts) == len(ends) == n):
            raise ValueError("cat_ranges: paths, starts and ends differ in length")
        files: list[Any] = []
        wanted: list[bytes] = []
        total = 0
        for p, s, e in zip(paths, starts, ends):
            try:
                f = self._open(p)
            except Exception as exc:
                if on_error == "raise":
                    raise
                files.append(exc)
                continue
            a, b = _bounds(f.size, s, e)
            files.append((f, a, b))
            for cid, ln in f.chunks_between(a, b):
                wanted.append(cid)
                total += ln
        ahead = None
        if total <= self.reader.cache.max_bytes // 2:
            self.reader.get_chunks(wanted)
        else:
            opened = [x for x in files if not isinstance(x, Exception)]
            ahead = ReadAhead(self.reader, [(f.entry, a, b) for f, a, b in opened])
            for k, (f, _, _) in enumerate(opened):
                f.attach(ahead, k)
        out: list[Any] = []
        try:
            for item in files:
                if isinstance(item, Exception):
                    out.append(item)
                else:
                    f, a, b = item
                    out.append(f.read_range(a, b))
        finally:
            if ahead is not None:
                ahead.close()
        return out

    # -- read-only ---------------------------------------------------------------------

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("dsvc:// is read-only: create versions with the Dataset API")

    mkdir = makedirs = rm = rm_file = _rm = rmdir = touch = pipe_file = put_file = _refuse
    cp_file = mv = _refuse


def _bounds(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """fsspec's ``start``/``end`` (None, or negative from the end) as ``[a, b)``."""
    a = 0 if start is None else (start if start >= 0 else max(0, size + start))
    b = size if end is None else (end if end >= 0 else max(0, size + end))
    return min(a, size), min(max(a, b), size)
