"""Measure candidate FastCDC parameters: dedup on edits, throughput, chunk count, ratio.

Usage::

    .venv/bin/python benchmarks/chunk_params.py [--size-mib 64] [--json out.json]

For each candidate (pyfastcdc ``min/avg/max``; the real mean chunk is about
``avg + min``) on CSV-like text and on incompressible bytes from ``datagen``:

* **dedup**: new bytes after an edit = total length of the edited file's chunks that the
  original did not have, as a fraction of the file (lower is better). Edits: 10 inserts
  of 100 bytes, 10 deletes of 100 bytes, 10 overwrites of 100 bytes, appending 1%.
  For text, also the stored (zstd) new bytes. These numbers are deterministic.
* **throughput**: cut + hash + compress of the whole buffer on one thread, in CPU time
  (``time.thread_time``: stable on a busy machine), and a real ``Ingestor`` run of the
  text file into a fresh store (wall and CPU time).
* **chunks**: count and mean length, i.e. per-chunk overhead (one LMDB entry, one blob
  list item of ~21 bytes, one Python iteration each).
* **ratio**: zstd level 1 and 3 over the text, per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import datagen  # noqa: E402
import zstandard  # noqa: E402

from dsvc.chunker import Chunker, ChunkerParams  # noqa: E402
from dsvc.codec import encode_frame  # noqa: E402
from dsvc.ids import chunk_id  # noqa: E402
from dsvc.ingest import ingest_path  # noqa: E402
from dsvc.store import Store  # noqa: E402

KiB, MiB = datagen.KiB, datagen.MiB

CANDIDATES = [
    ChunkerParams(16 * KiB, 64 * KiB, 256 * KiB),
    ChunkerParams(32 * KiB, 128 * KiB, 512 * KiB),
    ChunkerParams(64 * KiB, 256 * KiB, 1 * MiB),
    ChunkerParams(128 * KiB, 512 * KiB, 2 * MiB),
    ChunkerParams(256 * KiB, 512 * KiB, 4 * MiB),
    ChunkerParams(256 * KiB, 1 * MiB, 4 * MiB),
]

EDITS = [("insert", 10), ("delete", 10), ("overwrite", 10), ("append", 1)]


def label(p: ChunkerParams) -> str:
    return f"{p.min_size // KiB}K/{p.avg_size // KiB}K/{p.max_size // KiB}K"


def chunks_of(ch: Chunker, data: bytes) -> list[tuple[bytes, int, memoryview]]:
    return [(chunk_id(c), len(c), c) for c in ch.cut(data)]


def new_bytes(ch: Chunker, base_ids: set[bytes], data: bytes, level: int) -> tuple[int, int]:
    raw = stored = 0
    seen: set[bytes] = set()
    for cid, n, c in chunks_of(ch, data):
        if cid in base_ids or cid in seen:
            continue
        seen.add(cid)
        raw += n
        if level:
            stored += len(encode_frame(c, level))
    return raw, stored


def edited(data: bytes, op: str, n: int, seed: int) -> bytes:
    if op == "append":
        return data + (
            datagen.csv_text(len(data) // 100 // 100 + 1, seed, start_id=10**8)[: len(data) // 100]
            if data[:2] == b"id"
            else datagen.random_bytes(len(data) // 100, seed)
        )
    return datagen.edit(data, op, fraction=100 * n / len(data), seed=seed, n_edits=n)


def measure(p: ChunkerParams, text: bytes, binary: bytes, work: Path) -> dict:
    ch = Chunker(p)
    row: dict = {"params": label(p), "min": p.min_size, "avg": p.avg_size, "max": p.max_size}
    for kind, data, level in (("text", text, 1), ("bin", binary, 0)):
        base = chunks_of(ch, data)
        ids = {c for c, _, _ in base}
        row[f"{kind}_chunks"] = len(base)
        row[f"{kind}_mean_kib"] = len(data) / len(base) / KiB
        for op, n in EDITS:
            raw, stored = new_bytes(ch, ids, edited(data, op, n, seed=11), level)
            row[f"{kind}_{op}_new"] = raw / len(data)
            if level:
                row[f"{kind}_{op}_stored"] = stored / len(data)
    # compression ratio per chunk at two levels
    for level in (1, 3):
        z = zstandard.ZstdCompressor(level=level)
        comp = sum(len(z.compress(c)) for c in ch.cut(text))
        row[f"ratio_z{level}"] = len(text) / comp
    # single-thread CPU throughput of cut + hash + compress
    for kind, data in (("text", text), ("bin", binary)):
        t = time.thread_time()
        for c in ch.cut(data):
            chunk_id(c)
            encode_frame(c, 1)
        row[f"{kind}_cpu_mb_s"] = len(data) / (time.thread_time() - t) / 1e6
    # a real ingest of the text into a fresh store (pipeline, LMDB, per-chunk overhead)
    src = work / "src"
    src.mkdir(exist_ok=True)
    (src / "t.csv").write_bytes(text)
    home = Path(tempfile.mkdtemp(dir=work))
    store = Store(home, chunker_params=p)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    _, st = ingest_path(store, src)
    row["ingest_wall_s"] = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    row["ingest_cpu_s"] = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    row["ingest_stored"] = st.new_bytes_stored / len(text)
    store.close()
    shutil.rmtree(home)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    size = args.size_mib * MiB
    text = b"".join(datagen.iter_csv(size, seed=21))
    binary = datagen.random_bytes(size, seed=22)
    work = Path(tempfile.mkdtemp(prefix="chunk-params-"))
    rows = []
    try:
        for p in CANDIDATES:
            rows.append(measure(p, text, binary, work))
            r = rows[-1]
            print(
                f"{r['params']:>15}  mean {r['text_mean_kib']:6.0f}K  chunks {r['text_chunks']:5d}  "
                f"text ins {r['text_insert_new']:.4f} del {r['text_delete_new']:.4f} "
                f"ovw {r['text_overwrite_new']:.4f} app {r['text_append_new']:.4f}  "
                f"bin ins {r['bin_insert_new']:.4f} app {r['bin_append_new']:.4f}  "
                f"z1 {r['ratio_z1']:.2f} z3 {r['ratio_z3']:.2f}  "
                f"cpu {r['text_cpu_mb_s']:.0f}/{r['bin_cpu_mb_s']:.0f} MB/s  "
                f"ingest {r['ingest_cpu_s']:.2f} cpu s",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
