"""Push and fetch through a remote: the git-remote protocol of dsvc (docs/design.md §4).

Layout under the remote's prefix::

    dsvc.json                 {"format": 1, "chunker": {...}}   create-only
    packs/<id>.pack           stored values back to back (see packs.py)
    packs/<id>.idx            the pack's index, written after the pack
    datasets/<dataset id>     msgpack record of a finalized version   create-only
    refs/names/<project>/<name>   {"project", "name", "versions": {id: version}}  CAS

Invariants (what makes concurrent and interrupted pushes safe):

1. *Closure*: an object is on the remote only if everything it references is. Push
   uploads every chunk pack and waits for all of them before it uploads blob and tree
   packs, and those go children first, one pack after the other. So "this tree is on
   the remote" proves its whole subtree is, and push skips it without looking inside.
2. *Index last*: a pack counts only once its index exists (packs.py).
3. *Refs last*: a dataset record is written after its commit and content, and the
   ref that lists it is updated after the record, by compare-and-swap; a lost race
   re-reads the ref and retries, so no version is ever dropped from it.
4. *Verified reads*: every value fetched is checked against its id before it is
   stored locally; a mismatch names the pack and the object.

Transport knows records only as opaque maps with ``id``, ``tree``, ``commit``,
``project`` and ``name`` fields; what they mean belongs to the dataset layer.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, overload
from urllib.parse import quote

import msgpack
import xxhash

from dsvc import codec
from dsvc.errors import ConfigError, ConflictError, DsvcError, IntegrityError, NotFoundError
from dsvc.ids import TAG_BLOB, TAG_CHUNK, TAG_COMMIT, TAG_TREE, to_hex
from dsvc.objects import (
    CHUNK_REF_KINDS,
    KIND_FILE,
    KIND_TREE,
    Blob,
    Commit,
    Entry,
    decode_tree,
)
from dsvc.progress import Progress
from dsvc.record import (
    MAX_RECORD_BYTES,
    MAX_REF_BYTES,
    Record,
    is_dataset_id,
    is_hex32,
    is_timestamp,
    parse_ref,
)
from dsvc.remote.backend import Backend
from dsvc.remote.config import lookup
from dsvc.remote.packs import (
    KIND_CHUNK,
    KIND_OBJECT,
    Location,
    PackBuilder,
    RemoteIndex,
    decode_index,
    pack_name,
)
from dsvc.store import RECORD_PREFIX, Store

FORMAT = 1
DEFAULT_PACK_MB = 64
DEFAULT_WORKERS = 8  # network I/O, not CPU: more requests in flight than cores
#: bound on pack bytes a push holds in memory at once
PUSH_MEMORY = 256 << 20
#: ranges closer than this are read with one request
COALESCE_GAP = 1 << 20
#: bound on decompressed bytes all fetch threads of the process hold at once while they
#: verify values (the format bounds each value, codec.LIMITS; this bounds their sum)
FETCH_DECODE_MEMORY = 256 << 20
_decode_budget = codec.MemoryBudget(FETCH_DECODE_MEMORY)
#: records we drop before publishing (local bookkeeping only)
_LOCAL_FIELDS = ("uploaded_tree", "remote")

#: the gc marks document (see Remote.gc)
GC_MARKS = "gc/marks"
#: largest gc/marks and dsvc.json read (a larger object is refused before it is read)
MAX_MARKS_BYTES = 64 << 20
MAX_REPO_DOC_BYTES = 1 << 20
#: the damage list written by ``Remote.fsck`` (see docs/remote-protocol.md §10)
DAMAGE = "fsck/damaged"
#: mutable metadata of a version lives in ``meta/<id>`` (docs/remote-protocol.md §11);
#: each field is merged on its own, the later timestamp wins
META_FIELDS = ("name", "project", "version", "tags", "description", "status", "deleted")
MAX_META_BYTES = 16 << 20

_open: dict[tuple[str, str, int], Remote] = {}
_open_lock = threading.Lock()
#: remotes inherited through fork: their obstore clients belong to the parent (a child
#: opens its own), but they stay referenced so the child never tears the parent's down
_inherited: list[Remote] = []


def _after_fork_in_child() -> None:
    global _open_lock
    _inherited.extend(_open.values())
    _open.clear()
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class PushStats:
    packs: int = 0
    objects: int = 0
    chunks: int = 0
    bytes_sent: int = 0
    skipped_objects: int = 0


@dataclass
class FetchStats:
    objects: int = 0
    bytes_received: int = 0
    requests: int = 0


@dataclass
class GcStats:
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_kept: int = 0
    packs_too_young: int = 0
    deleted: list[str] = field(default_factory=list)


@overload
def resolve(
    store: Store, spec: str | None, *, required: Literal[True], retries: int = 3
) -> Remote: ...
@overload
def resolve(
    store: Store, spec: str | None, *, required: bool = False, retries: int = 3
) -> Remote | None: ...
def resolve(
    store: Store, spec: str | None, *, required: bool = False, retries: int = 3
) -> Remote | None:
    """The remote named or addressed by ``spec`` (None: ``DSVC_REMOTE`` or the default).

    Returns None when no remote is configured (unless ``required``).
    """
    found = lookup(store, spec)
    if found is None:
        if required:
            raise ConfigError("no remote configured; add one with `dsvc remote add NAME URL`")
        return None
    name, url, options = found
    k = (str(store.home), url, retries)
    with _open_lock:
        r = _open.get(k)
        if r is None:
            r = _open[k] = Remote(store, name, url, options, retries=retries)
        return r


def forget(store: Store) -> None:
    """Drop the cached remotes of ``store`` (before the store is closed)."""
    with _open_lock:
        for k in [k for k in _open if k[0] == str(store.home)]:
            del _open[k]


def _label(record: dict[str, Any]) -> str:
    """How errors name a dataset version."""
    return f"dataset {record.get('project')}/{record.get('name')} ({record.get('id')})"


def _ref_key(project: str, name: str) -> str:
    return f"refs/names/{quote(project, safe='')}/{quote(name, safe='')}"


def _encode(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _decode(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise IntegrityError(f"{what} is malformed ({e})") from e


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(key: tuple[str, str], msg: str) -> None:
    """One ``dsvc: warning:`` line on stderr per remote object and process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    print(f"dsvc: warning: {msg}", file=sys.stderr)


def _parse_marks(data: bytes, url: str) -> dict[str, dict[str, float]]:
    """Check ``gc/marks``: two maps from pack name (32 hex) to a time in seconds."""
    doc = _decode(data, f"remote {url}: {GC_MARKS}")
    ok = isinstance(doc, dict)
    out: dict[str, dict[str, float]] = {}
    for part in ("marked", "deleting"):
        m = doc.get(part) if ok else None
        m = {} if m is None else m
        ok = ok and isinstance(m, dict)
        ok = ok and all(is_hex32(k) and is_timestamp(v) for k, v in m.items())
        out[part] = dict(m) if ok else {}
    if not ok:
        raise IntegrityError(
            f"remote {url}: {GC_MARKS} is malformed (want two maps from pack names to times); "
            f"delete it to reset garbage collection's marks"
        )
    return out


def _parse_repo_doc(data: bytes, url: str) -> dict[str, Any]:
    """Check ``dsvc.json``: a JSON object with an integer ``format`` and a ``chunker`` map."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise IntegrityError(f"remote {url}: dsvc.json is not valid JSON ({e})") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if (
        not isinstance(fmt, int)
        or isinstance(fmt, bool)
        or not isinstance(doc.get("chunker"), dict)
        or not (doc.get("id") is None or is_hex32(doc["id"]))
    ):
        raise IntegrityError(
            f"remote {url}: dsvc.json is malformed (want an object with an integer 'format', "
            "a 'chunker' map and a 32-hex 'id'); this is not a dsvc remote, or it was damaged"
        )
    return doc


class Remote:
    """One remote seen from one local store."""

    def __init__(
        self, store: Store, name: str | None, url: str, options: dict[str, str], retries: int = 3
    ) -> None:
        self.backend = Backend.from_url(url, options, retries=retries)
        self.name = name
        self.url = self.backend.url
        self.index = RemoteIndex(store, "r" + xxhash.xxh3_64_hexdigest(self.url.encode()))
        self._checked = False
        self._cas_checked = False
        # a chunk never exceeds the chunker's maximum: a frame declaring more is refused
        self._chunk_limit = store.chunker_params.max_size
        self._doomed: frozenset[bytes] = frozenset()
        # from fsck/damaged: copies that are damaged, and copies whose subtree is not
        # complete on the remote (both (pack, id) pairs): push re-sends them
        self._damaged: frozenset[tuple[bytes, bytes]] = frozenset()
        self._incomplete: frozenset[tuple[bytes, bytes]] = frozenset()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Remote({self.name or ''!r}, {self.url!r})"

    # -- repository setup ------------------------------------------------------------

    def ensure_repo(self, store: Store, *, create: bool, recheck: bool = False) -> bool:
        """Check (or create) ``dsvc.json``; False when absent and not ``create``.

        ``create`` means "about to write": the first write through this client also
        probes that the store enforces conditional writes, whoever created the remote
        (a client behind an S3 clone that ignores them must not touch refs).
        ``recheck`` reads ``dsvc.json`` again even if this client already did (push does,
        every time: the remote may have been emptied or replaced since).

        ``dsvc.json`` carries a random repository ``id`` (a writer adds one to a remote
        created without it). The local cache of the remote (indexes, records) belongs
        to one id: when the remote's id differs from the cached one, the cache is dropped.
        """
        with self._lock:
            if create and not self._cas_checked:
                self.backend.check_conditional_writes()
                self._cas_checked = True
            if self._checked and not recheck:
                return True
            raw = self.backend.get_versioned("dsvc.json", limit=MAX_REPO_DOC_BYTES)
            if raw is None:
                if not create:
                    return False
                doc = {
                    "format": FORMAT,
                    "chunker": store.chunker_params.to_config(),
                    "id": uuid.uuid4().hex,
                }
                self.backend.create("dsvc.json", json.dumps(doc, indent=1).encode())
                raw = self.backend.get_versioned("dsvc.json")
                assert raw is not None
            doc = _parse_repo_doc(raw[0], self.url)
            if doc["format"] > FORMAT:
                raise ConfigError(f"remote {self.url} has format {doc['format']}; upgrade dsvc")
            if doc.get("chunker") != store.chunker_params.to_config():
                raise ConfigError(
                    f"remote {self.url} uses chunker {doc.get('chunker')} but the local store uses "
                    f"{store.chunker_params.to_config()}; use a store created with the same "
                    "parameters (dsvc clone creates one)"
                )
            if create and not doc.get("id"):  # made by an older dsvc: give it an identity
                doc["id"] = uuid.uuid4().hex
                try:
                    self.backend.compare_and_swap(
                        "dsvc.json", json.dumps(doc, indent=1).encode(), raw[1]
                    )
                except ConflictError:  # another writer did it first: use theirs
                    again = self.backend.get_versioned("dsvc.json", limit=MAX_REPO_DOC_BYTES)
                    doc = _parse_repo_doc(again[0], self.url) if again is not None else doc
            self._adopt_identity(doc.get("id"))
            self._checked = True
            return True

    def _adopt_identity(self, repo_id: str | None) -> None:
        """Drop the local cache of this remote when it belonged to another repository."""
        key = self.index.prefix + b"id"
        with self.index.store.read() as txn:
            cached = txn.get(key, db=self.index.store.db("remote"))
        now = (repo_id or "").encode()
        if cached is None and not list(self.index.store.scan_prefix("remote", self.index.prefix)):
            pass  # nothing cached yet
        elif cached == now:
            return
        else:
            self.index.clear()  # emptied and recreated, or replaced: nothing cached holds
        with self.index.store.batch() as b:
            b.put("remote", key, now)

    def refresh_index(self, store: Store, *, forget_gone: bool = True) -> None:
        """Load the indexes of packs we have not seen yet (in parallel), forget packs that
        are gone, and note the packs ``gc`` has marked for deletion (see :meth:`gc`)."""
        self._load_damage()
        known = self.index.known_packs()
        on_remote = {}
        for info in self.backend.list("packs/"):
            name = info.key[len("packs/") : -len(".idx")]
            if info.key.endswith(".idx") and is_hex32(name):  # anything else is not ours
                on_remote[bytes.fromhex(name)] = info
        new = [p for p in on_remote if p not in known]

        def load(pid: bytes) -> tuple[bytes, list]:
            name = pack_name(pid)
            return pid, decode_index(self.backend.get(f"packs/{name}.idx"), name)

        if new:
            bad: dict[bytes, set[bytes]] = defaultdict(set)
            for pack, oid in self._damaged:
                bad[pack].add(oid)
            with ThreadPoolExecutor(DEFAULT_WORKERS) as pool:
                for pid, entries in pool.map(load, new):
                    self.index.add_pack(pid, entries, skip=bad.get(pid, ()))
        if forget_gone:
            self.index.forget_packs(known - on_remote.keys())
        doc, _ = self._read_marks()
        self._doomed = frozenset(bytes.fromhex(n) for n in (*doc["marked"], *doc["deleting"]))

    # -- damage found by fsck --------------------------------------------------------

    def _read_damage(self) -> tuple[dict[str, dict[str, list[str]]], Any, bytes]:
        """``fsck/damaged``: ``{pack name: {"damaged": [id], "incomplete": [id]}}``, its
        version, and its raw bytes (b"" when absent)."""
        got = self.backend.get_versioned(DAMAGE)
        if got is None:
            return {}, None, b""
        return _parse_damage(got[0], self.url), got[1], got[0]

    def _load_damage(self) -> None:
        """Read the damage list; when it changed since the local cache was built, drop
        the cached locations of damaged copies and reload every index (skipping them),
        since another pack may hold a good copy of what they held."""
        doc, _, raw = self._read_damage()
        damaged, incomplete = _damage_pairs(doc)
        digest = xxhash.xxh3_128(raw).digest() if raw else b""
        if (self.index.get_meta(b"dmg") or b"") != digest:
            self.index.drop(damaged)
            self.index.reset_packs()
            self.index.set_meta(b"dmg", digest)
        self._damaged, self._incomplete = frozenset(damaged), frozenset(incomplete)

    def fsck(self, store: Store, *, mark: bool = True, show_progress: bool = False) -> dict[str, Any]:
        """Read and verify every value of every pack, and find what is not complete.

        A value that fails verification is *damaged*; an id that no good copy holds but
        something references is *absent*; every copy of a tree, blob or commit above an
        absent id is *incomplete* (its subtree is not all there). With ``mark``, damaged
        and incomplete copies are added to ``fsck/damaged`` (compare-and-swap; merged
        with what is there): readers never locate damaged copies, and push re-sends
        both, so pushing the version from a store that has it repairs the remote, and
        a new version never dedupes onto a damaged copy. Returns counts, ``damaged``
        (``{"pack", "object"}``), ``absent`` ids, ``incomplete`` (a count), ``datasets``
        (ids of the versions that cannot be read back whole) and ``ok``.
        """
        out: dict[str, Any] = {
            "remote": self.url,
            "packs": 0,
            "objects": 0,
            "bytes": 0,
            "bad_indexes": [],
            "damaged": [],
            "absent": [],
            "incomplete": 0,
            "datasets": [],
            "ok": True,
        }
        if not self.ensure_repo(store, create=False):
            return out
        infos = {i.key: i for i in self.backend.list("packs/")}
        jobs = []
        copies: dict[bytes, list[bytes]] = defaultdict(list)  # id -> packs holding it
        for key in sorted(infos):
            name = key[len("packs/") : -len(".idx")]
            if not key.endswith(".idx") or not is_hex32(name):
                continue
            try:
                entries = decode_index(self.backend.get(key), name)
            except IntegrityError:
                out["bad_indexes"].append(name)
                continue
            pid = bytes.fromhex(name)
            out["packs"] += 1
            locs = {}
            for oid, kind, off, length in entries:
                copies[oid].append(pid)
                locs[oid] = Location(pid, off, length, kind)
            jobs += _range_jobs(locs)
        total = sum(g[-1][1].offset + g[-1][1].length - g[0][1].offset for _, g in jobs)
        damaged: set[tuple[bytes, bytes]] = set()
        children: dict[bytes, set[bytes]] = {}  # object -> what it references

        def check(job: tuple[bytes, list[tuple[bytes, Any]]]) -> tuple[list, list, int]:
            pack, group = job
            name = pack_name(pack)
            start = group[0][1].offset
            end = group[-1][1].offset + group[-1][1].length
            try:
                data = memoryview(self.backend.get_range(f"packs/{name}.pack", start, end - start))
            except NotFoundError:
                data = memoryview(b"")  # index without its pack: every value is gone
            good, bad = [], []
            for oid, loc in group:
                value = data[loc.offset - start : loc.offset - start + loc.length]
                try:
                    if len(value) != loc.length:
                        raise IntegrityError("truncated", oid)
                    frame = value if loc.kind == KIND_CHUNK else value[1:]
                    with _decode_budget.hold(codec.declared_size(frame)):
                        payload = _verify(value, oid, loc.kind, name, self._chunk_limit)
                        refs = None if loc.kind == KIND_CHUNK else _references(value, payload, oid)
                    good.append((oid, refs))
                except IntegrityError:
                    bad.append((pack, oid))
            return good, bad, end - start

        with (
            Progress(f"fsck {self.url}", total or None, enabled=show_progress) as bar,
            ThreadPoolExecutor(DEFAULT_WORKERS, thread_name_prefix="dsvc-fsck") as pool,
        ):
            for good, bad, nbytes in pool.map(check, jobs):
                for oid, refs in good:
                    out["objects"] += 1
                    if refs is not None:
                        children[oid] = refs
                out["objects"] += len(bad)
                damaged.update(bad)
                out["bytes"] += nbytes
                bar.update(nbytes)
        # absent: referenced, but no good copy anywhere
        bad_copies: dict[bytes, int] = defaultdict(int)
        for _pack, oid in damaged:
            bad_copies[oid] += 1
        whole = {oid for oid, packs in copies.items() if len(packs) > bad_copies.get(oid, 0)}
        parents: dict[bytes, list[bytes]] = defaultdict(list)
        for oid, refs in children.items():
            for c in refs:
                parents[c].append(oid)
        absent = {c for c in parents if c not in whole}
        above: set[bytes] = set()
        todo = list(absent)
        while todo:  # everything above an absent id is incomplete
            for p in parents.get(todo.pop(), ()):
                if p not in above:
                    above.add(p)
                    todo.append(p)
        incomplete = {(pack, oid) for oid in above for pack in copies.get(oid, ())}
        incomplete -= damaged
        out["damaged"] = [
            {"pack": pack_name(p), "object": to_hex(o)} for p, o in sorted(damaged)
        ]
        out["absent"] = sorted(to_hex(o) for o in absent)
        out["incomplete"] = len(incomplete)
        for rec in self.list_records(store):
            if rec.get("commit") in above or rec.get("commit") in absent or rec["tree"] in above:
                out["datasets"].append(rec["id"])
        out["ok"] = not (absent or out["bad_indexes"])
        if mark:
            self.ensure_repo(store, create=True)
            if self._add_damage(damaged, incomplete):
                self.refresh_index(store)
        return out

    def _add_damage(
        self, damaged: set[tuple[bytes, bytes]], incomplete: set[tuple[bytes, bytes]]
    ) -> bool:
        """Write what fsck found into ``fsck/damaged`` by compare-and-swap (one write: all
        or nothing): damaged copies are added to those listed (a copy stays damaged), the
        incomplete ones replace those listed (fsck just computed them from the whole
        remote). False when nothing changed."""
        for attempt in range(100):
            doc, ver, _ = self._read_damage()
            new: dict[str, dict[str, list[str]]] = {
                n: {"damaged": list(e["damaged"]), "incomplete": []} for n, e in doc.items()
            }
            for kind, pairs in (("damaged", damaged), ("incomplete", incomplete)):
                for pack, oid in sorted(pairs):
                    entry = new.setdefault(pack_name(pack), {"damaged": [], "incomplete": []})
                    if to_hex(oid) not in entry[kind]:
                        entry[kind].append(to_hex(oid))
            new = {n: e for n, e in new.items() if e["damaged"] or e["incomplete"]}
            if new == doc:
                return False
            try:
                self.backend.compare_and_swap(DAMAGE, _encode({"v": 1, "packs": new}), ver)
                return True
            except ConflictError:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise ConflictError(f"remote {self.url}: {DAMAGE} is too contended; run fsck again")

    def _prune_damage(self, gone: set[str]) -> None:
        """Forget the damage entries of packs that no longer exist (gc swept them)."""
        for attempt in range(100):
            doc, ver, _ = self._read_damage()
            if not gone & doc.keys():
                return
            for name in gone:
                doc.pop(name, None)
            try:
                self.backend.compare_and_swap(DAMAGE, _encode({"v": 1, "packs": doc}), ver)
                return
            except ConflictError:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))

    # -- gc marks -----------------------------------------------------------------

    def _read_marks(self) -> tuple[dict[str, dict[str, float]], Any]:
        got = self.backend.get_versioned(GC_MARKS, limit=MAX_MARKS_BYTES)
        if got is None:
            return {"marked": {}, "deleting": {}}, None
        return _parse_marks(got[0], self.url), got[1]

    def _rescue(self, name: str) -> bool:
        """A pack we are about to (re-)upload is marked by ``gc``: take the mark off
        (compare-and-swap). False when a sweep has it on its ``deleting`` list: then the
        pack must not be uploaded under that name (the sweep deletes it, now or when a
        crashed sweep is finished), and the caller uploads a copy under another name."""
        while True:
            doc, ver = self._read_marks()
            if name in doc["deleting"]:
                return False
            if name not in doc["marked"]:
                return True
            doc["marked"].pop(name)
            try:
                self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
                return True
            except ConflictError:
                continue  # gc moved it (or took it off): look again

    # -- push ---------------------------------------------------------------------

    def _plan(self, store: Store, roots: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Objects (children first) and chunks the remote lacks below ``roots``."""
        objects: list[bytes] = []
        chunks: dict[bytes, None] = {}
        seen: set[bytes] = set()

        def new(tid: bytes) -> bool:
            if tid in seen or self.index.has(tid, doomed, suspect):
                return False  # closure invariant: the whole subtree is there
            seen.add(tid)
            return True

        def visit(root: bytes) -> None:
            # iterative post-order (a tree goes after its children), so any depth works
            stack = [(root, iter(store.get_tree(root).values()))] if new(root) else []
            while stack:
                tid, todo = stack[-1]
                for e in todo:
                    if e.kind == KIND_TREE:
                        if new(e.id):
                            stack.append((e.id, iter(store.get_tree(e.id).values())))
                            break
                    elif e.kind in CHUNK_REF_KINDS:  # a file's chunk or a link's
                        chunks[e.id] = None
                    elif e.id not in seen and not self.index.has(e.id, doomed, suspect):
                        seen.add(e.id)
                        for cid, _ in store.get_blob(e.id).chunks:
                            chunks[cid] = None
                        objects.append(e.id)
                else:
                    stack.pop()
                    objects.append(tid)

        doomed = self._doomed  # packs gc marked: their content does not count
        suspect = self._incomplete  # copies fsck found above damage: descend into them
        for r in roots:
            visit(r)
        return objects, self.index.missing(chunks, doomed)

    def _upload_pack(self, builder: PackBuilder, stats: PushStats, bar: Progress | None) -> None:
        for oid, kind, value in builder.values():  # a damaged local value never leaves
            _verify_local(value, oid, kind)
        pid, data, index = builder.finish()
        name = pack_name(pid)
        if pid in self._doomed and not self._rescue(name):
            # same bytes as a pack a sweep is deleting: a random tail (not covered by the
            # index, so readers never see it) gives the copy a name of its own
            pid, data, index = builder.finish(tail=os.urandom(16))
            name = pack_name(pid)
        self.backend.put(f"packs/{name}.pack", data)
        self.backend.put(f"packs/{name}.idx", index)  # index last: the pack now counts
        entries = decode_index(index, name)
        self.index.add_pack(pid, entries)
        with self._lock:
            stats.packs += 1
            stats.bytes_sent += len(data) + len(index)
        if bar is not None:
            bar.update(len(data))

    def push_tree(
        self,
        store: Store,
        tree: bytes,
        *,
        show_progress: bool = True,
        verbose: bool = False,
        pack_size_mb: int | None = None,
        max_workers: int | None = None,
        retries: int = 3,
        extra_objects: Sequence[bytes] = (),
        label: str | None = None,
        refresh: bool = True,
    ) -> PushStats:
        """Upload what the remote lacks of ``tree`` (and ``extra_objects``, e.g. a commit,
        which go last). A second push of the same content sends nothing.

        Every value is decoded and hashed against its id before it goes into a pack: a
        value damaged in the local store is an ``IntegrityError`` naming it, the file or
        folder of ``tree`` it belongs to and ``label`` (the dataset), and is never sent.

        ``refresh=False`` skips re-reading the remote's identity and indexes (for a caller
        that just did, e.g. :meth:`push_dataset`).
        """
        try:
            return self._push_tree(
                store,
                tree,
                show_progress=show_progress,
                verbose=verbose,
                pack_size_mb=pack_size_mb,
                max_workers=max_workers,
                extra_objects=extra_objects,
                refresh=refresh,
            )
        except _Damaged as d:
            raise _damage_error(store, self.url, tree, d.oid, d.error, label) from None

    def _push_tree(
        self,
        store: Store,
        tree: bytes,
        *,
        show_progress: bool,
        verbose: bool,
        pack_size_mb: int | None,
        max_workers: int | None,
        extra_objects: Sequence[bytes],
        refresh: bool,
    ) -> PushStats:
        if refresh:
            self.ensure_repo(store, create=True, recheck=True)
            self.refresh_index(store)
        stats = PushStats()
        try:
            objects, chunks = self._plan(store, [tree])
        except IntegrityError as e:  # a damaged tree or blob met while planning
            if e.object_id is None:
                raise
            raise _Damaged(e.object_id, e) from None
        objects += [
            o for o in extra_objects if not self.index.has(o, self._doomed, self._incomplete)
        ]
        limit = (pack_size_mb or DEFAULT_PACK_MB) << 20
        workers = max_workers or DEFAULT_WORKERS
        # one zero-copy snapshot for sizing and packing: each chunk is copied once, into
        # its pack (PackBuilder.finish), never into a bytes object of its own
        with (
            store._begin(buffers=True) as txn,
            Progress(f"push {self.url}", None, enabled=show_progress) as bar,
        ):
            cdb = store.db("chunks")
            frames = [txn.get(c, db=cdb) for c in chunks]
            if any(f is None for f in frames):
                gone = chunks[frames.index(None)]
                raise NotFoundError(f"chunk {to_hex(gone)} is missing from the local store")
            bar.set_total(sum(len(f) for f in frames))
            # 1. chunks, packs in parallel; wait for all (closure invariant)
            # packs held in memory (being built or uploaded): at most ~PUSH_MEMORY bytes
            slots = threading.BoundedSemaphore(max(2, min(workers + 1, PUSH_MEMORY // limit)))
            futures: list[Future] = []
            with ThreadPoolExecutor(workers, thread_name_prefix="dsvc-push") as pool:

                def submit(b: PackBuilder) -> None:
                    slots.acquire()
                    fut = pool.submit(self._upload_pack, b, stats, bar)
                    fut.add_done_callback(lambda _f: slots.release())
                    futures.append(fut)

                builder = PackBuilder()
                for cid, frame in zip(chunks, frames):
                    builder.add(cid, KIND_CHUNK, frame)
                    if builder.size >= limit:
                        submit(builder)
                        builder = PackBuilder()
                if len(builder):
                    submit(builder)
                for f in futures:
                    f.result()
            # 2. objects, children first, one pack at a time
            builder = PackBuilder()
            for oid in objects:
                raw = store.get_object_frame(oid)
                if raw is None:
                    raise NotFoundError(f"object {to_hex(oid)} is missing from the local store")
                builder.add(oid, KIND_OBJECT, raw)
                if builder.size >= limit:
                    self._upload_pack(builder, stats, None)
                    builder = PackBuilder()
            if len(builder):
                self._upload_pack(builder, stats, None)
        stats.chunks = len(chunks)
        stats.objects = len(objects)
        if verbose:
            print(
                f"pushed {stats.chunks} chunks and {stats.objects} objects in {stats.packs} packs "
                f"({stats.bytes_sent} bytes) to {self.url}"
            )
        return stats

    def publish(
        self,
        store: Store,
        record: dict[str, Any],
        *,
        show_progress: bool = False,
        refresh: bool = True,
    ) -> PushStats:
        """Make a finalized version visible: content and commit (whatever the remote lacks
        of them), record (create-only), then its ref. Idempotent: nothing is skipped on
        the word of the local cache alone (the record's presence is asked of the remote)."""
        commit = record["commit"]
        stats = self.push_tree(
            store,
            record["tree"],
            show_progress=show_progress,
            extra_objects=[commit],
            label=_label(record),
            refresh=refresh,
        )
        rec = {k: v for k, v in record.items() if k not in _LOCAL_FIELDS}
        key = f"datasets/{rec['id']}"
        Record.from_dict(rec, key, finalized=True)  # never publish what readers refuse
        if not self.backend.create(key, _encode(rec)):
            got = self.backend.get(key, limit=MAX_RECORD_BYTES)
            existing = Record.from_msgpack(got, key, expect_id=rec["id"])
            if existing.commit != commit:
                raise ConflictError(
                    f"remote {self.url} already has dataset {rec['id']} with another commit"
                )
        with store.batch() as b:  # re-read on the next get_record
            b.delete("remote", self._record_cache_key(rec["id"]))
        self.update_ref(rec["project"], rec["name"], rec["id"], rec.get("version"))
        return stats

    def update_ref(self, project: str, name: str, dataset_id: str, version: str | None) -> None:
        """Add a version to the ref of ``project/name`` (compare-and-swap, retried)."""
        key = _ref_key(project, name)
        for attempt in range(100):
            cur = self.backend.get_versioned(key, limit=MAX_REF_BYTES)
            doc = {"project": project, "name": name, "versions": {}}
            if cur is not None:
                doc = parse_ref(cur[0], key).to_dict()
            if doc["versions"].get(dataset_id) == version and cur is not None:
                return
            doc["versions"][dataset_id] = version
            try:
                self.backend.compare_and_swap(key, _encode(doc), None if cur is None else cur[1])
                return
            except ConflictError:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise ConflictError(f"remote {self.url}: ref {key} is too contended; try again")

    def read_ref(self, project: str, name: str) -> dict[str, Any] | None:
        cur = self.backend.get_versioned(_ref_key(project, name), limit=MAX_REF_BYTES)
        return None if cur is None else parse_ref(cur[0], _ref_key(project, name)).to_dict()

    def push_dataset(
        self, store: Store, dataset_id: str, *, show_progress: bool = True
    ) -> PushStats:
        """Push a finalized local version, its parents first; idempotent.

        Every version is checked against the remote itself (identity, indexes, record),
        never skipped because the local cache says it was pushed before: after the remote
        was emptied or replaced, this sends everything again."""
        total = PushStats()
        order: list[dict[str, Any]] = []
        seen: set[str] = set()

        def visit(did: str) -> None:
            if did in seen:
                return
            seen.add(did)
            rec = store.get_record(RECORD_PREFIX + did)
            if rec is None:
                return  # a parent known only remotely is already there
            if rec.get("commit") is None:
                raise ConfigError(f"dataset {did} is a draft; finalize it before pushing")
            for p in rec.get("parents") or []:
                visit(p)
            order.append(rec)

        visit(dataset_id)
        self.ensure_repo(store, create=True, recheck=True)
        self.refresh_index(store)
        for rec in order:
            s = self.publish(store, rec, show_progress=show_progress, refresh=False)
            self.sync_meta(store, rec["id"])  # tags, description, status... changed since
            total.packs += s.packs
            total.objects += s.objects
            total.chunks += s.chunks
            total.bytes_sent += s.bytes_sent
        return total

    # -- records ------------------------------------------------------------------

    def _record_cache_key(self, dataset_id: str) -> bytes:
        return self.index.prefix + b"r/" + dataset_id.encode()

    def get_record(
        self, store: Store, dataset_id: str, meta_etag: Any = None
    ) -> dict[str, Any] | None:
        """The remote's record of ``dataset_id`` (records are immutable: cached), checked
        field by field (:class:`~dsvc.record.Record`): IntegrityError names a bad one."""
        if not is_dataset_id(dataset_id):
            return None  # not an id: never becomes a key (no "datasets/../x")
        key = f"datasets/{dataset_id}"
        with store.read() as txn:
            raw = txn.get(self._record_cache_key(dataset_id), db=store.db("remote"))
            raw = None if raw is None else bytes(raw)
        cached = raw is not None
        if raw is None:
            if not self.ensure_repo(store, create=False):
                return None
            got = self.backend.get_versioned(key, limit=MAX_RECORD_BYTES)
            if got is None:
                return None
            raw = got[0]
        rec = Record.from_msgpack(raw, key, expect_id=dataset_id, finalized=True).to_dict()
        if not cached:  # only checked records are cached
            with store.batch() as b:
                b.put("remote", self._record_cache_key(dataset_id), raw)
        rec["remote"] = self.url
        meta = self._read_meta(store, dataset_id, meta_etag)[0]
        if meta.get("deleted", (False, 0))[0]:
            return None  # deleted from this remote (Remote.delete_dataset)
        return _apply_meta(rec, meta)

    # -- mutable metadata ---------------------------------------------------------

    def _read_meta(
        self, store: Store, dataset_id: str, etag: Any = None
    ) -> tuple[dict[str, tuple[Any, int]], Any]:
        """``meta/<id>`` as ``{field: (value, time ns)}`` and its version (None: absent).
        ``etag``: the version a listing showed (``False``: the listing had none), so an
        unchanged document is taken from the local cache without a request."""
        key = f"meta/{dataset_id}"
        ck = self.index.prefix + b"M/" + dataset_id.encode()
        if etag is False:
            return {}, None
        if etag is not None:
            cached = self.index.get_meta(b"M/" + dataset_id.encode())
            if cached is not None:
                tag, raw = msgpack.unpackb(cached, raw=False)
                if tag == etag:
                    return _parse_meta(raw, self.url, key), None
        got = self.backend.get_versioned(key, limit=MAX_META_BYTES)
        if got is None:
            return {}, None
        doc = _parse_meta(got[0], self.url, key)
        if got[1].etag is not None:
            with store.batch() as b:
                b.put("remote", ck, _encode([got[1].etag, got[0]]))
        return doc, got[1]

    def _write_meta(
        self, store: Store, dataset_id: str, change: dict[str, tuple[Any, int]]
    ) -> dict[str, tuple[Any, int]]:
        """Merge ``change`` into ``meta/<id>`` (per field, the later time wins) by
        compare-and-swap; returns the merged document."""
        key = f"meta/{dataset_id}"
        for attempt in range(100):
            cur, ver = self._read_meta(store, dataset_id)
            merged = _merge_meta(cur, change)
            if merged == cur and ver is not None:
                return merged
            doc = {"v": 1, "fields": {f: [v, t] for f, (v, t) in merged.items()}}
            try:
                self.backend.compare_and_swap(key, _encode(doc), ver)
                return merged
            except ConflictError:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise ConflictError(f"remote {self.url}: {key} is too contended; try again")

    def sync_meta(self, store: Store, dataset_id: str) -> dict[str, Any] | None:
        """Exchange the mutable metadata (name, project, version, tags, description,
        status) of a finalized version with the remote: fields changed locally since
        the last exchange are written (stamped with the local record's ``modified``
        time), then every field takes the value with the later time, locally and on the
        remote. Returns the local record (None if there is none)."""
        self.ensure_repo(store, create=True)
        lkey = RECORD_PREFIX + dataset_id
        local = store.get_record(lkey)
        if local is None or local.get("commit") is None:
            return local
        remote_rec = self.get_record(store, dataset_id)
        base = self._meta_base(store, dataset_id)
        if base is None and remote_rec is not None:
            base = {f: (remote_rec.get(f), 0) for f in META_FIELDS if f != "deleted"}
        base = base or {}
        stamp = int(local.get("modified") or time.time_ns())
        change = {
            f: (local.get(f), stamp)
            for f in META_FIELDS
            if f != "deleted" and f in local and (f not in base or base[f][0] != local.get(f))
        }
        merged = self._write_meta(store, dataset_id, change)
        new = {f: v for f, (v, _t) in merged.items() if f != "deleted"}
        while True:  # adopt the merged values locally (compare-and-swap)
            cur = store.get_record(lkey)
            if cur is None:
                return None
            want = {**cur, **new}
            if want == cur:
                break
            try:
                store.cas_record(lkey, cur, want)
                break
            except ConflictError:
                continue
        self._save_base(store, dataset_id, merged)
        out = store.get_record(lkey)
        if out is not None and ("name" in change or "project" in change):
            # list it under its new name too
            self.update_ref(out["project"], out["name"], dataset_id, out.get("version"))
        return out

    def _save_base(self, store: Store, dataset_id: str, meta: dict[str, tuple[Any, int]]) -> None:
        self.index.set_meta(
            b"B/" + dataset_id.encode(), _encode({f: [v, t] for f, (v, t) in meta.items()})
        )

    def _meta_base(self, store: Store, dataset_id: str) -> dict[str, tuple[Any, int]] | None:
        raw = self.index.get_meta(b"B/" + dataset_id.encode())
        if raw is None:
            return None
        return {f: (v, t) for f, (v, t) in msgpack.unpackb(raw, raw=False).items()}

    def delete_dataset(self, store: Store, dataset_id: str) -> None:
        """Delete a version from the remote: a tombstone in ``meta/<id>`` (so listings,
        lookups and fetch no longer see it); its content is left for ``gc``."""
        self.ensure_repo(store, create=True)
        if self.get_record(store, dataset_id) is None:
            raise NotFoundError(f"dataset {dataset_id} is not on remote {self.url}")
        self._write_meta(store, dataset_id, {"deleted": (True, time.time_ns())})

    def list_records(self, store: Store, *, strict: bool = False) -> list[dict[str, Any]]:
        """Every dataset record on the remote (new ones fetched in parallel).

        A malformed record (or a key under ``datasets/`` that is not a dataset id) is
        reported once on stderr, naming its key, and skipped: one bad object must not
        break listing for every client. ``strict`` (gc) raises IntegrityError instead,
        since skipping a record there would delete what it references.
        """
        if not self.ensure_repo(store, create=False):
            return []
        ids = [i.key[len("datasets/") :] for i in self.backend.list("datasets/")]
        # one listing tells which metadata documents changed since they were cached
        metas = {i.key[len("meta/") :]: i.version.etag for i in self.backend.list("meta/")}

        def one(did: str) -> dict[str, Any] | None:
            try:
                if not is_dataset_id(did):
                    raise IntegrityError(
                        f"record datasets/{did} is malformed: the key is not a dataset id"
                    )
                return self.get_record(store, did, metas.get(did, False))
            except IntegrityError as e:
                if strict:
                    raise IntegrityError(
                        f"remote {self.url}: {e}; gc needs every record readable"
                    ) from None
                _warn_once((self.url, did), f"remote {self.url}: skipping {e}")
                return None

        with ThreadPoolExecutor(DEFAULT_WORKERS) as pool:
            recs = list(pool.map(one, ids))
        return [r for r in recs if r is not None]

    def import_record(self, store: Store, record: dict[str, Any]) -> dict[str, Any]:
        """Copy a remote record and its metadata (commit, trees, blobs) into the local store
        so the version can be looked up and listed offline; content stays remote until
        a local copy needs it. Returns the local record."""
        key = RECORD_PREFIX + record["id"]
        # the local record's id names folders (the cached copy): only a checked one lands
        Record.from_dict(record, f"datasets/{record['id']}", finalized=True)
        # the lease keeps local gc from sweeping the metadata before the record names it
        with store.lease(f"import {record['id']}", announce=False):
            self.fetch_metadata(
                store, record["tree"], [record["commit"]] if record.get("commit") else []
            )
            local = {**record, "remote": self.url, "uploaded_tree": record["tree"]}
            try:
                store.cas_record(key, None, local)
                # the metadata as imported is what later local edits are compared with
                self._save_base(store, record["id"], {f: (record.get(f), 0) for f in META_FIELDS})
            except ConflictError:
                pass  # already imported (by us or a concurrent process)
        return store.get_record(key)

    # -- fetch --------------------------------------------------------------------

    def _fetch_values(
        self,
        store: Store,
        ids: Iterable[bytes],
        *,
        workers: int | None = None,
        bar: Progress | None = None,
    ) -> FetchStats:
        """Read the values of ``ids`` from packs (ranged reads), verify, store locally.

        A pack that vanished since its index was cached (``gc`` swept it; the objects
        may have been pushed again in another pack) gets one retry on fresh indexes.
        """
        want = list(dict.fromkeys(ids))
        try:
            return self._fetch_once(store, want, workers=workers, bar=bar)
        except NotFoundError:
            self.refresh_index(store)
            chunks = set(store.missing("chunks", want))
            rest = [i for i in store.missing("objects", want) if i in chunks]
            return self._fetch_once(store, rest, workers=workers, bar=bar)

    def _fetch_once(
        self,
        store: Store,
        want: list[bytes],
        *,
        workers: int | None = None,
        bar: Progress | None = None,
    ) -> FetchStats:
        stats = FetchStats()
        if not want:
            return stats
        locs = self._locate(store, want)
        jobs = _range_jobs(locs)
        run = self._read_range

        # Ranges are read and verified by the pool; one batch (this thread) stores them,
        # committing every BATCH_BYTES: one fsync per 64 MiB instead of one per range
        # from every thread. At most 2 x workers ranges wait in memory.
        n_workers = workers or DEFAULT_WORKERS
        todo = iter(jobs)
        with (
            ThreadPoolExecutor(n_workers, thread_name_prefix="dsvc-fetch") as pool,
            store.lease("fetch", announce=False),  # local gc waits (docs/architecture.md)
            store.batch() as b,
        ):
            pending = deque(pool.submit(run, j) for j in itertools.islice(todo, 2 * n_workers))
            while pending:
                values, nbytes = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(run, nxt))
                for oid, kind, value, _payload in values:
                    if kind == KIND_CHUNK:
                        b.put_chunk_frame(oid, value)
                    else:
                        b.put("objects", oid, value)
                stats.objects += len(values)
                stats.bytes_received += nbytes
                stats.requests += 1
                if bar is not None:
                    bar.update(nbytes)
        return stats

    def _locate(self, store: Store, want: list[bytes]) -> dict[bytes, Any]:
        """Where each of ``want`` is on the remote (NotFoundError if anything is not)."""
        locs = self.index.locate(want)
        if len(locs) < len(want):
            self.refresh_index(store)
            locs = self.index.locate(want)
        if len(locs) < len(want):  # a cached location may have been forgotten: reload all
            self.index.reset_packs()
            self.refresh_index(store)
            locs = self.index.locate(want)
        missing = [i for i in want if i not in locs]
        damaged = {oid for _, oid in self._damaged} & set(missing)
        if damaged:
            oid = next(iter(damaged))
            raise IntegrityError(
                f"remote {self.url}: object {to_hex(oid)} is damaged there (found by `dsvc "
                "fsck --remote`) and no good copy was pushed since; push the version again "
                "from a store that has it (`dsvc push`)",
                oid,
            )
        if missing:
            raise NotFoundError(
                f"remote {self.url} lacks {len(missing)} objects (e.g. {to_hex(missing[0])}); "
                "the version was not completely pushed, or was garbage-collected"
            )
        return locs

    def _read_range(
        self, job: tuple[bytes, list[tuple[bytes, Any]]], keep: bool = False
    ) -> tuple[list[tuple], int]:
        """Read one coalesced range of a pack; verify each value in it (as a view).
        Returns ``[(id, kind, stored value, payload)]`` and the bytes read; the payload
        is None unless ``keep`` (decompressed payloads are dropped as soon as they are
        verified, within the process-wide :data:`FETCH_DECODE_MEMORY`)."""
        pack, group = job
        name = pack_name(pack)
        start = group[0][1].offset
        end = group[-1][1].offset + group[-1][1].length
        data = memoryview(self.backend.get_range(f"packs/{name}.pack", start, end - start))
        if len(data) != end - start:
            raise IntegrityError(
                f"remote pack {name}: read {len(data)} bytes at {start}, its index promised "
                f"{end - start}; the pack is truncated or its index is wrong"
            )
        values = []
        for oid, loc in group:  # views into the range: verified, never copied
            value = data[loc.offset - start : loc.offset - start + loc.length]
            frame = value if loc.kind == KIND_CHUNK else value[1:]
            with _decode_budget.hold(codec.declared_size(frame)):
                payload = _verify(value, oid, loc.kind, name, self._chunk_limit)
                values.append((oid, loc.kind, value, payload if keep else None))
                del payload
        return values, end - start

    def read_chunks(self, store: Store, ids: Sequence[bytes]) -> dict[bytes, Any]:
        """Verified payloads of the chunks ``ids``, read from the remote into memory (not
        into the store): for writing files straight from the remote. The caller bounds
        how much it asks for at once."""
        out: dict[bytes, Any] = {}
        want = list(dict.fromkeys(ids))
        if not want:
            return out
        for job in _range_jobs(self._locate(store, want)):
            values, _ = self._read_range(job, keep=True)
            for oid, _kind, _frame, payload in values:
                out[oid] = payload
        return out

    def fetch_chunks(
        self, store: Store, ids: Sequence[bytes], *, workers: int | None = None
    ) -> tuple[dict[bytes, bytes], FetchStats]:
        """Ranged reads for streaming: the verified payloads of the chunks ``ids`` (those
        adjacent in a pack coalesced into one request, requests run in parallel), each
        also kept in the local store so later reads and local copies reuse it."""
        out: dict[bytes, bytes] = {}
        stats = FetchStats()
        want = list(dict.fromkeys(ids))
        if not want:
            return out, stats
        jobs = _range_jobs(self._locate(store, want))
        with ThreadPoolExecutor(
            min(len(jobs), workers or DEFAULT_WORKERS), thread_name_prefix="dsvc-range"
        ) as pool, store.batch() as b:
            for values, nbytes in pool.map(lambda j: self._read_range(j, keep=True), jobs):
                for oid, _kind, frame, payload in values:
                    b.put_chunk_frame(oid, bytes(frame))
                    out[oid] = bytes(payload)
                stats.objects += len(values)
                stats.bytes_received += nbytes
                stats.requests += 1
        return out, stats

    def fetch_objects(self, store: Store, ids: Sequence[bytes]) -> FetchStats:
        """Fetch the objects ``ids`` (trees, blobs, commits) not yet local, and only those:
        for reading one path of a version without its whole metadata."""
        return self._fetch_values(store, store.missing("objects", list(ids)))

    def fetch_metadata(self, store: Store, tree: bytes, extra: Sequence[bytes] = ()) -> FetchStats:
        """Fetch every tree and blob below ``tree`` (and ``extra`` objects) not yet local."""
        total = FetchStats()
        level = [tree]
        first = True
        while level:
            need = store.missing("objects", level + (list(extra) if first else []))
            first = False
            s = self._fetch_values(store, need)
            total.objects += s.objects
            total.bytes_received += s.bytes_received
            nxt: list[bytes] = []
            blobs: list[bytes] = []
            for tid in level:
                for e in store.get_tree(tid).values():
                    if e.kind == KIND_TREE:
                        nxt.append(e.id)
                    elif e.kind == KIND_FILE:
                        blobs.append(e.id)
            s = self._fetch_values(store, store.missing("objects", blobs))
            total.objects += s.objects
            level = list(dict.fromkeys(nxt))
        return total

    def fetch_blobs(self, store: Store, entries: Sequence[Entry]) -> None:
        """Fetch the blob objects (chunk lists) of ``entries`` that are not local."""
        blobs = [e.id for e in entries if e.kind == KIND_FILE]
        self._fetch_values(store, store.missing("objects", blobs))

    def fetch_files(
        self,
        store: Store,
        entries: Sequence[Entry],
        *,
        max_workers: int | None = None,
        show_progress: bool = True,
    ) -> FetchStats:
        """Fetch the chunks of ``entries`` that are not local, verifying each."""
        self.fetch_blobs(store, entries)
        chunks: list[bytes] = []
        for e in entries:
            chunks.extend(c for c, _ in store.file_chunks(e))
        need = store.missing("chunks", list(dict.fromkeys(chunks)))
        locs = self.index.locate(need)
        total = sum(loc.length for loc in locs.values())
        with Progress(f"fetch {self.url}", total or None, enabled=show_progress) as bar:
            return self._fetch_values(store, need, workers=max_workers, bar=bar)

    def fetch_commit(self, store: Store, commit_id: bytes) -> Commit:
        if not store.has_object(commit_id):
            self._fetch_values(store, [commit_id])
        return store.get_commit(commit_id)

    # -- garbage collection -------------------------------------------------------

    def gc(
        self, store: Store, *, grace_seconds: float = 86400, dry_run: bool = False
    ) -> dict[str, Any]:
        """Delete packs that no dataset record reaches: mark, then sweep after a grace period.

        Each run (1) computes what the records on the remote reach, (2) marks unreached
        packs older than ``grace_seconds`` in ``gc/marks`` (compare-and-swap), and (3)
        deletes the packs marked at least ``grace_seconds`` ago and still unreached
        (index first, then pack). A referenced pack loses its mark. Pushers ignore
        marked packs when deciding what the remote already has, and take the mark off a
        pack they upload again, so a push that started before the mark is safe as long
        as it finishes within the grace period. ``grace_seconds=0`` marks and sweeps in
        one run (only when nobody else is pushing).
        """
        zero = {"packs_deleted": 0, "bytes_deleted": 0, "packs_kept": 0, "packs_marked": 0}
        if not self.ensure_repo(store, create=False):
            return {**zero, "packs_too_young": 0, "dry_run": dry_run}
        if not dry_run:
            self.ensure_repo(store, create=True)  # probes conditional writes once
        self.refresh_index(store)
        bad = self._damaged
        reachable: set[bytes] = set()
        # metadata fetched here may be named by no local record: the lease keeps a local
        # gc from sweeping it before _reach has read it
        with store.lease(f"gc {self.url}", announce=False):
            for rec in self.list_records(store, strict=True):
                commits = [rec["commit"]] if rec.get("commit") else []
                self.fetch_metadata(store, rec["tree"], commits)
                reachable.add(rec["commit"])
                _reach(store, rec["tree"], reachable)
        for attempt in range(20):
            now = time.time()
            stats = GcStats()
            marked_now = 0
            infos = {i.key: i for i in self.backend.list("packs/")}
            doc, ver = self._read_marks()
            marks = doc["marked"]
            sweep: dict[str, tuple[Any, Any, list]] = {}
            for key, info in infos.items():
                if not key.endswith(".pack"):
                    continue
                name = key[len("packs/") : -len(".pack")]
                if not is_hex32(name):
                    continue  # not a pack of ours: never marked, never deleted
                idx = infos.get(f"packs/{name}.idx")
                entries = decode_index(self.backend.get(idx.key), name) if idx else []
                pid = bytes.fromhex(name)
                # a damaged copy keeps nothing alive (fsck found it; a good one exists
                # or must be pushed again)
                if any(oid in reachable and (pid, oid) not in bad for oid, *_ in entries):
                    stats.packs_kept += 1
                    marks.pop(name, None)
                    doc["deleting"].pop(name, None)
                    continue
                if name in doc["deleting"]:
                    sweep[name] = (info, idx, entries)  # a crashed sweep: finish it
                    continue
                if name not in marks:
                    modified = info.last_modified.timestamp() if info.last_modified else now
                    if now - modified < grace_seconds:
                        stats.packs_too_young += 1
                        continue
                    marks[name] = now
                    marked_now += 1
                if now - marks[name] >= grace_seconds:
                    sweep[name] = (info, idx, entries)
                else:
                    stats.packs_too_young += 1
            for name in [n for n in marks if f"packs/{n}.pack" not in infos]:
                del marks[name]  # deleted by someone else
            for name, (info, _, _) in sweep.items():
                stats.packs_deleted += 1
                stats.bytes_deleted += info.size
                stats.deleted.append(name)
            if dry_run:
                break
            for name in sweep:
                marks.pop(name, None)
                doc["deleting"].setdefault(name, now)
            try:  # commit marks and the sweep list before deleting anything
                if doc["marked"] or doc["deleting"] or ver is not None:
                    ver = self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
            except ConflictError:
                time.sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 5)))
                continue  # a pusher rescued a pack (or another gc ran): start over
            swept = set()
            for name, (info, idx, _) in sweep.items():
                if not self._claim(name):
                    stats.packs_deleted -= 1  # taken off the list since: keep it
                    stats.bytes_deleted -= info.size
                    stats.deleted.remove(name)
                    continue
                if idx is not None:
                    self.backend.delete(idx.key)  # index first: readers stop trusting it
                self.backend.delete(info.key)
                swept.add(name)
            self.index.forget_packs({bytes.fromhex(n) for n in swept})
            self._clear_deleting(swept)
            self._prune_damage(swept)
            break
        else:
            raise ConflictError(f"remote {self.url}: gc/marks is too contended; run gc again")
        return {
            "packs_deleted": stats.packs_deleted,
            "bytes_deleted": stats.bytes_deleted,
            "packs_kept": stats.packs_kept,
            "packs_marked": marked_now,
            "packs_too_young": stats.packs_too_young,
            "dry_run": dry_run,
        }

    def _claim(self, name: str) -> bool:
        """Right before deleting a pack: check by compare-and-swap that it is still on the
        ``deleting`` list (stamping it anew), so a change made to the list since the sweep
        planned (another gc found it reachable) wins over this sweep."""
        for attempt in range(100):
            doc, ver = self._read_marks()
            if name not in doc["deleting"]:
                return False
            doc["deleting"][name] = time.time()
            try:
                self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
                return True
            except ConflictError:
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise ConflictError(f"remote {self.url}: gc/marks is too contended; run gc again")

    def _clear_deleting(self, names: set[str]) -> None:
        for _ in range(100):
            doc, ver = self._read_marks()
            if not names & doc["deleting"].keys():
                return
            for n in names:
                doc["deleting"].pop(n, None)
            try:
                self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
                return
            except ConflictError:
                time.sleep(random.uniform(0, 0.05))


def _range_jobs(locs: dict[bytes, Any]) -> list[tuple[bytes, list[tuple[bytes, Any]]]]:
    """Group object locations into reads: per pack, by offset, merging neighbours closer
    than COALESCE_GAP into one range of at most 16 MiB."""
    by_pack: dict[bytes, list[tuple[bytes, Any]]] = defaultdict(list)
    for oid, loc in locs.items():
        by_pack[loc.pack].append((oid, loc))
    jobs = []
    for pack, items in by_pack.items():
        items.sort(key=lambda x: x[1].offset)
        group: list[tuple[bytes, Any]] = []
        for it in items:
            if group:
                last = group[-1][1]
                span = it[1].offset + it[1].length - group[0][1].offset
                if it[1].offset - (last.offset + last.length) > COALESCE_GAP or span > (16 << 20):
                    jobs.append((pack, group))
                    group = []
            group.append(it)
        if group:
            jobs.append((pack, group))
    return jobs


def _verify(
    value: bytes | memoryview, oid: bytes, kind: int, pack: str, chunk_limit: int | None = None
) -> bytes | memoryview:
    """The payload of a stored value read from ``pack``, checked against its id (and
    against the format's size bounds before anything is decompressed)."""
    try:  # the *_view decoder: a raw payload is hashed in place, not copied
        if kind == KIND_CHUNK:
            return codec.decode_frame_view(value, TAG_CHUNK, oid, chunk_limit)
        return codec.decode_frame_view(memoryview(value)[1:], bytes(value[:1]), oid)
    except IntegrityError as e:
        raise IntegrityError(
            f"remote pack {pack}: object {to_hex(oid)} is corrupted ({e}); the remote copy is "
            "damaged: push the version again from a store that has it",
            oid,
        ) from None


def _parse_meta(data: bytes, url: str, key: str) -> dict[str, tuple[Any, int]]:
    """Check ``meta/<id>``: ``{"v": 1, "fields": {field: [value, time ns]}}``; each
    value passes the same check as in a record (dsvc.record.FIELDS)."""
    from dsvc.record import FIELDS

    doc = _decode(data, f"remote {url}: {key}")
    out: dict[str, tuple[Any, int]] = {}
    try:
        fields_ = doc.get("fields") if isinstance(doc, dict) and doc.get("v") == 1 else None
        if not isinstance(fields_, dict):
            raise ValueError("want {'v': 1, 'fields': {...}}")
        for f, pair in fields_.items():
            if f not in META_FIELDS:
                continue  # a newer dsvc's field: ignored
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"field {f!r} is not [value, time]")
            value, t = pair
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise ValueError(f"field {f!r} has a bad time")
            if f == "deleted":
                if not isinstance(value, bool):
                    raise ValueError("deleted must be true or false")
            else:
                value = FIELDS[f][0](value, f)
                if f == "status" and value not in ("final", "published"):
                    raise ValueError("a finalized version's status is final or published")
            out[f] = (value, t)
    except ValueError as e:
        raise IntegrityError(f"remote {url}: {key} is malformed ({e}); delete it") from None
    return out


def _merge_meta(
    a: dict[str, tuple[Any, int]], b: dict[str, tuple[Any, int]]
) -> dict[str, tuple[Any, int]]:
    """Per field, the value with the later time; equal times: the larger encoded value
    (any fixed rule: every client must pick the same)."""
    out = dict(a)
    for f, (v, t) in b.items():
        cur = out.get(f)
        if cur is None or (t, _encode(v)) > (cur[1], _encode(cur[0])):
            out[f] = (v, t)
    return out


def _apply_meta(rec: dict[str, Any], meta: dict[str, tuple[Any, int]]) -> dict[str, Any]:
    return {**rec, **{f: v for f, (v, _t) in meta.items() if f != "deleted"}}


def _parse_damage(data: bytes, url: str) -> dict[str, dict[str, list[str]]]:
    """Check ``fsck/damaged``: ``{"v": 1, "packs": {pack: {"damaged": [id], "incomplete":
    [id]}}}`` with pack names and ids as 32 hex characters."""
    doc = _decode(data, f"remote {url}: {DAMAGE}")
    packs = doc.get("packs") if isinstance(doc, dict) and doc.get("v") == 1 else None
    out: dict[str, dict[str, list[str]]] = {}
    ok = isinstance(packs, dict)
    for name, entry in packs.items() if ok else ():
        ok = ok and is_hex32(name) and isinstance(entry, dict)
        lists = {k: entry.get(k) or [] for k in ("damaged", "incomplete")} if ok else {}
        ok = ok and all(
            isinstance(v, list) and all(is_hex32(i) for i in v) for v in lists.values()
        )
        if ok:
            out[name] = {k: list(v) for k, v in lists.items()}
    if not ok:
        raise IntegrityError(
            f"remote {url}: {DAMAGE} is malformed; delete it and run `dsvc fsck --remote` again"
        )
    return out


def _damage_pairs(
    doc: dict[str, dict[str, list[str]]],
) -> tuple[set[tuple[bytes, bytes]], set[tuple[bytes, bytes]]]:
    damaged, incomplete = set(), set()
    for name, entry in doc.items():
        pack = bytes.fromhex(name)
        damaged.update((pack, bytes.fromhex(i)) for i in entry["damaged"])
        incomplete.update((pack, bytes.fromhex(i)) for i in entry["incomplete"])
    return damaged, incomplete


def _references(value: bytes | memoryview, payload: Any, oid: bytes) -> set[bytes]:
    """The ids a verified object (tag byte + frame ``value``, decoded ``payload``)
    references: a tree's entries, a blob's chunks, a commit's tree."""
    tag = bytes(value[:1])
    data = bytes(payload)
    if tag == TAG_TREE:
        return {e.id for e in decode_tree(data, oid).values()}
    if tag == TAG_BLOB:
        return {c for c, _ in Blob.decode(data, oid).chunks}
    if tag == TAG_COMMIT:
        return {Commit.decode(data, oid).tree}
    raise IntegrityError(f"object {to_hex(oid)}: unknown type tag {tag!r}", oid)


class _Damaged(Exception):
    """A local value failed verification while packing (turned into an IntegrityError
    with the file it belongs to by :meth:`Remote.push_tree`)."""

    def __init__(self, oid: bytes, error: IntegrityError) -> None:
        super().__init__(str(error))
        self.oid = oid
        self.error = error


def _verify_local(value: bytes | memoryview, oid: bytes, kind: int) -> None:
    """Decode and hash a value of the local store before it is packed."""
    try:
        if kind == KIND_CHUNK:
            codec.decode_frame_view(value, TAG_CHUNK, oid)
        else:
            codec.decode_frame_view(memoryview(value)[1:], bytes(value[:1]), oid)
    except IntegrityError as e:
        raise _Damaged(oid, e) from None


def _path_of(store: Store, tree: bytes, oid: bytes) -> str | None:
    """The path below ``tree`` of the file or folder that is or holds ``oid`` ("" for the
    root), or None. Only used to word an error, so damaged trees are skipped."""
    if tree == oid:
        return ""
    todo = [("", tree)]
    while todo:
        prefix, tid = todo.pop()
        try:
            entries = store.get_tree(tid)
        except DsvcError:
            continue
        for name, e in entries.items():
            path = f"{prefix}{name}"
            if e.id == oid:
                return path
            if e.kind == KIND_TREE:
                todo.append((path + "/", e.id))
            elif e.kind == KIND_FILE:
                try:
                    if any(c == oid for c, _ in store.get_blob(e.id).chunks):
                        return path
                except DsvcError:
                    continue
    return None


def _damage_error(
    store: Store, url: str, tree: bytes, oid: bytes, error: IntegrityError, label: str | None
) -> IntegrityError:
    path = _path_of(store, tree, oid)
    where = ""
    if path == "":
        where = " (the root folder)"
    elif path is not None:
        where = f" (of {path!r})"
    what = f" of {label}" if label else ""
    return IntegrityError(
        f"{error}{where}{what}: the local store {store.path} holds a damaged copy, so it was "
        f"not pushed to {url}; run `dsvc fsck --repair`, then re-add the files (or fetch them "
        "from a remote that has them) and push again",
        oid,
    )


def _reach(store: Store, tree: bytes, out: set[bytes]) -> None:
    """Add every object and chunk id below ``tree`` to ``out`` (iterative: any depth)."""
    stack = [tree]
    while stack:
        tid = stack.pop()
        if tid in out:
            continue
        out.add(tid)
        for e in store.get_tree(tid).values():
            if e.kind == KIND_TREE:
                stack.append(e.id)
            elif e.kind in CHUNK_REF_KINDS:
                out.add(e.id)
            elif e.id not in out:
                out.add(e.id)
                out.update(c for c, _ in store.get_blob(e.id).chunks)
