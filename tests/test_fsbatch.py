"""dsvc.fsbatch: a folder's lstats and a folder's new files in one call.

The C module must give exactly what the Python code gives (the folder summaries hash
the msgpack bytes of the listing, so a store written with one and read with the other
must agree byte for byte), and the Python fallback must behave as the C one does.
"""

from __future__ import annotations

import operator
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsvc import checkout, fsbatch, ingest
from dsvc.dataset import Dataset
from dsvc.errors import ObjectNotFoundError
from dsvc.ingest import ingest_tree
from dsvc.objects import KIND_CHUNKFILE, Entry
from dsvc.registry import open_store
from dsvc.store import Store
from dsvc.treeops import Trees, walk

native_only = pytest.mark.skipif(fsbatch.native is None, reason="dsvc._fsbatch is not built")

_SIG = operator.attrgetter("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev", "st_mode")
_PACK = msgpack.Packer(use_bin_type=True)


def _python_listing(folder: Path) -> tuple[list[str], list[tuple[int, ...]], list[str]]:
    names, sigs, others = [], [], []
    with os.scandir(folder) as it:
        for de in it:
            if de.is_file(follow_symlinks=False):
                names.append(de.name)
                sigs.append(_SIG(de.stat(follow_symlinks=False)))
            else:
                others.append(de.name)
    return names, sigs, others


#: the edges of msgpack's integer encodings (fixint, 8, 16, 32 and 64 bits)
_SIZES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40]
_MTIMES = [
    0,
    1,
    127,
    128,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32768,
    -32769,
    -(2**31),
    -(2**31) - 1,
    2**32,
    1_700_000_000_123_456_789,
    -1_000_000_000_000_000_001,
]
_names = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="/\\"),
    min_size=1,
    max_size=40,
).filter(lambda n: n not in (".", "..", ingest.IGNORE_FILE))


@native_only
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.dictionaries(
        _names, st.tuples(st.sampled_from(_SIZES), st.sampled_from(_MTIMES)), max_size=20
    ),
    dirs=st.sets(_names, max_size=3),
    links=st.sets(_names, max_size=2),
)
def test_list_regular_is_byte_for_byte_what_python_packs(tmp_path_factory, files, dirs, links):
    folder = tmp_path_factory.mktemp("listing")
    for name, (size, mtime) in files.items():
        p = folder / name
        with open(p, "wb") as f:
            f.truncate(size)  # sparse: sizes up to 1 TiB cost nothing
        os.utime(p, ns=(mtime, mtime))
    for name in dirs - files.keys():
        (folder / name).mkdir()
    for name in links - files.keys() - dirs:
        os.symlink("/nowhere", folder / name)
    names, sigs, others = _python_listing(folder)
    got = fsbatch.list_regular(str(folder), ingest.IGNORE_FILE)
    assert got is not None
    packed_names, packed_sigs, count, nbytes, got_others = got
    assert packed_names == _PACK.pack(names)
    assert packed_sigs == _PACK.pack(sigs)
    assert count == len(names) and nbytes == sum(s[0] for s in sigs)
    assert got_others == others


@native_only
@pytest.mark.parametrize("name", ["café.txt", "a\\b.txt", ingest.IGNORE_FILE])
def test_list_regular_leaves_names_that_need_checks_to_python(tmp_path, name):
    (tmp_path / "plain.txt").write_bytes(b"x")
    (tmp_path / name).write_bytes(b"y")
    assert fsbatch.list_regular(str(tmp_path), ingest.IGNORE_FILE) is None


@native_only
def test_list_regular_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fsbatch.list_regular(str(tmp_path / "gone"), ingest.IGNORE_FILE)
    assert e.value.filename == os.fsencode(tmp_path / "gone")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsbatch.list_regular(str(tmp_path / "f"), ingest.IGNORE_FILE)


def _tree(root: Path) -> None:
    for i in range(3):
        d = root / f"d{i}"
        d.mkdir(parents=True)
        for j in range(20):
            (d / f"f{j:03d}.bin").write_bytes(os.urandom(j * 7))
    (root / "d0" / "sub").mkdir()
    (root / "d0" / "sub" / "deep.txt").write_bytes(b"deep")
    os.symlink("f001.bin", root / "d1" / "link-to-file")
    os.symlink("/nowhere", root / "d1" / "dangling")
    os.symlink("../d0", root / "d2" / "link-to-folder")
    os.mkfifo(root / "d2" / "pipe")
    (root / "top.txt").write_bytes(b"top")


def _listing_facts(ls: ingest._Listing) -> tuple:
    return (
        sorted(zip(ls.names, ls.sigs)),
        ls.count,
        ls.nbytes,
        sorted(ls.subdirs),
        sorted(ls.skipped),
    )


@native_only
def test_a_folder_listed_in_c_is_what_python_lists(tmp_path, monkeypatch):
    _tree(tmp_path)
    ctx = ingest._ScanCtx(str(tmp_path), str(tmp_path), frozenset(), [], True)
    folders = [(str(tmp_path), ())] + [(str(tmp_path / f"d{i}"), (f"d{i}",)) for i in range(3)]
    native = [_listing_facts(ingest._list_folder(ctx, d, rel, ())) for d, rel in folders]
    monkeypatch.setattr(fsbatch, "native", None)
    python = [_listing_facts(ingest._list_folder(ctx, d, rel, ())) for d, rel in folders]
    assert native == python
    # the link to a file is a file of d1, beside its regular files
    assert "link-to-file" in [n for n, _ in native[2][0]]


@pytest.fixture(params=["c", "python"])
def either(request, monkeypatch):
    if request.param == "c" and fsbatch.native is None:
        pytest.skip("dsvc._fsbatch is not built")
    if request.param == "python":
        monkeypatch.setattr(fsbatch, "native", None)
    return request.param


def test_write_files_creates_dates_and_stats_each_file(tmp_path, either):
    names = ["a.txt", "b.bin", "empty"]
    datas = [b"hello", memoryview(os.urandom(70_000)), b""]
    modes = [0o444, 0o555, 0o644]
    mtimes = [1_700_000_000_000_000_123, -1_600_000_000_999_999_999, 0]  # before 1970 too
    out = fsbatch.write_files(str(tmp_path), names, datas, modes, mtimes)
    for name, data, mode, mtime, w in zip(names, datas, modes, mtimes, out):
        st_ = os.lstat(tmp_path / name)
        assert (tmp_path / name).read_bytes() == bytes(data)
        assert stat.S_IMODE(st_.st_mode) == mode & ~_umask()
        assert st_.st_mtime_ns == st_.st_atime_ns == mtime
        assert w == fsbatch.Written(
            st_.st_ino, st_.st_mtime_ns, st_.st_ctime_ns, st_.st_nlink, st_.st_size, st_.st_mode
        )


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_write_files_never_writes_over_or_through_what_is_there(tmp_path, either):
    (tmp_path / "target").write_bytes(b"precious")
    os.symlink(tmp_path / "target", tmp_path / "link")
    (tmp_path / "taken").write_bytes(b"mine")
    for name in ("link", "taken"):
        with pytest.raises(FileExistsError) as e:
            fsbatch.write_files(
                str(tmp_path), ["new-1", name, "new-2"], [b"1", b"evil", b"2"], [0o644] * 3, [0] * 3
            )
        assert e.value.filename == f"{tmp_path}/{name}"
        # the file before the failure stays, nothing after it is made
        assert (tmp_path / "new-1").read_bytes() == b"1"
        assert not (tmp_path / "new-2").exists()
        (tmp_path / "new-1").unlink()
    assert (tmp_path / "target").read_bytes() == b"precious"
    assert (tmp_path / "taken").read_bytes() == b"mine"


def test_write_files_refuses_a_path_for_a_name(tmp_path, either):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError):
        fsbatch.write_files(str(tmp_path), ["sub/x"], [b"x"], [0o644], [0])
    assert not (tmp_path / "sub" / "x").exists()


def test_write_files_into_a_missing_folder_names_it(tmp_path, either):
    with pytest.raises(FileNotFoundError) as e:
        fsbatch.write_files(str(tmp_path / "gone"), ["a"], [b"x"], [0o644], [0])
    assert str(tmp_path / "gone") in str(e.value.filename)


# -- a whole copy writes its small files in batches (checkout._write_small) ------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("DSVC_HOME", str(h))
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    return h


def test_a_whole_copy_writes_small_files_in_batches_each_checked(
    tmp_path, home, either, monkeypatch
):
    monkeypatch.setattr(checkout, "_BATCH_FILES", 3)  # several batches per folder
    files = {f"d{i}/f{j:02d}": os.urandom(1 + i * 100 + j) for i in range(3) for j in range(10)}
    files["d1/big"] = os.urandom(9000)  # over SMALL_FILE: the content-cache path
    files["d2/run.sh"] = b"#!/bin/sh\n"
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    os.chmod(src / "d2/run.sh", 0o755)
    ds = Dataset.create(dataset_name="b", dataset_project="p")
    ds.add_files(src)
    ds.finalize()
    copy = Path(ds.get_local_copy())
    got = {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert got == files
    assert os.stat(copy / "d2/run.sh").st_mode & 0o111
    assert not os.stat(copy / "d0/f00").st_mode & 0o222  # read-only, as every copy
    # every file carries the sentinel mtime and its manifest row: a second get checks
    # the copy (one lstat each) and finds nothing to repair
    cache = checkout.ContentCache(home / "cache" / "content")
    for rel, e in _entries(ds).items():
        assert cache.valid(os.lstat(copy / rel), e), rel
    assert Dataset.get(dataset_id=ds.id).get_local_copy() == str(copy)


def _entries(ds: Dataset) -> dict:
    return {"/".join(p): e for p, e in walk(Trees(open_store()), ds._refresh().tree)}


def test_a_small_file_whose_content_is_absent_is_reported_not_written(tmp_path, home, either):
    store = open_store()
    src = tmp_path / "one"
    src.mkdir()
    (src / "here").write_bytes(b"present")
    tree = ingest_tree(store, src).entry
    (here,) = [e for _, e in walk_entries(store, tree.id)]
    missing = Entry(KIND_CHUNKFILE, bytes(16), 5, here.mode)
    out = tmp_path / "out"
    out.mkdir()
    files = [("here", here), ("gone", missing)]
    dests = [str(out / "here"), str(out / "gone")]
    written: dict = {}
    absent = checkout._write_missing(store, None, files, dests, [0, 1], written)
    assert absent == [1] and list(written) == [0]
    assert (out / "here").read_bytes() == b"present" and not (out / "gone").exists()
    with pytest.raises(ObjectNotFoundError):
        checkout._write_missing(store, None, files, dests, [1], written, strict=True)


def walk_entries(store, tid) -> list:
    return list(walk(Trees(store), tid))


def test_link_files_links_and_stats_what_it_can_and_leaves_the_rest(tmp_path, either):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "a").write_bytes(b"aaa")
    (src / "b").write_bytes(b"bb")
    got = fsbatch.link_files(str(src), str(dst), ["a", "gone", "b"])
    assert got[1] is None and not (dst / "gone").exists()
    for name, w in (("a", got[0]), ("b", got[2])):
        st_ = os.lstat(dst / name)
        assert st_.st_ino == os.lstat(src / name).st_ino and st_.st_nlink == 2
        assert w == fsbatch.Written(
            st_.st_ino, st_.st_mtime_ns, st_.st_ctime_ns, st_.st_nlink, st_.st_size, st_.st_mode
        )
    # a source folder that is gone (the parent's copy removed meanwhile): nothing links
    assert fsbatch.link_files(str(tmp_path / "nowhere"), str(dst), ["a"]) == [None]


def test_link_files_never_replaces_what_is_at_the_destination(tmp_path, either):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "a").write_bytes(b"new")
    (dst / "a").write_bytes(b"mine")
    with pytest.raises(FileExistsError) as e:
        fsbatch.link_files(str(src), str(dst), ["a"])
    assert e.value.filename == f"{dst}/a"
    assert (dst / "a").read_bytes() == b"mine"
    with pytest.raises(ValueError):
        fsbatch.link_files(str(src), str(dst), ["../a"])


def test_a_child_copy_links_its_unchanged_files_from_the_parents_copy(tmp_path, home, either):
    files = {f"d{i}/f{j}": os.urandom(10 + j) for i in range(2) for j in range(6)}
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    parent = Dataset.create(dataset_name="b", dataset_project="p")
    parent.add_files(src)
    parent.finalize()
    pcopy = Path(parent.get_local_copy())
    files["d1/f2"] = b"changed"
    (src / "d1/f2").write_bytes(files["d1/f2"])
    child = Dataset.create(dataset_name="b", dataset_project="p", parent_datasets=[parent.id])
    child.sync_folder(src)
    child.finalize()
    ccopy = Path(child.get_local_copy())
    got = {str(p.relative_to(ccopy)): p.read_bytes() for p in ccopy.rglob("*") if p.is_file()}
    assert got == files
    for rel in files:
        shared = os.lstat(ccopy / rel).st_ino == os.lstat(pcopy / rel).st_ino
        assert shared == (rel != "d1/f2"), rel


# -- a folder that can be listed but not entered ------------------------------------------

_ADD = """
import sys
from dsvc.dataset import Dataset
from dsvc.errors import DsvcError
ds = Dataset.create(dataset_name="d", dataset_project="p")
try:
    ds.add_files(sys.argv[1])
except DsvcError as e:
    print("DsvcError:", e)
"""
#: root without the capabilities that bypass file permissions (util-linux setpriv)
_NO_DAC = ["--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the scan without permission overrides",
)
@pytest.mark.parametrize("native_flag", ["1", "0"])
def test_a_folder_that_can_be_listed_but_not_entered_is_a_clear_error(tmp_path, native_flag):
    """Read permission without search permission (mode 0644 on a folder): its names can
    be listed but not one of its files stat'ed. The add names the folder and says what
    to do, instead of a raw PermissionError. (Run by root without its permission
    overrides: root reads everything otherwise.)"""
    data = tmp_path / "data"
    (data / "locked").mkdir(parents=True)
    (data / "ok.txt").write_bytes(b"fine")
    (data / "locked" / "f.txt").write_bytes(b"hidden")
    os.chmod(data / "locked", 0o644)
    env = {**os.environ, "DSVC_HOME": str(tmp_path / "home"), "DSVC_NATIVE": native_flag}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    try:
        p = subprocess.run(
            ["setpriv", *_NO_DAC, sys.executable, "-c", _ADD, str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.chmod(data / "locked", 0o755)
    assert "PermissionError" not in p.stderr, p.stderr
    assert p.stdout.startswith("DsvcError:"), (p.stdout, p.stderr)
    assert str(data / "locked") in p.stdout and "permission" in p.stdout.lower()


def test_read_files_reads_whole_files_with_their_fstat(tmp_path, either):
    datas = {"a.txt": b"hello", "empty": b"", "big": os.urandom(300_000)}
    for name, data in datas.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / n) for n in datas]
    got = fsbatch.read_files(paths, [len(d) for d in datas.values()])
    for path, data, r in zip(paths, datas.values(), got, strict=True):
        st = os.stat(path)
        assert isinstance(r, fsbatch.Read)
        assert r.data == data
        assert r[1:] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def test_read_files_shows_a_file_that_grew_since_its_size_was_taken(tmp_path, either):
    (tmp_path / "f").write_bytes(b"0123456789")
    (r,) = fsbatch.read_files([str(tmp_path / "f")], [4])
    assert r.data == b"01234"  # size + 1 bytes: the caller sees it is not 4 bytes long


def test_read_files_gives_each_failure_in_its_place(tmp_path, either):
    (tmp_path / "ok").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    paths = [str(tmp_path / "gone"), str(tmp_path / "ok"), str(tmp_path / "dir")]
    gone, ok, folder = fsbatch.read_files(paths, [1, 1, 0])
    assert isinstance(gone, FileNotFoundError) and gone.filename == paths[0]
    assert isinstance(ok, fsbatch.Read) and ok.data == b"x"
    assert isinstance(folder, IsADirectoryError) and folder.filename == paths[2]


def test_ingest_skips_a_file_rewritten_between_scan_and_read(tmp_path, either, monkeypatch):
    """A same-size rewrite between the scan and the read has another stat: the file is
    left out as changed, not cached with the stat of the scan."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_bytes(b"one")
    (data / "b").write_bytes(b"two")
    real = fsbatch.read_files

    def rewrite_then_read(paths, sizes):
        target = data / "a"
        target.write_bytes(b"new")
        os.utime(target, ns=(1, 1))
        return real(paths, sizes)

    monkeypatch.setattr(fsbatch, "read_files", rewrite_then_read)
    s = Store(tmp_path / "s")
    res = ingest_tree(s, data)
    assert [p for p, _ in res.stats.skipped] == [str(data / "a")]
    assert set(Trees(s).get(res.entry.id)) == {"b"}
    s.close()
