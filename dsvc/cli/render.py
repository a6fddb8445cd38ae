"""Drawing a lineage DAG: indented text for the terminal, Graphviz dot, Mermaid, and a
built-in SVG layout for when Graphviz is not installed."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from dsvc.record import Record

# C0 controls (ESC starts CSI/OSC sequences, BEL ends OSC), DEL, C1 controls (0x9b is a
# one-byte CSI, 0x9d a one-byte OSC) and the bidirectional overrides that make text read
# differently from what it is ("Trojan Source")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: Any, *, keep_lines: bool = False) -> str:
    """``text`` safe for a terminal: every control character (escape sequences, OSC
    included, which click's ANSI stripping lets through) is shown as ``\\xNN``.

    Everything printed that came from outside (names, tags, descriptions and paths from
    a remote's records and trees, error messages quoting them) goes through this.
    ``keep_lines`` keeps newlines and tabs (whole messages); a single name never keeps
    them, so it cannot fake an extra line of output.
    """
    return (_UNSAFE_KEEP_LINES if keep_lines else _UNSAFE).sub(_escape_char, str(text))


def short(dataset_id: str | None) -> str:
    return (dataset_id or "-")[:8]


def _label(did: str, rec: Record | None) -> tuple[str, str]:
    if rec is None:
        return f"{short(did)} (not found)", ""
    return (
        printable(f"{rec.project}/{rec.name} v{rec.version}"),
        f"{printable(rec.status)} · {short(did)}",
    )


def render_text(root: str, nodes: Mapping[str, Record | None], edges: list[tuple[str, str, str]]) -> str:
    """The DAG as an indented tree from the version down to its ancestors."""
    enc = (getattr(sys.stdout, "encoding", None) or "ascii").lower()
    fancy = "utf" in enc
    tee, last, pipe, blank, dot = (
        ("├── ", "└── ", "│   ", "    ", "●") if fancy else ("|-- ", "`-- ", "|   ", "    ", "*")
    )
    up: dict[str, list[tuple[str, str]]] = {}
    for p, c, kind in edges:
        up.setdefault(c, []).append((p, kind))
    lines: list[str] = []
    shown: set[str] = set()

    def line_for(did: str, kind: str) -> str:
        title, sub = _label(did, nodes.get(did))
        tag = "squash of " if kind == "squash" else ""
        return f"{dot} {tag}{short(did)}  {title}" + (f"  ({sub.split(' · ')[0]})" if sub else "")

    # depth-first, parents in order, with an explicit stack: a lineage read from a
    # remote may be thousands of versions long
    stack = [(root, "", "parent", True, True)]
    while stack:
        did, prefix, kind, is_last, top = stack.pop()
        conn = "" if top else (last if is_last else tee)
        if did in shown:
            lines.append(f"{prefix}{conn}{dot} {short(did)}  (shown above)")
            continue
        lines.append(prefix + conn + line_for(did, kind))
        shown.add(did)
        kids = up.get(did, [])
        ext = "" if top else (blank if is_last else pipe)
        for i in reversed(range(len(kids))):
            p, k = kids[i]
            stack.append((p, prefix + ext, k, i == len(kids) - 1, False))
    return "\n".join(lines)


def render_dot(nodes: Mapping[str, Record | None], edges: list[tuple[str, str, str]]) -> str:
    out = [
        "digraph dsvc {",
        '  rankdir=TB; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
        'fontname="Helvetica", fontsize=11]; edge [color="#555555"];',
    ]
    for did, rec in nodes.items():
        title, sub = _label(did, rec)
        label = (title + ("\\n" + sub if sub else "")).replace('"', '\\"')
        out.append(f'  "{did}" [label="{label}"];')
    for p, c, kind in edges:
        style = ' [style=dashed, label="squash"]' if kind == "squash" else ""
        out.append(f'  "{p}" -> "{c}"{style};')
    out.append("}")
    return "\n".join(out) + "\n"


def render_mermaid(nodes: Mapping[str, Record | None], edges: list[tuple[str, str, str]]) -> str:
    out = ["graph TD"]
    for did, rec in nodes.items():
        title, sub = _label(did, rec)
        text = (title + ("<br/>" + sub if sub else "")).replace('"', "#quot;")
        out.append(f'  d{did[:12]}["{text}"]')
    for p, c, kind in edges:
        arrow = "-. squash .->" if kind == "squash" else "-->"
        out.append(f"  d{p[:12]} {arrow} d{c[:12]}")
    return "\n".join(out) + "\n"


def render_svg(nodes: Mapping[str, Record | None], edges: list[tuple[str, str, str]]) -> str:
    """A layered drawing (oldest on top) for when Graphviz is not installed."""
    ups: dict[str, list[str]] = {}
    for p, c, _ in edges:
        ups.setdefault(c, []).append(p)
    depth: dict[str, int] = {}

    def d(start: str) -> None:
        """Longest chain of ancestors below ``start`` (a parent on the current path, a
        loop a hostile remote may write, is ignored); iterative, for long lineages."""
        if start in depth:
            return
        stack = [(start, iter(ups.get(start, [])))]
        path = {start}
        while stack:
            n, todo = stack[-1]
            for p in todo:
                if p not in depth and p not in path:
                    stack.append((p, iter(ups.get(p, []))))
                    path.add(p)
                    break
            else:
                stack.pop()
                path.discard(n)
                ps = [depth[p] for p in ups.get(n, []) if p in depth]
                depth[n] = 1 + max(ps) if ps else 0

    for n in nodes:
        d(n)
    rows: dict[int, list[str]] = {}
    for n in sorted(nodes, key=lambda n: (r.created if (r := nodes[n]) else 0, n)):
        rows.setdefault(depth[n], []).append(n)
    bw, bh, gx, gy, m = 230, 46, 30, 50, 20
    width = max(len(r) for r in rows.values()) * (bw + gx) - gx + 2 * m
    height = len(rows) * (bh + gy) - gy + 2 * m
    pos: dict[str, tuple[float, float]] = {}
    for lvl, row in rows.items():
        off = (width - 2 * m - (len(row) * (bw + gx) - gx)) / 2
        for i, n in enumerate(row):
            pos[n] = (m + off + i * (bw + gx), m + lvl * (bh + gy))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
        '<defs><marker id="arr" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for p, c, kind in edges:
        if p not in pos or c not in pos:
            continue
        x1, y1 = pos[p][0] + bw / 2, pos[p][1] + bh
        x2, y2 = pos[c][0] + bw / 2, pos[c][1]
        dash = ' stroke-dasharray="5,4"' if kind == "squash" else ""
        parts.append(
            f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="#555" '
            f'stroke-width="1.4"{dash} marker-end="url(#arr)"/>'
        )
    for n, (x, y) in pos.items():
        title, sub = _label(n, nodes[n])
        parts.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{bw}" height="{bh}" rx="8" fill="#eef3fb" '
            'stroke="#4a6fa5"/>'
        )
        parts.append(
            f'<text x="{x + bw / 2:.0f}" y="{y + 19:.0f}" font-size="12" text-anchor="middle">'
            f"{escape(title[:34])}</text>"
        )
        parts.append(
            f'<text x="{x + bw / 2:.0f}" y="{y + 36:.0f}" font-size="10" fill="#555" '
            f'text-anchor="middle">{escape(sub)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
