"""Pack appends past the page cache (dsvc.directio, issue 11): the bytes of a stream land
where a buffered write would put them, whatever the split of its parts; a file system
without O_DIRECT falls back to the cache; and a stream whose write fails can never be
indexed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsvc import directio, packfile
from dsvc.errors import StorageError
from dsvc.ids import chunk_id
from dsvc.store import Store

ROOT = Path(__file__).resolve().parent.parent
BLOCK = directio.BLOCK


def _stream(path: Path, parts: list[bytes]) -> bytes:
    """Append ``parts`` to ``path`` through one DirectAppender; the tail it returns."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        keep = size % BLOCK
        head = os.pread(fd, keep, size - keep) if keep else b""
        s = directio.DirectAppender(path, fd, size, head)
        s.write(parts)
        assert s.end == size + sum(map(len, parts))
        return s.finish()
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.integers(0, 3 * BLOCK + 17),
    streams=st.lists(
        st.lists(
            st.one_of(
                st.integers(0, 70),
                st.sampled_from([BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK]),
                st.integers(0, 7 * BLOCK),
            ),
            max_size=8,
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_a_stream_writes_what_a_buffered_append_writes(
    tmp_path_factory: pytest.TempPathFactory, prefix: int, streams: list[list[int]]
) -> None:
    """Any split into parts, from any unaligned start, across buffer boundaries (a
    buffer of 3 blocks here), stream after stream: the file holds the bytes in order,
    the bytes before the stream are unchanged, and each stream returns the partial block
    it ends in (the next one's head)."""
    path = tmp_path_factory.mktemp("direct") / "f"
    expected = bytearray(os.urandom(prefix))
    path.write_bytes(expected)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(directio, "BUFFER", 3 * BLOCK)
        for sizes in streams:
            parts = [os.urandom(n) for n in sizes]
            tail = _stream(path, parts)
            expected += b"".join(parts)
            assert tail == bytes(expected[len(expected) - len(expected) % BLOCK :])
            assert path.read_bytes() == expected


def test_an_append_of_a_mebibyte_or_more_goes_past_the_cache_and_reads_back(
    tmp_path: Path,
) -> None:
    """The pack writer streams large appends (DIRECT_MIN) and writes small ones through
    the cache, in any order, in a pack it reopens at an unaligned size too: every frame
    reads back at its location once synced, and the stream is finished by the sync."""
    packs = packfile.Packs(tmp_path)
    frames = [(os.urandom(16), os.urandom(n)) for n in (3 << 20, 100, 5 << 20, 7, 1 << 20)]
    locs = []
    locs += packs.append(frames[:1], defer_sync=True)
    assert packs._stream is not None  # past the cache, and not written out yet
    locs += packs.append(frames[1:2], defer_sync=True)  # small: finishes the stream
    assert packs._stream is None
    locs += packs.append(frames[2:3], defer_sync=True)
    packs.sync()
    assert packs._stream is None
    packs.close()
    packs = packfile.Packs(tmp_path)  # reopened: the head of the next stream is read back
    locs += packs.append(frames[3:4])
    locs += packs.append(frames[4:], defer_sync=True)
    packs.sync()
    assert [packs.read(c, loc) for c, loc in locs] == [f for _, f in frames]
    assert len(packs.packs()) == 1
    packs.close()


def test_without_o_direct_appends_go_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directio, "_O_DIRECT", 0)
    packs = packfile.Packs(tmp_path)
    frames = [(os.urandom(16), os.urandom(2 << 20)) for _ in range(2)]
    locs = packs.append(frames, defer_sync=True)
    assert packs._stream is None and not packs._direct_ok
    packs.sync()
    assert [packs.read(c, loc) for c, loc in locs] == [f for _, f in frames]
    packs.close()


FAILING_STREAM = """
import json, os, resource, signal, sys
from pathlib import Path
from dsvc import packfile
from dsvc.errors import StorageError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
folder = Path(sys.argv[1])
packs = packfile.Packs(folder)
packs.append([(os.urandom(16), b"x" * 100)])  # the pack exists, its bytes durable
resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, resource.RLIM_INFINITY))
big = [(os.urandom(16), os.urandom(4 << 20)) for _ in range(3)]
locs = packs.append(big, defer_sync=True)  # returns: the stream writes on its own
out = {}
try:
    packs.sync()
except OSError as e:
    out["sync"] = e.errno
try:
    packs.check_written(loc for _, loc in locs)
except StorageError as e:
    out["check"] = str(e)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
packs.check_written(loc for _, loc in locs[:0])
small = [(os.urandom(16), os.urandom(2 << 20))]
more = packs.append(small, defer_sync=True)
packs.sync()
packs.check_written(loc for _, loc in more)
out["read_back"] = packs.read(*more[0]) == small[0][1]
out["packs"] = [packfile.decode_loc(loc)[0] for _, loc in locs[:1] + more]
print(json.dumps(out))
"""


def test_a_stream_whose_write_failed_is_never_indexed(tmp_path: Path) -> None:
    """A direct write that fails (here the file size limit, EFBIG: a full disk fails the
    same way) surfaces at the sync before the commit, and no index value that points
    into the lost bytes can pass ``check_written`` afterwards, even after a later sync
    succeeds; the next appends go to another pack and read back."""
    p = subprocess.run(
        [sys.executable, "-c", FAILING_STREAM, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["sync"] == 27  # EFBIG
    assert "failed" in out["check"] and "run the step again" in out["check"]
    assert out["read_back"] is True
    first, second = out["packs"]
    assert first != second


def test_the_store_refuses_to_commit_a_location_whose_write_failed(tmp_path: Path) -> None:
    """The wiring of the check above: a batch whose appended frames fall in a lost
    range (as a failed stream records it) does not commit, and nothing is indexed."""
    store = Store(tmp_path / "home")
    data = os.urandom(2 << 20)
    with pytest.raises(StorageError, match="run the step again"), store.batch() as b:
        b.put_chunk(data)
        b.write_frames()  # appended (deferred); the commit comes at the batch's end
        pack = store.packs.writer_pack()
        assert pack is not None
        store.packs._lost[pack] = [(0, 1 << 40)]
    with store.reader() as r:
        assert not r.has_chunk(chunk_id(data))
    store.close()
