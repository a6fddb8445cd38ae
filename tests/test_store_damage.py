"""Issue 9.16: structural damage to the LMDB file is a clear error, never a crash.

LMDB trusts its file: a truncated ``data.mdb`` used to kill every command with SIGBUS
(``dsvc fsck`` included), an overwritten page gave ``internal error: CorruptedError``
or an ``abort()``. Every command now exits with code 5 and a message naming the store
and the way out (restore from a remote with ``dsvc clone``, or move the store away),
and ``dsvc fsck`` lists the damaged pages. The commands run in subprocesses, because
a signal kills the process that meets it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dsvc.errors import StoreCorruptError
from dsvc.store import Store
from dsvc.storecheck import walk

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096


def dsvc(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSVC_HOME": str(home), "PYTHONPATH": str(REPO), "DSVC_QUIET": "1"}
    env.pop("DSVC_REMOTE", None)
    return subprocess.run(
        [sys.executable, "-m", "dsvc", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one finalized version of three files (plus a draft)."""
    base = tmp_path_factory.mktemp("damage")
    src = base / "src"
    src.mkdir()
    rng = random.Random(16)
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(100_000 + i))
    home = base / "home"
    ok(dsvc(home, "create", "--project", "p", "--name", "n"))
    ok(dsvc(home, "add", "--files", str(src)))
    ok(dsvc(home, "close"))
    # both levels of the chunk index hold entries: these chunks merged, the next new
    store = Store(home)
    assert store.merge_chunk_levels() > 0
    store.close()
    more = base / "more"
    more.mkdir()
    (more / "g.bin").write_bytes(rng.randbytes(50_000))
    ok(dsvc(home, "create", "--project", "p", "--name", "n2"))
    ok(dsvc(home, "add", "--files", str(more)))
    ok(dsvc(home, "close"))
    return home


@pytest.fixture
def home(pristine: Path, tmp_path: Path) -> Path:
    h = tmp_path / "home"
    shutil.copytree(pristine, h)
    return h


def data_file(home: Path) -> Path:
    return home / "store.lmdb" / "data.mdb"


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


COMMANDS = [
    ("list",),
    ("fsck",),
    ("search",),
    ("gc",),
    ("get", "--copy", "{tmp}/copy"),
    ("create", "--project", "p", "--name", "m"),
]


def assert_clean_refusal(r: subprocess.CompletedProcess[str], home: Path, *words: str) -> None:
    """Exit code 5 (not a signal, not "internal error"), naming the store and the remedy."""
    assert r.returncode >= 0, f"killed by {signal.Signals(-r.returncode).name}: {r.stderr}"
    assert r.returncode == 5, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr
    assert str(home) in r.stderr
    assert "dsvc clone" in r.stderr and "move" in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr + r.stdout, (w, r.stderr, r.stdout)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c[0])
def test_truncated_data_file_fails_cleanly(
    home: Path, tmp_path: Path, cmd: tuple[str, ...]
) -> None:
    f = data_file(home)
    os.truncate(f, f.stat().st_size // 3)
    r = dsvc(home, *(a.format(tmp=tmp_path) for a in cmd))
    assert_clean_refusal(r, home, "truncated")


def test_truncated_data_file_is_an_error_in_python(home: Path) -> None:
    f = data_file(home)
    # cut off the last page any database uses (pages past it may be free ones, which
    # LMDB rewrites before it reads them: losing those is no damage)
    last = max(max(pages) for pages in walk(f).pages_of.values())
    os.truncate(f, last * PAGE)
    with pytest.raises(StoreCorruptError, match="truncated"):
        Store(home)


@pytest.mark.parametrize("meta", [0, 1])
def test_overwritten_meta_page_fails_cleanly(home: Path, meta: int) -> None:
    overwrite(data_file(home), meta * PAGE, random.Random(meta).randbytes(PAGE))
    for cmd in (("list",), ("fsck",)):
        assert_clean_refusal(dsvc(home, *cmd), home, "meta page")


@pytest.mark.parametrize(
    "db", ["main", "free", "records", "chunkloc", "chunknew", "objects", "statcache"]
)
@pytest.mark.parametrize("keep_header", [False, True], ids=["whole-page", "body-only"])
def test_overwritten_page_fails_cleanly(
    home: Path, tmp_path: Path, db: str, keep_header: bool
) -> None:
    """Garbage over a database's page: every command refuses the store, none crashes.

    ``body-only`` keeps the 16-byte page header (page number and type intact), which
    LMDB cannot tell from a sound page: it then read past the end of the file (SIGBUS)
    or returned "not found" for data that is there."""
    f = data_file(home)
    pgno = walk(f).pages_of[db][0]
    skip = 16 if keep_header else 0
    overwrite(f, pgno * PAGE + skip, random.Random(pgno).randbytes(PAGE - skip))
    for cmd in COMMANDS:
        r = dsvc(home, *(a.format(tmp=tmp_path) for a in cmd))
        assert_clean_refusal(r, home, "is damaged", f"database {db!r}")


def test_fsck_reports_a_damaged_leaf_deep_in_a_tree(tmp_path: Path) -> None:
    """A page below the roots (what an open does not look at) is found by fsck."""
    home = tmp_path / "home"
    store = Store(home)
    with store.batch() as b:
        for i in range(3000):  # several leaf pages under a branch page
            b.put_statcache(f"/some/path/file-{i:05d}".encode(), os.urandom(40))
    store.close()
    f = data_file(home)
    pages = walk(f).pages_of["statcache"]
    assert len(pages) > 3, "the tree must be deeper than its root"
    leaf = pages[-1]
    overwrite(f, leaf * PAGE + 16, random.Random(1).randbytes(PAGE - 16))
    r = dsvc(home, "fsck")
    assert r.returncode == 5, r.stderr
    assert f"database 'statcache': page {leaf}" in r.stdout, r.stdout
    assert "dsvc clone" in r.stderr
    js = dsvc(home, "fsck", "--json")
    assert js.returncode == 5 and '"ok": false' in js.stdout


def test_structure_walk_ignores_concurrent_writers(tmp_path: Path) -> None:
    """The walk reads a snapshot held open, so pages a writer in another process reuses
    meanwhile are never reported as damage (a false alarm would stop every command)."""
    home = tmp_path / "home"
    Store(home).close()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from dsvc.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "for i in range(4000):\n"
            "    pad = os.urandom(300 if i % 3 else 9000)  # some values on overflow pages\n"
            "    s.put_record(f'x/{i % 300}', {'i': i, 'pad': pad})\n"
            "    if i % 7 == 0:\n"
            "        s.delete_record(f'x/{(i * 13) % 300}')\n",
            str(home),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "DSVC_FSYNC": "0"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        store = Store(home)
        walks = opens = 0
        while writer.poll() is None or walks < 5:
            assert store.structure_problems() == []
            walks += 1
            if walks % 10 == 1:  # what every command does first: open, with its checks
                opened = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import sys; from dsvc.store import Store; Store(sys.argv[1])",
                        str(home),
                    ],
                    cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                    capture_output=True,
                    text=True,
                )
                assert opened.returncode == 0, opened.stderr
                opens += 1
        store.close()
    finally:
        writer.kill() if writer.poll() is None else None
        writer.wait()
    assert writer.returncode == 0
    assert walks >= 5 and opens >= 1
