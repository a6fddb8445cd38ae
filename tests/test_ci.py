"""CI runs the tests and the linters, and fails when either fails (.ci/run, Makefile)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run_ci(tmp_path: Path, fail: set[str]) -> tuple[int, list[str]]:
    """Run .ci/run with a stand-in `make` on PATH that logs its target and fails on
    the targets in ``fail``; returns the exit status and the targets run."""
    log = tmp_path / "make.log"
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> {log}\n'
        + "".join(f'[ "$1" = {t} ] && exit 3\n' for t in sorted(fail))
        + "exit 0\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    rc = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env).returncode
    return rc, log.read_text().split() if log.exists() else []


@pytest.mark.parametrize(
    "fail, ok", [(set(), True), ({"test"}, False), ({"lint"}, False), ({"test", "lint"}, False)]
)
def test_ci_runs_tests_and_lint_and_fails_if_either_fails(
    tmp_path: Path, fail: set[str], ok: bool
) -> None:
    rc, targets = _run_ci(tmp_path, fail)
    assert targets == ["test", "lint"]  # both run, even after a failing test run
    assert (rc == 0) == ok


def test_make_lint_runs_ruff_and_mypy() -> None:
    make = (REPO / "Makefile").read_text()
    recipe = make.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check dsvc tests benchmarks" in recipe
    assert "-m mypy" in recipe


def test_mypy_config_is_at_least_the_chosen_strictness() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    mypy = cfg["tool"]["mypy"]
    assert mypy["files"] == ["dsvc"]
    for flag in ("check_untyped_defs", "disallow_incomplete_defs", "warn_unused_ignores"):
        assert mypy.get(flag) is True, flag
    assert any(d.startswith("mypy") for d in cfg["project"]["optional-dependencies"]["test"])
