"""Appends past the page cache (``O_DIRECT``): how the pack writer stores large runs of
chunk bytes (issue 11, docs/performance.md "Session 11").

Why: a durable ingest writes every byte once to a pack and then waits for it to reach
the disk. Through the page cache that costs a copy into the cache, the kernel's
writeback of the dirty pages and their reclaim, all on the CPUs that also chunk and
hash: on the 2-core VM of the benchmarks, writing 2.5 GB with ``dd`` then
``fdatasync`` took 8.3 s of wall and 4.6 s of system time; the same bytes with
``O_DIRECT`` took 5.7-6.3 s and 0.6 s. dsvc does not read a pack's bytes back soon
after writing them, so the cache gains it nothing here.

``O_DIRECT`` needs the file offset, the length and the memory address of each write
aligned to the device's block. Frames have any length, so :class:`DirectAppender`
copies the bytes into aligned buffers and writes whole blocks from them, in a thread of
its own: the caller fills the next buffer while the disk takes the last one. The
partial block at the end of a stream goes through the page cache, as before, when the
stream is finished. The next stream starts at that block's start: it rewrites its bytes
unchanged, with the new ones after them, so a crash while it is in flight leaves every
byte written before as it was.

Invariant (the caller's, see ``dsvc.packfile``): bytes handed to
:meth:`DirectAppender.write` are in the file only once :meth:`DirectAppender.finish`
has returned. Nothing may point at them before that: the pack writer finishes the
stream before the ``fdatasync`` that precedes the commit of their index entries
(``O_DIRECT`` alone does not flush the disk's cache either).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

#: alignment of offsets, lengths and addresses: the largest logical block size in use
#: (4 KiB disks; 512-byte ones accept it too)
BLOCK = 4096
#: one direct write: a buffer of this many bytes (8 MiB was the fastest of 8-32 MiB,
#: one or two writes in flight, on the benchmark VM's disk)
BUFFER = 8 << 20
#: buffers per stream: one being written while the caller fills the other
BUFFERS = 2
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class DirectUnsupported(Exception):
    """The file system refuses ``O_DIRECT`` (some FUSE file systems, older tmpfs).
    Internal: the pack writer catches it and appends through the page cache."""


class DirectAppender:
    """One stream of bytes written from ``offset`` of the file ``path`` onwards, whole
    blocks with ``O_DIRECT`` by a thread of its own, the last partial block through
    ``fd`` (a descriptor of the same file without ``O_DIRECT``) at :meth:`finish`.

    ``head`` must be the file's bytes from the block start before ``offset`` up to it
    (``offset % BLOCK`` bytes): they are written again, unchanged, with the first block.
    Memory: :data:`BUFFERS` x :data:`BUFFER` bytes while the stream is open.
    """

    def __init__(self, path: Path, fd: int, offset: int, head: bytes) -> None:
        if not _O_DIRECT:
            raise DirectUnsupported(f"{path}: no O_DIRECT on this platform")
        if len(head) != offset % BLOCK:
            raise ValueError(f"head of {len(head)} bytes for offset {offset}")
        try:
            self._dfd = os.open(path, os.O_WRONLY | _O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise DirectUnsupported(f"{path}: {e.strerror}") from None
            raise
        self._fd = fd
        self._pid = os.getpid()
        self.start = offset
        self.end = offset  # the file offset after the last byte handed to write()
        self._at = offset - len(head)  # file offset of the filling buffer's first byte
        self._free = [mmap.mmap(-1, BUFFER) for _ in range(BUFFERS)]  # page-aligned
        self._buf = self._free.pop()
        self._fill = len(head)
        self._buf[: self._fill] = head
        self._cv = threading.Condition()
        self._jobs: list[tuple[mmap.mmap, int, int] | None] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dsvc-direct", daemon=True)
        self._thread.start()

    def write(self, parts: Sequence[bytes | memoryview]) -> None:
        """Append ``parts`` to the stream; raises the error of an earlier direct write."""
        fill, buf = self._fill, self._buf
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                n = min(len(view), BUFFER - fill)
                buf[fill : fill + n] = view[:n]
                fill += n
                self.end += n
                view = view[n:]
                if fill == BUFFER:
                    self._submit(buf, BUFFER)
                    self._at += BUFFER
                    buf = self._take()
                    fill = 0
        self._fill, self._buf = fill, buf

    def finish(self) -> bytes:
        """Write what is left, wait for every write, and close the stream. Returns the
        bytes of the partial block the stream ends in (the next stream's ``head``).
        The stream is closed whatever happens; an error of any of its writes is raised
        here."""
        try:
            if os.getpid() != self._pid:  # a forked child: the parent owns these bytes
                return b""
            whole = self._fill - self._fill % BLOCK
            if whole:
                self._submit(self._buf, whole)
            with self._cv:
                self._jobs.append(None)
                self._cv.notify_all()
            self._thread.join()
            if self._error is not None:
                raise self._error
            tail = bytes(self._buf[whole : self._fill])
            at = self._at + whole
            view = memoryview(tail)
            while view:
                n = os.pwrite(self._fd, view, at)
                view = view[n:]
                at += n
            return tail
        finally:
            os.close(self._dfd)
            for b in [self._buf, *self._free]:
                b.close()
            self._free = []

    def _submit(self, buf: mmap.mmap, length: int) -> None:
        with self._cv:
            if self._error is not None:
                raise self._error
            self._jobs.append((buf, length, self._at))
            self._cv.notify_all()

    def _take(self) -> mmap.mmap:
        """A free buffer, once the thread has written one."""
        with self._cv:
            while not self._free and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            return self._free.pop()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                job = self._jobs.pop(0)
            if job is None:
                return
            buf, length, at = job
            try:
                _write_direct(self._dfd, self._fd, buf, length, at)
            except BaseException as e:  # raised to the caller by write() or finish()
                with self._cv:
                    self._error = e
                    self._jobs.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._free.append(buf)
                self._cv.notify_all()


def _write_direct(dfd: int, fd: int, buf: mmap.mmap, length: int, at: int) -> None:
    """``buf[:length]`` at ``at``: through ``dfd`` (``O_DIRECT``) in whole blocks. What
    ``O_DIRECT`` cannot take goes through ``fd``, which takes any alignment: the rest
    of a short write that ended inside a block (a full disk: ``fd`` then raises the
    disk's error itself), or a write the device refuses (``EINVAL``: a logical block
    above :data:`BLOCK`)."""
    view = memoryview(buf)
    try:
        done = 0
        direct = True
        while done < length:
            if direct and not done % BLOCK:
                try:
                    done += os.pwrite(dfd, view[done:length], at + done)
                    continue
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    direct = False
            done += os.pwrite(fd, view[done:length], at + done)
    finally:
        view.release()
