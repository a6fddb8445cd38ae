"""Append-only pack files: where the local store keeps chunk bytes (issue 11).

LMDB copies every value of over ~2 KiB into whole 4 KiB overflow pages and rewrites
(copy-on-write) the branch, leaf and freelist pages each commit touches; with a fsync
per commit those rewrites reach the disk, so a store of 256 KiB chunks wrote 1.5-3x
its bytes, and a store of 1-4 KiB files used whole pages per value (docs/performance.md,
"Local store write amplification"). Chunk frames are therefore appended to pack files
in ``store.lmdb/packs/`` and LMDB keeps only their location (``chunkloc``: chunk id ->
pack, offset, length), next to the objects, records, stat cache and config.

Layout (docs/format.md §5): a pack is ``MAGIC`` then entries ``id (16) | length (u32
big-endian) | frame (length bytes)``; an index value is ``pack id (u64) | offset of the
frame (u64) | length (u32)``, big-endian. Pack ``p`` is the file
``packs/<p as 16 lowercase hex>.pack``.

Crash safety: a writer appends a batch's frames with one ``pwrite``, ``fdatasync``s the
pack (and, for a new pack, its folder), and only then commits the LMDB transaction that
indexes them. A batch that appends several times before one commit (the ingest writer,
every 8 MiB) starts each append's writeback and syncs once, before that commit. A
kill or a system crash at any point leaves either no index entry, or one whose bytes
are durable; a torn tail is unreferenced garbage that gc reclaims. One process appends
to a pack at a time (an exclusive ``flock`` on it while open).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from dsvc import directio, libc
from dsvc.errors import IntegrityError, StorageError
from dsvc.ids import to_hex

MAGIC = b"DSVCPK1\n"
#: entry header: chunk id, frame length
HEADER = struct.Struct(">16sI")
#: index value (``chunkloc`` database): pack id, frame offset, frame length
LOC = struct.Struct(">QQI")
#: a pack stops taking appends at this size (compaction rewrites one pack at a time)
PACK_MAX = 256 << 20
#: full packs whose bytes may wait for the next sync (see Packs._retire_writer); past
#: this, the oldest is synced at once
MAX_RETIRED = 4
#: gc rewrites a pack whose live bytes are below this fraction of its size
REPACK_LIVE = 0.5
PACK_DIR = "packs"
#: :meth:`Packs.read_many` reads frames in one run when at most this many bytes lie
#: between them, and runs of at most ``READ_RUN`` bytes
READ_GAP = 64 << 10
READ_RUN = 8 << 20
#: appends of at least this many bytes go past the page cache (dsvc.directio), in
#: durable stores; smaller ones (a single chunk, a batch's last frames) through it
DIRECT_MIN = 1 << 20
_EMPTY = memoryview(b"")


def pack_name(pack: int) -> str:
    return f"{pack:016x}.pack"


def parse_name(name: str) -> int | None:
    """The pack id of a file name, or None for anything else (temporary files...)."""
    if len(name) != 21 or not name.endswith(".pack"):
        return None
    try:
        return int(name[:16], 16)
    except ValueError:
        return None


def encode_loc(pack: int, offset: int, length: int) -> bytes:
    return LOC.pack(pack, offset, length)


def decode_loc(raw: bytes | memoryview) -> tuple[int, int, int]:
    """``(pack, offset, length)`` of an index value; ValueError when malformed."""
    if len(raw) != LOC.size:
        raise ValueError(f"chunk location of {len(raw)} bytes, expected {LOC.size}")
    return LOC.unpack(raw)


def entry_bytes(length: int) -> int:
    """Bytes one entry of a ``length``-byte frame takes in a pack."""
    return HEADER.size + length


class Packs:
    """The pack files of one store, for one process: reads from any pack, appends to
    the one pack this process holds the lock of."""

    def __init__(self, folder: Path, durable: bool = True) -> None:
        self.folder = folder
        self.durable = durable
        self._lock = threading.Lock()  # appends, and the read-descriptor table
        self._fds: dict[int, int] = {}
        self._wfd: int | None = None
        self._wpack = 0
        self._wsize = 0
        self._dirty = False  # appended without fdatasync (deferred, or DSVC_FSYNC=0)
        #: full packs with unsynced bytes (_retire_writer): descriptor, pack id, and the
        #: byte range ``(start, end)`` that waits for their sync
        self._retired: list[tuple[int, int, int, int]] = []
        self._wsynced = 0  # the writer pack's bytes below this offset are durable
        self._new_name = False  # a pack was created since the folder was last synced
        #: the open stream of direct appends to the writer pack (dsvc.directio), and
        #: whether this folder's file system takes O_DIRECT (found at the first try)
        self._stream: directio.DirectAppender | None = None
        self._direct_ok = True
        #: the writer pack's bytes from the start of its last block to its end, when
        #: known (the head of the next stream; None: read it from the file)
        self._tail: bytes | None = None
        #: byte ranges ``(start, end)`` per pack whose write or sync failed: appends that
        #: returned but may never reach the disk. No index entry into them may commit
        #: (:meth:`check_written`), whatever later syncs report (Linux reports a failed
        #: writeback once), and no writer reuses their pack.
        self._lost: dict[int, list[tuple[int, int]]] = {}
        #: packs never to append to (those a compaction is emptying)
        self.avoid: set[int] = set()

    def path(self, pack: int) -> Path:
        return self.folder / pack_name(pack)

    # -- reading -----------------------------------------------------------------

    def _fd(self, pack: int) -> int:
        fd = self._fds.get(pack)
        if fd is None:
            with self._lock:
                fd = self._fds.get(pack)
                if fd is None:
                    fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
                    self._fds[pack] = fd
        return fd

    def read(self, cid: bytes, loc: bytes | memoryview) -> bytes:
        """The frame stored for ``cid`` at ``loc``, its header checked (the frame itself
        is verified against ``cid`` by whoever decodes it). IntegrityError when the pack
        is missing, short, or holds another id there."""
        try:
            pack, off, length = decode_loc(loc)
        except ValueError as e:
            raise IntegrityError(f"chunk {to_hex(cid)}: bad location: {e}", cid) from None
        try:
            data = os.pread(self._fd(pack), HEADER.size + length, off - HEADER.size)
        except FileNotFoundError:
            raise IntegrityError(
                f"chunk {to_hex(cid)}: its pack file {self.path(pack)} is missing", cid
            ) from None
        if len(data) != HEADER.size + length or data[:16] != cid:
            raise IntegrityError(
                f"chunk {to_hex(cid)}: pack file {self.path(pack)} does not hold it at "
                f"offset {off} (short or overwritten)",
                cid,
            )
        return data[HEADER.size :]

    def read_many(self, items: Sequence[tuple[bytes, bytes | memoryview]]) -> list[memoryview]:
        """:meth:`read` of many ``(cid, loc)`` at once: frames close together in a pack
        (a folder's small files were packed in a row) come from one ``pread`` of the
        run that holds them, instead of one call each. Same checks and errors.

        The loops are written for a million small frames (a full copy): one
        ``struct`` call per location and a bytes compare per header."""
        out: list[memoryview] = [_EMPTY] * len(items)
        unpack = LOC.unpack
        hsize = HEADER.size
        order = []
        for i, (cid, loc) in enumerate(items):
            try:
                pack, off, length = unpack(loc)
            except struct.error:
                try:
                    decode_loc(loc)  # its ValueError says what is wrong
                except ValueError as e:
                    raise IntegrityError(f"chunk {to_hex(cid)}: bad location: {e}", cid) from None
                raise
            order.append((pack, off - hsize, off + length, i))
        order.sort()
        at = 0
        while at < len(order):
            pack, start, end, _ = order[at]
            last = at + 1
            while (
                last < len(order)
                and order[last][0] == pack
                and order[last][1] - end <= READ_GAP
                and max(end, order[last][2]) - start <= READ_RUN
            ):
                end = max(end, order[last][2])
                last += 1
            try:
                run = os.pread(self._fd(pack), end - start, start)
            except FileNotFoundError:
                cid = items[order[at][3]][0]
                raise IntegrityError(
                    f"chunk {to_hex(cid)}: its pack file {self.path(pack)} is missing", cid
                ) from None
            view = memoryview(run)
            got = len(run)
            for _, a, b, i in order[at:last]:
                cid = items[i][0]
                a -= start
                b -= start
                if b > got or run[a : a + 16] != cid:
                    raise IntegrityError(
                        f"chunk {to_hex(cid)}: pack file {self.path(pack)} does not hold it "
                        f"at offset {a + start + hsize} (short or overwritten)",
                        cid,
                    )
                out[i] = view[a + hsize : b]
            at = last
        return out

    def forget(self, pack: int) -> None:
        """Close the read descriptor of a pack that is being deleted."""
        with self._lock:
            fd = self._fds.pop(pack, None)
        if fd is not None:
            os.close(fd)

    def packs(self) -> dict[int, int]:
        """``{pack id: file size}`` of every pack file."""
        out: dict[int, int] = {}
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return out
        for n in names:
            p = parse_name(n)
            if p is not None:
                try:
                    out[p] = os.stat(self.folder / n).st_size
                except FileNotFoundError:
                    continue
        return out

    # -- appending ---------------------------------------------------------------

    def _open_writer(self, reuse: bool = True) -> None:
        """Take a pack to append to: with ``reuse``, an existing one below PACK_MAX
        whose lock is free (its tail past the last indexed entry, if torn, stays
        unreferenced), else a new one."""
        self.folder.mkdir(exist_ok=True)
        for pack, size in sorted(self.packs().items(), key=lambda kv: kv[1]) if reuse else ():
            if size >= PACK_MAX or pack in self.avoid or pack in self._lost:
                continue
            try:
                fd = os.open(self.path(pack), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # gc deletes a pack while holding its lock: a name that no longer leads
                # to the inode locked here was deleted in between
                if os.stat(self.path(pack)).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError
                # not a pack to append to: a file without MAGIC (a foreign or torn one;
                # packs of this version appear under their name only with it)
                if os.pread(fd, len(MAGIC), 0) != MAGIC:
                    raise FileNotFoundError
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            self._wfd, self._wpack, self._wsize = fd, pack, os.fstat(fd).st_size
            self._wsynced = self._wsize
            self._tail = None
            return
        # created under a temporary name, locked and given MAGIC, then linked to its
        # pack name: a pack created under its own name could be taken by another
        # writer between the creation and the lock, and both appended at one offset
        tmp = self.folder / f".new-{os.urandom(8).hex()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, MAGIC, 0)
            pack = _publish(tmp, self.folder)
        except BaseException:
            os.close(fd)
            if tmp.exists():
                os.unlink(tmp)
            raise
        # the new name must survive a crash before any index does: the folder is synced
        # with the pack's bytes (_sync_locked), before the commit that indexes them
        self._new_name = True
        self._wfd, self._wpack, self._wsize = fd, pack, len(MAGIC)
        self._wsynced = len(MAGIC)
        self._tail = MAGIC
        self._dirty = True

    def append(
        self, frames: Iterable[tuple[bytes, bytes | memoryview]], *, defer_sync: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Append ``(chunk id, frame)`` pairs; returns ``(chunk id, index value)`` for
        each, once the bytes are durable (``fdatasync``).

        With ``defer_sync`` (or in a store that is not durable) it returns once they are
        written, and the caller calls :meth:`sync` before it commits an index entry that
        points at them. A deferred append starts the writeback of its bytes at once
        (``sync_file_range``), so the disk works while the caller goes on and the sync
        finds little left to wait for; one sync also costs one journal commit, not one
        per append (the file grew)."""
        items = list(frames)
        if not items:
            return []
        with self._lock:
            if self._wfd is None or self._wsize >= PACK_MAX:
                self._retire_writer()
                self._open_writer()
            assert self._wfd is not None
            parts: list[bytes | memoryview] = []
            out = []
            off = self._wsize
            for cid, frame in items:
                parts.append(HEADER.pack(cid, len(frame)))
                parts.append(frame)
                out.append((cid, encode_loc(self._wpack, off + HEADER.size, len(frame))))
                off += HEADER.size + len(frame)
            start = self._wsize
            if self.durable and off - start >= DIRECT_MIN and self._open_stream():
                assert self._stream is not None
                self._stream.write(parts)
            else:
                self._finish_stream()
                _pwritev_all(self._wfd, parts, start)
                self._tail = None
            self._wsize = off
            self._dirty = True
            if self.durable:
                if defer_sync:
                    if self._stream is None:
                        _start_writeback(self._wfd, start, off - start)
                else:
                    self._sync_locked()
            return out

    def _open_stream(self) -> bool:
        """Make sure a direct stream (dsvc.directio) is open at the writer's end; False
        where the file system refuses O_DIRECT (then appends go through the cache)."""
        if self._stream is not None:
            return True
        if not self._direct_ok:
            return False
        assert self._wfd is not None
        start = self._wsize
        head = self._tail
        if head is None:
            keep = start % directio.BLOCK
            head = os.pread(self._wfd, keep, start - keep) if keep else b""
            if len(head) != keep:  # shorter than this writer believes: no stream
                return False
        try:
            self._stream = directio.DirectAppender(self.path(self._wpack), self._wfd, start, head)
        except directio.DirectUnsupported:
            self._direct_ok = False
            return False
        return True

    def _finish_stream(self) -> None:
        """Write out the open direct stream, if any (its bytes are in the pack once this
        returns; durable after the next fdatasync)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._tail = None
        try:
            self._tail = stream.finish()
        except BaseException:
            self._abandon_writer(stream.start, stream.end)  # the pack now has a hole
            raise

    def _abandon_writer(self, start: int, end: int) -> None:
        """The writer pack's bytes from ``start`` to ``end`` may never reach the disk:
        record them lost and append to this pack no more. Its bytes before ``start``
        that still wait for a sync are synced with the retired packs, for the commits
        that index them."""
        self._lost.setdefault(self._wpack, []).append((start, end))
        if self._wfd is not None:
            if self._dirty and self._wsynced < start:
                self._retired.append((self._wfd, self._wpack, self._wsynced, start))
            else:
                os.close(self._wfd)
        self._wfd, self._dirty = None, False

    def check_written(self, locs: Iterable[bytes | memoryview]) -> None:
        """Raise StorageError if any of these index values points into bytes whose
        write or sync failed: called before the commit that would index them. A no-op
        unless a write or sync of this process failed."""
        if not self._lost:
            return
        for loc in locs:
            pack, off, length = decode_loc(loc)
            for start, end in self._lost.get(pack, ()):
                if off - HEADER.size < end and off + length > start:
                    raise StorageError(
                        f"pack {self.path(pack)}: the write or sync of bytes {start}-{end} "
                        "failed earlier, so what was appended there is not stored; run "
                        "the step again"
                    )

    def _retire_writer(self) -> None:
        """Stop appending to the current pack (full). Its unsynced bytes are synced by
        the next :meth:`sync`, not now: the appends to the next pack go on while the
        disk writes them (the descriptor, and with it the pack's lock, is kept until
        then)."""
        if self._wfd is None:
            return
        self._finish_stream()
        if self._dirty:
            self._retired.append((self._wfd, self._wpack, self._wsynced, self._wsize))
            if len(self._retired) > MAX_RETIRED:  # bounded descriptors; long written back
                self._sync_retired()
        else:
            os.close(self._wfd)  # drops this process's flock (see close_writer)
        self._wfd, self._dirty = None, False

    def start_new_pack(self) -> None:
        """Append to a new pack from now on (compaction, so moved chunks never land in
        a pack that is itself being emptied)."""
        with self._lock:
            self.close_writer()
            self._open_writer(reuse=False)

    def delete(self, pack: int) -> bool:
        """Delete a pack no index entry points into, holding its append lock so no
        writer takes it meanwhile; False when another process holds the lock."""
        self.forget(pack)
        try:
            fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            os.unlink(self.path(pack))
            _fsync_dir(self.folder)
            return True
        finally:
            os.close(fd)

    def punch_dead(self, pack: int, live: list[tuple[int, int]]) -> int:
        """Free the disk blocks of a pack that no live entry (``(start, end)`` byte
        ranges) touches, in place (``FALLOC_FL_PUNCH_HOLE``): what gc can still do on a
        full disk, where copying live entries out needs room first. Dead bytes are
        unreferenced, so this is crash-safe. Returns the bytes punched (0 where the
        filesystem cannot)."""
        try:
            fd = os.open(self.path(pack), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        freed = 0
        try:
            end_of_file = os.fstat(fd).st_size
            pos = len(MAGIC)
            for start, end in sorted(live) + [(end_of_file, end_of_file)]:
                lo, hi = (pos + 4095) & ~4095, start & ~4095  # whole blocks, inward
                if hi > lo and _punch(fd, lo, hi - lo):
                    freed += hi - lo
                pos = max(pos, end)
        finally:
            os.close(fd)
        return freed

    def sync(self) -> None:
        """Make every append so far durable: deferred appends before the commit that
        indexes them, and the DSVC_FSYNC=0 flush points."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        self._finish_stream()
        while self._retired:  # a failed sync leaves the rest for the next call
            self._sync_retired()
        if self._dirty and self._wfd is not None:
            try:
                os.fdatasync(self._wfd)
            except OSError:
                # its unsynced bytes may be lost, and the next fdatasync would not say
                self._abandon_writer(self._wsynced, self._wsize)
                raise
            self._wsynced = self._wsize
        self._dirty = False
        if self._new_name:
            _fsync_dir(self.folder)
            self._new_name = False

    def _sync_retired(self) -> None:
        """Sync and close the oldest retired pack; if its sync fails, its unsynced range
        is lost (:attr:`_lost`) and the error raised."""
        fd, pack, start, end = self._retired.pop(0)
        try:
            os.fdatasync(fd)
        except OSError:
            self._lost.setdefault(pack, []).append((start, end))
            raise
        finally:
            os.close(fd)

    def writer_pack(self) -> int | None:
        """The pack this process appends to, if any (compaction leaves it alone)."""
        return self._wpack if self._wfd is not None else None

    def close_writer(self) -> None:
        self._sync_locked()
        if self._wfd is not None:
            # closing drops this process's flock; never LOCK_UN explicitly: a forked
            # child closing its inherited copy would release the parent's lock
            os.close(self._wfd)
            self._wfd = None

    def locked_by_other(self, pack: int) -> bool:
        """Whether another process holds the append lock of ``pack`` now."""
        if pack == self.writer_pack():
            return False
        try:
            fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the probe lock, if taken

    def close(self) -> None:
        # no lock: a child closes the copy it inherited from a fork, and the parent
        # may have held the lock at that moment
        self.close_writer()
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _publish(tmp: Path, folder: Path) -> int:
    """Give the new pack file ``tmp`` a free pack name in ``folder``; its id. A hard
    link never replaces an existing pack; where the file system has no hard links
    (``EPERM``, ``ENOTSUP``: FAT, some network mounts), a rename does, after a check
    that the name is free (a 64-bit random name: a collision is not a practical
    concern, the check only rules out a replaced pack)."""
    while True:
        pack = int.from_bytes(os.urandom(8), "big")
        final = folder / pack_name(pack)
        try:
            os.link(tmp, final)
        except FileExistsError:  # pragma: no cover - a 64-bit collision
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if final.exists():  # pragma: no cover - a 64-bit collision
                continue
            os.rename(tmp, final)
            return pack
        os.unlink(tmp)
        return pack


def _pwritev_all(fd: int, parts: list[bytes | memoryview], offset: int) -> None:
    """Write ``parts`` contiguously at ``offset`` (``pwritev`` in runs, short writes
    resumed)."""
    i = 0
    while i < len(parts):
        run = parts[i : i + 512]  # IOV_MAX is 1024 on Linux
        want = sum(len(p) for p in run)
        n = os.pwritev(fd, run, offset)
        if n < want:  # short write: finish this run byte by byte
            rest = memoryview(b"".join(bytes(p) for p in run))[n:]
            while rest:
                k = os.pwrite(fd, rest, offset + n)
                n += k
                rest = rest[k:]
        offset += want
        i += len(run)


def _punch(fd: int, offset: int, length: int) -> bool:
    """``fallocate(PUNCH_HOLE | KEEP_SIZE)``; False where unsupported."""
    fallocate = libc.function("fallocate", "c_int", "c_int", "c_longlong", "c_longlong")
    return fallocate is not None and fallocate(fd, 0x02 | 0x01, offset, length) == 0


_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of the file to disk without waiting for it (Linux; a no-op
    elsewhere). Durability still comes from ``fdatasync``: this only moves the disk's
    work earlier, and an error is left for that ``fdatasync`` to report."""
    sync_file_range = libc.function(
        "sync_file_range", "c_int", "c_longlong", "c_longlong", "c_uint"
    )
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
