"""Remotes: object stores that dsvc pushes to and fetches from (see docs/design.md §4)."""

from __future__ import annotations

from typing import Any

__all__ = ["Backend", "ObjectInfo", "ObjectVersion"]


def __getattr__(name: str) -> Any:
    # Lazy: importing obstore costs ~0.3 s, and the command line imports
    # dsvc.remote.options (URL checks) on every start.
    if name in __all__:
        from dsvc.remote import backend

        return getattr(backend, name)
    raise AttributeError(name)
