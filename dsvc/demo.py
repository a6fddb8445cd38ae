"""``dsvc demo``: the whole workflow on generated data, in a scratch folder.

Nothing outside the scratch folder is read or written: the demo points ``DSVC_HOME``
at stores inside it (and ignores ``DSVC_REMOTE``) for its duration, then restores the
environment. Steps:

1. generate a few MiB of sample data, deterministically (CSV text, random binaries,
   nested JSON);
2. version 1: create, add the folder, close;
3. change the folder (append rows, patch a binary, delete a file, add files, one of
   them a copy) and ``sync_folder`` it into version 2, a child of version 1;
4. squash versions 1 and 2 into one parentless version (metadata only);
5. push the three versions to a folder remote inside the scratch folder;
6. a second, empty store with only that remote configured: ``Dataset.get`` +
   ``get_local_copy()``, checked byte for byte against the sample folder.

A failure (for instance a remote that cannot be written) is reported and re-raised, so
``dsvc demo`` exits non-zero: the demo never pretends a step worked.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsvc import registry
from dsvc.dataset import Dataset
from dsvc.errors import DsvcError, IntegrityError, StateError
from dsvc.remote import client
from dsvc.remote import config as rconfig
from dsvc.store import Store
from dsvc.usage import chunk_totals

PROJECT = "dsvc-demo"
NAME = "sample"
MARKER = ".dsvc-demo"
_OURS = ("data", "store-a", "store-b", "remote")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _dur(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


# -- sample data ------------------------------------------------------------------------


def _csv(rng: random.Random, rows: int) -> bytes:
    cities = ["Lyon", "Oslo", "Lima", "Pune", "Kyiv", "Perth", "Quito", "Accra"]
    lines = ["id,city,temperature,humidity,label"]
    for i in range(rows):
        lines.append(
            f"{i},{rng.choice(cities)},{rng.uniform(-10, 40):.2f},{rng.randint(5, 100)},"
            f"{rng.choice(['cat', 'dog', 'bird'])}"
        )
    return ("\n".join(lines) + "\n").encode()


def generate(folder: Path, size_mb: float, seed: int = 42) -> dict[str, int]:
    """Write the sample dataset (about ``size_mb`` MiB) into ``folder``."""
    rng = random.Random(seed)
    budget = int(size_mb * (1 << 20))
    files = 0
    # ~45% CSV text (compresses well), ~50% random binaries (does not), the rest JSON
    csv_rows = max(50, int(budget * 0.45 / 10 / 42))
    for i in range(10):
        p = folder / "tables" / f"part-{i:02d}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_csv(rng, csv_rows))
        files += 1
    for i in range(8):
        p = folder / "images" / ("train" if i < 6 else "val") / f"img-{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(max(1024, int(budget * 0.5 / 8))))
        files += 1
    for i in range(24):
        p = folder / "meta" / f"group-{i % 4}" / f"item-{i:02d}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {"id": i, "tags": rng.sample(["a", "b", "c", "d", "e"], 2), "score": rng.random()}
        p.write_text(json.dumps(doc, indent=2) * max(1, budget // (24 * 20 * 80)))
        files += 1
    return {"files": files, "bytes": _folder_bytes(folder)}


def modify(folder: Path, seed: int = 7) -> None:
    """The changes between version 1 and version 2."""
    rng = random.Random(seed)
    for i in (1, 4):  # appended rows: only the tail chunks change
        with open(folder / "tables" / f"part-{i:02d}.csv", "ab") as f:
            f.write(_csv(rng, 400).split(b"\n", 1)[1])
    img = folder / "images" / "train" / "img-002.bin"  # a patch in the middle of a binary
    data = bytearray(img.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = rng.randbytes(4096)
    img.write_bytes(bytes(data))
    (folder / "meta" / "group-3" / "item-23.json").unlink()
    (folder / "tables" / "part-10.csv").write_bytes(_csv(rng, 300))
    # a copy of an existing file: stored once
    shutil.copyfile(
        folder / "images" / "val" / "img-007.bin", folder / "images" / "val" / "img-008.bin"
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _same_tree(a: Path, b: Path) -> tuple[int, list[str]]:
    """(files compared, differences) between two folders, byte for byte."""
    fa = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    diffs = sorted(fa ^ fb)
    for rel in sorted(fa & fb):
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            diffs.append(rel)
    return len(fa | fb), diffs


# -- store helpers ----------------------------------------------------------------------


@contextmanager
def _scratch_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("DSVC_HOME", "DSVC_REMOTE")}
    os.environ.pop("DSVC_REMOTE", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _use_home(home: Path) -> Store:
    os.environ["DSVC_HOME"] = str(home)
    return registry.open_store(home)


def _close_store(home: Path) -> None:
    registry.close_store(home)


def _prepare(workdir: str | None) -> tuple[Path, bool]:
    """The scratch root and whether it is ours to delete."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="dsvc-demo-")), True
    root = Path(workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()) and not (root / MARKER).exists():
        raise StateError(
            f"--workdir {root} is not empty and not a previous demo folder; pick an empty "
            "or new folder"
        )
    for name in _OURS:  # a previous demo run: start over
        shutil.rmtree(root / name, ignore_errors=True)
    (root / MARKER).write_text("dsvc demo scratch folder\n")
    return root, False


# -- the demo -----------------------------------------------------------------------------


def run_demo(
    workdir: str | None = None,
    size_mb: float = 6.0,
    keep: bool = False,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the demo; returns its figures (also printed through ``echo``)."""
    root, temporary = _prepare(workdir)
    data, home_a, home_b, remote_dir = (root / n for n in _OURS)
    data.mkdir()
    report: dict[str, Any] = {"workdir": str(root)}
    t_start = time.monotonic()
    gone = temporary and not keep
    echo(f"dsvc demo: the whole workflow in {root}" + (" (deleted at the end)" if gone else ""))
    echo("")

    def step(n: int, title: str, text: str, seconds: float) -> None:
        echo(f"[{n}/6] {title:<15} {text}  ({_dur(seconds)})")

    try:
        with _scratch_env():
            # 1. data
            t = time.monotonic()
            g = generate(data, size_mb)
            step(
                1,
                "sample data",
                f"{g['files']} files, {_size(g['bytes'])} in data/ (CSV text, random binaries, "
                "nested JSON)",
                time.monotonic() - t,
            )

            # 2. version 1
            store = _use_home(home_a)
            t = time.monotonic()
            v1 = Dataset.create(dataset_name=NAME, dataset_project=PROJECT, dataset_tags=["demo"])
            v1.add_files(data)
            v1.upload(show_progress=False)
            v1.finalize()
            n1, stored1 = chunk_totals(store)
            step(
                2,
                "version 1",
                f"{PROJECT}/{NAME} v{v1.version} {v1.id[:8]}: {g['files']} files, "
                f"{_size(g['bytes'])} -> {_size(stored1)} stored ({n1} chunks, zstd)",
                time.monotonic() - t,
            )

            # 3. version 2 by sync
            modify(data)
            t = time.monotonic()
            v2_bytes = _folder_bytes(data)
            v2 = Dataset.create(parent_datasets=[v1.id], description="synced from data/")
            removed, added, modified = v2.sync_folder(data)
            v2.upload(show_progress=False)
            v2.finalize()
            n2, stored2 = chunk_totals(store)
            new = stored2 - stored1
            saved = 1 - new / v2_bytes if v2_bytes else 0.0
            step(
                3,
                "version 2",
                f"v{v2.version} {v2.id[:8]} (child of v{v1.version}) by sync: {added} added, "
                f"{modified} modified, {removed} removed; {_size(v2_bytes)} of files, only "
                f"{_size(new)} new ({saved:.0%} deduplicated)",
                time.monotonic() - t,
            )
            report.update(
                v1=v1.id,
                v2=v2.id,
                added=added,
                modified=modified,
                removed=removed,
                v1_bytes=g["bytes"],
                v2_bytes=v2_bytes,
                v2_new_bytes=new,
            )

            # 4. squash
            t = time.monotonic()
            sq = Dataset.squash(dataset_name=f"{NAME}-squashed", dataset_ids=[v1.id, v2.id])
            n3, stored3 = chunk_totals(store)
            step(
                4,
                "squash v1+v2",
                f"{PROJECT}/{NAME}-squashed {sq.id[:8]}: {len(sq.list_files())} files, parentless; "
                f"{n3 - n2} new chunks, {_size(stored3 - stored2)} copied (metadata only)",
                time.monotonic() - t,
            )
            report["squashed"] = sq.id

            # 5. push
            t = time.monotonic()
            try:
                rconfig.add_remote(store, "demo", str(remote_dir), make_default=True)
                remote = client.resolve(store, "demo", required=True)
                packs = objects = sent = 0
                for ds in (v1, v2, sq):
                    st = remote.push_dataset(ds.id, show_progress=False)
                    packs, objects, sent = (
                        packs + st.packs,
                        objects + st.objects,
                        sent + st.bytes_sent,
                    )
            except DsvcError as e:
                echo(f"[5/6] push            FAILED: {e}")
                raise type(e)(f"demo: pushing to the folder remote {remote_dir} failed: {e}") from e
            step(
                5,
                "push",
                f"3 versions -> folder remote remote/: {objects} objects in {packs} packs, "
                f"{_size(sent)} sent",
                time.monotonic() - t,
            )
            report.update(pushed_bytes=sent, pushed_objects=objects, packs=packs)

            # 6. a second, empty store: get it back
            t = time.monotonic()
            store_b = _use_home(home_b)
            rconfig.add_remote(store_b, "origin", str(remote_dir), make_default=True)
            got = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
            if got.id != v2.id:
                raise IntegrityError(f"demo: the remote returned {got.id}, expected {v2.id}")
            copy = Path(got.get_local_copy())
            nfiles, diffs = _same_tree(data, copy)
            if diffs:
                raise IntegrityError(
                    f"demo: the copy fetched from the remote differs from data/ in {len(diffs)} "
                    f"files, e.g. {diffs[0]}"
                )
            bad = got.verify_dataset_hash(str(copy))
            if bad:
                raise IntegrityError(f"demo: {len(bad)} files fail their hash, e.g. {bad[0]}")
            fetched = chunk_totals(store_b)[1]
            step(
                6,
                "clone + get",
                f"empty store, only the remote configured: Dataset.get('{PROJECT}', '{NAME}') "
                f"-> v{got.version}, {nfiles} files ({_size(fetched)} fetched), identical to "
                "data/ byte for byte",
                time.monotonic() - t,
            )
            report.update(files_checked=nfiles, fetched_bytes=fetched)

            logical = g["bytes"] + v2_bytes + v2_bytes
            echo("")
            echo(
                f"3 versions holding {_size(logical)} of files take {_size(stored3)} in the store "
                f"({logical / max(stored3, 1):.1f}x smaller) and {_size(sent)} on the remote."
            )
            took = time.monotonic() - t_start
            echo(f"Done in {_dur(took)}.")
            report["seconds"] = took
            if not gone:
                echo("")
                echo("Look around:")
                echo(f"  dsvc --home {home_a} log --project {PROJECT} --name {NAME}")
                echo(f"  dsvc --home {home_a} graph --id {sq.id[:8]}")
                echo(f"  dsvc --home {home_a} diff {v1.id[:8]} {v2.id[:8]}")
            return report
    finally:
        for h in (home_a, home_b):
            _close_store(h)
        if gone:
            shutil.rmtree(root, ignore_errors=True)
