"""Content-defined chunking with FastCDC (pyfastcdc, Cython, GIL released while cutting).

Cut points depend only on content, so inserting bytes near the start of a file moves
only the chunks around the edit: the rest keep their ids and dedup.

Files are cut through a sliding window read with ``readinto``: memory stays bounded by
the window whatever the file size, and chunks are zero-copy views into the window.
Correctness of the window: a FastCDC cut at position ``i`` depends only on the bytes of
the current chunk up to ``i``, so every cut found before the window's end is the cut the
whole-file pass would find; only the window's last piece (forced by the window end) is
carried over into the next window and cut again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

from dsvc.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters; fixed per store (and per remote) at creation.

    ``avg_size`` is pyfastcdc's parameter: the mean chunk length it produces is about
    ``avg_size + min_size`` (cut-point skipping, FastCDC paper §3.4).
    """

    min_size: int
    avg_size: int
    max_size: int
    normalization: int = 1
    algorithm: str = "fastcdc2020"

    def __post_init__(self) -> None:
        if not (64 <= self.min_size <= self.avg_size <= self.max_size):
            raise ConfigError(
                f"chunker sizes must satisfy 64 <= min <= avg <= max, got "
                f"{self.min_size}/{self.avg_size}/{self.max_size}"
            )
        if self.algorithm != "fastcdc2020":
            raise ConfigError(f"unknown chunking algorithm {self.algorithm!r}")

    def to_config(self) -> dict[str, int | str]:
        return {
            "algorithm": self.algorithm,
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
            "normalization": self.normalization,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> ChunkerParams:
        try:
            return cls(
                min_size=int(cfg["min_size"]),
                avg_size=int(cfg["avg_size"]),
                max_size=int(cfg["max_size"]),
                normalization=int(cfg.get("normalization", 1)),
                algorithm=str(cfg.get("algorithm", "fastcdc2020")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"malformed chunker configuration {cfg!r}: {e}") from e


#: Chosen by measurement, see docs/chunking.md (dedup on edits vs per-chunk overhead).
DEFAULT_PARAMS = ChunkerParams(min_size=256 * KiB, avg_size=512 * KiB, max_size=4 * MiB)

#: Bytes read per window when cutting a file (must be >= max_size).
WINDOW = 16 * MiB


class Chunker:
    """Cuts buffers and files into content-defined chunks. Thread-safe (one FastCDC per call)."""

    def __init__(self, params: ChunkerParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self.window = max(WINDOW, 4 * params.max_size)

    def _cdc(self) -> FastCDC:
        p = self.params
        return FastCDC(
            p.avg_size,
            min_size=p.min_size,
            max_size=p.max_size,
            normalized_chunking=p.normalization,
        )

    def cut(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Yield the chunks of an in-memory buffer as views into it."""
        mv = memoryview(data)
        if len(mv) <= self.params.min_size:
            yield mv
            return
        for c in self._cdc().cut_buf(mv):
            yield mv[c.offset : c.offset + c.length]

    def cut_stream(self, f: BinaryIO) -> Iterator[memoryview]:
        """Yield the chunks of a binary stream, reading at most one window at a time.

        An empty stream yields one empty chunk, so every file has at least one chunk.
        """
        cdc = self._cdc()
        carry = b""
        first = True
        while True:
            buf = bytearray(self.window)
            mv = memoryview(buf)
            n = len(carry)
            mv[:n] = carry
            eof = False
            while n < len(buf):
                got = f.readinto(mv[n:])
                if not got:
                    eof = True
                    break
                n += got
            data = mv[:n]
            if eof:
                if n == 0 and first:
                    yield data
                    return
                if n:
                    yield from (data[c.offset : c.offset + c.length] for c in cdc.cut_buf(data))
                return
            first = False
            last_start = 0
            pending: memoryview | None = None
            for c in cdc.cut_buf(data):
                if pending is not None:
                    yield pending
                pending = data[c.offset : c.offset + c.length]
                last_start = c.offset
            # the last piece was forced by the window end: cut it again with what follows
            carry = bytes(data[last_start:])
            del pending, data, mv
