"""Per-object frames: one codec byte followed by the payload.

``RAW`` (0) stores bytes as they are; ``ZSTD`` (1) stores a zstd frame that records its
content size. ``encode_frame`` keeps the raw form when zstd saves less than
``MIN_SAVING`` of the size (already-compressed images, parquet, archives): reading
those back costs a memcpy instead of a decompression.

Decoding always verifies the object id: wrong bytes raise ``IntegrityError`` naming the
object, they are never returned.
"""

from __future__ import annotations

import threading

import zstandard

from dsvc.errors import IntegrityError
from dsvc.ids import object_id, to_hex

RAW = 0
ZSTD = 1

#: keep raw unless compression saves at least this fraction of the size
MIN_SAVING = 0.05
DEFAULT_LEVEL = 1
#: no chunk or object is larger (chunks are at most 16 MiB; a tree of a million
#: entries is ~60 MiB): a frame declaring more is damaged
MAX_OBJECT = 1 << 30
#: bytes per compressibility sample (see _compressible)
PROBE = 8 << 10

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe: one per thread and level.
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode_frame(data: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """Frame ``data`` for storage: zstd unless that saves less than ``MIN_SAVING``.

    ``level <= 0`` disables compression (always raw).
    """
    n = len(data)
    if level > 0 and n >= 64:
        c = _compressor(level)
        if n >= 8 * PROBE and not _compressible(c, memoryview(data), n):
            return b"\x00" + data
        z = c.compress(data)
        if len(z) <= n * (1.0 - MIN_SAVING):
            return b"\x01" + z
    return b"\x00" + data  # one copy (bytes + any buffer makes new bytes)


def _compressible(c: zstandard.ZstdCompressor, mv: memoryview, n: int) -> bool:
    """Probe two samples (start and middle) before compressing a large piece: zstd on
    incompressible bytes (images, archives, parquet) costs as much CPU as hashing and
    chunking together, for nothing. A piece whose samples save under half of
    ``MIN_SAVING`` is stored raw without a full attempt."""
    mid = (n // 2) & ~4095
    saved = 2 * PROBE - len(c.compress(mv[:PROBE])) - len(c.compress(mv[mid : mid + PROBE]))
    return saved >= PROBE * MIN_SAVING  # = half of MIN_SAVING over the two samples


def decode_frame(frame: bytes | memoryview, tag: bytes, oid: bytes) -> bytes:
    """Return the payload of ``frame`` after checking it hashes to ``oid`` under ``tag``."""
    data = decode_frame_view(frame, tag, oid)
    return data if isinstance(data, bytes) else bytes(data)


def decode_frame_view(frame: bytes | memoryview, tag: bytes, oid: bytes) -> bytes | memoryview:
    """Like :func:`decode_frame`, but a raw payload comes back as a view into ``frame``
    (no copy): valid as long as ``frame`` is (for an LMDB buffer, its transaction)."""
    if len(frame) < 1:
        raise IntegrityError(f"object {to_hex(oid)}: empty frame", oid)
    codec = frame[0]
    body = memoryview(frame)[1:]
    if codec == RAW:
        data = body
    elif codec == ZSTD:
        try:
            # a damaged header may declare any size: check it before zstd allocates it
            declared = zstandard.frame_content_size(body)
            if declared < 0 or declared > MAX_OBJECT:
                raise zstandard.ZstdError(f"implausible content size {declared}")
            data = _decompressor().decompress(body)
        except (zstandard.ZstdError, MemoryError) as e:
            raise IntegrityError(f"object {to_hex(oid)}: corrupt zstd frame ({e})", oid) from e
    else:
        raise IntegrityError(f"object {to_hex(oid)}: unknown codec byte {codec}", oid)
    if object_id(tag, data) != oid:
        raise IntegrityError(
            f"object {to_hex(oid)}: content does not match its id (corrupted storage)", oid
        )
    return data
