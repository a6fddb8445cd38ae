"""Where things stand: ``status`` (the current draft's changes, versions not yet on the
default remote, a folder against a version), ``show`` (everything about one version)
and ``du`` (the store by dataset). The numbers come from library calls
(:mod:`dsvc.usage`, :func:`dsvc.treeops.diff`); these commands only print them, and do
not change the remembered "last used" dataset.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from dsvc import registry as reg
from dsvc.cli.core import (
    cli,
    dataset_id_or_last,
    dataset_label,
    emit_json,
    human_size,
    human_time,
    json_option,
    one_id,
    open_store,
    plural,
    record_json,
    result,
    say,
    short,
    table,
)
from dsvc.cli.history import (
    changes_json,
    diff_maps,
    diff_versions,
    folder_files,
    keep_last_used,
    print_changes,
    resolve_version,
    version_files,
)
from dsvc.cli.render import printable
from dsvc.cli.reports import reports_options, write_reports
from dsvc.errors import DsvcError, NotFoundError

# lookup, usage and the transport are imported inside the commands that use them (`dsvc --help` loads no library: cli/core.py)
if TYPE_CHECKING:
    from dsvc.record import Record
    from dsvc.store import Store


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x"


def _usage_json(u: Any) -> dict[str, Any]:
    return {
        "files": u.files,
        "logical_bytes": u.logical_bytes,
        "chunks": u.chunks,
        "stored_bytes": u.stored_bytes,
        "missing_chunks": u.missing_chunks,
        "new_chunks": u.new_chunks,
        "new_bytes": u.new_bytes,
        "dedup_ratio": None if u.dedup_ratio is None else round(u.dedup_ratio, 3),
    }


def _unpushed(store: Store) -> tuple[str | None, list[Record] | None, str | None]:
    """(default remote's name, finalized local versions it lacks, error): the list is
    None when there is no default remote or it cannot be read.

    A version is on the remote once a push completed it: its record is there *and* the
    ref of its name lists it (refs are written last; a lookup by name on another
    machine reads the ref). A push killed in between, or a rename not pushed yet, is
    still listed: `dsvc push` completes it."""
    from dsvc.lookup import remote_for

    local = [x for x in reg.all_records(store) if x.status in reg.COMPLETED_STATES]
    try:
        r = remote_for(store, None)
        if r is None:
            return None, None, None
        name = getattr(r, "name", None) or r.url
        there = (
            {x.id for x in r.list_records()}
            if r.ensure_repo(create=False)
            else set()
        )
        named: dict[tuple[str, str], set[str]] = {}  # one ref read per name
        for x in local:
            if x.id in there and (x.project, x.name) not in named:
                ref = r.read_ref(x.project, x.name)
                named[(x.project, x.name)] = set((ref or {}).get("versions") or {})
    except DsvcError as e:
        return None, None, e.cli_message()
    pushed = {x.id for x in local if x.id in there and x.id in named[(x.project, x.name)]}
    return (
        name,
        sorted((x for x in local if x.id not in pushed), key=lambda x: x.created),
        None,
    )


# -- status ---------------------------------------------------------------------------------


@cli.command()
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option(
    "--id", "dataset_id", metavar="ID", help="The version to look at (default: the last used)."
)
@click.option("--stat", "only_stat", is_flag=True, help="Only the counts, not the file list.")
@json_option
def status(folder: str | None, dataset_id: str | None, only_stat: bool, as_json: bool) -> None:
    """The current dataset's changes and what is not on the default remote yet.

    For a draft: the files it adds, modifies and removes against its parents (what
    `dsvc close` will commit). Then the finalized versions the default remote lacks
    (what `dsvc push` would send). With FOLDER: how FOLDER differs from the version
    (what `dsvc sync --folder FOLDER` would change).

    \b
    Example:
      dsvc status
      dsvc status ./images          # the folder against the last used version
    """
    store = open_store(create=False)
    did = dataset_id_or_last(store, dataset_id, "status")
    rec = resolve_version(store, did)
    if folder is not None:
        if not os.path.isdir(folder):
            raise NotFoundError(f"{os.path.abspath(folder)} is not a folder")
        path = os.path.abspath(folder)
        changes = diff_maps(version_files(store, rec.tree), folder_files(store, path))
        left, right = rec.id, path
    else:
        changes = diff_versions(store, rec.base, rec.tree)
        left, right = "parents", rec.id
    remote, unpushed, err = (None, None, None) if folder is not None else _unpushed(store)
    if as_json:
        emit_json(
            {
                "dataset": record_json(rec),
                "changes": changes_json(left, right, changes, files=not only_stat),
                "remote": remote,
                "unpushed": None if unpushed is None else [x.id for x in unpushed],
            }
        )
        return
    draft = rec.status == reg.DRAFT
    state = "a draft" if draft else "finalized" if rec.status == reg.FINAL else rec.status
    result(f"On {dataset_label(rec)} ({rec.id}), {state}")
    if folder is not None:
        result(f"Folder {right} against this version:")
        print_changes(changes, verbose=not only_stat)
        return
    if draft:
        result("Changes against its parents (committed by `dsvc close`):")
        print_changes(changes, verbose=not only_stat)
    else:  # nothing staged; what it changed is `dsvc diff ID`
        n = {k: len(v) for k, v in changes.items()}
        result(
            f"Nothing staged (it changed {n['added']} added, {n['removed']} removed, "
            f"{n['modified']} modified files: `dsvc diff {short(rec.id)}`); "
            f"`dsvc create --parents {short(rec.id)}` starts a draft"
        )
    if err:
        say(f"dsvc: warning: default remote not read: {err}", err=True)
    elif remote is None:
        result("No default remote (`dsvc remote add origin URL`).")
    elif unpushed:
        result(f"Not on {remote} yet ({plural(len(unpushed), 'version')}; `dsvc push` sends them):")
        for x in unpushed:
            result(f"  {short(x.id)}  {dataset_label(x)}")
    else:
        result(f"Every finalized version is on {remote}.")


# -- show -----------------------------------------------------------------------------------


@cli.command()
@click.argument("id_arg", metavar="[ID]", required=False)
@click.option("--id", "dataset_id", metavar="ID", help="The version (default: the last used).")
@json_option
@reports_options
def show(
    id_arg: str | None,
    dataset_id: str | None,
    as_json: bool,
    reports: bool = False,
    reports_output: str | None = None,
) -> None:
    """Everything about one version: files, logical and stored size, new bytes against
    its parents, dedup ratio, parents and children, remotes holding it, metadata,
    description and tags.

    ID is a dataset id, a unique prefix, or PROJECT/NAME[@VERSION]; a version only on
    the default remote is shown from its record (sizes need `dsvc pull --id ID`).

    \b
    Example:
      dsvc show 3f2a1b2c
      dsvc show demo/images@1.0.0 --json
      dsvc show --reports 3f2a1b2c -o reports.html
    """
    from dsvc.lookup import remote_for
    from dsvc.remote import config
    from dsvc.usage import version_usage

    store = open_store(create=False)
    did = dataset_id_or_last(store, one_id(id_arg, dataset_id, "show"), "show", "ID")
    with keep_last_used(store):
        rec = resolve_version(store, did)
    if reports:
        page, count = write_reports(store, rec, reports_output)
        if as_json:
            emit_json({"id": rec.id, "reports": count, "page": str(page)})
        else:
            result(f"{plural(count, 'report')} of {rec.id} written to {page}")
        return
    try:
        usage: Any = version_usage(store, rec)
        changes = diff_versions(store, rec.base, rec.tree)
    except NotFoundError:  # trees only on a remote
        usage, changes = None, None
    children = [x.id for x in reg.all_records(store) if rec.id in (x.parents or [])]
    remotes = []
    for row in config.list_remotes(store):
        try:
            held: bool | None = (
                remote_for(store, row["name"], required=True).get_record(rec.id)
                is not None
            )
        except DsvcError:
            held = None  # unreachable
        remotes.append({"name": row["name"], "has": held})
    metadata = sorted(rec.metadata.keys())
    if as_json:
        emit_json(
            {
                **record_json(rec),
                "usage": None if usage is None else _usage_json(usage),
                "changes": None
                if changes is None
                else changes_json("parents", rec.id, changes, files=False)["counts"],
                "children": children,
                "remotes": remotes,
                "metadata": metadata,
            }
        )
        return
    result(f"dataset {rec.id}  {dataset_label(rec)}  ({rec.status})")
    result(f"Created:   {human_time(rec.created)}")
    if rec.finalized:
        result(f"Finalized: {human_time(rec.finalized)}")
    result(f"Parents:   {' '.join(rec.parents or []) or '-'}")
    if rec.squashed_from:
        result(f"Squashed:  {' '.join(rec.squashed_from)}")
    result(f"Children:  {' '.join(children) or '-'}")
    if usage is None:
        result("Files:     not in the local store (`dsvc pull --id " + rec.id + "`)")
    else:
        result(f"Files:     {plural(usage.files, 'file')}, {human_size(usage.logical_bytes)}")
        stored = f"{human_size(usage.stored_bytes)} in {plural(usage.chunks, 'chunk')}"
        if usage.missing_chunks:
            stored += f" ({usage.missing_chunks} only on a remote)"
        result(f"Stored:    {stored}, dedup {_ratio(usage.dedup_ratio)}")
        n = {k: len(v) for k, v in (changes or {}).items()}
        result(
            f"New:       {human_size(usage.new_bytes)} in {plural(usage.new_chunks, 'chunk')} "
            f"no parent has ({n.get('added', 0)} added, {n.get('modified', 0)} modified, "
            f"{n.get('removed', 0)} removed files)"
        )
    held_by = [
        r["name"] + ("" if r["has"] else " (unreachable)" if r["has"] is None else "")
        for r in remotes
        if r["has"] is not False
    ]
    result(f"Remotes:   {', '.join(held_by) or '-'}")
    if rec.tags:
        result(f"Tags:      {printable(', '.join(rec.tags))}")
    if metadata:
        result(f"Metadata:  {printable(', '.join(metadata))}")
    if rec.description:
        result("")
        for line in rec.description.splitlines():
            result(f"    {line}")


# -- du -------------------------------------------------------------------------------------


@cli.command()
@json_option
def du(as_json: bool) -> None:
    """Disk usage of the store by dataset: logical bytes (every version's files) against
    stored bytes (compressed, deduplicated chunks), and the chunks datasets share.

    \b
    Example:
      dsvc du
      dsvc du --json
    """
    from dsvc.usage import store_usage

    store = open_store(create=False)
    u = store_usage(store)
    rows = [
        {
            "project": d.project,
            "name": d.name,
            "versions": d.versions,
            "logical_bytes": d.logical_bytes,
            "chunks": d.chunks,
            "stored_bytes": d.stored_bytes,
            "shared_chunks": d.shared_chunks,
            "shared_bytes": d.shared_bytes,
            "dedup_ratio": None if d.dedup_ratio is None else round(d.dedup_ratio, 3),
        }
        for d in u.datasets
    ]
    if as_json:
        emit_json(
            {
                "datasets": rows,
                "versions": u.versions,
                "logical_bytes": u.logical_bytes,
                "chunks": u.chunks,
                "stored_bytes": u.stored_bytes,
                "shared_chunks": u.shared_chunks,
                "shared_bytes": u.shared_bytes,
                "unreferenced_chunks": u.unreferenced_chunks,
                "unreferenced_bytes": u.unreferenced_bytes,
                "dedup_ratio": None if u.dedup_ratio is None else round(u.dedup_ratio, 3),
            }
        )
        return
    table(
        [
            (
                f"{d.project}/{d.name}",
                d.versions,
                human_size(d.logical_bytes),
                human_size(d.stored_bytes),
                human_size(d.shared_bytes),
                _ratio(d.dedup_ratio),
            )
            for d in u.datasets
        ],
        ["DATASET", "VERSIONS", "LOGICAL", "STORED", "SHARED", "DEDUP"],
        right=[1, 2, 3, 4, 5],
    )
    result(
        f"{plural(u.versions, 'version')}: {human_size(u.logical_bytes)} of files stored in "
        f"{human_size(u.stored_bytes)} ({plural(u.chunks, 'chunk')}, dedup "
        f"{_ratio(u.dedup_ratio)}); {plural(u.shared_chunks, 'chunk')} "
        f"({human_size(u.shared_bytes)}) shared between datasets"
    )
    if u.unreferenced_chunks:
        result(
            f"{plural(u.unreferenced_chunks, 'chunk')} ({human_size(u.unreferenced_bytes)}) "
            "used by no version: `dsvc gc` deletes them"
        )
