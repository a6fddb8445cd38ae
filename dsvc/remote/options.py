"""What a remote may be configured with: URL forms, option names, credentials.

Checked where a URL or an option is *given* (``dsvc remote add``, ``dsvc clone``,
``DSVC_REMOTE``, ``upload(output_url=)``, ``Dataset.create(output_uri=)``), so a typo
fails at once instead of sending data somewhere else later.

Option names are not a hand-written list: they are read from obstore's own type stubs
(the ``S3Config``/``GCSConfig``/``AzureConfig``/``ClientConfig`` TypedDicts shipped in
the installed package). Each key's documented environment variables give its aliases the
way object_store derives them (``AZURE_STORAGE_MASTER_KEY`` -> ``master_key``), so every
alias of a credential is refused, not just the spelling someone thought of.
"""

from __future__ import annotations

import ast
import contextvars
import functools
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dsvc.errors import ConfigError

__all__ = [
    "CREDENTIAL_KEYS",
    "check_options",
    "check_url",
    "client_keys",
    "config_keys",
    "credential_env_names",
    "is_credential",
    "provider_of",
]

#: URL scheme -> provider (the stub that describes its options)
SCHEMES = {
    "s3": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "azure": "azure",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
LOCAL_SCHEMES = ("file", "memory")

# provider -> (stub file, TypedDict, prefixes object_store strips from env-style names)
_STUBS = {
    "s3": ("_aws.pyi", "S3Config", ("aws_",)),
    "gcs": ("_gcs.pyi", "GCSConfig", ("google_",)),
    "azure": ("_azure.pyi", "AzureConfig", ("azure_storage_", "azure_")),
}

#: Canonical obstore keys whose *values* are secrets (checked against the stubs by
#: tests/test_config_secrets.py, so a renamed key fails loudly). Every alias of these
#: (derived from the stubs) is a credential too.
CREDENTIAL_KEYS: dict[str, frozenset[str]] = {
    "s3": frozenset(
        {"access_key_id", "secret_access_key", "session_token", "sse_customer_key_base64"}
    ),
    "azure": frozenset(
        {
            "account_key",
            "client_secret",
            "sas_key",
            "token",
            "encryption_key",
            "fabric_session_token",
        }
    ),  # fmt: skip
    "gcs": frozenset({"service_account_key", "bearer_token"}),
}

#: Keys that name *where* credentials come from without being secret (a file path, an
#: identity). With any of them, or a credential, dsvc leaves obstore's credential chain
#: alone; see :func:`wants_unsigned`.
_CREDENTIAL_SOURCES: dict[str, frozenset[str]] = {
    "s3": frozenset(
        {"web_identity_token_file", "role_arn", "container_credentials_relative_uri",
         "container_credentials_full_uri", "container_authorization_token_file",
         "metadata_endpoint", "imdsv1_fallback"}
    ),
    "azure": frozenset(
        {"federated_token_file", "use_azure_cli", "msi_endpoint", "object_id",
         "msi_resource_id", "credential_type", "use_emulator", "client_id"}
    ),
    "gcs": frozenset({"service_account", "application_credentials"}),
}  # fmt: skip

#: keys whose value is a URL (validated: http(s), a host, no user:password@)
_URL_KEYS: dict[str, frozenset[str]] = {
    "s3": frozenset(
        {"endpoint", "aws_endpoint_url_s3", "metadata_endpoint", "sts_endpoint",
         "container_credentials_full_uri"}
    ),
    "azure": frozenset(
        {"endpoint", "msi_endpoint", "authority_host", "fabric_token_service_url"}
    ),
    "gcs": frozenset({"base_url"}),
    "client": frozenset({"proxy_url"}),
}  # fmt: skip

#: where each provider's endpoint is set (options first, in this order)
ENDPOINT_KEYS = {"s3": ("aws_endpoint_url_s3", "endpoint"), "azure": ("endpoint",),
                 "gcs": ("base_url",)}  # fmt: skip
#: env prefix object_store accepts for client options per provider (AWS_ALLOW_HTTP...)
CLIENT_ENV_PREFIX = {"s3": "AWS_", "gcs": "GOOGLE_", "azure": "AZURE_"}

#: True while the ``dsvc`` command line runs (set by its root command): memory://
#: remotes live in one Python process, so the command line refuses them
COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("dsvc_cli", default=False)

_ENV_NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def _stub_dir() -> Path:
    import obstore  # ~0.3 s; this module loads at every CLI start (see __init__.py)

    return Path(obstore.__file__).parent / "_store"


@functools.cache
def _typed_dict(stub: str, cls: str) -> dict[str, list[str]]:
    """``{field: [documented environment variables]}`` of TypedDict ``cls`` in ``stub``."""
    path = _stub_dir() / stub
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(
            f"cannot read obstore's option list ({path}: {e.strerror}); reinstall obstore"
        ) from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            out: dict[str, list[str]] = {}
            body = node.body
            for i, item in enumerate(body):
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    doc = ""
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                        doc = str(nxt.value.value)
                    env = doc.rpartition("**Environment variable")[2] if "**Env" in doc else ""
                    out[item.target.id] = _ENV_NAME.findall(env)
            if out:
                return out
    raise ConfigError(f"obstore's stub {path} has no {cls}; this obstore version is unsupported")


@functools.cache
def config_keys(provider: str) -> dict[str, str]:
    """Every option name obstore accepts for ``provider`` (``s3``, ``gcs``, ``azure``),
    mapped to its canonical key: the key itself, its environment variable in lower case,
    and that without the provider prefix (``AWS_ENDPOINT_URL`` -> ``endpoint_url``)."""
    stub, cls, prefixes = _STUBS[provider]
    out: dict[str, str] = {}
    for key, envs in _typed_dict(stub, cls).items():
        out[key] = key
        for env in envs:
            low = env.lower()
            out.setdefault(low, key)
            for p in prefixes:
                if low.startswith(p):
                    out.setdefault(low[len(p) :], key)
                    break
    return out


@functools.cache
def client_keys() -> frozenset[str]:
    """The HTTP client options (``ClientConfig``): the same for every provider."""
    return frozenset(_typed_dict("_client.pyi", "ClientConfig"))


def credential_env_names(provider: str) -> dict[str, list[str]]:
    """``{canonical credential key: [environment variables obstore reads it from]}``."""
    stub, cls, _ = _STUBS[provider]
    fields = _typed_dict(stub, cls)
    return {k: fields.get(k, []) for k in sorted(CREDENTIAL_KEYS[provider])}


def provider_of(url: str) -> str | None:
    """``s3``, ``gcs`` or ``azure`` for a cloud URL; None for a folder or memory."""
    return SCHEMES.get(urlsplit(url).scheme.lower()) if "://" in url else None


def canonical(provider: str, option: str) -> str | None:
    """The canonical key of ``option`` for ``provider`` (None: not an obstore option)."""
    low = option.lower()
    if low in client_keys():
        return low
    return config_keys(provider).get(low)


def is_credential(option: str, provider: str | None = None) -> bool:
    """True when ``option`` (any alias obstore knows) carries a secret, for ``provider``
    or, when None, for any provider."""
    for p in [provider] if provider else list(_STUBS):
        key = config_keys(p).get(option.lower())
        if key is not None and key in CREDENTIAL_KEYS[p]:
            return True
    return False


def check_url(url: str, *, allow_memory: bool = True) -> str:
    """``url`` if it is an unambiguous remote address, else a :class:`ConfigError` that
    says what is wrong and what was probably meant.

    Accepted: ``s3://bucket[/prefix]``, ``gs://``/``gcs://``, ``azure://``/``az://``/
    ``abfs(s)://`` with a container, ``file:///abs/path``, an absolute path, a path
    starting with ``./``, ``../`` or ``~/``, and (``allow_memory``) ``memory://name``.
    Never a user name or password in the URL, a query or a fragment.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the remote URL is empty; use s3://bucket/prefix, gs://, az:// or /path")
    if url != url.strip() or any(ord(c) < 32 for c in url):
        raise ConfigError(f"remote URL {_safe(url)!r} has surrounding spaces or control characters")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", url)
    if m and not re.match(r"^[A-Za-z]:[\\/]", url):  # not a Windows drive (C:\ or C:/)
        scheme, rest = m.group(1).lower(), m.group(2)
        if not rest.startswith("//"):
            guess = f"{scheme}://{rest.lstrip('/')}"
            raise ConfigError(
                f"remote URL {_safe(url)!r} is not a URL (a scheme needs '://') and not an "
                f"unambiguous folder: did you mean {guess!r}? A folder must be absolute or "
                "start with './'"
            )
        return _check_scheme_url(url, scheme, allow_memory)
    if url.startswith(("/", "./", "../", "~/")) or url in (".", "..", "~"):
        return url
    if re.match(r"^[A-Za-z]:[\\/]", url):
        return url
    raise ConfigError(
        f"remote URL {_safe(url)!r} is ambiguous: a folder must be absolute or start with "
        f"'./' (./{url}), a bucket needs its scheme (s3://{url})"
    )


def _check_scheme_url(url: str, scheme: str, allow_memory: bool) -> str:
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(
            f"remote URL {_safe(url)!r} has a query or fragment; dsvc remotes take none "
            "(options go in -o KEY=VALUE, credentials in the environment)"
        )
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and (scheme not in ("abfs", "abfss") or ":" in userinfo or not userinfo):
        raise ConfigError(
            f"remote URL {_safe(url)!r} contains a user name or password; dsvc never stores "
            "credentials: remove it from the URL and set the provider's environment variables "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT, "
            "AZURE_STORAGE_ACCOUNT_KEY...) or DSVC_REMOTE_<NAME>_<OPTION>"
        )
    if scheme == "memory":
        if not allow_memory:
            raise ConfigError(
                "memory:// remotes live inside one Python process and vanish with it; the "
                "command line cannot use them: use a folder or a bucket"
            )
        if not (parts.netloc + parts.path).strip("/"):
            raise ConfigError("memory:// needs a name: memory://NAME")
        return url
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(
                f"remote URL {_safe(url)!r}: a file:// URL needs an absolute path, file:///abs/path"
            )
        return url
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported remote URL scheme {scheme!r} in {_safe(url)!r}; use s3://, gs://, "
            "azure://, az://, file:// or a folder (absolute, or starting with './')"
        )
    if not host or host in (".", ".."):
        raise ConfigError(
            f"remote URL {_safe(url)!r} names no bucket/container: use {scheme}://BUCKET/prefix"
        )
    segments = parts.path.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "//" in parts.path:
        raise ConfigError(
            f"remote URL {_safe(url)!r}: the prefix must not contain '.', '..' or '//'"
        )
    return url


def check_options(url: str, options: dict[str, Any] | None, *, source: str = "option") -> None:
    """Refuse option names obstore does not know for ``url``'s provider, credentials (under
    any alias) and malformed endpoint URLs. Folders and memory take no options."""
    if not options:
        return
    provider = provider_of(url)
    if provider is None:
        raise ConfigError(
            f"{source}s {', '.join(sorted(options))}: a folder remote takes no options"
        )
    creds = sorted(k for k in options if is_credential(k, provider))
    if creds:
        envs = credential_env_names(provider)
        hints = sorted({e for k in creds for e in envs.get(canonical(provider, k) or "", [])[:1]})
        raise ConfigError(
            f"{', '.join(creds)} is a credential and dsvc never stores credentials; set it "
            f"in the environment instead ({', '.join(hints) or 'the provider variables'}, or "
            "DSVC_REMOTE_<NAME>_<OPTION> for one remote)"
        )
    for k, v in options.items():
        key = canonical(provider, k)
        if key is None:
            raise ConfigError(f"unknown {source} {_close_match(provider, k)}")
        if key in ("bucket", "container_name"):
            raise ConfigError(
                f"{source} {k}: the bucket/container is the one in the URL ({_safe(url)}); "
                "it cannot be overridden by an option"
            )
        check_option_value(provider, key, v, what=f"{source} {k}")


def check_option_value(provider: str, key: str, value: Any, *, what: str) -> None:
    """Validate the value of canonical ``key`` (only URLs are checked here; obstore checks
    the rest when the client is built)."""
    if key in _URL_KEYS.get(provider, ()) or key in _URL_KEYS["client"]:
        check_endpoint(str(value), what=what)


def check_endpoint(value: str, *, what: str = "endpoint") -> str:
    """An endpoint must be ``http(s)://host[:port][/path]`` without credentials: obstore
    panics on some malformed ones (``127.0.0.1:5123``, no scheme) instead of failing."""
    parts = urlsplit(value)
    bad = None
    if parts.scheme.lower() not in ("http", "https") or "://" not in value:
        bad = "needs http:// or https:// (e.g. http://127.0.0.1:9000)"
    elif not parts.hostname:
        bad = "names no host"
    elif "@" in parts.netloc:
        bad = "must not contain a user name or password"
    elif any(c.isspace() for c in value):
        bad = "contains spaces"
    else:
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            bad = "has an invalid port"
    if bad:
        shown = value if "@" not in value else _safe(value)
        raise ConfigError(f"{what} {shown!r} {bad}")
    return value


def env_options(provider: str) -> dict[str, tuple[str, str]]:
    """``{canonical key: (variable, value)}`` of the provider's options set in the
    environment (the variables obstore itself reads)."""
    stub, cls, _ = _STUBS[provider]
    out = {}
    for key, envs in _typed_dict(stub, cls).items():
        for env in envs:
            if env in os.environ:
                out[key] = (env, os.environ[env])
                break
    return out


def wants_unsigned(provider: str, options: dict[str, str]) -> bool:
    """True when requests should go unsigned: an endpoint is configured (a private or
    S3-compatible store), and there is no credential, no credential source and no
    explicit ``skip_signature`` in the options or the environment.

    Without this, obstore falls back to the cloud's instance-metadata service
    (169.254.169.254) to find credentials: right on a cloud VM talking to its own cloud,
    an unexpected call (and a long wait) next to a custom endpoint. Ask for it explicitly
    with ``skip_signature=false`` (or S3's ``metadata_endpoint``/``imdsv1_fallback``).
    """
    canon = {canonical(provider, k) for k in options} | set(env_options(provider))
    if "skip_signature" in canon:
        return False
    if not any(k in canon for k in ENDPOINT_KEYS[provider]):
        return False
    sources = CREDENTIAL_KEYS[provider] | _CREDENTIAL_SOURCES[provider]
    if canon & sources:
        return False
    # gcloud's application-default credentials file is a source object_store reads too
    return not (provider == "gcs" and _gcloud_adc_file().exists())


def _gcloud_adc_file() -> Path:
    # object_store reads application default credentials from gcloud's well-known file
    return Path.home() / ".config" / "gcloud" / "application_default_credentials.json"


def _close_match(provider: str, option: str) -> str:
    import difflib  # only on the error path of a mistyped option

    known = sorted(set(config_keys(provider).values()) | client_keys())
    near = difflib.get_close_matches(option.lower(), known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"{option!r} for {provider} remotes{hint} (known: {', '.join(known)})"


def _safe(url: str) -> str:
    """``url`` with any user:password@ replaced, for messages."""
    parts = urlsplit(url) if "://" in url else None
    if parts is None or "@" not in parts.netloc:
        return url
    return url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)
