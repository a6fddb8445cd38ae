"""Remote benchmarks: dsvc push / fetch against moto's S3 server on loopback.

    python benchmarks/bench_remote.py            # 2 GiB mixed + 100k small files
    python benchmarks/bench_remote.py --quick    # < 30 s smoke version

Measures, on the same server and the same bytes:

* baseline: plain parallel ``obstore.put`` / ``obstore.get`` of every file as one object
  (what the server accepts and serves with no dsvc in between);
* dsvc push (``Dataset.upload``) of a fresh version, MB/s of file bytes;
* fetch + materialize (``Dataset.get`` + ``get_local_copy``) into an empty store;
* push of many small files (packs, not one object per file);
* re-push of unchanged data (a child version with the same content).

moto is a Python server and is usually what bounds the numbers; that is why the
baseline is reported next to each dsvc figure. Workloads come from
``benchmarks/datagen.py`` (deterministic, cached under ``--workdir``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import datagen  # noqa: E402
from workloads import tree_summary  # noqa: E402

MiB, GiB = datagen.MiB, datagen.GiB
BUCKET = "dsvc-bench"


# ---------------------------------------------------------------------- server


def start_moto(workdir: Path) -> tuple[Any, str, dict[str, str]]:
    """moto's server on a free loopback port (via tests/servers.py when importable)."""
    try:
        import servers
    except ImportError:  # a checkout without tests/: start it ourselves
        servers = None
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if servers is not None:
        srv = servers.start_moto(log_dir)
        endpoint = f"http://{servers.HOST}:{srv.port}"
        servers.s3_create_bucket(endpoint, BUCKET)
        return srv, endpoint, servers.s3_options(endpoint)
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    opts = {
        "endpoint": endpoint,
        "allow_http": "true",
        "region": "us-east-1",
        "access_key_id": "bench",
        "secret_access_key": "bench-secret",
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
    ).create_bucket(Bucket=BUCKET)

    class _Proc:
        def stop(self) -> None:
            proc.terminate()
            proc.wait(10)

    return _Proc(), endpoint, opts


# ---------------------------------------------------------------------- workloads


def mixed_workload(workdir: Path, total: int) -> Path:
    """~70% incompressible files of mixed sizes, ~25% one CSV table, ~5% small files."""
    rnd = int(total * 0.70)
    csv = int(total * 0.25)
    small_n = max(200, int(total * 0.05) // (2500))
    sizes = []
    pattern = [64 * MiB, 16 * MiB, 4 * MiB, 1 * MiB, 300 * 1024]
    i = 0
    while sum(sizes) < rnd:
        sizes.append(min(pattern[i % len(pattern)], rnd - sum(sizes)))
        i += 1

    def build(d: Path) -> None:
        datagen.random_files(d / "images", sizes, seed=11)
        datagen.write_csv(d / "tables" / "table.csv", csv, seed=12)
        datagen.small_files(d / "small", small_n, 20, seed=13)

    return datagen.cached(
        workdir / f"mixed-{total}", {"total": total, "v": 1, "sizes": len(sizes)}, build
    )


def small_workload(workdir: Path, n: int) -> Path:
    return datagen.cached(
        workdir / f"small-{n}",
        {"n": n, "v": 1},
        lambda d: datagen.small_files(d, n, max(1, n // 1000), seed=21),
    )


# ---------------------------------------------------------------------- measurements


def baseline(opts: dict[str, str], src: Path, workers: int, scratch: Path) -> tuple[float, float]:
    """Seconds for a parallel obstore put of every file, and for getting them back to disk."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, prefix="baseline", config={**opts}, client_options={"allow_http": True})
    files = [Path(dp) / fn for dp, _, fns in os.walk(src) for fn in fns]
    keys = [f.relative_to(src).as_posix() for f in files]

    def put(i: int) -> None:
        size = files[i].stat().st_size
        obstore.put(store, keys[i], files[i], use_multipart=size > 64 * MiB, chunk_size=16 * MiB)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(len(files))))
    t_put = time.perf_counter() - t0

    out = scratch / "baseline-get"

    def get(i: int) -> None:
        dst = out / keys[i]
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "wb") as f:
            for chunk in obstore.get(store, keys[i]).stream(min_chunk_size=8 * MiB):
                f.write(chunk)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(get, range(len(files))))
    t_get = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    with ThreadPoolExecutor(workers) as pool:  # free moto's memory
        list(pool.map(lambda k: obstore.delete(store, k), keys))
    return t_put, t_get


def use_home(home: Path, url: str, opts: dict[str, str]) -> Any:
    from dsvc import registry
    from dsvc.remote.config import add_remote, credential_env_var, split_credentials

    shutil.rmtree(home, ignore_errors=True)
    os.environ["DSVC_HOME"] = str(home)
    store = registry.open_store()
    plain, creds = split_credentials(opts)  # credentials go in the environment, never the store
    for k, v in creds.items():
        os.environ[credential_env_var("origin", k)] = v
    add_remote(store, "origin", url, plain)
    return store


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 30 s")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dsvc-bench-remote"))
    ap.add_argument("--size-mb", type=int, default=None, help="mixed workload size")
    ap.add_argument("--small-n", type=int, default=None, help="number of small files")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="only generate, then wait")
    args = ap.parse_args()
    os.environ.setdefault("DSVC_QUIET", "1")
    total = (args.size_mb or (48 if args.quick else 2048)) * MiB
    small_n = args.small_n or (3_000 if args.quick else 100_000)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    src = mixed_workload(work, total)
    small = small_workload(work, small_n)
    n_files, n_bytes = tree_summary(src)
    print(
        f"workload: {n_files} files, {n_bytes / MiB:.0f} MiB mixed; {small_n} small files "
        f"(ready in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    srv, endpoint, opts = start_moto(work)
    rows: list[tuple[str, str, str, str]] = []
    try:
        from dsvc.dataset import Dataset

        t_bput, t_bget = baseline(opts, src, args.workers, work)
        mbs = n_bytes / 1e6
        print(
            f"baseline obstore: put {mbs / t_bput:.0f} MB/s, get {mbs / t_bget:.0f} MB/s",
            flush=True,
        )

        url = f"s3://{BUCKET}/dsvc-{int(time.time())}"
        use_home(work / "home-a", url, opts)
        ds = Dataset.create(dataset_name="mixed", dataset_project="bench")
        t_ingest, _ = timed(lambda: ds.add_files(str(src)))
        t_push, _ = timed(lambda: ds.upload(show_progress=False, max_workers=args.workers))
        t_fin, _ = timed(ds.finalize)
        print(f"ingest {t_ingest:.1f}s, push {t_push:.1f}s, finalize {t_fin:.2f}s", flush=True)

        child = Dataset.create(dataset_name="mixed", dataset_project="bench", parent_datasets=[ds])
        child.sync_folder(str(src))
        t_repush, _ = timed(lambda: child.upload(show_progress=False))
        t_refin, _ = timed(child.finalize)

        use_home(work / "home-b", url, opts)
        t_get, got = timed(lambda: Dataset.get(dataset_id=ds.id))
        t_copy, path = timed(lambda: got.get_local_copy(max_workers=args.workers))
        assert tree_summary(Path(path)) == (n_files, n_bytes)
        t_fetch = t_get + t_copy
        print(f"fetch+materialize {t_fetch:.1f}s", flush=True)

        use_home(work / "home-c", url, opts)
        sm = Dataset.create(dataset_name="small", dataset_project="bench")
        t_sm_ingest, _ = timed(lambda: sm.add_files(str(small)))
        t_sm_push, _ = timed(lambda: sm.upload(show_progress=False))
        sm.finalize()
        print(f"small files: ingest {t_sm_ingest:.1f}s, push {t_sm_push:.1f}s", flush=True)
        shutil.rmtree(path, ignore_errors=True)

        push_mbs, fetch_mbs = mbs / t_push, mbs / t_fetch
        base_put, base_get = mbs / t_bput, mbs / t_bget
        rows = [
            (
                "push (Dataset.upload)",
                f"{push_mbs:.0f} MB/s",
                f"obstore put {base_put:.0f} MB/s ({push_mbs / base_put:.2f}x)",
                "PASS" if push_mbs >= 150 or push_mbs * 2 >= base_put else "MISS",
                ">= 150 MB/s or within 2x of baseline",
            ),
            (
                "fetch + materialize",
                f"{fetch_mbs:.0f} MB/s",
                f"obstore get {base_get:.0f} MB/s ({fetch_mbs / base_get:.2f}x)",
                "PASS" if fetch_mbs >= 200 or fetch_mbs * 2 >= base_get else "MISS",
                ">= 200 MB/s or within 2x of baseline",
            ),
            (
                f"push {small_n} small files",
                f"{t_sm_push:.1f} s",
                "",
                "PASS" if t_sm_push <= 60 * small_n / 100_000 else "MISS",
                f"<= 60 s per 100k ({60 * small_n / 100_000:.1f} s here)",
            ),
            (
                "re-push unchanged",
                f"{t_repush:.2f} s",
                f"(+ finalize {t_refin:.2f} s)",
                "PASS" if t_repush <= 2 else "MISS",
                "<= 2 s",
            ),
        ]
    finally:
        srv.stop()
    print()
    print(
        f"{n_bytes / MiB:.0f} MiB mixed ({n_files} files), moto on loopback, {args.workers} workers"
    )
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    head = ("measure", "dsvc", "baseline", "result", "target")
    w = [max(a, len(b)) for a, b in zip(w, head)]
    print("  ".join(h.ljust(n) for h, n in zip(head, w)))
    for r in rows:
        print("  ".join(c.ljust(n) for c, n in zip(r, w)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
