"""The progress display, checked in a real pseudo-terminal (pexpect): a bar is drawn on
stderr while ``dsvc add`` hashes a ~100 MiB file, and ``--quiet`` hides it."""

from __future__ import annotations

import os
import re
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
    # tqdm's bar: "add big.bin:  37%|████      | 37.0M/100M [...]", redrawn with \r (a
    # single file's size is known up front; a folder's bar shows bytes and rate)
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


# -- ls / cat of a version that is only on the remote (issues 14 and 15) ------------------------


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, big_file: Path) -> tuple[Path, str]:
    """``(remote, id)``: a folder remote holding a version (the ~100 MiB file and 2,000
    small files in 200 folders)."""
    root = tmp_path_factory.mktemp("remote-only")
    src, remote = root / "src", root / "remote"
    for i in range(2000):
        p = src / f"d{i % 200:03}" / f"f{i:04}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{i}\n")
    os.link(big_file, src / "big.bin")
    assert _run(root / "a", "create", "--project", "p", "--name", "n")[0] == 0
    assert _run(root / "a", "-q", "add", str(src))[0] == 0
    rc, out = _run(root / "a", "-q", "close")
    assert rc == 0, out
    did = out.strip().split("id=")[-1]
    assert _run(root / "a", "remote", "add", "origin", str(remote), "--init")[0] == 0
    assert _run(root / "a", "-q", "push")[0] == 0
    return remote, did


@pytest.fixture
def remote_only(pushed: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """``(home, id)``: a new store whose default remote holds a version it never saw."""
    remote, did = pushed
    assert _run(tmp_path / "home", "remote", "add", "origin", str(remote))[0] == 0
    return tmp_path / "home", did


def _bar_of(home: Path, shell_cmd: str) -> str:
    """Run ``shell_cmd`` (stdout to /dev/null) with stderr on a terminal; its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env.update(DSVC_HOME=str(home), COLUMNS="100", TERM="xterm", DSVC_PROGRESS_DELAY="0")
    child = pexpect.spawn(
        "/bin/bash", ["-c", shell_cmd], env=env, dimensions=(24, 100), timeout=120, encoding="utf-8"
    )
    out = child.read()
    child.close()
    assert child.exitstatus == 0, out
    return out


def test_cat_of_a_remote_only_version_draws_a_progress_bar(remote_only: tuple[Path, str]) -> None:
    home, did = remote_only
    dsvc = " ".join(DSVC)
    out = _bar_of(home, f"{dsvc} cat {did} big.bin | wc -c")
    # tqdm's bar on stderr ("cat big.bin:  37%|███  | 37.0M/100M"), the bytes on stdout
    assert re.search(r"cat big\.bin:\s+\d+%\|", out), out
    assert str(BIG) in out  # `wc -c`: every byte arrived


def test_ls_of_a_remote_only_version_draws_a_progress_bar(remote_only: tuple[Path, str]) -> None:
    home, did = remote_only
    dsvc = " ".join(DSVC)
    out = _bar_of(home, f"{dsvc} ls -R {did} | wc -l")
    assert re.search(rf"ls {did}: .*entries", out), out
    assert "2201" in out  # 200 folders, 2,000 files and big.bin


def test_quiet_hides_the_ls_bar(remote_only: tuple[Path, str]) -> None:
    home, did = remote_only
    quiet = _bar_of(home, f"{' '.join(DSVC)} -q ls -R {did} | wc -l")
    assert "entries" not in quiet and "2201" in quiet
