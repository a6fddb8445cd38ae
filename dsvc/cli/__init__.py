"""The ``dsvc`` command line (click). Entry point: :func:`main` (``dsvc = "dsvc.cli:main"``).

Modules: ``core`` (root group, global options, errors and exit codes, output helpers),
``data`` and ``query`` (clearml-data's verbs that change and that read versions),
``remotes`` (remote, push, fetch, pull, clone), ``repo`` (init, gc, fsck, config, demo),
``stream`` (ls, cat: reading without a copy), ``overview`` (status, show, du), ``history`` (log, graph, diff) with ``render`` (DAG drawings), ``docgen`` (docs/cli.md
from these definitions).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from dsvc import libc
from dsvc.cli import data, history, overview, query, remotes, repo, stream  # noqa: F401  (register the commands)
from dsvc.cli.complete import attach
from dsvc.cli.core import EXIT_CODES, cli, run

attach(cli)  # complete dataset ids, projects, names and remotes, not only commands

__all__ = ["EXIT_CODES", "cli", "limit_process_memory", "main", "run"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``dsvc`` and exit with its exit code."""
    limit_process_memory()
    sys.exit(run(argv))


def limit_process_memory() -> None:
    """Cap glibc's malloc arenas at one per core (at least 2), unless the user set
    ``MALLOC_ARENA_MAX``. glibc gives a thread that meets a locked arena one of its own,
    up to 8 per core, and each keeps the free memory of its peaks: the first add of 3M
    tiny files peaked at 292 MiB with the default and 266 MiB with two arenas (1M: 250-260
    and 252; docs/performance.md, session 11). The command owns its process, so it may
    choose; the library, imported by other programs, leaves their allocator alone."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.limit_malloc_arenas(max(2, os.cpu_count() or 2))
