"""The Dataset API across processes: a draft lives in the store, not in the object.

Every step runs in a fresh interpreter (``subprocess``), never a fork of a process that
has LMDB open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    return h


def run_py(code: str, home: Path, timeout: float = 120) -> str:
    env = {**os.environ, "DSVC_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_create_add_finalize_in_three_processes(tmp_path: Path, home: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": b"alpha", "d/b.bin": os.urandom(5000)})
    ds_id = run_py(
        """
        from dsvc.dataset import Dataset
        print(Dataset.create(dataset_name="mp", dataset_project="proj").id)
        """,
        home,
    )
    added = run_py(
        f"""
        from dsvc.dataset import Dataset
        ds = Dataset.get(dataset_id={ds_id!r})
        assert not ds.is_final()
        print(ds.add_files({str(src)!r}))
        """,
        home,
    )
    assert added == "2"
    info = json.loads(
        run_py(
            f"""
            import json
            from dsvc.dataset import Dataset
            ds = Dataset.get(dataset_id={ds_id!r})
            ds.upload()
            ok = ds.finalize()
            print(json.dumps({{"ok": ok, "files": ds.list_files(), "final": ds.is_final()}}))
            """,
            home,
        )
    )
    assert info == {"ok": True, "files": ["a.txt", "d/b.bin"], "final": True}
    from dsvc.dataset import Dataset

    ds = Dataset.get(dataset_id=ds_id)
    assert ds.is_final()
    assert read_tree(ds.get_local_copy()) == read_tree(src)


def test_two_processes_add_to_one_draft_lose_nothing(tmp_path: Path, home: Path) -> None:
    from dsvc.dataset import Dataset

    ds = Dataset.create(dataset_name="race", dataset_project="proj")
    folders = [
        write_tree(tmp_path / f"s{i}", {f"p{i}/f{j}": b"%d-%d" % (i, j) for j in range(30)})
        for i in range(2)
    ]
    code = """
        import sys
        from dsvc.dataset import Dataset
        ds = Dataset.get(dataset_id=sys.argv[1])
        print(ds.add_files(sys.argv[2]))
        """
    env = {**os.environ, "DSVC_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), ds.id, str(f)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in folders
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.strip() for o, _ in outs] == ["30", "30"]
    assert len(ds.list_files()) == 60


def test_concurrent_get_local_copy_never_sees_a_partial_copy(tmp_path: Path, home: Path) -> None:
    from dsvc.dataset import Dataset

    files = {f"d{i % 7}/f{i:04d}": os.urandom(100 + i) for i in range(400)}
    ds = Dataset.create(dataset_name="lc", dataset_project="proj")
    ds.add_files(write_tree(tmp_path / "src", files))
    ds.finalize()
    code = f"""
        import json, os
        from dsvc.dataset import Dataset
        ds = Dataset.get(dataset_id={ds.id!r})
        path = ds.get_local_copy()
        out = {{}}
        for dirpath, _, names in os.walk(path):
            for n in names:
                full = os.path.join(dirpath, n)
                out[os.path.relpath(full, path)] = open(full, "rb").read().hex()
        print(json.dumps([path, out]))
        """
    env = {**os.environ, "DSVC_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    expected = {k: v.hex() for k, v in files.items()}
    paths = {r[0] for r in results}
    assert len(paths) == 1
    for _, got in results:
        assert got == expected
    # no temporary build folder is left beside the copy
    parent = Path(paths.pop()).parent
    assert [p.name for p in parent.iterdir()] == [ds.id]
