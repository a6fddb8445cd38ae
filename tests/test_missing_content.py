"""Store.missing_content: the one check of which files' content is not local (used by
get_local_copy's fetch and by `dsvc pull`)."""

from __future__ import annotations

from pathlib import Path

from dsvc.objects import KIND_CHUNKFILE, KIND_FILE, Blob, Entry
from dsvc.registry import open_store


def test_missing_content_finds_absent_blobs_chunks_and_chunk_entries(tmp_path: Path) -> None:
    store = open_store(tmp_path / "home")
    with store.batch() as b:
        c1, c2, c3 = (b.put_chunk(x) for x in (b"one", b"two", b"three"))
        whole = b.put_blob(Blob(((c1, 3), (c2, 3))))
        holed = b.put_blob(Blob(((c1, 3), (c3, 5))))
    gone_blob = Entry(KIND_FILE, b"\x01" * 16, 4)
    entries = [
        Entry(KIND_FILE, whole, 6),
        Entry(KIND_FILE, holed, 8),
        Entry(KIND_CHUNKFILE, c1, 3),
        gone_blob,
        Entry(KIND_CHUNKFILE, b"\x02" * 16, 2),
        Entry(KIND_FILE, holed, 8),  # the same content twice: reported twice
    ]
    assert store.missing_content(entries) == [gone_blob, entries[4]]
    with store.batch() as b:
        b.delete_chunk(c3)
    assert store.missing_content(entries) == [entries[1], gone_blob, entries[4], entries[5]]
    assert store.missing_content(e for e in entries[:1]) == []
