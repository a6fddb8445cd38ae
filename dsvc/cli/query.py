"""clearml-data's reading verbs: list, search, get, compare, verify."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from dsvc.cli.core import (
    WORKERS,
    cli,
    dataset_id_or_last,
    dataset_label,
    dataset_record,
    emit_json,
    get_dataset,
    greedy,
    human_duration,
    human_size,
    id_option,
    is_quiet,
    json_option,
    one_id,
    open_store,
    plural,
    remember,
    result,
    say,
    short,
    table,
)
from dsvc.cli.history import changes_json, diff_versions, print_changes, resolve_version
from dsvc.errors import IntegrityError, StateError, UsageError

# dsvc.dataset is imported inside each command (`dsvc --help` loads no library: cli/core.py)

# -- list / search ---------------------------------------------------------------------


@cli.command("list", **greedy("--filter"))
@click.argument("id_arg", metavar="[ID]", required=False)
@id_option()
@click.option("--project", help="Pick the dataset by project (with --name).")
@click.option("--name", help="Pick the dataset by name (highest version).")
@click.option("--version", help="With --project/--name: this version.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="PATTERN...",
    help="Only paths matching these wildcards.",
)
@click.option("--modified", is_flag=True, help="Only changes of this version against its parents.")
@json_option
def list_cmd(
    id_arg: str | None,
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    version: str | None,
    filters: tuple[str, ...],
    modified: bool,
    as_json: bool,
) -> None:
    """List the files of a dataset version: path, size and content hash.

    \b
    Example:
      dsvc list --id 3f2a1b2c --filter '*.csv'
      dsvc list --project demo --name images --modified --json
    """
    from dsvc.selection import match_dataset_path

    store = open_store(create=False)
    dataset_id = one_id(id_arg, dataset_id, "list")
    ds = get_dataset(store, dataset_id, project, name, version, "list")
    remember(store, ds.id)
    entries = ds.file_entries_dict
    status: dict[str, str] = {}
    if modified:
        status.update({p: "added" for p in ds.list_added_files()})
        status.update({p: "modified" for p in ds.list_modified_files()})
        status.update({p: "removed" for p in ds.list_removed_files()})
    paths = sorted(status) if modified else sorted(entries)
    if filters:
        pats = [f.replace("\\", "/").lstrip("/") for f in filters]
        paths = [p for p in paths if any(match_dataset_path(p, q, True) for q in pats)]
    rows = []
    for p in paths:
        e = entries.get(p)
        row: dict[str, Any] = {
            "path": p,
            "size": e.size if e else None,
            "hash": e.hash if e else None,
            "dataset_id": e.parent_dataset_id if e else None,
        }
        if modified:
            row["status"] = status[p]
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    rec = dataset_record(store, ds.id)
    say(f"{dataset_label(rec)} ({rec.id}, {rec.status})")
    headers = ["STATUS", "SIZE", "HASH", "PATH"] if modified else ["SIZE", "HASH", "PATH"]
    table(
        [
            ([r["status"]] if modified else [])
            + [human_size(r["size"]) if r["size"] is not None else "-", r["hash"] or "-", r["path"]]
            for r in rows
        ],
        headers,
        right=[1] if modified else [0],
    )
    total = sum(r["size"] or 0 for r in rows)
    say(f"{plural(len(rows), 'file')}, {human_size(total)}")


@cli.command(**greedy("--tags", "--ids"))
@click.option("--project", help="Project (sub-projects included unless --non-recursive).")
@click.option("--name", help="Regular expression searched in the dataset name.")
@click.option("--tags", multiple=True, metavar="TAG...", help="Datasets having any of these tags.")
@click.option("--ids", multiple=True, metavar="ID...", help="Only these ids.")
@click.option("--not-only-completed", is_flag=True, help="Include drafts.")
@click.option(
    "--non-recursive",
    "--non-recursive-project-search",
    "non_recursive",
    is_flag=True,
    help="Do not search sub-projects.",
)
@json_option
def search(
    project: str | None,
    name: str | None,
    tags: tuple[str, ...],
    ids: tuple[str, ...],
    not_only_completed: bool,
    non_recursive: bool,
    as_json: bool,
) -> None:
    """Search datasets (local store and default remote) by project, name and tags.

    \b
    Example:
      dsvc search --project demo --tags raw
      dsvc search --name '^images' --not-only-completed --json
    """
    from dsvc.dataset import Dataset

    open_store(create=False)  # a missing store is an error, not a new empty one
    found = Dataset.list_datasets(
        dataset_project=project,
        partial_name=name,
        tags=list(tags) or None,
        ids=list(ids) or None,
        only_completed=not not_only_completed,
        recursive_project_search=not non_recursive,
    )
    if as_json:
        emit_json(found)
        return
    table(
        [
            (
                d["project"],
                d["name"],
                d["version"],
                d["status"],
                d["created"].astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                ",".join(d["tags"]),
                d["id"],
            )
            for d in found
        ],
        ["PROJECT", "NAME", "VERSION", "STATUS", "CREATED", "TAGS", "ID"],
    )
    if not found:
        say(
            "no dataset matches"
            + ("" if not_only_completed else " (drafts need --not-only-completed)"),
            err=True,
        )


# -- get -----------------------------------------------------------------------------


@cli.command()
@click.argument("id_arg", metavar="[ID]", required=False)
@id_option()
@click.option("--project", help="Pick the dataset by project (with --name).")
@click.option("--name", help="Pick the dataset by name (highest version).")
@click.option("--version", help="With --project/--name: this version.")
@click.option(
    "--copy",
    "copy_to",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Write independent, writable files into DIR.",
)
@click.option(
    "--link",
    "link_to",
    type=click.Path(),
    metavar="DIR",
    help="Make DIR a symlink to the read-only cached copy.",
)
@click.option("--part", type=click.IntRange(min=0), help="Only part PART (from 0) of --num-parts.")
@click.option(
    "--num-parts", type=WORKERS, help="Split the files into this many parts by size."
)
@click.option("--overwrite", is_flag=True, help="Replace what is in DIR.")
@click.option("--max-workers", type=WORKERS, help="Parallel downloads and writes.")
@click.option("--verbose", is_flag=True, help="Also print what was copied (files, bytes).")
def get(
    id_arg: str | None,
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    version: str | None,
    copy_to: str | None,
    link_to: str | None,
    part: int | None,
    num_parts: int | None,
    overwrite: bool,
    max_workers: int | None,
    verbose: bool,
) -> None:
    """Get a local copy of a dataset version (fetching missing content from its remote).

    Without --copy or --link, prints the path of the read-only cached copy.

    \b
    Example:
      dsvc get 3f2a1b2c --copy ./work
      dsvc get --project demo --name images --link ./data --overwrite
    """
    store = open_store(create=False)
    dataset_id = one_id(id_arg, dataset_id, "get")
    if copy_to and link_to:
        raise UsageError("give --copy or --link, not both")
    if (part is None) != (num_parts is None):
        raise UsageError("--part and --num-parts go together (--part counts from 0)")
    ds = get_dataset(store, dataset_id, project, name, version, "get")
    t0 = time.monotonic()
    if copy_to:
        copied = ds.get_mutable_local_copy(
            copy_to, overwrite=overwrite, part=part, num_parts=num_parts, max_workers=max_workers
        )
        assert copied is not None  # None only with raise_on_error=False
        path = copied
    else:
        path = ds.get_local_copy(part=part, num_parts=num_parts, max_workers=max_workers)
        if link_to:
            link = os.path.abspath(link_to)
            if os.path.lexists(link):
                if not overwrite:
                    raise StateError(f"{link!r} already exists; pass --overwrite to replace it")
                if os.path.islink(link) or os.path.isfile(link):
                    os.unlink(link)
                elif os.listdir(link):
                    raise StateError(f"{link!r} is a non-empty folder; remove it yourself")
                else:
                    os.rmdir(link)
            os.symlink(path, link, target_is_directory=True)
            path = link
    remember(store, ds.id)
    if copy_to or link_to or is_quiet():
        result(path)
    else:  # clearml-data's line (clearml/cli/data/__main__.py, ds_get)
        result(f"Dataset local copy available for files at: {path}")
    if verbose:
        files = ds.file_entries
        say(f"{plural(len(files), 'file')}, {human_size(sum(f.size for f in files))}", err=True)
    say(
        f"{dataset_label(dataset_record(store, ds.id))} ready in {human_duration(time.monotonic() - t0)}",
        err=True,
    )


# -- squash / compare / verify ------------------------------------------------------------


@cli.command()
@click.option("--source", required=True, metavar="ID", help="Version to compare from.")
@click.option("--target", required=True, metavar="ID", help="Version to compare to.")
@click.option("--verbose", is_flag=True, help="List every file, not only the counts.")
@json_option
def compare(source: str, target: str, verbose: bool, as_json: bool) -> None:
    """Files added, removed and modified from the source version to the target.

    \b
    Example:
      dsvc compare --source 3f2a1b2c --target 9d8e7f60 --verbose
    """
    store = open_store(create=False)
    a = resolve_version(store, source)
    b = resolve_version(store, target)
    changes = diff_versions(store, a.tree, b.tree)
    if as_json:  # the vocabulary of `dsvc diff --json` (docs/cli.md, JSON output)
        emit_json(changes_json(a.id, b.id, changes, files=True))
        return
    say(f"Comparing {dataset_label(a)} ({short(a.id)}) -> {dataset_label(b)} ({short(b.id)})")
    print_changes(changes, verbose=verbose)


@cli.command()
@id_option()
@click.option(
    "--folder",
    type=click.Path(file_okay=False, exists=True),
    help="Copy to verify (default: the cached copy).",
)
@click.option("--filesize", is_flag=True, help="Only compare file sizes (no hashing).")
@click.option("--verbose", is_flag=True, help="Print every mismatching file (default: 20).")
@json_option
def verify(
    dataset_id: str | None, folder: str | None, filesize: bool, verbose: bool, as_json: bool
) -> None:
    """Check a local copy against the dataset's hashes (exit code 5 on mismatch).

    \b
    Example:
      dsvc verify --id 3f2a1b2c --folder ./work
    """
    from dsvc.dataset import Dataset

    store = open_store(create=False)
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "verify"))
    remember(store, ds.id)
    t0 = time.monotonic()
    bad = ds.verify_dataset_hash(local_copy_path=folder, skip_hash=filesize)
    n = len(ds.list_files())
    if as_json:
        emit_json({"id": ds.id, "folder": folder, "files": n, "ok": not bad, "mismatches": bad})
    else:
        for p in bad if verbose else bad[:20]:
            click.echo(f"mismatch: {p}", err=True)
    if bad:
        raise IntegrityError(
            f"{len(bad)} of {plural(n, 'file')} of dataset {ds.id} do not match"
            f"{' in ' + folder if folder else ''}; get a fresh copy with "
            "`dsvc get --copy DIR --overwrite`"
        )
    if not as_json:
        result(
            f"Verified {plural(n, 'file')} of {ds.id}: all match "
            f"({human_duration(time.monotonic() - t0)})"
        )
