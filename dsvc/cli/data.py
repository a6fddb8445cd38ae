"""clearml-data's verbs that make and change versions: create, add, remove, sync, upload,
close, publish, squash, delete, rename, move, set-description (the reading ones are in
``query``)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import click

from dsvc import registry as reg
from dsvc.cli.core import (
    WORKERS,
    check_version,
    cli,
    dataset_id_or_last,
    dataset_label,
    dataset_record,
    expand_id,
    greedy,
    human_duration,
    id_option,
    is_quiet,
    open_store,
    plural,
    remember,
    result,
    say,
)
from dsvc.errors import NotFoundError, UsageError

# dsvc.dataset is imported inside the commands that use it (`dsvc --help` loads no library: cli/core.py)
if TYPE_CHECKING:
    from dsvc.dataset import Dataset

# -- create ----------------------------------------------------------------------------


@cli.command(**greedy("--parents", "--tags"))
@click.option("--project", help="Project of the dataset (default: the last parent's).")
@click.option("--name", help="Dataset name (default: the last parent's).")
@click.option(
    "--version",
    callback=check_version,
    help="Version string (default: the highest existing one bumped).",
)
@click.option(
    "--parents",
    multiple=True,
    metavar="ID...",
    help="Parent ids, merged in order (later overrides earlier).",
)
@click.option("--tags", multiple=True, metavar="TAG...", help="Tags of the new dataset.")
@click.option(
    "--storage",
    "--output-uri",
    "storage",
    metavar="URL",
    help="Remote (name or URL) this dataset uploads to (--output-uri: clearml-data's name).",
)
@click.option("--description", help="Free text description.")
def create(
    project: str | None,
    name: str | None,
    version: str | None,
    parents: tuple[str, ...],
    tags: tuple[str, ...],
    storage: str | None,
    description: str | None,
) -> None:
    """Create a new draft dataset (and make it the default for later commands).

    A draft with parents starts with their merged content.

    \b
    Example:
      dsvc create --project demo --name images --tags raw v1
      dsvc create --parents 3f2a1b2c --name images   # a child version
    """
    from dsvc.dataset import Dataset

    store = open_store()
    ds = Dataset.create(
        dataset_name=name,
        dataset_project=project,
        dataset_tags=list(tags),
        parent_datasets=[expand_id(store, p) for p in parents],
        dataset_version=version,
        output_uri=storage,
        description=description,
    )
    remember(store, ds.id)  # only CLI commands move the remembered dataset
    rec = dataset_record(store, ds.id)
    if is_quiet():
        result(ds.id)
    else:
        result(f"New dataset created id={ds.id}")
        say(f"  {dataset_label(rec)} (draft); next: dsvc add PATH", err=True)


# -- add / remove / sync -------------------------------------------------------------


@cli.command(**greedy("--files", "--wildcard", "--links"))
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@id_option()
@click.option(
    "--files",
    multiple=True,
    metavar="PATH...",
    help="Files or folders to add (clearml-data's spelling of PATH...).",
)
@click.option(
    "--links",
    multiple=True,
    metavar="URL...",
    help="External files or folders to link, not copy (s3://, gs://, azure://, http(s)://, "
    "file://); a copy downloads and checks them.",
)
@click.option(
    "--wildcard",
    multiple=True,
    metavar="PATTERN...",
    help="Only files matching these patterns (e.g. '*.jpg').",
)
@click.option("--dataset-folder", metavar="PATH", help="Folder inside the dataset to add into.")
@click.option("--non-recursive", is_flag=True, help="Do not descend into sub-folders.")
@click.option("--max-workers", type=WORKERS, help="Hashing threads (default: CPUs + 2).")
@click.option("--verbose", is_flag=True, help="Print per-add statistics.")
def add(
    paths: tuple[str, ...],
    dataset_id: str | None,
    files: tuple[str, ...],
    links: tuple[str, ...],
    wildcard: tuple[str, ...],
    dataset_folder: str | None,
    non_recursive: bool,
    max_workers: int | None,
    verbose: bool,
) -> None:
    """Add files or folders to a draft dataset.

    Unchanged files are skipped through the stat cache; changed files store only their
    new chunks.

    \b
    Example:
      dsvc add ./images ./labels.csv
      dsvc add --id 3f2a1b2c --files ./raw --wildcard '*.jpg' --dataset-folder train
      dsvc add --links s3://bucket/raw/ --wildcard '*.jpg'
    """
    from dsvc.dataset import Dataset

    files = paths + files
    if not files and not links:
        raise UsageError(
            "add needs files or folders: dsvc add PATH... (or --files PATH..., and/or "
            "--links URL...)"
        )
    store = open_store()
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "add"))
    t0 = time.monotonic()
    n = 0
    for f in files:
        n += ds.add_files(
            f,
            wildcard=list(wildcard) or None,
            dataset_path=dataset_folder,
            recursive=not non_recursive,
            verbose=verbose,
            max_workers=max_workers,
        )
    for link in links:  # clearml-data's ds_add: files first, then links
        n += ds.add_external_files(
            link,
            wildcard=list(wildcard) or None,
            dataset_path=dataset_folder,
            recursive=not non_recursive,
            verbose=verbose,
            max_workers=max_workers,
        )
    remember(store, ds.id)
    result(f"{plural(n, 'file')} added")
    say(
        f"  to {dataset_label(dataset_record(store, ds.id))} ({ds.id}) in {human_duration(time.monotonic() - t0)}"
    )


@cli.command(**greedy("--files"))
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@id_option()
@click.option(
    "--files",
    multiple=True,
    metavar="PATH...",
    help="Dataset paths or wildcards to remove (clearml-data's spelling of PATH...).",
)
@click.option(
    "--non-recursive", is_flag=True, help="Wildcards match one folder level, not any depth."
)
@click.option("--verbose", is_flag=True, help="Print each removed path.")
def remove(
    paths: tuple[str, ...],
    dataset_id: str | None,
    files: tuple[str, ...],
    non_recursive: bool,
    verbose: bool,
) -> None:
    """Remove files from a draft dataset (paths relative to the dataset root).

    \b
    Example:
      dsvc remove 'tmp/*' '*.bak'
    """
    from dsvc.dataset import Dataset

    files = paths + files
    if not files:
        raise UsageError("remove needs dataset paths: dsvc remove PATH... (or --files PATH...)")
    store = open_store()
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "remove"))
    n = sum(
        ds.remove_files(dataset_path=f, recursive=not non_recursive, verbose=verbose) for f in files
    )
    remember(store, ds.id)
    result(f"{plural(n, 'file')} removed")


@cli.command(**greedy("--parents", "--tags"))
@id_option("Draft to sync into (default: the last used, unless a new version is created).")
@click.option(
    "--folder",
    required=True,
    type=click.Path(file_okay=False),
    help="Local folder that is the truth.",
)
@click.option("--dataset-folder", metavar="PATH", help="Folder inside the dataset to sync.")
@click.option(
    "--parents", multiple=True, metavar="ID...", help="Create a new version with these parents."
)
@click.option("--project", help="Create a new version in this project.")
@click.option("--name", help="Create a new version with this name.")
@click.option("--version", callback=check_version, help="Version of the new dataset.")
@click.option("--tags", multiple=True, metavar="TAG...", help="Tags of the new dataset.")
@click.option(
    "--storage",
    "--output-uri",
    "storage",
    metavar="URL",
    help="Remote (name or URL) to upload to (--output-uri: clearml-data's name).",
)
@click.option("--description", help="Description of the new dataset.")
@click.option("--skip-close", is_flag=True, help="Leave the dataset a draft (no upload/finalize).")
@click.option(
    "--chunk-size", type=WORKERS, metavar="MB", help="Pack size for the upload, in MiB."
)
@click.option("--max-workers", type=WORKERS, help="Parallel uploads.")
@click.option("--verbose", is_flag=True, help="Print sync statistics.")
def sync(
    dataset_id: str | None,
    folder: str,
    dataset_folder: str | None,
    parents: tuple[str, ...],
    project: str | None,
    name: str | None,
    version: str | None,
    tags: tuple[str, ...],
    storage: str | None,
    description: str | None,
    skip_close: bool,
    chunk_size: int | None,
    max_workers: int | None,
    verbose: bool,
) -> None:
    """Make a dataset equal to a local folder, then upload and close it.

    With --project/--name or --parents a new version is created first; if the folder
    brought no change, that new version is deleted again (nothing to version).

    \b
    Example:
      dsvc sync --project demo --name images --parents 3f2a1b2c --folder ./images
      dsvc sync --folder ./images --skip-close     # into the last used draft
    """
    from dsvc.dataset import Dataset

    store = open_store()
    if not os.path.isdir(folder):
        raise NotFoundError(f"cannot sync from {os.path.abspath(folder)!r}: not a folder")
    created = False
    previous = reg.last_used(store)
    if parents or (project and name):
        ds = Dataset.create(
            dataset_name=name,
            dataset_project=project,
            dataset_tags=list(tags),
            parent_datasets=[expand_id(store, p) for p in parents],
            dataset_version=version,
            output_uri=storage,
            description=description,
        )
        created = True
        remember(store, ds.id)
        say(f"New dataset created id={ds.id}")
    elif project or name:
        raise UsageError(
            "sync creates a new version only with both --project and --name (or --parents)"
        )
    else:
        ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "sync"))
    removed, added, modified = ds.sync_folder(
        local_path=folder, dataset_path=dataset_folder, verbose=verbose
    )
    result(
        f"Sync completed: {plural(removed, 'file')} removed, {added} added, {modified} modified"
    )
    if skip_close:
        remember(store, ds.id)
        return
    if created and not (removed or added or modified):
        Dataset.delete(dataset_id=ds.id, force=True)
        if previous:
            remember(store, previous)
        result("Zero modifications on local copy, reverting dataset creation.")
        return
    _close(ds, storage, chunk_size, max_workers, verbose)
    remember(store, ds.id)
    result(f"Dataset closed and finalized id={ds.id}")


def _close(
    ds: Dataset, storage: str | None, chunk_size: int | None, max_workers: int | None, verbose: bool
) -> None:
    if ds.is_dirty() or storage:
        ds.upload(
            show_progress=not is_quiet(),
            verbose=verbose,
            output_url=storage,
            chunk_size=chunk_size,
            max_workers=max_workers,
        )
    ds.finalize(verbose=verbose)


# -- upload / close / publish ----------------------------------------------------------


@cli.command()
@id_option()
@click.option(
    "--storage",
    metavar="URL",
    help="Remote name or URL (default: the dataset's or the default remote).",
)
@click.option("--chunk-size", type=WORKERS, metavar="MB", help="Pack size in MiB.")
@click.option("--max-workers", type=WORKERS, help="Parallel uploads.")
@click.option("--verbose", is_flag=True, help="Print upload statistics.")
def upload(
    dataset_id: str | None,
    storage: str | None,
    chunk_size: int | None,
    max_workers: int | None,
    verbose: bool,
) -> None:
    """Upload a draft's new content to its remote (only what the remote lacks).

    With no remote configured the local store is the storage and this only records
    that the content is stored.

    \b
    Example:
      dsvc upload --storage s3://bucket/datasets
    """
    from dsvc.dataset import Dataset

    store = open_store()
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "upload"))
    t0 = time.monotonic()
    ds.upload(
        show_progress=not is_quiet(),
        verbose=verbose,
        output_url=storage,
        chunk_size=chunk_size,
        max_workers=max_workers,
    )
    remember(store, ds.id)
    where = dataset_record(store, ds.id).remote or "the local store"
    result(f"Upload completed to {where} ({human_duration(time.monotonic() - t0)})")


@cli.command()
@id_option()
@click.option("--storage", metavar="URL", help="Remote name or URL to upload to first.")
@click.option("--disable-upload", is_flag=True, help="Fail instead of uploading pending changes.")
@click.option("--chunk-size", type=WORKERS, metavar="MB", help="Pack size in MiB.")
@click.option("--max-workers", type=WORKERS, help="Parallel uploads.")
@click.option("--verbose", is_flag=True, help="Print statistics.")
def close(
    dataset_id: str | None,
    storage: str | None,
    disable_upload: bool,
    chunk_size: int | None,
    max_workers: int | None,
    verbose: bool,
) -> None:
    """Upload pending changes if needed, then finalize the dataset (it becomes immutable).

    \b
    Example:
      dsvc close
      dsvc close --id 3f2a1b2c --storage origin
    """
    from dsvc.dataset import Dataset

    store = open_store()
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "close"))
    if disable_upload:
        ds.finalize(verbose=verbose)
    else:
        _close(ds, storage, chunk_size, max_workers, verbose)
    remember(store, ds.id)
    result(f"Dataset closed and finalized id={ds.id}")


@cli.command()
@id_option()
def publish(dataset_id: str | None) -> None:
    """Mark a finalized dataset as published.

    \b
    Example:
      dsvc publish --id 3f2a1b2c
    """
    from dsvc.dataset import Dataset

    store = open_store()
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "publish"))
    remember(store, ds.id)
    ds.publish()
    result(f"Dataset published id={ds.id}")


# -- squash / compare / verify ------------------------------------------------------------


@cli.command(**greedy("--ids"))
@click.option("--name", required=True, help="Name of the squashed dataset.")
@click.option(
    "--ids",
    multiple=True,
    required=True,
    metavar="ID...",
    help="Versions to squash, merged in order.",
)
@click.option("--storage", metavar="URL", help="Remote to upload the squashed version to.")
@click.option("--verbose", is_flag=True, help="Print the versions squashed, one per line.")
def squash(name: str, ids: tuple[str, ...], storage: str | None, verbose: bool) -> None:
    """Squash versions into one new, parentless, finalized version (no content copied).

    \b
    Example:
      dsvc squash --name images-flat --ids 3f2a1b2c 9d8e7f60
    """
    from dsvc.dataset import Dataset

    store = open_store()
    ds = Dataset.squash(
        dataset_name=name, dataset_ids=[expand_id(store, i) for i in ids], output_url=storage
    )
    remember(store, ds.id)
    rec = dataset_record(store, ds.id)
    if is_quiet():
        result(ds.id)
    else:
        result(f"Squashed dataset created id={ds.id}")
        say(f"  {dataset_label(rec)} from {plural(len(ids), 'version')}")
        if verbose:
            for sid in rec.squashed_from:
                say(f"  squashed {dataset_label(dataset_record(store, sid))} ({sid})")


# -- delete / rename / move / set-description ------------------------------------------------


@cli.command()
@id_option("Dataset id or unique prefix.")
@click.option("--project", help="Delete by project and name (with --name).")
@click.option(
    "--name",
    help="Delete by project and name (the name must have one version, or give --version, "
    "or --entire-dataset --force).",
)
@click.option("--version", help="With --project/--name: this version.")
@click.option(
    "--entire-dataset", is_flag=True, help="Every version of project/name (needs --force)."
)
@click.option(
    "--force",
    is_flag=True,
    help="Delete even if published or another version uses it as parent; required with "
    "--entire-dataset.",
)
@click.option(
    "--remote",
    "remote_spec",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Delete the versions from this remote too (default: the default remote); its "
    "`dsvc gc --remote` reclaims the content.",
)
def delete(
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    version: str | None,
    entire_dataset: bool,
    force: bool,
    remote_spec: str | None,
) -> None:
    """Delete dataset versions from the local store (`dsvc gc` reclaims their space).

    \b
    Example:
      dsvc delete --id 3f2a1b2c
      dsvc delete --project demo --name images --version 1.0.2
      dsvc delete --project demo --name scratch --entire-dataset --force
    """
    from dsvc.dataset import Dataset

    store = open_store()
    if not dataset_id and not (project and name):
        raise UsageError("delete needs --id, or --project and --name")
    did = expand_id(store, dataset_id) if dataset_id else None
    before = {r.id for r in reg.all_records(store)}
    Dataset.delete(
        dataset_id=did,
        dataset_project=project,
        dataset_name=name,
        dataset_version=version,
        entire_dataset=entire_dataset,
        force=force,
        remote=(remote_spec or True) if remote_spec is not None else None,
    )
    gone = before - {r.id for r in reg.all_records(store)}
    if reg.last_used(store) in gone:
        store.delete_record(reg.LAST_USED)
    result(f"Deleted {plural(len(gone), 'dataset version')}")
    for g in sorted(gone):
        say(f"  {g}")


@cli.command()
@click.option("--project", required=True, help="Project of the dataset.")
@click.option("--name", required=True, help="Current name.")
@click.option("--new-name", required=True, help="New name.")
def rename(project: str, name: str, new_name: str) -> None:
    """Rename every version of a dataset.

    \b
    Example:
      dsvc rename --project demo --name images --new-name photos
    """
    from dsvc.dataset import Dataset

    Dataset.rename(new_dataset_name=new_name, dataset_project=project, dataset_name=name)
    result(f"Renamed {project}/{name} to {project}/{new_name}")


@cli.command()
@click.option("--project", required=True, help="Current project.")
@click.option("--name", required=True, help="Dataset name.")
@click.option("--new-project", required=True, help="Project to move to.")
def move(project: str, name: str, new_project: str) -> None:
    """Move every version of a dataset to another project.

    \b
    Example:
      dsvc move --project demo --name images --new-project archive/2024
    """
    from dsvc.dataset import Dataset

    Dataset.move_to_project(
        new_dataset_project=new_project, dataset_project=project, dataset_name=name
    )
    result(f"Moved {project}/{name} to {new_project}/{name}")


@cli.command("set-description")
@id_option()
@click.option("--description", required=True, help="New description.")
def set_description(dataset_id: str | None, description: str) -> None:
    """Set the description of a dataset (allowed on finalized versions too).

    \b
    Example:
      dsvc set-description --id 3f2a1b2c --description "cleaned, deduplicated"
    """
    from dsvc.dataset import Dataset

    store = open_store()
    ds = Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, "set-description"))
    remember(store, ds.id)
    ds.set_description(description)
    result(f"Description set on {ds.id}")
