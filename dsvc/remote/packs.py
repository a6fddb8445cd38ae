"""Pack files and their indexes, and the local cache of a remote's indexes.

A pack is ``MAGIC`` followed by stored values exactly as the local store keeps them
(a chunk's frame, or an object's tag byte + frame), back to back. Its index is a
msgpack map ``{"v": 1, "entries": [[id, kind, offset, length], ...]}`` with ``kind``
0 for a chunk and 1 for an object, sorted by id. A pack is named by the xxh3-128 of its
bytes, so a re-uploaded pack has the same name and uploading it twice is harmless.

Invariant: an index is written only after its pack is complete, and readers trust only
packs that have an index; so a push killed mid-way leaves at worst a pack without an
index, which the next push ignores (and re-creates under the same name) and ``gc``
removes.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass

import msgpack
import xxhash

from dsvc import codec
from dsvc.errors import IntegrityError
from dsvc.ids import ID_SIZE, to_hex
from dsvc.store import Store

MAGIC = b"DSVCPK01"
KIND_CHUNK = 0
KIND_OBJECT = 1
INDEX_VERSION = 1

#: local cache row: pack id (16) + offset (8) + length (4) + kind (1)
_ROW = struct.Struct(">16sQIB")
#: bounds of an index entry (what the cache row holds; a value is one frame + tag byte)
MAX_OFFSET = 1 << 63
MAX_VALUE = codec.MAX_FRAME + 1


@dataclass(frozen=True)
class Location:
    pack: bytes
    offset: int
    length: int
    kind: int


class PackBuilder:
    """Accumulates stored values into one pack (in memory, bounded by the caller)."""

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = [MAGIC]
        self._entries: list[tuple[bytes, int, int, int]] = []
        self.size = len(MAGIC)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, oid: bytes, kind: int, value: bytes | memoryview) -> None:
        self._entries.append((oid, kind, self.size, len(value)))
        self._parts.append(value)
        self.size += len(value)

    def values(self) -> Iterator[tuple[bytes, int, bytes | memoryview]]:
        """``(id, kind, stored value)`` of each value added, in pack order."""
        for (oid, kind, _off, _len), value in zip(self._entries, self._parts[1:]):
            yield oid, kind, value

    def finish(self, tail: bytes = b"") -> tuple[bytes, bytes, bytes]:
        """``(pack id, pack bytes, index bytes)``. ``tail`` is appended after the values
        (readers ignore bytes no index entry covers): it gives the same values a pack of
        another name."""
        data = b"".join([*self._parts, tail])
        pid = xxhash.xxh3_128(data).digest()
        entries = sorted(self._entries)
        index = msgpack.packb(
            {"v": INDEX_VERSION, "entries": [list(e) for e in entries]}, use_bin_type=True
        )
        return pid, data, index


def decode_index(data: bytes, pack_name: str) -> list[tuple[bytes, int, int, int]]:
    """Parse and validate an index; IntegrityError names the pack when it is malformed."""
    try:
        raw = msgpack.unpackb(data, raw=False)
        if not isinstance(raw, dict) or raw.get("v") != INDEX_VERSION:
            v = raw.get("v") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"unknown index version {v!r}")
        if not isinstance(raw.get("entries"), list):
            raise ValueError("entries is not a list")
        out = []
        for e in raw["entries"]:
            if not isinstance(e, list) or len(e) != 4:
                raise ValueError("an entry is not [id, kind, offset, length]")
            oid, kind, off, length = e
            if not isinstance(oid, bytes) or len(oid) != ID_SIZE:
                raise ValueError("bad id")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (kind, off, length)):
                raise ValueError("kind, offset and length must be integers")
            if kind not in (KIND_CHUNK, KIND_OBJECT) or not len(MAGIC) <= off < MAX_OFFSET:
                raise ValueError("bad kind or offset")
            # a stored value is one frame (+ tag byte): never larger than the largest object
            if not 1 <= length <= MAX_VALUE:
                raise ValueError(f"bad length {length}")
            out.append((oid, kind, off, length))
        return out
    except Exception as e:  # msgpack raises several unrelated types
        raise IntegrityError(f"pack index {pack_name}.idx is malformed ({e})") from None


class RemoteIndex:
    """Which objects a remote holds and where, cached in the local store.

    Keys in the ``remote`` database: ``<remote key>/o/<object id>`` -> location row,
    ``<remote key>/p/<pack id>`` -> b"" for each index already loaded,
    ``<remote key>/id`` -> the remote's repository id, ``<remote key>/dmg`` -> digest of
    the remote's damage list (``fsck/damaged``) the cached locations respect.
    """

    def __init__(self, store: Store, remote_key: str) -> None:
        self.store = store
        self.prefix = remote_key.encode() + b"/"

    def known_packs(self) -> set[bytes]:
        p = self.prefix + b"p/"
        return {k[len(p) :] for k, _ in self.store.scan_prefix("remote", p)}

    def add_pack(
        self,
        pack: bytes,
        entries: Iterable[tuple[bytes, int, int, int]],
        skip: Container[bytes] = frozenset(),
    ) -> None:
        """Cache a pack's index; ``skip``: ids whose copy in this pack is damaged (never
        located there)."""
        with self.store.batch() as b:
            for oid, kind, off, length in entries:
                if oid in skip:
                    continue
                b.put_remote(self.prefix + b"o/" + oid, _ROW.pack(pack, off, length, kind))
            b.put_remote(self.prefix + b"p/" + pack, b"")

    def locate(self, ids: Iterable[bytes]) -> dict[bytes, Location]:
        out = {}
        with self.store.reader() as r:
            for oid in ids:
                raw = r.remote(self.prefix + b"o/" + oid)
                if raw is not None:
                    out[oid] = Location(*_ROW.unpack(raw))
        return out

    def has(
        self,
        oid: bytes,
        exclude: frozenset[bytes] | set[bytes] = frozenset(),
        suspect: Container[tuple[bytes, bytes]] = frozenset(),
    ) -> bool:
        """Whether the remote holds ``oid`` in a pack not in ``exclude``, in a copy that
        is not in ``suspect`` (``(pack, id)`` pairs: copies whose subtree is incomplete)."""
        with self.store.reader() as r:
            raw = r.remote(self.prefix + b"o/" + oid)
        if raw is None:
            return False
        pack = bytes(raw[:16])
        return pack not in exclude and (pack, oid) not in suspect

    def drop(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """Forget the cached location of each ``(pack, id)`` that points into that pack."""
        with self.store.reader() as r:
            keys = []
            for pack, oid in pairs:
                raw = r.remote(self.prefix + b"o/" + oid)
                if raw is not None and bytes(raw[:16]) == pack:
                    keys.append(self.prefix + b"o/" + oid)
        with self.store.batch() as b:
            for k in keys:
                b.delete_remote(k)

    def get_meta(self, name: bytes) -> bytes | None:
        with self.store.reader() as r:
            return r.remote(self.prefix + name)

    def set_meta(self, name: bytes, value: bytes) -> None:
        with self.store.batch() as b:
            b.put_remote(self.prefix + name, value)

    def missing(
        self, ids: Iterable[bytes], exclude: frozenset[bytes] | set[bytes] = frozenset()
    ) -> list[bytes]:
        """The ``ids`` the remote lacks (or holds only in packs in ``exclude``)."""
        out = []
        with self.store.reader() as r:
            for i in ids:
                raw = r.remote(self.prefix + b"o/" + i)
                if raw is None or (exclude and bytes(raw[:16]) in exclude):
                    out.append(i)
        return out

    def forget_packs(self, packs: set[bytes]) -> None:
        """Drop every location in ``packs`` (deleted from the remote) from the cache."""
        if not packs:
            return
        keys = [self.prefix + b"p/" + p for p in packs]
        keys += [
            k for k, v in self.store.scan_prefix("remote", self.prefix + b"o/") if v[:16] in packs
        ]
        with self.store.batch() as b:
            for k in keys:
                b.delete_remote(k)

    def reset_packs(self) -> None:
        """Forget which indexes were loaded, so the next refresh reloads them all (an
        object whose cached location was forgotten may still be in another pack)."""
        keys = [k for k, _ in self.store.scan_prefix("remote", self.prefix + b"p/")]
        with self.store.batch() as b:
            for k in keys:
                b.delete_remote(k)

    def clear(self) -> None:
        keys = [k for k, _ in self.store.scan_prefix("remote", self.prefix)]
        with self.store.batch() as b:
            for k in keys:
                b.delete_remote(k)


def pack_name(pid: bytes) -> str:
    return to_hex(pid)
