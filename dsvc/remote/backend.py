"""One typed object-store client for every kind of remote (S3, GCS, Azure, local, memory).

This is a thin layer over ``obstore`` (the Rust ``object_store`` crate). It adds what the
packs/push/fetch layer needs and obstore leaves to the caller:

* one URL syntax for remotes (``s3://``, ``gs://``, ``azure://``/``az://``, ``file://``,
  plain paths, ``memory://``), with keys relative to the URL's prefix;
* dsvc's exception hierarchy instead of obstore's, with one-line messages that name the
  remote (never its credentials) and say what to do;
* compare-and-swap on local folders, which obstore's ``LocalStore`` does not implement;
* a probe (:meth:`Backend.check_conditional_writes`) that refuses remotes which silently
  ignore conditional writes, since refs would then lose updates without any error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast
from urllib.parse import urlsplit

import obstore
import obstore.exceptions as obx
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from dsvc import faultpoints
from dsvc.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidPathError,
    NotFoundError,
    RemoteError,
)
from dsvc.remote import options as options_mod

if TYPE_CHECKING:  # typed dicts that exist only in obstore's stubs
    from obstore import GetOptions, UpdateVersion
    from obstore.store import AzureConfig, GCSConfig, S3Config

__all__ = ["Backend", "ObjectInfo", "ObjectVersion"]

# Client (HTTP) options obstore takes separately from the store's own config keys.
_CLIENT_KEYS = frozenset(
    [
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "default_headers",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "root_certificate",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    ]
)
# Option / environment variable names whose values are secrets and get scrubbed from text.
_SECRET_NAME = re.compile(r"(secret|password|token|sas|credential|account_key|access_key)", re.I)
# Signed-URL and header fragments that may carry secrets in a server's error text.
_SECRET_TEXT = re.compile(
    r"((?:X-Amz-(?:Signature|Credential|Security-Token)|sig|Signature|se|sv|skoid|sktid|"
    r"access_token)=)[^&\s\"']+|(Authorization:?\s*)\S+(\s+\S+)?",
    re.I,
)
# A whole PUT of a big file is one request; above this size put_file uses multipart.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
# Lock files for local compare-and-swap live under this key prefix, hidden from list().
_LOCK_DIR = ".dsvc-locks"
_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")
_WRITE_OPS = frozenset({"put", "upload to", "create"})
# memory:// stores are shared by name within the process, so two Backends on the same
# memory URL see the same objects (as two clients of one bucket would).
_MEMORY_STORES: dict[str, MemoryStore] = {}
_MEMORY_LOCK = threading.Lock()
_LOCAL_LOCK = threading.Lock()

# -- fork ----------------------------------------------------------------------------
# obstore runs every request on one process-wide tokio runtime (pyo3-async-runtimes),
# started on first use. fork() copies only the calling thread: in the child of a
# process that used it, the runtime's worker and blocking-pool threads are gone and the
# first request waits forever (DataLoader(num_workers>0) workers hung so, issue 15).
# The runtime cannot be restarted from Python, so a forked child that uses a remote
# loads a private copy of obstore's extension module (its own runtime), rebinds this
# module's obstore names to it, and every Backend it inherited reopens its store.
_OBSTORE_SO = obstore._obstore.__file__  # the copy's source (a loaded copy has no path)
_obstore_pid: int | None = None  # the process whose runtime the obstore names here use
_FORK_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # a lock a parent thread held at fork stays held forever in the child
    global _FORK_LOCK, _MEMORY_LOCK, _LOCAL_LOCK
    _FORK_LOCK, _MEMORY_LOCK, _LOCAL_LOCK = threading.Lock(), threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _obstore_for_this_process() -> None:
    """Make this module's obstore names usable in this process (see the comment above)."""
    global _obstore_pid
    pid = os.getpid()
    if _obstore_pid == pid:
        return
    with _FORK_LOCK:
        if _obstore_pid is not None and _obstore_pid != pid:
            _reload_obstore()
        _obstore_pid = pid


def _reload_obstore() -> None:
    global obstore, obx, AzureStore, GCSStore, LocalStore, MemoryStore, S3Store
    saved = {k: m for k, m in sys.modules.items() if k == "obstore" or k.startswith("obstore.")}
    for k in saved:
        del sys.modules[k]
    fd = -1
    try:
        try:
            # a new inode, so the dynamic loader maps a new copy instead of reusing the
            # loaded one; memfd: nothing written to disk, nothing left behind
            fd = os.memfd_create("dsvc-obstore")
            path = f"/proc/self/fd/{fd}"
        except (AttributeError, OSError):
            fd, path = tempfile.mkstemp(prefix="dsvc-obstore-", suffix=".so")
            os.unlink(path)  # POSIX: the open descriptor keeps the file
            path = f"/dev/fd/{fd}"
        with open(_OBSTORE_SO, "rb") as src, open(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        loader = importlib.machinery.ExtensionFileLoader("obstore._obstore", path)
        spec = importlib.util.spec_from_file_location("obstore._obstore", path, loader=loader)
        assert spec is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["obstore._obstore"] = mod
        loader.exec_module(mod)
        new = importlib.import_module("obstore")
        exc = importlib.import_module("obstore.exceptions")
        stores = importlib.import_module("obstore.store")
    except Exception as e:
        for k in [k for k in sys.modules if k == "obstore" or k.startswith("obstore.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        raise RemoteError(
            f"cannot reopen the remote client in this forked process ({e}); start worker "
            "processes with the 'spawn' or 'forkserver' method instead of 'fork' (e.g. "
            "DataLoader(..., multiprocessing_context='spawn'))"
        ) from None
    finally:
        if fd >= 0:
            os.close(fd)  # the loaded copy stays mapped
    obstore, obx = new, exc
    # rebinding the imported classes is the point: every later use takes the new copy's
    AzureStore, GCSStore, LocalStore = stores.AzureStore, stores.GCSStore, stores.LocalStore  # type: ignore[misc]
    MemoryStore, S3Store = stores.MemoryStore, stores.S3Store  # type: ignore[misc]
    # the parent's memory stores belong to its copy of obstore: this process starts empty
    _MEMORY_STORES.clear()


@dataclass(frozen=True)
class ObjectVersion:
    """What a conditional write compares against: the ETag and/or the store's version.

    S3 and Azure compare the ETag, GCS the generation (``version``), local folders and
    memory the ETag. Keep both: each store uses what it needs.
    """

    etag: str | None
    version: str | None


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object; ``key`` is relative to the remote's prefix."""

    key: str
    size: int
    version: ObjectVersion
    last_modified: datetime | None


class Backend:
    """A remote object store addressed by URL; every key is relative to the URL's prefix.

    Construct with :meth:`from_url`. Thread-safe: obstore stores may be shared by threads.
    """

    def __init__(
        self,
        store: Any,
        url: str,
        *,
        local_root: Path | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        self.url = url  # display form, credential-free
        self._local_root = local_root  # set for file:// and plain paths (local CAS)
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))
        self._pid = os.getpid()  # the process whose obstore opened self._store
        self._reopen: tuple[str, dict[str, str] | None, int] | None = None  # from_url's args

    def __repr__(self) -> str:
        return f"Backend({self.url!r})"

    @property
    def local_root(self) -> Path | None:
        """The folder of a folder remote (``file://`` or a path); None for others."""
        return self._local_root

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_url(
        cls, url: str, options: dict[str, str] | None = None, *, retries: int = 3
    ) -> Backend:
        """Open the remote at ``url``.

        ``options`` are obstore store config keys (``endpoint``, ``region``,
        ``access_key_id``, ``account_name``, ``service_account``, ...) and client keys
        (``allow_http``, ``connect_timeout``, ``timeout``, ...). Anything not given comes
        from the usual ``AWS_*`` / ``GOOGLE_*`` / ``AZURE_*`` environment variables, which
        obstore reads itself. An ``http://`` endpoint turns ``allow_http`` on.
        ``retries`` bounds the retries of transient failures (connection, 5xx, timeouts).
        """
        _obstore_for_this_process()
        opts = {k.lower(): str(v) for k, v in (options or {}).items()}
        secrets = _secret_values(opts)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
            if not url.startswith(("/", ".", "~", "file://")) and ":" in url.split("/")[0]:
                options_mod.check_url(url)  # "s3:/bucket/x": a typo, not a folder
            return cls._local(url, parts.path if scheme == "file" else url, secrets)
        if scheme == "memory":
            name = (parts.netloc + parts.path).strip("/")
            with _MEMORY_LOCK:
                mem = _MEMORY_STORES.setdefault(name, MemoryStore())
            return cls(mem, f"memory://{name}", secrets=secrets)
        provider = options_mod.SCHEMES.get(scheme)
        if provider is None:
            raise ConfigError(
                f"unsupported remote URL scheme {scheme!r} in {_scrub_url(url)}; use s3://, "
                "gs://, azure://, az://, file://, a local path or memory://"
            )

        client = {k: opts.pop(k) for k in list(opts) if k in _CLIENT_KEYS}
        # obstore reads the provider's variables (AWS_ALLOW_HTTP...) itself, but the
        # client options passed here replace the client part of them: merge them back.
        # Precedence: explicit options, then the environment, then dsvc's defaults.
        env_prefix = options_mod.CLIENT_ENV_PREFIX[provider]
        for k in _CLIENT_KEYS:
            if k not in client and env_prefix + k.upper() in os.environ:
                client[k] = os.environ[env_prefix + k.upper()]
        endpoint = _endpoint(provider, opts)
        if endpoint.startswith("http://"):
            client.setdefault("allow_http", "true")
        if options_mod.wants_unsigned(provider, opts):
            # no credentials for a custom endpoint: send unsigned requests to it rather
            # than let obstore ask the cloud's instance-metadata service (169.254.169.254)
            opts["skip_signature"] = "true"
        # Bounded: a dead remote fails within seconds, a slow big upload still finishes.
        client.setdefault("connect_timeout", "3s")
        client.setdefault("timeout", "300s")
        retry = {
            "max_retries": max(0, int(retries)),
            "backoff": {
                "init_backoff": timedelta(milliseconds=200),
                "max_backoff": timedelta(seconds=4),
                "base": 2,
            },
            "retry_timeout": timedelta(seconds=20),
        }
        userinfo, _, hostpart = parts.netloc.rpartition("@")
        # "user:secret@host" is credentials (dropped); abfs's "container@account" is not.
        bucket = hostpart if ":" in userinfo else parts.netloc
        prefix = parts.path.strip("/")
        display = f"{scheme}://{bucket}/{prefix}".rstrip("/")
        if not bucket:
            raise ConfigError(f"remote URL {_scrub_url(url)} names no bucket/container")
        kwargs: dict[str, Any] = {"client_options": client, "retry_config": retry}
        try:
            if provider == "s3":
                # opts: keys checked against the provider's option names (remote/options.py)
                store: Any = S3Store(
                    bucket, prefix=prefix or None, config=cast("S3Config", opts), **kwargs
                )
            elif provider == "gcs":
                store = GCSStore(
                    bucket, prefix=prefix or None, config=cast("GCSConfig", opts), **kwargs
                )
            else:
                account, container, prefix = _parse_azure(bucket, prefix)
                if account and "account_name" not in opts:
                    opts["account_name"] = account
                store = AzureStore(
                    container, prefix=prefix or None, config=cast("AzureConfig", opts), **kwargs
                )
        except ConfigError:
            raise
        except BaseException as e:  # obstore errors, and Rust panics (BaseException)
            if not isinstance(e, obx.BaseError | ValueError | TypeError) and not _is_panic(e):
                raise
            text = _scrub(_first_line(str(e)), secrets)
            raise ConfigError(f"remote {display}: invalid configuration: {text}") from None
        backend = cls(store, display, secrets=secrets)
        backend._reopen = (url, options, retries)
        return backend

    def _in_this_process(self) -> None:
        """Reopen the store in a forked child: the parent's belongs to its obstore."""
        if self._pid == os.getpid():
            return
        _obstore_for_this_process()
        with _FORK_LOCK:
            if self._pid == os.getpid():
                return
            if self._local_root is not None:
                self._store = None  # reopened by _obj() with this process's obstore
            elif self._reopen is not None:
                url, options, retries = self._reopen
                self._store = Backend.from_url(url, options, retries=retries)._store
            elif self.url.startswith("memory://"):
                name = self.url.removeprefix("memory://")
                with _MEMORY_LOCK:
                    self._store = _MEMORY_STORES.setdefault(name, MemoryStore())
            else:  # made from a store object (not from_url): nothing to reopen it from
                raise RemoteError(
                    f"remote {self.url}: this client was opened before the process forked "
                    "and cannot be used in the child; open the remote again in the child"
                )
            self._pid = os.getpid()

    @classmethod
    def _local(cls, url: str, path: str, secrets: tuple[str, ...]) -> Backend:
        # The folder is created by the first write, not by opening: a read-only command
        # (clone, fetch) on a mistyped path must find nothing, not create it.
        root = Path(path).expanduser().absolute()
        return cls(
            None,
            str(root) if not url.startswith("file:") else f"file://{root}",
            local_root=root,
            secrets=secrets,
        )

    def _obj(self, *, write: bool = False) -> Any:
        """The obstore store; for a folder remote, opened (and for a write, created) on
        first use. A read of a folder that does not exist raises FileNotFoundError."""
        if self._store is not None:
            return self._store
        root = self._local_root
        assert root is not None
        with _LOCAL_LOCK:
            if self._store is None:
                try:
                    if write:
                        root.mkdir(parents=True, exist_ok=True)
                    elif not root.is_dir():
                        raise FileNotFoundError(f"folder {root} does not exist")
                    self._store = LocalStore(str(root))
                except FileNotFoundError:
                    raise
                except (OSError, obx.BaseError) as e:
                    raise RemoteError(
                        f"remote {root}: cannot create or open the folder: {e}"
                    ) from None
        return self._store

    # ------------------------------------------------------------------ reads

    def get(self, key: str, *, limit: int | None = None) -> bytes:
        """The whole object; :class:`NotFoundError` if it does not exist. An object larger
        than ``limit`` bytes is an :class:`IntegrityError`, raised before it is read."""
        with self._errors("get", key):
            result = obstore.get(self._obj(), _check_key(key))
            self._check_size(key, result, limit)
            return bytes(result.bytes())

    def get_versioned(
        self, key: str, *, limit: int | None = None
    ) -> tuple[bytes, ObjectVersion] | None:
        """The object and the version to pass to :meth:`compare_and_swap`; None if missing.
        ``limit`` as for :meth:`get`."""
        try:
            with self._errors("get", key):
                result = obstore.get(self._obj(), _check_key(key))
                self._check_size(key, result, limit)
                data = bytes(result.bytes())
        except NotFoundError:
            return None
        meta = result.meta
        return data, ObjectVersion(meta.get("e_tag"), meta.get("version"))

    def _check_size(self, key: str, result: Any, limit: int | None) -> None:
        # the response's metadata comes before its body: a hostile remote's huge object
        # is refused without being read into memory
        size = result.meta.get("size")
        if limit is not None and isinstance(size, int) and size > limit:
            raise IntegrityError(
                f"remote {self.url}: {key} is {size} bytes, more than dsvc ever writes there "
                f"({limit}); it is damaged or was not written by dsvc"
            )

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start``; fewer only at the end of the object."""
        if length <= 0:
            return b""
        with self._errors("get range of", key):
            return bytes(
                obstore.get_range(self._obj(), _check_key(key), start=start, length=length)
            )

    def get_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ``(start, length)`` ranges of one object; obstore coalesces near ones."""
        if not ranges:
            return []
        with self._errors("get ranges of", key):
            out = obstore.get_ranges(
                self._obj(),
                _check_key(key),
                starts=[s for s, _ in ranges],
                lengths=[n for _, n in ranges],
            )
        return [bytes(b) for b in out]

    def download(self, key: str, out: BinaryIO, *, if_match: str | None = None) -> ObjectInfo:
        """Stream the whole object into ``out``; returns its metadata. With ``if_match``,
        only while its ETag is still that one (else :class:`ConflictError`): an object
        replaced after it was looked at is never read as the old one."""
        with self._errors("get", key):
            opts: GetOptions | None = {"if_match": if_match} if if_match else None
            result = obstore.get(self._obj(), _check_key(key), options=opts)
            for piece in result.stream():
                out.write(piece)
            return _info(result.meta)

    def head(self, key: str) -> ObjectInfo | None:
        """Metadata of the object, or None if it does not exist."""
        try:
            with self._errors("head", key):
                return _info(obstore.head(self._obj(), _check_key(key)))
        except NotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix)."""
        # obstore lists whole path segments, so list the parent "folder" and filter.
        folder = prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0]
        if self._store is None and self._local_root is not None and not self._local_root.is_dir():
            return  # a folder remote not created yet holds nothing
        with self._errors("list", prefix or "/"):
            for batch in obstore.list(self._obj(), folder.rstrip("/") or None):
                for meta in batch:
                    info = _info(meta)
                    if info.key.startswith(prefix) and not _internal(info.key):
                        yield info

    # ------------------------------------------------------------------ writes

    def put(self, key: str, data: bytes | memoryview) -> ObjectVersion:
        """Write (overwrite) the object atomically; returns its new version."""
        if faultpoints.ENABLED:
            faultpoints.hit("remote.put", "before", _fault_label(key))
        with self._errors("put", key):
            out = _version(
                obstore.put(self._obj(write=True), _check_key(key), data, use_multipart=False)
            )
        if faultpoints.ENABLED:
            faultpoints.hit("remote.put", "after", _fault_label(key))
        return out

    def put_file(self, key: str, path: str) -> ObjectVersion:
        """Upload a local file, streamed; multipart when it is larger than 64 MiB."""
        size = os.path.getsize(path)
        if faultpoints.ENABLED:
            faultpoints.hit("remote.put", "before", _fault_label(key))
        with self._errors("upload to", key):
            out = _version(
                obstore.put(
                    self._obj(write=True),
                    _check_key(key),
                    Path(path),
                    use_multipart=size > MULTIPART_THRESHOLD,
                    chunk_size=MULTIPART_CHUNK,
                    max_concurrency=4,
                )
            )
        if faultpoints.ENABLED:
            faultpoints.hit("remote.put", "after", _fault_label(key))
        return out

    def create(self, key: str, data: bytes) -> bool:
        """Create the object only if absent: True if written, False if it already existed."""
        if faultpoints.ENABLED:
            faultpoints.hit("remote.create", "before", _fault_label(key))
        created = self._create(key, data)
        if faultpoints.ENABLED:
            faultpoints.hit("remote.create", "after", _fault_label(key))
        return created

    def _create(self, key: str, data: bytes) -> bool:
        try:
            with self._errors("create", key):
                obstore.put(
                    self._obj(write=True), _check_key(key), data, mode="create", use_multipart=False
                )
        except ConflictError:
            return False
        return True

    def compare_and_swap(
        self, key: str, data: bytes, expected: ObjectVersion | None
    ) -> ObjectVersion:
        """Replace the object only if it is still at ``expected`` (None: must not exist).

        Returns the new version; :class:`ConflictError` when another writer got there first.
        """
        if faultpoints.ENABLED:
            faultpoints.hit("remote.cas", "before", _fault_label(key))
        out = self._compare_and_swap(key, data, expected)
        if faultpoints.ENABLED:
            faultpoints.hit("remote.cas", "after", _fault_label(key))
        return out

    def _compare_and_swap(
        self, key: str, data: bytes, expected: ObjectVersion | None
    ) -> ObjectVersion:
        _check_key(key)
        if expected is None:
            with self._errors("create", key):
                return _version(
                    obstore.put(
                        self._obj(write=True), key, data, mode="create", use_multipart=False
                    )
                )
        if self._local_root is not None:
            return self._local_cas(key, data, expected)
        mode: UpdateVersion = {}
        if expected.etag:
            mode["e_tag"] = expected.etag
        if expected.version:
            mode["version"] = expected.version
        if not mode:
            raise ConflictError(
                f"remote {self.url}: cannot update {key!r}: expected version is empty"
            )
        with self._errors("update", key, missing_is_conflict=True):
            return _version(
                obstore.put(self._obj(write=True), key, data, mode=mode, use_multipart=False)
            )

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        if faultpoints.ENABLED:
            faultpoints.hit("remote.delete", "before", _fault_label(key))
        self._delete(key)
        if faultpoints.ENABLED:
            faultpoints.hit("remote.delete", "after", _fault_label(key))

    def _delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError), self._errors("delete", key):
            if self._local_root is not None:
                with self._key_lock(key):  # not between a local CAS's check and its write
                    obstore.delete(self._obj(), _check_key(key))
            else:
                obstore.delete(self._obj(), _check_key(key))

    def check_conditional_writes(self) -> None:
        """Refuse a remote that accepts conditional writes but does not enforce them.

        Creates a temporary ``_probe/`` object twice (the second must be refused) and tries
        a compare-and-swap against a stale version (it must fail). Without this an S3-like
        server that ignores If-None-Match / If-Match would let concurrent pushes silently
        overwrite each other's refs.
        """
        key = f"_probe/{uuid.uuid4().hex}"
        problem = None
        try:
            if not self.create(key, b"1"):
                problem = "a fresh create-if-absent was refused"
            elif self.create(key, b"2"):
                problem = "a second create-if-absent of the same key succeeded"
            else:
                first = self.get_versioned(key)
                assert first is not None
                self.compare_and_swap(key, b"3", first[1])  # current version: must succeed
                try:
                    self.compare_and_swap(key, b"4", first[1])  # now stale: must fail
                    problem = "a compare-and-swap with a stale version succeeded"
                except ConflictError:
                    pass
        except ConflictError:
            problem = "a compare-and-swap with the current version was refused"
        finally:
            with contextlib.suppress(RemoteError):
                self.delete(key)
        if problem:
            raise ConfigError(
                f"remote {self.url} ignores conditional writes ({problem}); refusing to use it, "
                "since concurrent pushes could silently lose ref updates. Use a store that "
                "supports If-None-Match/If-Match (AWS S3, GCS, Azure, MinIO, recent Ceph)."
            )

    # ------------------------------------------------------------------ local CAS

    def _local_cas(self, key: str, data: bytes, expected: ObjectVersion) -> ObjectVersion:
        # obstore's LocalStore has no PutMode::Update. One flock per key (shared by all
        # processes on this machine, and over NFSv4) makes check-then-replace atomic. The
        # new content goes to a temp file that os.replace swaps in, so readers see old or
        # new bytes, never a mix; the new file has a new inode, hence a new ETag.
        assert self._local_root is not None
        target = self._local_root / key
        with self._key_lock(key):
            current = self.head(key)
            if current is None or current.version.etag != expected.etag:
                raise ConflictError(
                    f"remote {self.url}: {key!r} was changed by another writer "
                    "(compare-and-swap lost); re-read it and retry"
                )
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except OSError as e:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise RemoteError(f"remote {self.url}: cannot write {key!r}: {e}") from None
            info = self.head(key)
        assert info is not None
        return info.version

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        assert self._local_root is not None
        lock_dir = self._local_root / _LOCK_DIR
        lock_dir.mkdir(exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _errors(self, op: str, key: str, *, missing_is_conflict: bool = False) -> Iterator[None]:
        """Translate obstore exceptions into dsvc's, with a credential-free one-line message."""
        self._in_this_process()  # every obstore call runs in here
        try:
            yield
        except (ConflictError, NotFoundError, ConfigError, InvalidPathError, IntegrityError):
            raise
        except obx.AlreadyExistsError:
            raise ConflictError(f"remote {self.url}: {key!r} already exists") from None
        except obx.PreconditionError:
            raise ConflictError(
                f"remote {self.url}: {key!r} was changed by another writer "
                "(compare-and-swap lost); re-read it and retry"
            ) from None
        except (FileNotFoundError, obx.NotFoundError) as e:
            if _bucket_missing(str(e)) or op in _WRITE_OPS:
                # a write can only meet "not found" when the bucket/container is missing
                self._raise_remote(op, key, e, bucket_missing=True)
            if missing_is_conflict:
                raise ConflictError(
                    f"remote {self.url}: {key!r} was deleted by another writer; re-read it"
                ) from None
            raise NotFoundError(f"remote {self.url}: {key!r} does not exist") from None
        except (obx.BaseError, OSError, NotImplementedError, ValueError) as e:
            self._raise_remote(op, key, e)
        except BaseException as e:
            # pyo3's PanicException (a Rust panic inside obstore) derives from
            # BaseException: report it as a remote error, never as a traceback
            if not _is_panic(e):
                raise
            self._raise_remote(op, key, e)

    def _raise_remote(
        self, op: str, key: str, e: BaseException, *, bucket_missing: bool = False
    ) -> NoReturn:
        text = str(e)
        detail = _scrub(_first_line(text), self._secrets)
        low = text.lower()
        if bucket_missing or _bucket_missing(text):
            hint = "the bucket/container does not exist: create it or fix the remote URL"
        elif isinstance(
            e, obx.UnauthenticatedError | obx.PermissionDeniedError | PermissionError
        ) or any(
            s in low
            for s in (
                "status: 403",
                "status: 401",
                "accessdenied",
                "signaturedoesnotmatch",
                "invalidaccesskeyid",
                "authenticationfailed",
                "forbidden",
            )
        ):
            hint = (
                "access denied: check the credentials (AWS_*/GOOGLE_*/AZURE_* environment "
                "variables or the remote's options)"
            )
        elif any(s in low for s in ("connect", "timed out", "timeout", "dns error", "refused")):
            hint = "cannot reach the remote: check the endpoint and the network, then retry"
        elif isinstance(e, obx.UnknownConfigurationKeyError):
            hint = "fix the remote's options"
        else:
            hint = "see the detail above; retry, or check the remote's configuration"
        raise RemoteError(f"remote {self.url}: {op} {key!r} failed: {detail} -- {hint}") from None


# ---------------------------------------------------------------------- helpers


def _is_panic(e: BaseException) -> bool:
    """A Rust panic surfaced by pyo3 (``pyo3_runtime.PanicException``)."""
    return type(e).__name__ == "PanicException"


def _endpoint(provider: str, opts: dict[str, str]) -> str:
    """The endpoint configured in ``opts`` or the environment, validated ("" if none).

    obstore panics on some malformed endpoints (``127.0.0.1:5123``, without a scheme)
    when the first request is made; refuse them here, naming where they came from.
    """
    for key in options_mod.ENDPOINT_KEYS[provider]:
        for alias, canon in options_mod.config_keys(provider).items():
            if canon == key and opts.get(alias):
                return options_mod.check_endpoint(opts[alias], what=f"option {alias}")
    envs = options_mod.env_options(provider)
    for key in options_mod.ENDPOINT_KEYS[provider]:
        if key in envs and envs[key][1]:
            var, value = envs[key]
            return options_mod.check_endpoint(value, what=f"environment variable {var}")
    return ""


def _fault_label(key: str) -> str:
    """The kind of object a key names, for :mod:`dsvc.faultpoints`: its first path
    segment and its extension (``packs/*.idx``, ``datasets/*``, ``dsvc.json``)."""
    head, sep, rest = key.partition("/")
    if not sep:
        return key if "." in key else "*"
    ext = rest.rpartition("/")[2].partition(".")[2]
    return f"{head}/*.{ext}" if ext else f"{head}/*"


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidPathError(f"invalid remote key {key!r}: use 'a/b/c' without '.', '..' or '//'")
    return key


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(
        key=meta["path"],
        size=int(meta["size"]),
        version=ObjectVersion(meta.get("e_tag"), meta.get("version")),
        last_modified=meta.get("last_modified"),
    )


def _version(result: Any) -> ObjectVersion:
    return ObjectVersion(result.get("e_tag"), result.get("version"))


def _parse_azure(host: str, prefix: str) -> tuple[str | None, str, str]:
    """(account, container, prefix) from ``account.blob.core.windows.net/container/p`` or
    ``container/p`` (ClearML writes the former, obstore and fsspec the latter)."""
    if ".blob." in host or ".dfs." in host:
        account = host.split(".", 1)[0]
        container, _, rest = prefix.partition("/")
        if not container:
            raise ConfigError(f"azure remote {host}: missing container name in the URL")
        return account, container, rest
    if "@" in host:  # abfs://container@account.dfs.core.windows.net/path
        container, _, acct_host = host.partition("@")
        return acct_host.split(".", 1)[0], container, prefix
    return None, host, prefix


def _internal(key: str) -> bool:
    """Lock files and in-flight temp files of local compare-and-swap: not objects."""
    return key.startswith(_LOCK_DIR + "/") or bool(_TMP_NAME.fullmatch(key.rpartition("/")[2]))


def _bucket_missing(text: str) -> bool:
    return any(
        s in text
        for s in (
            "NoSuchBucket",
            "ContainerNotFound",
            "bucket does not exist",
            "The specified bucket does not exist",
        )
    )


def _first_line(text: str) -> str:
    """obstore's message in one line: its first line, minus the server's XML/JSON body
    (whose error code and message are appended instead) and the Rust debug dump (of which
    only the OS error, e.g. "Connection refused", is kept)."""
    head = text.split("\n\nDebug source:", 1)[0].strip().splitlines()
    line = re.sub(r":\s*(<\?xml[^>]*\?>|\{)\s*$", "", head[0] if head else text)
    extra = [
        m.group(1).strip().splitlines()[0]  # Azure appends "\nRequestId:...\nTime:..."
        for m in re.finditer(r"<(?:Code|Message)>\s*([^<]{1,200})<", text)
        if m.group(1).strip()
    ]
    extra += re.findall(r'message: "([^"]{1,120})"', text)[:1]
    extra += re.findall(r'"message"\s*:\s*"([^"]{1,200})"', text)[:1]
    if extra:
        line = f"{line} ({'; '.join(dict.fromkeys(extra))})"
    line = " ".join(line.split())  # one line, whatever the server sent
    return line if len(line) <= 500 else line[:500] + "..."


def _secret_values(opts: dict[str, str]) -> tuple[str, ...]:
    vals = [v for k, v in opts.items() if _SECRET_NAME.search(k)]
    vals += [
        v
        for k, v in os.environ.items()
        if k.startswith(("AWS_", "AZURE_", "GOOGLE_", "GCS_")) and _SECRET_NAME.search(k)
    ]
    return tuple(v for v in vals if v)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


def _scrub_url(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rpartition('@')[2]}{p.path}"  # no userinfo, no query
