"""Helpers for the remote end-to-end, concurrency and failure tests.

A "machine" is a fresh ``DSVC_HOME`` with the remote configured (``add_remote``), so one
test process can play several machines (``registry.open_store`` keeps one store per
home). For the strongest "other machine" semantics the tests run this file as a script
in a subprocess (``python tests/remote_helpers.py push '{...}'``), see :func:`main`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # running as a script from anywhere
    sys.path.insert(0, str(HERE.parent))

from dsvc import registry  # noqa: E402
from dsvc.remote import client  # noqa: E402
from dsvc.remote.backend import Backend  # noqa: E402
from dsvc.remote.config import (  # noqa: E402
    add_remote,
    credential_env_var,
    split_credentials,
)
from dsvc.store import Store  # noqa: E402

KiB = 1024
MiB = 1024 * KiB


# ---------------------------------------------------------------------- machines


def machine(monkeypatch: Any, home: Path, spec: dict[str, Any] | None) -> Store:
    """Switch this process to the store at ``home`` (created empty) with ``spec`` as the
    default remote ``origin`` (None: no remote)."""
    monkeypatch.setenv("DSVC_HOME", str(home))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    store = registry.open_store()
    if spec is not None and not store.get_config("remotes"):
        add_origin(store, spec, monkeypatch)
    return store


def add_origin(store: Store, spec: dict[str, Any], monkeypatch: Any = None) -> None:
    """Configure ``spec`` as remote ``origin``: plain options in the store, credentials
    in the environment (dsvc refuses to store them)."""
    plain, creds = split_credentials(spec.get("options"))
    for k, v in creds.items():
        var = credential_env_var("origin", k)
        if monkeypatch is not None:
            monkeypatch.setenv(var, v)
        else:
            os.environ[var] = v
    add_remote(store, "origin", spec["url"], plain)


def remote_of(store: Store) -> client.Remote:
    r = client.resolve(store, None, required=True)
    assert r is not None
    return r


def backend(spec: dict[str, Any]) -> Backend:
    """A separate client of the remote (not the cached one of any store)."""
    return Backend.from_url(spec["url"], spec["options"])


def remote_objects(spec: dict[str, Any], prefix: str = "") -> dict[str, int]:
    """``{key: size}`` of everything on the remote under ``prefix``."""
    return {i.key: i.size for i in backend(spec).list(prefix)}


# ---------------------------------------------------------------------- traffic


class Traffic:
    """Counts what one Backend sends and receives (wraps its methods in place)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.put: dict[str, int] = {}
        self.put_order: list[str] = []
        self.got: dict[str, int] = {}
        self.received = 0

    @property
    def pack_bytes_sent(self) -> int:
        return sum(n for k, n in self.put.items() if k.endswith(".pack"))

    @property
    def packs_sent(self) -> list[str]:
        return [k for k in self.put_order if k.endswith(".pack")]


@contextmanager
def count_traffic(b: Backend) -> Iterator[Traffic]:
    t = Traffic()
    orig_put, orig_range, orig_get = b.put, b.get_range, b.get

    def put(key: str, data: Any) -> Any:
        out = orig_put(key, data)
        with t.lock:
            t.put[key] = t.put.get(key, 0) + len(data)
            t.put_order.append(key)
        return out

    def get_range(key: str, start: int, length: int) -> bytes:
        data = orig_range(key, start, length)
        with t.lock:
            t.got[key] = t.got.get(key, 0) + len(data)
            t.received += len(data)
        return data

    def get(key: str) -> bytes:
        data = orig_get(key)
        with t.lock:
            t.got[key] = t.got.get(key, 0) + len(data)
            t.received += len(data)
        return data

    b.put, b.get_range, b.get = put, get_range, get  # type: ignore[method-assign]
    try:
        yield t
    finally:
        del b.put, b.get_range, b.get


# ---------------------------------------------------------------------- content


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def text_bytes(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [f"w{rng.randrange(5000)}" for _ in range(512)]
    out = bytearray()
    i = 0
    while len(out) < n:
        out += f"{i},{words[i % 512]},{rng.randrange(1 << 20)}\n".encode()
        i += 1
    return bytes(out[:n])


def mixed_files(seed: int = 0, scale: int = 1) -> dict[str, bytes]:
    """A small mixed tree: incompressible, compressible, multi-chunk, tiny, empty, nested."""
    files = {
        "big/random.bin": rand_bytes(1_500_000 * scale, seed),  # several chunks
        "big/text.csv": text_bytes(900_000 * scale, seed + 1),
        "empty.txt": b"",
        "tiny.txt": b"x",
        "unicode/h\u00e9llo w\u00f6rld.txt": "gr\u00fc\u00dfe\n".encode() * 100,
    }
    for i in range(12):
        files[f"many/d{i % 3}/f{i:02d}.dat"] = rand_bytes(20_000 + 997 * i, seed + 10 + i)
    files["many/d0/dup.dat"] = files["many/d1/f01.dat"]  # same content twice
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def read_tree(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def all_paths(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ---------------------------------------------------------------------- subprocesses


def run_script(
    cmd: str, args: dict[str, Any], *, home: Path, timeout: float = 60, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run :func:`main` in a fresh interpreter with ``DSVC_HOME=home``."""
    return subprocess.run(
        [sys.executable, str(Path(__file__)), cmd, json.dumps(args)],
        env=script_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def start_script(cmd: str, args: dict[str, Any], *, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__)), cmd, json.dumps(args)],
        env=script_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def script_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DSVC_REMOTE"}
    env["DSVC_HOME"] = str(home)
    env["DSVC_QUIET"] = "1"
    return env


def _slow_puts(delay: float) -> None:
    """Make every pack upload take ``delay`` seconds longer (to kill a push mid-way)."""
    orig = Backend.put

    def put(self: Backend, key: str, data: Any) -> Any:
        if key.startswith("packs/"):
            import time

            time.sleep(delay)
        return orig(self, key, data)

    Backend.put = put  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    """``push {"url", "options", "folder", "project", "name", "version", "chunk_mb",
    "put_delay", "stage_only"}``: create a version of ``folder`` and push it; prints the
    dataset id (and, with ``stage_only``, only creates the draft and uploads nothing)."""
    cmd, args = argv[0], json.loads(argv[1])
    from dsvc.dataset import Dataset

    store = registry.open_store()
    if not store.get_config("remotes"):
        add_origin(store, args)
    if args.get("put_delay"):
        _slow_puts(float(args["put_delay"]))
    if cmd == "push":
        ds = Dataset.create(
            dataset_name=args["name"],
            dataset_project=args["project"],
            dataset_version=args.get("version"),
        )
        ds.add_files(args["folder"])
        print(ds.id, flush=True)
        if args.get("stage_only"):
            return 0
        ds.upload(show_progress=False, chunk_size=args.get("chunk_mb"))
        ds.finalize()
        print("done", flush=True)
        return 0
    if cmd == "upload":  # resume the upload of an existing draft
        ds = Dataset.get(dataset_id=args["id"])
        ds.upload(show_progress=False, chunk_size=args.get("chunk_mb"))
        print("done", flush=True)
        return 0
    raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
