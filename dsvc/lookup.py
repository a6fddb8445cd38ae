"""Finding dataset records: in the local store, and on the default remote.

Lookups by name, project or tag consider local and remote records together (another
machine may have pushed a newer version); a remote that cannot be reached is reported
and the lookup goes on with local records. A record found only on the remote is
imported (metadata only) so the version can then be used offline.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from dsvc import registry as reg
from dsvc.errors import LIST_DATASETS, DsvcError, NotFoundError, RemoteError
from dsvc.store import Store


def warn(msg: str) -> None:
    """One ``dsvc: ...`` line on stderr."""
    print(f"dsvc: {msg}", file=sys.stderr)


def remote_for(store: Store, spec: str | None, *, required: bool = False, retries: int = 3) -> Any:
    """The remote for ``spec`` (a remote name or URL; None: the default), or None.

    The transport layer is imported lazily so local work never loads it.
    """
    from dsvc.remote import client

    return client.resolve(store, spec, required=required, retries=retries)


def known_records(store: Store) -> list[dict[str, Any]]:
    """Local records plus the default remote's (local only if it cannot be reached)."""
    recs = {r["id"]: r for r in reg.all_records(store)}
    try:
        for r in remote_records(store):
            recs.setdefault(r["id"], r)
    except RemoteError as e:
        warn(f"{e}; numbering versions from the local store only")
    return list(recs.values())


def remote_records(store: Store) -> list[dict[str, Any]]:
    remote = remote_for(store, None)
    return remote.list_records(store) if remote is not None else []


def remote_record(store: Store, dataset_id: str) -> dict[str, Any] | None:
    remote = remote_for(store, None)
    if remote is None:
        return None
    return remote.get_record(store, dataset_id)


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
) -> dict[str, Any] | None:
    """Find a record locally and on the default remote.

    By id: the local record, else the remote's (imported locally). By name, project or
    tags: the best match among local AND remote records, since another machine may have
    pushed a newer version; a remote that cannot be reached is reported and the lookup
    continues with local records only.
    """
    remote = None
    if dataset_id:
        rec = reg.get(store, dataset_id)
        if rec is None:
            remote = remote_for(store, None)
            rec = remote.get_record(store, dataset_id) if remote is not None else None
        candidates = [rec] if rec else []
    else:
        candidates = reg.all_records(store)
        try:
            remote = remote_for(store, None)
            if remote is not None:
                local_ids = {r["id"] for r in candidates}
                candidates += [r for r in remote.list_records(store) if r["id"] not in local_ids]
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
    if best is not None and reg.get(store, best["id"]) is None and remote is not None:
        best = remote.import_record(store, best)
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
