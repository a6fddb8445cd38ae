"""Dataset records and refs as types: every field checked once, where the bytes come in.

A record is the mutable side of a dataset version (name, tags, status, the staged tree
of a draft); it is stored as a msgpack map under ``ds/<id>`` in the local store and,
once finalized and pushed, under ``datasets/<id>`` on a remote. Its fields are listed,
with their types and bounds, in docs/format.md §8.

Anything read from a remote may have been written by someone hostile or by a broken
client, so :meth:`Record.from_msgpack` / :meth:`Record.from_dict` check every field
(types, lengths, formats; the id is 32 lowercase hex and equals the key it was read
from) and raise :class:`~dsvc.errors.IntegrityError` naming that key. Code above this
module may then build paths from ``Record.id`` and trust ``tree``/``commit`` to be ids.
:func:`parse_ref` does the same for a remote's name refs.

Unknown fields are kept (``extra``) and written back unchanged, so a newer dsvc's
records survive a round trip through an older one; a field gains meaning only by being
added to :data:`FIELDS` here (and to the table in docs/format.md).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import msgpack

from dsvc.errors import IntegrityError
from dsvc.ids import ID_SIZE
from dsvc.objects import EMPTY_TREE_ID

#: version of the record layout described in docs/format.md §8
RECORD_VERSION = 1

DRAFT = "draft"
FINAL = "final"
PUBLISHED = "published"
STATUSES = (DRAFT, FINAL, PUBLISHED)

#: a record (msgpack) larger than this is refused: metadata belongs in files
MAX_RECORD_BYTES = 64 << 20
#: a ref document larger than this is refused (about 500,000 versions of one name)
MAX_REF_BYTES = 64 << 20
#: longest name, project, tag, URL or version string (characters)
MAX_TEXT = 4096
#: longest description (characters)
MAX_DESCRIPTION = 1 << 20
#: most tags, parents or squashed versions in one record
MAX_LIST = 100_000

_HEX_ID = re.compile(r"[0-9a-f]{32}")


def is_hex32(v: Any) -> bool:
    """True when ``v`` is exactly 32 lowercase hex characters (a dataset id or a pack
    name: safe to use as a file name or an object key)."""
    return isinstance(v, str) and _HEX_ID.fullmatch(v) is not None


is_dataset_id = is_hex32


class _Bad(ValueError):
    """One field failed its check (turned into IntegrityError naming the key)."""


def _text(v: Any, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{what} must be text, got {type(v).__name__}")
    if len(v) > limit:
        raise _Bad(f"{what} is longer than {limit} characters")
    return v


def _opt_text(v: Any, what: str, limit: int = MAX_TEXT) -> str | None:
    return None if v is None else _text(v, what, limit)


def _oid(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != ID_SIZE:
        raise _Bad(f"{what} must be a {ID_SIZE}-byte id")
    return v


def _opt_oid(v: Any, what: str) -> bytes | None:
    return None if v is None else _oid(v, what)


def _did(v: Any, what: str) -> str:
    if not is_dataset_id(v):
        raise _Bad(f"{what} must be a dataset id (32 lowercase hex characters), got {v!r:.60}")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise _Bad(f"{what} must be a list, got {type(v).__name__}")
    if len(v) > MAX_LIST:
        raise _Bad(f"{what} has more than {MAX_LIST} items")
    return list(v)


def _time(v: Any, what: str) -> int:
    # nanoseconds since the epoch; int64 range so datetime and msgpack handle it
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
        raise _Bad(f"{what} must be a non-negative integer (ns), got {v!r:.40}")
    return v


def _opt_time(v: Any, what: str) -> int | None:
    return None if v is None else _time(v, what)


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"{what} must be true or false")
    return v


def _metadata(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _Bad(f"{what} must be a map with text keys")
    return v


def _finalizing(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or set(v) != {"commit", "meta"}:
        raise _Bad(f"{what} must be a map with commit and meta")
    _oid(v["commit"], f"{what}.commit")
    _metadata(v["meta"], f"{what}.meta")
    return v


def _status(v: Any, what: str) -> str:
    if v not in STATUSES or not isinstance(v, str):
        raise _Bad(f"{what} must be one of {', '.join(STATUSES)}, got {v!r:.40}")
    return v


#: field -> (check, default when absent; REQUIRED: must be present)
REQUIRED = object()
FIELDS: dict[str, tuple[Any, Any]] = {
    "id": (_did, REQUIRED),
    "name": (_text, REQUIRED),
    "project": (_text, REQUIRED),
    "version": (_opt_text, None),
    "tags": (lambda v, w: [_text(t, f"{w} item") for t in _list(v, w)], list),
    "description": (lambda v, w: _text(v, w, MAX_DESCRIPTION), ""),
    "status": (_status, REQUIRED),
    "parents": (lambda v, w: [_did(p, f"{w} item") for p in _list(v, w)], list),
    "parent_commits": (lambda v, w: [_oid(c, f"{w} item") for c in _list(v, w)], list),
    "base_tree": (_opt_oid, None),
    "tree": (_oid, REQUIRED),
    "uploaded_tree": (_opt_oid, None),
    "commit": (_opt_oid, None),
    "created": (_time, REQUIRED),
    "modified": (_opt_time, None),
    "finalized": (_opt_time, None),
    "output_uri": (_opt_text, None),
    "remote": (_opt_text, None),
    "metadata": (_metadata, dict),
    "archived": (_bool, False),
    # absent: unknown, so "may have removed" (squash then merges instead of assuming)
    "removed_any": (_bool, True),
    "squashed_from": (lambda v, w: [_did(p, f"{w} item") for p in _list(v, w)], list),
    "finalizing": (_finalizing, None),
}

# Which layer owns which field (docs/format.md §8, "owner"):
#: never published to a remote: what this store did with the version
LOCAL_FIELDS = ("uploaded_tree", "remote", "finalizing")
#: the mutable metadata of a finalized version, exchanged through a remote's
#: ``meta/<id>`` (remote/sync.py); every other field is fixed once the version is final
META_FIELDS = ("name", "project", "version", "tags", "description", "status")
#: written only when set (absent and nil mean the same): a draft being finalized
_OMIT_NONE = ("finalizing",)


@dataclass(frozen=True)
class Record:
    """One dataset version's record, validated (see docs/format.md §8).

    A value: change it by copying (:meth:`replace`); the registry stores it with
    compare-and-swap (``registry.update``)."""

    id: str
    name: str
    project: str
    status: str
    tree: bytes
    created: int
    version: str | None = None
    tags: list[str] = field(default_factory=list)
    description: str = ""
    parents: list[str] = field(default_factory=list)
    parent_commits: list[bytes] = field(default_factory=list)
    base_tree: bytes | None = None
    uploaded_tree: bytes | None = None
    commit: bytes | None = None
    modified: int | None = None
    finalized: int | None = None
    output_uri: str | None = None
    remote: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    archived: bool = False
    removed_any: bool = True
    squashed_from: list[str] = field(default_factory=list)
    #: a draft being finalized: ``{"commit": id, "meta": commit meta}`` (dataset.py)
    finalizing: dict[str, Any] | None = None
    #: fields this version of dsvc does not know, kept as they are
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls, raw: Any, key: str, *, expect_id: str | None = None, finalized: bool = False
    ) -> Record:
        """Check ``raw`` (a decoded record read from ``key``) field by field.

        ``expect_id``: the id the key names (the record's ``id`` must equal it).
        ``finalized``: the record must be a finalized version (all a remote holds).
        Raises IntegrityError naming ``key`` and the first bad field.
        """
        if not isinstance(raw, dict):
            raise IntegrityError(
                f"record {key} is malformed: a map was expected, got {type(raw).__name__}"
            )
        vals: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        try:
            for k, v in raw.items():
                if not isinstance(k, str):
                    raise _Bad(f"field name {k!r:.40} is not text")
                if k not in FIELDS:
                    extra[k] = v
            for name, (check, default) in FIELDS.items():
                if name in raw and (raw[name] is not None or default is None):
                    vals[name] = check(raw[name], name)
                elif default is REQUIRED:
                    raise _Bad(f"field {name!r} is missing")
                else:
                    vals[name] = default() if callable(default) else default
            if expect_id is not None and vals["id"] != expect_id:
                raise _Bad(f"its id {vals['id']} does not match the key")
            if finalized and (vals["commit"] is None or vals["status"] == DRAFT):
                raise _Bad("it is not a finalized version (no commit)")
        except _Bad as e:
            raise IntegrityError(
                f"record {key} is malformed: {e}; remove or re-push it with a current dsvc"
            ) from None
        return cls(**vals, extra=extra)

    @classmethod
    def from_msgpack(
        cls,
        data: bytes | memoryview,
        key: str,
        *,
        expect_id: str | None = None,
        finalized: bool = False,
    ) -> Record:
        """Decode and check a record's bytes (see :meth:`from_dict`)."""
        if len(data) > MAX_RECORD_BYTES:
            raise IntegrityError(f"record {key} is larger than {MAX_RECORD_BYTES} bytes")
        return cls.from_dict(
            unpack(data, f"record {key}"), key, expect_id=expect_id, finalized=finalized
        )

    def to_dict(self) -> dict[str, Any]:
        """The record as the map the dataset layer and the stores use."""
        out = {**self.extra}
        for f in fields(self):
            if f.name != "extra":
                v = getattr(self, f.name)
                if v is None and f.name in _OMIT_NONE:
                    continue
                out[f.name] = list(v) if isinstance(v, list) else v
        return out

    @property
    def base(self) -> bytes:
        """The tree this version's changes are counted from: ``base_tree`` (``create``
        always sets it), else the empty tree (a version without one has no parents)."""
        return self.base_tree if self.base_tree is not None else EMPTY_TREE_ID

    def replace(self, **changes: Any) -> Record:
        """A copy with ``changes`` applied (records are values: change by copying)."""
        return dataclasses.replace(self, **changes)

    def published(self) -> dict[str, Any]:
        """The map a remote stores under ``datasets/<id>``: without :data:`LOCAL_FIELDS`."""
        return {k: v for k, v in self.to_dict().items() if k not in LOCAL_FIELDS}

    def to_msgpack(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)


class Listed(Protocol):
    """What listing and lookup read of a version (registry.filter_records/latest): a
    :class:`Record`, or the :class:`Summary` the store's name index keeps."""

    @property
    def id(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def archived(self) -> bool: ...
    @property
    def created(self) -> int: ...
    @property
    def modified(self) -> int | None: ...


@dataclass(frozen=True)
class Summary:
    """A version as the store's name index lists it (``store.SUMMARY_FIELDS`` of its
    record): enough to filter and pick the latest without reading every record."""

    id: str
    project: str
    name: str
    version: str | None
    status: str
    tags: list[str]
    archived: bool
    created: int
    modified: int | None

    @classmethod
    def from_index(cls, d: dict[str, Any]) -> Summary:
        """From a name-index entry (a local, already checked record's fields)."""
        return cls(
            id=d["id"],
            project=d["project"],
            name=d["name"],
            version=d.get("version"),
            status=d.get("status") or "",
            tags=list(d.get("tags") or []),
            archived=bool(d.get("archived")),
            created=int(d.get("created") or 0),
            modified=d.get("modified"),
        )


def unpack(data: bytes | memoryview, what: str) -> Any:
    """msgpack-decode bytes from outside; any decoder failure is an IntegrityError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise IntegrityError(f"{what} is malformed ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class Ref:
    """A remote's name ref: which versions (id -> version string) carry a name."""

    project: str
    name: str
    versions: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "name": self.name, "versions": dict(self.versions)}


def parse_ref(data: bytes | memoryview, key: str) -> Ref:
    """Decode and check a ref document read from ``key`` (IntegrityError names it)."""
    if len(data) > MAX_REF_BYTES:
        raise IntegrityError(f"ref {key} is larger than {MAX_REF_BYTES} bytes")
    raw = unpack(data, f"ref {key}")
    try:
        if not isinstance(raw, dict):
            raise _Bad(f"a map was expected, got {type(raw).__name__}")
        project = _text(raw.get("project"), "project")
        name = _text(raw.get("name"), "name")
        versions = raw.get("versions")
        if not isinstance(versions, dict):
            raise _Bad("versions must be a map")
        out = {_did(k, "a version's id"): _opt_text(v, "version") for k, v in versions.items()}
    except _Bad as e:
        raise IntegrityError(f"ref {key} is malformed: {e}") from None
    return Ref(project, name, out)


def is_timestamp(v: Any) -> bool:
    """A finite, non-negative number of seconds (as in ``gc/marks``)."""
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and 0 <= v < 1 << 53
    )
