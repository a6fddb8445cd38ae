"""File-system calls in batches: a folder's lstats, a folder's new small files, a
group of small files read whole.

The C module ``dsvc._fsbatch`` runs each batch with the GIL released and builds its
result once (docs/performance.md, "Native batches"): from Python, every syscall hands
the GIL over and builds an object, so two threads doing a scan or a copy spend their
time waiting on each other instead of in the kernel side by side. The module is built
by ``pip install`` when a C compiler is there; without it (or with ``DSVC_NATIVE=0``)
the functions below do the same in Python, with the same results.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from dsvc import native as _native_modules

#: the C batches, or None (tests switch it off to cover the Python path)
native: Any = _native_modules.load("_fsbatch")


class Written(NamedTuple):
    """What a new file's ``fstat`` gave once it was written and dated (named as in
    ``os.stat_result``, so code that reads those fields takes either)."""

    st_ino: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_nlink: int
    st_size: int
    st_mode: int


def _written(st: os.stat_result) -> Written:
    return Written(st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_size, st.st_mode)


def list_regular(folder: str, skip_name: str) -> tuple[bytes, bytes, int, int, list[str]] | None:
    """The regular files of ``folder`` with their lstat, in listing order, or None when
    the C module is not in use or the folder needs the Python rules (a regular file's
    name is not ASCII without a backslash, or is ``skip_name``).

    Returns ``(names, sigs, count, nbytes, others)``: ``names`` and ``sigs`` are the
    msgpack bytes (``Packer(use_bin_type=True)``) of the list of names and of the list
    of ``[size, mtime_ns, ctime_ns, ino, dev, st_mode]``; ``others`` are the names of
    every other entry (folders, links, other types, and a regular file that vanished or
    changed type between listing and lstat), in listing order. OSError when the folder
    cannot be opened or read.
    """
    if native is None:
        return None
    return native.list_regular(folder, skip_name)  # type: ignore[no-any-return,unused-ignore]


#: create a new file only: never over anything there, never through a link
O_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def write_files(
    folder: str,
    names: list[str],
    datas: Sequence[bytes | memoryview],
    modes: list[int],
    mtimes_ns: list[int],
) -> list[Written]:
    """Create each new file ``folder/names[i]`` (never over anything there, never
    through a link) with mode ``modes[i]``, write ``datas[i]``, set its atime and mtime
    to ``mtimes_ns[i]`` and return its stat. The first failure removes that file and
    raises OSError naming it; the files written before it stay (the caller owns the
    folder and removes it on failure)."""
    if native is not None:
        return list(
            map(Written._make, native.write_files(folder, names, list(datas), modes, mtimes_ns))
        )
    out = []
    for name, data, mode, mtime in zip(names, datas, modes, mtimes_ns, strict=True):
        if "/" in name:
            raise ValueError(f"write_files: {name!r} is not a plain name")
        path = f"{folder}/{name}"
        fd = os.open(path, O_CREATE_NEW, mode)
        try:
            view = memoryview(data)
            n = 0
            while n < len(view):
                n += os.write(fd, view[n:])
            os.utime(fd, ns=(mtime, mtime))
            st = os.fstat(fd)
        except BaseException as e:
            os.close(fd)
            os.unlink(path)
            if isinstance(e, OSError) and e.filename is None:
                e.filename = path
            raise
        os.close(fd)
        out.append(_written(st))
    return out


#: link failures that mean "write this file instead": the source is gone, another
#: filesystem, the link limit, a filesystem without hard links
_NO_LINK = (errno.ENOENT, errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)


def link_files(src_folder: str, dst_folder: str, names: list[str]) -> list[Written | None]:
    """Hard-link each ``src_folder/names[i]`` to the new ``dst_folder/names[i]`` and
    return its stat; None where the source is gone (its folder too) or cannot be linked
    there (the caller writes that file instead). Any other failure raises OSError naming
    the file; the links made before it stay."""
    if native is not None:
        return [
            None if r is None else Written._make(r)
            for r in native.link_files(src_folder, dst_folder, names)
        ]
    out: list[Written | None] = []
    for name in names:
        if "/" in name:
            raise ValueError(f"link_files: {name!r} is not a plain name")
        dest = f"{dst_folder}/{name}"
        try:
            os.link(f"{src_folder}/{name}", dest, follow_symlinks=False)
        except OSError as e:
            if e.errno in _NO_LINK:
                out.append(None)
                continue
            raise OSError(e.errno, e.strerror, dest) from None  # named as the C call does
        st = os.lstat(dest)
        out.append(_written(st))
    return out


#: open for reading, never keeping the descriptor in a child process
O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


class Read(NamedTuple):
    """A small file read whole, with the ``fstat`` of the open file after the read
    (named as in ``os.stat_result``)."""

    data: bytes
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int
    st_dev: int


def read_files(paths: list[str], sizes: list[int]) -> list[Read | OSError]:
    """Read each file whole (at most ``sizes[i] + 1`` bytes, so a file that grew since
    its size was taken shows it) and ``fstat`` it before closing. A file that cannot be
    opened or read gives its OSError (with the file name) in its place; the others are
    read all the same."""
    if native is not None:
        out: list[Read | OSError] = []
        for path, size, r in zip(paths, sizes, native.read_files(paths, sizes), strict=True):
            if r[0] is not None:
                out.append(Read._make(r))
            elif r[1] == -1:  # a time beyond int64 nanoseconds: os.fstat has it
                out.append(_read_one(path, size))
            else:
                out.append(OSError(r[1], os.strerror(r[1]), path))
        return out
    return [_read_one(p, n) for p, n in zip(paths, sizes, strict=True)]


def _read_one(path: str, size: int) -> Read | OSError:
    try:
        fd = os.open(path, O_READ)
    except OSError as e:
        return e
    try:
        parts = []
        got = 0
        while got <= size:
            more = os.read(fd, size + 1 - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        st = os.fstat(fd)
    except OSError as e:
        if e.filename is None:
            e.filename = path
        return e
    finally:
        os.close(fd)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return Read(data, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
