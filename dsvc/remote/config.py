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
from dsvc.remote import options as opts_mod
from dsvc.store import Store

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Display only (defence in depth for remotes stored by older versions): also mask what
# merely looks like a secret. Refusing credentials uses obstore's own key list instead.
_SECRET_RE = re.compile(r"(secret|key|token|password|sas|credential)", re.I)


def check_url(url: str) -> str:
    """``url`` validated (see :func:`dsvc.remote.options.check_url`); memory:// is
    accepted from Python (tests), never from the command line."""
    return opts_mod.check_url(url, allow_memory=not opts_mod.COMMAND_LINE.get())


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` (remotes stored by older versions)."""
    return opts_mod._safe(url)


def _all(store: Store) -> dict[str, dict[str, Any]]:
    return dict(store.get_config("remotes") or {})


def mask_options(options: dict[str, str] | None) -> dict[str, str]:
    """Options with every credential-like value replaced by ``***``."""
    return {
        k: ("***" if is_credential(k) or _SECRET_RE.search(k) else v)
        for k, v in (options or {}).items()
    }


def is_credential(option: str) -> bool:
    """True for an option whose value is a credential, under any name obstore accepts
    for it (``secret_access_key``, ``AWS_SECRET_ACCESS_KEY``, Azure's ``master_key``...)."""
    return opts_mod.is_credential(option)


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
    """Register remote ``name``; the first remote becomes the default.

    The URL must be unambiguous (see :func:`check_url`), every option a name obstore
    knows for that kind of remote, and none a credential (under any of its aliases).
    """
    if not _NAME_RE.match(name):
        raise ConfigError(f"remote name {name!r} must be letters, digits, '.', '_' or '-'")
    _, creds = split_credentials(options)
    if creds:
        provider = opts_mod.provider_of(url)
        envs = opts_mod.credential_env_names(provider) if provider else {}
        usual = sorted(
            {e[0] for k in creds if (e := envs.get(opts_mod.canonical(provider, k) or "", []))}
        ) if provider else []  # fmt: skip
        hints = ", ".join([credential_env_var(name, k) for k in sorted(creds)] + usual)
        raise ConfigError(
            f"remote {name!r}: {', '.join(sorted(creds))} is a credential and dsvc never stores "
            f"credentials; set it in the environment instead ({hints}, or the provider's usual "
            "variable such as AWS_SECRET_ACCESS_KEY or AZURE_STORAGE_ACCOUNT_KEY)"
        )
    check_url(url)
    try:
        opts_mod.check_options(url, options)
    except ConfigError as e:
        raise ConfigError(f"remote {name!r}: {e}") from None
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


def set_url(store: Store, name: str, url: str) -> None:
    """Point remote ``name`` at ``url`` (options kept, checked against the new URL)."""
    remotes = _all(store)
    if name not in remotes:
        raise NotFoundError(f"no remote named {name!r}; see `dsvc remote list`")
    check_url(url)
    try:
        opts_mod.check_options(url, remotes[name].get("options"))
    except ConfigError as e:
        raise ConfigError(f"remote {name!r}: {e}") from None
    remotes[name] = {**remotes[name], "url": url}
    store.set_config("remotes", remotes)


def rename_remote(store: Store, old: str, new: str) -> None:
    """Rename remote ``old`` to ``new`` (the default follows it)."""
    remotes = _all(store)
    if old not in remotes:
        raise NotFoundError(f"no remote named {old!r}; see `dsvc remote list`")
    if not _NAME_RE.match(new):
        raise ConfigError(f"remote name {new!r} must be letters, digits, '.', '_' or '-'")
    if new in remotes:
        raise ConfigError(f"remote {new!r} already exists; remove it first or pick another name")
    remotes[new] = remotes.pop(old)
    store.set_config("remotes", remotes)
    if store.get_config("default_remote") == old:
        store.set_config("default_remote", new)


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
            "url": display_url(r["url"]),
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
    source = "" if spec else "DSVC_REMOTE="
    spec = spec or os.environ.get("DSVC_REMOTE") or store.get_config("default_remote")
    if not spec:
        return None
    remotes = _all(store)
    if spec in remotes:
        r = remotes[spec]
        return spec, r["url"], with_env(spec, r.get("options"))
    for n, r in remotes.items():  # a URL that is a configured remote keeps its options
        if r["url"].rstrip("/") == spec.rstrip("/"):
            return n, r["url"], with_env(n, r.get("options"))
    if "/" not in spec and ":" not in spec and spec not in (".", "..", "~"):
        raise NotFoundError(f"no remote named {spec!r}; add it with `dsvc remote add {spec} URL`")
    try:
        check_url(spec)
    except ConfigError as e:
        raise ConfigError(f"{source}{e}") from None
    return None, spec, {}


def with_env(name: str, options: dict[str, str] | None) -> dict[str, str]:
    """Stored options plus ``DSVC_REMOTE_<NAME>_<OPTION>`` variables (credentials)."""
    out = dict(options or {})
    prefix = credential_env_var(name, "")
    for k, v in os.environ.items():
        if k.startswith(prefix) and len(k) > len(prefix):
            out[k[len(prefix) :].lower()] = v
    return out
