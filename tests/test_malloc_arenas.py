"""The ``dsvc`` command caps glibc's malloc arenas (issue 11): each thread that meets a
locked arena gets one of its own, up to 8 per core, and each keeps the free memory of
its peaks. The first add of 3M tiny files peaked at 292 MiB with the default against
266 MiB with two arenas (1M: 250-260 and 252), so the command, which owns its process,
sets the cap; a library imported by someone else's program does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: threads that malloc at once (through ctypes, which releases the GIL), then the number
#: of arenas glibc reports (malloc_info's <heap> elements)
ARENAS = """
import ctypes, os, sys, tempfile, threading
SETUP
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
go = threading.Barrier(16)
def work():
    go.wait()
    for _ in range(30000):
        libc.free(libc.malloc(2000))
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _arenas(setup: str, env: dict[str, str]) -> int:
    p = subprocess.run(
        [sys.executable, "-c", ARENAS.replace("SETUP", setup)],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=True,
    )
    return int(p.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_capped_arenas_hold_under_contention() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    # the test has teeth: without the cap, contended threads take more than two arenas
    # (glibc's default allows 8 per core)
    assert _arenas("import dsvc, dsvc.cli", env) > 2
    capped = _arenas("from dsvc import libc; assert libc.limit_malloc_arenas(2)", env)
    assert capped <= 2


def test_the_command_sets_the_cap_unless_the_user_chose_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dsvc`` (main) caps the arenas at one per core, at least 2, once a command runs:
    not for ``--help``, ``--version`` or completion, which stay as fast as before
    (issue 12), and not for ``run`` called in another program's process; a user's
    ``MALLOC_ARENA_MAX`` wins; importing the library changes nothing (above)."""
    import dsvc.cli

    calls: list[int] = []
    monkeypatch.setattr(dsvc.cli.core.libc, "limit_malloc_arenas", calls.append)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    for argv in (["--version"], ["--help"]):
        with pytest.raises(SystemExit) as done:
            dsvc.cli.main(argv)
        assert done.value.code == 0
    assert calls == []
    dsvc.cli.run(["list"])  # another program's process
    assert calls == []
    with pytest.raises(SystemExit):
        dsvc.cli.main(["list"])
    assert calls == [max(2, os.cpu_count() or 2)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    with pytest.raises(SystemExit):
        dsvc.cli.main(["list"])
    assert calls == [max(2, os.cpu_count() or 2)]  # not called again
