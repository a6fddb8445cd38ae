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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import zstandard

from dsvc.errors import IntegrityError
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE, object_id, to_hex

RAW = 0
ZSTD = 1

#: keep raw unless compression saves at least this fraction of the size
MIN_SAVING = 0.05
DEFAULT_LEVEL = 1
#: The format's bounds on a payload, per type (docs/format.md §2). A frame declaring
#: more is refused before anything is allocated, so a hostile remote cannot make a
#: reader inflate a small frame into gigabytes (a "decompression bomb").
#: chunks: FastCDC 2020's largest max_size (pyfastcdc refuses more); a store's own
#: chunker maximum is tighter and callers that know it pass it as ``limit``
MAX_CHUNK = 16 << 20
#: blobs: ~24 bytes per chunk, so 2.8 million chunks (a file of ~700 GiB by default)
MAX_BLOB = 64 << 20
#: trees: ~50 bytes per entry, so about 5 million entries in one folder
MAX_TREE = 256 << 20
#: commits: the tree, parents and the version's metadata
MAX_COMMIT = 64 << 20
LIMITS = {TAG_CHUNK: MAX_CHUNK, TAG_BLOB: MAX_BLOB, TAG_TREE: MAX_TREE, TAG_COMMIT: MAX_COMMIT}
#: the largest payload of any type, and the largest frame (codec byte + payload)
MAX_OBJECT = max(LIMITS.values())
MAX_FRAME = MAX_OBJECT + 1
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


def decode_frame(
    frame: bytes | memoryview, tag: bytes, oid: bytes, limit: int | None = None
) -> bytes:
    """Return the payload of ``frame`` after checking it hashes to ``oid`` under ``tag``.

    The payload may be at most ``limit`` bytes (default and cap: the type's bound in
    :data:`LIMITS`); a frame that declares more is an IntegrityError, refused before
    decompressing."""
    data = decode_frame_view(frame, tag, oid, limit)
    return data if isinstance(data, bytes) else bytes(data)


def payload_limit(tag: bytes, limit: int | None = None) -> int:
    """The largest payload a frame of type ``tag`` may declare (``limit`` can only lower it)."""
    bound = LIMITS.get(tag, MAX_CHUNK)
    return bound if limit is None else min(bound, limit)


def declared_size(frame: bytes | memoryview) -> int:
    """Bytes decoding ``frame`` allocates: 0 for raw (a view), the zstd header's
    content size otherwise (-1 when the header is unreadable or declares none)."""
    if len(frame) < 1 or frame[0] != ZSTD:
        return 0
    try:
        return zstandard.frame_content_size(memoryview(frame)[1:])
    except zstandard.ZstdError:
        return -1


def decode_frame_view(
    frame: bytes | memoryview, tag: bytes, oid: bytes, limit: int | None = None
) -> bytes | memoryview:
    """Like :func:`decode_frame`, but a raw payload comes back as a view into ``frame``
    (no copy): valid as long as ``frame`` is (for an LMDB buffer, its transaction)."""
    return decode_frames_view((frame,), tag, (oid,), limit)[0]  # type: ignore[return-value]


def decode_frames_view(
    frames: Sequence[bytes | memoryview | None],
    tag: bytes,
    oids: Sequence[bytes],
    limit: int | None = None,
) -> list[bytes | memoryview | None]:
    """:func:`decode_frame_view` of many frames of one type, in one loop (None stays
    None: an object the caller did not find). A copy of a million small files decodes
    a million frames holding the GIL; one call per folder instead of per frame keeps
    that loop short (docs/performance.md, session 8)."""
    bound = payload_limit(tag, limit)
    decompress = _decompressor().decompress
    content_size = zstandard.frame_content_size
    out: list[bytes | memoryview | None] = []
    append = out.append
    data: bytes | memoryview
    for frame, oid in zip(frames, oids, strict=True):
        if frame is None:
            append(None)
            continue
        if len(frame) < 1:
            raise IntegrityError(f"object {to_hex(oid)}: empty frame", oid)
        codec = frame[0]
        body = memoryview(frame)[1:]
        if codec == ZSTD:
            try:
                # the header may declare any size: check it before zstd allocates it;
                # zstd then decodes into exactly that many bytes, failing on more
                declared = content_size(body)
            except zstandard.ZstdError as e:
                raise IntegrityError(f"object {to_hex(oid)}: corrupt zstd frame ({e})", oid) from e
            if declared < 0 or declared > bound:
                raise IntegrityError(
                    f"object {to_hex(oid)}: zstd frame declares "
                    f"{'no' if declared < 0 else declared} content size, the format allows at "
                    f"most {bound} bytes for its type (corrupt or hostile storage)",
                    oid,
                )
            try:
                data = decompress(body)
            except (zstandard.ZstdError, MemoryError) as e:
                raise IntegrityError(f"object {to_hex(oid)}: corrupt zstd frame ({e})", oid) from e
            if len(data) != declared:
                raise IntegrityError(
                    f"object {to_hex(oid)}: zstd frame holds {len(data)} bytes, its header "
                    f"declares {declared}",
                    oid,
                )
        elif codec == RAW:
            data = body
            if len(data) > bound:
                raise IntegrityError(
                    f"object {to_hex(oid)}: {len(data)} bytes, more than the format allows "
                    f"({bound}) for its type",
                    oid,
                )
        else:
            raise IntegrityError(f"object {to_hex(oid)}: unknown codec byte {codec}", oid)
        if object_id(tag, data) != oid:
            raise IntegrityError(
                f"object {to_hex(oid)}: content does not match its id (corrupted storage)", oid
            )
        append(data)
    return out


class MemoryBudget:
    """A bound on bytes held at once by several threads (decompressed payloads in flight).

    ``hold(n)`` waits until ``n`` more bytes fit; a single request larger than the whole
    budget waits until it is alone, so it never deadlocks.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cv = threading.Condition()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        n = max(0, n)
        with self._cv:
            while self.used and self.used + n > self.limit:
                self._cv.wait()
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cv:
                self.used -= n
                self._cv.notify_all()
