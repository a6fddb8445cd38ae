"""``dsvc://`` under real consumers, each from a fresh store that has only the remote:
pandas.read_csv, pyarrow parquet through fsspec, Hugging Face ``datasets.load_dataset``
and a PyTorch DataLoader with worker processes (dsvc.torch)."""

from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fs_helpers import ROOT, fresh_fs, publish

from dsvc import registry


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=500)
    return buf.getvalue()


ROWS = 2000
TABLE = pa.table({"i": list(range(ROWS)), "s": [f"row {i}" for i in range(ROWS)]})
CSV = b"i,s\n" + b"".join(f"{i},row {i}\n".encode() for i in range(ROWS))


@pytest.fixture(
    params=[
        "file",
        pytest.param("s3", marks=pytest.mark.servers),
        pytest.param("azure", marks=pytest.mark.servers),
    ]
)
def tabular(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A version with a CSV, two parquet shards and 12 small samples, on a folder, S3
    (moto) or Azure (Azurite)."""
    from conftest import _remote_spec

    spec = _remote_spec(request.param, request, tmp_path)
    files = {
        "table.csv": CSV,
        "parquet/part-0.parquet": _parquet(TABLE.slice(0, 1000)),
        "parquet/part-1.parquet": _parquet(TABLE.slice(1000)),
        **{f"samples/{i:02d}.bin": bytes([i]) * (1000 + i) for i in range(12)},
    }
    ds = publish(monkeypatch, tmp_path / "a", spec, files, version="1.0.0")
    registry.close_all()
    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "unused"))
    opts = {
        "home": str(tmp_path / "b"),
        "remote": spec["url"],
        "remote_options": dict(spec["options"]),
    }
    return spec, ds.id, files, opts


def test_pandas_read_csv(tabular: Any) -> None:
    spec, did, files, opts = tabular
    df = pd.read_csv(f"dsvc://{ROOT}@1.0.0/table.csv", storage_options=opts)
    assert len(df) == ROWS and df["s"].iloc[1234] == "row 1234"
    df = pd.read_parquet(f"dsvc://id:{did}/parquet/part-1.parquet", storage_options=opts)
    assert df["i"].tolist() == list(range(1000, ROWS))


def test_pyarrow_parquet_through_fsspec(tabular: Any) -> None:
    spec, did, files, opts = tabular
    fs = fresh_fs(Path(opts["home"]), spec)
    # one file, one column: pyarrow reads the footer and that column's pages (ranged)
    t = pq.read_table(f"{ROOT}/parquet/part-0.parquet", filesystem=fs, columns=["s"])
    assert t.column("s").to_pylist()[:2] == ["row 0", "row 1"]
    # the folder as a dataset
    whole = pq.read_table(f"{ROOT}/parquet", filesystem=fs)
    assert sorted(whole.column("i").to_pylist()) == list(range(ROWS))
    f = pq.ParquetFile(fs.open(f"dsvc://{ROOT}/parquet/part-1.parquet"))
    assert f.metadata.num_rows == 1000 and f.metadata.num_row_groups == 2


def test_huggingface_load_dataset_csv_and_parquet(
    tabular: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    spec, did, files, opts = tabular
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "hf-cache")
    csv = datasets.load_dataset(
        "csv",
        data_files=f"dsvc://{ROOT}@1.0.0/table.csv",
        storage_options=opts,
        cache_dir=cache,
        split="train",
    )
    assert csv.num_rows == ROWS and csv[7]["s"] == "row 7"
    par = datasets.load_dataset(
        "parquet",
        data_files={"train": f"dsvc://{ROOT}/parquet/*.parquet"},
        storage_options=opts,
        cache_dir=cache,
        split="train",
    )
    assert sorted(par["i"]) == list(range(ROWS))


# -- PyTorch ------------------------------------------------------------------------------


def _probe(ds: Any, data: bytes, path: str) -> tuple[bytes, str, int, int, int, int]:
    """What a worker used: its pid, and the ids of the LMDB env and obstore client it read
    through (a worker that shares the parent's would report the parent's ids)."""
    reader = ds.fs.reader
    env_id = id(reader.store.env)
    remote = reader.remote
    client_id = id(remote.backend._store) if remote is not None else 0
    return data, path, os.getpid(), env_id, client_id, id(reader.store)


def test_torch_dataloader_workers_open_their_own_store_and_client(tabular: Any) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from dsvc.torch import DsvcDataset

    spec, did, files, opts = tabular
    ds = DsvcDataset(f"dsvc://{ROOT}/samples", pattern="*.bin", **opts)
    assert ds.files == [f"{i:02d}.bin" for i in range(12)]
    assert ds[3] == files["samples/03.bin"]  # the parent opened its store and client
    # kept referenced, so alive in the workers too: a new object there cannot reuse its id
    inherited = (ds.fs.reader.store.env, ds.fs.reader.remote.backend._store)
    parent = (os.getpid(), *map(id, inherited))
    ds.transform = lambda data, path: _probe(ds, data, path)  # fork: not pickled
    loader = DataLoader(
        ds,
        batch_size=3,
        num_workers=2,
        collate_fn=lambda b: b,
        multiprocessing_context=multiprocessing.get_context("fork"),
    )
    seen = [item for batch in loader for item in batch]
    assert [p for _, p, *_ in seen] == ds.files
    for data, path, pid, env_id, client_id, _ in seen:
        assert data == files[f"samples/{path}"]
        assert pid != parent[0]
        assert env_id != parent[1], "a worker used the parent's LMDB environment"
        assert client_id != parent[2], "a worker used the parent's obstore client"
    assert len({s[2] for s in seen}) == 2  # both workers did some of the work
    # the workers kept what they fetched: a fresh reader of the store finds it all local
    registry.close_all()
    again = DsvcDataset(f"dsvc://id:{did}/samples", **opts)
    assert [again[i] for i in range(len(again))] == [files[f"samples/{p}"] for p in ds.files]
    assert again.fs.reader.stats.remote_chunks == 0
    del torch
