"""The scale and streaming benchmarks' ``--quick`` modes, as tests of the harnesses.

No timing is asserted: the harness must produce every row, with sane values (positive
times, an RSS, counts that match what the steps did), so the full runs documented in
docs/performance.md keep working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK_FILES = 2_000  # bench_scale.py --quick


def _run(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DSVC_HOME", None)
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / script),
            "--quick",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| row |" in p.stdout or "| remote |" in p.stdout  # the markdown table
    return json.loads(out.read_text())


def test_bench_scale_quick_has_every_row(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_scale
    finally:
        sys.path.pop(0)
    got = _run("bench_scale.py", tmp_path)
    results, skipped = got["results"], got["skipped"]
    for row in bench_scale.ROW_NAMES:
        assert row in results or row in skipped, f"row {row} missing"
        assert f"| {row} |" in got["table"]
    # only the peer (restic) rows may be skipped (when restic is absent), and the S3 rows
    # of the versions benchmark, which --quick leaves out
    assert set(skipped) <= {
        "ingest_restic",
        "small_restic",
        "versions_s3_first_get",
        "versions_s3_next_get",
    }
    for row, r in results.items():
        assert r["wall_s"] > 0 and r["maxrss"] > 1_000_000, row
        assert r["write_bytes"] >= 0, row
        assert r["majflt"] >= 0, row  # reported next to each wall time
        if "call_s" in r:
            assert 0 < r["call_s"] <= r["wall_s"], row
    assert results["add"]["changed"] == QUICK_FILES
    assert results["sync_unchanged"]["changed"] == 0
    assert results["sync_1pct"]["changed"] == QUICK_FILES // 100
    assert results["diff"]["modified"] == QUICK_FILES // 100
    assert results["diff"]["added"] == results["diff"]["removed"] == 0
    assert results["add_unchanged"]["changed"] == 0
    # the stored data of an incompressible ingest is at least what was ingested
    ing = results["ingest_dsvc"]
    assert ing["store_bytes"] >= ing["data_bytes"] > 0
    assert ing["write_bytes"] >= ing["data_bytes"] * 0.9  # physical writes were counted
    assert results["small_dsvc"]["store_bytes"] > 0
    # both tools of a side-by-side row start with the data read once (page cache warm)
    assert ing["warmed_bytes"] == ing["data_bytes"]
    assert results["small_dsvc"]["warmed_bytes"] == results["small_dsvc"]["data_bytes"]
    # outputs of the local copies are folders under the store's cache
    assert (
        Path(results["local_copy_full"]["path"]).name
        != Path(results["local_copy_child"]["path"]).name
    )


def test_bench_stream_quick_has_every_row(tmp_path: Path) -> None:
    got = _run("bench_stream.py", tmp_path)
    folder = got["results"]["folder"]
    for row in (
        "one_1MiB",
        "random_4KiB",
        "stream_all",
        "second_pass",
        "local_copy",
        "dataset_open",
        "local_stream_all",
    ):
        assert row in folder, row
    assert folder["one_1MiB"]["bytes"] == 1 << 20
    assert folder["stream_all"]["bytes"] == folder["local_copy"]["bytes"] > 0
    assert folder["second_pass"]["requests"] == 0  # served from the local store
    assert folder["random_4KiB"]["max_chunks"] >= 1


def test_the_file_floor_creates_what_a_copy_creates(tmp_path: Path) -> None:
    """bench_file_floor.py's ``native`` mode (the full copy's floor) writes every file
    through dsvc's own batch, read-only and dated, and reports the run."""
    for mode in ("native", "0"):
        root = tmp_path / mode
        p = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_file_floor.py"), "300", "3", "2"]
            + [mode, str(root)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        row = json.loads(p.stdout.strip().splitlines()[-1])
        assert row["n"] == 300 and row["mode"] == mode and row["wall_s"] >= 0
        files = sorted((root / "copy").glob("d*/f*.bin"))
        assert len(files) == 300
        assert all(160 <= f.stat().st_size <= 800 and not f.stat().st_mode & 0o222 for f in files)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_file_floor.py"), "3", "1", "1"]
        + ["2", str(tmp_path / "bad")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode != 0 and "MODE is 0, 1 or native" in bad.stderr
