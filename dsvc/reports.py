"""The dataset logger (ClearML's ``Dataset.get_logger()``): tables, scalars, histograms,
text, images and media reported while a version is a draft, kept with the version.

Where reports live (docs/format.md §8.1):

* while the version is a draft, in the local store's records db under
  ``reports/<dataset id>`` as ``{"events": [event, ...], "bytes": n}`` (appended by
  compare-and-swap, so reports from several processes all land);
* ``finalize`` copies the events into the commit's metadata (``meta["reports"]``), so
  they are part of the content-addressed commit: immutable, checked by its id, and
  pushed, fetched and cloned with the version like the rest of the commit.

An event is a map ``{"kind", "title", "series", "iteration", "time", ...}`` with the
kind's fields (``table``: ``columns``/``index``/``rows`` or ``url``; ``scalar``:
``value``; ``histogram``: ``values``/``labels``/``xlabels``/``xaxis``/``yaxis``;
``text``: ``text``/``level``; ``image`` and ``media``: ``mime``/``name``/``data`` (the
bytes) or ``url``). Because the commit carries them, a version's reports are limited to
:data:`MAX_REPORT_BYTES` (commits are at most 64 MiB); a report that would pass it is
refused with an error that says so.

:func:`render_html` turns a version's events into one self-contained HTML page
(``dsvc show --reports ID``): no scripts, no external files; images and media embedded.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import mimetypes
import os
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from dsvc.errors import ConflictError, NotFoundError, StateError, UsageError
from dsvc.ids import to_hex
from dsvc.record import Record
from dsvc.store import Store

if TYPE_CHECKING:
    from dsvc.remote.fetch import RemoteFetch

PREFIX = "reports/"
#: the most report bytes one version carries (its commit holds them; commits <= 64 MiB)
MAX_REPORT_BYTES = 32 << 20
KINDS = ("table", "scalar", "histogram", "text", "image", "media")


def _key(dataset_id: str) -> str:
    return PREFIX + dataset_id


def draft_events(store: Store, dataset_id: str) -> list[dict[str, Any]]:
    """The events reported so far on the draft ``dataset_id``."""
    raw = store.get_record(_key(dataset_id))
    return list(raw["events"]) if isinstance(raw, dict) else []


def append(store: Store, dataset_id: str, event: dict[str, Any]) -> None:
    """Add one event to a draft's reports (compare-and-swap, retried)."""
    size = len(msgpack.packb(event, use_bin_type=True))
    for _ in range(100):
        old = store.get_record(_key(dataset_id))
        cur: dict[str, Any] = old if isinstance(old, dict) else {"events": [], "bytes": 0}
        total = int(cur.get("bytes", 0)) + size
        if total > MAX_REPORT_BYTES:
            raise UsageError(
                f"dataset {dataset_id}: reports would take {total} bytes, more than a version "
                f"carries ({MAX_REPORT_BYTES}); report smaller images/media (or a url=)"
            )
        new = {"events": [*cur["events"], event], "bytes": total}
        try:
            store.cas_record(_key(dataset_id), old, new)
            return
        except ConflictError:
            continue
    raise ConflictError(f"dataset {dataset_id}: reports kept changing; report again")


PREVIEW_TABLES = 10  # ClearML: dataset.preview.tabular.table_count
PREVIEW_ROWS = 10  # ClearML: dataset.preview.tabular.row_count
PREVIEW_IMAGES = 10
PREVIEW_IMAGE_MAX = 512 << 10
_TABULAR = {".csv": ",", ".tsv": "\t"}
_IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


def set_preview(store: Store, dataset_id: str, files: Iterable[tuple[str, Any]]) -> int:
    """Replace the draft's preview reports (``upload(preview=True)``, ClearML's
    ``_report_dataset_preview``): the first rows of up to :data:`PREVIEW_TABLES` CSV/TSV
    files and up to :data:`PREVIEW_IMAGES` small images among ``files`` (``(path,
    entry)`` of stored files). Returns how many previews were made."""
    events: list[dict[str, Any]] = []
    tables = images = 0
    for path, entry in files:
        if tables >= PREVIEW_TABLES and images >= PREVIEW_IMAGES:
            break
        ext = os.path.splitext(path)[1].lower()
        if ext in _TABULAR and tables < PREVIEW_TABLES:
            head = _head_lines(store, entry, PREVIEW_ROWS + 1)
            rows = list(csv.reader(head, delimiter=_TABULAR[ext]))
            if rows:
                tables += 1
                events.append(
                    {"kind": "table", "title": "Tables", "series": path, "columns": rows[0],
                     "index": None, "rows": rows[1:]}
                )  # fmt: skip
        elif ext in _IMAGES and images < PREVIEW_IMAGES and entry.size <= PREVIEW_IMAGE_MAX:
            images += 1
            data = b"".join(store.read_file(entry))
            events.append(
                {"kind": "image", "title": "Images", "series": path, "name": os.path.basename(path),
                 "mime": _IMAGES[ext], "data": data}
            )  # fmt: skip
    now = time.time_ns()
    events = [{**e, "iteration": None, "time": now, "preview": True} for e in events]
    for _ in range(100):
        old = store.get_record(_key(dataset_id))
        cur: dict[str, Any] = old if isinstance(old, dict) else {"events": [], "bytes": 0}
        kept = [e for e in cur["events"] if not e.get("preview")]
        new_events = kept + events
        size = sum(len(msgpack.packb(e, use_bin_type=True)) for e in new_events)
        if size > MAX_REPORT_BYTES:
            return 0  # a preview never crowds out what the user reported
        try:
            store.cas_record(_key(dataset_id), old, {"events": new_events, "bytes": size})
            return len(events)
        except ConflictError:
            continue
    return 0


def _head_lines(store: Store, entry: Any, n: int) -> list[str]:
    """The first ``n`` lines of a stored text file (reads only the chunks needed)."""
    buf = b""
    for piece in store.read_file(entry):
        buf += piece
        if buf.count(b"\n") >= n:
            break
    return buf.decode("utf-8", "replace").splitlines()[:n]


def commit_meta(store: Store, dataset_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the draft's reports (what finalize writes into the commit)."""
    events = draft_events(store, dataset_id)
    return {**meta, "reports": events} if events else meta


def version_events(
    store: Store, rec: Record, remote: RemoteFetch | None = None
) -> list[dict[str, Any]]:
    """The reports of a version: from its commit once finalized (fetched from ``remote``
    when not local), else the draft's."""
    cid = rec.commit or (rec.finalizing or {}).get("commit")
    if cid is None:
        return draft_events(store, rec.id)
    if not store.has_object(cid):
        if remote is None:
            raise NotFoundError(
                f"dataset {rec.id}: its commit {to_hex(cid)} is not in the local store and "
                "no remote is configured; add the remote it was pushed to"
            )
        remote.fetch_commit(cid)
    return list(store.get_commit(cid).meta.get("reports") or [])


# -- the logger -------------------------------------------------------------------------


class Logger:
    """ClearML's ``Logger`` for a dataset draft: every report is stored with the version.

    The methods take ClearML's arguments (``title``, ``series``, ``iteration``...);
    arguments that shape ClearML's web plots (``extra_layout``, ``mode``,
    ``max_image_history``...) are accepted and ignored.
    """

    def __init__(self, store: Store, dataset_id: str, is_draft: Any) -> None:
        self._store = store
        self._id = dataset_id
        self._is_draft = is_draft

    def _add(self, kind: str, title: Any, series: Any, iteration: Any, **fields: Any) -> None:
        if not self._is_draft():
            raise StateError(
                f"dataset {self._id} is finalized; report to a draft (its reports are part of "
                "the version's commit)"
            )
        event = {
            "kind": kind,
            "title": str(title),
            "series": str(series),
            "iteration": None if iteration is None else int(iteration),
            "time": time.time_ns(),
            **fields,
        }
        append(self._store, self._id, event)

    def report_table(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        table_plot: Any = None,
        csv: str | None = None,
        url: str | None = None,
        extra_layout: Any = None,
        extra_data: Any = None,
    ) -> None:
        """A table: a pandas DataFrame, a list of rows (the first one the header), a CSV
        file (``csv=``) or a link (``url=``)."""
        if url is not None and table_plot is None and csv is None:
            self._add("table", title, series, iteration, url=str(url))
            return
        if csv is not None:
            table_plot = _read_csv(csv)
        self._add("table", title, series, iteration, **_table(table_plot))

    def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        """One point of a scalar series (a line over iterations)."""
        self._add("scalar", title, series, iteration, value=float(value))

    def report_single_value(self, name: str, value: float) -> None:
        """A single named number (ClearML's summary table)."""
        self._add("scalar", "Summary", name, None, value=float(value))

    def report_histogram(
        self,
        title: str,
        series: str,
        values: Any,
        iteration: int | None = None,
        labels: Sequence[str] | None = None,
        xlabels: Sequence[str] | None = None,
        xaxis: str | None = None,
        yaxis: str | None = None,
        mode: str | None = None,
        data_args: Any = None,
        extra_layout: Any = None,
    ) -> None:
        """A bar chart of ``values`` (a list, numpy array or pandas Series), one bar per
        ``xlabels`` entry."""
        vals = _plain(values)
        if not isinstance(vals, list):
            vals = [vals]
        if xlabels is None and hasattr(values, "index"):
            xlabels = [str(x) for x in values.index]
        self._add(
            "histogram",
            title,
            series,
            iteration,
            values=vals,
            labels=[str(x) for x in labels] if labels is not None else None,
            xlabels=[str(x) for x in xlabels] if xlabels is not None else None,
            xaxis=xaxis,
            yaxis=yaxis,
        )

    def report_text(
        self, msg: Any, level: int = logging.INFO, print_console: bool = True, *args: Any, **_: Any
    ) -> None:
        """A line of text (also printed, unless ``print_console=False``)."""
        if print_console:
            print(msg)
        self._add("text", "Console", logging.getLevelName(level), None, text=str(msg), level=level)

    def report_image(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        local_path: str | os.PathLike[str] | None = None,
        image: Any = None,
        matrix: Any = None,
        max_image_history: int | None = None,
        delete_after_upload: bool = False,
        url: str | None = None,
    ) -> None:
        """An image: a file (``local_path``), a numpy array (HxW, HxWx3, HxWx4; floats in
        0..1 or 0..255, stored as PNG), a PIL image, or a link (``url``)."""
        if image is None and matrix is not None:
            image = matrix
        if local_path is not None:
            name, mime, data = _file(local_path)
            if delete_after_upload:
                os.unlink(local_path)
        elif image is not None:
            name, mime, data = f"{series}.png", "image/png", _image_png(image)
        elif url is not None:
            self._add("image", title, series, iteration, url=str(url))
            return
        else:
            raise UsageError("report_image needs local_path, image, matrix or url")
        self._add("image", title, series, iteration, name=name, mime=mime, data=data)

    def report_media(
        self,
        title: str,
        series: str,
        iteration: int | None = None,
        local_path: str | os.PathLike[str] | None = None,
        stream: Any = None,
        file_extension: str | None = None,
        max_history: int | None = None,
        delete_after_upload: bool = False,
        url: str | None = None,
    ) -> None:
        """Audio, video or any file: from ``local_path``, a ``stream`` (bytes or a binary
        file; ``file_extension`` names its type) or a link (``url``)."""
        if local_path is not None:
            name, mime, data = _file(local_path)
            if delete_after_upload:
                os.unlink(local_path)
        elif stream is not None:
            data = stream if isinstance(stream, bytes) else stream.read()
            ext = "." + (file_extension or "bin").lstrip(".")
            name = f"{series}{ext}"
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        elif url is not None:
            self._add("media", title, series, iteration, url=str(url))
            return
        else:
            raise UsageError("report_media needs local_path, stream or url")
        self._add("media", title, series, iteration, name=name, mime=mime, data=bytes(data))

    def flush(self, wait: bool = False) -> bool:
        """Reports are stored when made: nothing to flush."""
        return True


def _plain(v: Any) -> Any:
    """numpy/pandas values as plain Python (lists, floats, ints, str)."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    return str(v)


def _table(t: Any) -> dict[str, Any]:
    if hasattr(t, "columns") and hasattr(t, "values"):  # a pandas DataFrame
        return {
            "columns": [str(c) for c in t.columns],
            "index": [str(i) for i in t.index],
            "rows": [_plain(list(r)) for r in t.itertuples(index=False, name=None)],
        }
    rows = [_plain(list(r)) for r in (t or [])]
    if not rows:
        raise UsageError("report_table needs table_plot (a DataFrame or rows), csv or url")
    return {"columns": [str(c) for c in rows[0]], "index": None, "rows": rows[1:]}


def _read_csv(path: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _file(path: str | os.PathLike[str]) -> tuple[str, str, bytes]:
    p = os.fspath(path)
    with open(p, "rb") as f:
        data = f.read()
    name = os.path.basename(p)
    return name, mimetypes.guess_type(name)[0] or "application/octet-stream", data


def _image_png(image: Any) -> bytes:
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    import numpy as np  # optional: only an image given as an array needs it

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise UsageError(f"report_image: an image array is HxW, HxWx3 or HxWx4, got {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return png_bytes(a.tobytes(), a.shape[1], a.shape[0], 1 if a.ndim == 2 else a.shape[2])


def png_bytes(pixels: bytes, width: int, height: int, channels: int) -> bytes:
    """A PNG (8 bits per sample, no interlace) of row-major ``pixels``."""
    ctype = {1: 0, 3: 2, 4: 6}[channels]
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, ctype, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


# -- the HTML page ----------------------------------------------------------------------


def render_html(rec: Record, events: Iterable[dict[str, Any]]) -> str:
    """One self-contained page with a version's reports, grouped by kind and title."""
    esc = html.escape
    events = list(events)
    head = f"{rec.project}/{rec.name} v{rec.version or '?'} ({rec.id})"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Reports of {esc(head)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}th{background:#eee}"
        "section{margin-bottom:2em}pre{background:#f6f6f6;padding:1em}</style>",
        "</head><body>",
        f"<h1>Reports of {esc(head)}</h1>",
    ]
    if not events:
        out.append("<p>This version has no reports.</p>")
    for kind in KINDS:
        group = [e for e in events if e.get("kind") == kind]
        if not group:
            continue
        out.append(f'<section class="{kind}"><h2>{esc(kind.capitalize())}s</h2>')
        if kind == "scalar":
            out.append(_scalars_html(group))
        elif kind == "text":
            lines = "\n".join(str(e.get("text", "")) for e in group)
            out.append(f"<pre>{esc(lines)}</pre>")
        else:
            for e in group:
                out.append(_event_html(e))
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def _caption(e: dict[str, Any]) -> str:
    it = e.get("iteration")
    return html.escape(
        f"{e.get('title')} / {e.get('series')}" + (f" (iteration {it})" if it is not None else "")
    )


def _event_html(e: dict[str, Any]) -> str:
    esc = html.escape
    cap = f"<h3>{_caption(e)}</h3>"
    if e.get("url"):
        return f'{cap}<p><a href="{esc(e["url"], quote=True)}">{esc(e["url"])}</a></p>'
    kind = e["kind"]
    if kind == "table":
        head = "".join(
            f"<th>{esc(str(c))}</th>" for c in ([""] if e.get("index") else []) + e["columns"]
        )
        body = []
        for i, row in enumerate(e["rows"]):
            cells = ([e["index"][i]] if e.get("index") else []) + list(row)
            body.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
        return f"{cap}<table><tr>{head}</tr>{''.join(body)}</table>"
    if kind == "histogram":
        return cap + _bars_svg(e)
    if kind in ("image", "media"):
        mime = str(e.get("mime") or "application/octet-stream")
        src = f"data:{mime};base64,{base64.b64encode(e['data']).decode()}"
        name = esc(str(e.get("name") or "file"), quote=True)
        if mime.startswith("image/"):
            return f'{cap}<img alt="{name}" src="{src}">'
        if mime.startswith("audio/"):
            return f'{cap}<audio controls src="{src}"></audio> <a download="{name}" href="{src}">{name}</a>'
        if mime.startswith("video/"):
            return f'{cap}<video controls src="{src}"></video>'
        return f'{cap}<a download="{name}" href="{src}">{name}</a>'
    return cap


def _bars_svg(e: dict[str, Any]) -> str:
    vals = e.get("values") or []
    series = vals if vals and isinstance(vals[0], list) else [vals]
    flat = [float(v) for s in series for v in s if isinstance(v, int | float) and math.isfinite(v)]
    top = max(flat + [1e-12])
    n = max(len(s) for s in series) if series else 0
    w, h, bw = max(200, 40 * n), 220, 30 / max(1, len(series))
    labels = e.get("xlabels") or [str(i) for i in range(n)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 60}">']
    for k, s in enumerate(series):
        for i, v in enumerate(s):
            try:
                bh = max(0.0, float(v)) / top * h
            except (TypeError, ValueError):
                continue
            x = 40 * i + 5 + k * bw
            parts.append(
                f'<rect x="{x:.1f}" y="{h - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
                f'fill="#4a7ebb"><title>{html.escape(str(v))}</title></rect>'
            )
    for i, lab in enumerate(labels[:n]):
        parts.append(
            f'<text x="{40 * i + 5}" y="{h + 12}" font-size="9" '
            f'transform="rotate(45 {40 * i + 5} {h + 12})">{html.escape(str(lab))}</text>'
        )
    parts.append("</svg>")
    axis = " ".join(html.escape(str(x)) for x in (e.get("xaxis"), e.get("yaxis")) if x)
    return "".join(parts) + (f"<p>{axis}</p>" if axis else "")


def _scalars_html(group: list[dict[str, Any]]) -> str:
    esc = html.escape
    out = []
    by: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in group:
        by.setdefault((e["title"], e["series"]), []).append((e.get("iteration") or 0, e["value"]))
    out.append(
        "<table><tr><th>title</th><th>series</th><th>points</th><th>last</th><th>plot</th></tr>"
    )
    for (title, series), pts in by.items():
        pts.sort()
        ys = [y for _, y in pts if math.isfinite(y)]
        lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        span = (hi - lo) or 1.0
        xs = [x for x, _ in pts]
        x0, xspan = (min(xs), (max(xs) - min(xs)) or 1) if xs else (0, 1)
        line = " ".join(
            f"{(x - x0) / xspan * 200:.1f},{50 - (y - lo) / span * 50:.1f}"
            for x, y in pts
            if math.isfinite(y)
        )
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50">'
            f'<polyline fill="none" stroke="#4a7ebb" points="{line}"/></svg>'
        )
        out.append(
            f"<tr><td>{esc(title)}</td><td>{esc(series)}</td><td>{len(pts)}</td>"
            f"<td>{esc(str(pts[-1][1]))}</td><td>{svg}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


# -- dataset._task ------------------------------------------------------------------------

#: metadata names under which ``dataset._task.upload_artifact`` keeps artifacts
ARTIFACT_PREFIX = "artifact/"


class Artifact:
    """ClearML's ``Artifact`` for an object kept with a dataset version."""

    def __init__(self, name: str, getter: Any) -> None:
        self.name = name
        self._get = getter

    def get(self, force_download: bool = False, deserialization_function: Any = None) -> Any:
        """The object, as it was given to ``upload_artifact`` (DataFrames and numpy
        arrays come back as such)."""
        return self._get()

    def __repr__(self) -> str:
        return f"Artifact({self.name!r})"


class DatasetTask:
    """What ClearML scripts reach through ``dataset._task`` (ClearML's dataset task):
    ``id`` (the dataset id, so ``Task.get_task(task_id=ds._task.id)`` finds it again,
    see :mod:`dsvc.compat`), ``name``, ``get_logger()``, ``connect()``,
    ``upload_artifact()`` and ``artifacts``. Artifacts are kept as the version's metadata
    (``set_metadata`` under ``artifact/<name>``), so they travel with it.
    """

    def __init__(self, dataset: Any, metadata_names: Any) -> None:
        self._ds = dataset
        self._names = metadata_names

    @property
    def id(self) -> str:
        return str(self._ds.id)

    @property
    def name(self) -> str:
        return str(self._ds.name)

    def get_project_name(self) -> str:
        return str(self._ds.project)

    def get_logger(self) -> Logger:
        return self._ds.get_logger()

    def connect(self, mutable: Any, name: str | None = None) -> Any:
        """Returns ``mutable`` unchanged (there is no server to override it from)."""
        return mutable

    def upload_artifact(
        self, name: str, artifact_object: Any, metadata: Any = None, **_: Any
    ) -> bool:
        """Keep ``artifact_object`` with the draft (any value ``set_metadata`` takes)."""
        self._ds.set_metadata(artifact_object, metadata_name=ARTIFACT_PREFIX + str(name))
        return True

    @property
    def artifacts(self) -> dict[str, Artifact]:
        ds = self._ds
        return {
            n[len(ARTIFACT_PREFIX) :]: Artifact(
                n[len(ARTIFACT_PREFIX) :], lambda n=n: ds.get_metadata(n)
            )
            for n in self._names()
            if n.startswith(ARTIFACT_PREFIX)
        }
