"""Issue 9.7: a cached read-only copy that was changed is detected and repaired.

Cached copies share content: hard links of one content-cache file (reflinks where the
filesystem has them). Root ignores the read-only mode, so an in-place write to one
copy reaches every version holding that content, including the content cache itself.
``get_local_copy`` checks a copy against its manifest (size, mtime, ctime, inode per
file, one ``lstat`` each) before handing it out and repairs it from the store;
``dsvc fsck`` reports the cache, ``dsvc cache verify`` repairs it, ``dsvc cache clear``
empties it. These tests run as whoever runs the suite; the in-place writes first make
the file writable, which is what root's writes amount to.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_helpers import read_tree, write_tree

from dsvc import checkout, fsbatch
from dsvc import registry as reg
from dsvc.dataset import Dataset
from dsvc.maintenance import fsck
from dsvc.registry import open_store
from dsvc.treeops import Trees, walk

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return h


@pytest.fixture
def cache_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small files go through the content cache too (by default a whole copy writes
    them into the copy: ``checkout.SMALL_FILE``), for tests of the cache's own rules."""
    monkeypatch.setattr(checkout, "SMALL_FILE", 0)


BASE = {"shared.txt": b"shared content\n" * 10, "d/other.bin": os.urandom(5000), "e": b""}


def version(tmp: Path, files: dict[str, bytes], name: str = "ds") -> Dataset:
    ds = Dataset.create(dataset_name=name, dataset_project="proj")
    ds.add_files(write_tree(tmp / f"src-{ds.id}", files))
    ds.finalize()
    return ds


def write_in_place(path: Path, data: bytes, keep_mtime: bool = False) -> None:
    """What root's ``open(path, 'r+')`` does to a read-only file: same inode."""
    st = os.stat(path)
    os.chmod(path, st.st_mode | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.chmod(path, st.st_mode)
    if keep_mtime:  # `touch -r`-style: the mtime (sentinel included) is put back
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_in_place_write_to_one_copy_is_repaired_for_every_version(tmp_path: Path) -> None:
    a = version(tmp_path, BASE, "a")
    b = version(tmp_path, {**BASE, "only-b": b"b"}, "b")
    pa, pb = Path(a.get_local_copy()), Path(b.get_local_copy())
    write_in_place(pa / "shared.txt", b"EVIL" * 38)  # same size: only the mtime tells
    assert read_tree(a.get_local_copy()) == BASE
    assert read_tree(b.get_local_copy()) == {**BASE, "only-b": b"b"}
    # a version materialized later must not link the damaged content either
    c = version(tmp_path, {**BASE, "only-c": b"c"}, "c")
    assert read_tree(c.get_local_copy()) == {**BASE, "only-c": b"c"}
    assert read_tree(pb) == {**BASE, "only-b": b"b"}


def test_removed_and_replaced_files_are_restored(tmp_path: Path) -> None:
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    os.unlink(p / "shared.txt")
    shutil.rmtree(p / "d")
    assert read_tree(a.get_local_copy()) == BASE
    # a new inode with the same size and mtime (`cp -p` of another file)
    (tmp_path / "fake").write_bytes(b"x" * len(BASE["shared.txt"]))
    st = os.stat(p / "shared.txt")
    os.unlink(p / "shared.txt")
    shutil.copy2(tmp_path / "fake", p / "shared.txt")
    os.utime(p / "shared.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert read_tree(a.get_local_copy()) == BASE


def test_write_with_mtime_put_back_is_caught_by_ctime(tmp_path: Path) -> None:
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    write_in_place(p / "d" / "other.bin", os.urandom(5000), keep_mtime=True)
    assert read_tree(a.get_local_copy()) == BASE


def test_sharing_content_with_a_new_version_repairs_nothing(tmp_path: Path) -> None:
    """Linking the same content into another copy changes the shared inode's ctime:
    that alone is not damage (the file is hashed once, then the manifest follows)."""
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    inodes = {f: os.stat(p / f).st_ino for f in BASE}
    b = version(tmp_path, {**BASE, "x": b"x"}, "b")
    b.get_local_copy()
    assert read_tree(a.get_local_copy()) == BASE
    assert {f: os.stat(p / f).st_ino for f in BASE} == inodes  # nothing was re-placed
    store = open_store()
    rows = checkout.read_manifest(
        checkout.manifest_path(checkout.ContentCache(store.home / "cache" / "content"), a.id)
    )
    assert rows is not None
    assert checkout.check_copy(store, str(p), rows) == ([], False)


def test_copy_without_manifest_is_verified_by_content(tmp_path: Path, home: Path) -> None:
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    (home / "cache" / "manifests" / a.id).unlink()  # a crash right after the build
    write_in_place(p / "shared.txt", b"Z" * len(BASE["shared.txt"]), keep_mtime=True)
    assert read_tree(a.get_local_copy()) == BASE
    assert (home / "cache" / "manifests" / a.id).is_file()


@pytest.mark.usefixtures("cache_small")
def test_fsck_reports_the_cache_and_cache_verify_repairs_it(tmp_path: Path, home: Path) -> None:
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    write_in_place(p / "shared.txt", b"EVIL" * 38)
    os.unlink(p / "e")
    store = open_store()
    rep = fsck(store, progress=False)
    assert len(rep["cache"]["bad_cache_files"]) == 1
    assert sorted(rep["cache"]["bad_copy_files"]) == [f"{a.id}/e", f"{a.id}/shared.txt"]
    reg.close_all()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "dsvc"]
    out = subprocess.run([*run, "fsck"], capture_output=True, text=True, env=env)
    assert out.returncode == 5 and "cache verify" in out.stderr, out.stderr
    out = subprocess.run([*run, "cache", "verify"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "repaired 2" in out.stdout, out.stdout
    assert read_tree(p) == BASE  # repaired in place, without a get_local_copy
    out = subprocess.run([*run, "fsck"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*run, "cache", "clear"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert not p.exists() and not (home / "cache" / "content").exists()
    assert read_tree(Dataset.get(dataset_id=a.id).get_local_copy()) == BASE


def test_reflinks_are_used_where_the_filesystem_has_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine's filesystem may lack FICLONE: a stand-in ioctl copies the bytes
    (what a reflink looks like from user space: its own inode, same content)."""
    calls = []

    def ficlone(dfd: int, req: int, sfd: int) -> int:
        assert req == checkout._FICLONE
        calls.append(req)
        os.lseek(sfd, 0, os.SEEK_SET)
        while chunk := os.read(sfd, 1 << 16):
            os.write(dfd, chunk)
        return 0

    monkeypatch.setattr(checkout.fcntl, "ioctl", ficlone)
    a = version(tmp_path, BASE, "a")
    b = version(tmp_path, {**BASE, "x": b"x"}, "b")
    pa, pb = Path(a.get_local_copy()), Path(b.get_local_copy())
    assert calls
    for f in BASE:  # separate inodes: a write to one copy cannot reach the other
        assert os.stat(pa / f).st_ino != os.stat(pb / f).st_ino
        assert os.stat(pa / f).st_nlink == 1
    write_in_place(pa / "shared.txt", b"EVIL" * 38)
    assert read_tree(pb) == {**BASE, "x": b"x"}
    assert read_tree(a.get_local_copy()) == BASE


@pytest.mark.usefixtures("cache_small")
def test_without_reflinks_copies_fall_back_to_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_clone(dfd: int, req: int, sfd: int) -> int:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(checkout.fcntl, "ioctl", no_clone)
    a = version(tmp_path, BASE, "a")
    b = version(tmp_path, {**BASE, "x": b"x"}, "b")
    pa, pb = Path(a.get_local_copy()), Path(b.get_local_copy())
    assert os.stat(pa / "shared.txt").st_ino == os.stat(pb / "shared.txt").st_ino
    assert read_tree(pb) == {**BASE, "x": b"x"}


@pytest.mark.usefixtures("cache_small")
def test_filesystem_with_coarse_mtimes_serves_without_repairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where mtimes lose their nanoseconds the sentinel cannot be used: copies still
    build, are served without being repaired each time, and damage is still found."""
    real_utime = os.utime

    def coarse(path, *a, ns=None, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if ns is None:
            return real_utime(path, *a, **kw)
        return real_utime(path, *a, ns=tuple(t - t % 1_000_000_000 for t in ns), **kw)

    monkeypatch.setattr(os, "utime", coarse)
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    inodes = {f: os.stat(p / f).st_ino for f in BASE}
    b = version(tmp_path, BASE, "b")  # all of its content is in the cache already
    pb = Path(b.get_local_copy())
    assert read_tree(pb) == BASE
    assert {f: os.stat(pb / f).st_ino for f in BASE} == inodes  # linked, not rewritten
    assert read_tree(a.get_local_copy()) == BASE
    assert {f: os.stat(p / f).st_ino for f in BASE} == inodes  # nothing was re-placed
    write_in_place(p / "shared.txt", b"EVIL" * 38)
    assert read_tree(a.get_local_copy()) == BASE


def test_cache_layout_is_the_one_place_copies_live(tmp_path: Path, home: Path) -> None:
    """Issue 12: get_local_copy, serve_copy and local gc share checkout.CacheLayout; gc
    of a forgotten version removes its copies (whole and partial) and their manifests,
    and keeps those of live versions and copies being built."""
    from dsvc.maintenance import local_gc

    a = version(tmp_path, BASE, "a")
    b = version(tmp_path, {"x": b"x"}, "b")
    layout = checkout.CacheLayout(home)
    whole = Path(a.get_local_copy())
    part = Path(a.get_local_copy(part=0, num_parts=2))
    sel = Path(a.get_local_copy(files=["e"]))
    keep = Path(b.get_local_copy())
    assert whole == layout.copy_path(layout.copy_name(a.id))
    assert part == layout.copy_path(layout.copy_name(a.id, part=0, num_parts=2))
    assert sel == layout.copy_path(layout.copy_name(a.id, ["e"]))
    assert {layout.dataset_of(p.name) for p in (whole, part, sel)} == {a.id}
    for p in (whole, part, sel, keep):
        assert layout.manifest_path(p.name).is_file()
    building = Path(layout.temp_beside(str(layout.copy_path(a.id))))
    building.mkdir()
    assert layout.is_temp(building.name) and layout.dataset_of(building.name) is None
    reg.remove(open_store(), a.id)
    assert local_gc(open_store())["cached_copies_deleted"] == 3
    for p in (whole, part, sel):
        assert not p.exists() and not layout.manifest_path(p.name).exists()
    assert read_tree(keep) == {"x": b"x"} and layout.manifest_path(keep.name).is_file()
    assert building.is_dir()  # young: its builder may be about to lock it


def test_a_child_copy_links_its_parents_content_and_writes_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: a whole-version copy is built folder by folder from the trees (never
    from a flat listing of the version), links every content the content cache holds
    (the parent's copy put it there) and writes only new content; the parent's copy is
    then served without reading its files again (a changed link count explains the
    changed ctime), and the manifest has one part per folder."""
    files = {f"d{i}/f{j}": f"{i}-{j}".encode() for i in range(3) for j in range(4)}
    a = version(tmp_path, {**files, "top": b"t"}, "a")
    b = Dataset.create(dataset_name="a", dataset_project="proj", parent_datasets=[a])
    b.add_files(write_tree(tmp_path / "chg", {"d1/f2": b"changed", "d2/new": b"new"}))
    b.finalize()

    def no_flat_listing(*_a: object, **_k: object) -> None:
        raise AssertionError("a whole copy must not list every file")

    monkeypatch.setattr(Dataset, "_selected", no_flat_listing)
    writes: list[str] = []
    real_write = checkout._write_shared

    def counted(store, cache, txn, entry, dest, *a):  # noqa: ANN001, ANN002, ANN202
        writes.append(os.path.relpath(dest, os.path.dirname(dest) + "/.."))
        return real_write(store, cache, txn, entry, dest, *a)

    monkeypatch.setattr(checkout, "_write_shared", counted)
    real_batch = fsbatch.write_files

    def counted_batch(folder, names, *a):  # noqa: ANN001, ANN002, ANN202
        writes.extend(os.path.relpath(f"{folder}/{n}", folder + "/..") for n in names)
        return real_batch(folder, names, *a)

    monkeypatch.setattr(fsbatch, "write_files", counted_batch)  # small files, in batches
    monkeypatch.setenv("DSVC_REFLINK", "0")  # hard links (the filesystem may reflink)
    pa = Path(a.get_local_copy())
    assert len(writes) == len(files) + 1
    writes.clear()
    pb = Path(b.get_local_copy())
    assert sorted(writes) == ["d1/f2", "d2/new"]  # only the new content was written
    assert read_tree(pb) == {**files, "top": b"t", "d1/f2": b"changed", "d2/new": b"new"}
    for f in files:
        if f != "d1/f2":  # shared with the parent's copy: one inode, read-only
            assert os.stat(pa / f).st_ino == os.stat(pb / f).st_ino
    hashed: list[str] = []
    real_matches = checkout.file_matches
    monkeypatch.setattr(
        checkout,
        "file_matches",
        lambda store, path, e: hashed.append(path) or real_matches(store, path, e),
    )
    assert read_tree(a.get_local_copy()) == {**files, "top": b"t"}
    assert hashed == []  # the links the child's copy made are no damage, and cost no read
    mpath = checkout.CacheLayout(open_store().home).manifest_path(a.id)
    parts = list(checkout.iter_manifest(str(mpath)))
    assert sorted(p.paths[0].split("/")[0] for p in parts) == ["d0", "d1", "d2", "top"]
    # damage is still found and repaired, folder by folder
    write_in_place(pb / "d0" / "f1", b"EVIL")
    assert read_tree(b.get_local_copy())["d0/f1"] == b"0-1"
    assert read_tree(a.get_local_copy())["d0/f1"] == b"0-1"


def cached_contents(home: Path) -> set[str]:
    root = checkout.CacheLayout(home).content
    return {f.name for sub in root.iterdir() for f in sub.iterdir()} if root.is_dir() else set()


def test_a_whole_copy_writes_small_files_into_it_and_caches_large_ones(
    tmp_path: Path, home: Path
) -> None:
    """Issue 11.1: a hard link per tiny file into the content cache cost as much as
    creating the file; files under ``SMALL_FILE`` bytes are written into the copy
    only (with the sentinel mtime, so a child's copy can link them)."""
    big = os.urandom(checkout.SMALL_FILE)
    a = version(tmp_path, {**BASE, "big": big}, "a")
    p = Path(a.get_local_copy())
    assert read_tree(p) == {**BASE, "big": big}
    store = open_store()
    want = {
        e.id.hex()
        for _, e in walk(Trees(store), reg.require(store, a.id).tree)
        if e.size >= checkout.SMALL_FILE
    }
    assert len(want) == 2 and cached_contents(home) == want  # d/other.bin and big
    assert os.stat(p / "shared.txt").st_nlink == 1
    assert a.verify_dataset_hash() == []
    write_in_place(p / "shared.txt", b"EVIL" * 38)  # damage to a written file is repaired
    assert read_tree(a.get_local_copy()) == {**BASE, "big": big}


def test_a_child_copy_checks_what_it_links_from_its_parents_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of the parent's copy that was changed in place (sentinel mtime gone) or
    removed is not linked into the child's copy: the child gets the version's bytes."""
    monkeypatch.setenv("DSVC_REFLINK", "0")
    files = {f"d{i}/f{j}": f"{i}-{j}".encode() * 20 for i in range(2) for j in range(3)}
    a = version(tmp_path, files, "a")
    b = Dataset.create(dataset_name="a", dataset_project="proj", parent_datasets=[a])
    b.add_files(write_tree(tmp_path / "chg", {"d1/new": b"new"}))
    b.finalize()
    pa = Path(a.get_local_copy())
    write_in_place(pa / "d0" / "f1", b"EVIL" * 10)  # same size, new mtime
    os.chmod(pa / "d1", 0o755)
    os.unlink(pa / "d1" / "f2")  # gone from the parent's copy
    pb = Path(b.get_local_copy())
    assert read_tree(pb) == {**files, "d1/new": b"new"}
    assert os.stat(pb / "d0" / "f0").st_ino == os.stat(pa / "d0" / "f0").st_ino
    assert os.stat(pb / "d0" / "f1").st_ino != os.stat(pa / "d0" / "f1").st_ino
    assert b.verify_dataset_hash() == []
    assert read_tree(a.get_local_copy()) == files  # the parent's copy is repaired too


def test_serving_an_intact_copy_writes_nothing(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check streams the manifest part by part and rewrites it only when something
    changed (a cache on a read-only mount still serves)."""
    a = version(tmp_path, BASE, "a")
    p = Path(a.get_local_copy())
    mpath = checkout.CacheLayout(home).manifest_path(a.id)
    before = os.stat(mpath)
    writes: list[str] = []
    real_write = checkout.write_manifest
    monkeypatch.setattr(
        checkout, "write_manifest", lambda path, man: writes.append(path) or real_write(path, man)
    )
    assert read_tree(a.get_local_copy()) == BASE
    assert writes == []
    after = os.stat(mpath)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    os.unlink(p / "e")  # damage: repaired, and the manifest is written anew
    assert read_tree(a.get_local_copy()) == BASE
    assert writes == [str(mpath)] and os.stat(mpath).st_ino != before.st_ino
