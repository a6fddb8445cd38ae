"""Small local stand-ins for the ClearML names that dataset scripts import besides
``Dataset``: ``Task`` and ``StorageManager``. A script written for ClearML runs after
``from clearml import Dataset, Task, StorageManager`` becomes
``from dsvc.compat import Dataset, Task, StorageManager``.

There is no server, so these do what makes sense locally (docs/coming-from-clearml.md,
"ClearML's example scripts"):

* ``Task.init`` creates a local task record (project, name, connected parameters,
  artifacts) in the store (``compat/task/<id>`` in the records db);
  ``task.connect(obj)`` records a copy and returns ``obj`` (nothing overrides it);
  ``task.upload_artifact(name, obj)`` keeps ``obj`` (msgpack-able values, numpy arrays,
  DataFrames); ``Task.get_task(task_id=...)`` finds a task again, or a dataset's task
  (``dataset._task``), whose artifacts are kept with the version.
* ``StorageManager.get_local_copy(url)`` downloads ``http(s)://``, ``s3://``,
  ``gs://`` and ``azure://`` objects through obstore into a cache under
  ``$DSVC_HOME/cache/storage/`` (a cached copy is used as is, as ClearML's cache is),
  and extracts ``.zip``/``.tar(.gz)`` archives next to it; local paths are returned as
  they are. ``StorageManager.upload_file`` writes a file to an object-store URL or
  folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgpack

from dsvc import registry
from dsvc.dataset import Dataset
from dsvc.errors import NotFoundError, UsageError
from dsvc.external import backend_for, download_url, is_url, list_links

__all__ = ["Dataset", "StorageManager", "Task"]

TASK_PREFIX = "compat/task/"
_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz")


# -- StorageManager -------------------------------------------------------------------


class StorageManager:
    """ClearML's ``StorageManager`` over obstore (downloads are cached per URL)."""

    @classmethod
    def cache_path(cls, remote_url: str) -> Path:
        """Where :meth:`get_local_copy` keeps the download of ``remote_url``: named as
        ClearML's cache names it (``<md5 of the url>.<last url part>``, clearml/storage/
        cache.py:109-112), so a file added from it gets the same dataset path."""
        name = unquote(remote_url.split("/")[-1]) or "download"
        digest = hashlib.md5(remote_url.encode()).hexdigest()
        return registry.open_store().home / "cache" / "storage" / f"{digest}.{name}"

    @classmethod
    def get_local_copy(
        cls,
        remote_url: str,
        cache_context: str | None = None,
        extract_archive: bool = True,
        name: str | None = None,
        force_download: bool = False,
    ) -> str | None:
        """A local path holding ``remote_url``: the cached download (fetched if absent or
        ``force_download``), or for an archive with ``extract_archive`` the folder it
        was extracted into. A local path or ``file://`` URL is returned as is."""
        url = str(remote_url)
        if not is_url(url) or url.startswith("file:"):
            local = unquote(urlsplit(url).path) if url.startswith("file:") else url
            return local if os.path.exists(local) else None
        target = cls.cache_path(url)
        if force_download or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _download(url, target)
        if extract_archive and target.name.lower().endswith(_ARCHIVES):
            return str(_extract(target, name))
        return str(target)

    @classmethod
    def download_file(
        cls,
        remote_url: str,
        local_folder: str | None = None,
        overwrite: bool = False,
        skip_zero_size_check: bool = False,
        silence_errors: bool = False,
    ) -> str | None:
        """Download ``remote_url`` into ``local_folder`` (default: the cache)."""
        src = cls.get_local_copy(remote_url, extract_archive=False)
        if src is None or local_folder is None:
            return src
        dst = Path(local_folder) / os.path.basename(src).split(".", 1)[-1]
        if dst.exists() and not overwrite:
            return str(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return str(dst)

    @classmethod
    def upload_file(
        cls,
        local_file: str,
        remote_url: str,
        wait_for_upload: bool = True,
        retries: int | None = None,
    ) -> str:
        """Write ``local_file`` to ``remote_url`` (an object-store URL or a folder path);
        returns ``remote_url``."""
        if urlsplit(remote_url).scheme in ("http", "https"):
            raise UsageError(f"cannot upload to {remote_url}: http(s) URLs are read-only here")
        backend, key = backend_for(registry.open_store(), str(remote_url))
        if not key:
            raise UsageError(f"cannot upload to {remote_url}: the URL names no object")
        backend.put_file(key, os.fspath(local_file))
        return remote_url

    @classmethod
    def exists_file(cls, remote_url: str) -> bool:
        """True when ``remote_url`` names one existing file or object."""
        try:
            found = list_links(registry.open_store(), str(remote_url))
        except NotFoundError:
            return False
        return len(found) == 1 and found[0][1].url.rstrip("/").endswith(
            os.path.basename(str(remote_url).rstrip("/"))
        )

    @classmethod
    def list(
        cls, remote_url: str, return_full_path: bool = False, with_metadata: bool = False
    ) -> list[Any]:
        """The files below ``remote_url``: relative paths, full URLs
        (``return_full_path``), or ``{"name", "size"}`` maps (``with_metadata``)."""
        found = list_links(registry.open_store(), str(remote_url))
        out: list[Any] = []
        for rel, link in found:
            name = link.url if return_full_path else "/".join(rel)
            out.append({"name": name, "size": link.size} if with_metadata else name)
        return out


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` (temp file, then rename: never a partial file)."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".part-", delete=False) as f:
        tmp = f.name
    try:
        download_url(registry.open_store(), url, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _extract(archive: Path, name: str | None) -> Path:
    """Extract ``archive`` once, next to it (ClearML: ``<file>_artifacts_archive_<name>``)."""
    out = archive.parent / f"{archive.name}_artifacts_archive_{name or archive.name}"
    if out.is_dir():
        return out
    tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=".extract-"))
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():  # nothing may land outside the folder
                    dest = (tmp / member).resolve()
                    if not dest.is_relative_to(tmp.resolve()):
                        raise UsageError(f"archive {archive} holds an unsafe path {member!r}")
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        try:
            os.rename(tmp, out)
        except OSError:  # another process extracted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -- Task -----------------------------------------------------------------------------


def _encode(obj: Any) -> Any:
    """An artifact or parameter value as msgpack-able data (DataFrames, numpy arrays)."""
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
        return {"__dataframe__": obj.to_dict(orient="split")}
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
        return {"__ndarray__": [obj.dtype.str, list(obj.shape), obj.tobytes(order="C")]}
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _decode(v: Any) -> Any:
    if isinstance(v, dict) and "__dataframe__" in v:
        import pandas as pd  # optional: only a stored DataFrame needs it

        d = v["__dataframe__"]
        return pd.DataFrame(d["data"], index=d["index"], columns=d["columns"])
    if isinstance(v, dict) and "__ndarray__" in v:
        import numpy as np  # optional: only a stored array needs it

        dtype, shape, data = v["__ndarray__"]
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
    return v


class _TaskArtifact:
    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self._value = value

    def get(self, force_download: bool = False, deserialization_function: Any = None) -> Any:
        return _decode(self._value)

    def __repr__(self) -> str:
        return f"Artifact({self.name!r})"


class Task:
    """A local ClearML ``Task``: parameters and artifacts kept in the store."""

    _current: Task | None = None

    def __init__(self, record: dict[str, Any]) -> None:
        self._rec = record

    # construction -------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        project_name: str | None = None,
        task_name: str | None = None,
        task_type: Any = None,
        **_: Any,
    ) -> Task:
        """Create a task (one per process, as ClearML: a second ``init`` returns it)."""
        if cls._current is not None:
            return cls._current
        rec = {
            "id": uuid.uuid4().hex,
            "project": project_name or "",
            "name": task_name or "",
            "created": time.time_ns(),
            "params": {},
            "artifacts": {},
        }
        task = cls(rec)
        task._save()
        cls._current = task
        return task

    @classmethod
    def current_task(cls) -> Task | None:
        return cls._current

    @classmethod
    def get_task(
        cls,
        task_id: str | None = None,
        project_name: str | None = None,
        task_name: str | None = None,
        **_: Any,
    ) -> Any:
        """A task by id (or project and name); a dataset's id gives that dataset's task
        (``dataset._task``), whose artifacts are the version's."""
        store = registry.open_store()
        if task_id:
            rec = store.get_record(TASK_PREFIX + task_id)
            if rec is not None:
                return cls(rec)
            try:
                return Dataset.get(dataset_id=task_id)._task
            except NotFoundError:
                raise NotFoundError(f"no task or dataset with id {task_id}") from None
        found = [
            r
            for _, r in store.iter_records(TASK_PREFIX)
            if (project_name is None or r["project"] == project_name)
            and (task_name is None or r["name"] == task_name)
        ]
        if not found:
            raise NotFoundError(f"no task {project_name}/{task_name} in the local store")
        return cls(max(found, key=lambda r: r["created"]))

    def _save(self) -> None:
        registry.open_store().put_record(TASK_PREFIX + self._rec["id"], self._rec)

    # what scripts use ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self._rec["id"])

    @property
    def name(self) -> str:
        return str(self._rec["name"])

    def get_project_name(self) -> str:
        return str(self._rec["project"])

    def connect(self, mutable: Any, name: str | None = None) -> Any:
        """Record a copy of ``mutable`` (a dict or an object's public attributes) and
        return it unchanged: there is no server to override the values from."""
        value = (
            mutable
            if isinstance(mutable, dict)
            else {k: v for k, v in vars(mutable).items() if not k.startswith("_")}
        )
        plain = msgpack.unpackb(
            msgpack.packb(_encode(value), use_bin_type=True, default=str), raw=False
        )
        section = name or "General"  # ClearML merges what is connected to one section
        self._rec["params"][section] = {**self._rec["params"].get(section, {}), **plain}
        self._save()
        return mutable

    def connect_configuration(
        self, configuration: Any, name: str | None = None, description: str | None = None
    ) -> Any:
        return self.connect(configuration, name=name or "Configuration")

    def get_parameters(self) -> dict[str, Any]:
        """``{"Section/key": value}`` of everything connected."""
        return {
            f"{section}/{k}": v
            for section, values in self._rec["params"].items()
            for k, v in (values.items() if isinstance(values, dict) else [])
        }

    def upload_artifact(
        self, name: str, artifact_object: Any, metadata: Any = None, **_: Any
    ) -> bool:
        """Keep ``artifact_object`` with the task (a file path keeps the file's bytes)."""
        obj = artifact_object
        if isinstance(obj, str | Path) and os.path.isfile(obj):
            obj = Path(obj).read_bytes()
        self._rec["artifacts"][str(name)] = _encode(obj)
        self._save()
        return True

    @property
    def artifacts(self) -> dict[str, _TaskArtifact]:
        return {n: _TaskArtifact(n, v) for n, v in self._rec["artifacts"].items()}

    def close(self) -> None:
        if Task._current is self:
            Task._current = None

    def mark_completed(self, **_: Any) -> None:
        """Nothing to tell a server."""
