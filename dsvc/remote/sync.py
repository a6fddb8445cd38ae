"""Push and fetch of datasets through a remote (placeholder until the transport lands)."""

from __future__ import annotations

import os
from typing import Any

from dsvc.errors import ConfigError
from dsvc.store import Store


def resolve(store: Store, spec: str | None, *, required: bool = False) -> Any:
    """The remote named or addressed by ``spec`` (None: the default), or None."""
    spec = spec or os.environ.get("DSVC_REMOTE") or store.get_config("default_remote")
    if not spec:
        return None
    raise ConfigError(f"remote {spec!r}: remotes are not available yet")
