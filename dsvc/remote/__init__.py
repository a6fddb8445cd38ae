"""Remotes: object stores that dsvc pushes to and fetches from (see docs/design.md §4)."""

from dsvc.remote.backend import Backend, ObjectInfo, ObjectVersion

__all__ = ["Backend", "ObjectInfo", "ObjectVersion"]
