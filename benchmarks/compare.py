"""dsvc side by side with DVC and restic: add / re-add / modify / push / restore.

Usage::

    .venv/bin/python benchmarks/compare.py                      # full mode (the numbers)
    .venv/bin/python benchmarks/compare.py --quick              # 1/10 sizes, dsvc alone
    .venv/bin/python benchmarks/compare.py --dvc /tmp/dvcenv/bin/dvc --restic /usr/bin/restic
    .venv/bin/python benchmarks/compare.py --only images,daily --workdir /big/tmp

Installs nothing. DVC and restic are used when found (``--dvc``/``--restic`` or on
``PATH``); a missing one is skipped with a line that says how to install it:

    python3 -m venv /tmp/dvcenv && /tmp/dvcenv/bin/pip install dvc   # then --dvc ...
    apt-get install restic

Workloads are generated deterministically (``benchmarks/workloads.py``, on top of
``benchmarks/datagen.py``); each step of each tool runs in its own process (wall time
includes start-up; peak RSS per step from ``wait4``), tools alternate within every step
(the order rotates from step to step) and ``sync`` runs before every timed step, so no
tool pays for another's dirty pages. See ``benchmarks/peers.py`` for what each tool
does in each step and how stored bytes are counted.

Outputs: the table on stdout, ``<out>/benchmark-compare.md`` and ``.json``, and
``<out>/benchmark-compare.png`` (bar chart of the dsvc/peer ratios; skipped with a
message when matplotlib is missing). ``--out`` defaults to ``docs/`` in full mode and to
the work directory in ``--quick`` mode.
"""

from __future__ import annotations

import argparse
import fcntl
import filecmp
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
import workloads as wl  # noqa: E402

MB = 1_000_000
MiB = 1 << 20
STEPS = ("add", "re-add", "modify", "push", "restore")
WORKLOADS = ("images", "tabular", "many-small")
ALL = (*WORKLOADS, "daily")
#: the issue's reference numbers on this machine (median of runs), for the report
REFERENCE = {
    ("images", "add"): {"DVC": 15.0, "restic": 10.3, "borg": 9.8},
    ("tabular", "add"): {"DVC": 2.5, "restic": 8.6},
    ("many-small", "add"): {"DVC": 31.0, "restic": 6.1},
    ("many-small", "re-add"): {"DVC": 8.5, "restic": 3.8},
    ("images", "restore"): {"DVC": 19.0, "restic": 8.2},
    ("many-small", "restore"): {"DVC": 66.0, "restic": 8.8},
    ("many-small", "push"): {"DVC": 33.0},
}


@dataclass
class Result:
    workload: str
    step: str
    tool: str
    wall_s: float
    peak_rss: int
    local_bytes: int
    local_added: int
    remote_bytes: int
    files: int
    data_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def stored(self) -> int | None:
        """The bytes this row is judged on (see the table's notes)."""
        if self.step == "add":
            return self.local_bytes
        if self.step in ("re-add", "modify"):
            return self.local_added
        if self.step == "push":
            return self.remote_bytes
        if self.workload == "daily":
            return self.local_bytes
        return None


def log(msg: str) -> None:
    print(msg, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def rate(r: Result) -> str:
    if r.workload == "daily":
        return f"{r.wall_s / max(1, r.extra.get('versions', 1)):.2f} s/version"
    if r.wall_s <= 0:
        return "-"
    if r.workload == "many-small" or r.step == "re-add":
        return f"{r.files / r.wall_s:,.0f} files/s"
    return f"{r.data_bytes / r.wall_s / MB:,.0f} MB/s"


# -- running -------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).absolute()
        self.results: list[Result] = []
        self.order_seed = 0
        self.loads: list[float] = []  # 1-min load average before each timed step
        self.skipped: list[str] = []
        self.versions: dict[str, str] = {}
        self.dvc = self.restic = None
        wanted = set(args.tools.split(",")) if args.tools else None
        if args.quick and wanted is None:
            wanted = {"dsvc"}
        if wanted is None or "dvc" in wanted:
            self.dvc = peers.find_exe(args.dvc, "dvc")
            if self.dvc is None:
                self.skipped.append(
                    "skip DVC: no `dvc` found (install it in its own environment: "
                    "python3 -m venv /tmp/dvcenv && /tmp/dvcenv/bin/pip install dvc; then "
                    "pass --dvc /tmp/dvcenv/bin/dvc or put it on PATH)"
                )
            else:
                self.versions["DVC"] = peers.version_of(self.dvc, "--version")
        if wanted is None or "restic" in wanted:
            self.restic = peers.find_exe(args.restic, "restic")
            if self.restic is None:
                self.skipped.append(
                    "skip restic: no `restic` found (install it: apt-get install restic, or "
                    "a release binary from github.com/restic/restic; then pass --restic PATH "
                    "or put it on PATH)"
                )
            else:
                self.versions["restic"] = peers.version_of(self.restic, "version")
        if args.quick and wanted == {"dsvc"}:
            self.skipped.append("--quick: dsvc alone (pass --tools dsvc,dvc,restic for peers)")
        for s in self.skipped:
            log(s)

    def tools(self, root: Path, data: Path) -> list[peers.Tool]:
        out: list[peers.Tool] = [peers.Dsvc(root / "dsvc")]
        if self.dvc:
            out.append(peers.Dvc(root / "dvc", self.dvc, data))
        if self.restic:
            out.append(peers.Restic(root / "restic", self.restic))
        return out

    def rotated(self, tools: list[peers.Tool]) -> list[peers.Tool]:
        k = self.order_seed % len(tools)
        self.order_seed += 1
        return tools[k:] + tools[:k]

    def timed(self, tool: peers.Tool, fn, *a) -> peers.Measure:
        os.sync()  # nobody pays for the previous tool's dirty pages
        self.loads.append(os.getloadavg()[0])
        try:
            return fn(*a)
        except peers.StepError as e:
            log(f"  {tool.name}: FAILED\n{e}")
            raise

    # -- the three workloads -----------------------------------------------------

    def workload(self, name: str) -> None:
        """Run workload ``name`` ``--repeat`` times (fresh data and stores each time);
        the row keeps the median wall time and the largest peak RSS."""
        runs: list[list[Result]] = []
        for rep in range(self.args.repeat):
            if self.args.repeat > 1:
                log(f"\n-- {name}: run {rep + 1} of {self.args.repeat}")
            runs.append(self._workload_once(name))
        for rows in zip(*runs):
            r = rows[-1]
            r.wall_s = statistics.median(x.wall_s for x in rows)
            r.peak_rss = max(x.peak_rss for x in rows)
            r.extra["peak_anon"] = max(x.extra.get("peak_anon", 0) for x in rows)
            if len(rows) > 1:
                r.extra["walls"] = [x.wall_s for x in rows]
                r.extra["verified"] = all(x.extra.get("verified", True) for x in rows)
            self.results.append(r)

    def _workload_once(self, name: str) -> list[Result]:
        spec = wl.FULL[name].scaled(0.1) if self.args.quick else wl.FULL[name]
        out: list[Result] = []
        root = self.work / name
        if root.exists():
            shutil.rmtree(root)
        data = root / "ws" / "data"
        t = time.perf_counter()
        wl.generate(name, data, spec)
        nfiles, nbytes = wl.tree_summary(data)
        log(
            f"\n== {name}: {nfiles:,} files, {human(nbytes)} "
            f"(generated in {time.perf_counter() - t:.1f} s)"
        )
        tools = self.tools(root, data)
        before = {t.name: 0 for t in tools}
        for step in STEPS:
            if step == "modify":
                k = wl.modify(name, data, spec)
                nfiles, nbytes = wl.tree_summary(data)
                log(f"   modify: {k} files changed")
            for tool in self.rotated(tools):
                target = tool.root / "restored"
                if step == "add":
                    m = self.timed(tool, tool.add, data)
                elif step in ("re-add", "modify"):
                    m = self.timed(tool, tool.version, data)
                elif step == "push":
                    m = self.timed(tool, tool.push)
                else:
                    m = self.timed(tool, tool.restore, target)
                extra = {"peak_anon": m.peak_anon}
                if step == "restore":
                    extra["verified"] = self.verify(data, tool.restored_root(target, data))
                    extra["restore_store_bytes"] = tool.restore_store_bytes()
                    shutil.rmtree(target, ignore_errors=True)
                local = tool.local_bytes()
                # dsvc: growth of the LMDB pages in use (the file reuses freed pages)
                size = tool.used_bytes() if isinstance(tool, peers.Dsvc) else local
                if isinstance(tool, peers.Dsvc):
                    extra["lmdb_used_bytes"] = size
                r = Result(
                    name,
                    step,
                    tool.name,
                    m.wall_s,
                    m.peak_rss,
                    local,
                    size - before[tool.name],
                    tool.remote_bytes(),
                    nfiles,
                    nbytes,
                    extra,
                )
                before[tool.name] = size
                out.append(r)
                log(
                    f"   {step:<8} {tool.name:<7} {m.wall_s:8.2f} s  {rate(r):>16}  "
                    f"RSS {m.peak_rss / MiB:6.0f} MiB (anon {m.peak_anon / MiB:.0f})  local {human(local):>9} "
                    f"(+{human(r.local_added)})  remote {human(r.remote_bytes):>9}"
                    + (f"  restore ok={extra['verified']}" if "verified" in extra else "")
                )
        if not self.args.keep:
            shutil.rmtree(root, ignore_errors=True)
        out.sort(key=lambda r: (STEPS.index(r.step), r.tool != "dsvc", r.tool))
        return out

    def verify(self, data: Path, restored: Path) -> bool:
        """Restored tree == data: names and sizes always, contents fully in --quick
        and for a deterministic sample of 500 files otherwise."""
        a = sorted(str(p.relative_to(data)) for p in _files(data))
        b = (
            sorted(str(p.relative_to(restored)) for p in _files(restored))
            if restored.is_dir()
            else []
        )
        if a != b:
            log(f"   restore MISMATCH: {len(a)} files expected, {len(b)} restored")
            return False
        sample = a if self.args.quick else random.Random(7).sample(a, min(500, len(a)))
        for rel in a:
            if (data / rel).stat().st_size != (restored / rel).stat().st_size:
                log(f"   restore MISMATCH: size of {rel}")
                return False
        for rel in sample:
            if not filecmp.cmp(data / rel, restored / rel, shallow=False):
                log(f"   restore MISMATCH: content of {rel}")
                return False
        return True

    # -- daily snapshots ---------------------------------------------------------

    def daily(self) -> None:
        spec = wl.DailySpec()
        if self.args.quick:
            spec = spec.scaled(0.1)
        if self.args.days:
            spec = wl.DailySpec(spec.files, self.args.days, spec.start_size, spec.end_size)
        root = self.work / "daily"
        if root.exists():
            shutil.rmtree(root)
        data = root / "ws" / "data"
        snaps = wl.DailySnapshots(data, spec)
        tools = self.tools(root, data)
        walls: dict[str, list[float]] = {t.name: [] for t in tools}
        rss = dict.fromkeys(walls, 0)
        anon = dict.fromkeys(walls, 0)
        raw = 0
        log(
            f"\n== daily: {spec.files} CSV files growing {human(spec.start_size)} -> "
            f"{human(spec.end_size)} each over {spec.days} daily versions"
        )
        gen = 0.0
        for day in range(spec.days):
            t = time.perf_counter()
            raw += snaps.advance()
            gen += time.perf_counter() - t
            for tool in self.rotated(tools):
                m = self.timed(tool, tool.add if day == 0 else tool.version, data)
                walls[tool.name].append(m.wall_s)
                rss[tool.name] = max(rss[tool.name], m.peak_rss)
                anon[tool.name] = max(anon[tool.name], m.peak_anon)
            if day % 10 == 9 or day == spec.days - 1:
                log(
                    f"   day {day + 1:>3}: "
                    + "  ".join(f"{n} {sum(w):7.1f} s" for n, w in walls.items())
                    + f"  raw so far {human(raw)}"
                )
        nfiles, nbytes = wl.tree_summary(data)
        for tool in tools:
            w = walls[tool.name]
            local = tool.local_bytes()
            r = Result(
                "daily",
                f"{spec.days} versions",
                tool.name,
                sum(w),
                rss[tool.name],
                local,
                local,
                0,
                nfiles,
                nbytes,
                {
                    "versions": len(w),
                    "per_version_mean_s": statistics.mean(w),
                    "per_version_median_s": statistics.median(w),
                    "raw_snapshot_bytes": raw,
                    "peak_anon": anon[tool.name],
                    "stored_over_raw": local / raw if raw else None,
                    "spec": asdict(spec),
                },
            )
            self.results.append(r)
            log(
                f"   {tool.name:<7} total {r.wall_s:7.1f} s  "
                f"{statistics.mean(w):.2f} s/version (median {statistics.median(w):.2f})  "
                f"stored {human(local)} = {local / raw:.4f} of the raw {human(raw)}"
            )
        log(f"   (snapshots generated in {gen:.1f} s, not timed)")
        if not self.args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _files(root: Path) -> list[Path]:
    out = []
    for d, _, names in os.walk(root):
        out.extend(Path(d) / n for n in names)
    return out


# -- report --------------------------------------------------------------------------


def _get(results: list[Result], w: str, s: str, t: str) -> Result | None:
    for r in results:
        if (r.workload, r.step, r.tool) == (w, s, t):
            return r
    return None


def ratios(results: list[Result]) -> list[dict]:
    """One entry per peer row: dsvc/peer for time and for stored bytes."""
    out = []
    for r in results:
        if r.tool == "dsvc":
            continue
        d = _get(results, r.workload, r.step, "dsvc")
        if d is None:
            continue
        sd, sp = d.stored, r.stored
        out.append(
            {
                "workload": r.workload,
                "step": r.step,
                "peer": r.tool,
                "time": d.wall_s / r.wall_s if r.wall_s else None,
                "stored": (sd / sp) if (sd is not None and sp) else None,
            }
        )
    return out


def targets(results: list[Result]) -> list[dict]:
    """The issue's targets, judged on this run's numbers."""
    out = []
    for q in ratios(results):
        w, s, p = q["workload"], q["step"], q["peer"]
        label = f"{w} / {s} vs {p}"
        if q["time"] is not None:
            out.append(
                {
                    "target": f"{label}: dsvc faster",
                    "value": q["time"],
                    "limit": 1.0,
                    "pass": q["time"] < 1.0,
                }
            )
            if p == "DVC" and (w in ("images", "many-small") or s in ("push", "restore")):
                out.append(
                    {
                        "target": f"{label}: >= 3x faster",
                        "value": q["time"],
                        "limit": 1 / 3,
                        "pass": q["time"] <= 1 / 3,
                    }
                )
        if p == "DVC" and (s == "modify" or w == "daily") and q["stored"] is not None:
            out.append(
                {
                    "target": f"{label}: <= 1/3 of DVC's bytes",
                    "value": q["stored"],
                    "limit": 1 / 3,
                    "pass": q["stored"] <= 1 / 3,
                }
            )
    return out


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(results: list[Result], meta: dict) -> str:
    rq = {(q["workload"], q["step"], q["peer"]): q for q in ratios(results)}
    lines = [
        "| workload | step | tool | wall s | rate | peak RSS MiB (anon) | local MB (+added) "
        "| remote MB | dsvc/tool time | dsvc/tool bytes |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        q = rq.get((r.workload, r.step, r.tool), {})
        local = f"{r.local_bytes / MB:,.1f}"
        if r.step in ("re-add", "modify"):
            local += f" (+{r.local_added / MB:,.1f})"
        if r.step == "restore":
            local = f"{r.extra.get('restore_store_bytes', 0) / MB:,.1f} (2nd store)"
            if not r.extra.get("verified", True):
                local += " **restore mismatch**"
        remote = f"{r.remote_bytes / MB:,.1f}" if r.step in ("push", "restore") else "-"
        lines.append(
            f"| {r.workload} | {r.step} | {r.tool} | {r.wall_s:.2f} | {rate(r)} | "
            f"{r.peak_rss / MiB:,.0f} ({r.extra.get('peak_anon', 0) / MiB:,.0f}) | {local} | "
            f"{remote} | "
            f"{_fmt_ratio(q.get('time'))} | {_fmt_ratio(q.get('stored'))} |"
        )
    daily = [r for r in results if r.workload == "daily"]
    if daily:
        lines += [
            "",
            "Daily snapshots ({files} CSV files, {start} -> {end} each, {days} versions; raw sum "
            "of all snapshots {raw}):".format(
                files=daily[0].extra["spec"]["files"],
                start=human(daily[0].extra["spec"]["start_size"]),
                end=human(daily[0].extra["spec"]["end_size"]),
                days=daily[0].extra["spec"]["days"],
                raw=human(daily[0].extra["raw_snapshot_bytes"]),
            ),
            "",
            "| tool | total s | s/version (mean) | s/version (median) | stored MB | stored / raw |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for r in daily:
            lines.append(
                f"| {r.tool} | {r.wall_s:.1f} | {r.extra['per_version_mean_s']:.3f} | "
                f"{r.extra['per_version_median_s']:.3f} | {r.local_bytes / MB:,.1f} | "
                f"{r.extra['stored_over_raw']:.4f} |"
            )
    tg = targets(results)
    if tg:
        miss = [t for t in tg if not t["pass"]]
        lines += ["", f"Targets: {len(tg) - len(miss)} of {len(tg)} met."]
        for t in miss:
            lines.append(
                f"- MISS {t['target']}: dsvc/peer = {t['value']:.2f} (needs <= {t['limit']:.2f})"
            )
    lines += [
        "",
        "Peak RSS is the step's process high-water mark (`wait4`); for dsvc it includes "
        "the pages of the LMDB file it reads through its memory map (page cache, not "
        "allocations), so the anonymous part (`RssAnon`, sampled every 10 ms) follows "
        "in brackets. "
        "Ratios are dsvc / peer (below 1: dsvc is faster or smaller). Bytes judged per row: "
        "add = local store after the add; re-add and modify = what the step added to the "
        "local store; push = the remote folder; daily = local store after all versions. "
        "For dsvc, 'added' is the growth of the LMDB pages in use (the file reuses "
        "pages freed by earlier transactions and grows in steps, so its size alone can "
        "show +0 or more than a version added). "
        "Restore rows show the restoring side's store (dsvc: the second `DSVC_HOME`, DVC: "
        "the restore repo's cache; restic restores straight from the repository).",
        "",
        f"Machine: {meta['machine']}. Tools: {meta['tools']}. Mode: {meta['mode']}; "
        f"run took {meta['duration_s'] / 60:.1f} min; 1-min load average before the timed "
        f"steps: mean {_fmt_ratio(meta['load_avg']['mean'])}, max "
        f"{_fmt_ratio(meta['load_avg']['max'])} (on {os.cpu_count()} cores; above that, "
        "other work shared the machine).",
    ]
    return "\n".join(lines) + "\n"


def chart(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(
            "chart skipped: matplotlib is not installed "
            "(.venv/bin/pip install -e '.[bench]' installs it)"
        )
        return False
    rq = ratios(results)
    if not rq:
        log("chart skipped: no peer ran, so there is no dsvc/peer ratio to draw")
        return False
    labels = list(dict.fromkeys(f"{q['workload']} / {q['step']}" for q in rq))
    peers_ = list(dict.fromkeys(q["peer"] for q in rq))
    colors = {"DVC": "#945ecf", "restic": "#e8883a"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.42 * len(labels) + 2), sharey=True)
    h = 0.8 / len(peers_)
    for ax, key, title in (
        (axes[0], "time", "wall time, dsvc / peer"),
        (axes[1], "stored", "stored bytes, dsvc / peer"),
    ):
        for j, p in enumerate(peers_):
            ys, xs = [], []
            for i, lab in enumerate(labels):
                q = next(
                    (q for q in rq if f"{q['workload']} / {q['step']}" == lab and q["peer"] == p),
                    None,
                )
                if q and q[key]:
                    ys.append(i + (j - (len(peers_) - 1) / 2) * h)
                    xs.append(q[key])
            ax.barh(ys, xs, height=h, label=p, color=colors.get(p))
            for y, x in zip(ys, xs):
                ax.text(x * 1.05, y, f"{x:.2f}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=1)
        ax.axvline(1 / 3, color="grey", lw=1, ls="--")
        ax.set_title(title + "  (left of 1 = dsvc better; dashed = 1/3)", fontsize=9)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(range(len(labels)))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def dsvc_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return rev + ("+local changes" if dirty else "") if rev else "?"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="dsvc vs DVC and restic: add/push/restore times and stored bytes"
    )
    ap.add_argument("--quick", action="store_true", help="a tenth of the sizes, dsvc alone")
    ap.add_argument(
        "--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "dsvc-compare")
    )
    ap.add_argument("--out", help="where the .md/.json/.png go (default: docs/, --quick: workdir)")
    ap.add_argument("--dvc", help="path of the dvc executable (default: dvc on PATH)")
    ap.add_argument("--restic", help="path of the restic executable (default: restic on PATH)")
    ap.add_argument("--tools", help="comma list of dsvc,dvc,restic (default: all found)")
    ap.add_argument("--only", help=f"comma list of workloads: {','.join(ALL)}")
    ap.add_argument("--days", type=int, help="versions in the daily scenario (default 100)")
    ap.add_argument("--keep", action="store_true", help="keep work folders")
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs of each workload; rows show the median"
    )
    a = ap.parse_args(argv)
    only = a.only.split(",") if a.only else list(ALL)
    bad = [w for w in only if w not in ALL]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {ALL}")
    out = Path(a.out) if a.out else (Path(a.workdir) if a.quick else HERE.parent / "docs")
    t0 = time.perf_counter()
    runner = Runner(a)
    runner.work.mkdir(parents=True, exist_ok=True)
    lock = open(runner.work / ".compare.lock", "w")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another compare.py is running in {runner.work}; pick another --workdir")
        return 2
    log(f"machine: {machine()}; dsvc {dsvc_rev()}; peers: {runner.versions or 'none'}")
    for w in only:
        if w == "daily":
            runner.daily()
        else:
            runner.workload(w)
    meta = {
        "machine": machine(),
        "tools": ", ".join(
            [f"dsvc {dsvc_rev()}"] + [f"{k} {v}" for k, v in runner.versions.items()]
        ),
        "mode": "quick" if a.quick else "full",
        "duration_s": time.perf_counter() - t0,
        "skipped": runner.skipped,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_avg": {
            "mean": statistics.mean(runner.loads) if runner.loads else None,
            "max": max(runner.loads, default=None),
        },
    }
    md = markdown(runner.results, meta)
    log("\n" + md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark-compare.md").write_text(md)
    (out / "benchmark-compare.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "results": [asdict(r) | {"stored": r.stored} for r in runner.results],
                "ratios": ratios(runner.results),
                "targets": targets(runner.results),
                "reference": [
                    {"workload": w, "step": s, "seconds": v} for (w, s), v in REFERENCE.items()
                ],
            },
            indent=1,
        )
    )
    if chart(runner.results, out / "benchmark-compare.png"):
        log(f"chart: {out / 'benchmark-compare.png'}")
    log(f"wrote {out / 'benchmark-compare.md'} and .json in {meta['duration_s']:.0f} s")
    bad_restore = [r for r in runner.results if r.extra.get("verified") is False]
    return 1 if bad_restore else 0


if __name__ == "__main__":
    sys.exit(main())
