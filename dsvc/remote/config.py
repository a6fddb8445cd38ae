"""Named remotes, kept in the store's ``config`` database under ``remotes``.

``remotes`` maps a name to ``{"url": ..., "options": {...}}``; ``default_remote`` names
the default. ``DSVC_REMOTE`` (a remote name or a URL) overrides the default.
Options may hold an endpoint or region; credentials belong in the environment (the
usual AWS_*, GOOGLE_*, AZURE_* variables) and are masked whenever options are shown.
"""

from __future__ import annotations

import os
import re
from typing import Any

from dsvc.errors import ConfigError, NotFoundError
from dsvc.store import Store

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRET_RE = re.compile(r"(secret|key|token|password|sas|credential)", re.I)


def _all(store: Store) -> dict[str, dict[str, Any]]:
    return dict(store.get_config("remotes") or {})


def mask_options(options: dict[str, str] | None) -> dict[str, str]:
    """Options with every credential-like value replaced by ``***``."""
    return {k: ("***" if _SECRET_RE.search(k) else v) for k, v in (options or {}).items()}


def add_remote(
    store: Store,
    name: str,
    url: str,
    options: dict[str, str] | None = None,
    make_default: bool = False,
) -> None:
    """Register remote ``name``; the first remote becomes the default."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"remote name {name!r} must be letters, digits, '.', '_' or '-'")
    remotes = _all(store)
    if name in remotes:
        raise ConfigError(f"remote {name!r} already exists; remove it first or pick another name")
    remotes[name] = {"url": url, "options": dict(options or {})}
    store.set_config("remotes", remotes)
    if make_default or not store.get_config("default_remote"):
        store.set_config("default_remote", name)


def remove_remote(store: Store, name: str) -> None:
    remotes = _all(store)
    if name not in remotes:
        raise NotFoundError(f"no remote named {name!r}; see `dsvc remote list`")
    del remotes[name]
    store.set_config("remotes", remotes)
    if store.get_config("default_remote") == name:
        store.set_config("default_remote", next(iter(remotes), None))


def set_default_remote(store: Store, name: str) -> None:
    if name not in _all(store):
        raise NotFoundError(f"no remote named {name!r}; see `dsvc remote list`")
    store.set_config("default_remote", name)


def list_remotes(store: Store) -> list[dict[str, Any]]:
    """``[{name, url, default, options}]`` with credentials masked."""
    default = store.get_config("default_remote")
    return [
        {
            "name": n,
            "url": r["url"],
            "default": n == default,
            "options": mask_options(r.get("options")),
        }
        for n, r in sorted(_all(store).items())
    ]


def lookup(store: Store, spec: str | None) -> tuple[str | None, str, dict[str, str]] | None:
    """``(name, url, options)`` for a remote name or URL; None: the default (or none).

    Resolution: ``spec`` if given, else ``DSVC_REMOTE``, else the configured default.
    A spec that names no remote is taken as a URL (``s3://...``, ``/mnt/share``...).
    """
    spec = spec or os.environ.get("DSVC_REMOTE") or store.get_config("default_remote")
    if not spec:
        return None
    remotes = _all(store)
    if spec in remotes:
        r = remotes[spec]
        return spec, r["url"], dict(r.get("options") or {})
    for n, r in remotes.items():  # a URL that is a configured remote keeps its options
        if r["url"].rstrip("/") == spec.rstrip("/"):
            return n, r["url"], dict(r.get("options") or {})
    if "://" not in spec and not spec.startswith(("/", ".", "~")):
        raise NotFoundError(f"no remote named {spec!r}; add it with `dsvc remote add {spec} URL`")
    return None, spec, {}
