"""The one compare-and-swap retry loop (issue 12): every read-modify-CAS of dsvc (local
records, remote refs, ``meta/<id>``, ``gc/marks``, ``fsck/damaged``) retries through
:func:`cas_retry`, with one budget and one backoff.

Budget and backoff: at most :data:`ATTEMPTS` attempts; after the n-th lost race (n from
0) the loop sleeps a uniformly random time in ``[0, min(MAX_WAIT, FIRST_WAIT * 2**n)]``
("full jitter" exponential backoff: racing writers spread out instead of retrying in
step). The waits add up to about 47 s on average before the budget runs out, far more
than any honest contention needs; then the caller's ``ConflictError`` says to try again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from dsvc.errors import ConflictError

T = TypeVar("T")

#: attempts before giving up
ATTEMPTS = 100
#: the first backoff's upper bound (seconds); it doubles with every lost race
FIRST_WAIT = 0.01
#: the largest backoff (seconds)
MAX_WAIT = 1.0


def backoff(attempt: int) -> float:
    """The wait after lost race number ``attempt`` (0-based)."""
    return random.uniform(0, min(MAX_WAIT, FIRST_WAIT * 2 ** min(attempt, 32)))


def cas_retry(attempt: Callable[[], T], contended: str) -> T:
    """Run ``attempt`` (read, change, compare-and-swap; it raises ConflictError when it
    lost the race) until it returns, within the budget; then raise ConflictError with
    the message ``contended`` (what is contended, and what to do)."""
    for n in range(ATTEMPTS):
        try:
            return attempt()
        except ConflictError:
            if n + 1 < ATTEMPTS:
                time.sleep(backoff(n))
    raise ConflictError(contended)
