"""The catalogue of dataset versions: listing them, deleting them, renaming them and
moving them to another project.

These are ClearML's ``Dataset`` class methods that act on many versions, or on a
version by its labels, rather than on one version being built or read; ``Dataset``
keeps their public signatures and delegates here. Finding one version is
:mod:`dsvc.lookup`'s job, the record store :mod:`dsvc.registry`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from dsvc import registry as reg
from dsvc.errors import FORCE_DELETE, LIST_DATASETS, NotFoundError, StateError, UsageError
from dsvc.lookup import known_records, not_found_error, remote_for
from dsvc.record import Record
from dsvc.store import Store

#: the task status ClearML's ``list_datasets`` reports for each dsvc state
CLEARML_STATUS = {reg.DRAFT: "in_progress", reg.FINAL: "completed", reg.PUBLISHED: "published"}


def list_datasets(
    store: Store,
    *,
    dataset_project: str | None,
    partial_name: str | None,
    tags: Sequence[str] | None,
    ids: Sequence[str] | None,
    only_completed: bool,
    recursive_project_search: bool,
    include_archived: bool,
) -> list[dict[str, Any]]:
    """``Dataset.list_datasets``: the summaries of the local and the default remote's
    versions that match, newest first."""
    found = reg.filter_records(
        known_records(store),
        project=dataset_project,
        partial_name=partial_name,
        tags=tags,
        ids=ids,
        only_completed=only_completed,
        include_archived=include_archived,
        recursive_project=recursive_project_search,
    )
    found.sort(key=lambda r: r.created, reverse=True)
    return [summary(r) for r in found]


def summary(r: Record) -> dict[str, Any]:
    """One version as ClearML's ``list_datasets`` reports it."""
    return {
        "name": r.name,
        "project": r.project,
        "id": r.id,
        "tags": list(r.tags or []),
        "version": r.version,
        "created": datetime.fromtimestamp(r.created / 1e9, tz=UTC),
        "status": CLEARML_STATUS.get(r.status, r.status),
    }


def delete(
    store: Store,
    *,
    dataset_id: str | None,
    dataset_project: str | None,
    dataset_name: str | None,
    force: bool,
    dataset_version: str | None,
    entire_dataset: bool,
    remote: str | bool | None,
) -> None:
    """``Dataset.delete``: remove the chosen versions' records (and, with ``remote``,
    the finalized ones from that remote first).

    Nothing is deleted unless every check passes: the choice is unambiguous, and
    without ``force`` no chosen version is published or the parent of one that stays.
    """
    recs = reg.all_records(store)
    targets = _delete_targets(
        store,
        recs,
        dataset_id,
        dataset_project,
        dataset_name,
        force,
        dataset_version,
        entire_dataset,
    )
    if not force:
        _refuse_needed(targets, recs)
    if remote is not None and remote is not False:
        where = remote_for(store, None if remote is True else remote or None, required=True)
        for t in targets:
            if t.commit is not None:
                where.delete_dataset(t.id)
    for t in targets:
        reg.remove(store, t.id)


def _delete_targets(
    store: Store,
    recs: list[Record],
    dataset_id: str | None,
    dataset_project: str | None,
    dataset_name: str | None,
    force: bool,
    dataset_version: str | None,
    entire_dataset: bool,
) -> list[Record]:
    """The versions a delete names; never a guess (ClearML's rule): several versions
    of one name need ``dataset_version`` or ``entire_dataset`` (which needs ``force``)."""
    if dataset_id:
        targets = [reg.require(store, dataset_id)]
    elif dataset_project and dataset_name:
        if entire_dataset and not force:
            raise UsageError(
                f"deleting every version of {dataset_project}/{dataset_name} "
                "(entire_dataset=True) needs force=True (--force)"
            )
        targets = reg.filter_records(
            recs, project=dataset_project, name=dataset_name, version=dataset_version
        )
        if len(targets) > 1 and not entire_dataset:
            versions = ", ".join(sorted(str(t.version) for t in targets))
            raise UsageError(
                f"Multiple datasets found with dataset_project={dataset_project}, "
                f"dataset_name={dataset_name}, dataset_version={dataset_version} "
                f"(versions {versions}); nothing deleted: pass dataset_version, "
                "dataset_id, or entire_dataset=True with force=True"
            )
    else:
        raise UsageError("Dataset.delete needs dataset_id, or dataset_project and dataset_name")
    if not targets:
        raise not_found_error(dataset_id, dataset_project, dataset_name, None, dataset_version)
    return targets


def _refuse_needed(targets: list[Record], recs: list[Record]) -> None:
    """Without ``force``, a published version and the parent of a version that stays
    are kept (the whole delete is refused)."""
    doomed = {t.id for t in targets}
    for t in targets:
        if t.status == reg.PUBLISHED:
            raise StateError(
                f"dataset {t.project}/{t.name} v{t.version} ({t.id}) is published",
                remedy=FORCE_DELETE,
            )
    for r in recs:
        if r.id not in doomed and doomed.intersection(r.parents):
            raise StateError(
                f"dataset {r.project}/{r.name} ({r.id}) uses a dataset being deleted as parent",
                remedy=FORCE_DELETE,
            )


def rename(
    new_dataset_name: str,
    dataset_project: str,
    dataset_name: str,
    open_store: Callable[[], Store] = reg.open_store,
) -> None:
    """``Dataset.rename``: every version of ``dataset_project/dataset_name``. The store
    is opened only once the new name is valid (as before the split)."""
    if not new_dataset_name:
        raise UsageError("new_dataset_name must not be empty")
    reg.check_label("name", new_dataset_name)
    relabel(open_store(), dataset_project, dataset_name, {"name": str(new_dataset_name)})


def move_to_project(
    new_dataset_project: str,
    dataset_project: str,
    dataset_name: str,
    open_store: Callable[[], Store] = reg.open_store,
) -> None:
    """``Dataset.move_to_project``: every version of ``dataset_project/dataset_name``."""
    if not new_dataset_project:
        raise UsageError("new_dataset_project must not be empty")
    reg.check_label("project", new_dataset_project)
    relabel(open_store(), dataset_project, dataset_name, {"project": str(new_dataset_project)})


def relabel(store: Store, project: str, name: str, fields: dict[str, Any]) -> None:
    """Set ``fields`` (name or project) on every local version of ``project/name``, each
    by compare-and-swap (a relabel adds no reference, so it needs no lease)."""
    targets = reg.filter_records(reg.all_records(store), project=project, name=name)
    if not targets:
        raise NotFoundError(f"no dataset {project}/{name}", remedy=LIST_DATASETS)
    for t in targets:
        reg.update(store, t.id, lambda r: r.replace(**fields))
