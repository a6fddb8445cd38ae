"""Inspecting history: ``log`` (versions of a dataset), ``graph`` (the lineage DAG as
text, Graphviz dot, Mermaid, SVG or PNG) and ``diff`` (two versions, or a version and a
folder). These commands read; they do not change the remembered "last used" dataset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from dsvc import registry as reg
from dsvc.cli.core import (
    COUNT,
    cli,
    dataset_id_or_last,
    dataset_label,
    emit_json,
    expand_id,
    human_size,
    human_time,
    is_quiet,
    json_option,
    one_id,
    open_store,
    plural,
    record_json,
    result,
    say,
    short,
    table,
    tree_size,
)
from dsvc.cli.render import printable, render_dot, render_mermaid, render_svg, render_text
from dsvc.errors import ConfigError, DsvcError, NotFoundError, UsageError

# The dataset, work and transport layers are imported inside the commands that use them (`dsvc --help` loads no library: cli/core.py)
if TYPE_CHECKING:
    from dsvc.record import Record
    from dsvc.remote.client import Remote
    from dsvc.store import Store

# -- looking versions up without moving "last used" ----------------------------------------


@contextmanager
def keep_last_used(store: Store) -> Iterator[None]:
    before = reg.last_used(store)
    try:
        yield
    finally:
        if reg.last_used(store) != before:
            if before:
                store.put_record(reg.LAST_USED, before)
            else:
                store.delete_record(reg.LAST_USED)


def resolve_version(store: Store, text: str) -> Record:
    """The record of ``ID``, a unique id prefix, or ``PROJECT/NAME[@VERSION]``.

    Looks locally, then on the default remote (importing the record's metadata).
    """
    from dsvc.dataset import Dataset

    t = text.strip()
    with keep_last_used(store):
        if "/" in t:
            project, _, rest = t.rpartition("/")
            name, _, version = rest.partition("@")
            ds = Dataset.get(
                dataset_project=project, dataset_name=name, dataset_version=version or None
            )
        else:
            ds = Dataset.get(dataset_id=expand_id(store, t))
        return reg.require(store, ds.id)


def _default_remote(store: Store) -> Remote | None:
    from dsvc.remote import client

    try:
        return client.resolve(store, None)
    except DsvcError as e:
        say(f"dsvc: warning: default remote not used: {e}", err=True)
        return None


def _record(store: Store, dataset_id: str, remote: Remote | None) -> Record | None:
    rec = reg.get(store, dataset_id)
    if rec is None and remote is not None:
        try:
            rec = remote.get_record(dataset_id)
        except DsvcError:
            rec = None
    return rec


# -- diff ----------------------------------------------------------------------------------


def diff_versions(store: Store, a: bytes, b: bytes) -> dict[str, list[dict[str, Any]]]:
    """Changes from tree ``a`` to tree ``b`` as ``{added, removed, modified}`` lists."""
    from dsvc.treeops import Trees, diff

    out: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "modified": []}
    for c in diff(Trees(store), a, b):
        out[c.status].append(
            {
                "path": "/".join(c.path),
                "size": c.new.size if c.new else None,
                "old_size": c.old.size if c.old else None,
            }
        )
    return out


def version_files(store: Store, tree: bytes) -> dict[str, tuple[bytes, int]]:
    from dsvc.treeops import Trees, walk

    return {"/".join(p): (e.id, e.size) for p, e in walk(Trees(store), tree)}


def folder_files(store: Store, folder: str) -> dict[str, tuple[bytes, int]]:
    """``path -> (content id, size)`` of a folder, hashed the way ``add`` would store it
    (stat cache first, so unchanged files already added are not read). Stores nothing."""
    from dsvc.ingest import content_id, scan, stat_cache_entries
    from dsvc.progress import Progress

    sr = scan(folder, store=store)
    for p, why in sr.skipped:
        say(f"dsvc: skipped {p}: {why}", err=True)
    out: dict[str, tuple[bytes, int]] = {}
    todo = []
    for item, c in zip(sr.items, stat_cache_entries(store, sr.items)):
        if c is not None:
            out["/".join(item.rel)] = (c.id, item.size)
        else:
            todo.append(item)
    total = sum(i.size for i in todo)
    with Progress(f"hash {os.path.basename(folder.rstrip(os.sep))}", total) as bar:
        for item in todo:
            with open(item.abs_path, "rb") as f:
                fid = content_id(store.chunker, f, bar.update)
            out["/".join(item.rel)] = (fid, item.size)
    return out


def diff_maps(
    a: dict[str, tuple[bytes, int]], b: dict[str, tuple[bytes, int]]
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "modified": []}
    for p in sorted(a.keys() | b.keys()):
        x, y = a.get(p), b.get(p)
        if x == y or (x and y and x[0] == y[0]):
            continue
        status = "added" if x is None else "removed" if y is None else "modified"
        out[status].append(
            {"path": p, "size": y[1] if y else None, "old_size": x[1] if x else None}
        )
    return out


def changes_json(
    left: str, right: str, changes: dict[str, list[dict[str, Any]]], *, files: bool = True
) -> dict[str, Any]:
    """The JSON of ``diff``, ``compare`` and ``status``: ``from``/``to``, ``counts`` and,
    unless only the counts were asked for (``--stat``), the ``added``/``removed``/
    ``modified`` lists of ``{path, size, old_size}``."""
    out: dict[str, Any] = {
        "from": left,
        "to": right,
        "counts": {k: len(changes[k]) for k in ("added", "removed", "modified")},
    }
    if files:
        out.update({k: changes[k] for k in ("added", "removed", "modified")})
    return out


def print_changes(changes: dict[str, list[dict[str, Any]]], verbose: bool = True) -> None:
    marks = {"added": ("A", "green"), "removed": ("D", "red"), "modified": ("M", "yellow")}
    if verbose:
        rows = sorted(((k, c) for k, v in changes.items() for c in v), key=lambda kc: kc[1]["path"])
        color = sys.stdout.isatty()
        for kind, c in rows:
            mark, col = marks[kind]
            size = c["size"] if c["size"] is not None else c["old_size"]
            line = f"{mark}  {human_size(size):>10}  {printable(c['path'])}"
            click.echo(click.style(line, fg=col) if color else line)
    n = {k: len(v) for k, v in changes.items()}
    result(f"{n['added']} added, {n['removed']} removed, {n['modified']} modified")


def looks_like_path(text: str) -> bool:
    """``./x``, ``../x``, ``/x``, ``~/x`` or an existing file: meant as a folder, never as
    a PROJECT/NAME."""
    return text.startswith((".", "/", "~", os.sep)) or os.path.exists(text)


@cli.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option("--stat", "only_stat", is_flag=True, help="Only the counts, not the file list.")
@json_option
def diff(a: str | None, b: str | None, only_stat: bool, as_json: bool) -> None:
    """Files that differ between two versions, or between a version and a folder.

    A and B are dataset ids (or unique prefixes), PROJECT/NAME[@VERSION], or folders.
    With one version only, it is compared with its parents (what it changed); with one
    folder only, the last used version is compared with it.

    \b
    Example:
      dsvc diff 3f2a1b2c 9d8e7f60
      dsvc diff demo/images@1.0.0 ./images     # what changed in the folder since 1.0.0
    """
    store = open_store(create=False)

    def side(x: str) -> tuple[str, Any]:
        if os.path.isdir(x):
            return "folder", os.path.abspath(x)
        if looks_like_path(x):
            raise NotFoundError(
                f"{os.path.abspath(os.path.expanduser(x))} is not a folder; diff compares a "
                "version with a folder, or two versions (ID, PROJECT/NAME[@VERSION])"
            )
        return "version", resolve_version(store, x)

    if a is None:
        a = dataset_id_or_last(store, None, "diff", "a version ID (and a second ID or FOLDER)")
    sa = side(a)
    if b is None:
        if sa[0] == "folder":
            sb, sa = (
                sa,
                (
                    "version",
                    resolve_version(store, dataset_id_or_last(store, None, "diff", "ID FOLDER")),
                ),
            )
        else:
            rec = sa[1]
            sb = sa
            sa = ("base", rec)
    else:
        sb = side(b)
    if sa[0] == "folder" and sb[0] == "folder":
        raise UsageError("diff needs at least one dataset version (two folders given)")
    if sa[0] == "base":
        changes = diff_versions(store, sa[1].base, sb[1].tree)
        left, right = "parents", sb[1].id
    elif sa[0] == "version" and sb[0] == "version":
        changes = diff_versions(store, sa[1].tree, sb[1].tree)
        left, right = sa[1].id, sb[1].id
    else:
        ma = (
            version_files(store, sa[1].tree)
            if sa[0] == "version"
            else folder_files(store, sa[1])
        )
        mb = (
            version_files(store, sb[1].tree)
            if sb[0] == "version"
            else folder_files(store, sb[1])
        )
        changes = diff_maps(ma, mb)
        left = sa[1].id if sa[0] == "version" else sa[1]
        right = sb[1].id if sb[0] == "version" else sb[1]
    if as_json:
        emit_json(changes_json(left, right, changes, files=not only_stat))
        return
    say(f"--- {left}\n+++ {right}")
    print_changes(changes, verbose=not only_stat)


# -- log -----------------------------------------------------------------------------------


@cli.command()
@click.argument("id_arg", metavar="[ID]", required=False)
@click.option(
    "--id", "dataset_id", metavar="ID", help="A version of the dataset (default: the last used)."
)
@click.option("--project", help="Dataset project (with --name).")
@click.option("--name", help="Dataset name (with --project).")
@click.option("--oneline", is_flag=True, help="One line per version.")
@click.option("-n", "--max-count", type=COUNT, help="Show at most this many versions.")
@json_option
def log(
    id_arg: str | None,
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    oneline: bool,
    max_count: int | None,
    as_json: bool,
) -> None:
    """Versions of a dataset (same project and name), newest first.

    \b
    Example:
      dsvc log 3f2a1b2c
      dsvc log --project demo --name images
      dsvc log --oneline -n 5
    """
    store = open_store(create=False)
    dataset_id = one_id(id_arg, dataset_id, "log")
    if not (project and name):
        if project or name:
            raise UsageError("log needs both --project and --name (or --id)")
        rec = resolve_version(store, dataset_id or dataset_id_or_last(store, None, "log", "ID"))
        project, name = rec.project, rec.name
    recs = {
        r.id: r for r in reg.filter_records(reg.all_records(store), project=project, name=name)
    }
    remote = _default_remote(store)
    remote_only: set[str] = set()
    if remote is not None:
        try:
            for r in reg.filter_records(remote.list_records(), project=project, name=name):
                if r.id not in recs:
                    recs[r.id] = r
                    remote_only.add(r.id)
        except DsvcError as e:
            say(f"dsvc: warning: remote versions not listed: {e}", err=True)
    if not recs:
        raise NotFoundError(f"no dataset {project}/{name}; see `dsvc search`")
    ordered = sorted(recs.values(), key=lambda r: r.created, reverse=True)[:max_count]
    if as_json:
        emit_json(
            [
                {
                    **record_json(r),
                    "size": tree_size(store, r.tree),
                    "local": r.id not in remote_only,
                }
                for r in ordered
            ]
        )
        return
    if oneline:
        table(
            [
                (
                    short(r.id),
                    r.version,
                    r.status + (" (remote)" if r.id in remote_only else ""),
                    human_time(r.created),
                    human_size(tree_size(store, r.tree)),
                    (r.description or "").splitlines()[0][:50]
                    if r.description
                    else "",
                )
                for r in ordered
            ],
            ["ID", "VERSION", "STATUS", "CREATED", "SIZE", "DESCRIPTION"],
            right=[4],
        )
        return
    color = sys.stdout.isatty()
    for i, r in enumerate(ordered):
        head = f"dataset {r.id}  {dataset_label(r)}  ({r.status})"
        if r.id in remote_only:
            head += "  [remote]"
        click.echo(click.style(head, fg="yellow") if color else head)
        click.echo(f"Created: {human_time(r.created)}")
        size = tree_size(store, r.tree)
        if size is not None:
            click.echo(f"Size:    {human_size(size)}")
        if r.parents:
            click.echo(f"Parents: {' '.join(r.parents)}")
        if r.squashed_from:
            click.echo(f"Squash:  {' '.join(r.squashed_from)}")
        if r.tags:
            click.echo(f"Tags:    {printable(', '.join(r.tags))}")
        if r.description:
            click.echo("")
            for line in r.description.splitlines():
                click.echo(f"    {printable(line)}")
        if i < len(ordered) - 1:
            click.echo("")


# -- graph ---------------------------------------------------------------------------------


def lineage(
    store: Store, root_id: str
) -> tuple[dict[str, Record | None], list[tuple[str, str, str]]]:
    """Nodes (id -> record or None when unknown) and edges (parent, child, kind) of the
    versions ``root_id`` descends from, through parents and squash sources."""
    remote = None
    remote_tried = False
    nodes: dict[str, Record | None] = {}
    edges: list[tuple[str, str, str]] = []
    todo = [root_id]
    while todo:
        did = todo.pop()
        if did in nodes:
            continue

        rec = reg.get(store, did)
        if rec is None and not remote_tried:
            remote, remote_tried = _default_remote(store), True
        if rec is None:
            rec = _record(store, did, remote)
        nodes[did] = rec
        if rec is None:
            continue
        for p in rec.parents:
            edges.append((p, did, "parent"))
            todo.append(p)
        for s in rec.squashed_from:
            edges.append((s, did, "squash"))
            todo.append(s)
    return nodes, edges


@cli.command()
@click.option(
    "--id",
    "dataset_id",
    metavar="ID",
    help="Version whose lineage to draw (default: the last used).",
)
@click.option("--project", help="Pick the version by project (with --name).")
@click.option("--name", help="Pick the version by name (highest version).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "dot", "mermaid", "svg", "png"]),
    default="text",
    show_default=True,
    help="Text for the terminal, or a picture format.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write to this file (svg/png default: dsvc-graph-ID.FMT).",
)
@json_option
def graph(
    dataset_id: str | None,
    project: str | None,
    name: str | None,
    fmt: str,
    output: str | None,
    as_json: bool,
) -> None:
    """The lineage DAG of a version: its parents, theirs, and squash sources.

    svg and png use Graphviz's `dot` when it is installed; svg falls back to a built-in
    layout, png needs Graphviz.

    \b
    Example:
      dsvc graph --id 9d8e7f60
      dsvc graph --format mermaid > lineage.mmd
      dsvc graph --format svg -o lineage.svg
    """
    store = open_store(create=False)
    if project and name:
        rec = resolve_version(store, f"{project}/{name}")
    elif project or name:
        raise UsageError("graph needs both --project and --name (or --id)")
    else:
        rec = resolve_version(store, dataset_id or dataset_id_or_last(store, None, "graph"))
    nodes, edges = lineage(store, rec.id)
    if as_json and fmt != "text":
        raise UsageError(f"--json prints the graph as JSON; it does not go with --format {fmt}")
    if as_json:
        emit_json(
            {
                "root": rec.id,
                "nodes": [
                    {"id": k, **({} if v is None else record_json(v))} for k, v in nodes.items()
                ],
                "edges": [{"parent": p, "child": c, "kind": k} for p, c, k in edges],
            }
        )
        return
    if fmt in ("text", "dot", "mermaid"):
        text = {
            "text": lambda: render_text(rec.id, nodes, edges) + "\n",
            "dot": lambda: render_dot(nodes, edges),
            "mermaid": lambda: render_mermaid(nodes, edges),
        }[fmt]()
        if output:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
            result(os.path.abspath(output))
        else:
            click.echo(text, nl=False)
        return
    out = os.path.abspath(output or f"dsvc-graph-{short(rec.id)}.{fmt}")
    dot_bin = shutil.which("dot")
    if dot_bin:
        proc = subprocess.run(
            [dot_bin, f"-T{fmt}", "-o", out],
            input=render_dot(nodes, edges).encode(),
            capture_output=True,
        )
        if proc.returncode != 0:
            raise ConfigError(
                f"graphviz failed to draw {out}: {proc.stderr.decode(errors='replace').strip()}"
            )
    elif fmt == "svg":
        with open(out, "w", encoding="utf-8") as f:
            f.write(render_svg(nodes, edges))
    else:
        raise ConfigError(
            "--format png needs Graphviz (`dot` on PATH); install it (apt install graphviz, "
            "brew install graphviz) or use --format svg"
        )
    result(out)
    if not is_quiet():
        say(f"{plural(len(nodes), 'version')}, {plural(len(edges), 'edge')}", err=True)
