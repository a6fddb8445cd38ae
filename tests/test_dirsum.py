"""Folder summaries (issue 11): add/sync work folder by folder, and an unchanged folder
costs one scandir + stats + one lookup.

Each summary (``dirsum`` database) is trusted only under the stat cache's rules: the
same stat (size, mtime, ctime, inode, device) for every file, nothing racily clean, and
the tree and every file's content still in the store. gc drops the summaries of what it
sweeps; a killed sync leaves no summary naming missing content.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
from helpers_core import OLD_MTIME_NS, make_tree, read_tree, write_file
from hypothesis import given, settings
from hypothesis import strategies as st

from dsvc import ingest, treeops
from dsvc.dataset import Dataset
from dsvc.errors import InvalidPathError
from dsvc.ids import chunk_id
from dsvc.ingest import DirSummary, _list_entries, _Listing, _ScanCtx, ingest_tree
from dsvc.maintenance import local_gc
from dsvc.objects import (
    KIND_CHUNKFILE,
    KIND_FILE,
    KIND_TREE,
    MODE_DIR,
    MODE_EXEC,
    MODE_FILE,
    Entry,
    encode_tree,
    encode_tree_rows,
)
from dsvc.registry import open_store
from dsvc.store import Store
from dsvc.treeops import Trees, walk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    return h


def _files(n_dirs: int = 3, per_dir: int = 20) -> dict[str, bytes]:
    rng = random.Random(5)
    return {
        f"d{d}/f{i:03d}.txt": rng.randbytes(rng.randrange(160, 800))
        for d in range(n_dirs)
        for i in range(per_dir)
    }


def _ingest(store: Store, src: Path):
    with store.lease("test"):
        return ingest_tree(store, src)


def _tree_files(store: Store, tid: bytes) -> dict[str, bytes]:
    return {"/".join(p): b"".join(store.read_file(e)) for p, e in walk(Trees(store), tid)}


def _summaries(store: Store) -> list[DirSummary]:
    with store.reader() as r:
        return [DirSummary.decode(v) for _, v in r.dirsum_items()]


def _drop_statcache(store: Store) -> None:
    with store.env.begin(write=True) as txn:
        txn.drop(store._dbs["statcache"], delete=False)


def test_unchanged_folders_are_answered_by_their_summary(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    assert first.files == len(files) and first.stats.read_bytes == sum(map(len, files.values()))
    assert _tree_files(store, first.entry.id) == files
    assert len(_summaries(store)) == 4  # the three folders and the top
    # without the per-file stat cache, only the summaries can answer
    _drop_statcache(store)
    again = _ingest(store, src)
    assert again.entry == first.entry
    assert again.stats.cached_files == len(files) and again.stats.read_bytes == 0


def test_a_same_size_same_mtime_rewrite_in_an_unchanged_folder_is_seen(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    target = src / "d1" / "f007.txt"
    before = os.stat(target)
    new = bytes(b ^ 0xFF for b in files["d1/f007.txt"])  # same size
    # the next ctime tick, then the mtime set back: only ctime (and content) differ
    while True:
        target.write_bytes(new)
        os.utime(target, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
        st = os.stat(target)
        if st.st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)
    assert (st.st_size, st.st_mtime_ns, st.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    again = _ingest(store, src)
    assert again.entry != first.entry
    assert again.stats.read_bytes == len(new)  # that file only; its folder's others reused
    assert _tree_files(store, again.entry.id) == {**files, "d1/f007.txt": new}


def test_a_replaced_file_with_the_same_size_and_times_is_seen_by_its_inode(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    _ingest(store, src)
    new = bytes(b ^ 0x55 for b in files["d0/f001.txt"])
    spare = tmp_path / "spare"
    write_file(spare, new)
    os.replace(spare, src / "d0" / "f001.txt")  # a new inode, same size and mtime
    again = _ingest(store, src)
    assert _tree_files(store, again.entry.id) == {**files, "d0/f001.txt": new}


def test_renamed_and_deleted_folders_sync_correctly(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    v1 = Dataset.create(dataset_name="d", dataset_project="p")
    assert v1.sync_folder(src) == (0, len(files), 0)
    v1.finalize()
    os.rename(src / "d0", src / "moved")
    for p in (src / "d2").iterdir():
        p.unlink()
    (src / "d2").rmdir()
    # a new folder under the old name, with files of the same names, sizes and mtimes
    make_tree(src / "d0", {k[3:]: bytes(len(v)) for k, v in files.items() if k.startswith("d0/")})
    v2 = Dataset.create(dataset_name="d", dataset_project="p", parent_datasets=[v1.id])
    removed, added, modified = v2.sync_folder(src)
    assert (removed, added, modified) == (20, 20, 20)
    v2.finalize()
    assert read_tree(Path(Dataset.get(dataset_id=v2.id).get_local_copy())) == read_tree(src)


def test_sync_counts_the_changes_the_walk_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # folders of files whose names match their summaries: the walk knows which files
    # changed, and sync_folder counts them without reading their trees
    # (TreeResult.changes); a rewrite with the same bytes is not a change, a mode change is
    files = _files(3, 10)
    src = tmp_path / "src"
    make_tree(src, files)
    v1 = Dataset.create(dataset_name="d", dataset_project="p")
    assert v1.sync_folder(src) == (0, len(files), 0)
    v1.finalize()
    write_file(src / "d0" / "f001.txt", b"new content")
    write_file(src / "d0" / "f002.txt", files["d0/f002.txt"])  # same bytes, new stat
    write_file(src / "d1" / "f003.txt", b"other content")
    (src / "d2" / "f004.txt").chmod(0o755)
    read: list[tuple[bytes, bytes]] = []
    differing = treeops._differing

    def counting(trees: Trees, a: bytes, b: bytes):  # type: ignore[no-untyped-def]
        read.append((a, b))
        return differing(trees, a, b)

    monkeypatch.setattr(treeops, "_differing", counting)
    v2 = Dataset.create(dataset_name="d", dataset_project="p", parent_datasets=[v1.id])
    assert v2.sync_folder(src) == (0, 0, 3)
    assert len(read) == 1  # the root only: d0, d1 and d2 were counted by the walk
    v2.finalize()
    assert {c.path_str for c in v2.diff()} == {"d0/f001.txt", "d1/f003.txt", "d2/f004.txt"}
    # a folder whose names changed is diffed from its trees, with the same counts
    (src / "d1" / "f005.txt").unlink()
    write_file(src / "d1" / "zz.txt", b"added")
    write_file(src / "d0" / "f006.txt", b"changed again")
    read.clear()
    v3 = Dataset.create(dataset_name="d", dataset_project="p", parent_datasets=[v2.id])
    assert v3.sync_folder(src) == (1, 1, 1)
    assert len(read) == 2  # the root and d1
    v3.finalize()
    assert {c.path_str for c in v3.diff()} == {"d0/f006.txt", "d1/f005.txt", "d1/zz.txt"}


def test_content_gone_from_the_store_makes_the_folder_be_read_again(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    assert store.has_chunk(chunk_id(files["d2/f019.txt"]))
    with store.reader() as r:
        epoch = r.content_epoch()
    with store.batch() as b:  # dropped the way gc and fsck --repair drop content
        b.delete_chunk(chunk_id(files["d2/f019.txt"]))
    with store.reader() as r:
        assert r.content_epoch() == epoch + 1  # a batch that deletes content says so
    again = _ingest(store, src)
    assert again.entry == first.entry
    assert again.stats.read_bytes >= len(files["d2/f019.txt"])
    assert _tree_files(store, again.entry.id) == files
    # the check passed under the new epoch: the next run trusts the summaries again
    _drop_statcache(store)
    assert _ingest(store, src).stats.read_bytes == 0


def test_a_racily_clean_file_keeps_its_folder_from_a_whole_folder_hit(tmp_path: Path) -> None:
    files = _files(1, 5)
    src = tmp_path / "src"
    make_tree(src, files)
    (src / "d0" / "fresh.txt").write_bytes(b"just written")  # mtime = now
    store = open_store()
    _ingest(store, src)
    (summary,) = [s for s in _summaries(store) if s.path.endswith(b"/d0")]
    assert summary.digest is None  # never a whole-folder hit while racy
    again = _ingest(store, src)
    assert again.stats.read_bytes == len(b"just written")  # the others come from the rows
    assert again.stats.cached_files == 5


def test_gc_drops_the_summaries_of_swept_trees_and_a_re_add_reads_again(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    v1 = Dataset.create(dataset_name="d", dataset_project="p")
    v1.add_files(src)
    v1.finalize()
    Dataset.delete(dataset_id=v1.id)
    counts = local_gc(open_store())
    assert counts["summaries_purged"] == 4 and counts["chunks_deleted"] >= len(files)
    assert _summaries(open_store()) == []
    v2 = Dataset.create(dataset_name="d", dataset_project="p")
    assert v2.add_files(src) == len(files)
    v2.finalize()
    assert read_tree(Path(Dataset.get(dataset_id=v2.id).get_local_copy())) == files


def test_gc_keeps_the_summaries_of_live_trees(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    v1 = Dataset.create(dataset_name="d", dataset_project="p")
    v1.add_files(src)
    v1.finalize()
    assert local_gc(open_store())["summaries_purged"] == 0
    store = open_store()
    _drop_statcache(store)
    assert _ingest(store, src).stats.read_bytes == 0


def test_add_files_counts_like_clearml_on_a_summary_hit(tmp_path: Path) -> None:
    files = _files()
    src = tmp_path / "src"
    make_tree(src, files)
    d = Dataset.create(dataset_name="d", dataset_project="p")
    assert d.add_files(src) == len(files)
    # re-added before any upload: ClearML counts this draft's own files again
    assert d.add_files(src) == len(files)
    d.finalize()
    child = Dataset.create(dataset_name="d", dataset_project="p", parent_datasets=[d.id])
    assert child.add_files(src) == 0  # all in the parent
    write_file(src / "d0" / "new.txt", b"new")
    assert child.add_files(src) == 1
    assert child.list_added_files() == ["d0/new.txt"]


CHILD = """
import sys
from dsvc.dataset import Dataset
src, parent = sys.argv[1], sys.argv[2]
ds = Dataset.create(dataset_name="d", dataset_project="p", parent_datasets=[parent])
print(ds.sync_folder(src), flush=True)
ds.finalize()
print("done", ds.id, flush=True)
"""


def _check_summaries(store: Store) -> None:
    """Every summary names a stored tree whose files' content is all stored."""
    for s in _summaries(store):
        assert s is not None
        tree = store.get_tree(s.tree)
        for e in tree.values():
            if e.kind == KIND_CHUNKFILE:
                assert store.has_chunk(e.id)
            elif e.kind != KIND_TREE:
                assert all(store.has_chunk(c) for c, _ in store.get_blob(e.id).chunks)


@pytest.mark.slow
def test_sigkill_during_sync_loses_nothing_committed(tmp_path: Path, home: Path) -> None:
    rng = random.Random(3)
    files = {
        f"s{d:02d}/f{i:03d}.bin": rng.randbytes(rng.randrange(100, 30_000))
        for d in range(30)
        for i in range(60)
    }
    files.update({f"big/b{i}.bin": rng.randbytes(6 << 20) for i in range(4)})
    src = tmp_path / "src"
    make_tree(src, files)
    v1 = Dataset.create(dataset_name="d", dataset_project="p")
    v1.sync_folder(src)
    v1.finalize()
    # change a file in every folder, then kill syncs of the child at random moments
    changed = dict(files)
    for k in list(files)[::50]:
        changed[k] = rng.randbytes(len(files[k]) + 1)
        write_file(src / k, changed[k])
    env = {**os.environ, "PYTHONPATH": REPO}
    # Kill at fault points (every LMDB commit and pack append), not after a delay: how
    # far a sync gets in 0.3 s depends on the machine's load (on a quiet one it had
    # finished, and nothing was killed). Enumerate the points on a copy of the store.
    shutil.copytree(home, tmp_path / "count-home")
    log = tmp_path / "points.log"
    subprocess.run(
        [sys.executable, "-c", CHILD, str(src), v1.id],
        env={
            **env,
            "DSVC_HOME": str(tmp_path / "count-home"),
            "DSVC_FAULT_POINTS": "count",
            "DSVC_FAULT_LOG": str(log),
        },
        capture_output=True,
        check=True,
    )
    n_points = len(log.read_text().splitlines())
    assert n_points >= 6, n_points
    killed = 0
    for k in range(1, 7):  # six points spread over the whole sync + finalize
        p = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), v1.id],
            env={**env, "DSVC_FAULT_POINTS": f"kill:{k * n_points // 7}"},
            capture_output=True,
            timeout=120,
        )
        killed += p.returncode == -signal.SIGKILL
        _check_summaries(open_store())
        # the version committed before stays whole
        got = Path(Dataset.get(dataset_id=v1.id).get_local_copy())
        assert read_tree(got) == files
    assert killed >= 2
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), v1.id],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    v2 = out.split()[-1]
    assert read_tree(Path(Dataset.get(dataset_id=v2).get_local_copy())) == changed


# -- the bulk scan (issue 11: an unchanged folder in C-level loops) ------------------


def _listing_then(folder: Path, change) -> _Listing:
    """List ``folder`` as the scan does, but run ``change`` between the ``scandir`` and
    the ``lstat`` of the entries (a file changing while the folder is scanned)."""
    ctx = _ScanCtx(str(folder.parent), str(folder.parent), frozenset(), [], True)
    out = _Listing(str(folder), (folder.name,))
    fd = os.open(folder, os.O_RDONLY)
    try:
        with os.scandir(fd) as it:
            entries = list(it)
        change()
        _list_entries(ctx, out, entries, ())
    finally:
        os.close(fd)
    return out


def test_a_file_vanishing_between_listing_and_lstat_is_reported_not_fatal(
    tmp_path: Path,
) -> None:
    files = _files(1, 10)
    make_tree(tmp_path / "src", files)
    folder = tmp_path / "src" / "d0"
    out = _listing_then(folder, lambda: (folder / "f003.txt").unlink())
    assert sorted(out.names) == sorted(k[3:] for k in files if k != "d0/f003.txt")
    assert out.skipped == [(str(folder / "f003.txt"), "vanished during the scan")]
    assert [s[0] for s in out.sigs] == [len(files[f"d0/{n}"]) for n in out.names]


def test_a_file_replaced_by_a_folder_after_the_listing_is_not_added(tmp_path: Path) -> None:
    files = _files(1, 10)
    make_tree(tmp_path / "src", files)
    folder = tmp_path / "src" / "d0"

    def swap() -> None:
        (folder / "f005.txt").unlink()
        (folder / "f005.txt").mkdir()

    out = _listing_then(folder, swap)
    assert "f005.txt" not in out.names and len(out.names) == 9
    assert out.skipped == [(str(folder / "f005.txt"), "not a regular file")]


def test_a_listing_error_on_the_scan_thread_is_raised_by_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(6, 3)
    src = tmp_path / "src"
    make_tree(src, files)
    real = ingest._list_folder

    def failing(ctx, d, rel, ignores):
        if d.endswith("d4"):
            raise InvalidPathError(f"cannot read folder {d!r}: injected")
        return real(ctx, d, rel, ignores)

    monkeypatch.setattr(ingest, "_list_folder", failing)
    with pytest.raises(InvalidPathError, match="d4.*injected"):
        _ingest(open_store(), src)
    # nothing left running: the scan threads ended with the walk
    assert not [t for t in threading.enumerate() if t.name.startswith("dsvc-scan")]


def test_many_folders_are_walked_in_order_with_the_scan_ahead(tmp_path: Path) -> None:
    # more folders (nested too) than the scan lists ahead, so prefetched and in-line
    # listings mix; the tree must be the same as a walk without the scan threads
    rng = random.Random(9)
    files = {
        f"a{i:02d}/{'s/' * (i % 3)}f{j}.txt": rng.randbytes(rng.randrange(1, 50))
        for i in range(3 * ingest.SCAN_AHEAD)
        for j in range(3)
    }
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    assert first.files == len(files) and _tree_files(store, first.entry.id) == files
    again = _ingest(store, src)
    assert again.entry == first.entry and again.stats.read_bytes == 0


def test_tree_rows_encode_as_the_tree_of_entries() -> None:
    rng = random.Random(4)
    alphabet = ["a", "B", "z", "0", "_", ".", "é", "ß", "日", "\U0001f600", "~"]
    for n in (1, 2, 7, 300):
        names = {"".join(rng.choices(alphabet, k=rng.randrange(1, 6))) for _ in range(n)}
        names.discard(".")
        names.discard("..")
        entries = {
            name: Entry(
                rng.choice([KIND_CHUNKFILE, KIND_FILE, KIND_TREE]),
                rng.randbytes(16),
                rng.randrange(0, 1 << 40),
                rng.choice([MODE_FILE, MODE_EXEC, MODE_DIR]),
            )
            for name in names
        }
        rows = [(k, e.kind, e.id, e.size, e.mode) for k, e in entries.items()]
        rng.shuffle(rows)
        assert encode_tree_rows(rows) == encode_tree(entries)
        ascii_only = {k: e for k, e in entries.items() if k.isascii()}
        if ascii_only:
            rows = [(k, e.kind, e.id, e.size, e.mode) for k, e in ascii_only.items()]
            assert encode_tree_rows(rows) == encode_tree(ascii_only)


def test_a_folder_with_files_added_removed_and_rewritten_reads_only_those(
    tmp_path: Path,
) -> None:
    files = _files(2, 30)
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    _ingest(store, src)
    # d0: one rewritten in place (same names, same listing order); d1: one added, one
    # removed, one rewritten (another listing: compared name by name)
    new = dict(files)
    new["d0/f004.txt"] = b"rewritten d0"
    new["d1/f010.txt"] = b"rewritten d1"
    new["d1/zz-new.txt"] = b"added"
    del new["d1/f020.txt"]
    for k in ("d0/f004.txt", "d1/f010.txt", "d1/zz-new.txt"):
        write_file(src / k, new[k])
    (src / "d1" / "f020.txt").unlink()
    again = _ingest(store, src)
    assert again.files == len(new)
    assert again.stats.read_bytes == len(b"rewritten d0rewritten d1added")
    assert _tree_files(store, again.entry.id) == new
    # and the summaries written now answer the next run whole
    _drop_statcache(store)
    third = _ingest(store, src)
    assert third.entry == again.entry and third.stats.read_bytes == 0


def _layout_1(store: Store, folder: Path, files: dict[str, bytes], tree: bytes) -> bytes:
    """The layout-1 summary of ``folder`` as the first layout wrote it (rows of
    ``[name, size, mtime_ns, ctime_ns, ino, dev, kind, id]``)."""
    rows = []
    for name in sorted(os.listdir(folder)):
        st = os.stat(folder / name)
        cid = chunk_id(files[f"{folder.name}/{name}"])
        rows.append([name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
        rows[-1] += [KIND_CHUNKFILE, cid]
    chunks = b"".join(r[7] for r in rows)
    size = sum(r[1] for r in rows)
    path = os.fsencode(str(folder))
    body = msgpack.packb(rows, use_bin_type=True)
    return msgpack.packb([1, None, tree, size, len(rows), path, body, chunks, b"", 0])


def test_a_summary_of_the_first_layout_is_used_file_by_file(tmp_path: Path) -> None:
    files = _files(1, 10)
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    key = ingest.dirsum_key(os.fsencode(str(src / "d0")))
    (d0,) = [s for s in _summaries(store) if s.path.endswith(b"/d0")]
    with store.batch() as b:  # as a store written before layout 2 holds it
        b.put_dirsum(key, _layout_1(store, src / "d0", files, d0.tree))
    (old,) = [s for s in _summaries(store) if s.path.endswith(b"/d0")]
    assert old.digest is None and old.tree == d0.tree
    _drop_statcache(store)  # only the summary can answer
    again = _ingest(store, src)
    assert again.entry == first.entry and again.stats.read_bytes == 0
    # a file changed since the layout-1 summary was written: read, the others reused
    with store.batch() as b:
        b.put_dirsum(key, _layout_1(store, src / "d0", files, d0.tree))
    write_file(src / "d0" / "f002.txt", b"changed since layout 1")
    third = _ingest(store, src)
    assert third.stats.read_bytes == len(b"changed since layout 1")
    assert _tree_files(store, third.entry.id) == {**files, "d0/f002.txt": b"changed since layout 1"}


def _as_layout_2(raw: bytes) -> bytes:
    """A layout-3 summary as layout 2 wrote it: version 2, its body uncompressed."""
    s = DirSummary.decode(raw)
    assert s is not None
    body = ingest._Body.decode(s.body)
    assert body is not None
    flat = msgpack.packb(list(body), use_bin_type=True)
    return msgpack.packb([2, *s._replace(body=flat)], use_bin_type=True)


def test_a_summary_of_layout_2_is_still_used(tmp_path: Path) -> None:
    # stores written before the bodies were compressed keep their summaries: a folder
    # of an unchanged listing is a whole-folder hit, a changed one reuses its files
    files = _files(2, 10)
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    with store.reader() as r:
        raws = list(r.dirsum_items())
    assert raws and all(msgpack.unpackb(v)[0] == 3 for _, v in raws)
    with store.batch() as b:
        for k, v in raws:
            b.put_dirsum(bytes(k), _as_layout_2(bytes(v)))
    _drop_statcache(store)  # only the summaries can answer
    again = _ingest(store, src)
    assert again.entry == first.entry and again.stats.read_bytes == 0
    with store.batch() as b:
        for k, v in raws:
            b.put_dirsum(bytes(k), _as_layout_2(bytes(v)))
    _drop_statcache(store)
    write_file(src / "d1" / "f003.txt", b"changed since layout 2")
    third = _ingest(store, src)
    assert third.stats.read_bytes == len(b"changed since layout 2")
    assert _tree_files(store, third.entry.id) == {**files, "d1/f003.txt": b"changed since layout 2"}


_SIG = st.tuples(*[st.integers(0, 2**63 - 1)] * 6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.none() | _SIG, st.sampled_from([1, 2])),
        max_size=40,
    ),
)
def test_a_summary_body_round_trips(files: list) -> None:
    names = [n for n, _, _ in files]
    sigs = [s for _, s, _ in files]
    kinds = [k for _, _, k in files]
    ids = [bytes([i % 256]) * 16 for i in range(len(files))]
    head = msgpack.packb([names, sigs, kinds], use_bin_type=True)
    raw = ingest._Body.encode(head, ids)
    body = ingest._Body.decode(raw)
    assert body is not None
    assert list(body.names) == names and list(body.sigs) == sigs
    assert list(body.kinds) == kinds and list(body.ids) == ids
    # the layout-2 form of the same columns decodes to the same body
    flat = msgpack.packb([names, sigs, kinds, ids], use_bin_type=True)
    assert ingest._Body.decode(flat) == body


@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb([b"not a zstd frame", []]),
        msgpack.packb([b"\x28\xb5\x2f\xfd" + b"\x00" * 8, []]),  # a zstd magic, then junk
        msgpack.packb([1, 2, 3, 4]),  # columns that are not arrays
        msgpack.packb([[1], [2], [3]]),
    ],
)
def test_a_damaged_summary_body_is_ignored(raw: bytes) -> None:
    assert ingest._Body.decode(raw) is None


def test_a_summary_of_an_unknown_layout_is_not_used(tmp_path: Path) -> None:
    files = _files(1, 10)
    src = tmp_path / "src"
    make_tree(src, files)
    store = open_store()
    first = _ingest(store, src)
    key = ingest.dirsum_key(os.fsencode(str(src / "d0")))
    with store.batch() as b:
        b.put_dirsum(key, msgpack.packb([9, "from a newer dsvc"]))
    _drop_statcache(store)
    again = _ingest(store, src)
    assert again.entry == first.entry
    assert again.stats.read_bytes == sum(map(len, files.values()))  # read again, correctly
