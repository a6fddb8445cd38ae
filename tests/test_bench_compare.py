"""``benchmarks/compare.py --quick`` runs end to end, so the comparison cannot rot.

No timing is asserted (numbers belong in docs/performance.md): the test checks that
every workload and step ran for dsvc, that every restore reproduced the data byte for
byte, and that the Markdown and JSON reports were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = {"add", "re-add", "modify", "push", "restore"}


def test_compare_quick(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare.py"),
            "--quick",
            "--days",
            "5",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    report = json.loads((out / "benchmark-compare.json").read_text())
    rows = [r for r in report["results"] if r["tool"] == "dsvc"]
    for w in ("images", "tabular", "many-small"):
        assert {r["step"] for r in rows if r["workload"] == w} == STEPS, w
    restores = [r for r in rows if r["step"] == "restore"]
    assert restores and all(r["extra"]["verified"] for r in restores)
    daily = [r for r in rows if r["workload"] == "daily"]
    assert daily and daily[0]["extra"]["versions"] >= 5
    assert daily[0]["local_bytes"] < daily[0]["extra"]["raw_snapshot_bytes"]
    for r in rows:
        assert r["wall_s"] > 0 and r["peak_rss"] > 0
    md = (out / "benchmark-compare.md").read_text()
    assert "| images | add | dsvc |" in md
    # the work folders are cleaned up
    assert not any((tmp_path / "work" / w).exists() for w in ("images", "tabular", "many-small"))
