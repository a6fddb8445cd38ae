"""Workloads of the side-by-side comparison (``benchmarks/compare.py``).

Every function is a pure function of its arguments (seeded ``random.Random``), so two
runs, or two machines, compare the tools on the same bytes. CSV text and small files
come from ``benchmarks/datagen.py`` (the core benchmark's generators); this module
adds what the comparison needs on top: a folder tree of incompressible "images" (a
faster generator than ``datagen.random_files`` for 20,000 files), the modify step of
each workload, and the daily-snapshot scenario.

Workloads (full size; ``--quick`` divides counts and sizes by 10):

* ``images``: 20,000 incompressible files of 50-200 KiB in 100 folders (~2.4 GiB).
  Modify: replace 1% of the files with new content (a new size in the same range).
* ``tabular``: eight 128 MiB CSV-like text files. Modify: append 1% rows to each.
* ``many-small``: 100,000 CSV-like text files of 1-4 KiB in 100 folders (~250 MB).
  Modify: rewrite 1% of the files with new content of the same size ("touch").
* ``daily``: N CSV files growing each day; every day appends rows to each file, and
  now and then rewrites a file's header (renamed column: every later byte shifts) or a
  few old rows (corrections in the middle of a file).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import datagen

KiB, MiB = datagen.KiB, datagen.MiB


@dataclass(frozen=True)
class Spec:
    """The size of one workload."""

    name: str
    files: int
    folders: int
    min_size: int
    max_size: int

    def scaled(self, factor: float) -> Spec:
        if self.name == "tabular":  # keep eight files, shrink each
            return Spec(
                self.name,
                self.files,
                self.folders,
                int(self.min_size * factor),
                int(self.max_size * factor),
            )
        return Spec(
            self.name,
            max(1, int(self.files * factor)),
            max(1, int(self.folders * factor)),
            self.min_size,
            self.max_size,
        )


FULL = {
    "images": Spec("images", 20_000, 100, 50 * KiB, 200 * KiB),
    "tabular": Spec("tabular", 8, 1, 128 * MiB, 128 * MiB),
    "many-small": Spec("many-small", 100_000, 100, 1 * KiB, 4 * KiB),
}


def _rng(*key: object) -> random.Random:
    return datagen._rng(*(k if isinstance(k, int) else str(k) for k in key))


# -- generation --------------------------------------------------------------------


def _image_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def images(folder: Path, spec: Spec, seed: int = 11) -> int:
    """``spec.files`` incompressible files, round-robin over ``spec.folders`` folders."""
    rng = _rng("images", seed)
    dirs = [folder / f"class{j:03d}" for j in range(spec.folders)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(spec.files):
        size = rng.randint(spec.min_size, spec.max_size)
        (dirs[i % spec.folders] / f"img{i:06d}.bin").write_bytes(_image_bytes(rng, size))
        total += size
    return total


def tabular(folder: Path, spec: Spec, seed: int = 12) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(spec.files):
        datagen.write_csv(folder / f"table{i}.csv", spec.max_size, seed * 100 + i)
    return spec.files * spec.max_size


def many_small(folder: Path, spec: Spec, seed: int = 13) -> int:
    return datagen.small_files(
        folder, spec.files, spec.folders, seed, min_size=spec.min_size, max_size=spec.max_size
    )


GENERATORS = {"images": images, "tabular": tabular, "many-small": many_small}


def generate(name: str, folder: Path, spec: Spec) -> int:
    """Write workload ``name`` into ``folder`` (which must not exist); returns bytes."""
    folder.mkdir(parents=True)
    return GENERATORS[name](folder, spec)


def modify(name: str, folder: Path, spec: Spec, seed: int = 99) -> int:
    """The modify step of workload ``name``; returns the number of files changed."""
    files = datagen.list_files(folder)
    if name == "images":
        rng = _rng("replace", seed)
        picked = sorted(rng.sample(range(len(files)), max(1, len(files) // 100)))
        for i in picked:
            size = rng.randint(spec.min_size, spec.max_size)
            files[i].write_bytes(_image_bytes(rng, size))
        return len(picked)
    if name == "tabular":
        for i, p in enumerate(files):
            datagen.append_rows(p, 0.01, seed * 100 + i)
        return len(files)
    if name == "many-small":
        return len(datagen.modify_files(files, 0.01, seed))
    raise ValueError(f"unknown workload {name!r}")


def tree_summary(folder: Path) -> tuple[int, int]:
    """(number of files, total bytes) below ``folder``."""
    n = total = 0
    for d, _, names in os.walk(folder):
        for nm in names:
            n += 1
            total += os.path.getsize(os.path.join(d, nm))
    return n, total


# -- daily snapshots -----------------------------------------------------------------


@dataclass(frozen=True)
class DailySpec:
    files: int = 10
    days: int = 100
    start_size: int = 1 * MiB
    end_size: int = 10 * MiB

    def scaled(self, factor: float) -> DailySpec:
        return DailySpec(
            max(2, int(self.files * factor)),
            max(5, int(self.days * factor)),
            max(16 * KiB, int(self.start_size * factor)),
            max(64 * KiB, int(self.end_size * factor)),
        )


class DailySnapshots:
    """A folder of CSV files that grows day by day (deterministic).

    Day 0 writes ``files`` files of ``start_size``; each later day appends
    ``(end_size - start_size) / (days - 1)`` bytes of rows to every file. Every 7th day
    one file's header is rewritten (a renamed column, so every later byte shifts); every
    3rd day a few old rows of one file are corrected in place (a status changes, which
    changes the row's length).
    """

    def __init__(self, folder: Path, spec: DailySpec, seed: int = 21) -> None:
        self.folder = folder
        self.spec = spec
        self.seed = seed
        self.day = -1

    def paths(self) -> list[Path]:
        return [self.folder / f"export_{i:02d}.csv" for i in range(self.spec.files)]

    def advance(self) -> int:
        """Make the next day's snapshot; returns its total size in bytes."""
        self.day += 1
        s, day = self.spec, self.day
        if day == 0:
            self.folder.mkdir(parents=True)
            for i, p in enumerate(self.paths()):
                datagen.write_csv(p, s.start_size, self.seed * 1000 + i)
        else:
            grow = (s.end_size - s.start_size) / max(1, s.days - 1)
            for i, p in enumerate(self.paths()):
                datagen.append_rows(p, grow / p.stat().st_size, self.seed * 1000 + day * 37 + i)
            rng = _rng("daily", self.seed, day)
            if day % 7 == 0:
                self._rewrite_header(rng.choice(self.paths()), day)
            if day % 3 == 0:
                self._correct_rows(rng.choice(self.paths()), rng)
        return sum(p.stat().st_size for p in self.paths())

    @staticmethod
    def _rewrite_header(p: Path, day: int) -> None:
        data = p.read_bytes()
        end = data.index(b"\n")
        cols = data[:end].split(b",")
        k = day % len(cols)
        base = cols[k].split(b"_v")[0]
        cols[k] = base + b"_v%d" % day
        p.write_bytes(b",".join(cols) + data[end:])

    @staticmethod
    def _correct_rows(p: Path, rng: random.Random) -> None:
        data = bytearray(p.read_bytes())
        for _ in range(3):
            pos = rng.randrange(0, max(1, len(data) // 2))
            for old, new in ((b",pending,", b",delivered,"), (b",shipped,", b",returned,")):
                at = data.find(old, pos)
                if at >= 0:
                    data[at : at + len(old)] = new
                    break
        p.write_bytes(bytes(data))
