"""Crash safety: an ingest killed with SIGKILL at random moments never leaves a torn store.

After every kill the store must open, every chunk and object must verify against its
id, every stat-cache entry must point at content that exists (content is committed
before what refers to it), and re-running the ingest must complete and materialize
byte-for-byte the source folder.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dsvc.checkout import materialize
from dsvc.codec import decode_frame
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE
from dsvc.objects import KIND_CHUNKFILE, Blob, Commit, decode_tree
from dsvc.store import StatEntry, Store
from dsvc.treeops import Trees, walk
from tests.helpers_core import make_tree, read_tree

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
RUNS = 8

CHILD = """
import sys
from dsvc.ingest import ingest_path
from dsvc.objects import EMPTY_TREE_ID, Commit
from dsvc.store import Store
from dsvc.treeops import Trees, apply_edits

home, src = sys.argv[1], sys.argv[2]
store = Store(home)
entries, stats = ingest_path(store, src, max_workers=2)
with store.batch() as b:
    root = apply_edits(Trees(store, b), EMPTY_TREE_ID, entries)
    commit = b.put_commit(Commit(root, (), {"name": "crash", "files": len(entries)}))
store.put_record("crash/head", {"root": root, "commit": commit, "files": len(entries)})
print("done", stats.cached_files, flush=True)
"""


def _words_file(rng: random.Random, n: int) -> bytes:
    """Compressible but unique text (so zstd frames are exercised too)."""
    vocab = [rng.randbytes(rng.randrange(2, 9)).hex() for _ in range(200)]
    out = bytearray()
    while len(out) < n:
        out += " ".join(rng.choices(vocab, k=64)).encode() + b"\n"
    return bytes(out[:n])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """~270 MiB: many small files, a few compressible ones and several 20-50 MiB files."""
    root = tmp_path_factory.mktemp("crash-src")
    rng = random.Random(2024)
    files: dict[str, bytes] = {}
    for i in range(1500):
        files[f"small/{i % 20:02d}/f{i:04d}.bin"] = rng.randbytes(rng.randrange(0, 60_000))
    for i in range(6):
        files[f"text/t{i}.txt"] = _words_file(rng, rng.randrange(1 * MiB, 6 * MiB))
    for i, mib in enumerate((20, 27, 35, 48, 44, 30)):
        files[f"large/l{i}.bin"] = rng.randbytes(mib * MiB)
    make_tree(root, files)
    return root, files


def run_child(home, src, kill_after: float | None) -> int:
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), str(src)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if kill_after is None:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        return 0
    try:
        p.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    return p.returncode


def check_store(home) -> dict[str, int]:
    """Open the store and verify everything in it; returns counts."""
    store = Store(home)
    counts = {"chunks": 0, "objects": 0, "statcache": 0}
    try:
        with store.reader() as txn:
            chunks = set()
            for key, frame in txn.chunks():  # packed: every index entry's bytes are there
                assert frame is not None, f"chunk {key.hex()} indexed but not in its pack"
                decode_frame(frame, TAG_CHUNK, key)
                chunks.add(key)
            objects: dict[bytes, bytes] = {}
            for key, raw in txn.objects():
                tag = raw[:1]
                data = decode_frame(raw[1:], tag, key)
                if tag == TAG_TREE:
                    decode_tree(data, key)
                elif tag == TAG_BLOB:
                    blob = Blob.decode(data, key)
                    # a blob is written after its chunks
                    assert all(c in chunks for c, _ in blob.chunks), "blob before chunks"
                elif tag == TAG_COMMIT:
                    Commit.decode(data, key)
                else:
                    raise AssertionError(f"unknown object tag {tag!r}")
                objects[key] = tag
            for _key, raw in txn.statcache_items():
                e = StatEntry.decode(raw)
                assert e is not None, "a stat-cache value of an unknown layout"
                size, kind, oid, path = e.size, e.kind, e.id, e.path
                if kind == KIND_CHUNKFILE:
                    assert oid in chunks, f"stat cache of {path!r} points at a missing chunk"
                else:
                    assert objects.get(oid) == TAG_BLOB, f"stat cache of {path!r}: no blob"
                    assert store.get_blob(oid).size == size
                counts["statcache"] += 1
        counts["chunks"], counts["objects"] = len(chunks), len(objects)
        head = store.get_record("crash/head")
        if head is not None:  # a published head is complete
            files = list(walk(Trees(store), head["root"]))
            assert len(files) == head["files"]
            assert store.get_commit(head["commit"]).tree == head["root"]
    finally:
        store.close()
    return counts


def test_sigkill_during_ingest_never_tears_the_store(tmp_path, source):
    src, files = source
    t0 = time.monotonic()
    # measure one complete run to spread the kills over it
    run_child(tmp_path / "calibrate", src, None)
    full = time.monotonic() - t0
    # each run's store and copy hold ~0.5 GB: drop them once checked, so the test needs
    # one run's disk space, not nine
    shutil.rmtree(tmp_path / "calibrate")
    rng = random.Random(7)
    killed = 0
    for i in range(RUNS):
        home = tmp_path / f"home{i}"
        delay = rng.uniform(0.25, max(0.5, full))
        rc = run_child(home, src, delay)
        killed += rc == -signal.SIGKILL
        check_store(home)
        # re-running completes and yields exactly the source
        run_child(home, src, None)
        counts = check_store(home)
        assert counts["statcache"] == len(files)
        store = Store(home)
        head = store.get_record("crash/head")
        target = tmp_path / f"out{i}"
        materialize(store, list(walk(Trees(store), head["root"])), target, max_workers=2)
        assert read_tree(target) == files
        store.close()
        shutil.rmtree(home)
        shutil.rmtree(target)
    assert killed >= RUNS // 2, f"only {killed} of {RUNS} runs were killed mid-way"


def test_sigkill_repeatedly_on_one_store(tmp_path, source):
    """Kills accumulate on one store (each run resumes from the last one's commits)."""
    src, files = source
    home = tmp_path / "home"
    rng = random.Random(11)
    for _ in range(RUNS):
        run_child(home, src, rng.uniform(0.25, 1.0))
        check_store(home)
    run_child(home, src, None)
    check_store(home)
    store = Store(home)
    head = store.get_record("crash/head")
    got = {"/".join(p): b"".join(store.read_file(e)) for p, e in walk(Trees(store), head["root"])}
    assert got == files
    store.close()


DEFERRED_CHILD = """
import sys
import dsvc.ingest
# tiny limits, so this small ingest appends frames to the pack several times per index
# commit (the 1M-file cadence of issue 11, scaled down)
dsvc.ingest.WRITE_BATCH_BYTES = 8 << 10
dsvc.ingest.WRITE_BATCH_OPS = 150
""" + CHILD


def test_kill_between_pack_appends_and_the_deferred_index_commit(tmp_path):
    """Issue 11: the ingest writer appends chunk frames to the pack file ahead of the
    transaction that indexes them (commits are rarer than appends). A kill at any point
    in between (after an append, before or after a commit) leaves a sound store whose
    stat cache and trees name only indexed chunks; the re-run completes."""
    src = tmp_path / "src"
    rng = random.Random(5)
    files = {
        f"d{i}/f{j:03d}.txt": b"%d/%d " % (i, j) + rng.randbytes(rng.randrange(100, 900))
        for i in range(6)
        for j in range(100)
    }
    make_tree(src, files)
    log = tmp_path / "points.log"
    env = {**os.environ, "DSVC_FAULT_POINTS": "count", "DSVC_FAULT_LOG": str(log)}
    subprocess.run(
        [sys.executable, "-c", DEFERRED_CHILD, str(tmp_path / "count"), str(src)],
        cwd=REPO, env=env, capture_output=True, check=True,
    )
    points = [ln.split("\t") for ln in log.read_text().splitlines()]
    kinds = [p[1] for p in points]
    # appends run ahead of commits: some append follows another with no commit between
    assert any(a == b == "pack.append" for a, b in zip(kinds, kinds[1:])), kinds
    appends = [int(p[0]) for p in points if p[1] == "pack.append"]
    commits = [int(p[0]) for p in points if p[1] == "lmdb.commit" and "chunkloc" in p[3]]
    chosen = sorted(set(appends[1::3] + commits[::3]))
    killed = 0
    for n in chosen:
        home = tmp_path / f"home{n}"
        env = {**os.environ, "DSVC_FAULT_POINTS": f"kill:{n}"}
        p = subprocess.run(
            [sys.executable, "-c", DEFERRED_CHILD, str(home), str(src)],
            cwd=REPO, env=env, capture_output=True, timeout=120,
        )
        killed += p.returncode == -signal.SIGKILL
        check_store(home)  # every indexed chunk is in its pack; the stat cache names them
        run_child(home, src, None)
        check_store(home)
        store = Store(home)
        try:
            head = store.get_record("crash/head")
            got = {
                "/".join(p): b"".join(store.read_file(e))
                for p, e in walk(Trees(store), head["root"])
            }
            assert got == files
        finally:
            store.close()
    assert killed == len(chosen) >= 4
