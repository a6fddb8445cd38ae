"""Issue 9.17: a full disk is a clear error that says so and where, and loses nothing.

The kernel's own refusal is used, never a mock: a small tmpfs (needs root; skipped
otherwise) gives a genuine ENOSPC, ``RLIMIT_FSIZE`` (any user) a genuine EFBIG. Before
the fix both surfaced as "internal error: lmdb.Error ... Input/output error" / "OSError
... report it". After a refusal the store is still sound (fsck), every committed
version reads back byte for byte, and the same command completes once there is room.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def dsvc(home: Path, *args: str, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(REPO), "DSVC_QUIET": "1"}
    env.pop("DSVC_REMOTE", None)

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "dsvc", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, r.stderr
    return r


def new_id(r: subprocess.CompletedProcess[str]) -> str:
    m = re.search(r"([0-9a-f]{32})", ok(r).stdout)
    assert m, r.stdout
    return m.group(1)


def files(root: Path, sizes: dict[str, int], seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    root.mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        out[name] = rng.randbytes(n)  # incompressible: the store needs every byte
        (root / name).write_bytes(out[name])
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs, unmounted afterwards; skips when mounting is not allowed."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def assert_disk_full(r: subprocess.CompletedProcess[str], where: Path, what: str) -> None:
    assert r.returncode == 8, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert what in r.stderr, r.stderr
    assert str(where) in r.stderr, r.stderr
    assert "run the command again" in r.stderr


def test_store_on_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    home = small_fs / "home"
    v1 = files(tmp_path / "v1", {"a.bin": 2 * MiB, "b.bin": MiB}, seed=1)
    ok(dsvc(home, "create", "--project", "p", "--name", "v1"))
    ok(dsvc(home, "add", "--files", str(tmp_path / "v1")))
    ok(dsvc(home, "close"))

    big = tmp_path / "big"
    files(big, {f"f{i}.bin": 4 * MiB for i in range(4)}, seed=2)  # 16 MiB > the disk
    v2 = new_id(dsvc(home, "create", "--project", "p", "--name", "v2"))
    r = dsvc(home, "add", "--id", v2, "--files", str(big))
    assert_disk_full(r, home, "no space left")

    # nothing committed was lost, nothing torn
    ok(dsvc(home, "fsck"))
    ok(dsvc(home, "get", "--project", "p", "--name", "v1", "--copy", str(tmp_path / "out1")))
    assert read_tree(tmp_path / "out1") == v1

    # with room again (fewer files, and `dsvc gc` as the message advises: batches the
    # failed add committed hold chunks nothing refers to), the same draft completes
    for i in (1, 2, 3):
        (big / f"f{i}.bin").unlink()
    ok(dsvc(home, "gc"))
    ok(dsvc(home, "add", "--id", v2, "--files", str(big)))
    ok(dsvc(home, "close", "--id", v2))
    ok(dsvc(home, "get", "--project", "p", "--name", "v2", "--copy", str(tmp_path / "out2")))
    assert read_tree(tmp_path / "out2") == read_tree(big)
    ok(dsvc(home, "fsck"))


def test_copy_onto_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    """The store has room; the target folder does not: the error names the target."""
    home = tmp_path / "home"
    src = tmp_path / "src"
    data = files(src, {f"f{i}.bin": 5 * MiB for i in range(3)}, seed=3)
    ok(dsvc(home, "create", "--project", "p", "--name", "n"))
    ok(dsvc(home, "add", "--files", str(src)))
    ok(dsvc(home, "close"))
    target = small_fs / "copy"
    r = dsvc(home, "get", "--copy", str(target))
    assert_disk_full(r, small_fs, "no space left")
    assert "DSVC_HOME" not in r.stderr  # the store is not what is full
    ok(dsvc(home, "fsck"))
    out = tmp_path / "out"
    ok(dsvc(home, "get", "--copy", str(out)))
    assert read_tree(out) == data


def test_file_size_limit(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (``ulimit -f``): the kernel refuses growth with EFBIG (Python
    ignores SIGXFSZ), which LMDB met while committing a batch."""
    home = tmp_path / "home"
    v1 = files(tmp_path / "v1", {"a.bin": 300_000}, seed=4)
    ok(dsvc(home, "create", "--project", "p", "--name", "v1"))
    ok(dsvc(home, "add", "--files", str(tmp_path / "v1")))
    ok(dsvc(home, "close"))
    size = (home / "store.lmdb" / "data.mdb").stat().st_size

    big = tmp_path / "big"
    files(big, {"x.bin": 3 * MiB}, seed=5)
    v2 = new_id(dsvc(home, "create", "--project", "p", "--name", "v2"))
    r = dsvc(home, "add", "--id", v2, "--files", str(big), fsize=size + MiB)
    assert_disk_full(r, home, "file size limit")

    ok(dsvc(home, "fsck"))
    ok(dsvc(home, "get", "--project", "p", "--name", "v1", "--copy", str(tmp_path / "o1")))
    assert read_tree(tmp_path / "o1") == v1
    ok(dsvc(home, "add", "--id", v2, "--files", str(big)))  # no limit: completes
    ok(dsvc(home, "close", "--id", v2))
    ok(dsvc(home, "get", "--project", "p", "--name", "v2", "--copy", str(tmp_path / "o2")))
    assert read_tree(tmp_path / "o2") == read_tree(big)
