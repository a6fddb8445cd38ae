"""Dataset-layer benchmark: squash, incremental local copies, sync of unchanged folders.

Usage::

    .venv/bin/python benchmarks/bench_dataset.py [--quick] [--files N] [--workdir DIR]
        [--json out.json] [--keep-data] [--copy-only]

Rows (targets from the dataset issue, 2-core machine):

* ``squash``: ``Dataset.squash`` of a lineage of 20 versions over N files (each version
  changes 1% of the files) -- target <= 2 s at N = 100,000. Squash writes trees and a
  commit only, so it scales with the tree entries that differ, not with the bytes.
* ``local_copy``: ``get_local_copy`` of a version whose parent is already materialized
  (1% of the files changed) against a full materialization of the parent with a cold
  content cache -- target <= 10% of the time and <= 2% extra disk (hard links from the
  content cache; disk measured like ``du``: each inode once, plus directory blocks).
* ``sync_unchanged``: ``sync_folder`` of N files none of which changed (stat cache) --
  target <= 3 s at N = 100,000.
* ``local_copy_second_call``: ``get_local_copy`` of a version whose cached copy exists:
  every file is checked against the copy's manifest (one ``lstat`` each; changed files
  would be repaired from the store) -- target <= 1 s at N = 100,000. ``--copy-only``
  runs just this (and the full copy before it), without the lineage and squash rows.

``--quick`` runs N = 10,000 (< 30 s with data generation). Every run uses a fresh
``DSVC_HOME``; the generated source folder is cached under ``--workdir`` between runs.
Numbers are wall-clock seconds of one run with a warm page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LINEAGE = 20
CHANGED = 0.01
DIRS_PER_LEVEL = 20  # N files in 20 x 20 folders (two levels), like sharded image sets


def _rel(i: int) -> str:
    return f"d{i % DIRS_PER_LEVEL:02d}/e{(i // DIRS_PER_LEVEL) % DIRS_PER_LEVEL:02d}/f{i:06d}.bin"


def _content(i: int, seed: int) -> bytes:
    rng = random.Random(i * 1_000_003 + seed)
    return rng.randbytes(rng.randint(1024, 8 * 1024))


def make_source(root: Path, n: int) -> Path:
    """N files of 1-8 KiB (distinct, incompressible) under ``root``; cached by a stamp."""
    stamp = root.with_name(root.name + ".stamp")
    if stamp.exists() and stamp.read_text() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        p = root / _rel(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_content(i, 0))
    old = time.time() - 3600  # not "racily clean": the stat cache may trust them
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), (old, old))
    stamp.write_text(str(n))
    return root


def make_patch(root: Path, n: int, version: int) -> Path:
    """1% of the N paths with new content (for one lineage step)."""
    rng = random.Random(version)
    picked = rng.sample(range(n), max(1, int(n * CHANGED)))
    shutil.rmtree(root, ignore_errors=True)
    for i in picked:
        p = root / _rel(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_content(i, version))
    return root


def disk_usage(root: Path) -> int:
    """Bytes allocated below ``root``: every inode once (hard links too), folders included."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames, "."):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def _t(fn):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n: int, workdir: Path, keep: bool, copy_only: bool = False) -> dict:
    home = Path(tempfile.mkdtemp(prefix="dsvc-bench-home-", dir=workdir))
    os.environ["DSVC_HOME"] = str(home)
    from dsvc.dataset import Dataset

    results: dict = {"files": n, "lineage": LINEAGE}
    t_gen, src = _t(lambda: make_source(workdir / f"src-{n}", n))
    results["generate_s"] = round(t_gen, 2)
    try:
        base = Dataset.create(dataset_name="bench", dataset_project="bench")
        t_add, added = _t(lambda: base.add_files(src))
        assert added == n, (added, n)
        base.finalize()
        results["add_files_s"] = round(t_add, 2)
        if copy_only:
            t_full, p1 = _t(lambda: base.get_local_copy())
            t_again, p2 = _t(lambda: base.get_local_copy())
            assert p1 == p2
            results["local_copy_full_s"] = round(t_full, 3)
            results["local_copy_second_call_s"] = round(t_again, 4)
            return results

        # -- sync of an unchanged folder (stat cache) --------------------------------
        child = Dataset.create(
            dataset_name="bench", dataset_project="bench", parent_datasets=[base]
        )
        t_sync, counts = _t(lambda: child.sync_folder(src))
        assert counts == (0, 0, 0), counts
        results["sync_unchanged_s"] = round(t_sync, 3)
        Dataset.delete(child.id)

        # -- lineage of 20 versions, each changing 1% --------------------------------
        lineage = [base]
        t0 = time.perf_counter()
        for v in range(1, LINEAGE):
            d = Dataset.create(
                dataset_name="bench", dataset_project="bench", parent_datasets=[lineage[-1]]
            )
            d.add_files(make_patch(workdir / "patch", n, v))
            d.finalize()
            lineage.append(d)
        results["lineage_build_s"] = round(time.perf_counter() - t0, 2)

        t_squash, sq = _t(
            lambda: Dataset.squash("bench-squashed", dataset_ids=[d.id for d in lineage])
        )
        results["squash_s"] = round(t_squash, 3)
        assert sq.list_files() == lineage[-1].list_files()

        # -- local copy: full (cold content cache), then a 1%-changed child ----------
        cache = home / "cache"
        t_full, p1 = _t(lambda: lineage[0].get_local_copy())
        du_full = disk_usage(cache)
        t_incr, p2 = _t(lambda: lineage[1].get_local_copy())
        du_after = disk_usage(cache)
        t_again, p3 = _t(lambda: lineage[1].get_local_copy())
        assert p2 == p3 and p1 != p2
        results["local_copy_full_s"] = round(t_full, 3)
        results["local_copy_incremental_s"] = round(t_incr, 3)
        results["local_copy_incremental_time_ratio"] = round(t_incr / t_full, 4)
        results["local_copy_full_disk_bytes"] = du_full
        results["local_copy_incremental_extra_disk_bytes"] = du_after - du_full
        results["local_copy_incremental_disk_ratio"] = round((du_after - du_full) / du_full, 4)
        results["local_copy_second_call_s"] = round(t_again, 4)
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return results


TARGETS = {
    "squash_s": ("<=", 2.0),
    "sync_unchanged_s": ("<=", 3.0),
    "local_copy_incremental_time_ratio": ("<=", 0.10),
    "local_copy_incremental_disk_ratio": ("<=", 0.02),
    "local_copy_second_call_s": ("<=", 1.0),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 files (< 30 s)")
    ap.add_argument("--files", type=int, default=None, help="number of files (default 100,000)")
    ap.add_argument("--workdir", default=None, help="where data and stores go (default: tmp)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep-data", action="store_true", help="keep the store afterwards")
    ap.add_argument(
        "--copy-only", action="store_true", help="only the full and the second local copy"
    )
    args = ap.parse_args(argv)
    n = args.files or (10_000 if args.quick else 100_000)
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "dsvc-bench-dataset")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(n, workdir, args.keep_data, args.copy_only)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    width = max(len(k) for k in res)
    for k, v in res.items():
        mark = ""
        if k in TARGETS:
            op, lim = TARGETS[k]
            ok = v <= lim
            mark = f"   target {op} {lim}: {'ok' if ok else 'MISSED'}"
            if n < 100_000 and k in ("squash_s", "sync_unchanged_s", "local_copy_second_call_s"):
                mark += " (target is for 100,000 files)"
        print(f"{k:<{width}}  {v}{mark}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
