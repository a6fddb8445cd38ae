"""Functions of the C library that Python's ``os`` module lacks, resolved on first use.

Each one either moves the disk's work earlier (``sync_file_range``) or gives memory or
disk space back (``madvise``, ``malloc_trim``, ``fallocate``'s hole punching): none is
needed for correctness. Where the platform lacks one, :func:`function` returns None and
the caller goes on without it. ``ctypes`` is imported only on the first lookup, since
the modules that use this load at every CLI start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_cache: dict[tuple[str, ...], Any] = {}
_lock = threading.Lock()


def function(name: str, *argtypes: str) -> Callable[..., int] | None:
    """The C library's function ``name`` taking arguments of the named ``ctypes`` types
    (``"c_int"``, ``"c_size_t"``, ...), or None where the C library lacks it. The result
    is cached; ``ctypes.get_errno()`` gives the errno of its last failed call."""
    key = (name, *argtypes)
    try:
        return _cache[key]
    except KeyError:
        pass
    with _lock:
        if key not in _cache:
            _cache[key] = _resolve(name, argtypes)
        return _cache[key]


def _resolve(name: str, argtypes: tuple[str, ...]) -> Callable[..., int] | None:
    try:
        import ctypes

        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
        fn.argtypes = [getattr(ctypes, t) for t in argtypes]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


#: glibc's ``mallopt`` parameter for the most malloc arenas (malloc.h: M_ARENA_MAX)
_M_ARENA_MAX = -8


def limit_malloc_arenas(most: int) -> bool:
    """Let glibc's malloc create at most ``most`` arenas from now on (``mallopt``);
    False where the C library has no such setting. Process-wide: only a program that
    owns its process may call it (the ``dsvc`` command does, ``dsvc.cli.main``)."""
    mallopt = function("mallopt", "c_int", "c_int")
    return mallopt is not None and mallopt(_M_ARENA_MAX, most) == 1
