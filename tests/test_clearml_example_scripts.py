"""ClearML's own ``examples/datasets/*.py`` run on dsvc with only the import line changed.

The scripts are read from a clone of clearml/clearml at the commit named below (set
``CLEARML_REPO`` to a clone; the test is skipped without one: ClearML's code is not
copied into this project). Each runs in a fresh interpreter, in a temporary folder,
against a fresh local store, with its ``from clearml import ...`` line turned into
``from dsvc.compat import ...`` and nothing else changed.

The scripts download public data (CIFAR, MNIST, Iris, UrbanSound8K) through
``StorageManager.get_local_copy``; here there is no network, so each URL's cache entry
is filled first with a small file of the same shape (as a ClearML cache that already
holds the download would be). What each script leaves behind is then checked: the
datasets, their files, lineage, metadata and reports.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import re
import subprocess
import sys
import tarfile
import wave
import zipfile
from pathlib import Path

import pytest

from dsvc import registry

REPO = Path(__file__).resolve().parent.parent
CLEARML_REPO = Path(os.environ.get("CLEARML_REPO", "/work/.mirror/clearml+clearml/repo"))
CLEARML_COMMIT = "0cc42633ff5805ba809549028c90954678ef19e3"
STUBS = Path(__file__).resolve().parent / "clearml_stubs"
IMPORT = re.compile(r"^from clearml import (.+)$", re.M)


def clearml_example(name: str) -> str:
    """The example's source at CLEARML_COMMIT, with only its clearml import changed."""
    if not CLEARML_REPO.exists():
        pytest.skip(f"no clone of clearml/clearml at {CLEARML_REPO} (set CLEARML_REPO)")
    r = subprocess.run(
        ["git", "-C", str(CLEARML_REPO), "show", f"{CLEARML_COMMIT}:examples/datasets/{name}"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"{name} not in the clearml clone at {CLEARML_COMMIT}: {r.stderr.strip()}")
    src, n = IMPORT.subn(r"from dsvc.compat import \1", r.stdout)
    assert n == 1, f"{name}: expected one 'from clearml import' line"
    return src


def run_example(name: str, cwd: Path, home: Path, extra_path: list[Path] = ()) -> str:
    script = cwd / name
    script.write_text(clearml_example(name))
    env = {
        **os.environ,
        "DSVC_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, extra_path)]),
        "MPLBACKEND": "Agg",
    }
    env.pop("DSVC_REMOTE", None)
    r = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(home))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    return work, home


def seed(url: str, data: bytes) -> None:
    """Put ``data`` where StorageManager caches ``url`` (a warm cache: no download)."""
    from dsvc.compat import StorageManager

    p = StorageManager.cache_path(url)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def mnist_zip() -> bytes:
    files = {}
    for part, n in (("TRAIN", 6), ("TEST", 3)):
        for i in range(n):
            files[f"{part}/{i % 3}/img_{i}.png"] = f"{part}-{i}".encode() * 20
    return zip_of(files)


MNIST_URL = "https://allegro-datasets.s3.amazonaws.com/datasets/MNIST.zip"


def datasets() -> dict[str, list[dict]]:
    """``project/name -> [list_datasets rows]`` of the store in DSVC_HOME."""
    from dsvc.dataset import Dataset

    out: dict[str, list[dict]] = {}
    for r in Dataset.list_datasets(only_completed=False):
        out.setdefault(f"{r['project']}/{r['name']}", []).append(r)
    return out


def get(project: str, name: str, **kw):
    from dsvc.dataset import Dataset

    return Dataset.get(dataset_project=project, dataset_name=name, **kw)


# -- one test per example ---------------------------------------------------------------


def test_csv_dataset_creation(env: tuple[Path, Path]) -> None:
    work, home = env
    import hashlib

    rows = "Id,SepalLengthCm,Species\n1,5.1,Iris-setosa\n2,7.0,Iris-versicolor\n"
    url = "https://allegro-datasets.s3.amazonaws.com/datasets/Iris_Species.csv"
    seed(url, rows.encode())
    out = run_example("csv_dataset_creation.py", work, home)
    assert "We are done" in out
    ds = get("dataset_examples", "CSV_Dataset")
    # the cached download's name, as ClearML's cache names it (clearml/storage/cache.py:109)
    name = f"{hashlib.md5(url.encode()).hexdigest()}.Iris_Species.csv"
    assert ds.is_final() and ds.list_files() == [name]
    assert (Path(ds.get_local_copy()) / name).read_text() == rows


def test_dataset_creation(env: tuple[Path, Path]) -> None:
    work, home = env
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            data = name.encode() * 100
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    seed("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", buf.getvalue())
    run_example("dataset_creation.py", work, home)
    ds = get("dataset_examples", "cifar_dataset")
    assert ds.is_final()
    assert ds.list_files() == [
        "cifar-10-batches-py/batches.meta",
        "cifar-10-batches-py/data_batch_1",
        "cifar-10-batches-py/test_batch",
    ]


def test_dataset_folder_syncing(env: tuple[Path, Path]) -> None:
    work, home = env
    seed(MNIST_URL, mnist_zip())
    run_example("dataset_folder_syncing.py", work, home)
    ds = get("dataset_examples", "MNIST Complete Dataset (Syncing Example)")
    files = ds.list_files()
    # the script copies TRAIN into both folders (its own comment says TEST)
    assert [f for f in files if f.startswith("TRAIN/")] == [
        f.replace("TEST/", "TRAIN/", 1) for f in files if f.startswith("TEST/")
    ]
    assert len(files) == 12 and ds.is_final()


def test_single_parent_child_dataset(env: tuple[Path, Path]) -> None:
    work, home = env
    seed(MNIST_URL, mnist_zip())
    run_example("single_parent_child_dataset.py", work, home)
    parent = get("dataset_examples", "MNIST Training Dataset")
    child = get("dataset_examples", "MNIST Complete Dataset")
    assert child.get_dependency_graph()[child.id] == [parent.id]
    assert len(parent.list_files()) == 6 and len(child.list_files()) == 9
    assert {f.split("/")[0] for f in child.list_added_files()} == {"TEST"}


def test_multi_parent_child_dataset(env: tuple[Path, Path]) -> None:
    work, home = env
    seed(MNIST_URL, mnist_zip())
    run_example("multi_parent_child_dataset.py", work, home)
    train = get("dataset_examples/MNIST", "MNIST Training Dataset")
    test = get("dataset_examples/MNIST", "MNIST Testing Dataset")
    child = get("dataset_examples/MNIST", "MNIST Complete Dataset")
    assert child.get_dependency_graph()[child.id] == [train.id, test.id]
    assert child.list_files() == sorted(train.list_files() + test.list_files())


def test_data_ingestion(env: tuple[Path, Path]) -> None:
    # trains a CIFAR classifier with torchvision, pytorch-ignite and tensorboard, and reads
    # the dataset with Dataset.get(...).get_local_copy(): needs those packages (and the
    # CIFAR download through torchvision, not StorageManager)
    for mod in ("torch", "torchvision", "ignite", "tensorboard", "matplotlib"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"data_ingestion.py needs {mod}, which is not installed")
    work, home = env
    run_example("data_ingestion.py", work, home)


# -- the two urbansounds examples: one script makes the dataset, the next reads it ------


URBAN_CLASSES = ["dog_bark", "siren", "car_horn"]


def _wav(seconds: float, rate: int, freq: float) -> bytes:
    import math
    import struct

    n = int(seconds * rate)
    frames = b"".join(
        struct.pack("<hh", *(2 * [int(8000 * math.sin(2 * math.pi * freq * i / rate))]))
        for i in range(n)
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def urbansound_zip() -> bytes:
    rows = io.StringIO()
    out = csv.writer(rows)
    out.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
    files = {}
    for i in range(12):
        fold, cls = 1 + i % 2, URBAN_CLASSES[i % 3]
        name = f"{100 + i}-{i % 3}-0-{i}.wav"
        out.writerow([name, 100 + i, 0.0, 0.25, 1, fold, i % 3, cls])
        files[f"UrbanSound8K/audio/fold{fold}/{name}"] = _wav(0.25, 8000, 220.0 * (1 + i % 3))
    files["UrbanSound8K/metadata/UrbanSound8K.csv"] = rows.getvalue().encode()
    return zip_of(files)


def test_urbansounds_examples(env: tuple[Path, Path]) -> None:
    work, home = env
    seed("https://allegro-datasets.s3.amazonaws.com/clearml/UrbanSound8K.zip", urbansound_zip())
    run_example("urbansounds_get_data.py", work, home)
    raw = get("examples/Urbansounds", "UrbanSounds example", dataset_tags=["raw"])
    assert raw.is_final() and len(raw.list_files()) == 12
    meta = raw._task.artifacts["metadata"].get()  # what the next script reads back
    assert list(meta.columns) == ["fold", "filepath", "label"] and len(meta) == 12
    kinds = [e["kind"] for e in raw.get_reports()]
    assert kinds == ["table", "histogram"]

    for mod in ("torch", "matplotlib", "tqdm"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"urbansounds_dataset_preprocessing.py needs {mod}, not installed")
    stub = [] if importlib.util.find_spec("torchaudio") else [STUBS]  # see clearml_stubs
    run_example("urbansounds_dataset_preprocessing.py", work, home, stub)
    pre = get("examples/Urbansounds", "UrbanSounds example", dataset_tags=["preprocessed"])
    assert pre.get_dependency_graph()[pre.id] == [raw.id]
    added = pre.list_added_files()
    assert len(added) == 12 and all(f.endswith(".npy") for f in added)
    reports = pre.get_reports()
    # every 10th sample: an image and its audio; then the table and the histogram
    assert [e["kind"] for e in reports] == ["image", "media", "image", "media", "table", "histogram"]
    assert reports[0]["mime"] == "image/png" and reports[1]["mime"] == "audio/x-wav"
    assert len(pre._task.artifacts["metadata"].get()) == 12
    tasks = {r["name"]: r for _, r in registry.open_store().iter_records("compat/task/")}
    assert tasks["download data"]["params"]["General"]["selected_classes"][0] == "air_conditioner"
    assert tasks["preprocessing"]["params"]["General"] == {
        "dataset_path": "dataset",
        "number_of_mel_filters": 64,
        "resample_freq": 22050,
    }
