"""Reading a version without a local copy: ``dsvc ls`` and ``dsvc cat``.

Both run on :mod:`dsvc.stream`, the code path of ``Dataset.open`` and ``dsvc://``:
folders come from trees (only those on the path are fetched), ``cat`` reads only the
chunks of the file, local store first, then ranged reads from the remote.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dsvc.cli.core import cli, emit_json, expand_id, human_size, is_quiet, json_option, result
from dsvc.errors import NotFoundError, UsageError
from dsvc.ids import to_hex
from dsvc.objects import KIND_TREE

# dsvc.stream, dsvc.progress and dsvc.fs (fsspec: an optional extra) are imported inside
# the commands that use them (`dsvc --help` loads no library: cli/core.py)

#: ``cat`` copies to stdout in blocks of this size (sequential: read-ahead applies)
CAT_BLOCK = 4 << 20


def _open_version(target: str) -> tuple[Any, Any, tuple[str, ...]]:
    """``(reader, version, path prefix)`` for an id, a unique id prefix or a dsvc:// URL."""
    if target.startswith("dsvc:"):
        from dsvc.fs import DsvcFileSystem, parse_url

        fs = DsvcFileSystem(skip_instance_cache=True)
        _, _, rel = parse_url(target)
        return fs.reader, fs.version(target), rel
    from dsvc.stream import Reader

    reader = Reader()
    return reader, reader.version_by_id(expand_id(reader.store, target)), ()


def _resolve(target: str, path: str) -> tuple[Any, Any, tuple[str, ...], Any, bool]:
    """``(reader, version, path, entry, remote only)``; remote only: the version's root
    folder was not in the local store (listing it reads the remote)."""
    from dsvc.stream import clean_path

    reader, version, prefix = _open_version(target)
    # before the lookup reads the first folders: is this version's listing only remote?
    remote_only = not reader.store.has_object(version.tree)
    rel = (*prefix, *clean_path(path))
    entry = reader.lookup(version.tree, rel)
    if entry is None:
        raise NotFoundError(
            f"dataset {version.id} has no file or folder {'/'.join(rel)!r}; list it with "
            f"`dsvc ls {version.id}`"
        )
    return reader, version, rel, entry, remote_only


@cli.command("ls")
@click.argument("dataset")
@click.argument("path", default="")
@click.option("-l", "--long", "long_", is_flag=True, help="Show sizes and content ids.")
@click.option("-R", "--recursive", is_flag=True, help="List everything below PATH.")
@json_option
def ls_cmd(dataset: str, path: str, long_: bool, recursive: bool, as_json: bool) -> None:
    """List a folder of a version without fetching any file content.

    DATASET is a dataset id (or a unique prefix of a local one) or a dsvc:// URL; the
    version is looked up locally, then on the default remote. Folders end with '/'.

    \b
    Example:
      dsvc ls 3f2a9c images/
      dsvc ls -lR dsvc://vision/cats@1.0.0
    """
    reader, version, rel, entry, remote_only = _resolve(dataset, path)
    if entry.kind != KIND_TREE:
        rows = [(rel, entry)]
    elif recursive:
        from dsvc.progress import Progress

        # folders read from the remote: a bar (after a second) on a big remote-only version
        found = []
        with Progress(
            f"ls {dataset}", None, enabled=remote_only and not is_quiet(), unit=" entries"
        ) as bar:
            for row in reader.walk(entry.id, rel):
                found.append(row)
                bar.update(1)
        rows = sorted(found, key=lambda r: "/".join(r[0]).encode())
    else:
        tree = reader.tree(entry.id)
        rows = [((*rel, n), tree[n]) for n in sorted(tree, key=lambda n: n.encode())]
    cut = len(rel) if entry.kind == KIND_TREE else len(rel) - 1
    if as_json:
        emit_json(
            [
                {
                    "path": "/".join(p),
                    "type": "directory" if e.kind == KIND_TREE else "file",
                    "size": e.size,
                    "id": to_hex(e.id),
                }
                for p, e in rows
            ]
        )
        return
    for p, e in rows:
        name = "/".join(p[cut:]) + ("/" if e.kind == KIND_TREE else "")
        if long_:
            result(f"{human_size(e.size):>10}  {to_hex(e.id)[:12]}  {name}")
        else:
            result(name)


@cli.command("cat")
@click.argument("dataset")
@click.argument("path", default="")
def cat_cmd(dataset: str, path: str) -> None:
    """Write one file of a version to stdout, fetching only its chunks.

    DATASET is a dataset id (or a unique prefix of a local one) or a dsvc:// URL (then
    PATH may be part of the URL). Chunks missing locally are read from the default
    remote and kept in the local store; a read from the remote that takes more than a
    second shows a progress bar on stderr.

    \b
    Example:
      dsvc cat 3f2a9c labels/train.csv | head
      dsvc cat dsvc://vision/cats@1.0.0/labels.csv > labels.csv
    """
    from dsvc.progress import Progress

    reader, version, rel, entry, remote_only = _resolve(dataset, path)
    if entry.kind == KIND_TREE:
        raise UsageError(
            f"{'/'.join(rel) or '/'} is a folder of dataset {version.id}; "
            f"`dsvc ls {version.id} {'/'.join(rel)}` lists it"
        )
    f = reader.open(entry, "/".join(rel))
    remote_only = bool(reader.store.missing("chunks", [c for c, _ in f.chunks_between(0, f.size)]))
    out = sys.stdout.buffer
    with f, Progress(f"cat {rel[-1]}", f.size, enabled=remote_only and not is_quiet()) as bar:
        while True:
            block = f.read(CAT_BLOCK)
            if not block:
                break
            out.write(block)
            bar.update(len(block))
    out.flush()
