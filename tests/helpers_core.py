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


def chunk_place(store: Store, cid: bytes) -> tuple[Path, int, int]:
    """``(pack file, offset of the frame, frame length)`` of a packed chunk."""
    from dsvc.packfile import decode_loc

    with store.env.begin() as txn:  # either level of the index
        loc = txn.get(cid, db=store._dbs["chunkloc"]) or txn.get(cid, db=store._dbs["chunknew"])
    assert loc is not None, "chunk is not packed"
    pack, off, length = decode_loc(loc)
    return store.packs.path(pack), off, length


def flip_chunk(store: Store, cid: bytes, where: int | None = None) -> None:
    """Flip one byte of a stored chunk frame in its pack file (a bad disk sector);
    ``where``: index in the frame (default: the middle; negative counts from the end)."""
    path, off, length = chunk_place(store, cid)
    i = length // 2 if where is None else where % length
    with open(path, "r+b") as f:
        f.seek(off + i)
        b = f.read(1)
        f.seek(off + i)
        f.write(bytes([b[0] ^ 0x40]))


def drop_chunk(store: Store, cid: bytes) -> bool:
    """Remove a chunk from the store's index (as gc does); whether it was there."""
    there = store.has_chunk(cid)
    with store.batch() as b:
        b.delete_chunk(cid)
    return there
