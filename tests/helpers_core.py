"""Shared helpers for the model/store/work-layer tests (no fixtures: conftest is not ours)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from dsvc.chunker import ChunkerParams, KiB
from dsvc.ids import chunk_id
from dsvc.objects import KIND_CHUNKFILE, MODE_EXEC, MODE_FILE, Entry
from dsvc.store import Store

#: small chunker parameters so a few hundred KiB already make many chunks
SMALL = ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB)

#: an mtime safely in the past, so the stat cache's "racily clean" rule does not apply
OLD_MTIME_NS = 1_600_000_000_123_456_789


def open_store(path: Path, params: ChunkerParams | None = SMALL, **kw) -> Store:
    return Store(path, chunker_params=params, **kw)


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def write_file(path: Path, data: bytes, *, exec_bit: bool = False, old: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if exec_bit:
        path.chmod(0o755)
    if old:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def make_tree(root: Path, files: dict[str, bytes], *, exec_paths: set[str] = frozenset()) -> None:
    for rel, data in files.items():
        write_file(root / rel, data, exec_bit=rel in exec_paths)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` as ``{relative posix path: bytes}``."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def content_entry(data: bytes, mode: int = MODE_FILE) -> Entry:
    """A single-chunk file entry for ``data`` (content need not be stored for tree tests)."""
    return Entry(KIND_CHUNKFILE, chunk_id(data), len(data), mode)


def file_bytes(store: Store, entry: Entry) -> bytes:
    return b"".join(store.read_file(entry))


__all__ = [
    "MODE_EXEC",
    "OLD_MTIME_NS",
    "SMALL",
    "content_entry",
    "file_bytes",
    "make_tree",
    "open_store",
    "rand_bytes",
    "read_tree",
    "write_file",
]
