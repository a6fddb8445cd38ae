"""Where the local store's physical writes come from (issue 11, "writes without
amplification"): each mode runs in a child process and reports the ``write_bytes``
(minus ``cancelled_write_bytes``) of its ``/proc/self/io`` against the bytes it stored.

Modes:

* ``lmdb-sync``: a bare py-lmdb loop, 256 KiB random values under random 16-byte keys,
  one commit per 8 MiB, ``sync=True, metasync=False`` (the store's default durability);
* ``lmdb-nosync``: the same with ``sync=False`` (no fsync at all);
* ``lmdb-writemap``: ``sync=True`` with ``MDB_WRITEMAP`` (also reports peak RSS);
* ``pwrite``: the same bytes appended with ``pwrite`` and ``fdatasync`` every 8 MiB;
* ``dsvc``: ``ingest_path`` of a folder of incompressible files into a new store;
* ``small``: ``ingest_path`` of N files of 1-4 KiB (compact small values), reporting the
  store's used bytes (``Store.used_bytes``) next to restic's repository on the same files.

Usage::

    nice python benchmarks/bench_store_writes.py [--mb 512] [--small 20000] [--modes ...]

Numbers are in docs/performance.md ("Local store write amplification").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALUE = 256 << 10
COMMIT = 8 << 20


def _io() -> int:
    got = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            got[k] = int(v)
    return got["write_bytes"] - got.get("cancelled_write_bytes", 0)


def _lmdb(path: str, total: int, **kw: object) -> int:
    import lmdb

    env = lmdb.open(path, map_size=1 << 40, **kw)
    n = 0
    while n < total:
        with env.begin(write=True) as txn:
            for _ in range(COMMIT // VALUE):
                txn.put(os.urandom(16), os.urandom(VALUE))
                n += VALUE
    env.sync(True)
    env.close()
    return n


def _pwrite(path: str, total: int) -> int:
    fd = os.open(os.path.join(path, "data"), os.O_WRONLY | os.O_CREAT, 0o644)
    off = 0
    while off < total:
        for _ in range(COMMIT // VALUE):
            off += os.pwrite(fd, os.urandom(VALUE), off)
        os.fdatasync(fd)
    os.close(fd)
    return off


def _make_files(folder: Path, total: int, size: int = 4 << 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(total // size):
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))


def _make_small(folder: Path, n: int) -> None:
    import random

    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghij klmnop\n") for _ in range(6)) for _ in range(2000)]
    for i in range(n):
        d = folder / f"d{i // 1000:03d}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(1024, 4097)
        out = bytearray()
        while len(out) < size:  # text-like: compressible, like most small files
            out += rng.choice(words)
        (d / f"f{i:06d}.txt").write_bytes(bytes(out[:size]))


def child(mode: str, work: str, total: int) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    out: dict[str, object] = {"mode": mode}
    store_dir = os.path.join(work, "store")
    os.makedirs(store_dir, exist_ok=True)
    t0 = time.perf_counter()
    before = _io()
    if mode == "lmdb-sync":
        stored = _lmdb(store_dir, total, sync=True, metasync=False)
    elif mode == "lmdb-nosync":
        stored = _lmdb(store_dir, total, sync=False, metasync=False)
    elif mode == "lmdb-writemap":
        stored = _lmdb(store_dir, total, sync=True, metasync=False, writemap=True)
    elif mode == "pwrite":
        stored = _pwrite(store_dir, total)
    elif mode in ("dsvc", "small"):
        from dsvc.ingest import ingest_path
        from dsvc.store import Store

        src = os.path.join(work, "src")
        before = _io()  # the source files were written by the parent
        t0 = time.perf_counter()
        s = Store(store_dir)
        entries, _ = ingest_path(s, src)
        stored = s.used_bytes()
        out["files"] = len(entries)
        s.close()
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["stored"] = stored
    out["write_bytes"] = _io() - before
    out["amplification"] = round(out["write_bytes"] / max(1, stored), 2)  # type: ignore[operator]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return out


def restic_size(src: str, work: str) -> tuple[int, float] | None:
    """Bytes of a restic repository holding ``src`` and the seconds its ``backup``
    took (None when restic is missing)."""
    if shutil.which("restic") is None:
        return None
    repo = os.path.join(work, "restic")
    env = {**os.environ, "RESTIC_PASSWORD": "x", "RESTIC_REPOSITORY": repo}
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["restic", "backup", "-q", src], env=env, check=True, capture_output=True)
    took = time.perf_counter() - t0
    return sum(p.stat().st_size for p in Path(repo).rglob("*") if p.is_file()), took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=512, help="MiB written per mode")
    ap.add_argument("--small", type=int, default=20000, help="files of 1-4 KiB (mode small)")
    ap.add_argument(
        "--modes", nargs="*", default=["lmdb-sync", "lmdb-nosync", "lmdb-writemap", "pwrite",
                                       "dsvc", "small"],
    )
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]))))
        return 0
    total = a.mb << 20
    for mode in a.modes:
        work = tempfile.mkdtemp(prefix=f"dsvc-bsw-{mode}-")
        try:
            if mode == "dsvc":
                _make_files(Path(work) / "src", total)
            elif mode == "small":
                _make_small(Path(work) / "src", a.small)
            os.sync()
            got = subprocess.run(
                [sys.executable, __file__, "--child", mode, work, str(total)],
                check=True, capture_output=True, text=True, env={**os.environ,
                                                                "PYTHONPATH": str(ROOT)},
            )
            row = json.loads(got.stdout.strip().splitlines()[-1])
            peer = restic_size(os.path.join(work, "src"), work) if mode in ("dsvc", "small") else None
            if peer is not None:  # side by side: restic backs up the same files
                row["restic_bytes"], took = peer
                row["restic_seconds"] = round(took, 2)
                row["rate_vs_restic"] = round(took / row["seconds"], 2)
                row["size_vs_restic"] = round(row["stored"] / row["restic_bytes"], 2)
            print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
