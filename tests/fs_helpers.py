"""Helpers for the streaming tests (tests/test_fs*.py): publish a version from one
"machine" (a DSVC_HOME) to a remote, then read it from a fresh store that has only the
remote configured, counting what crosses the wire."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from remote_helpers import machine

from dsvc.dataset import Dataset
from dsvc.fs import DsvcFileSystem
from dsvc.remote.backend import Backend

PROJECT = "team/vision"  # a ClearML subproject: percent-encoded in URLs
NAME = "data"
ROOT = "team%2Fvision/data"


def big_bytes(n: int = 3 << 20, seed: int = 7) -> bytes:
    """Random bytes: several chunks with the default chunker (256 KiB..4 MiB, avg 512 KiB)."""
    return random.Random(seed).randbytes(n)


def sample_files() -> dict[str, bytes]:
    return {
        "a.csv": b"x,y\n1,2\n3,4\n",
        "big.bin": big_bytes(),
        "d/e/f.txt": b"hello",
        "d/g.txt": b"second file in d",
        "empty": b"",
    }


def publish(
    monkeypatch: Any,
    home: Path,
    spec: dict[str, Any] | None,
    files: dict[str, bytes],
    *,
    project: str = PROJECT,
    name: str = NAME,
    version: str | None = None,
) -> Dataset:
    """Create, upload and finalize a version holding ``files`` from the store at ``home``
    (with ``spec`` as its default remote, if any)."""
    machine(monkeypatch, home, spec)
    src = home.parent / f"src-{name}-{version or 'x'}-{random.getrandbits(32):08x}"
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    ds = Dataset.create(dataset_project=project, dataset_name=name, dataset_version=version)
    ds.add_files(str(src))
    if spec is not None:
        ds.upload(show_progress=False)
    ds.finalize()
    return ds


def fresh_fs(home: Path, spec: dict[str, Any], **kw: Any) -> DsvcFileSystem:
    """A filesystem on an empty store with only the remote, all through storage_options."""
    return DsvcFileSystem(
        home=str(home),
        remote=spec["url"],
        remote_options=dict(spec["options"]),
        skip_instance_cache=True,
        **kw,
    )


class Wire:
    """Requests and bytes one Backend sent to its object store."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.bytes = 0
        self.pack_bytes = 0

    def add(self, op: str, key: str, n: int) -> None:
        with self.lock:
            self.requests.append((op, key))
            self.bytes += n
            if key.endswith(".pack"):
                self.pack_bytes += n

    def pack_reads(self) -> int:
        return sum(1 for _, k in self.requests if k.endswith(".pack"))


@contextmanager
def wire(b: Backend) -> Iterator[Wire]:
    """Count every request of ``b`` (get, get_range, get_versioned, head, list)."""
    w = Wire()
    orig = {n: getattr(b, n) for n in ("get", "get_range", "get_versioned", "head", "list")}

    def get(key: str, **kw: Any) -> bytes:
        data = orig["get"](key, **kw)
        w.add("get", key, len(data))
        return data

    def get_range(key: str, start: int, length: int, **kw: Any) -> bytes:
        data = orig["get_range"](key, start, length, **kw)
        w.add("get_range", key, len(data))
        return data

    def get_versioned(key: str, **kw: Any) -> Any:
        got = orig["get_versioned"](key, **kw)
        w.add("get", key, len(got[0]) if got else 0)
        return got

    def head(key: str) -> Any:
        w.add("head", key, 0)
        return orig["head"](key)

    def list_(prefix: str = "") -> Any:
        w.add("list", prefix, 0)
        return orig["list"](prefix)

    b.get, b.get_range, b.get_versioned, b.head, b.list = (  # type: ignore[method-assign]
        get,
        get_range,
        get_versioned,
        head,
        list_,
    )
    try:
        yield w
    finally:
        for n in orig:
            delattr(b, n)
