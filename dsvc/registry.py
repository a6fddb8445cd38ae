"""Dataset records: what a version is called and where it stands, kept in the store.

A record is a msgpack map under ``ds/<dataset id>`` in the ``records`` database (its
fields are listed in docs/format.md). Records are the mutable side of a dataset
(name, tags, status, the staged tree of a draft); commits are the immutable side.

Every change to a record is a compare-and-swap against the value read, so two processes
editing one draft never lose each other's work: the loser re-applies its change to the
new value (see :func:`update`).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

from dsvc.errors import InvalidPathError, NotFoundError
from dsvc.record import Listed, Record
from dsvc.retry import cas_retry
from dsvc.store import RECORD_PREFIX, Store, default_home

#: a Record or a name-index Summary: listing and lookup read only what both have
L = TypeVar("L", bound=Listed)

DRAFT = "draft"
FINAL = "final"
PUBLISHED = "published"
COMPLETED_STATES = (FINAL, PUBLISHED)

PREFIX = RECORD_PREFIX
LAST_USED = "state/last_dataset"

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()
#: stores inherited through fork: an LMDB environment must not be used in a child
#: (DataLoader workers, multiprocessing), so the child opens its own. py-lmdb refuses a
#: second open of an environment it believes open, so the child closes its inherited
#: copy first (LMDB then releases only the child's mapping and file descriptors: reader
#: slots are cleared by pid, the parent's are untouched).
_inherited: list[Store] = []
#: what was attached to inherited stores (open remotes): their obstore clients belong to
#: the parent (a child opens its own), but they stay referenced so the child never tears
#: the parent's down
_inherited_attached: list[Any] = []


def _after_fork_in_child() -> None:
    global _stores_lock
    for s in _stores.values():
        _inherited_attached.extend(s.detach_all(after_fork=True))
        try:
            s.close()
        except Exception:  # the child must start even if an inherited env is odd
            _inherited.append(s)  # kept referenced: never torn down by the collector
    _stores.clear()
    _stores_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_store(home: str | os.PathLike[str] | None = None) -> Store:
    """The process-wide store for ``home`` (default ``$DSVC_HOME``).

    LMDB forbids opening one environment twice in a process, so stores are shared.
    """
    path = str(default_home() if home is None else os.path.abspath(os.fspath(home)))
    with _stores_lock:
        s = _stores.get(path)
        if s is None:
            s = _stores[path] = Store(path)
        return s


def close_store(home: str | os.PathLike[str]) -> None:
    """Close and forget the process-wide store for ``home`` (no-op if not open)."""
    with _stores_lock:
        s = _stores.pop(str(os.path.abspath(os.fspath(home))), None)
    if s is not None:
        _close(s)


def close_all() -> None:
    """Close every process-wide store. Each maps a large virtual range (LMDB), so a
    process that visits many stores (a test run) closes those it is done with."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for s in stores:
        _close(s)


def _close(s: Store) -> None:
    s.close()  # its open remotes go with it (Store.attached)


def last_used(store: Store) -> str | None:
    """The id of the dataset the last ``dsvc`` command acted on (clearml-data's rule).

    Only CLI commands set it (``dsvc.cli.core.remember``); Python calls never do, so a
    script cannot change what a bare ``dsvc add`` or ``dsvc close`` acts on.
    """
    return store.get_record(LAST_USED)


def key(dataset_id: str) -> str:
    return PREFIX + dataset_id


def _record(raw: Any, k: str) -> Record:
    # every record is checked as it is read, local ones too: the store is written only
    # through Record (insert/update below, and the transport's import), so this fails
    # only on damage, and then names the key
    return Record.from_dict(raw, k)


def get(store: Store, dataset_id: str) -> Record | None:
    k = key(dataset_id)
    raw = store.get_record(k)
    return None if raw is None else _record(raw, k)


def require(store: Store, dataset_id: str) -> Record:
    rec = get(store, dataset_id)
    if rec is None:
        raise NotFoundError(
            f"dataset {dataset_id} not found in {store.home}; check the id with `dsvc search`"
        )
    return rec


def insert(store: Store, rec: Record) -> None:
    store.cas_record(key(rec.id), None, rec.to_dict())


def update(
    store: Store,
    dataset_id: str,
    change: Callable[[Record], Record],
) -> Record:
    """Apply ``change`` to the current record with compare-and-swap, retrying on races
    (:func:`dsvc.retry.cas_retry`).

    ``change`` gets the current record and returns the new one (``rec.replace(...)``);
    it may raise to abort (nothing is written). Returns the record as stored.
    """
    k = key(dataset_id)

    def attempt() -> Record:
        raw = store.get_record(k)
        if raw is None:
            require(store, dataset_id)  # raises NotFoundError
        new = change(_record(raw, k)).replace(modified=time.time_ns())
        store.cas_record(k, raw, new.to_dict())  # against the bytes as read
        return new

    return cas_retry(attempt, f"dataset {dataset_id}: too many concurrent updates, try again")


def remove(store: Store, dataset_id: str) -> None:
    store.delete_record(key(dataset_id))


def all_records(store: Store) -> list[Record]:
    return [_record(v, k) for k, v in store.iter_records(PREFIX)]


# -- project and name rules ------------------------------------------------------------

#: longest project or name, counted as the remote keys spell it (percent-encoded UTF-8).
#: Each is one path component of a ref key: a folder remote's 255-byte file-name limit
#: minus its temporary-file affixes (38 bytes), rounded down; S3's 1024-byte keys hold two.
MAX_LABEL_BYTES = 200


def check_label(what: str, value: Any) -> str:
    """Check a dataset project or name before anything is written; returns it.

    Rules (docs/guide.md, "Names"): text, not blank; no control characters; at most
    :data:`MAX_LABEL_BYTES` once percent-encoded; a name has no ``/`` and is not ``.`` or
    ``..``; a project is ``/``-separated subprojects, none empty, ``.`` or ``..`` (so no
    leading, trailing or double ``/``). Remotes key refs by project and name, so a
    label breaking these rules would fail *after* the remote record was created.
    """
    kind = "project" if what == "project" else "name"
    if not isinstance(value, str) or not value.strip():
        raise InvalidPathError(f"dataset {kind} must be non-empty text, got {value!r}")
    bad = [c for c in value if unicodedata.category(c) == "Cc"]
    if bad:
        raise InvalidPathError(
            f"dataset {kind} {value!r} contains control characters {sorted(set(bad))!r}"
        )
    parts = value.split("/") if kind == "project" else [value]
    if kind == "name" and "/" in value:
        raise InvalidPathError(
            f"dataset name {value!r} contains '/'; put folders in the project ('a/b') instead"
        )
    for p in parts:
        if p in ("", ".", ".."):
            raise InvalidPathError(
                f"dataset {kind} {value!r}: {p!r} is not allowed"
                + (" as a subproject (no leading, trailing or double '/')" if kind == "project" else "")
            )
    size = len(quote(value, safe=""))
    if size > MAX_LABEL_BYTES:
        raise InvalidPathError(
            f"dataset {kind} {value[:40]!r}... is too long: {size} bytes percent-encoded, at "
            f"most {MAX_LABEL_BYTES} ({MAX_LABEL_BYTES} ASCII characters, fewer for others)"
        )
    return value


# -- versions ----------------------------------------------------------------------


def parse_version(v: Any) -> Version | None:
    """A PEP 440 version (``1.0.0``, ``v2.0``, ``1.0.0rc1``, ``1.0.post1``), or None.

    ClearML compares dataset versions with a copy of ``packaging``'s PEP 440 ``Version``
    (clearml/utilities/version.py), so dsvc uses ``packaging`` itself.
    """
    if not isinstance(v, str) or not v.strip():
        return None
    return _parse_version(v)


@functools.lru_cache(maxsize=1 << 16)
def _parse_version(v: str) -> Version | None:
    # cached: a lookup among thousands of versions of one name parses each one once
    # per process (Version objects are immutable)
    try:
        return Version(v.strip())
    except InvalidVersion:
        return None


def bump(v: str) -> str:
    """The next version, as ClearML's ``Version.get_next_version`` makes it: the number
    of the dev part, else the post part, else the pre-release part, else the last
    release number goes up by one (``1.0.0`` -> ``1.0.1``, ``1.0.0rc1`` -> ``1.0.0rc2``,
    ``1.0.0.post1`` -> ``1.0.0.post2``, ``v2.0.0`` -> ``2.0.1``). The result is in
    PEP 440's normal form. Text that is no version gets ``.1`` appended.
    """
    p = parse_version(v)
    if p is None:
        return v.strip() + ".1"
    release, pre, post, dev = p.release, p.pre, p.post, p.dev
    if dev is not None:
        dev += 1
    elif post is not None:
        post += 1
    elif pre is not None:
        pre = (pre[0], pre[1] + 1)
    else:
        release = (*release[:-1], release[-1] + 1)
    out = (f"{p.epoch}!" if p.epoch else "") + ".".join(str(x) for x in release)
    if pre is not None:
        out += f"{pre[0]}{pre[1]}"
    if post is not None:
        out += f".post{post}"
    if dev is not None:
        out += f".dev{dev}"
    if p.local:
        out += f"+{p.local}"
    return out


def _updated(r: Listed) -> int:
    return int(r.modified or r.created or 0)


def latest(records: Iterable[L]) -> L | None:
    """The record ClearML's lookup picks (``Dataset._get_dataset_id``): the highest
    valid version; among equal versions, and when no version is valid, the most
    recently updated one."""
    best: L | None = None
    best_v: Version | None = None
    for r in sorted(records, key=_updated, reverse=True):
        v = parse_version(r.version)
        if best is None or (v is not None and (best_v is None or best_v < v)):
            best, best_v = r, v
    return best


def next_version(records: Iterable[Listed]) -> str:
    """The version a new member of a project/name gets: the latest one bumped
    (``1.0.0`` when there is none, or when the latest has no valid version)."""
    top = latest(records)
    v = None if top is None else top.version
    if v is None or parse_version(v) is None:
        return "1.0.0"
    return bump(v)


def project_matches(project: str, wanted: str, recursive: bool) -> bool:
    return project == wanted or (recursive and project.startswith(wanted.rstrip("/") + "/"))


def name_matches(name: str, partial: str) -> bool:
    """ClearML treats ``partial_name`` as a regular expression searched in the name."""
    try:
        return re.search(partial, name) is not None
    except re.error:
        return partial in name


def filter_records(
    records: Iterable[L],
    *,
    project: str | None = None,
    name: str | None = None,
    partial_name: str | None = None,
    tags: Iterable[str] | None = None,
    ids: Iterable[str] | None = None,
    version: str | None = None,
    only_completed: bool = False,
    only_published: bool = False,
    include_archived: bool = True,
    recursive_project: bool = False,
) -> list[L]:
    tagset = set(tags or ())
    idset = set(ids) if ids is not None else None
    out = []
    for r in records:
        if idset is not None and r.id not in idset:
            continue
        if project is not None and not project_matches(r.project, project, recursive_project):
            continue
        if name is not None and r.name != name:
            continue
        if partial_name is not None and not name_matches(r.name, partial_name):
            continue
        if tagset and not tagset.intersection(r.tags or ()):
            continue
        if version is not None and r.version != version:
            continue
        if only_published and r.status != PUBLISHED:
            continue
        if only_completed and r.status not in COMPLETED_STATES:
            continue
        if not include_archived and r.archived:
            continue
        out.append(r)
    return out
