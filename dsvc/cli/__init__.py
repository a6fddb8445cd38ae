"""The ``dsvc`` command line (click). Entry point: :func:`main` (``dsvc = "dsvc.cli:main"``).

Modules: ``core`` (root group, global options, errors and exit codes, output helpers),
``data`` and ``query`` (clearml-data's verbs that change and that read versions),
``remotes`` (remote, push, fetch, pull, clone), ``repo`` (init, gc, fsck, config, demo),
``stream`` (ls, cat: reading without a copy), ``overview`` (status, show, du), ``history`` (log, graph, diff) with ``render`` (DAG drawings), ``docgen`` (docs/cli.md
from these definitions).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dsvc.cli import data, history, overview, query, remotes, repo, stream  # noqa: F401  (register the commands)
from dsvc.cli.complete import attach
from dsvc.cli.core import EXIT_CODES, cli, limit_process_memory, run

attach(cli)  # complete dataset ids, projects, names and remotes, not only commands

__all__ = ["EXIT_CODES", "cli", "limit_process_memory", "main", "run"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``dsvc`` and exit with its exit code. The command owns its process: a
    command that runs caps malloc's arenas first (``core.limit_process_memory``)."""
    sys.exit(run(argv, own_process=True))
