"""Finding dataset records: in the local store, and on the default remote.

Lookups by name, project or tag consider local and remote records together (another
machine may have pushed a newer version); a remote that cannot be reached is reported
and the lookup goes on with local records. A record found only on the remote is
imported (metadata only) so the version can then be used offline.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, overload

from dsvc import registry as reg
from dsvc.errors import (
    LIST_DATASETS,
    DsvcError,
    IntegrityError,
    NotFoundError,
    RemoteError,
    UsageError,
)
from dsvc.record import Listed, Record, Summary
from dsvc.store import Store

if TYPE_CHECKING:
    from packaging.version import Version

    from dsvc.remote.client import Remote


def warn(msg: str) -> None:
    """One ``dsvc: ...`` line on stderr."""
    print(f"dsvc: {msg}", file=sys.stderr)


@overload
def remote_for(
    store: Store, spec: str | None, *, required: Literal[True], retries: int = 3
) -> Remote: ...
@overload
def remote_for(
    store: Store, spec: str | None, *, required: bool = False, retries: int = 3
) -> Remote | None: ...
def remote_for(
    store: Store, spec: str | None, *, required: bool = False, retries: int = 3
) -> Remote | None:
    """The remote for ``spec`` (a remote name or URL; None: the default), or None.

    The transport layer is imported lazily so local work never loads it.
    """
    from dsvc.remote import client  # the transport (obstore) loads when a remote is used

    return client.resolve(store, spec, required=required, retries=retries)


def reach_destination(store: Store, spec: str, what: str, *, starting: bool) -> None:
    """Check an ``output_uri``/``output_url`` before anything depends on it.

    A configured remote (by name or URL) is used as configured. Any other URL is
    reached now: one that cannot be (a bucket that does not exist, no access, the parent
    of a folder that does not exist: most likely a typo) is a :class:`RemoteError`
    naming it and the configured remotes, raised before anything is written. One that
    can be but holds no repository yet is where the first upload starts one (as
    ClearML's ``output_url`` does); ``starting`` says so on stderr, so a mistyped
    prefix never silently becomes a new repository."""
    from dsvc.remote import config  # the transport loads only when a remote is used

    found = config.lookup(store, spec)  # checks the URL's syntax
    if found is None or found[0] is not None:
        return
    url = found[1]
    names = ", ".join(f"{r['name']} ({r['url']})" for r in config.list_remotes(store))
    head = f"{what} {url} is not a configured remote (configured: {names or 'none'})"
    fix = "fix the URL, or add the remote with `dsvc remote add NAME URL`"
    remote = remote_for(store, url, required=True)
    try:
        exists = remote.ensure_repo(create=False)
    except RemoteError as e:
        raise RemoteError(f"{head} and cannot be reached: {e}; {fix}") from None
    if exists:
        return
    root = remote.backend.local_root
    if root is not None and not root.parent.is_dir():
        raise RemoteError(
            f"{head} and cannot be reached: the folder {root.parent} does not exist; {fix}"
        )
    if starting:
        warn(f"{head}: starting a new dsvc repository there")


def known_records(store: Store) -> list[Record]:
    """Local records plus the default remote's (local only if it cannot be reached)."""
    recs = {r.id: r for r in reg.all_records(store)}
    try:
        for r in remote_records(store):
            recs.setdefault(r.id, r)
    except RemoteError as e:
        warn(f"{e}; numbering versions from the local store only")
    return list(recs.values())


def remote_for_or_none(store: Store) -> Remote | None:
    """The default remote, or None when there is none or it cannot be reached (said on
    stderr)."""
    try:
        return remote_for(store, None)
    except RemoteError as e:
        warn(f"{e}; looking in the local store only")
        return None


def remote_records(store: Store) -> list[Record]:
    remote = remote_for(store, None)
    return remote.list_records() if remote is not None else []


def remote_record(store: Store, dataset_id: str) -> Record | None:
    remote = remote_for(store, None)
    if remote is None:
        return None
    return remote.get_record(dataset_id)


def remote_named(
    store: Store,
    remote: Remote,
    project: str,
    name: str,
    keep: Callable[[Listed], bool],
    skip: set[str],
    version: str | None = None,
) -> list[Record]:
    """The remote's records of ``project``/``name`` that ``keep`` accepts and that can
    be the latest (:func:`dsvc.registry.latest`): read through the name's ref, highest
    version first, a group of equal versions at a time, stopping below the first group
    that has a match. So a lookup costs the ref and the records at the top, not every
    record of the remote (issue 11). ``skip``: ids known locally; ``version``: only
    versions the ref lists as that string. A version this store has a record of is
    never taken from the remote: the local record (which may have been renamed or
    moved since, not yet pushed) says which name it answers to."""
    if not remote.ensure_repo(create=False):
        return []

    def local(did: str) -> bool:
        return did in skip or store.get_record(reg.key(did)) is not None

    try:
        ref = remote.read_ref(project, name)
    except IntegrityError as e:  # one bad object must not break lookups: list them all
        warn(f"warning: {e}; reading every record of remote {remote.url} instead")
        return [
            r
            for r in remote.list_records()
            if (r.project, r.name) == (project, name)
            and not local(r.id)
            and (version is None or r.version == version)
            and keep(r)
        ]
    groups: dict[Version | None, list[str]] = defaultdict(list)
    for did, ver in ((ref or {}).get("versions") or {}).items():
        if did not in skip and (version is None or ver == version):
            groups[reg.parse_version(ver)].append(did)
    found: list[Record] = []
    with ThreadPoolExecutor(8, thread_name_prefix="dsvc-lookup") as pool:
        # None (no valid version) last: a valid version always wins (registry.latest)
        for ver in sorted(groups, key=lambda v: (v is not None, v or 0), reverse=True):
            if found:
                break
            # only the group read is checked against the local records (not the ref)
            ids = [did for did in groups[ver] if not local(did)]
            for rec in pool.map(remote.readable_record, ids):
                # a renamed version stays listed under its old name: check the record
                if rec is None or (rec.project, rec.name) != (project, name):
                    continue
                if keep(rec):
                    found.append(rec)
    return found


def latest_named(
    store: Store,
    project: str,
    name: str,
    *,
    keep: Callable[[Listed], bool] = lambda r: True,
    version: str | None = None,
    remote: Remote | None | bool = True,
    unreachable: str = "looking in the local store only",
) -> Summary | Record | None:
    """The latest version of ``project``/``name`` (the ClearML rule of
    :func:`dsvc.registry.latest`) among those ``keep`` accepts, locally (through the
    store's name index: summaries, not records) and on the default remote (through its
    ref; ``remote=False``: local only). Returns a local record's summary
    (:func:`dsvc.store.record_summary`), or a remote record, or None."""
    listed = [Summary.from_index(s) for s in store.name_index(project, name)]
    found: list[Summary | Record] = [s for s in listed if keep(s)]
    try:
        r = remote_for(store, None) if remote is True else remote or None
        if r is not None:
            skip = {s.id for s in listed}
            found += remote_named(store, r, project, name, keep, skip, version)
    except RemoteError as e:
        warn(f"{e}; {unreachable}")
    return reg.latest(found)


def find_record(
    store: Store,
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    tags: Sequence[str] | None,
    version: str | None,
    only_completed: bool,
    only_published: bool,
    include_archived: bool,
) -> Record | None:
    """Find a record locally and on the default remote.

    By id: the local record, else the remote's (imported locally). By name, project or
    tags: the best match among local AND remote records, since another machine may have
    pushed a newer version; a remote that cannot be reached is reported and the lookup
    continues with local records only.
    """
    remote = None
    if not dataset_id and project and name:  # by name: the name index and the ref

        def keep(r: Listed) -> bool:
            return bool(
                reg.filter_records(
                    [r],
                    tags=tags,
                    version=version,
                    only_completed=only_completed,
                    only_published=only_published,
                    include_archived=include_archived,
                )
            )

        remote = remote_for_or_none(store)
        top = latest_named(store, project, name, keep=keep, version=version, remote=remote or False)
        if top is None:
            return None
        local = reg.get(store, top.id)
        if local is not None:
            return local
        if remote is None or not isinstance(top, Record):
            return None  # a summary's record is local: only deleted meanwhile
        return remote.import_record(top)
    if dataset_id:
        rec = reg.get(store, dataset_id)
        if rec is None:
            remote = remote_for(store, None)
            rec = remote.get_record(dataset_id) if remote is not None else None
        candidates = [rec] if rec else []
    else:
        candidates = reg.all_records(store)
        try:
            remote = remote_for(store, None)
            if remote is not None:
                local_ids = {r.id for r in candidates}
                candidates += [r for r in remote.list_records() if r.id not in local_ids]
        except RemoteError as e:
            warn(f"{e}; looking in the local store only")
    if dataset_id:
        # by id, ClearML ignores every other filter (Dataset.get -> get_instance)
        found = candidates
    else:
        found = reg.filter_records(
            candidates,
            project=project,
            name=name,
            tags=tags,
            version=version,
            only_completed=only_completed,
            only_published=only_published,
            include_archived=include_archived,
        )
    # ClearML's Dataset.get picks the highest version even for a project-only or
    # tags-only lookup (Dataset._get_dataset_id), whatever its SDK page says
    best = reg.latest(found)
    if best is not None and reg.get(store, best.id) is None and remote is not None:
        best = remote.import_record(best)
    return best


def not_found_error(
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    tags: Sequence[str] | None,
    version: str | None,
) -> DsvcError:
    """The error for a lookup that found nothing (saying what to pass when nothing was)."""
    if not (dataset_id or project or name or tags):
        return NotFoundError(not_found_message(dataset_id, project, name, tags, version))
    return NotFoundError(
        not_found_message(dataset_id, project, name, tags, version), remedy=LIST_DATASETS
    )


def not_found_message(
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    tags: Sequence[str] | None,
    version: str | None,
) -> str:
    if dataset_id:
        what = f"id {dataset_id}"
    else:
        bits = [
            f"project {project!r}" if project else "",
            f"name {name!r}" if name else "",
            f"tags {list(tags)!r}" if tags else "",
            f"version {version!r}" if version else "",
        ]
        what = ", ".join(b for b in bits if b) or "no criteria"
        if not (dataset_id or project or name or tags):
            return "Dataset.get needs dataset_id, dataset_project/dataset_name or dataset_tags"
    return f"no dataset found with {what} (locally or on the default remote)"


def check_get_criteria(
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    tags: Sequence[str] | None,
    kwargs: dict[str, Any],
) -> None:
    """``Dataset.get``'s criteria checked as ClearML checks them, before any lookup."""
    unknown = sorted(k for k in kwargs if not k.startswith("_"))
    if unknown:
        raise UsageError(f"Invalid 'Dataset.get' arguments: {unknown}")
    if not any([dataset_id, project, name, tags]):
        raise UsageError(
            "Dataset selection criteria not met: Dataset.get needs dataset_id, "
            "dataset_project and/or dataset_name, or dataset_tags"
        )
    if dataset_id and (project or name):
        # ClearML: mutually_exclusive(dataset_id=..., dataset_project/dataset_name=...)
        raise UsageError("Dataset.get takes dataset_id or dataset_project/dataset_name, not both")


def squash_sources(
    store: Store,
    dataset_ids: Sequence[str] | None,
    project_name_pairs: Sequence[tuple[str, str]] | None,
) -> list[Record]:
    """The finalized versions ``Dataset.squash`` merges, in order: by id (any state
    found, then checked), or the latest completed version of each (project, name)."""
    if dataset_ids:
        recs = [
            find_record(store, d, None, None, None, None, False, False, True) for d in dataset_ids
        ]
        if any(r is None for r in recs):
            raise NotFoundError(f"squash: dataset {list(dataset_ids)} not all found")
    elif project_name_pairs:
        recs = [
            find_record(store, None, p, n, None, None, True, False, True)
            for p, n in project_name_pairs
        ]
        if any(r is None for r in recs):
            raise NotFoundError(
                f"squash: not every (project, name) in {project_name_pairs} exists"
            )
    else:
        raise UsageError("Dataset.squash needs dataset_ids or dataset_project_name_pairs")
    return [r for r in recs if r is not None]  # every one (checked above)


def finalized_last_parent(store: Store) -> Callable[[Record], Record | None]:
    """For ``treeops.squash_tree``: a record's last parent, if that version is finalized."""

    def last(r: Record) -> Record | None:
        parents = r.parents or []
        p = reg.get(store, parents[-1]) if parents else None
        return p if p is not None and p.status in reg.COMPLETED_STATES else None

    return last
