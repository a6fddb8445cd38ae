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
    fd = os.open(p, os.O_RDONLY)
    try:
        w = _Walk(fd, meta, shallow, rep)
        # the free database first: its page list is what the truncation check needs
        subdbs: list[tuple[str, tuple[int, ...]]] = []
        w.tree("free", meta.free_root, [])
        w.tree("main", meta.main_root, subdbs)
        for name, db in subdbs:
            w.tree(name, db, [])
        truncated = w.truncation(p)
        if truncated:
            rep.problems.insert(0, truncated)
    finally:
        os.close(fd)
    return rep


class _Walk:
    """One :func:`walk` of a data file: the state its checks share, one check a method,
    each with the invariant it holds written next to it (restic's checker style)."""

    def __init__(self, fd: int, meta: Meta, shallow: bool, rep: Report) -> None:
        self.fd = fd
        self.psize = meta.page_size
        self.last = meta.last_page
        self.shallow = shallow
        self.rep = rep
        self.file_pages = os.fstat(fd).st_size // self.psize  # after the meta: it only grows
        self.seen: set[int] = set()
        self.free: set[int] = set()  # pages the free database lists

    def problem(self, text: str) -> None:
        self.rep.problems.append(text)

    def page(self, pgno: int, where: str) -> bytes | None:
        """Invariant: a reachable page lies in 2..last, is reached once, is whole in the
        file, and its header carries its own number (else it was overwritten). None:
        the page is reported and must not be read further."""
        if pgno < 2 or pgno > self.last:
            self.problem(f"{where}: page {pgno} is outside the file's 2..{self.last}")
            return None
        if pgno in self.seen:
            self.problem(f"{where}: page {pgno} is reached twice")
            return None
        self.seen.add(pgno)
        raw = os.pread(self.fd, self.psize, pgno * self.psize)
        self.rep.pages += 1
        if len(raw) < self.psize:
            self.problem(f"{where}: page {pgno} is cut short by the end of the file")
            return None
        (own,) = struct.unpack_from("<Q", raw, 0)
        if own != pgno:
            self.problem(f"{where}: page {pgno} is overwritten (its header says page {own})")
            return None
        return raw

    def tree(
        self, name: str, db: tuple[int, ...], subdbs: list[tuple[str, tuple[int, ...]]]
    ) -> None:
        """Walk one database from its root record ``db``; the main database's named
        databases are added to ``subdbs``."""
        depth, n_entries, root = db[2], db[6], db[7]
        # an open reads the main and free databases whole (the free list tells a
        # short file from a truncated one) and the root page of the others
        full = not self.shallow or name in ("main", "free")
        counts = {"branch": 0, "leaf": 0, "overflow": 0, "entries": 0}
        if root == P_INVALID:
            if n_entries:
                self.problem(f"database {name!r}: no root but {n_entries} entries")
            self.rep.entries[name] = 0
            return
        stack = [(root, 1)]
        while stack:
            pgno, level = stack.pop()
            if not full and level > 1:
                continue
            raw = self.page(pgno, f"database {name!r}")
            if raw is None:
                continue
            header = self.tree_page(name, raw, pgno, level, depth)
            if header is None:
                continue
            kind, upper, ptrs = header
            self.rep.pages_of.setdefault(name, []).append(pgno)
            counts["branch" if kind == P_BRANCH else "leaf"] += 1
            for ptr in ptrs:
                node = self.node(name, raw, pgno, ptr, upper)
                if node is None:
                    break
                if kind == P_BRANCH:
                    stack.append((node[0] | node[1] << 16 | node[2] << 32, level + 1))
                    continue
                counts["entries"] += 1
                if not self.leaf_value(name, raw, pgno, ptr, node, full, counts, subdbs):
                    break
        self.check_counts(name, db, counts, full)

    def tree_page(
        self, name: str, raw: bytes, pgno: int, level: int, depth: int
    ) -> tuple[int, int, tuple[int, ...]] | None:
        """``(kind, upper, node offsets)`` of a branch or leaf page. Invariant: the page
        is a branch or a leaf, its free-space bounds lie inside it, it is no deeper than
        the root record's depth, and a branch (outside the free database) has 2 keys or
        more. None: reported."""
        flags, lower, upper = struct.unpack_from("<HHH", raw, 10)
        kind = flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2)
        if kind not in (P_BRANCH, P_LEAF) or not (PAGEHDRSZ <= lower <= upper <= self.psize):
            self.problem(
                f"database {name!r}: page {pgno} has a bad header "
                f"(flags {flags:#x}, lower {lower}, upper {upper})"
            )
            return None
        if level > depth:
            self.problem(f"database {name!r}: page {pgno} is deeper than {depth}")
            return None
        n = (lower - PAGEHDRSZ) >> 1
        if kind == P_BRANCH and n < 2 and name != "free":
            # LMDB asserts this (mdb_page_search_root): a damaged page must be
            # reported here, not abort() the process
            self.problem(f"database {name!r}: branch page {pgno} has {n} keys")
            return None
        return kind, upper, struct.unpack_from(f"<{n}H", raw, PAGEHDRSZ)

    def node(
        self, name: str, raw: bytes, pgno: int, ptr: int, upper: int
    ) -> tuple[int, int, int, int] | None:
        """``(lo, hi, flags, key size)`` of the node at ``ptr``. Invariant: the node
        header and its key lie inside the page's node area. None: reported, and the
        rest of the page is not read."""
        if not upper <= ptr <= self.psize - NODESZ:
            self.problem(f"database {name!r}: page {pgno} has a node outside the page")
            return None
        lo, hi, nflags, ksize = struct.unpack_from("<HHHH", raw, ptr)
        if ptr + NODESZ + ksize > self.psize:
            self.problem(f"database {name!r}: page {pgno} has a key past the page end")
            return None
        return lo, hi, nflags, ksize

    def leaf_value(
        self,
        name: str,
        raw: bytes,
        pgno: int,
        ptr: int,
        node: tuple[int, int, int, int],
        full: bool,
        counts: dict[str, int],
        subdbs: list[tuple[str, tuple[int, ...]]],
    ) -> bool:
        """Check a leaf node's value: on its overflow pages, or inside the page.
        Invariant: an inline value ends inside its page; the free database's values are
        page lists (collected for :meth:`truncation`); a named database's root record
        in the main database is one ``MDB_db``. False: reported, and the rest of the
        page is not read."""
        lo, hi, nflags, ksize = node
        dsize = lo | hi << 16
        doff = ptr + NODESZ + ksize
        if nflags & F_BIGDATA:
            if full:
                self.overflow(name, raw, doff, dsize, counts)
            return True
        if doff + dsize > self.psize:
            self.problem(f"database {name!r}: page {pgno} has a value past the page end")
            return False
        if name == "free":
            _free_ids(raw[doff : doff + dsize], self.free)
        elif nflags & F_SUBDATA and name == "main":
            key = raw[ptr + NODESZ : doff].decode("utf-8", "replace")
            if dsize != _DB.size:
                self.problem(f"database {key!r}: bad root record")
            else:
                subdbs.append((key, _DB.unpack_from(raw, doff)))
        return True

    def overflow(
        self, name: str, raw: bytes, doff: int, dsize: int, counts: dict[str, int]
    ) -> None:
        """A value on overflow pages. Invariant: its first page is an overflow page
        whose run holds the value, and the run ends inside the file and before its last
        page; the run's pages count as reached."""
        (opg,) = struct.unpack_from("<Q", raw, doff)
        oraw = self.page(opg, f"database {name!r}")
        if oraw is None:
            return
        (oflags,) = struct.unpack_from("<H", oraw, 10)
        (npages,) = struct.unpack_from("<I", oraw, 12)
        if not oflags & P_OVERFLOW or npages * self.psize < dsize + PAGEHDRSZ:
            self.problem(f"database {name!r}: overflow page {opg} has a bad header")
            return
        if opg + npages - 1 > self.last or opg + npages > self.file_pages:
            self.problem(f"database {name!r}: overflow page {opg} runs past the file")
            return
        self.seen.update(range(opg + 1, opg + npages))
        counts["overflow"] += npages
        if name == "free":
            _free_ids(os.pread(self.fd, dsize, opg * self.psize + PAGEHDRSZ), self.free)

    def check_counts(
        self, name: str, db: tuple[int, ...], counts: dict[str, int], full: bool
    ) -> None:
        """Invariant: a database walked whole has the branch, leaf, overflow page and
        entry counts its root record says (checked only while nothing else is wrong:
        a damaged page already explains a difference)."""
        n_branch, n_leaf, n_over, n_entries = db[3], db[4], db[5], db[6]
        got = (counts["branch"], counts["leaf"], counts["overflow"], counts["entries"])
        if full and got != (n_branch, n_leaf, n_over, n_entries) and not self.rep.problems:
            self.problem(
                f"database {name!r}: pages and entries {got} differ from its root record "
                f"{(n_branch, n_leaf, n_over, n_entries)}"
            )
        self.rep.entries[name] = counts["entries"]

    def truncation(self, p: Path) -> str | None:
        """Invariant: LMDB's last page may lie past the end of a sound file, but only
        if it and every page between are free (allocated and released by one
        transaction, never written); a page in use past the end is a truncated file
        (SIGBUS)."""
        for pg in range(self.file_pages, self.last + 1):
            if pg not in self.free:
                return (
                    f"{p} is truncated: it is {os.fstat(self.fd).st_size} bytes long but "
                    f"page {pg}, in use, ends at byte {(pg + 1) * self.psize}"
                )
        return None


def _free_ids(value: bytes, out: set[int]) -> None:
    """Add the page numbers of a free-database value (an ID list: count, then ids)."""
    if len(value) < 8:
        return
    (n,) = struct.unpack_from("<Q", value, 0)
    if 8 + 8 * n <= len(value):
        out.update(struct.unpack_from(f"<{n}Q", value, 8))
