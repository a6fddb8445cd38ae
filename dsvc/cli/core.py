"""What every ``dsvc`` command shares: the root group and its global options, error
handling and exit codes, output helpers (tables, JSON, human sizes and times), and how
a command finds "its" dataset (``--id``, a unique id prefix, or the last used one).

Exit codes (documented in docs/cli.md, checked by tests/test_cli.py):

====  =======================================================================
0     success
1     internal error (a bug: rerun with ``--debug`` and report the traceback)
2     usage: bad option, bad combination, invalid path or configuration
3     not found: dataset, file, remote, config key
4     wrong state: e.g. modifying a finalized dataset, non-empty target folder
5     integrity: stored or materialized bytes do not match their hash
6     remote: a remote is unreachable or refused the request
7     conflict: a concurrent writer won a compare-and-swap; retry
8     local storage: disk full, file size limit, or a failing disk
130   interrupted (Ctrl-C)
====  =======================================================================
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from dsvc import __version__, libc, registry
from dsvc.cli.complete import install_callback
from dsvc.cli.render import printable, short  # noqa: F401  (short: re-exported)
from dsvc.errors import DsvcError, NotFoundError, UsageError
from dsvc.ids import to_hex
from dsvc.store import BackendError, default_home, disk_error, lmdb_error

# Imports inside functions here and in the other command modules are deliberate: `dsvc
# --help` and completion load only the record store (registry, store) and click; the
# dataset layer, the work layer and the transport (obstore) load when a command uses them.
if TYPE_CHECKING:  # imported where used: `dsvc --help` does not load the library
    from dsvc.dataset import Dataset
    from dsvc.record import Record
    from dsvc.store import Store

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_STATE = 4
EXIT_INTEGRITY = 5
EXIT_REMOTE = 6
EXIT_CONFLICT = 7
EXIT_STORAGE = 8
EXIT_INTERRUPTED = 130

#: (code, meaning) for the docs and ``dsvc --help``
EXIT_CODES: list[tuple[int, str, str]] = [
    (EXIT_OK, "-", "success"),
    (EXIT_INTERNAL, "-", "internal error (a bug): rerun with --debug and report the traceback"),
    (EXIT_USAGE, "UsageError, InvalidPathError, ConfigError", "bad usage, path or configuration"),
    (EXIT_NOT_FOUND, "NotFoundError", "dataset, file, remote or key not found"),
    (EXIT_STATE, "StateError", "wrong state (e.g. modifying a finalized dataset)"),
    (EXIT_INTEGRITY, "IntegrityError, StoreCorruptError", "stored or copied bytes do not match their hash, or the store file is damaged"),
    (EXIT_REMOTE, "RemoteError", "remote unreachable or refused the request"),
    (EXIT_CONFLICT, "ConflictError", "a concurrent writer got there first: retry"),
    (EXIT_STORAGE, "StorageError, DiskFullError", "local disk full or failing: free space, retry"),
    (EXIT_INTERRUPTED, "-", "interrupted (Ctrl-C)"),
]

_state: dict[str, bool] = {"debug": False, "quiet": False, "own_process": False}


# -- the root group ------------------------------------------------------------------


class GreedyCommand(click.Command):
    """A command whose list options take several values after one flag, as in
    clearml-data (``--files a.csv b.csv``), besides the click way (repeating the flag).

    ``greedy`` names the long options (``multiple=True``) whose following words, up to
    the next word starting with ``-``, are all values.
    """

    greedy: frozenset[str] = frozenset()

    def __init__(self, *a: Any, greedy: Iterable[str] = (), **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.greedy = frozenset(greedy)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_greedy(args, self.greedy))


def expand_greedy(args: Sequence[str], greedy: Iterable[str]) -> list[str]:
    """``--files a b -x`` -> ``--files a --files b -x`` for the options in ``greedy``."""
    greedy = set(greedy)
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        out.append(a)
        i += 1
        if a == "--":
            out.extend(args[i:])
            break
        if a in greedy:
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(a)
                out.append(args[i])
                first = False
                i += 1
    return out


#: help sections of the root command, in workflow order
SECTIONS: list[tuple[str, list[str]]] = [
    (
        "Dataset commands (clearml-data)",
        [
            "create", "add", "remove", "sync", "upload", "close", "publish", "list", "search",
            "get", "squash", "compare", "verify", "delete", "rename", "move", "set-description",
        ],
    ),
    (
        "Git-style commands",
        [
            "init", "status", "show", "remote", "push", "fetch", "pull", "clone", "log",
            "graph", "diff", "du", "gc", "fsck", "cache", "config", "demo",
        ],
    ),
    ("Reading without a copy", ["ls", "cat"]),
]  # fmt: skip


class ClosedPipe(Exception):
    """stdout's reader went away (``dsvc list | head``)."""


class DsvcGroup(click.Group):
    """Lists commands in workflow order, in the sections of :data:`SECTIONS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = [n for _, names in SECTIONS for n in names]
        known = [n for n in order if n in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # before click's main turns it into a silent exit 1
            raise ClosedPipe() from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed: set[str] = set()
        for title, names in [*SECTIONS, ("Other commands", sorted(self.commands))]:
            rows = []
            for n in names:
                cmd = self.commands.get(n)
                if cmd is None or cmd.hidden or n in listed:
                    continue
                listed.add(n)
                rows.append((n, cmd.get_short_help_str(limit=120)))
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=DsvcGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="dsvc")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="DSVC_HOME",
    help="Store folder (default: $DSVC_HOME, else ~/.dsvc).",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars or chatter; print only results."
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--install-completion",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, param, value: _install_completion(ctx, param, value),
    help="Add shell completion (of commands, options, dataset ids, projects, names and "
    "remotes) to your shell's start-up file ($SHELL: bash, zsh or fish), then exit.",
)
def cli(home: str | None, quiet: bool, debug: bool) -> None:
    """dsvc: Git-style, content-addressed dataset versions with ClearML Data's verbs.

    Every dataset version is an immutable commit over deduplicated, compressed chunks in
    a local store; remotes (S3, GCS, Azure, a folder) are pushed to like git remotes.

    \b
    Example:
      dsvc create --project demo --name images
      dsvc add --files ./images
      dsvc close
      dsvc get --copy ./work

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 not found, 4 wrong state,
    5 integrity, 6 remote, 7 conflict, 8 disk full, 130 interrupted. See docs/cli.md.
    """
    if home:
        os.environ["DSVC_HOME"] = os.path.abspath(os.path.expanduser(home))
    from dsvc.remote.options import COMMAND_LINE

    token = COMMAND_LINE.set(True)  # memory:// remotes are for Python only
    click.get_current_context().call_on_close(lambda: COMMAND_LINE.reset(token))
    if quiet:
        os.environ["DSVC_QUIET"] = "1"
        _state["quiet"] = True
    if debug:
        _state["debug"] = True
    if _state["own_process"]:
        # here, not at start-up: `--help`, `--version` and completion never get here,
        # and they need not load ctypes for it (~6 ms)
        limit_process_memory()


def limit_process_memory() -> None:
    """Cap glibc's malloc arenas at one per core (at least 2), unless the user set
    ``MALLOC_ARENA_MAX``. glibc gives a thread that meets a locked arena one of its own,
    up to 8 per core, and each keeps the free memory of its peaks: the first add of 3M
    tiny files peaked at 292 MiB with the default and 266 MiB with two arenas (1M: 250-260
    and 252; docs/performance.md, session 11). The command owns its process (``main``),
    so it may choose; the library, and ``run`` called by another program, leave that
    program's allocator alone. Before any command's worker threads exist."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.limit_malloc_arenas(max(2, os.cpu_count() or 2))


def _install_completion(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    install_callback(ctx, param, value)


def is_quiet() -> bool:
    return _state["quiet"] or bool(os.environ.get("DSVC_QUIET"))


# -- running and errors --------------------------------------------------------------


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_line(msg: str) -> None:
    click.echo(f"dsvc: error: {printable(one_line(msg))}", err=True)


def run(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; returns the exit code (``main`` exits with it). ``own_process``: the
    caller owns this process (``main``), so a command may tune it (limit_process_memory)."""
    _state["own_process"] = own_process
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is global, but people add it where the error showed: accept it anywhere
    # before a `--` (git's -c style flags must come first; ours need not)
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    args = [a for a in args[:end] if a != "--debug"] + args[end:]
    _state["debug"] = debug or bool(os.environ.get("DSVC_DEBUG"))
    try:
        rv = cli.main(
            args=(["--debug"] if debug else []) + args, prog_name="dsvc", standalone_mode=False
        )
    except click.exceptions.NoArgsIsHelpError as e:  # `dsvc remote` alone: show its help
        click.echo(e.ctx.get_help(), err=True)
        return EXIT_USAGE
    except click.ClickException as e:
        cmd = getattr(getattr(e, "ctx", None), "command_path", "dsvc")
        hint = f" (see '{cmd} --help')" if isinstance(e, click.UsageError) else ""
        error_line(e.format_message() + hint)
        return e.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("dsvc: interrupted", err=True)
        return EXIT_INTERRUPTED
    except DsvcError as e:
        if _state["debug"]:
            traceback.print_exc()
        error_line(e.cli_message())  # the remedy in the CLI's words
        return e.exit_code
    except (BrokenPipeError, ClosedPipe):  # `dsvc list | head`: stop quietly, as git does
        return _closed_pipe()
    except (_backend_error(), OSError) as e:
        # raised outside the store's own guards (a full disk while materializing, LMDB
        # met through a raw transaction): say what it is and where, not "a bug"
        err = _environment_error(e)
        if err is None:
            return _internal_error(e)
        if _state["debug"]:
            traceback.print_exc()
        error_line(str(err))
        return err.exit_code
    except Exception as e:  # a bug: one line unless --debug
        return _internal_error(e)
    return rv if isinstance(rv, int) else EXIT_OK


def _backend_error() -> type[Exception]:
    """The store's database error type."""
    return BackendError


def _closed_pipe() -> int:
    """The reader of stdout went away: point fd 1 at /dev/null so that the flush at exit
    (of what is still buffered) cannot fail again, and exit 0 without a word."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real fd (a test runner's capture)
        pass
    return EXIT_OK


def _environment_error(e: BaseException) -> DsvcError | None:
    """The dsvc error for a damaged store or a full or failing disk, else None."""
    home = default_home()
    if isinstance(e, BackendError):
        return lmdb_error(home, e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        return disk_error(home, e.filename, e)
    return None


def _internal_error(e: BaseException) -> int:
    """A bug: one line unless --debug."""
    if _state["debug"]:
        traceback.print_exc()
        return EXIT_INTERNAL
    error_line(
        f"internal error: {type(e).__name__}: {e}; rerun with --debug for the traceback "
        "and report it"
    )
    return EXIT_INTERNAL


# -- output --------------------------------------------------------------------------


def say(text: str = "", *, err: bool = False) -> None:
    """Chatter for people (suppressed by --quiet)."""
    if not is_quiet():  # text may quote names from a remote: no terminal escapes
        click.echo(printable(text, keep_lines=True), err=err)


def result(text: str) -> None:
    """A result line on stdout (always printed)."""
    click.echo(printable(text, keep_lines=True))


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, bytes):
        return o.hex()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    return str(o)


def emit_json(obj: Any) -> None:
    # json escapes C0 controls; C1 (0x80-0x9f) and DEL pass as they are, so escape them
    text = json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False)
    click.echo(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def human_time(ns: int | None) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(ns: int | None) -> str | None:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat() if ns else None


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], right: Iterable[int] = ()) -> None:
    """Aligned columns; ``right`` lists the column indexes aligned right (sizes)."""
    right = set(right)
    cells = [[str(h) for h in headers]] + [["" if c is None else printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i])
            for i, c in enumerate(r)
            if i < len(widths)
        ]
        line = "  ".join(parts).rstrip()
        click.echo(click.style(line, bold=True) if n == 0 and sys.stdout.isatty() else line)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


# -- the store and dataset lookup ----------------------------------------------------


def open_store(*, create: bool = True) -> Store:
    """The store of ``--home``/``$DSVC_HOME``; a read-only command passes ``create=False``
    so that a mistyped home is reported instead of silently becoming a new, empty store."""
    if not create:
        home = default_home()
        if not (home / "store.lmdb").is_dir():
            raise NotFoundError(
                f"no dsvc store in {home}: check --home/DSVC_HOME, or create one with "
                f"`dsvc init {home}` (or `dsvc clone URL {home}`)"
            )
    return registry.open_store()


def remember(store: Store, dataset_id: str) -> None:
    """Make ``dataset_id`` the default for the next command (clearml-data's state)."""
    store.put_record(registry.LAST_USED, dataset_id)


def expand_id(store: Store, text: str) -> str:
    """A full dataset id from a full id or a unique prefix (>= 4 hex chars) of a local
    one, else of one on the default remote."""
    t = text.strip().lower()
    if registry.get(store, t) is not None or len(t) >= 32:
        return t
    if len(t) >= 4:
        hits = [r.id for r in registry.all_records(store) if r.id.startswith(t)]
        if not hits:  # a version only the default remote has (as git's fetched refs)
            hits = [i for i in remote_ids(store) if i.startswith(t)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UsageError(
                f"dataset id prefix {text!r} is ambiguous ({len(hits)} datasets); give more "
                "characters"
            )
    return t


def remote_ids(store: Store) -> list[str]:
    """Ids of the default remote's versions ([] without a reachable default remote)."""
    from dsvc.lookup import remote_for

    try:
        r = remote_for(store, None)
        return [] if r is None else [x.id for x in r.list_records()]
    except DsvcError:
        return []


def dataset_id_or_last(
    store: Store, given: str | None, what: str = "this command", how: str = "--id ID"
) -> str:
    """``--id`` (expanded), else the last used dataset; a usage error when neither.

    ``how`` is how this command takes an id (``--id ID``, or ``ID`` when positional)."""
    if given:
        return expand_id(store, given)
    last = registry.last_used(store)
    if not last:
        raise UsageError(
            f"{what} needs a dataset: pass {how} (or run `dsvc create` first; the last "
            "created or used dataset is the default)"
        )
    return last


def one_id(positional: str | None, option: str | None, what: str) -> str | None:
    """The id given as ``ID`` or as ``--id ID`` (clearml-data's spelling); both is an error
    unless they agree."""
    if positional and option and positional != option:
        raise UsageError(f"{what}: give the dataset as ID or as --id ID, not both")
    return positional or option


def get_dataset(
    store: Store,
    dataset_id: str | None,
    project: str | None = None,
    name: str | None = None,
    version: str | None = None,
    what: str = "this command",
) -> Dataset:
    """The Dataset for ``--id``, or ``--project/--name[/--version]``, or the last used."""
    from dsvc.dataset import Dataset

    if dataset_id and version:
        raise UsageError(
            "--version picks a version of --project/--name; an id names one version "
            "already: drop --version, or give --project and --name instead of the id"
        )
    if dataset_id or not (project or name):
        return Dataset.get(dataset_id=dataset_id_or_last(store, dataset_id, what))
    if version and not (project and name):
        raise UsageError("--version needs --project and --name")
    return Dataset.get(dataset_project=project, dataset_name=name, dataset_version=version)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def check_version(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``--version`` value that is a version (PEP 440, as ClearML compares them)."""
    if value is not None and registry.parse_version(value) is None:
        raise click.BadParameter(
            f"{value!r} is not a version; use numbers like 1.0.0 (PEP 440, as ClearML)"
        )
    return value


#: counts that cannot be negative (--max-workers, -n, --grace...)
WORKERS = click.IntRange(min=1)
COUNT = click.IntRange(min=0)


def dataset_label(rec: Record) -> str:
    return printable(f"{rec.project}/{rec.name} v{rec.version}")


def record_json(rec: Record) -> dict[str, Any]:
    """The public fields of a dataset record (ids as hex, times as ISO 8601)."""
    def hx(v: Any) -> Any:
        return to_hex(v) if isinstance(v, bytes) else v

    return {
        "id": rec.id,
        "project": rec.project,
        "name": rec.name,
        "version": rec.version,
        "status": rec.status,
        "tags": list(rec.tags),
        "description": rec.description,
        "parents": list(rec.parents),
        "squashed_from": list(rec.squashed_from),
        "created": iso_time(rec.created),
        "finalized": iso_time(rec.finalized),
        "commit": hx(rec.commit),
        "tree": hx(rec.tree),
        "remote": rec.remote,
    }


def tree_size(store: Store, tree: bytes | None) -> int | None:
    """Total bytes of a version (root tree entries carry their subtree sizes)."""
    if tree is None:
        return None
    try:
        return sum(e.size for e in store.get_tree(tree).values())
    except NotFoundError:
        return None
    except DsvcError:
        return None


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise UsageError(f"option {p!r} must look like KEY=VALUE")
        out[k.strip()] = v
    return out


def id_option(help_text: str = "Dataset id or unique prefix (default: the last used one).") -> Any:
    """The ``--id`` option shared by the dataset commands."""
    return click.option("--id", "dataset_id", metavar="ID", help=help_text)


def dataset_record(store: Store, dataset_id: str) -> Record:
    """The local record of ``dataset_id`` (NotFoundError naming it otherwise)."""
    return registry.require(store, dataset_id)


def greedy(*names: str) -> dict[str, Any]:
    """``cli.command`` arguments for a command whose ``names`` options take many values."""
    return {"cls": GreedyCommand, "greedy": names}
