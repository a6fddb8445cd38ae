"""Streaming reads (issue 15): ``dsvc://`` through ``DsvcFileSystem`` and ``Dataset.open``,
from a fresh store that has only the remote configured, and from a local store.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_stream.py [--size BYTES] [--quick]
        [--remotes s3,folder] [--dvc /tmp/dvcenv/bin/python] [--json out.json]

The version: one big file of half ``--size`` (``big.bin``) and 1 MiB files for the other
half (``files/f00000.bin`` ...), incompressible (``datagen``), published to a remote (moto
S3 on loopback and/or a folder). For each remote, every row starts from an empty store
with only the remote in ``storage_options`` (unless it says "local"):

* ``one_1MiB``: open one 1 MiB file and read it: time to first byte (``read(1)``), the
  whole read, pack bytes and requests (target: <= 2 MiB of packs, plus the metadata of
  the path's trees).
* ``random_4KiB``: 4 KiB reads at 20 random offsets of the big file, each on a fresh
  store: chunks fetched per read (target <= 2) and the median time per read.
* ``stream_all``: every file read once, sequentially (1 MiB ``read`` calls): MB/s, the
  requests, and the physical bytes written (chunks are kept in the store; no file copy).
  Target: >= 80% of ``local_copy``'s rate.
* ``stream_all_threads``: the same on a fresh store, 4 files at a time (a thread pool, as
  DataLoader workers would): per-file request latency overlaps.
* ``second_pass``: the same files again through the same filesystem: requests (target 0).
* ``local_copy``: ``Dataset.get(...).get_local_copy()`` of the version on a fresh store.
* ``dataset_open``: ``Dataset.open(path).read()`` of one 1 MiB file, fresh store.
* ``local_*``: the same reads from the store that made the version (everything local).
* ``dvc_*`` (folder remote, when ``--dvc`` names a Python with dvc installed): DVC's
  ``DVCFileSystem`` on a fresh clone of a git-less DVC repo whose remote is a folder,
  reading the same files: one 1 MiB file and every file. Ratio dsvc/DVC.

Counts come from wrapping the remote backend's read methods (every request and its
bytes; ``.pack`` keys are pack bytes, the rest metadata). ``--quick`` (64 MB, folder
remote only) runs in seconds and is a test of the harness, not of speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # servers.py (moto) when present

import datagen  # noqa: E402

MiB = datagen.MiB
MB = 1_000_000
PROJECT = "stream"
NAME = "data"
READ = 1 * MiB
RANDOM_READS = 20
THREADS = 4


# -- counting requests ------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.pack_requests = 0
        self.pack_bytes = 0
        self.meta_bytes = 0

    def add(self, key: str, n: int) -> None:
        with self.lock:
            self.requests += 1
            if key.endswith(".pack"):
                self.pack_requests += 1
                self.pack_bytes += n
            else:
                self.meta_bytes += n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "requests": self.requests,
                "pack_requests": self.pack_requests,
                "pack_bytes": self.pack_bytes,
                "meta_bytes": self.meta_bytes,
            }

    def since(self, before: dict[str, int]) -> dict[str, int]:
        now = self.snapshot()
        return {k: now[k] - before[k] for k in now}


COUNT = Counter()


def count_backend_reads() -> None:
    """Wrap every read method of the remote backend class: all requests pass here."""
    from dsvc.remote.backend import Backend

    def sized(v: Any) -> int:
        if v is None:
            return 0
        if isinstance(v, tuple):
            return len(v[0])
        if isinstance(v, list):
            return sum(len(x) for x in v)
        return len(v) if isinstance(v, bytes | bytearray | memoryview) else 0

    def wrap(name: str) -> None:
        orig = getattr(Backend, name)

        def method(self: Any, key: str = "", *a: Any, **kw: Any) -> Any:
            out = orig(self, key, *a, **kw)
            COUNT.add(key, sized(out))
            return out

        setattr(Backend, name, method)

    for n in ("get", "get_range", "get_ranges", "get_versioned", "head", "list"):
        wrap(n)


#: the moto server process of the current remote (its CPU is counted as ``server_cpu_s``)
SERVER_PID: list[int] = []


def cpu_now() -> dict[str, float]:
    """User and system CPU seconds of this process (every thread) and of the moto server."""
    t = os.times()
    out = {"user_s": t.user, "sys_s": t.system, "server_cpu_s": 0.0}
    for pid in SERVER_PID:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            out["server_cpu_s"] += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return out


def cpu_since(before: dict[str, float]) -> dict[str, float]:
    now = cpu_now()
    return {k: now[k] - before[k] for k in now}


def io_written() -> int:
    with open("/proc/self/io") as f:
        d = {k: int(v) for k, v in (ln.split(":") for ln in f)}
    return d["write_bytes"] - d.get("cancelled_write_bytes", 0)


# -- setup ------------------------------------------------------------------------------


def make_data(work: Path, size: int) -> Path:
    big = size // 2
    n_small = max(1, (size - big) // MiB)

    def build(root: Path) -> None:
        datagen.write_random_file(root / "big.bin", big, seed=11)
        for i in range(n_small):
            datagen.write_random_file(root / "files" / f"f{i:05d}.bin", MiB, seed=1000 + i)

    return datagen.cached(work / f"stream-{size}", {"size": size, "v": 1}, build)


def use_home(home: Path, url: str | None, opts: dict[str, str]) -> Any:
    from dsvc import registry
    from dsvc.remote.config import add_remote, credential_env_var, split_credentials

    registry.close_all()
    shutil.rmtree(home, ignore_errors=True)
    os.environ["DSVC_HOME"] = str(home)
    store = registry.open_store()
    if url is not None:
        plain, creds = split_credentials(opts)
        for k, v in creds.items():
            os.environ[credential_env_var("origin", k)] = v
        add_remote(store, "origin", url, plain)
    return store


def publish(home: Path, url: str, opts: dict[str, str], data: Path) -> tuple[str, float]:
    from dsvc.dataset import Dataset

    use_home(home, url, opts)
    t = time.perf_counter()
    ds = Dataset.create(dataset_name=NAME, dataset_project=PROJECT)
    ds.add_files(str(data))
    ds.upload(show_progress=False)
    ds.finalize()
    return ds.id, time.perf_counter() - t


def fresh_fs(home: Path, url: str | None, opts: dict[str, str]) -> Any:
    from dsvc import registry
    from dsvc.fs import DsvcFileSystem

    registry.close_all()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    kw: dict[str, Any] = {"home": str(home), "skip_instance_cache": True}
    if url is not None:
        kw.update(remote=url, remote_options=dict(opts))
    return DsvcFileSystem(**kw)


# -- rows ---------------------------------------------------------------------------------


def url_of(rel: str) -> str:
    return f"dsvc://{PROJECT}/{NAME}/{rel}"


def read_one(fs: Any, rel: str) -> dict[str, Any]:
    before = COUNT.snapshot()
    t = time.perf_counter()
    with fs.open(url_of(rel), "rb") as f:
        first = f.read(1)
        ttfb = time.perf_counter() - t
        rest = f.read()
    wall = time.perf_counter() - t
    n = len(first) + len(rest)
    return {"ttfb_s": ttfb, "wall_s": wall, "bytes": n, **COUNT.since(before)}


def random_reads(home: Path, url: str | None, opts: dict[str, str], size: int) -> dict[str, Any]:
    rng = random.Random(5)
    times, chunks, packs = [], [], []
    for _ in range(RANDOM_READS):
        fs = fresh_fs(home, url, opts) if url is not None else fs_local(home)
        fs.info(url_of("big.bin"))  # metadata first: the row times the data read
        off = rng.randrange(0, size - 4096)
        before = COUNT.snapshot()
        st0 = fs.reader.stats.remote_chunks + fs.reader.stats.local_chunks
        t = time.perf_counter()
        with fs.open(url_of("big.bin"), "rb") as f:
            f.seek(off)
            got = f.read(4096)
        times.append(time.perf_counter() - t)
        assert len(got) == 4096
        chunks.append(fs.reader.stats.remote_chunks + fs.reader.stats.local_chunks - st0)
        packs.append(COUNT.since(before)["pack_bytes"])
    return {
        "median_s": statistics.median(times),
        "max_s": max(times),
        "max_chunks": max(chunks),
        "max_pack_bytes": max(packs),
        "reads": RANDOM_READS,
    }


_local_homes: dict[str, Any] = {}


def fs_local(home: Path) -> Any:
    from dsvc.fs import DsvcFileSystem

    return DsvcFileSystem(home=str(home), skip_instance_cache=True)


def stream_all(fs: Any, files: list[str]) -> dict[str, Any]:
    """A find-then-open loop: list the version, read every file in that order (the
    filesystem reads ahead across the found files once they are opened in order)."""
    before = COUNT.snapshot()
    w0 = io_written()
    c0 = cpu_now()
    total = 0
    t = time.perf_counter()
    found = fs.find(url_of(""))
    assert [n.split("/", 2)[2] for n in found] == sorted(files), "find lists other files"
    for name in found:
        with fs.open(name, "rb") as f:
            while True:
                b = f.read(READ)
                if not b:
                    break
                total += len(b)
    wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "bytes": total,
        "MBps": total / MB / wall,
        "write_bytes": io_written() - w0,
        **cpu_since(c0),
        **COUNT.since(before),
    }


def stream_all_threads(fs: Any, files: list[str], threads: int) -> dict[str, Any]:
    """Every file once, ``threads`` files at a time (as DataLoader workers or a thread
    pool would read them): per-file request latency overlaps."""
    from concurrent.futures import ThreadPoolExecutor

    def read(rel: str) -> int:
        n = 0
        with fs.open(url_of(rel), "rb") as f:
            while True:
                b = f.read(READ)
                if not b:
                    return n
                n += len(b)

    before = COUNT.snapshot()
    w0 = io_written()
    t = time.perf_counter()
    fs.find(url_of(""))  # lists the version: its files are the order read ahead in
    # the big file first: it is read sequentially while the small ones go in parallel
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, sorted(files)))
    wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "bytes": total,
        "MBps": total / MB / wall,
        "write_bytes": io_written() - w0,
        "threads": threads,
        **COUNT.since(before),
    }


def local_copy(home: Path, url: str, opts: dict[str, str]) -> dict[str, Any]:
    from dsvc.dataset import Dataset

    use_home(home, url, opts)
    before = COUNT.snapshot()
    w0 = io_written()
    c0 = cpu_now()
    t = time.perf_counter()
    path = Dataset.get(dataset_project=PROJECT, dataset_name=NAME).get_local_copy()
    wall = time.perf_counter() - t
    cpu = cpu_since(c0)
    n = sum(p.stat().st_size for p in datagen.list_files(path))
    return {
        "wall_s": wall,
        "bytes": n,
        "MBps": n / MB / wall,
        "write_bytes": io_written() - w0,
        **cpu,
        **COUNT.since(before),
    }


def dataset_open(home: Path, url: str, opts: dict[str, str], rel: str) -> dict[str, Any]:
    from dsvc.dataset import Dataset

    use_home(home, url, opts)
    before = COUNT.snapshot()
    t = time.perf_counter()
    ds = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
    with ds.open(rel) as f:
        first = f.read(1)
        ttfb = time.perf_counter() - t
        n = len(first) + len(f.read())
    return {"ttfb_s": ttfb, "wall_s": time.perf_counter() - t, "bytes": n, **COUNT.since(before)}


# -- DVC --------------------------------------------------------------------------------

DVC_SCRIPT = r"""
import json, sys, time
from dvc.api import DVCFileSystem
repo, step, *rels = sys.argv[1:]
fs = DVCFileSystem(repo)
out = {}
t = time.perf_counter()
if step == "one":
    with fs.open("data/" + rels[0], "rb") as f:
        first = f.read(1)
        out["ttfb_s"] = time.perf_counter() - t
        n = len(first) + len(f.read())
else:
    n = 0
    for rel in rels:
        with fs.open("data/" + rel, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                n += len(b)
out["wall_s"] = time.perf_counter() - t
out["bytes"] = n
print(json.dumps(out))
"""


def dvc_rows(dvc_python: str, work: Path, data: Path, files: list[str], one: str) -> dict:
    dvc = str(Path(dvc_python).parent / "dvc")
    root = work / "dvc"
    shutil.rmtree(root, ignore_errors=True)
    repo, remote = root / "repo", root / "remote"
    repo.mkdir(parents=True)
    run = lambda *a, cwd=repo: subprocess.run(  # noqa: E731
        [dvc, *map(str, a)], cwd=cwd, check=True, capture_output=True, text=True
    )
    run("init", "--no-scm")
    shutil.copytree(data, repo / "data")
    run("add", "data")
    run("remote", "add", "-d", "r", remote)
    run("push")
    clone = root / "clone"
    clone.mkdir()
    run("init", "--no-scm", cwd=clone)
    shutil.copy(repo / "data.dvc", clone / "data.dvc")
    shutil.copy(repo / ".dvc" / "config", clone / ".dvc" / "config")
    script = root / "read.py"
    script.write_text(DVC_SCRIPT)
    out = {}
    for step, rels in (("one", [one]), ("all", files)):
        # a fresh clone for each: nothing in its cache
        shutil.rmtree(clone / ".dvc" / "cache", ignore_errors=True)
        shutil.rmtree(clone / ".dvc" / "tmp", ignore_errors=True)
        p = subprocess.run(
            [dvc_python, str(script), str(clone), step, *rels],
            check=True,
            capture_output=True,
            text=True,
        )
        out[step] = json.loads(p.stdout.strip().splitlines()[-1])
    out["version"] = run("--version").stdout.strip()
    shutil.rmtree(root, ignore_errors=True)
    return out


def cpu_text(r: dict[str, Any]) -> str:
    """Wall and CPU of a row: ``wall 12.3 s, user 8.1 + sys 2.0 s, server 5.5 s``."""
    return (
        f"wall {r['wall_s']:.1f} s, user {r['user_s']:.1f} + sys {r['sys_s']:.1f} s, "
        f"server {r['server_cpu_s']:.1f} s"
    )


# -- main -----------------------------------------------------------------------------------


def bench_remote(
    kind: str, work: Path, data: Path, size: int, files: list[str], pairs: int = 0
) -> dict:
    """Every row on one remote; with ``pairs``, only ``stream_all`` then ``local_copy``
    (fresh stores), ``pairs`` times back to back: their ratio, with less else running."""
    srv = None
    if kind == "s3":
        from bench_remote import BUCKET, start_moto

        srv, _endpoint, opts = start_moto(work)
        url = f"s3://{BUCKET}/stream"
        SERVER_PID[:] = [srv.proc.pid] if hasattr(srv, "proc") else []
    else:
        remote = work / "remote-folder"
        shutil.rmtree(remote, ignore_errors=True)
        url, opts = f"file://{remote}", {}
    res: dict[str, Any] = {}
    try:
        did, pub_s = publish(work / "home-src", url, opts, data)
        res["publish_s"] = pub_s
        for i in range(pairs):
            st = stream_all(fresh_fs(work / "home-fresh", url, opts), files)
            cp = local_copy(work / "home-copy", url, opts)
            shutil.rmtree(work / "home-copy", ignore_errors=True)
            res[f"pair{i}"] = {"stream_all": st, "local_copy": cp, "load": os.getloadavg()[0]}
            print(
                f"{kind}: stream {st['MBps']:.0f} MB/s ({st['requests']} requests, "
                f"{cpu_text(st)}), get_local_copy {cp['MBps']:.0f} MB/s ({cp['requests']} "
                f"requests, {cpu_text(cp)}): {st['MBps'] / cp['MBps'] * 100:.0f}% (load "
                f"{os.getloadavg()[0]:.1f})",
                file=sys.stderr,
            )
        if pairs:
            return res
        one = "files/f00000.bin"
        fresh = work / "home-fresh"
        res["one_1MiB"] = read_one(fresh_fs(fresh, url, opts), one)
        big_size = (data / "big.bin").stat().st_size
        res["random_4KiB"] = random_reads(fresh, url, opts, big_size)
        fs = fresh_fs(fresh, url, opts)
        res["stream_all"] = stream_all(fs, files)
        res["second_pass"] = stream_all(fs, files)
        res["stream_all_threads"] = stream_all_threads(fresh_fs(fresh, url, opts), files, THREADS)
        res["local_copy"] = local_copy(work / "home-copy", url, opts)
        shutil.rmtree(work / "home-copy", ignore_errors=True)
        res["stream_vs_local_copy"] = res["stream_all"]["MBps"] / res["local_copy"]["MBps"]
        res["threads_vs_local_copy"] = res["stream_all_threads"]["MBps"] / res["local_copy"]["MBps"]
        res["dataset_open"] = dataset_open(work / "home-open", url, opts, one)
        shutil.rmtree(work / "home-open", ignore_errors=True)
        if kind == "folder" or "local_stream_all" not in res:
            # the store that made the version holds every chunk: local reads
            from dsvc import registry

            registry.close_all()
            lfs = fs_local(work / "home-src")
            res["local_one_1MiB"] = read_one(lfs, one)
            res["local_random_4KiB"] = random_reads(work / "home-src", None, {}, big_size)
            res["local_stream_all"] = stream_all(fs_local(work / "home-src"), files)
        res["id"] = did
    finally:
        from dsvc import registry

        registry.close_all()
        for h in ("home-src", "home-fresh", "home-copy", "home-open", "remote-folder"):
            shutil.rmtree(work / h, ignore_errors=True)
        if srv is not None:
            srv.stop()
            SERVER_PID.clear()
    return res


def table(results: dict[str, Any]) -> str:
    rows = [
        "| remote | row | target | result | requests | pack MB | metadata KB | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def line(kind: str, row: str, target: str, result: str, r: dict, notes: str = "") -> None:
        req = r.get("requests", "-")
        pk = f"{r['pack_bytes'] / MB:.2f}" if "pack_bytes" in r else "-"
        md = f"{r['meta_bytes'] / 1000:.0f}" if "meta_bytes" in r else "-"
        rows.append(f"| {kind} | {row} | {target} | {result} | {req} | {pk} | {md} | {notes} |")

    for kind, res in results.items():
        if kind == "dvc" or not isinstance(res, dict) or "one_1MiB" not in res:
            continue
        o = res["one_1MiB"]
        line(
            kind,
            "one 1 MiB file, fresh store",
            "<= 2 MiB of packs",
            f"TTFB {o['ttfb_s'] * 1000:.0f} ms, {o['wall_s'] * 1000:.0f} ms",
            o,
        )
        rr = res["random_4KiB"]
        line(
            kind,
            "4 KiB at a random offset of the big file",
            "<= 2 chunks",
            f"median {rr['median_s'] * 1000:.0f} ms, max {rr['max_chunks']} chunks",
            {"pack_bytes": rr["max_pack_bytes"]},
            f"{rr['reads']} reads, fresh store each; pack MB = the largest",
        )
        s = res["stream_all"]
        line(
            kind,
            "stream every file once",
            ">= 80% of local_copy",
            f"{s['MBps']:.0f} MB/s ({res['stream_vs_local_copy'] * 100:.0f}% of local_copy)",
            s,
            f"{s['bytes'] / MB:.0f} MB read; disk writes {s['write_bytes'] / MB:.0f} MB "
            "(chunks kept in the store, no file copy)",
        )
        s4 = res["stream_all_threads"]
        line(
            kind,
            f"stream every file once, {s4['threads']} threads",
            ">= 80% of local_copy",
            f"{s4['MBps']:.0f} MB/s ({res['threads_vs_local_copy'] * 100:.0f}% of local_copy)",
            s4,
            f"fresh store; disk writes {s4['write_bytes'] / MB:.0f} MB",
        )
        p = res["second_pass"]
        line(kind, "second pass", "0 requests", f"{p['MBps']:.0f} MB/s", p)
        c = res["local_copy"]
        line(
            kind,
            "`get_local_copy()`, fresh store",
            "-",
            f"{c['MBps']:.0f} MB/s ({c['wall_s']:.1f} s)",
            c,
            f"disk writes {c['write_bytes'] / MB:.0f} MB",
        )
        d = res["dataset_open"]
        line(
            kind,
            "`Dataset.open` one 1 MiB file, fresh store",
            "-",
            f"TTFB {d['ttfb_s'] * 1000:.0f} ms, {d['wall_s'] * 1000:.0f} ms",
            d,
            "includes `Dataset.get` from the remote",
        )
        if "local_stream_all" in res:
            lo, lr, ls = res["local_one_1MiB"], res["local_random_4KiB"], res["local_stream_all"]
            rows.append(
                f"| local | one 1 MiB file / 4 KiB random / stream all | - | TTFB "
                f"{lo['ttfb_s'] * 1000:.1f} ms, {lo['wall_s'] * 1000:.1f} ms / median "
                f"{lr['median_s'] * 1000:.1f} ms / {ls['MBps']:.0f} MB/s | 0 | - | - | "
                "the store that made the version |"
            )
    dvc = results.get("dvc")
    if isinstance(dvc, dict) and "all" in dvc:
        folder = results.get("folder", {})
        ratio = ""
        if "stream_all" in folder:
            dsvc_rate = folder["stream_all"]["MBps"]
            dvc_rate = dvc["all"]["bytes"] / MB / dvc["all"]["wall_s"]
            ratio = f"; dsvc/DVC rate {dsvc_rate / dvc_rate:.2f}x"
        rows.append(
            f"| folder | DVC `DVCFileSystem` ({dvc['version']}): one 1 MiB file / every file | "
            f"- | TTFB {dvc['one']['ttfb_s'] * 1000:.0f} ms, {dvc['one']['wall_s'] * 1000:.0f} ms"
            f" / {dvc['all']['bytes'] / MB / dvc['all']['wall_s']:.0f} MB/s | - | - | - | "
            f"fresh clone, empty cache{ratio} |"
        )
    elif isinstance(dvc, str) and "folder" in results:
        rows.append(f"| folder | DVC `DVCFileSystem` | - | skipped | - | - | - | {dvc} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2_000_000_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--remotes", default="s3,folder")
    ap.add_argument("--dvc", help="a Python with dvc installed (e.g. /tmp/dvcenv/bin/python)")
    ap.add_argument("--json")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dsvc-bench-stream"))
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument(
        "--pairs", type=int, default=0, help="only stream_all vs local_copy, N times each"
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.size = 64_000_000
        a.remotes = "folder"
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    count_backend_reads()
    load = os.getloadavg()
    data = make_data(work, a.size)
    files = [str(p.relative_to(data)) for p in datagen.list_files(data)]
    results: dict[str, Any] = {}
    try:
        for kind in a.remotes.split(","):
            print(f"remote {kind} ...", file=sys.stderr)
            results[kind] = bench_remote(kind, work, data, a.size, files, a.pairs)
        if a.dvc and not a.pairs:
            print("dvc ...", file=sys.stderr)
            results["dvc"] = dvc_rows(a.dvc, work, data, files, "files/f00000.bin")
        else:
            results["dvc"] = (
                "no --dvc (a Python with dvc: python3 -m venv /tmp/dvcenv; pip install dvc)"
            )
    finally:
        if not a.keep_data:
            shutil.rmtree(data, ignore_errors=True)
            stamp = data.parent / f".{data.name}.stamp"
            stamp.unlink(missing_ok=True)
    text = table(results)
    print(
        f"version: {a.size / MB:,.0f} MB ({len(files)} files: big.bin + 1 MiB files); load "
        f"average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"args": vars(a), "load": load, "results": results, "table": text}, f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
