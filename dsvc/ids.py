"""Object ids: xxh3-128 over a one-byte type tag followed by the object's canonical bytes.

The tag is hashed *with* the content, so a chunk and a tree with equal bytes still get
different ids. Ids are 16 raw bytes everywhere inside dsvc and 32 lowercase hex
characters wherever a person sees them.
"""

from __future__ import annotations

import xxhash

ID_SIZE = 16
HEX_SIZE = 2 * ID_SIZE

#: type tags (one byte each, part of the hashed bytes)
TAG_CHUNK = b"C"
TAG_BLOB = b"B"
TAG_TREE = b"T"
TAG_COMMIT = b"M"



def object_id(tag: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Return the 16-byte id of ``data`` stored under type ``tag``."""
    h = xxhash.xxh3_128(tag)
    h.update(data)
    return h.digest()


def chunk_id(data: bytes | bytearray | memoryview) -> bytes:
    """Id of a piece of file content."""
    return object_id(TAG_CHUNK, data)


def to_hex(oid: bytes) -> str:
    """32-character display form of an id."""
    return oid.hex()

