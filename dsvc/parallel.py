"""Thread-pool sizing and byte-balanced work groups (shared by ingest and checkout).

Both pipelines hand many files to a thread pool. Per-task overhead dominates for small
files, so files are grouped into tasks of a few MiB or a few hundred files, whichever
comes first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def default_workers() -> int:
    """Threads for file work: reading, hashing, compressing, creating files and copying
    bytes release the GIL, so a few threads beyond the cores keep the disk busy."""
    return min(32, (os.cpu_count() or 1) + 2)


def group_by_bytes(
    items: Iterable[T], size: Callable[[T], int], max_bytes: int, max_items: int
) -> Iterator[list[T]]:
    """Consecutive runs of ``items``, each closed once it holds ``max_bytes`` bytes (by
    ``size``) or ``max_items`` items; order is kept."""
    cur: list[T] = []
    cur_bytes = 0
    for it in items:
        cur.append(it)
        cur_bytes += size(it)
        if cur_bytes >= max_bytes or len(cur) >= max_items:
            yield cur
            cur, cur_bytes = [], 0
    if cur:
        yield cur
