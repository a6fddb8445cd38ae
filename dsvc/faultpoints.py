"""Fault points: named places (each LMDB commit, each remote write) where a test can
kill the process, to prove that a crash at any of them loses nothing.

Off unless ``DSVC_FAULT_POINTS`` is set when dsvc is imported; call sites test the
module constant :data:`ENABLED` first, so a disabled hook costs one attribute read::

    if faultpoints.ENABLED:
        faultpoints.hit("lmdb.commit", "before", "chunks,objects")

``DSVC_FAULT_POINTS`` is one of

* ``count``: go on, only count the points;
* ``kill:N``: SIGKILL this process at the N-th point reached (1-based), as a power
  cut or an OOM kill would: no ``finally``, no atexit, no buffered output.

With ``DSVC_FAULT_LOG=FILE`` each point reached is appended to FILE first, one line
``N<TAB>kind<TAB>phase<TAB>label``: a test enumerates the points of a workload with
``count``, then checks that a ``kill:N`` run died at the point it meant.

Points are counted per process, in the order they are reached; a workload that runs
threads must be deterministic in that order for ``kill:N`` to name the same point as
``count``. (Ingest writes from one writer thread; pushes upload packs in parallel,
so tests enumerate their points with one upload worker.)
"""

from __future__ import annotations

import os
import signal
import threading

_SPEC = os.environ.get("DSVC_FAULT_POINTS", "")
#: True when a test asked for fault points (read once, at import)
ENABLED = bool(_SPEC)

_lock = threading.Lock()
_count = 0
_log = os.environ.get("DSVC_FAULT_LOG", "")
_mode, _, _arg = _SPEC.partition(":")
_kill_at = int(_arg) if _mode == "kill" and _arg.isdigit() else 0


def hit(kind: str, phase: str, label: str = "") -> None:
    """Reach a fault point: count it, or die here if it is the one chosen.

    ``kind`` is what happens (``lmdb.commit``, ``remote.put``...), ``phase`` is
    ``before`` or ``after`` it, ``label`` says to what (databases, key prefix)."""
    global _count
    with _lock:
        _count += 1
        n = _count
        if _log:
            with open(_log, "a", encoding="utf-8") as f:
                f.write(f"{n}\t{kind}\t{phase}\t{label}\n")
    if n == _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
