"""The progress display, checked in a real pseudo-terminal (pexpect): a bar is drawn on
stderr while ``dsvc add`` hashes a ~100 MiB file, and ``--quiet`` hides it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

_BIN = shutil.which("dsvc", path=str(Path(sys.executable).parent))
DSVC = [_BIN] if _BIN else [sys.executable, "-m", "dsvc"]
BIG = 100 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("pty") / "big.bin"
    block = os.urandom(1 << 20)
    with open(p, "wb") as f:  # distinct 1 MiB blocks so the file really has ~100 MiB of chunks
        for i in range(BIG >> 20):
            f.write(i.to_bytes(8, "little") + block[8:])
    return p


def _spawn(home: Path, *args: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    # the bar waits 1 s before drawing; this machine may add 100 MiB faster than that
    env.update(DSVC_HOME=str(home), COLUMNS="100", TERM="xterm", DSVC_PROGRESS_DELAY="0")
    return pexpect.spawn(
        DSVC[0], [*DSVC[1:], *args], env=env, dimensions=(24, 100), timeout=60, encoding="utf-8"
    )


def _run(home: Path, *args: str) -> tuple[int, str]:
    child = _spawn(home, *args)
    out = child.read()  # until EOF
    child.close()
    return child.exitstatus, out


def test_add_draws_a_progress_bar_in_a_terminal(tmp_path: Path, big_file: Path) -> None:
    home = tmp_path / "home"
    rc, _ = _run(home, "create", "--project", "p", "--name", "n")
    assert rc == 0
    child = _spawn(home, "add", "--files", str(big_file))
    # tqdm's bar: "add big.bin:  37%|████      | 37.0M/100M [...]", redrawn with \r
    child.expect(r"add big\.bin:\s+\d+%\|", timeout=60)
    rest = child.before + child.after + child.read()
    child.close()
    assert child.exitstatus == 0, rest
    assert "\r" in rest and ("M/100M" in rest or "MB" in rest or "/100M" in rest), rest
    assert "1 file added" in rest


def test_quiet_hides_the_bar(tmp_path: Path, big_file: Path) -> None:
    home = tmp_path / "home"
    assert _run(home, "create", "--project", "p", "--name", "n")[0] == 0
    rc, out = _run(home, "--quiet", "add", "--files", str(big_file))
    assert rc == 0, out
    assert "%|" not in out and out.strip() == "1 file added"
