"""A remote repository seen from one local store: connection, ``dsvc.json``, the local
index cache of its packs, the damage list fsck wrote, and gc's marks (and the rescue of a
marked pack by a pusher).

This is the bottom of the remote's modules (repo <- fetch <- refs <- push/gc/check <-
client); docs/remote-protocol.md describes the protocol in full.

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

import json
import sys
import threading
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import xxhash

from dsvc.errors import ConfigError, ConflictError, IntegrityError
from dsvc.record import (
    is_hex32,
    is_timestamp,
)
from dsvc.remote.backend import Backend
from dsvc.remote.packs import (
    RemoteIndex,
    decode_index,
    pack_name,
)
from dsvc.retry import cas_retry
from dsvc.store import Store

FORMAT = 1
DEFAULT_WORKERS = 8  # network I/O, not CPU: more requests in flight than cores
#: the gc marks document (see Remote.gc)
GC_MARKS = "gc/marks"
#: largest gc/marks and dsvc.json read (a larger object is refused before it is read)
MAX_MARKS_BYTES = 64 << 20
MAX_REPO_DOC_BYTES = 1 << 20
#: the damage list written by ``Remote.fsck`` (see docs/remote-protocol.md §10)
DAMAGE = "fsck/damaged"


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


def _parse_damage(data: bytes, url: str) -> dict[str, dict[str, list[str]]]:
    """Check ``fsck/damaged``: ``{"v": 1, "packs": {pack: {"damaged": [id], "incomplete":
    [id]}}}`` with pack names and ids as 32 hex characters."""
    doc = _decode(data, f"remote {url}: {DAMAGE}")
    packs = doc.get("packs") if isinstance(doc, dict) and doc.get("v") == 1 else None
    out: dict[str, dict[str, list[str]]] = {}
    ok = isinstance(packs, dict)
    for name, entry in packs.items() if isinstance(packs, dict) else ():
        ok = ok and is_hex32(name) and isinstance(entry, dict)
        lists = {k: entry.get(k) or [] for k in ("damaged", "incomplete")} if ok else {}
        ok = ok and all(isinstance(v, list) and all(is_hex32(i) for i in v) for v in lists.values())
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
    damaged: set[tuple[bytes, bytes]] = set()
    incomplete: set[tuple[bytes, bytes]] = set()
    for name, entry in doc.items():
        pack = bytes.fromhex(name)
        damaged.update((pack, bytes.fromhex(i)) for i in entry["damaged"])
        incomplete.update((pack, bytes.fromhex(i)) for i in entry["incomplete"])
    return damaged, incomplete


class RemoteRepo:
    """One remote repository seen from one local store: its identity, pack indexes, damage
    list and gc marks."""

    def __init__(
        self, store: Store, name: str | None, url: str, options: dict[str, str], retries: int = 3
    ) -> None:
        self.backend = Backend.from_url(url, options, retries=retries)
        #: the local store this remote is seen from (every method works with it)
        self.store = store
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

    def ensure_repo(self, *, create: bool, recheck: bool = False) -> bool:
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
        store = self.store
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
                doc: dict[str, Any] = {
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
        with self.index.store.reader() as r:
            cached = r.remote(key)
        now = (repo_id or "").encode()
        if cached is None and not list(self.index.store.scan_prefix("remote", self.index.prefix)):
            pass  # nothing cached yet
        elif cached == now:
            return
        else:
            self.index.clear()  # emptied and recreated, or replaced: nothing cached holds
        with self.index.store.batch() as b:
            b.put_remote(key, now)

    def refresh_index(self, *, forget_gone: bool = True) -> None:
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

    def _prune_damage(self, gone: set[str]) -> None:
        """Forget the damage entries of packs that no longer exist (gc swept them)."""

        def attempt() -> None:
            doc, ver, _ = self._read_damage()
            if gone & doc.keys():
                for name in gone:
                    doc.pop(name, None)
                self.backend.compare_and_swap(DAMAGE, _encode({"v": 1, "packs": doc}), ver)

        try:
            cas_retry(attempt, "")
        except ConflictError:
            pass  # entries of packs that are gone are harmless: the next gc prunes them

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

        def attempt() -> bool:  # a lost race: gc moved it (or took it off), look again
            doc, ver = self._read_marks()
            if name in doc["deleting"]:
                return False
            if name not in doc["marked"]:
                return True
            doc["marked"].pop(name)
            self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
            return True

        return cas_retry(attempt, f"remote {self.url}: {GC_MARKS} is too contended; push again")
