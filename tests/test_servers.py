"""The test servers die with the test run that started them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import servers

CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import servers
from pathlib import Path
s = servers.Server("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"],
                   0, Path({logs!r}))
print(s.proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_server_dies_when_the_killed_test_run_does(tmp_path: Path) -> None:
    # A test run killed by a timeout (SIGKILL: no fixture teardown) used to leave moto,
    # Azurite and fake-gcs-server running for good, each holding its temp folder.
    code = CHILD.format(tests=str(Path(servers.__file__).parent), logs=str(tmp_path))
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    server_pid = int(run.stdout.readline())
    assert _alive(server_pid)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(server_pid)
    if alive:
        os.kill(server_pid, signal.SIGKILL)
    assert not alive, "the server outlived the process that started it"
