"""Scale benchmark (issue 11): a million files, thousands of versions, write amplification.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_scale.py [--files N] [--folder-files K] [--quick]
        [--json out.json] [--workdir DIR] [--keep-data] [--only ROW,ROW] [--restic PATH]
    .venv/bin/python benchmarks/bench_scale.py compare run1.json run2.json  # side by side

Every step runs in its own child process through the public ``Dataset`` API, under a
small wrapper (``bench_scale.py measure``) that reads the child's rusage with ``wait4``.
For each row the table gives:

* ``wall s``: the child's whole run (interpreter start included: what a user waits);
  ``call s``: the timed API calls alone, measured inside the child;
* ``peak RSS``: ``ru_maxrss`` of the child (``/usr/bin/time -v`` "Maximum resident set
  size"), which counts pages of the LMDB map the process touched;
* ``write MB``: physical bytes the child sent to the storage layer, ``write_bytes`` of
  ``/proc/self/io`` read by the child at its end (the same count as ``ru_oublock`` x 512,
  ``/usr/bin/time -v`` "File system outputs"); ``cancelled_write_bytes`` is subtracted.

Rows (targets from issue 11):

==================  =====================================================  ==========
row                 what                                                   target
==================  =====================================================  ==========
add                 first ``add_files`` + ``finalize`` of N tiny files      RSS <= 400 MB
sync_unchanged      child version, ``sync_folder`` nothing changed          <= 3 s
sync_1pct           child version after rewriting 1% of the files           <= 5 s
diff                ``Dataset.get(project, name)`` + ``list_modified/added/  <= 0.5 s
                    removed_files``
local_copy_full     ``get_local_copy()`` of the latest version (cold)       <= 40 s
local_copy_child    ``get_local_copy()`` of a child (1% changed) whose      O(change)
                    parent is materialized
squash              ``Dataset.squash`` of the 3 versions                    <= 1 s
add_unchanged       ``add_files`` of the unchanged folder into a child      <= 3 s
versions_*          10,000 versions (benchmarks/bench_versions.py):         <= 0.3 s each
                    ``create`` / ``get`` / version bump; on S3 (moto) a     <= 10 s,
                    fresh store's first ``get`` and the next ones           <= 1 s
ingest_2.5GB        2.5 GB incompressible: physical writes / bytes stored;  <= 1.2x,
                    rate vs restic side by side                             >= 2x restic
small_100k          100,000 files of 1-4 KiB: store size vs restic repo     <= 1.2x restic
==================  =====================================================  ==========

Every RSS row has the target <= 400 MB. The tiny-files dataset is N files of 160-800
bytes in folders of ``--folder-files`` (1,000: 1,000 x 1,000 at N = 1,000,000, the
issue's shape; ``datagen.tiny_files``). Keeping the folder size fixed as N grows is what
tests the "flat from 1M to 3M" memory target: memory may grow with the largest folder.
``--quick`` shrinks everything (N = 2,000, 200 versions, 20 MB ingest, 2,000 small
files) and runs in seconds: CI runs it as a test of the harness
(tests/test_bench_scale.py), never as a timing test.

restic is used when found (``--restic`` or on PATH; ``apt-get install restic``); its rows
say "skipped" otherwise. The page cache is synced (``sync``) before every step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import datagen  # noqa: E402

PROJECT = "scale"
NAME = "tiny"
MB = 1_000_000
RSS_TARGET = 400 * MB
STEP_TIMEOUT = 3 * 3600
RESTIC_PASSWORD = "dsvc-bench"  # a throw-away repository's password, not a secret

# (row, what, target text, check(result) -> bool | None); None = informational
ROWS: list[tuple[str, str, str]] = [
    ("add", "first `add_files` + `finalize`", "peak RSS <= 400 MB"),
    ("sync_unchanged", "child, `sync_folder`, nothing changed, `finalize`", "<= 3 s"),
    ("sync_1pct", "child, `sync_folder` after rewriting 1%, `finalize`", "<= 5 s"),
    ("diff", "`Dataset.get(project, name)` + `list_modified/added/removed_files`", "<= 0.5 s"),
    ("local_copy_full", "`get_local_copy()` of the latest version", "<= 40 s"),
    ("sync_1pct_again", "child (1% rewritten again), `sync_folder`, `finalize`", "<= 5 s"),
    ("local_copy_child", "`get_local_copy()` of that child, parent materialized", "O(change)"),
    ("squash", "`Dataset.squash` of the 3 versions", "<= 1 s"),
    ("add_unchanged", "child, `add_files` of the unchanged folder, `finalize`", "<= 3 s"),
    ("versions_populate", "write the versions (setup; one process for every versions row)", "-"),
    ("versions_create", "`Dataset.create` with the versions in the store", "<= 0.3 s"),
    ("versions_get", "`Dataset.get(project, name)` with the versions in the store", "<= 0.3 s"),
    ("versions_bump", "next version (`create`, version bumped)", "<= 0.3 s"),
    ("versions_s3_first_get", "S3 (moto): a fresh store's first `Dataset.get`", "<= 10 s"),
    ("versions_s3_next_get", "S3 (moto): the next `Dataset.get` (slowest of 3)", "<= 1 s"),
    ("ingest_dsvc", "incompressible ingest: dsvc `add_files` + `finalize`", "writes <= 1.2x"),
    ("ingest_restic", "incompressible ingest: `restic backup` (same data)", "dsvc >= 2x rate"),
    ("small_dsvc", "small files 1-4 KiB: dsvc store size", "<= 1.2x restic"),
    ("small_restic", "small files 1-4 KiB: restic repository size", "-"),
]
ROW_NAMES = [r[0] for r in ROWS]


# -- the measuring wrapper ------------------------------------------------------------


def _io() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k.strip()] = int(v)
    return out


def _measure_main(report: str, cmd: list[str]) -> int:
    """``bench_scale.py measure REPORT -- CMD...``: run CMD; write its wall time and
    rusage. A fresh wrapper process, because Linux carries the RSS high-water mark of
    an exec'ing process over to the new program (a child of the big orchestrator would
    report at least the orchestrator's peak)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    with open(report, "w") as f:
        json.dump(
            {
                "wall_s": wall,
                "maxrss": ru.ru_maxrss * 1024,
                "oublock_bytes": ru.ru_oublock * 512,
                "user_s": ru.ru_utime,
                "sys_s": ru.ru_stime,
                # pages read back from disk: on a VM whose host reclaims the guest's page
                # cache, the same step can take 0 or 20,000 of them; a wall time means
                # little without this count next to it
                "majflt": ru.ru_majflt,
                "exit": code,
            },
            f,
        )
    return code


def settle_disk(path: Path, most: float = 60.0) -> float:
    """Wait until the disk holding ``path`` has been idle for a second (Linux; at most
    ``most`` seconds); returns the seconds waited.

    A file system mounted with ``discard`` (this VM's) trims the blocks of deleted files:
    after ``rm`` of a 2.5 GB store the disk stayed 100% busy for ~2 s (``io_ticks``),
    which a step started then would share. Each step starts on a quiet disk instead,
    whatever ran before it."""
    try:
        dev = os.stat(path).st_dev
        stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
        busy = int(stat.read_text().split()[9])  # io_ticks: ms the disk was busy
    except (OSError, IndexError, ValueError):
        return 0.0
    t = time.perf_counter()
    while time.perf_counter() - t < most:
        time.sleep(1.0)
        now = int(stat.read_text().split()[9])
        if now - busy < 20:
            break
        busy = now
    return time.perf_counter() - t


def run(
    cmd: list[str], env: dict[str, str], nice: int = 0, settle: Path | None = None
) -> dict[str, Any]:
    """Run ``cmd`` under the wrapper; its measurements plus the JSON it printed last.
    ``settle``: first wait for the disk holding this path to go quiet (settle_disk)."""
    os.sync()  # each step starts with the page cache written back
    settled = settle_disk(settle) if settle is not None else 0.0
    fd, report = tempfile.mkstemp(prefix="scale-measure-", suffix=".json")
    os.close(fd)
    try:
        p = subprocess.run(
            [sys.executable, "-S", __file__, "measure", report, "--", *map(str, cmd)],
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        with open(report) as f:
            got = json.loads(f.read() or "{}")
    finally:
        os.unlink(report)
    if p.returncode != 0 or "wall_s" not in got:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-4000:]}"
        )
    # a step prints its facts as one JSON line, last (other programs print what they like)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{") and ln.endswith("}")]
    if lines:
        got.update(json.loads(lines[-1]))
    # physical writes: the child's own count (at its end) when it reported one
    if "write_bytes" not in got:
        got["write_bytes"] = got["oublock_bytes"]
    got["settle_s"] = round(settled, 2)
    return got


# -- the steps, each in its own process ----------------------------------------------


def _step_main(argv: list[str]) -> None:
    """``bench_scale.py step NAME ARGS...`` with DSVC_HOME set: one step; prints a JSON
    line with ``call_s`` (the API calls alone) and the step's own facts."""
    from dsvc.dataset import Dataset

    step, *args = argv
    out: dict[str, Any] = {}
    t = time.perf_counter()
    if step in ("add", "ingest"):
        ds = Dataset.create(dataset_name=args[1], dataset_project=PROJECT)
        out["changed"] = ds.add_files(args[0])
        ds.finalize()
        out["id"] = ds.id
    elif step in ("sync", "add_child"):
        parent = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
        ds = Dataset.create(parent_datasets=[parent.id])
        if step == "sync":
            out["changed"] = sum(ds.sync_folder(args[0]))
        else:
            out["changed"] = ds.add_files(args[0])
        ds.finalize()
        out["id"] = ds.id
    elif step == "diff":
        ds = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
        out["get_s"] = time.perf_counter() - t
        out["modified"] = len(ds.list_modified_files())
        out["added"] = len(ds.list_added_files())
        out["removed"] = len(ds.list_removed_files())
    elif step == "local_copy":
        ds = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
        path = ds.get_local_copy()
        out["path"] = path
    elif step == "squash":
        ids = json.loads(args[0])
        ds = Dataset.squash(dataset_name=NAME + "-squashed", dataset_ids=ids)
        out["id"] = ds.id
    elif step == "populate":
        n = int(args[0])
        last = None
        marks = {}
        for i in range(n):
            ds = Dataset.create(
                dataset_name="v", dataset_project=PROJECT, parent_datasets=[last] if last else None
            )
            ds.finalize()
            last = ds.id
            if (i + 1) in (1, 10, 100, 1000, 10000):
                marks[str(i + 1)] = round(time.perf_counter() - t, 3)
        out["marks_s"] = marks
    elif step == "vcreate":
        ds = Dataset.create(dataset_name="v", dataset_project=PROJECT)
        out["version"] = ds.version
    elif step == "vget":
        ds = Dataset.get(dataset_project=PROJECT, dataset_name="v")
        out["version"] = ds.version
    elif step == "vbump":
        parent = Dataset.get(dataset_project=PROJECT, dataset_name="v")
        out["get_s"] = time.perf_counter() - t
        ds = Dataset.create(parent_datasets=[parent.id])
        ds.finalize()
        out["version"] = ds.version
    else:
        raise SystemExit(f"unknown step {step!r}")
    out["call_s"] = time.perf_counter() - t
    io = _io()
    out["write_bytes"] = io["write_bytes"] - io.get("cancelled_write_bytes", 0)
    out["wchar"] = io["wchar"]
    print(json.dumps(out))


# -- orchestration --------------------------------------------------------------------


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(a.workdir)
        #: where a measured step waits for a quiet disk first (not in --quick: a test
        #: of the harness, whose steps last a second)
        self.settle = None if a.quick else self.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self.restic = a.restic or shutil.which("restic")

    def env(self, home: Path) -> dict[str, str]:
        e = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(HERE.parent)}
        e.pop("DSVC_REMOTE", None)
        return e

    def step(self, row: str, home: Path, *args: Any) -> dict[str, Any]:
        r = run(
            [sys.executable, __file__, "step", *map(str, args)], self.env(home), settle=self.settle
        )
        self.results[row] = r
        self.save()
        print(f"  {row}: {r['wall_s']:.2f} s, {r['maxrss'] / MB:.0f} MB", file=sys.stderr)
        return r

    def save(self) -> None:
        """Write what is measured so far to ``--json`` (a long run that is stopped keeps
        its finished rows)."""
        if self.a.json:
            with open(self.a.json, "w") as f:
                json.dump(
                    {"args": vars(self.a), "results": self.results, "skipped": self.skipped},
                    f,
                    indent=1,
                )

    def want(self, row: str) -> bool:
        return not self.a.only or any(row.startswith(o) for o in self.a.only)

    def fresh(self, name: str) -> Path:
        p = self.work / name
        if p.exists():
            shutil.rmtree(p)
        return p

    # the million-file lineage
    def scale(self) -> None:
        n = self.a.files
        folders = max(1, -(-n // self.a.folder_files))
        data = self.work / f"tiny-{n}"
        t = time.perf_counter()
        datagen.cached(
            data,
            {"n": n, "folders": folders, "seed": 1},
            lambda root: datagen.tiny_files(root, n, folders, 1),
        )
        print(f"data {data}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
        home = self.fresh("home-scale")
        try:
            self._scale(home, data, n)
        finally:
            # the data folder is rewritten by the 1% rows: regenerate next time
            stamp = data.parent / f".{data.name}.stamp"
            if stamp.exists():
                stamp.unlink()
            if not self.a.keep_data:
                # slow: a million files and two local copies (minutes on a busy disk)
                shutil.rmtree(data, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)

    def _scale(self, home: Path, data: Path, n: int) -> None:
        ids = [self.step("add", home, "add", data, NAME)["id"]]
        self.results["add"]["files"] = n
        self.results["add"]["data_bytes"] = datagen_bytes(data)
        ids.append(self.step("sync_unchanged", home, "sync", data)["id"])
        files = datagen.list_files(data)
        datagen.modify_files(files, 0.01, seed=2)
        ids.append(self.step("sync_1pct", home, "sync", data)["id"])
        self.step("diff", home, "diff")
        self.step("local_copy_full", home, "local_copy")
        datagen.modify_files(files, 0.01, seed=3)
        del files
        self.step("sync_1pct_again", home, "sync", data)
        self.step("local_copy_child", home, "local_copy")
        self.step("squash", home, "squash", json.dumps(ids))
        self.step("add_unchanged", home, "add_child", data)

    def versions(self) -> None:
        n = self.a.versions
        if (HERE / "bench_versions.py").exists():
            self.versions_bench(n)
            return
        # without benchmarks/bench_versions.py: populate through the API (slow: O(n^2)
        # where every create reads every record)
        home = self.fresh("home-versions")
        try:
            r = self.step("versions_populate", home, "populate", n)
            r["versions"] = n
            self.step("versions_get", home, "vget")
            self.step("versions_bump", home, "vbump")
            # last: it leaves a draft, which `get` would then return
            self.step("versions_create", home, "vcreate")
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def versions_bench(self, n: int) -> None:
        """benchmarks/bench_versions.py in one child process: ``n`` versions written
        through the registry, then create / get / bump timed in the process (the call,
        not the interpreter's start); the S3 rows on moto unless ``--quick``."""
        out = self.work / "versions.json"
        cmd = [sys.executable, str(HERE / "bench_versions.py"), "--versions", str(n)]
        cmd += ["--json", str(out), "--workdir", str(self.work)]
        if self.a.quick:
            cmd.append("--no-s3")
        r = run(cmd, self.env(self.work / "home-versions-unused"), settle=self.settle)
        got = json.loads(out.read_text())
        out.unlink()
        loc = got["local"]
        common = {k: r[k] for k in ("wall_s", "maxrss", "write_bytes", "majflt")}
        self.results["versions_populate"] = {
            **common,
            "call_s": loc["setup_s"],
            "versions": n,
            "how": "records written through the registry",
        }
        self.results["versions_create"] = {**common, "call_s": loc["create_explicit_version_s"]}
        self.results["versions_get"] = {**common, "call_s": loc["get_s"]}
        self.results["versions_bump"] = {**common, "call_s": loc["create_bump_s"]}
        if "s3" in got:
            s3 = got["s3"]
            self.results["versions_s3_first_get"] = {**common, "call_s": s3["first_get_s"]}
            self.results["versions_s3_next_get"] = {**common, "call_s": max(s3["next_get_s"])}
        else:
            for row in ("versions_s3_first_get", "versions_s3_next_get"):
                self.skipped[row] = "--quick: local store only"
        self.save()
        print(f"  versions: {r['wall_s']:.1f} s", file=sys.stderr)

    def ingest(self) -> None:
        size = self.a.ingest_bytes
        nfiles = 10
        data = self.work / f"random-{size}"
        datagen.cached(
            data,
            {"size": size, "n": nfiles, "seed": 7},
            lambda root: datagen.random_files(root, [size // nfiles] * nfiles, seed=7),
        )
        stored = datagen_bytes(data)
        warmed = warm(data)
        home = self.fresh("home-ingest")
        try:
            r = self.step("ingest_dsvc", home, "ingest", data, "random")
            r["data_bytes"] = stored
            r["warmed_bytes"] = warmed
            r["store_bytes"] = du(home)
            r["amplification"] = r["write_bytes"] / stored
            r["rate_MBps"] = stored / MB / r["wall_s"]
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if not self.restic:
            self.skipped["ingest_restic"] = "no restic (apt-get install restic; --restic PATH)"
        else:
            repo = self.fresh("restic-ingest")
            try:
                r = self.restic_backup("ingest_restic", repo, data)
                r["data_bytes"] = stored
                r["amplification"] = r["write_bytes"] / stored
                r["rate_MBps"] = stored / MB / r["wall_s"]
                self.results["ingest_dsvc"]["vs_restic_rate"] = (
                    self.results["ingest_dsvc"]["rate_MBps"] / r["rate_MBps"]
                )
            finally:
                shutil.rmtree(repo, ignore_errors=True)
        self.save()
        if not self.a.keep_data:
            shutil.rmtree(data, ignore_errors=True)

    def small(self) -> None:
        n = self.a.small
        data = self.work / f"small-{n}"
        datagen.cached(
            data,
            {"n": n, "folders": 100, "seed": 3},
            lambda root: datagen.small_files(root, n, 100, seed=3),
        )
        warmed = warm(data)
        home = self.fresh("home-small")
        try:
            r = self.step("small_dsvc", home, "ingest", data, "small")
            r["data_bytes"] = datagen_bytes(data)
            r["warmed_bytes"] = warmed
            r["store_bytes"] = du(home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if not self.restic:
            self.skipped["small_restic"] = "no restic (apt-get install restic; --restic PATH)"
        else:
            repo = self.fresh("restic-small")
            try:
                r = self.restic_backup("small_restic", repo, data)
                r["data_bytes"] = datagen_bytes(data)
                r["store_bytes"] = du(repo)
                self.results["small_dsvc"]["vs_restic_size"] = (
                    self.results["small_dsvc"]["store_bytes"] / r["store_bytes"]
                )
            finally:
                shutil.rmtree(repo, ignore_errors=True)
        if not self.a.keep_data:
            shutil.rmtree(data, ignore_errors=True)

    def restic_backup(self, row: str, repo: Path, data: Path) -> dict[str, Any]:
        env = {
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_CACHE_DIR": str(repo) + "-cache",
        }
        assert self.restic
        subprocess.run(
            [self.restic, "-r", str(repo), "init", "--repository-version", "2"],
            env=env,
            check=True,
            capture_output=True,
        )
        r = run(
            [self.restic, "-r", str(repo), "backup", "--quiet", "--host", "bench", str(data)],
            env,
            settle=self.settle,
        )
        shutil.rmtree(str(repo) + "-cache", ignore_errors=True)
        self.results[row] = r
        print(f"  {row}: {r['wall_s']:.2f} s", file=sys.stderr)
        return r

    def run_all(self) -> None:
        if any(self.want(r) for r in ROW_NAMES[:9]):
            self.scale()
        if self.want("versions"):
            self.versions()
        if self.want("ingest"):
            self.ingest()
        if self.want("small"):
            self.small()


def warm(folder: Path) -> int:
    """Read every file under ``folder`` once, so that the tools compared side by side
    all start with the data in the page cache: the one that runs first would otherwise
    pay the cold read alone (the 2.5 GB row: dsvc 20.0 s cold, 9.1 s warm, on a VM whose
    host had reclaimed the cache). Returns the bytes read."""
    buf = bytearray(1 << 20)
    total = 0
    for path in datagen.list_files(folder):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def datagen_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in datagen.list_files(folder))


def du(path: Path) -> int:
    """Apparent bytes below ``path`` (``du -sb``)."""
    total = 0
    for d, _, names in os.walk(path):
        for n in names:
            total += os.lstat(os.path.join(d, n)).st_size
    return total


# -- the table ------------------------------------------------------------------------


def verdict(row: str, r: dict[str, Any]) -> str:
    """pass/miss against the issue's target (and the RSS target on every row)."""
    rss_ok = r["maxrss"] <= RSS_TARGET
    limits = {
        "sync_unchanged": 3.0,
        "sync_1pct": 5.0,
        "sync_1pct_again": 5.0,
        "diff": 0.5,
        "local_copy_full": 40.0,
        "squash": 1.0,
        "add_unchanged": 3.0,
        "versions_create": 0.3,
        "versions_get": 0.3,
        "versions_bump": 0.3,
        "versions_s3_first_get": 10.0,
        "versions_s3_next_get": 1.0,
    }
    ok = rss_ok
    if row in limits:
        ok = ok and r["call_s"] <= limits[row]
    if row == "ingest_dsvc":
        ok = r["amplification"] <= 1.2 and r.get("vs_restic_rate", 0) >= 2.0
    if row == "small_dsvc":
        ok = r.get("vs_restic_size", 99) <= 1.2
    if row in ("ingest_restic", "small_restic", "versions_populate"):
        return "-"
    return "pass" if ok else "miss"


def note(row: str, r: dict[str, Any]) -> str:
    bits = []
    for k in ("changed", "modified", "added", "removed"):
        if k in r:
            bits.append(f"{k} {r[k]:,}")
    if "amplification" in r:
        bits.append(f"writes {r['amplification']:.2f}x stored, {r['rate_MBps']:.0f} MB/s")
    if "vs_restic_rate" in r:
        bits.append(f"{r['vs_restic_rate']:.2f}x restic's rate")
    if "store_bytes" in r:
        bits.append(f"store {r['store_bytes'] / MB:,.1f} MB of {r['data_bytes'] / MB:,.1f} MB")
    if "vs_restic_size" in r:
        bits.append(f"{r['vs_restic_size']:.2f}x restic's repo")
    if "marks_s" in r:
        bits.append("cumulative s at " + ", ".join(f"{k}: {v}" for k, v in r["marks_s"].items()))
    if "get_s" in r:
        bits.append(f"get {r['get_s']:.2f} s")
    if r.get("majflt"):
        bits.append(f"{r['majflt']:,} major faults")
    return "; ".join(bits)


def table(results: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    out = [
        "| row | step | target | wall s | call s | peak RSS MB | write MB | result | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, what, target in ROWS:
        if row in results:
            r = results[row]
            out.append(
                f"| {row} | {what} | {target} | {r['wall_s']:.2f} | "
                f"{r.get('call_s', r['wall_s']):.2f} | {r['maxrss'] / MB:,.0f} | "
                f"{r['write_bytes'] / MB:,.1f} | {verdict(row, r)} | {note(row, r)} |"
            )
        elif row in skipped:
            out.append(f"| {row} | {what} | {target} | - | - | - | - | skipped | {skipped[row]} |")
    return "\n".join(out)


#: issue 11's measurements ("now": wall s, peak RSS MB) for the side-by-side table
ISSUE_NOW = {
    "add": (39.8, 1234),
    "sync_unchanged": (12.1, 1319),
    "sync_1pct": (18.7, 1675),
    "diff": (4.8, 679),
    "local_copy_full": (99.7, 1016),
    "squash": (5.2, 634),
}


def compare(paths: list[str]) -> str:
    """A markdown table of several ``--json`` runs side by side (call s / RSS MB / write
    MB per run), after issue 11's own numbers."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    head = "| row | target | issue: s / RSS MB |"
    sep = "|---|---|---|"
    for p in paths:
        head += f" {Path(p).stem}: call s (wall) / RSS MB / write MB |"
        sep += "---|"
    out = [head, sep]
    for row, _what, target in ROWS:
        now = ISSUE_NOW.get(row)
        line = f"| {row} | {target} | {f'{now[0]} / {now[1]:,}' if now else '-'} |"
        for run_ in runs:
            r = run_["results"].get(row)
            if r is None:
                line += f" {run_['skipped'].get(row, 'not run')} |"
                continue
            extra = note(row, r)
            wall = f" ({r['wall_s']:.1f})" if "wall_s" in r else ""
            rss = f"{r['maxrss'] / MB:,.0f}" if "maxrss" in r else "-"
            wb = f"{r['write_bytes'] / MB:,.0f}" if "write_bytes" in r else "-"
            line += (
                f" {r.get('call_s', r.get('wall_s', 0)):.2f}{wall} / {rss} / {wb}"
                f"{' — ' + extra if extra and row.startswith(('ingest', 'small')) else ''} |"
            )
        out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        return _measure_main(argv[1], argv[3:])
    if argv[:1] == ["step"]:
        _step_main(argv[1:])
        return 0
    if argv[:1] == ["compare"]:
        print(compare(argv[1:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument(
        "--folder-files",
        type=int,
        default=1_000,
        help="files per folder of the tiny-files dataset (default 1,000)",
    )
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--ingest-bytes", type=int, default=2_500_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a test of the harness")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dsvc-bench-scale"))
    ap.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the generated data and the million-file store (delete them yourself)",
    )
    ap.add_argument("--only", type=lambda s: s.split(","), default=None)
    ap.add_argument("--restic", help="path of the restic executable (default: on PATH)")
    a = ap.parse_args(argv)
    if a.quick:
        a.files, a.versions, a.ingest_bytes, a.small = 2_000, 200, 20_000_000, 2_000
        a.folder_files = 45  # several folders, as at full size
    b = Bench(a)
    load = os.getloadavg()
    t = time.perf_counter()
    b.run_all()
    total = time.perf_counter() - t
    text = table(b.results, b.skipped)
    head = (
        f"files {a.files:,}, versions {a.versions:,}, ingest {a.ingest_bytes / MB:,.0f} MB, "
        f"small {a.small:,}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; total {total:.0f} s"
    )
    print(head)
    print()
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "args": vars(a),
                    "load_start": load,
                    "load_end": os.getloadavg(),
                    "results": b.results,
                    "skipped": b.skipped,
                    "table": text,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
