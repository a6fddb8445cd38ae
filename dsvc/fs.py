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

Registered through the ``fsspec.specs`` entry point, so ``fsspec.open("dsvc://...")``,
``pandas.read_csv("dsvc://...")`` and friends work once dsvc is installed.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, unquote

from fsspec.spec import AbstractFileSystem

from dsvc import registry as reg
from dsvc.errors import UsageError
from dsvc.ids import to_hex
from dsvc.objects import KIND_TREE, Entry
from dsvc.record import Record
from dsvc.stream import DEFAULT_CACHE_BYTES, DsvcFile, Reader, Version, clean_path

__all__ = ["DsvcFileSystem", "format_url", "parse_url"]


def format_url(project: str, name: str, version: str | None = None, path: str = "") -> str:
    """The ``dsvc://`` URL of ``path`` in ``project/name`` (at ``version``, else latest)."""
    root = f"{quote(project, safe='')}/{quote(name, safe='')}"
    if version is not None:
        root += f"@{quote(version, safe='')}"
    return f"dsvc://{root}/{path.lstrip('/')}".rstrip("/")


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
        if e.kind != KIND_TREE:
            info = self._info(root, rel, e, v)
            out[info["name"]] = info
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
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

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
        if e.kind == KIND_TREE:
            raise IsADirectoryError(f"dsvc://{'/'.join((root, *rel))} is a folder")
        return self.reader.open(e, "dsvc://" + "/".join((root, *rel)))

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
        long as they fit the chunk cache), then each range is cut out of them."""
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
        if total <= self.reader.cache.max_bytes // 2:
            self.reader.get_chunks(wanted)
        out: list[Any] = []
        for item in files:
            if isinstance(item, Exception):
                out.append(item)
            else:
                f, a, b = item
                out.append(f.read_range(a, b))
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
