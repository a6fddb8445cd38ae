"""Named remotes, kept in the store's ``config`` database under ``remotes``.

``remotes`` maps a name to ``{"url": ..., "options": {...}}``; ``default_remote`` names
the default. ``DSVC_REMOTE`` (a remote name or a URL) overrides the default.
Options hold an endpoint, a region, an account name... never a credential: adding a
remote with a secret option is refused. Credentials come from the environment, either
the provider's usual variables (AWS_*, GOOGLE_*, AZURE_*, read by obstore) or
``DSVC_REMOTE_<NAME>_<OPTION>`` for one remote (e.g. ``DSVC_REMOTE_ORIGIN_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from dsvc.errors import ConfigError, NotFoundError
from dsvc.store import Store

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRET_RE = re.compile(r"(secret|key|token|password|sas|credential)", re.I)
#: option names whose values are credentials: never stored, only read from the environment
_CREDENTIAL_RE = re.compile(
    r"(secret|token|password|account_key|sas|private_key|credential|client_secret)", re.I
)


def _all(store: Store) -> dict[str, dict[str, Any]]:
    return dict(store.get_config("remotes") or {})


def mask_options(options: dict[str, str] | None) -> dict[str, str]:
    """Options with every credential-like value replaced by ``***``."""
    return {k: ("***" if _SECRET_RE.search(k) else v) for k, v in (options or {}).items()}


def is_credential(option: str) -> bool:
    """True for an option whose value is a credential (secret key, token, password...)."""
    return bool(_CREDENTIAL_RE.search(option))


def credential_env_var(remote: str, option: str) -> str:
    """The environment variable that supplies ``option`` of remote ``remote``:
    ``DSVC_REMOTE_<REMOTE>_<OPTION>`` (upper case, other characters as ``_``)."""
    norm = re.sub(r"[^A-Za-z0-9]", "_", remote).upper()
    return f"DSVC_REMOTE_{norm}_{option.upper()}"


def split_credentials(options: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain options, credential options)``."""
    plain = {k: v for k, v in (options or {}).items() if not is_credential(k)}
    return plain, {k: v for k, v in (options or {}).items() if is_credential(k)}


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
    _, creds = split_credentials(options)
    if creds:
        hints = ", ".join(credential_env_var(name, k) for k in sorted(creds))
        raise ConfigError(
            f"remote {name!r}: {', '.join(sorted(creds))} is a credential and dsvc never stores "
            f"credentials; set it in the environment instead ({hints}, or the provider's usual "
            "variable such as AWS_SECRET_ACCESS_KEY or AZURE_STORAGE_ACCOUNT_KEY)"
        )
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
        return spec, r["url"], _with_env(spec, r.get("options"))
    for n, r in remotes.items():  # a URL that is a configured remote keeps its options
        if r["url"].rstrip("/") == spec.rstrip("/"):
            return n, r["url"], _with_env(n, r.get("options"))
    if "://" not in spec and not spec.startswith(("/", ".", "~")):
        raise NotFoundError(f"no remote named {spec!r}; add it with `dsvc remote add {spec} URL`")
    return None, spec, {}


def _with_env(name: str, options: dict[str, str] | None) -> dict[str, str]:
    """Stored options plus ``DSVC_REMOTE_<NAME>_<OPTION>`` variables (credentials)."""
    out = dict(options or {})
    prefix = credential_env_var(name, "")
    for k, v in os.environ.items():
        if k.startswith(prefix) and len(k) > len(prefix):
            out[k[len(prefix) :].lower()] = v
    return out
