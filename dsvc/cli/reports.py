"""``dsvc show --reports``: a version's logger reports (``Dataset.get_logger()``) as one
self-contained HTML page (dsvc.reports.render_html)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from dsvc.record import Record
from dsvc.store import Store

# dsvc.reports and dsvc.lookup are imported inside the commands that use them (`dsvc --help` loads no library: cli/core.py)

#: the options ``show`` takes for this (kept here, so show's own code stays small)
OPTIONS = [
    click.option(
        "--reports",
        is_flag=True,
        help="Write the version's reports (tables, scalars, histograms, text, images, "
        "media from Dataset.get_logger()) as one self-contained HTML page.",
    ),
    click.option(
        "-o",
        "--output",
        "reports_output",
        metavar="FILE",
        help="Where --reports writes the page (default: reports-<ID>.html here).",
    ),
]


def reports_options(fn: Any) -> Any:
    """Decorate ``show`` with :data:`OPTIONS`."""
    for opt in reversed(OPTIONS):
        fn = opt(fn)
    return fn


def write_reports(store: Store, rec: Record, output: str | None) -> tuple[Path, int]:
    """Write the page for version ``rec``; returns its path and the number of reports."""
    from dsvc import reports
    from dsvc.lookup import remote_for

    remote = remote_for(store, rec.remote or rec.output_uri)
    events = reports.version_events(store, rec, remote)
    path = Path(output or f"reports-{rec.id}.html").absolute()
    page = reports.render_html(rec, events)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)  # never a half-written page
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, len(events)
