"""Thousands of versions of one dataset (issue 11): lookups and numbering must not read
every record.

    python benchmarks/bench_versions.py                  # 10,000 versions, local + S3 (moto)
    python benchmarks/bench_versions.py --versions 2000 --no-s3
    python benchmarks/bench_versions.py --json out.json

Local store: one real finalized version, then ``--versions - 1`` more of the same
dataset (same project and name, versions ``1.0.1``, ``1.0.2``..., each a finalized record
of the same tree, written through the registry as ``Dataset.finalize`` leaves them).
Measured, each in this process (the call, not the interpreter's start):

* ``Dataset.create(project, name)``: a new draft, its version numbered (the bump);
* ``Dataset.create(project, name, version=...)``: an explicit version;
* ``Dataset.get(project, name)``: the highest version.

S3 (moto, started through tests/servers.py): the first version is pushed; the others
are published as a remote holds them after as many pushes (``datasets/<id>`` records
and one ref listing every version). Then, in a fresh store that knows nothing:

* the first ``Dataset.get(project, name)`` (targets: <= 10 s), and the next ones (<= 1 s).

Targets (issue 11): local calls <= 0.3 s each. ``run(versions, s3)`` returns the figures
as a dict, for benchmarks/bench_scale.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

if TYPE_CHECKING:
    from dsvc.record import Record

PROJECT, NAME = "bench", "many-versions"
BUCKET = "dsvc-bench-versions"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _first_version(src: Path) -> Any:
    from dsvc.dataset import Dataset

    src.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (src / f"f{i}.txt").write_bytes(b"row %d\n" % i * 100)
    ds = Dataset.create(dataset_name=NAME, dataset_project=PROJECT, dataset_version="1.0.0")
    ds.add_files(str(src))
    return ds


def _synthetic_records(first: Record, n: int) -> list[Record]:
    """``n`` finalized records of the same dataset, like ``first`` (its tree and commit),
    versions 1.0.1, 1.0.2, ..."""
    out = []
    t0 = first.created or time.time_ns()
    for i in range(1, n + 1):
        t = t0 + i * 1000
        out.append(
            first.replace(
                id=uuid.uuid4().hex,
                version=f"1.0.{i}",
                created=t,
                modified=t,
                finalized=t,
                parents=[],
                parent_commits=[],
                uploaded_tree=None,
                remote=None,
            )
        )
    return out


def bench_local(versions: int, work: Path) -> dict[str, Any]:
    from dsvc import registry as reg
    from dsvc.dataset import Dataset

    os.environ["DSVC_HOME"] = str(work / "home")
    os.environ.pop("DSVC_REMOTE", None)
    ds = _first_version(work / "src")
    ds.finalize()
    store = reg.open_store()
    first = reg.require(store, ds.id)
    t_setup, _ = _timed(
        lambda: [reg.insert(store, r) for r in _synthetic_records(first, versions - 1)]
    )
    out: dict[str, Any] = {"versions": versions, "setup_s": round(t_setup, 2)}
    t, d = _timed(lambda: Dataset.create(dataset_name=NAME, dataset_project=PROJECT))
    assert d.version == f"1.0.{versions}", d.version  # the bump of the highest version
    out["create_bump_s"] = round(t, 4)
    t, d2 = _timed(
        lambda: Dataset.create(dataset_name=NAME, dataset_project=PROJECT, dataset_version="9.9")
    )
    out["create_explicit_version_s"] = round(t, 4)
    reg.remove(store, d.id)
    reg.remove(store, d2.id)
    t, got = _timed(lambda: Dataset.get(dataset_project=PROJECT, dataset_name=NAME))
    assert got.version == f"1.0.{versions - 1}", got.version
    out["get_s"] = round(t, 4)
    t, got = _timed(lambda: Dataset.get(dataset_project=PROJECT, dataset_name=NAME))
    out["get_again_s"] = round(t, 4)
    reg.close_all()
    return out


def bench_s3(versions: int, work: Path) -> dict[str, Any]:
    import msgpack
    import servers

    from dsvc import registry as reg
    from dsvc.dataset import Dataset
    from dsvc.remote.backend import Backend
    from dsvc.remote.config import add_remote, credential_env_var, split_credentials

    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    srv = servers.start_moto(log_dir)
    try:
        endpoint = f"http://{servers.HOST}:{srv.port}"
        servers.s3_create_bucket(endpoint, BUCKET)
        options = servers.s3_options(endpoint)
        url = f"s3://{BUCKET}/versions"
        plain, creds = split_credentials(options)
        for k, v in creds.items():
            os.environ[credential_env_var("origin", k)] = v

        def machine(home: Path) -> Any:
            os.environ["DSVC_HOME"] = str(home)
            store = reg.open_store()
            add_remote(store, "origin", url, plain)
            return store

        store = machine(work / "pusher")
        ds = _first_version(work / "src-s3")
        ds.finalize(auto_upload=True)
        first = reg.require(store, ds.id)
        recs = _synthetic_records(first, versions - 1)
        be = Backend.from_url(url, options)
        t0 = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor

        def put(r: Record) -> None:
            be.put(f"datasets/{r.id}", msgpack.packb(r.published(), use_bin_type=True))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, recs))
        from dsvc.remote.refs import _ref_key

        key = _ref_key(PROJECT, NAME)
        doc = msgpack.unpackb(be.get(key), raw=False)
        doc["versions"].update({r.id: r.version for r in recs})
        be.put(key, msgpack.packb(doc, use_bin_type=True))
        out: dict[str, Any] = {"versions": versions, "setup_s": round(time.perf_counter() - t0, 1)}
        reg.close_all()

        machine(work / "fresh")
        t, got = _timed(lambda: Dataset.get(dataset_project=PROJECT, dataset_name=NAME))
        assert got.version == f"1.0.{versions - 1}", got.version
        out["first_get_s"] = round(t, 3)
        nxt = []
        for _ in range(3):
            t, got = _timed(lambda: Dataset.get(dataset_project=PROJECT, dataset_name=NAME))
            nxt.append(round(t, 3))
        out["next_get_s"] = nxt
        reg.close_all()
        return out
    finally:
        srv.stop()


def run(versions: int = 10_000, s3: bool = True, workdir: Path | None = None) -> dict[str, Any]:
    """Both measurements; a scratch folder under ``workdir`` (default: a temp dir) is
    removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="dsvc-bench-versions-", dir=workdir))
    old = {k: os.environ.get(k) for k in ("DSVC_HOME", "DSVC_REMOTE", "DSVC_FSYNC")}
    try:
        out = {"local": bench_local(versions, work / "local")}
        if s3:
            out["s3"] = bench_s3(versions, work / "s3")
        return out
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--no-s3", action="store_true", help="local store only")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    out = run(a.versions, not a.no_s3, a.workdir)
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
