"""Structural checks of the LMDB data file, done with plain file reads, never the map.

LMDB trusts its file: a page number past the end of a truncated ``data.mdb`` is a
SIGBUS (the process dies, no exception), an overwritten page is ``MDB_CORRUPTED`` at
best and an ``abort()`` inside LMDB at worst. So before LMDB touches a file whose
state we do not know, we look at it ourselves:

* :func:`quick_check` (every open, two small reads): both meta pages, and the file is
  at least as long as the newest meta's last page says. This is what turns the SIGBUS
  of a truncated file into an error.
* :func:`walk` (``dsvc fsck``): every page reachable from the roots of every database
  has its own page number in its header, the right type, sane bounds, and each tree's
  page and entry counts match what its root record says; nothing is reached twice.

Layout constants follow LMDB 0.9 (``mdb.c``) on 64-bit little-endian hosts, the only
layout py-lmdb builds: a 16-byte page header, 48-byte ``MDB_db`` records, 8-byte page
numbers.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGEHDRSZ = 16
NODESZ = 8
P_INVALID = (1 << 64) - 1
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
_DB = struct.Struct("<IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
#: bytes of a meta page we read: header, magic, version, address, map size, 2 dbs, last, txnid
META_READ = PAGEHDRSZ + 24 + 2 * _DB.size + 16


@dataclass
class Meta:
    """The newer valid meta page of the file."""

    page_size: int
    last_page: int
    txnid: int
    free_root: tuple[int, ...]
    main_root: tuple[int, ...]


@dataclass
class Report:
    """What :func:`walk` found: problems (empty if sound) and page counts."""

    problems: list[str] = field(default_factory=list)
    pages: int = 0
    entries: dict[str, int] = field(default_factory=dict)
    #: database name -> the page numbers of its branch and leaf pages
    pages_of: dict[str, list[int]] = field(default_factory=dict)


def _read_meta(raw: bytes) -> tuple[int, tuple[int, ...], tuple[int, ...], int, int]:
    if len(raw) < META_READ:
        raise ValueError("cut short")
    (flags,) = struct.unpack_from("<H", raw, 10)
    magic, version = struct.unpack_from("<II", raw, PAGEHDRSZ)
    if magic != MAGIC or version != DATA_VERSION or not flags & P_META:
        raise ValueError("not a meta page")
    free_db = _DB.unpack_from(raw, PAGEHDRSZ + 24)
    main_db = _DB.unpack_from(raw, PAGEHDRSZ + 24 + _DB.size)
    last, txnid = struct.unpack_from("<QQ", raw, PAGEHDRSZ + 24 + 2 * _DB.size)
    return free_db[0], free_db, main_db, last, txnid


def read_meta(data_file: str | os.PathLike[str], txnid: int | None = None) -> Meta:
    """The newer of the two meta pages; ValueError naming what is wrong otherwise.

    LMDB refuses a file unless both meta pages are valid, and a writer never rewrites
    their magic, version or flags, so both are checked."""
    with open(data_file, "rb") as f:
        head = f.read(META_READ)
        if len(head) < META_READ:
            raise ValueError(f"the file is {len(head)} bytes long, too short for a meta page")
        try:
            first = _read_meta(head)
        except ValueError:
            raise ValueError("its first meta page (page 0) is overwritten") from None
        psize = first[0]
        if psize < 512 or psize & (psize - 1):
            raise ValueError(f"its meta page gives an impossible page size {psize}")
        f.seek(psize)
        try:
            second = _read_meta(f.read(META_READ))
        except ValueError:
            raise ValueError("its second meta page (page 1) is overwritten") from None
    if txnid is not None:
        match = [m for m in (first, second) if m[4] == txnid]
        if not match:
            raise Moved(txnid)
        chosen = match[0]
    else:
        chosen = max((first, second), key=lambda m: m[4])
    psize, free_db, main_db, last, txn = chosen
    return Meta(psize, last, txn, free_db, main_db)


def quick_check(data_file: str | os.PathLike[str]) -> str | None:
    """A problem that would stop LMDB on open (no valid meta page), or None.

    Costs two small reads. A missing or empty file is fine (LMDB creates it). Whether
    the file is long enough is for :func:`walk`: LMDB's last page number may lie past
    the end of a sound file (pages a transaction allocated and freed again are never
    written), so only its free list can tell a short file from a truncated one."""
    p = Path(data_file)
    try:
        if p.stat().st_size == 0:
            return None
    except OSError:
        return None  # missing, or not openable at all: LMDB's own open error says why
    problem = None
    for attempt in (0, 1):
        # a second look after a pause: a writer in another process may have been
        # rewriting the meta page we read (LMDB updates it in place)
        if attempt:
            time.sleep(0.05)
        try:
            read_meta(p)
            return None
        except (OSError, ValueError) as e:
            problem = f"{p} is damaged: {e}"
    return problem


class Moved(Exception):
    """The snapshot asked for is no longer described by a meta page: retry."""


def walk(
    data_file: str | os.PathLike[str], txnid: int | None = None, *, shallow: bool = False
) -> Report:
    """Check every page reachable from the file's roots (see the module docstring).

    With ``txnid`` (the id of a read transaction the caller holds open, so LMDB reuses
    none of its pages), walk that snapshot; :class:`Moved` if neither meta page
    describes it any more. ``shallow`` checks the main database and the root page of
    every other one (a dozen reads: what every open can afford)."""
    rep = Report()
    p = Path(data_file)
    problem = quick_check(p)
    if problem:
        rep.problems.append(problem)
        return rep
    if not p.exists() or p.stat().st_size == 0:
        return rep
    meta = read_meta(p, txnid)
    psize, last = meta.page_size, meta.last_page
    seen: set[int] = set()
    free: set[int] = set()  # pages the free database lists
    fd = os.open(p, os.O_RDONLY)
    try:
        file_pages = os.fstat(fd).st_size // psize  # after the meta: the file only grows

        def page(pgno: int, where: str) -> bytes | None:
            if pgno < 2 or pgno > last:
                rep.problems.append(f"{where}: page {pgno} is outside the file's 2..{last}")
                return None
            if pgno in seen:
                rep.problems.append(f"{where}: page {pgno} is reached twice")
                return None
            seen.add(pgno)
            raw = os.pread(fd, psize, pgno * psize)
            rep.pages += 1
            if len(raw) < psize:
                rep.problems.append(f"{where}: page {pgno} is cut short by the end of the file")
                return None
            (own,) = struct.unpack_from("<Q", raw, 0)
            if own != pgno:
                rep.problems.append(
                    f"{where}: page {pgno} is overwritten (its header says page {own})"
                )
                return None
            return raw

        def tree(name: str, db: tuple[int, ...], subdbs: list[tuple[str, tuple[int, ...]]]) -> None:
            _pad, _flags, depth, n_branch, n_leaf, n_over, n_entries, root = db
            # an open reads the main and free databases whole (the free list tells a
            # short file from a truncated one) and the root page of the others
            full = not shallow or name in ("main", "free")
            counts = {"branch": 0, "leaf": 0, "overflow": 0, "entries": 0}
            if root == P_INVALID:
                if n_entries:
                    rep.problems.append(f"database {name!r}: no root but {n_entries} entries")
                rep.entries[name] = 0
                return
            stack = [(root, 1)]
            while stack:
                pgno, level = stack.pop()
                if not full and level > 1:
                    continue
                raw = page(pgno, f"database {name!r}")
                if raw is None:
                    continue
                flags, lower, upper = struct.unpack_from("<HHH", raw, 10)
                kind = flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2)
                if kind not in (P_BRANCH, P_LEAF) or not (PAGEHDRSZ <= lower <= upper <= psize):
                    rep.problems.append(
                        f"database {name!r}: page {pgno} has a bad header "
                        f"(flags {flags:#x}, lower {lower}, upper {upper})"
                    )
                    continue
                if level > depth:
                    rep.problems.append(f"database {name!r}: page {pgno} is deeper than {depth}")
                    continue
                n = (lower - PAGEHDRSZ) >> 1
                if kind == P_BRANCH and n < 2 and name != "free":
                    # LMDB asserts this (mdb_page_search_root): a damaged page must be
                    # reported here, not abort() the process
                    rep.problems.append(f"database {name!r}: branch page {pgno} has {n} keys")
                    continue
                ptrs = struct.unpack_from(f"<{n}H", raw, PAGEHDRSZ)
                rep.pages_of.setdefault(name, []).append(pgno)
                if kind == P_BRANCH:
                    counts["branch"] += 1
                else:
                    counts["leaf"] += 1
                for ptr in ptrs:
                    if not upper <= ptr <= psize - NODESZ:
                        rep.problems.append(
                            f"database {name!r}: page {pgno} has a node outside the page"
                        )
                        break
                    lo, hi, nflags, ksize = struct.unpack_from("<HHHH", raw, ptr)
                    if ptr + NODESZ + ksize > psize:
                        rep.problems.append(
                            f"database {name!r}: page {pgno} has a key past the page end"
                        )
                        break
                    if kind == P_BRANCH:
                        stack.append((lo | hi << 16 | nflags << 32, level + 1))
                        continue
                    counts["entries"] += 1
                    dsize = lo | hi << 16
                    doff = ptr + NODESZ + ksize
                    if nflags & F_BIGDATA and not full:
                        continue
                    if nflags & F_BIGDATA:
                        (opg,) = struct.unpack_from("<Q", raw, doff)
                        oraw = page(opg, f"database {name!r}")
                        if oraw is None:
                            continue
                        (oflags,) = struct.unpack_from("<H", oraw, 10)
                        (npages,) = struct.unpack_from("<I", oraw, 12)
                        if not oflags & P_OVERFLOW or npages * psize < dsize + PAGEHDRSZ:
                            rep.problems.append(
                                f"database {name!r}: overflow page {opg} has a bad header"
                            )
                            continue
                        if opg + npages - 1 > last or opg + npages > file_pages:
                            rep.problems.append(
                                f"database {name!r}: overflow page {opg} runs past the file"
                            )
                            continue
                        seen.update(range(opg + 1, opg + npages))
                        counts["overflow"] += npages
                        if name == "free":
                            _free_ids(os.pread(fd, dsize, opg * psize + PAGEHDRSZ), free)
                    elif doff + dsize > psize:
                        rep.problems.append(
                            f"database {name!r}: page {pgno} has a value past the page end"
                        )
                        break
                    elif name == "free":
                        _free_ids(raw[doff : doff + dsize], free)
                    elif nflags & F_SUBDATA and name == "main":
                        key = raw[ptr + NODESZ : doff].decode("utf-8", "replace")
                        if dsize != _DB.size:
                            rep.problems.append(f"database {key!r}: bad root record")
                        else:
                            subdbs.append((key, _DB.unpack_from(raw, doff)))
            got = (counts["branch"], counts["leaf"], counts["overflow"], counts["entries"])
            if not full:
                pass  # counts need the whole tree
            elif got != (n_branch, n_leaf, n_over, n_entries) and not rep.problems:
                rep.problems.append(
                    f"database {name!r}: pages and entries {got} differ from its root record "
                    f"{(n_branch, n_leaf, n_over, n_entries)}"
                )
            rep.entries[name] = counts["entries"]

        subdbs: list[tuple[str, tuple[int, ...]]] = []
        tree("free", meta.free_root, [])
        tree("main", meta.main_root, subdbs)
        for name, db in subdbs:
            tree(name, db, [])
        # LMDB's last page may lie past the end of a sound file, but only if it and
        # every page between are free (allocated and released by one transaction,
        # never written); a page in use past the end is a truncated file (SIGBUS)
        for pg in range(file_pages, last + 1):
            if pg not in free:
                rep.problems.insert(
                    0,
                    f"{p} is truncated: it is {os.fstat(fd).st_size} bytes long but page {pg}, "
                    f"in use, ends at byte {(pg + 1) * psize}",
                )
                break
    finally:
        os.close(fd)
    return rep


def _free_ids(value: bytes, out: set[int]) -> None:
    """Add the page numbers of a free-database value (an ID list: count, then ids)."""
    if len(value) < 8:
        return
    (n,) = struct.unpack_from("<Q", value, 0)
    if 8 + 8 * n <= len(value):
        out.update(struct.unpack_from(f"<{n}Q", value, 8))
