"""``dsvc://`` (dsvc/fs.py over dsvc/stream.py): URL grammar, listing from trees only,
reads that fetch only the chunks they touch, verification, read-ahead, the chunk LRU,
``Dataset.open``/``read_bytes`` and ``dsvc ls``/``cat``; each from a fresh store that
has only the remote (folder, S3 on moto, Azure on Azurite)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fs_helpers import NAME, PROJECT, ROOT, fresh_fs, publish, sample_files, wire
from remote_helpers import machine

from dsvc import registry
from dsvc.dataset import Dataset
from dsvc.errors import IntegrityError, NotFoundError, UsageError
from dsvc.fs import DsvcFileSystem, format_url, parse_url
from dsvc.remote.config import add_remote, credential_env_var, split_credentials
from dsvc.stream import ChunkCache

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(
    params=[
        "file",
        pytest.param("s3", marks=pytest.mark.servers),
        pytest.param("azure", marks=pytest.mark.servers),
    ]
)
def spec3(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A folder, S3 (moto) and Azure (Azurite) remote."""
    from conftest import _remote_spec

    return _remote_spec(request.param, request, tmp_path)


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec3: dict[str, Any]) -> Any:
    """Two versions of team/vision/data on the remote; returns (spec, v1, v2, files1, files2)."""
    f1 = sample_files()
    v1 = publish(monkeypatch, tmp_path / "a", spec3, f1, version="1.0.0")
    f2 = {**f1, "a.csv": b"x,y\n5,6\n", "new.txt": b"only in 2"}
    v2 = publish(monkeypatch, tmp_path / "a", spec3, f2, version="1.1.0")
    registry.close_all()
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "elsewhere"))  # the fs must use its own
    return spec3, v1.id, v2.id, f1, f2


def _chunks_in(home: Path) -> int:
    return registry.open_store(home).stats()["chunks"]


# -- URL grammar ------------------------------------------------------------------------


def test_url_grammar_and_percent_encoded_subprojects() -> None:
    assert parse_url("dsvc://team%2Fvision/data@1.0.0/d/e/f.txt") == (
        "team%2Fvision/data@1.0.0",
        {"project": "team/vision", "name": "data", "version": "1.0.0"},
        ("d", "e", "f.txt"),
    )
    assert parse_url("dsvc://team%2Fvision/data/a.csv")[1]["version"] is None
    assert parse_url("dsvc://id:ABCDEF/x/") == ("id:ABCDEF", {"id": "abcdef"}, ("x",))
    assert parse_url("dsvc://p/n%40at@2/x")[1] == {"project": "p", "name": "n@at", "version": "2"}
    assert format_url("team/vision", "data", "1.0.0", "d/f.txt") == (
        "dsvc://team%2Fvision/data@1.0.0/d/f.txt"
    )
    assert parse_url(format_url("a/b c", "n@x", None, "f"))[1] == {
        "project": "a/b c",
        "name": "n@x",
        "version": None,
    }
    with pytest.raises(Exception, match=r"\.\."):
        parse_url("dsvc://p/n/../../etc/passwd")
    with pytest.raises(UsageError):
        parse_url("dsvc://id:/x")


def test_entry_point_registers_the_protocol() -> None:
    """``pip install dsvc`` registers dsvc:// with fsspec (no import needed)."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert doc["project"]["entry-points"]["fsspec.specs"]["dsvc"] == "dsvc.fs:DsvcFileSystem"
    eps = importlib.metadata.entry_points(group="fsspec.specs")
    assert any(ep.name == "dsvc" and ep.value == "dsvc.fs:DsvcFileSystem" for ep in eps), (
        "the installed dsvc lacks the entry point: pip install -e ."
    )
    assert fsspec.get_filesystem_class("dsvc") is DsvcFileSystem


# -- listing: trees only ------------------------------------------------------------------


def test_listing_reads_trees_only(pushed: Any, tmp_path: Path) -> None:
    spec, v1, v2, f1, f2 = pushed
    fs = fresh_fs(tmp_path / "b", spec)
    assert fs.ls(f"dsvc://{ROOT}", detail=False) == [
        f"{ROOT}/a.csv",
        f"{ROOT}/big.bin",
        f"{ROOT}/d",
        f"{ROOT}/empty",
        f"{ROOT}/new.txt",
    ]
    assert fs.ls(f"dsvc://{ROOT}@1.0.0/d", detail=False) == [
        f"{ROOT}@1.0.0/d/e",
        f"{ROOT}@1.0.0/d/g.txt",
    ]
    assert fs.find(f"dsvc://{ROOT}@1.0.0") == sorted(f"{ROOT}@1.0.0/{p}" for p in f1)
    assert fs.find(f"dsvc://id:{v2}/d", withdirs=True) == [
        f"id:{v2}/d",
        f"id:{v2}/d/e",
        f"id:{v2}/d/e/f.txt",
        f"id:{v2}/d/g.txt",
    ]
    assert fs.glob(f"dsvc://{ROOT}/**/*.txt") == [
        f"{ROOT}/d/e/f.txt",
        f"{ROOT}/d/g.txt",
        f"{ROOT}/new.txt",
    ]
    info = fs.info(f"dsvc://{ROOT}@1.0.0/big.bin")
    assert (info["type"], info["size"], info["dataset_id"]) == ("file", len(f1["big.bin"]), v1)
    d = fs.info(f"dsvc://{ROOT}/d")
    assert d["type"] == "directory" and d["size"] == len(b"hello") + len(b"second file in d")
    assert fs.isdir(f"dsvc://{ROOT}/d/e") and fs.isfile(f"dsvc://{ROOT}/d/e/f.txt")
    assert not fs.exists(f"dsvc://{ROOT}/nope")
    assert fs.ls("dsvc://", detail=False) == ["team%2Fvision"]
    assert fs.ls("dsvc://team%2Fvision", detail=False) == [ROOT]
    # nothing was materialized: no chunk in the store, no cache folder
    assert _chunks_in(tmp_path / "b") == 0
    assert not (tmp_path / "b" / "cache").exists()


def test_latest_version_and_id_read_their_own_content(pushed: Any, tmp_path: Path) -> None:
    spec, v1, v2, f1, f2 = pushed
    fs = fresh_fs(tmp_path / "b", spec)
    assert fs.cat_file(f"dsvc://{ROOT}/a.csv") == f2["a.csv"]
    assert fs.cat_file(f"dsvc://{ROOT}@1.0.0/a.csv") == f1["a.csv"]
    assert fs.cat_file(f"dsvc://id:{v1}/a.csv") == f1["a.csv"]
    assert fs.cat_file(f"dsvc://{ROOT}/empty") == b""
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"dsvc://{ROOT}@1.0.0/new.txt")
    with pytest.raises(NotFoundError):
        fs.ls(f"dsvc://{ROOT}@9.9.9")
    with pytest.raises(PermissionError):
        fs.open(f"dsvc://{ROOT}/a.csv", "wb")


# -- reads: only the chunks touched, verified, kept -----------------------------------------


def test_a_small_read_fetches_at_most_two_chunks_and_keeps_them(
    pushed: Any, tmp_path: Path
) -> None:
    spec, v1, v2, f1, f2 = pushed
    big = f1["big.bin"]
    fs = fresh_fs(tmp_path / "b", spec)
    path = f"dsvc://{ROOT}/big.bin"
    f = fs.open(path)  # resolves the version and the blob: metadata only
    n_chunks = len(f.chunks_between(0, f.size))
    assert n_chunks >= 4
    largest = max(n for _, n in f.chunks_between(0, f.size))
    with wire(fs.reader.remote.backend) as w:
        f.seek(1_000_000)
        assert f.read(4096) == big[1_000_000:1_004_096]
    assert fs.reader.stats.remote_chunks <= 2
    assert w.pack_reads() == 1 and w.pack_bytes <= 2 * largest
    assert _chunks_in(tmp_path / "b") == fs.reader.stats.remote_chunks
    # the same bytes again (new filesystem: empty memory cache) come from the store
    fs2 = fresh_fs(tmp_path / "b", spec)
    with wire(fs2.reader.remote.backend) as w2:
        assert fs2.cat_file(path, 1_000_000, 1_004_096) == big[1_000_000:1_004_096]
    assert w2.pack_reads() == 0 and fs2.reader.stats.local_chunks >= 1


def test_sequential_reads_read_ahead_and_a_second_pass_is_local(
    pushed: Any, tmp_path: Path
) -> None:
    spec, v1, v2, f1, f2 = pushed
    big = f1["big.bin"]
    fs = fresh_fs(tmp_path / "b", spec)
    with fs.open(f"dsvc://{ROOT}/big.bin") as f:
        n_chunks = len(f.chunks_between(0, f.size))
        parts = []
        while block := f.read(64 << 10):
            parts.append(block)
    assert b"".join(parts) == big
    # read-ahead: far fewer requests than 64 KiB reads, and fewer than chunks
    assert fs.reader.stats.remote_requests < n_chunks
    # every chunk is now in the store: a second pass makes no request at all
    fs2 = fresh_fs(tmp_path / "b", spec)
    fs2.version(f"dsvc://{ROOT}/big.bin")  # resolving "latest" reads the ref
    with wire(fs2.reader.remote.backend) as w:
        assert fs2.cat_file(f"dsvc://{ROOT}/big.bin") == big
    assert w.requests == [] and fs2.reader.stats.remote_chunks == 0


def test_cat_ranges_and_negative_offsets(pushed: Any, tmp_path: Path) -> None:
    spec, v1, v2, f1, f2 = pushed
    big = f1["big.bin"]
    fs = fresh_fs(tmp_path / "b", spec)
    p = f"dsvc://{ROOT}/big.bin"
    assert fs.cat_file(p, -10) == big[-10:]
    assert fs.cat_file(p, 5, -5) == big[5:-5]
    assert fs.cat_file(p, len(big) + 5) == b""
    got = fs.cat_ranges(
        [p, p, f"dsvc://{ROOT}/a.csv", f"dsvc://{ROOT}/missing"],
        [0, 2_000_000, 1, 0],
        [10, 2_000_100, None, 1],
    )
    assert got[:3] == [big[:10], big[2_000_000:2_000_100], f2["a.csv"][1:]]
    assert isinstance(got[3], FileNotFoundError)
    with fs.open(f"dsvc://{ROOT}/a.csv", "r") as t:
        assert t.read() == f2["a.csv"].decode()


def test_a_corrupted_chunk_on_the_remote_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = {"kind": "file", "url": f"file://{tmp_path / 'remote'}", "options": {}}
    files = sample_files()
    publish(monkeypatch, tmp_path / "a", spec, files)
    registry.close_all()
    packs = sorted((tmp_path / "remote" / "packs").glob("*.pack"), key=lambda p: p.stat().st_size)
    biggest = packs[-1]  # the chunk pack of big.bin
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    fs = fresh_fs(tmp_path / "b", spec)
    with pytest.raises(IntegrityError, match="corrupted"):
        fs.cat_file(f"dsvc://{ROOT}/big.bin")
    assert fs.cat_file(f"dsvc://{ROOT}/big.bin", 0, 100) == files["big.bin"][:100]


def test_chunk_cache_is_bounded_in_bytes() -> None:
    c = ChunkCache(100)
    for i in range(10):
        c.put(bytes([i]) * 16, b"x" * 30)
    assert c.size <= 100 and len(c) == 3
    assert c.get(bytes([9]) * 16) is not None and c.get(bytes([0]) * 16) is None
    c.get(bytes([7]) * 16)  # recently used: survives the next insertion
    c.put(b"n" * 16, b"y" * 30)
    assert c.get(bytes([7]) * 16) is not None and c.get(bytes([8]) * 16) is None
    c.put(b"z" * 16, b"w" * 101)  # larger than the cache: not kept
    assert c.get(b"z" * 16) is None


def test_memory_stays_bounded_while_streaming(pushed: Any, tmp_path: Path) -> None:
    spec, v1, v2, f1, f2 = pushed
    fs = fresh_fs(tmp_path / "b", spec, cache_bytes=1 << 20)
    assert fs.cat_file(f"dsvc://{ROOT}/big.bin") == f1["big.bin"]
    assert fs.reader.cache.size <= 1 << 20


# -- fsspec.open and storage_options -----------------------------------------------------------


def test_fsspec_open_with_storage_options(pushed: Any, tmp_path: Path) -> None:
    spec, v1, v2, f1, f2 = pushed
    with fsspec.open(
        f"dsvc://{ROOT}@1.0.0/d/e/f.txt",
        "rt",
        home=str(tmp_path / "b"),
        remote=spec["url"],
        remote_options=spec["options"],
    ) as f:
        assert f.read() == "hello"


def test_the_store_default_remote_is_used_without_options(
    pushed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, v1, v2, f1, f2 = pushed
    machine(monkeypatch, tmp_path / "c", spec)  # a store with `origin` configured
    fs = DsvcFileSystem(skip_instance_cache=True)
    assert fs.cat_file(f"dsvc://{ROOT}/new.txt") == b"only in 2"


# -- Dataset.open / read_bytes ------------------------------------------------------------------


def test_dataset_open_and_read_bytes(
    pushed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, v1, v2, f1, f2 = pushed
    machine(monkeypatch, tmp_path / "c", spec)
    ds = Dataset.get(dataset_project=PROJECT, dataset_name=NAME, dataset_version="1.0.0")
    assert ds.read_bytes("a.csv") == f1["a.csv"]
    with ds.open("big.bin") as f:
        f.seek(-100, os.SEEK_END)
        assert f.read() == f1["big.bin"][-100:]
    with ds.open("d/e/f.txt", mode="r") as t:
        assert t.read() == "hello"
    store = registry.open_store()
    assert store.stats()["chunks"] <= 3  # a.csv, the last chunk of big.bin, f.txt
    assert not (tmp_path / "c" / "cache").exists()
    with pytest.raises(NotFoundError, match="nope"):
        ds.open("nope")
    with pytest.raises(NotFoundError, match="folder"):
        ds.open("d")
    with pytest.raises(UsageError, match="read-only"):
        ds.open("a.csv", "wb")
    # chunks read by streaming are reused by get_local_copy
    folder = ds.get_local_copy()
    assert Path(folder, "big.bin").read_bytes() == f1["big.bin"]


# -- CLI: dsvc ls / dsvc cat --------------------------------------------------------------------


def _dsvc(home: Path, spec: dict[str, Any], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``dsvc ARGS`` in a fresh store whose only configuration is the remote ``origin``
    (plain options in the store, credentials in the environment, as a user sets it up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    plain, creds = split_credentials(spec["options"])
    if not home.exists():
        registry.close_all()
        add_remote(registry.open_store(home), "origin", spec["url"], plain)
        registry.close_all()
    env.update({credential_env_var("origin", k): v for k, v in creds.items()})
    env["DSVC_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "dsvc", *args], env=env, capture_output=True, timeout=120
    )


def test_cli_ls_and_cat_from_a_fresh_store(pushed: Any, tmp_path: Path) -> None:
    spec, v1, v2, f1, f2 = pushed
    home = tmp_path / "cli"
    r = _dsvc(home, spec, "ls", v1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["a.csv", "big.bin", "d/", "empty"]
    r = _dsvc(home, spec, "ls", "-R", "--json", v1, "d")
    assert r.returncode == 0, r.stderr
    import json

    rows = json.loads(r.stdout)
    assert [x["path"] for x in rows] == ["d/e", "d/e/f.txt", "d/g.txt"]
    r = _dsvc(home, spec, "cat", v1, "big.bin")
    assert r.returncode == 0 and r.stdout == f1["big.bin"]
    r = _dsvc(home, spec, "cat", f"dsvc://{ROOT}@1.0.0/a.csv")
    assert r.returncode == 0 and r.stdout == f1["a.csv"]
    r = _dsvc(home, spec, "cat", v1, "d")
    assert r.returncode == 2 and b"folder" in r.stderr
    r = _dsvc(home, spec, "cat", v1, "nope")
    assert r.returncode == 3 and b"nope" in r.stderr
