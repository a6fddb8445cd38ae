"""Materializing trees into folders (dsvc.checkout), including hostile and corrupt input."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys

import msgpack
import pytest

from dsvc.checkout import ContentCache, materialize, materialize_shared, safe_join
from dsvc.errors import IntegrityError, InvalidPathError, StateError
from dsvc.ids import TAG_TREE, chunk_id, to_hex
from dsvc.ingest import ingest_path
from dsvc.objects import EMPTY_TREE_ID, KIND_CHUNKFILE, KIND_FILE, KIND_TREE, MODE_FILE, Entry
from dsvc.store import Store
from dsvc.treeops import Trees, apply_edits, walk
from tests.helpers_core import chunk_place, flip_chunk, make_tree, open_store, read_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

rng = random.Random(99)
FILES = {
    "a.txt": b"alpha\n",
    "empty": b"",
    "bin/run.sh": b"#!/bin/sh\necho run\n",
    "deep/er/still/x.bin": rng.randbytes(300_000),
    "deep/er/y.bin": rng.randbytes(50_000),
    "dup1": b"same" * 1000,
    "dup2": b"same" * 1000,
    "é/ü.txt": b"unicode",
}
EXEC = {"bin/run.sh"}


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "home")
    yield s
    s.close()


def ingest_tree(store: Store, folder, files=FILES, exec_paths=EXEC) -> bytes:
    make_tree(folder, files, exec_paths=exec_paths)
    entries, _ = ingest_path(store, folder)
    with store.batch() as b:
        return apply_edits(Trees(store, b), EMPTY_TREE_ID, entries)


def listing(store: Store, root: bytes):
    return list(walk(Trees(store), root))


def leftovers(parent) -> list[str]:
    return [n for n in os.listdir(parent) if "dsvc-tmp" in n]


def test_round_trip_content_and_exec_bit(tmp_path, store):
    root = ingest_tree(store, tmp_path / "src")
    target = tmp_path / "out" / "copy"
    assert not target.exists()
    st = materialize(store, listing(store, root), target, max_workers=3)
    assert read_tree(target) == FILES
    assert st.files == len(FILES) and st.bytes == sum(map(len, FILES.values()))
    assert st.written == len(FILES) and st.linked == 0
    assert os.stat(target / "bin/run.sh").st_mode & 0o777 == 0o755
    assert os.stat(target / "a.txt").st_mode & 0o111 == 0
    # mutable copy: plain independent writable files
    assert os.stat(target / "dup1").st_ino != os.stat(target / "dup2").st_ino
    (target / "a.txt").write_bytes(b"changed")
    assert leftovers(tmp_path / "out") == []


def test_existing_targets(tmp_path, store):
    root = ingest_tree(store, tmp_path / "src")
    files = listing(store, root)
    target = tmp_path / "t"
    # an existing empty folder is simply replaced
    target.mkdir()
    materialize(store, files, target)
    assert read_tree(target) == FILES
    # a non-empty target is refused and left untouched
    (target / "extra.txt").write_bytes(b"mine")
    before = read_tree(target)
    with pytest.raises(StateError, match="not empty"):
        materialize(store, files[:1], target)
    assert read_tree(target) == before
    # a file in the way is refused too
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(StateError):
        materialize(store, files, tmp_path / "afile")
    assert (tmp_path / "afile").read_bytes() == b"x"
    # overwrite replaces the whole folder
    materialize(store, files[:1], target, overwrite=True)
    assert read_tree(target) == {"a.txt": FILES["a.txt"]}
    materialize(store, files[:1], tmp_path / "afile", overwrite=True)
    assert read_tree(tmp_path / "afile") == {"a.txt": FILES["a.txt"]}
    assert leftovers(tmp_path) == []


def test_zero_files(tmp_path, store):
    materialize(store, [], tmp_path / "empty")
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.parametrize(
    "rel",
    [("..",), ("a", "..", "..", "x"), ("/abs",), ("",), (), ("a/../../b",), ("x\x00",), (".",)],
)
def test_safe_join_rejects_escapes(tmp_path, rel):
    with pytest.raises(InvalidPathError):
        safe_join(str(tmp_path), rel)


def test_safe_join_accepts_names(tmp_path):
    assert safe_join(str(tmp_path), ("a", "b c", "..d", "é")) == str(tmp_path / "a/b c/..d/é")


def _raw_tree(items) -> bytes:
    return msgpack.packb(items, use_bin_type=True)


@pytest.mark.parametrize("bad", ["../x", "/abs", "..", "a/../../x"])
def test_hostile_tree_is_rejected_before_anything_is_written(tmp_path, store, bad):
    cid = chunk_id(b"evil")
    with store.batch() as b:
        b.put_chunk(b"evil")
        sub = b.put_object(TAG_TREE, _raw_tree([[bad, KIND_CHUNKFILE, cid, 4, MODE_FILE]]))
        root = b.put_object(TAG_TREE, _raw_tree([["sub", KIND_TREE, sub, 4, 0]]))
    with pytest.raises(IntegrityError) as ei:
        store.get_tree(sub)
    assert to_hex(sub) in str(ei.value)
    target = tmp_path / "w" / "t"
    with pytest.raises(IntegrityError):
        materialize(store, listing(store, root), target)
    assert not target.exists()
    assert not (tmp_path / "x").exists() and not os.path.exists("/abs")
    # a caller that builds the file list by hand cannot escape either
    with pytest.raises(InvalidPathError):
        materialize(store, [(tuple(bad.split("/")), Entry(KIND_CHUNKFILE, cid, 4))], target)
    assert not target.exists() and leftovers(tmp_path / "w") == []
    assert not (tmp_path / "w" / "x").exists()


def test_content_cache_shares_inodes(tmp_path, store):
    root1 = ingest_tree(store, tmp_path / "src1")
    files2 = {**FILES, "a.txt": b"alpha v2\n", "new.bin": b"new"}
    root2 = ingest_tree(store, tmp_path / "src2", files2)
    cache = ContentCache(tmp_path / "cache" / "content")
    s1 = materialize(store, listing(store, root1), tmp_path / "v1", content_cache=cache)
    s2 = materialize(store, listing(store, root2), tmp_path / "v2", content_cache=cache)
    assert read_tree(tmp_path / "v1") == FILES and read_tree(tmp_path / "v2") == files2
    assert s1.linked == len(FILES) and s2.linked == len(files2)
    for rel in ("deep/er/still/x.bin", "bin/run.sh", "é/ü.txt"):
        a, b = os.stat(tmp_path / "v1" / rel), os.stat(tmp_path / "v2" / rel)
        assert a.st_ino == b.st_ino and a.st_nlink > 2  # cache + two copies
    a = os.stat(tmp_path / "v1" / "a.txt")
    assert a.st_ino != os.stat(tmp_path / "v2" / "a.txt").st_ino
    # equal content inside one version shares one cache file as well
    assert os.stat(tmp_path / "v1/dup1").st_ino == os.stat(tmp_path / "v1/dup2").st_ino
    # read-only bits (exec kept)
    assert stat.S_IMODE(a.st_mode) == 0o444
    assert stat.S_IMODE(os.stat(tmp_path / "v1/bin/run.sh").st_mode) == 0o555
    # cache files are named by content id
    e = dict(listing(store, root1))[("a.txt",)]
    assert os.path.samefile(cache.path_for(e), tmp_path / "v1" / "a.txt")
    assert os.path.basename(cache.path_for(e)) == to_hex(e.id)


def test_materialize_shared_reuses_an_existing_copy(tmp_path, store):
    root = ingest_tree(store, tmp_path / "src")
    cache = ContentCache(tmp_path / "cache")
    files = listing(store, root)
    st, built = materialize_shared(store, files, tmp_path / "shared", content_cache=cache)
    assert built and st.files == len(FILES)
    st2, built2 = materialize_shared(store, files, tmp_path / "shared", content_cache=cache)
    assert not built2 and st2.files == 0
    assert read_tree(tmp_path / "shared") == FILES


RACER = """
import sys, time
from dsvc.checkout import ContentCache, materialize_shared
from dsvc.store import Store
from dsvc.treeops import Trees, walk
home, root, target, cache, start = sys.argv[1:6]
s = Store(home)
files = list(walk(Trees(s), bytes.fromhex(root)))
while time.time() < float(start):
    time.sleep(0.001)
stats, built = materialize_shared(s, files, target, content_cache=ContentCache(
    __import__("pathlib").Path(cache)))
print("built" if built else "reused")
"""


def test_materialize_shared_two_processes_race(tmp_path, store):
    import time

    many = {f"f/{i:03d}.bin": random.Random(i).randbytes(20_000) for i in range(150)}
    files = {**FILES, **many}
    root = ingest_tree(store, tmp_path / "src", files)
    target = tmp_path / "copies" / "v1"
    start = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                str(store.home),
                root.hex(),
                str(target),
                str(tmp_path / "cache"),
                str(start),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert "built" in outs and set(outs) <= {"built", "reused"}
    assert os.listdir(tmp_path / "copies") == ["v1"]  # one folder, no temporaries
    assert read_tree(target) == files


# -- corruption ------------------------------------------------------------------------


def _corrupt_chunk(store: Store, cid: bytes) -> None:
    """Flip one payload byte of a stored chunk frame in its pack file."""
    _, _, length = chunk_place(store, cid)
    flip_chunk(store, cid, length // 2 + 1)


@pytest.mark.parametrize("which", ["deep/er/still/x.bin", "dup1", "a.txt"])
def test_corrupt_chunk_raises_and_writes_nothing(tmp_path, store, which):
    root = ingest_tree(store, tmp_path / "src")
    files = listing(store, root)
    entry = dict(files)[tuple(which.split("/"))]
    cid = entry.id if entry.kind == KIND_CHUNKFILE else store.get_blob(entry.id).chunks[1][0]
    assert entry.kind == (KIND_FILE if which.startswith("deep") else KIND_CHUNKFILE)
    _corrupt_chunk(store, cid)
    with pytest.raises(IntegrityError) as ei:
        b"".join(store.read_file(entry))
    assert ei.value.object_id == cid and to_hex(cid) in str(ei.value)
    # plain copy: the target never appears, no partial temporaries remain
    with pytest.raises(IntegrityError, match=to_hex(cid)):
        materialize(store, files, tmp_path / "out" / "t", max_workers=2)
    assert not (tmp_path / "out" / "t").exists() and leftovers(tmp_path / "out") == []
    # shared copy: no cache file for the bad content, no temporary left in the cache
    cache = ContentCache(tmp_path / "cache")
    with pytest.raises(IntegrityError):
        materialize_shared(store, files, tmp_path / "out" / "s", content_cache=cache)
    assert not (tmp_path / "out" / "s").exists()
    assert not os.path.exists(cache.path_for(entry))
    cached = [n for _d, _s, names in os.walk(cache.root) for n in names]
    assert not any(".tmp-" in n for n in cached)
    # other files still read fine
    for rel, e in files:
        if e != entry and (e.kind != KIND_FILE or cid not in dict(store.get_blob(e.id).chunks)):
            assert b"".join(store.read_file(e)) == FILES["/".join(rel)]


def test_corrupt_tree_object_is_detected(tmp_path, store):
    root = ingest_tree(store, tmp_path / "src")
    with store.env.begin(write=True) as txn:
        raw = bytearray(txn.get(root, db=store._dbs["objects"]))
        raw[-1] ^= 0x01
        txn.put(root, bytes(raw), db=store._dbs["objects"])
    with pytest.raises(IntegrityError, match=to_hex(root)):
        store.get_tree(root)


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_file_is_never_written_through_a_planted_link_or_over_a_file(tmp_path, store, planted):
    """docs/architecture.md invariant 7: each file is created with O_EXCL|O_NOFOLLOW, so
    a symlink (or file) that appeared at its name is refused, never written through."""
    from dsvc.checkout import _write_file

    root = ingest_tree(store, tmp_path / "src")
    (_, entry) = next((p, e) for p, e in listing(store, root) if p == ("a.txt",))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    dest = tmp_path / "dest.txt"
    if planted == "symlink":
        dest.symlink_to(outside)
    else:
        dest.write_bytes(b"keep me too")
    with pytest.raises(FileExistsError):
        _write_file(store, entry, str(dest))
    assert outside.read_bytes() == b"keep me"
    assert dest.is_symlink() if planted == "symlink" else dest.read_bytes() == b"keep me too"
