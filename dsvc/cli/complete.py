"""Shell completion of values, not only of commands and options: dataset ids (with
their project/name/version as the description), projects, names and remotes, read
from the store of ``--home``/``$DSVC_HOME``. Click's own protocol does the rest
(``_DSVC_COMPLETE=bash_source dsvc``); ``dsvc --install-completion`` adds that line to
the user's shell start-up file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from dsvc import registry
from dsvc.errors import UsageError
from dsvc.store import default_home

if TYPE_CHECKING:
    from dsvc.record import Record

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]

#: parameter names (click's, i.e. the Python names) whose values are dataset ids
ID_PARAMS = frozenset(
    {"dataset_id", "id_arg", "ids", "parents", "source", "target", "dataset", "a", "b"}
)
#: parameter names whose values are remote names, outside the `remote` group
REMOTE_PARAMS = frozenset({"remote_spec", "storage"})


@contextmanager
def _store_of(ctx: click.Context) -> Iterator[Any]:
    """The store of ``--home`` (parsed, not yet applied while completing) or
    ``$DSVC_HOME``; None when there is none (completion never creates a store)."""
    home = ctx.find_root().params.get("home")
    saved = os.environ.get("DSVC_HOME")
    if home:
        os.environ["DSVC_HOME"] = os.path.abspath(os.path.expanduser(home))
    try:
        root = default_home()
        yield registry.open_store() if (root / "store.lmdb").is_dir() else None
    finally:
        if home:
            if saved is None:
                os.environ.pop("DSVC_HOME", None)
            else:
                os.environ["DSVC_HOME"] = saved


def _records(ctx: click.Context) -> list[Record]:
    try:
        with _store_of(ctx) as store:
            return [] if store is None else list(registry.all_records(store))
    except Exception:  # completion must never print a traceback into the shell
        return []


def complete_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Local dataset ids starting with ``incomplete``, newest first, described by
    project/name and version."""
    recs = sorted(_records(ctx), key=lambda r: r.created, reverse=True)
    items = [
        CompletionItem(
            r.id, help=f"{r.project}/{r.name} v{r.version} ({r.status})"
        )
        for r in recs
        if r.id.startswith(incomplete.lower())
    ]
    if param.name in ("a", "b", "dataset"):  # diff/ls also take folders and dsvc:// URLs
        items.append(CompletionItem(incomplete, type="dir"))
    return items


def complete_projects(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    names = sorted({r.project for r in _records(ctx)})
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Dataset names (of ``--project`` when it was given before)."""
    project = ctx.params.get("project")
    names = sorted({r.name for r in _records(ctx) if project is None or r.project == project})
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_remotes(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    from dsvc.remote import config  # the transport loads only when completing remotes

    try:
        with _store_of(ctx) as store:
            rows = [] if store is None else config.list_remotes(store)
    except Exception:
        return []
    return [
        CompletionItem(r["name"], help=r["url"]) for r in rows if r["name"].startswith(incomplete)
    ]


def _completer(path: tuple[str, ...], param: click.Parameter) -> Completer | None:
    name = param.name or ""
    if path[:1] == ("remote",) and isinstance(param, click.Argument):
        # `remote add NAME` names a new remote: nothing to complete
        return complete_remotes if name in ("name", "old") and path != ("remote", "add") else None
    if name in ID_PARAMS:
        return complete_ids
    if name in ("project", "new_project"):
        return complete_projects
    if name == "name":
        return complete_names
    if name in REMOTE_PARAMS:
        return complete_remotes
    return None


def attach(group: click.Group, path: tuple[str, ...] = ()) -> None:
    """Give every id, project, name and remote parameter of ``group``'s commands its
    completer (set once, after all commands are registered)."""
    for cmd_name, cmd in group.commands.items():
        sub = (*path, cmd_name)
        for p in cmd.params:
            fn = _completer(sub, p)
            if fn is not None and p._custom_shell_complete is None:  # noqa: SLF001
                p._custom_shell_complete = fn  # noqa: SLF001 - click's shell_complete=
        if isinstance(cmd, click.Group):
            attach(cmd, sub)


# -- dsvc --install-completion ------------------------------------------------------------------

_LINES = {
    "bash": ("~/.bashrc", 'eval "$(_DSVC_COMPLETE=bash_source dsvc)"'),
    "zsh": ("~/.zshrc", 'eval "$(_DSVC_COMPLETE=zsh_source dsvc)"'),
    "fish": ("~/.config/fish/completions/dsvc.fish", "_DSVC_COMPLETE=fish_source dsvc | source"),
}


def install(shell: str | None = None) -> tuple[str, Path, bool]:
    """Add the completion line for ``shell`` (default: ``$SHELL``'s) to its start-up
    file; returns ``(shell, file, added)`` (``added`` False: the line was there)."""
    shell = shell or os.path.basename(os.environ.get("SHELL", ""))
    if shell not in _LINES:
        raise UsageError(
            f"cannot install completion for shell {shell!r}; add the line for bash, zsh or "
            "fish by hand (docs/cli.md, Shell completion)"
        )
    rc, line = _LINES[shell]
    path = Path(os.path.expanduser(rc))
    text = path.read_text() if path.exists() else ""
    if line in text:
        return shell, path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(("" if not text or text.endswith("\n") else "\n") + f"# dsvc completion\n{line}\n")
    return shell, path, True


def install_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``dsvc --install-completion``: install, say where, and exit."""
    if not value or ctx.resilient_parsing:
        return
    shell, path, added = install()
    if added:
        click.echo(f"Added {shell} completion to {path}; open a new shell (or source it)")
    else:
        click.echo(f"{shell} completion is already in {path}")
    ctx.exit(0)
