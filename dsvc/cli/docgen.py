"""Generate docs/cli.md from the click definitions (the reference can never drift:
tests/test_cli.py fails when the file is out of date).

Regenerate with::

    python -m dsvc.cli.docgen > docs/cli.md
"""

from __future__ import annotations

import inspect
import json

import click

from dsvc.cli import cli
from dsvc.cli.core import EXIT_CODES, SECTIONS
from dsvc.cli.schemas import SCHEMAS

INTRO = """\
# `dsvc` command reference

<!-- Generated from the click definitions by `python -m dsvc.cli.docgen > docs/cli.md`.
     Do not edit by hand: tests/test_cli.py checks this file is up to date. -->

`dsvc` versions datasets from a shell or CI. It has clearml-data's verbs and flags
(`create`, `add`, `close`, `get`, ...) and git's (`init`, `remote`, `push`, `clone`,
`log`, `diff`, ...). The user guide is [guide.md](guide.md); ClearML users should read
[coming-from-clearml.md](coming-from-clearml.md).

## Conventions

* **The store** is `$DSVC_HOME` (default `~/.dsvc`), or `--home DIR` before the command:
  `dsvc --home ./store list`.
* **The current dataset.** As in clearml-data, the dataset a command created or worked on
  is remembered, so `--id` can be left out afterwards: `dsvc create ...`, then
  `dsvc add --files ...`, then `dsvc close`. Commands that act on one dataset remember it
  (`create`, `add`, `remove`, `sync`, `upload`, `close`, `list`, `get`, `verify`,
  `squash`, ...); inspection commands over several versions (`compare`, `diff`, `log`,
  `graph`, `search`) do not change it.
* **Ids**: a full 32-character id or a unique prefix of at least 4 characters of a local
  dataset, else of one on the default remote (`3f2a`). Commands that act on one version
  take it positionally, as git does (`dsvc get 3f2a`, `dsvc log 3f2a`, `dsvc show 3f2a`),
  or as `--id ID`, clearml-data's spelling; `add` and `remove` take `PATH...` or
  `--files PATH...`. `compare`, `diff` and `show` also take `PROJECT/NAME[@VERSION]`,
  and `diff` and `status` take folders.
* **Several values** after one flag work as in clearml-data
  (`--files a.csv b.csv --tags x y`); repeating the flag works too.
* **Output**: results on stdout, progress bars and notes on stderr. Bars appear for
  long steps (hashing, packing, uploading, downloading, copying) only when stderr is a
  terminal; `-q/--quiet` hides them and the notes, leaving only results (`dsvc -q create
  ...` prints just the new id). Listing and inspection commands take `--json`.
* **Errors** are one line on stderr, `dsvc: error: what happened; what to do`, and a
  distinct exit code. `--debug` (or `DSVC_DEBUG=1`) adds the traceback.

## Exit codes

| code | raised by | meaning |
|---:|---|---|
"""

COMPLETION = """\
## Shell completion

Commands, options and their values complete: dataset ids (described by project, name
and version), projects, names and remote names, read from the store. Either run
`dsvc --install-completion` once (it adds the line for `$SHELL`, bash, zsh or fish, to
its start-up file), or add one line yourself:

```bash
# bash (~/.bashrc)
eval "$(_DSVC_COMPLETE=bash_source dsvc)"
# zsh (~/.zshrc)
eval "$(_DSVC_COMPLETE=zsh_source dsvc)"
# fish (~/.config/fish/completions/dsvc.fish)
_DSVC_COMPLETE=fish_source dsvc | source
```

To avoid running `dsvc` at every shell start, write the script once and source the
file instead: `_DSVC_COMPLETE=bash_source dsvc > ~/.dsvc-complete.bash`.

## Environment

| variable | effect |
|---|---|
| `DSVC_HOME` | the store folder (default `~/.dsvc`); `--home` sets it for one command |
| `DSVC_REMOTE` | remote name or URL used instead of the default remote |
| `DSVC_QUIET` | like `--quiet` |
| `DSVC_DEBUG` | like `--debug` |
| `AWS_*`, `GOOGLE_*`, `AZURE_*` | credentials of S3, GCS and Azure remotes |

"""


JSON_INTRO = """\
## JSON output

Listing and inspection commands take `--json` and print one JSON document on stdout.
The vocabulary is shared: `id` is a 32-hex dataset id and `datasets` is always a list
of ids; `from`/`to` name the two sides of a comparison (`diff`, `compare`, `status`);
`size` is a file's size and `bytes`/`*_bytes` count bytes; times are ISO 8601 strings.
A dataset version is described by the same fields (`id`, `project`, `name`, `version`,
`status`, `tags`, `description`, `parents`, `squashed_from`, `created`, `finalized`,
`commit`, `tree`, `remote`) wherever one appears. Each command's output follows the
JSON Schema below (tests/test_cli_json.py validates every one against real output).

"""


def _json_schemas() -> str:
    out = [JSON_INTRO]
    for path, schema in SCHEMAS.items():
        text = json.dumps(schema, indent=1, sort_keys=False)
        out.append(f"### `dsvc {path} --json`\n\n```json\n{text}\n```\n\n")
    return "".join(out)


def _usage(cmd: click.Command, path: str) -> str:
    ctx = click.Context(cmd, info_name=path, help_option_names=["-h", "--help"])
    pieces = cmd.collect_usage_pieces(ctx)
    return " ".join([path, *pieces])


def _options(cmd: click.Command) -> list[str]:
    ctx = click.Context(cmd, help_option_names=["-h", "--help"])
    lines = []
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Argument):  # arguments are in the usage line and the text
            continue
        rec = p.get_help_record(ctx)
        if rec is None:
            continue
        names, help_text = rec
        cell = help_text.replace("|", "\\|")
        lines.append(f"| `{names}` | {cell} |")
    return lines


def _help_text(cmd: click.Command) -> str:
    text = inspect.cleandoc(cmd.help or "")
    out: list[str] = []
    for block in text.split("\n\n"):
        if block.startswith("\b"):
            lines = block.split("\n")[1:]
            title = lines[0].strip() if lines and lines[0].strip().endswith(":") else None
            if title:
                lines = lines[1:]
                out.append(f"**{title[:-1]}**")
            body = inspect.cleandoc("\n".join(lines))
            out.append(f"```console\n{body}\n```")
        else:
            out.append(" ".join(block.split()))
    return "\n\n".join(out)


def _command_doc(cmd: click.Command, path: str, level: int) -> list[str]:
    out = [
        f"{'#' * level} `{path}`",
        "",
        f"```text\n{_usage(cmd, path)}\n```",
        "",
        _help_text(cmd),
        "",
    ]
    opts = _options(cmd)
    if opts:
        out += ["| option | description |", "|---|---|", *opts, ""]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(click.Context(cmd)):
            out += _command_doc(cmd.commands[name], f"{path} {name}", level + 1)
    return out


def render() -> str:
    """The whole of docs/cli.md."""
    parts = [INTRO]
    parts += [f"| {code} | {raised} | {meaning} |\n" for code, raised, meaning in EXIT_CODES]
    parts.append("\n")
    parts.append(COMPLETION)
    parts.append(_json_schemas())
    parts.append("## Global options\n\n```text\ndsvc [GLOBAL OPTIONS] COMMAND [ARGS]...\n```\n\n")
    parts.append("| option | description |\n|---|---|\n")
    parts += [line + "\n" for line in _options(cli)]
    parts.append("\n")
    ctx = click.Context(cli)
    for title, names in SECTIONS:
        parts.append(f"## {title}\n\n")
        for name in names:
            cmd = cli.get_command(ctx, name)
            if cmd is not None:
                parts.append("\n".join(_command_doc(cmd, f"dsvc {name}", 3)) + "\n")
    return "".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
