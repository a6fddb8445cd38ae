"""Git-style commands that talk to remotes: remote, push, fetch, pull, clone."""

from __future__ import annotations

import os
import time
from itertools import islice
from typing import TYPE_CHECKING, Any

import click

from dsvc import registry as reg
from dsvc.cli.core import (
    WORKERS,
    cli,
    dataset_label,
    dataset_record,
    emit_json,
    expand_id,
    human_duration,
    human_size,
    is_quiet,
    json_option,
    open_store,
    parse_options,
    plural,
    result,
    say,
    short,
    table,
)
from dsvc.errors import ConfigError, DsvcError, IntegrityError, NotFoundError, StateError
from dsvc.store import default_home

# The transport (obstore) and treeops are imported inside the commands that use them (`dsvc --help` loads no library: cli/core.py)
if TYPE_CHECKING:
    from dsvc.objects import Entry
    from dsvc.record import Record
    from dsvc.remote.client import Remote
    from dsvc.store import Store


def remote_for(store: Store, spec: str | None) -> Remote:
    """The remote ``spec`` names (None: the default); a config error when there is none."""
    from dsvc.remote import client

    r = client.resolve(store, spec, required=True)
    if r is None:
        raise ConfigError(
            "no remote configured; add one with `dsvc remote add origin URL` (or pass a URL)"
        )
    return r


def _remote_name(r: Remote) -> str:
    return r.name or r.url


# -- remote ---------------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.pass_context
def remote(ctx: click.Context) -> None:
    """Manage remotes: object stores (s3://, gs://, azure://, a folder) to push to.

    Without a subcommand, lists the remotes (as `dsvc remote list`).

    \b
    Example:
      dsvc remote add origin s3://bucket/datasets -o region=eu-west-1
      dsvc remote
      dsvc remote show origin
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(remote_list, as_json=False)


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend option (endpoint, region...). Credentials belong in the environment.",
)
@click.option("--default", "make_default", is_flag=True, help="Make it the default remote.")
@click.option(
    "--init",
    "init",
    is_flag=True,
    help="Start a new, empty dsvc repository at URL (like `git init --bare` there).",
)
def remote_add(
    name: str, url: str, options: tuple[str, ...], make_default: bool, init: bool
) -> None:
    """Add a remote NAME at URL (the first remote becomes the default).

    URL is s3://, gs://, az:// (azure://), file:///abs/path, or a folder that is absolute
    or starts with ./ . Nothing is contacted unless --init is given: then a new, empty
    repository is started there (an existing dsvc repository is kept as it is).

    \b
    Example:
      dsvc remote add origin s3://bucket/datasets
      dsvc remote add share /mnt/share/dsvc --default --init
    """
    from dsvc.remote import config

    store = open_store()
    url = _absolute(config.check_url(url))
    config.add_remote(store, name, url, parse_options(options), make_default=make_default)
    say(f"Added remote {name} -> {config.display_url(url)}")
    if init:
        try:
            r = remote_for(store, name)
            existed = r.ensure_repo(create=False)
            if not existed:
                r.ensure_repo(create=True)
        except BaseException:
            config.remove_remote(store, name)  # so the same command can be retried
            raise
        if existed:
            result(f"{r.url} already holds a dsvc repository; kept it as it is")
        else:
            result(f"Initialized an empty dsvc repository at {r.url}")


def _absolute(url: str) -> str:
    """A relative folder (./x, ../x, ~/x) as an absolute path; URLs unchanged."""
    if "://" not in url and not os.path.isabs(url):
        return os.path.abspath(os.path.expanduser(url))
    return url


def _require_repo(store: Store, r: Remote, init_hint: str) -> None:
    """Refuse a remote that holds no dsvc repository (a typo, or a remote never started)."""
    if not r.ensure_repo(create=False):
        raise NotFoundError(
            f"no dsvc repository at {r.url} (no dsvc.json there): check the URL; {init_hint}"
        )


@remote.command("remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Forget remote NAME (nothing on the remote is deleted).

    \b
    Example:
      dsvc remote remove old-share
    """
    from dsvc.remote import config

    config.remove_remote(open_store(), name)
    say(f"Removed remote {name}")


@remote.command("list")
@json_option
def remote_list(as_json: bool) -> None:
    """List remotes (credentials masked); * marks the default.

    \b
    Example:
      dsvc remote list --json
    """
    from dsvc.remote import config

    rows = config.list_remotes(open_store(create=False))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say("no remotes; add one with `dsvc remote add origin URL`", err=True)
        return
    table(
        [
            (
                "*" if r["default"] else "",
                r["name"],
                r["url"],
                " ".join(f"{k}={v}" for k, v in sorted(r["options"].items())),
            )
            for r in rows
        ],
        ["", "NAME", "URL", "OPTIONS"],
    )


@remote.command("show")
@click.argument("name")
@json_option
def remote_show(name: str, as_json: bool) -> None:
    """Show remote NAME: its URL and options (credentials masked), whether it can be
    reached and holds a dsvc repository, and the dataset versions on it.

    \b
    Example:
      dsvc remote show origin
    """
    from dsvc.remote import config

    store = open_store(create=False)
    row = next((r for r in config.list_remotes(store) if r["name"] == name), None)
    if row is None:
        raise NotFoundError(f"no remote named {name!r}; see `dsvc remote list`")
    info: dict[str, Any] = {**row, "reachable": False, "repository": False, "error": None}
    recs: list[Record] = []
    try:
        r = remote_for(store, name)
        info["repository"] = bool(r.ensure_repo(create=False))
        info["reachable"] = True
        if info["repository"]:
            recs = sorted(r.list_records(), key=lambda x: x.created)
    except DsvcError as e:  # unreachable, refused: say so, the rest still shows
        info["error"] = e.cli_message()
    info["datasets"] = [
        {k: getattr(x, k) for k in ("id", "project", "name", "version", "status")} for x in recs
    ]
    if as_json:
        emit_json(info)
        return
    result(f"* remote {name}" + ("  (default)" if row["default"] else ""))
    result(f"  URL:        {row['url']}")
    for k, v in sorted(row["options"].items()):
        result(f"  option:     {k}={v}")
    if info["error"]:
        result(f"  reachable:  no ({info['error']})")
    elif not info["repository"]:
        result("  reachable:  yes, but it holds no dsvc repository (`dsvc push --init`)")
    else:
        result(f"  reachable:  yes; {plural(len(recs), 'dataset version')} there")
        for x in recs:
            result(f"    {short(x.id)}  {dataset_label(x)}  ({x.status})")


@remote.command("set-url")
@click.argument("name")
@click.argument("url")
def remote_set_url(name: str, url: str) -> None:
    """Point remote NAME at URL (its options are kept).

    \b
    Example:
      dsvc remote set-url origin s3://new-bucket/datasets
    """
    from dsvc.remote import config

    url = _absolute(config.check_url(url))
    config.set_url(open_store(), name, url)
    say(f"Remote {name} -> {config.display_url(url)}")


@remote.command("rename")
@click.argument("old")
@click.argument("new")
def remote_rename(old: str, new: str) -> None:
    """Rename remote OLD to NEW (a default remote stays the default).

    \b
    Example:
      dsvc remote rename origin backup
    """
    from dsvc.remote import config

    config.rename_remote(open_store(), old, new)
    say(f"Renamed remote {old} to {new}")


@remote.command("set-default")
@click.argument("name")
def remote_set_default(name: str) -> None:
    """Make NAME the default remote.

    \b
    Example:
      dsvc remote set-default origin
    """
    from dsvc.remote import config

    config.set_default_remote(open_store(), name)
    result(f"Default remote is now {name}")


# -- push / fetch / pull / clone ---------------------------------------------------------------


@cli.command()
@click.argument("remote_spec", metavar="[REMOTE]", required=False)
@click.option(
    "--id",
    "ids",
    multiple=True,
    metavar="ID",
    help="Only this dataset (repeat for several; default: every finalized one).",
)
@click.option(
    "--init",
    "init",
    is_flag=True,
    help="Start a new dsvc repository on the remote if it holds none yet.",
)
@click.option(
    "-n",
    "--dry-run",
    is_flag=True,
    help="Only say what would be sent (versions, objects, bytes); write nothing.",
)
@json_option
def push(
    remote_spec: str | None, ids: tuple[str, ...], init: bool, dry_run: bool, as_json: bool
) -> None:
    """Push finalized datasets (content, commits, records) to a remote.

    Only what the remote lacks is sent; pushing again is a no-op. A remote that holds no
    dsvc repository yet is refused (a mistyped URL must not become a new repository):
    start it with --init here, or with `dsvc remote add --init`.

    \b
    Example:
      dsvc push              # every finalized dataset to the default remote
      dsvc push origin --id 3f2a1b2c
      dsvc push --init       # the first push to a new, empty bucket or folder
      dsvc push --dry-run    # what would be sent
    """
    store = open_store()
    r = remote_for(store, remote_spec)
    if not init and not dry_run:
        _require_repo(store, r, "to start a new repository there, pass --init")
    if ids:
        recs = [reg.require(store, expand_id(store, i)) for i in ids]
        for rec in recs:
            if rec.status not in reg.COMPLETED_STATES:
                raise StateError(
                    f"dataset {rec.id} is a draft; close it (`dsvc close --id {rec.id}`) "
                    "before pushing"
                )
    else:
        recs = [x for x in reg.all_records(store) if x.status in reg.COMPLETED_STATES]
        recs.sort(key=lambda x: x.created)
    if not recs:
        say("nothing to push: no finalized dataset (close one with `dsvc close`)", err=True)
        if as_json:
            emit_json(
                {
                    "remote": r.url,
                    "dry_run": dry_run,
                    "datasets": [],
                    "packs": None if dry_run else 0,
                    "objects": 0,
                    "chunks": 0,
                    "bytes": 0,
                }
            )
        return
    if dry_run:
        _push_dry_run(store, r, [x.id for x in recs], as_json)
        return
    t0 = time.monotonic()
    packs = objects = chunks = sent = 0
    for rec in recs:
        st = r.push_dataset(rec.id, show_progress=not is_quiet())
        packs += st.packs
        objects += st.objects
        chunks += st.chunks
        sent += st.bytes_sent
        say(
            f"  {short(rec.id)} {dataset_label(rec)}: "
            f"{plural(st.objects, 'object')}, {human_size(st.bytes_sent)}",
            err=True,
        )
    took = time.monotonic() - t0
    if as_json:
        emit_json(
            {
                "remote": r.url,
                "dry_run": False,
                "datasets": [x.id for x in recs],
                "packs": packs,
                "objects": objects,
                "chunks": chunks,
                "bytes": sent,
                "seconds": round(took, 3),
            }
        )
        return
    result(
        f"Pushed {plural(len(recs), 'dataset')} to {_remote_name(r)}: "
        f"{plural(chunks, 'new chunk')} and {plural(objects, 'object')} in "
        f"{plural(packs, 'pack')}, {human_size(sent)} sent "
        f"in {human_duration(took)}"
    )


def _push_dry_run(store: Store, r: Remote, ids: list[str], as_json: bool) -> None:
    """``push --dry-run``: what would be sent, from the remote's indexes; nothing written."""
    exists = r.ensure_repo(create=False)
    plan = r.plan_push(ids)
    if as_json:
        emit_json(
            {
                "remote": r.url,
                "dry_run": True,
                "datasets": plan.datasets,
                "packs": None,
                "objects": plan.objects,
                "chunks": plan.chunks,
                "bytes": plan.bytes,
            }
        )
        return
    where = _remote_name(r)
    if not exists:
        say(f"{r.url} holds no dsvc repository yet: `dsvc push --init` starts one", err=True)
    if not plan.datasets and not plan.objects and not plan.chunks:
        result(f"Would push nothing: {where} has everything (dry run)")
        return
    result(
        f"Would push {plural(len(plan.datasets), 'dataset')} to {where}: "
        f"{plural(plan.chunks, 'new chunk')} and {plural(plan.objects, 'object')}, about "
        f"{human_size(plan.bytes)} (dry run; nothing was sent)"
    )
    for did in plan.datasets:
        rec = dataset_record(store, did)
        say(f"  {short(did)} {dataset_label(rec)}")


def _fetch_records(store: Store, r: Remote) -> tuple[list[Record], list[Record]]:
    """Import the remote's records missing locally; returns (all remote, newly imported)."""
    _require_repo(store, r, "a new repository is started with `dsvc push --init`")
    remote_recs = r.list_records()
    new = []
    for rec in remote_recs:
        if reg.get(store, rec.id) is None:
            new.append(r.import_record(rec))
        elif rec.commit is not None:
            r.sync_meta(rec.id)  # tags, description, status... (per field)
    return remote_recs, new


def _missing_entries(store: Store, tree: bytes) -> list[Entry]:
    """The files of ``tree`` whose content is not local (``Store.missing_content``, in
    batches: memory stays bounded by the batch, not the version)."""
    from dsvc.treeops import Trees, walk

    out: list[Any] = []
    files = (e for _, e in walk(Trees(store), tree))
    while batch := list(islice(files, 10_000)):
        out += store.missing_content(batch)
    return out


@cli.command()
@click.argument("remote_spec", metavar="[REMOTE]", required=False)
@json_option
def fetch(remote_spec: str | None, as_json: bool) -> None:
    """Fetch dataset records and metadata from a remote (no file content).

    \b
    Example:
      dsvc fetch origin && dsvc search --project demo
    """
    store = open_store()
    r = remote_for(store, remote_spec)
    remote_recs, new = _fetch_records(store, r)
    if as_json:
        emit_json(
            {
                "remote": r.url,
                "datasets": [x.id for x in remote_recs],
                "new": [x.id for x in new],
            }
        )
        return
    result(
        f"Fetched {plural(len(new), 'new dataset record')} from {_remote_name(r)} "
        f"({len(remote_recs)} on the remote)"
    )
    for x in new:
        say(f"  {short(x.id)} {dataset_label(x)}", err=True)


@cli.command()
@click.argument("remote_spec", metavar="[REMOTE]", required=False)
@click.option(
    "--id",
    "ids",
    multiple=True,
    metavar="ID",
    help="Only this dataset's content (repeat for several; default: all).",
)
@click.option("--max-workers", type=WORKERS, help="Parallel downloads.")
@json_option
def pull(
    remote_spec: str | None, ids: tuple[str, ...], max_workers: int | None, as_json: bool
) -> None:
    """Fetch records from a remote, then the content of the datasets (all, or --id).

    \b
    Example:
      dsvc pull origin --id 3f2a1b2c
    """
    store = open_store()
    r = remote_for(store, remote_spec)
    t0 = time.monotonic()
    remote_recs, new = _fetch_records(store, r)
    wanted = [expand_id(store, i) for i in ids] if ids else [x.id for x in remote_recs]
    files = nbytes = 0
    for did in wanted:
        rec = reg.get(store, did)
        if rec is None:
            rec = r.get_record(did)
            if rec is None:
                raise NotFoundError(f"dataset {did} is not on remote {_remote_name(r)}")
            rec = r.import_record(rec)
        missing = _missing_entries(store, rec.tree)
        if missing:
            r.fetch_files(missing, max_workers=max_workers, show_progress=not is_quiet())
            files += len(missing)
            nbytes += sum(e.size for e in missing)
    took = time.monotonic() - t0
    if as_json:
        emit_json(
            {
                "remote": r.url,
                "new": [x.id for x in new],
                "datasets": wanted,
                "files": files,
                "bytes": nbytes,
                "seconds": round(took, 3),
            }
        )
        return
    result(
        f"Pulled {plural(len(wanted), 'dataset')} from {_remote_name(r)} ({len(new)} new): "
        f"{plural(files, 'file')}, {human_size(nbytes)} in {human_duration(took)}"
    )


@cli.command()
@click.argument("url")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option(
    "--name", "remote_name", default="origin", show_default=True, help="Name of the remote."
)
@click.option(
    "-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Backend option."
)
def clone(url: str, directory: str | None, remote_name: str, options: tuple[str, ...]) -> None:
    """Create a store that tracks the remote at URL and fetch its dataset records.

    Content is fetched on demand (`dsvc get`) or with `dsvc pull`.

    \b
    Example:
      dsvc clone s3://bucket/datasets ./team-store
      DSVC_HOME=./team-store dsvc get --project demo --name images --copy ./work
    """
    from dsvc.remote import config
    from dsvc.remote.backend import Backend
    from dsvc.remote.options import check_options

    url = _absolute(config.check_url(url))
    opts = parse_options(options)
    check_options(url, opts)
    home = os.path.abspath(directory) if directory else str(default_home())
    is_store = os.path.isdir(os.path.join(home, "store.lmdb"))
    if not is_store and os.path.isdir(home) and os.listdir(home):
        raise StateError(
            f"{home} is not empty and is not a dsvc store; clone into a new or empty folder: "
            f"dsvc clone {config.display_url(url)} DIR"
        )
    if os.path.exists(home) and not os.path.isdir(home):
        raise StateError(f"{home} is a file; clone into a new or empty folder")
    # Look before creating anything: a mistyped URL must leave no store and no folder.
    probe = Backend.from_url(url, config.with_env(remote_name, opts))
    if probe.head("dsvc.json") is None:
        raise NotFoundError(
            f"no dsvc repository at {probe.url} (no dsvc.json there): check the URL; to "
            "start a new repository there, run `dsvc init DIR`, then "
            f"`dsvc --home DIR remote add {remote_name} URL --init` and `dsvc push`"
        )
    if directory:
        os.environ["DSVC_HOME"] = home
    store = reg.open_store(home)
    if reg.all_records(store) or config.list_remotes(store):
        raise StateError(
            f"the store in {home} is not empty; clone into a new folder: "
            f"dsvc clone {config.display_url(url)} DIR"
        )
    config.add_remote(store, remote_name, url, opts, make_default=True)
    try:
        r = remote_for(store, remote_name)
        remote_recs, new = _fetch_records(store, r)
    except BaseException:
        config.remove_remote(store, remote_name)
        raise
    if not remote_recs:
        say("warning: you appear to have cloned an empty repository", err=True)
    say(f"Cloned {plural(len(new), 'dataset')} from {config.display_url(url)} into {home}")
    if directory and home != str(default_home()):
        say(f"  use it with: export DSVC_HOME={home}", err=True)


def fsck_remote(remote_spec: str | None, as_json: bool) -> None:
    """``dsvc fsck --remote [NAME]``: verify every pack of a remote, mark what is damaged."""
    store = open_store()
    r = remote_for(store, remote_spec)
    t0 = time.monotonic()
    rep = r.fsck(mark=True, show_progress=not is_quiet())
    if as_json:
        emit_json(rep)
    else:
        result(
            f"checked {plural(rep['objects'], 'object')} in {plural(rep['packs'], 'pack')} "
            f"({human_size(rep['bytes'])}) of {_remote_name(r)} in "
            f"{human_duration(time.monotonic() - t0)}"
        )
        for d in rep["damaged"]:
            result(f"damaged object {d['object']} in pack {d['pack']}")
        for name in rep["bad_indexes"]:
            result(f"malformed index packs/{name}.idx")
        for did in rep["datasets"]:
            result(f"incomplete dataset {did}")
        if rep["damaged"] and rep["ok"]:
            result("every damaged object has a good copy (the damaged ones are excluded)")
    if not rep["ok"]:
        n = len(rep["absent"])
        raise IntegrityError(
            f"remote {r.url}: {n} object{'s' if n != 1 else ''} damaged with no good copy "
            f"({len(rep['datasets'])} dataset versions incomplete); they are marked absent: "
            "run `dsvc push` from a store that has those versions to repair the remote"
            + (
                f"; malformed indexes: {', '.join(rep['bad_indexes'])}"
                if rep["bad_indexes"]
                else ""
            )
        )
