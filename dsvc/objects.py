"""The object model: blobs, trees and commits, and their canonical msgpack encodings.

* **Blob**: a file's content as the ordered list of ``(chunk id, length)``. A file that
  is one chunk has no blob object: its tree entry points at the chunk (``KIND_CHUNKFILE``).
* **Tree**: one directory; entries sorted by the UTF-8 bytes of their names, each
  ``[name, kind, id, size, mode]``. Nested like git, so a change rewrites only the
  directories on its path and equal subtrees share ids.
* **Commit**: ``{"meta": {...}, "parents": [ids], "tree": id}`` with every map's keys
  sorted, recursively.

Canonical means: equal objects encode to equal bytes on every machine and Python
version (msgpack picks the smallest integer encoding; we sort every map; floats are
always float64), hence equal ids. Decoders validate shape, order and names, because a
remote may be hostile: a tree never yields a name that could escape a folder.
See docs/format.md for the byte-level description.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from dsvc import native
from dsvc.errors import IntegrityError, InvalidPathError
from dsvc.ids import ID_SIZE, TAG_BLOB, TAG_COMMIT, TAG_TREE, object_id, to_hex

#: the C merge of two encoded trees' rows, or None (tests switch it off)
treerows: Any = native.load("_treerows")

KIND_TREE = 1
KIND_FILE = 2  # id is a blob object (list of chunks)
KIND_CHUNKFILE = 3  # id is the file's only chunk
# id is a chunk holding the file's Link (URL, size, ETag...): the content stays at the
# URL (ClearML's add_external_files). Since format_version 2 (docs/format.md §4.2).
KIND_EXTERNAL = 4
FILE_KINDS = (KIND_FILE, KIND_CHUNKFILE)
#: kinds whose id is a chunk id (what reachability walks follow to one chunk)
CHUNK_REF_KINDS = (KIND_CHUNKFILE, KIND_EXTERNAL)

MODE_FILE = 0o644
MODE_EXEC = 0o755
MODE_DIR = 0


def validate_name(name: Any) -> str:
    """Check one path component; returns it or raises :class:`InvalidPathError`."""
    if not isinstance(name, str):
        raise InvalidPathError(f"path component must be text, got {name!r}")
    if name in ("", ".", ".."):
        raise InvalidPathError(f"path component {name!r} is not allowed")
    if "/" in name or "\x00" in name or "\\" in name:
        raise InvalidPathError(f"path component {name!r} contains '/', '\\' or NUL")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        try:  # a file system name that was not UTF-8: show its raw bytes
            shown = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # any other lone surrogate
            shown = name.encode("utf-8", "backslashreplace")
        raise InvalidPathError(
            f"file name {shown!r} is not valid UTF-8; rename it or leave it out"
        ) from e
    return name


def split_path(path: str) -> tuple[str, ...]:
    """Split a dataset path ``a/b/c`` into validated components (leading ``/`` ignored)."""
    parts = tuple(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
    for p in parts:
        validate_name(p)
    return parts


class Entry(NamedTuple):
    """One tree entry (the name is the key in the tree's mapping)."""

    kind: int
    id: bytes
    size: int
    mode: int = MODE_FILE


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def _is_id(v: Any) -> bool:
    """An id is a msgpack bin of exactly ID_SIZE bytes (not an int or a list)."""
    return isinstance(v, bytes) and len(v) == ID_SIZE


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _unpackb(data: bytes, what: str, oid: bytes | None) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        label = to_hex(oid) if oid else "?"
        raise IntegrityError(f"{what} {label}: malformed encoding ({e})", oid) from e


# -- blobs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A file's content: ordered chunk ids with their lengths."""

    chunks: tuple[tuple[bytes, int], ...]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.chunks)

    def encode(self) -> bytes:
        return _packb([[c, n] for c, n in self.chunks])

    @property
    def id(self) -> bytes:
        return object_id(TAG_BLOB, self.encode())

    @classmethod
    def decode(cls, data: bytes, oid: bytes | None = None) -> Blob:
        raw = _unpackb(data, "blob", oid)
        try:
            chunks = tuple((c, n) for c, n in raw)
            ok = all(_is_id(c) and _is_uint(n) for c, n in chunks)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise IntegrityError(f"blob {to_hex(oid) if oid else '?'}: malformed", oid)
        return cls(chunks)


# -- trees -------------------------------------------------------------------------


def _name_key(name: str) -> bytes:
    return name.encode("utf-8")


def encode_tree(entries: Mapping[str, Entry]) -> bytes:
    """Canonical bytes of a tree (entries sorted by UTF-8 name)."""
    return _packb(
        [
            [n, e.kind, e.id, e.size, e.mode]
            for n, e in sorted(entries.items(), key=lambda x: _name_key(x[0]))
        ]
    )


def encode_tree_rows(rows: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """:func:`encode_tree` of a tree given as ``(name, kind, id, size, mode)`` rows in
    any order (sorted here, in place): the same bytes, without an :class:`Entry` per
    file (a re-added folder of 1,000 files builds its tree from columns)."""
    name = operator.itemgetter(0)
    if "".join(map(name, rows)).isascii():
        rows.sort(key=name)  # ASCII: str order is UTF-8 order
    else:
        rows.sort(key=lambda r: _name_key(r[0]))
    return _packb(rows)


def tree_id(entries: Mapping[str, Entry]) -> bytes:
    return object_id(TAG_TREE, encode_tree(entries))


_DOTS = frozenset(("", ".", ".."))
_KINDS = frozenset((KIND_TREE, KIND_FILE, KIND_CHUNKFILE))
_new_entry = functools.partial(tuple.__new__, Entry)


def _decode_plain(raw: list[Any]) -> dict[str, Entry] | None:
    """The common tree, checked column by column in C-level loops (a 1,000-file folder
    decodes several times faster than entry by entry, and a changed folder of a large
    dataset is decoded on every diff): every entry a 5-element array, plain ASCII names
    in strictly ascending order, fields of the right types. None when anything else is
    there: the entry-by-entry checks then find it and name it."""
    if not raw or set(map(type, raw)) != {list} or set(map(len, raw)) != {5}:
        return None
    names, kinds, ids, sizes, modes = zip(*raw)
    if set(map(type, names)) != {str} or _DOTS.intersection(names):
        return None
    joined = "".join(names)
    if not joined.isascii() or "/" in joined or "\\" in joined or "\x00" in joined:
        return None
    if not all(map(operator.lt, names, names[1:])):  # ASCII: str order is byte order
        return None
    # types first: a hostile kind may be unhashable (a list), which issuperset raises on
    if set(map(type, kinds)) != {int} or not _KINDS.issuperset(kinds):
        return None
    if set(map(type, ids)) != {bytes} or set(map(len, ids)) != {ID_SIZE}:
        return None
    if set(map(type, sizes)) != {int} or set(map(type, modes)) != {int}:
        return None
    if min(sizes) < 0 or min(modes) < 0:
        return None
    return dict(zip(names, map(_new_entry, zip(kinds, ids, sizes, modes))))


def decode_tree(data: bytes, oid: bytes | None = None) -> dict[str, Entry]:
    """Decode and validate a tree; names that could escape a folder raise IntegrityError."""
    raw = _unpackb(data, "tree", oid)
    label = to_hex(oid) if oid else "?"
    if not isinstance(raw, list):
        raise IntegrityError(f"tree {label}: malformed", oid)
    out: dict[str, Entry] = {}
    prev: bytes | None = None
    fast = _decode_plain(raw)
    if fast is not None:
        return fast
    for item in raw:
        try:
            name, kind, eid, size, mode = item
            if not _is_uint(kind) or kind not in (
                KIND_TREE,
                KIND_FILE,
                KIND_CHUNKFILE,
                KIND_EXTERNAL,
            ):
                raise ValueError("bad kind")
            if not _is_id(eid):
                raise ValueError("bad id")
            if not _is_uint(size) or not _is_uint(mode):
                raise ValueError("bad size or mode")
            validate_name(name)
        except (TypeError, ValueError, InvalidPathError) as e:
            raise IntegrityError(f"tree {label}: malformed entry {item!r:.80} ({e})", oid) from e
        k = _name_key(name)
        if prev is not None and k <= prev:
            raise IntegrityError(f"tree {label}: entries not strictly sorted", oid)
        prev = k
        out[name] = Entry(kind, eid, size, mode)
    return out


def differing_entries(
    a: bytes, b: bytes, a_id: bytes | None = None, b_id: bytes | None = None
) -> tuple[dict[str, Entry], dict[str, Entry]] | None:
    """The entries of encoded trees ``a`` and ``b`` that are not equal on the other
    side, validated as :func:`decode_tree` validates them, without decoding the rows
    the two share; None when the C module is not in use or cannot take these bytes
    (the caller then decodes both trees).

    A diff of two versions with 1% of 1M files changed across 1,000 folders decodes
    20,000 rows this way instead of 2M (docs/performance.md, "Changed folders and
    diffs on the encoded bytes"). The merge compares rows by their bytes, so two
    encodings of one value come back as a pair: equal pairs are dropped here, after
    decoding."""
    if treerows is None:
        return None
    delta = treerows.row_delta(a, b)
    if delta is None:
        return None
    ta, tb = decode_tree(delta[0], a_id), decode_tree(delta[1], b_id)
    for name in [n for n, e in ta.items() if tb.get(n) == e]:
        del ta[name], tb[name]
    return ta, tb


# -- external links ----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """An external file (``KIND_EXTERNAL``): content that stays at ``url``.

    ``size`` is its length when it was added; ``etag``/``version`` are what the object
    store reported (None where it reports nothing, as plain HTTP servers and local files
    do); ``mtime_ns`` is the source's modification time (local files and HTTP
    ``Last-Modified``). A copy checks all that is known before it uses the content.
    Stored as a chunk of canonical msgpack (docs/format.md §4.4).
    """

    url: str
    size: int
    etag: str | None = None
    version: str | None = None
    mtime_ns: int | None = None

    def encode(self) -> bytes:
        return _packb(
            canonical(
                {
                    "etag": self.etag,
                    "mtime_ns": self.mtime_ns,
                    "size": self.size,
                    "url": self.url,
                    "version": self.version,
                }
            )
        )

    @classmethod
    def decode(cls, data: bytes, oid: bytes | None = None) -> Link:
        raw = _unpackb(data, "link", oid)
        try:
            if not isinstance(raw, dict) or not isinstance(raw["url"], str) or not raw["url"]:
                raise ValueError("no url")
            if not _is_uint(raw["size"]):
                raise ValueError("bad size")
            for k in ("etag", "version"):
                if raw.get(k) is not None and not isinstance(raw[k], str):
                    raise ValueError(f"bad {k}")
            mt = raw.get("mtime_ns")
            if mt is not None and not isinstance(mt, int):
                raise ValueError("bad mtime_ns")
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"link {to_hex(oid) if oid else '?'}: malformed ({e})", oid) from e
        return cls(raw["url"], raw["size"], raw.get("etag"), raw.get("version"), mt)


# -- commits -----------------------------------------------------------------------


def canonical(obj: Any) -> Any:
    """Recursively sort map keys so msgpack output is canonical.

    Tuples become lists (msgpack has one array type). Keys must be str or bytes.
    """
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | bytes):
                raise TypeError(f"metadata keys must be str or bytes, got {k!r}")
            items.append((k, canonical(v)))
        items.sort(key=lambda kv: (isinstance(kv[0], bytes), kv[0]))
        return dict(items)
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Commit:
    """An immutable version: a root tree, ordered parents and a metadata map."""

    tree: bytes
    parents: tuple[bytes, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _packb(
            canonical({"meta": self.meta, "parents": list(self.parents), "tree": self.tree})
        )

    @property
    def id(self) -> bytes:
        return object_id(TAG_COMMIT, self.encode())

    @classmethod
    def decode(cls, data: bytes, oid: bytes | None = None) -> Commit:
        raw = _unpackb(data, "commit", oid)
        try:
            tree = raw["tree"]
            parents = tuple(raw["parents"])
            meta = raw["meta"]
            if not isinstance(raw["parents"], list) or not all(map(_is_id, (tree, *parents))):
                raise ValueError("bad id length")
            if not isinstance(meta, dict):
                raise ValueError("meta is not a map")
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(
                f"commit {to_hex(oid) if oid else '?'}: malformed ({e})", oid
            ) from e
        return cls(tree, parents, meta)


def iter_entries(entries: Mapping[str, Entry]) -> Iterable[tuple[str, Entry]]:
    """Entries in canonical (UTF-8 byte) order."""
    return sorted(entries.items(), key=lambda x: _name_key(x[0]))


EMPTY_TREE_BYTES = encode_tree({})
EMPTY_TREE_ID = object_id(TAG_TREE, EMPTY_TREE_BYTES)
