"""What a remote lists: dataset records (``datasets/<id>``, create-only, cached locally),
their mutable metadata (``meta/<id>``) and the refs by name (``refs/names/...``,
compare-and-swap; invariant 3 of docs/remote-protocol.md)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import msgpack

from dsvc.errors import ConflictError, IntegrityError, NotFoundError
from dsvc.record import (
    FIELDS,
    MAX_RECORD_BYTES,
    MAX_REF_BYTES,
    Record,
    is_dataset_id,
    parse_ref,
)
from dsvc.record import META_FIELDS as RECORD_META_FIELDS
from dsvc.remote.fetch import RemoteFetch
from dsvc.remote.repo import DEFAULT_WORKERS, _decode, _encode, _warn_once
from dsvc.retry import cas_retry
from dsvc.store import RECORD_PREFIX, Store

#: mutable metadata of a version lives in ``meta/<id>`` (docs/remote-protocol.md §11);
#: each field is merged on its own, the later timestamp wins
META_FIELDS = (*RECORD_META_FIELDS, "deleted")
MAX_META_BYTES = 16 << 20


def _ref_key(project: str, name: str) -> str:
    return f"refs/names/{quote(project, safe='')}/{quote(name, safe='')}"


def _parse_meta(data: bytes, url: str, key: str) -> dict[str, tuple[Any, int]]:
    """Check ``meta/<id>``: ``{"v": 1, "fields": {field: [value, time ns]}}``; each
    value passes the same check as in a record (dsvc.record.FIELDS)."""
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


def local_record(store: Store, dataset_id: str) -> Record | None:
    """This store's record of ``dataset_id`` (the registry's, read below that layer)."""
    key = RECORD_PREFIX + dataset_id
    raw = store.get_record(key)
    return None if raw is None else Record.from_dict(raw, key)


def _apply_meta(rec: Record, meta: dict[str, tuple[Any, int]], key: str) -> Record:
    """``rec`` with the remote's metadata values, checked as record fields."""
    changes = {f: v for f, (v, _t) in meta.items() if f != "deleted"}
    return Record.from_dict({**rec.to_dict(), **changes}, key) if changes else rec


class RemoteRefs(RemoteFetch):
    """Records, metadata and refs of a remote."""

    def update_ref(self, project: str, name: str, dataset_id: str, version: str | None) -> None:
        """Add a version to the ref of ``project/name`` (compare-and-swap, retried)."""
        key = _ref_key(project, name)

        def attempt() -> None:
            cur = self.backend.get_versioned(key, limit=MAX_REF_BYTES)
            doc: dict[str, Any] = {"project": project, "name": name, "versions": {}}
            if cur is not None:
                doc = parse_ref(cur[0], key).to_dict()
            if doc["versions"].get(dataset_id) == version and cur is not None:
                return
            doc["versions"][dataset_id] = version
            self.backend.compare_and_swap(key, _encode(doc), None if cur is None else cur[1])

        cas_retry(attempt, f"remote {self.url}: ref {key} is too contended; try again")

    def read_ref(self, project: str, name: str) -> dict[str, Any] | None:
        cur = self.backend.get_versioned(_ref_key(project, name), limit=MAX_REF_BYTES)
        return None if cur is None else parse_ref(cur[0], _ref_key(project, name)).to_dict()

    def _record_cache_key(self, dataset_id: str) -> bytes:
        return self.index.prefix + b"r/" + dataset_id.encode()

    def get_record(self, dataset_id: str, meta_etag: Any = None) -> Record | None:
        """The remote's record of ``dataset_id`` (records are immutable: cached), checked
        field by field (:class:`~dsvc.record.Record`): IntegrityError names a bad one."""
        store = self.store
        if not is_dataset_id(dataset_id):
            return None  # not an id: never becomes a key (no "datasets/../x")
        key = f"datasets/{dataset_id}"
        with store.reader() as r:
            raw = r.remote(self._record_cache_key(dataset_id))
        cached = raw is not None
        if raw is None:
            if not self.ensure_repo(create=False):
                return None
            got = self.backend.get_versioned(key, limit=MAX_RECORD_BYTES)
            if got is None:
                return None
            raw = got[0]
        rec = Record.from_msgpack(raw, key, expect_id=dataset_id, finalized=True)
        if not cached:  # only checked records are cached
            with store.batch() as b:
                b.put_remote(self._record_cache_key(dataset_id), raw)
        meta = self._read_meta(dataset_id, meta_etag)[0]
        if meta.get("deleted", (False, 0))[0]:
            return None  # deleted from this remote (Remote.delete_dataset)
        return _apply_meta(rec.replace(remote=self.url), meta, f"meta/{dataset_id}")

    def _read_meta(
        self, dataset_id: str, etag: Any = None
    ) -> tuple[dict[str, tuple[Any, int]], Any]:
        """``meta/<id>`` as ``{field: (value, time ns)}`` and its version (None: absent).
        ``etag``: the version a listing showed (``False``: the listing had none), so an
        unchanged document is taken from the local cache without a request."""
        store = self.store
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
                b.put_remote(ck, _encode([got[1].etag, got[0]]))
        return doc, got[1]

    def _write_meta(
        self, dataset_id: str, change: dict[str, tuple[Any, int]]
    ) -> dict[str, tuple[Any, int]]:
        """Merge ``change`` into ``meta/<id>`` (per field, the later time wins) by
        compare-and-swap; returns the merged document."""
        key = f"meta/{dataset_id}"

        def attempt() -> dict[str, tuple[Any, int]]:
            cur, ver = self._read_meta(dataset_id)
            merged = _merge_meta(cur, change)
            if merged == cur and ver is not None:
                return merged
            doc = {"v": 1, "fields": {f: [v, t] for f, (v, t) in merged.items()}}
            self.backend.compare_and_swap(key, _encode(doc), ver)
            return merged

        return cas_retry(attempt, f"remote {self.url}: {key} is too contended; try again")

    def sync_meta(self, dataset_id: str) -> Record | None:
        """Exchange the mutable metadata (name, project, version, tags, description,
        status) of a finalized version with the remote: fields changed locally since
        the last exchange are written (stamped with the local record's ``modified``
        time), then every field takes the value with the later time, locally and on the
        remote. Returns the local record (None if there is none)."""
        store = self.store
        self.ensure_repo(create=True)
        lkey = RECORD_PREFIX + dataset_id
        local = store.get_record(lkey)
        if local is None or local.get("commit") is None:
            return None if local is None else Record.from_dict(local, lkey)
        remote_rec = self.get_record(dataset_id)
        base = self._meta_base(dataset_id)
        if base is None and remote_rec is not None:
            base = {f: (getattr(remote_rec, f), 0) for f in META_FIELDS if f != "deleted"}
        base = base or {}
        stamp = int(local.get("modified") or time.time_ns())
        change = {
            f: (local.get(f), stamp)
            for f in META_FIELDS
            if f != "deleted" and f in local and (f not in base or base[f][0] != local.get(f))
        }
        merged = self._write_meta(dataset_id, change)
        new = {f: v for f, (v, _t) in merged.items() if f != "deleted"}

        def adopt() -> bool:  # the merged values, locally (compare-and-swap)
            cur = store.get_record(lkey)
            if cur is None:
                return False
            want = {**cur, **new}
            if want != cur:
                store.cas_record(lkey, cur, want)
            return True

        if not cas_retry(adopt, f"dataset {dataset_id}: too many concurrent updates, try again"):
            return None
        self._save_base(dataset_id, merged)
        out = local_record(store, dataset_id)
        if out is not None and ({"name", "project", "version"} & change.keys()):
            # list it under its new name (or version): lookups by name read the ref
            self.update_ref(out.project, out.name, dataset_id, out.version)
            # then off the name(s) it was listed under (refs last: never listed nowhere)
            old = set()
            if "project" in base and "name" in base:
                old.add((base["project"][0], base["name"][0]))
            if remote_rec is not None:
                old.add((remote_rec.project, remote_rec.name))
            for project, name in old - {(out.project, out.name)}:
                self._drop_from_ref(project, name, dataset_id)
        return out

    def _drop_from_ref(self, project: str, name: str, dataset_id: str) -> None:
        """Take a version off the ref of ``project/name`` (it was renamed or moved), by
        compare-and-swap. The document stays (an unconditional delete could lose a
        concurrent add); a ref without versions lists nothing. If the version's merged
        metadata carries that name again (a concurrent rename back), it is put back."""
        key = _ref_key(project, name)

        def attempt() -> None:
            cur = self.backend.get_versioned(key, limit=MAX_REF_BYTES)
            if cur is None:
                return
            doc = parse_ref(cur[0], key).to_dict()
            if dataset_id not in doc["versions"]:
                return
            del doc["versions"][dataset_id]
            self.backend.compare_and_swap(key, _encode(doc), cur[1])

        cas_retry(attempt, f"remote {self.url}: ref {key} is too contended; try again")
        now = self._read_meta(dataset_id)[0]
        if (now.get("project", (None,))[0], now.get("name", (None,))[0]) == (project, name):
            version = now.get("version", (None,))[0]
            self.update_ref(project, name, dataset_id, version)

    def _save_base(self, dataset_id: str, meta: dict[str, tuple[Any, int]]) -> None:
        self.index.set_meta(
            b"B/" + dataset_id.encode(), _encode({f: [v, t] for f, (v, t) in meta.items()})
        )

    def _meta_base(self, dataset_id: str) -> dict[str, tuple[Any, int]] | None:
        raw = self.index.get_meta(b"B/" + dataset_id.encode())
        if raw is None:
            return None
        return {f: (v, t) for f, (v, t) in msgpack.unpackb(raw, raw=False).items()}

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a version from the remote: a tombstone in ``meta/<id>`` (so listings,
        lookups and fetch no longer see it); its content is left for ``gc``."""
        self.ensure_repo(create=True)
        if self.get_record(dataset_id) is None:
            raise NotFoundError(f"dataset {dataset_id} is not on remote {self.url}")
        self._write_meta(dataset_id, {"deleted": (True, time.time_ns())})

    def readable_record(self, dataset_id: str, meta_etag: Any = None) -> Record | None:
        """:meth:`get_record`, except that a malformed record is reported once on stderr,
        naming its key, and skipped (None): one bad object must not break listing or
        lookup for every client."""
        try:
            return self.get_record(dataset_id, meta_etag)
        except IntegrityError as e:
            _warn_once((self.url, dataset_id), f"remote {self.url}: skipping {e}")
            return None

    def list_records(self, *, strict: bool = False) -> list[Record]:
        """Every dataset record on the remote (new ones fetched in parallel).

        A malformed record (or a key under ``datasets/`` that is not a dataset id) is
        reported once on stderr, naming its key, and skipped: one bad object must not
        break listing for every client. ``strict`` (gc) raises IntegrityError instead,
        since skipping a record there would delete what it references.
        """
        if not self.ensure_repo(create=False):
            return []
        ids = [i.key[len("datasets/") :] for i in self.backend.list("datasets/")]
        # one listing tells which metadata documents changed since they were cached
        metas = {i.key[len("meta/") :]: i.version.etag for i in self.backend.list("meta/")}

        def one(did: str) -> Record | None:
            try:
                if not is_dataset_id(did):
                    raise IntegrityError(
                        f"record datasets/{did} is malformed: the key is not a dataset id"
                    )
                return self.get_record(did, metas.get(did, False))
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

    def import_record(self, record: Record) -> Record:
        """Copy a remote record and its metadata (commit, trees, blobs) into the local store
        so the version can be looked up and listed offline; content stays remote until
        a local copy needs it. Returns the local record."""
        store = self.store
        key = RECORD_PREFIX + record.id
        # the local record's id names folders (the cached copy): only a checked one lands
        # (finalized: what a remote may hold)
        Record.from_dict(record.to_dict(), f"datasets/{record.id}", finalized=True)
        # the lease keeps local gc from sweeping the metadata before the record names it
        with store.lease(f"import {record.id}", announce=False):
            self.fetch_metadata(record.tree, [record.commit] if record.commit else [])
            base = record.base_tree
            if base is not None and not store.has_object(base):
                try:  # the version's diff reads it (list_added_files, dsvc diff)
                    self.fetch_metadata(base)
                except NotFoundError:
                    pass  # pushed by an older dsvc, which did not send a merged base
            local = record.replace(remote=self.url, uploaded_tree=record.tree)
            try:
                store.cas_record(key, None, local.to_dict())
                # the metadata as imported is what later local edits are compared with
                self._save_base(
                    record.id, {f: (getattr(record, f, None), 0) for f in META_FIELDS}
                )
            except ConflictError:
                pass  # already imported (by us or a concurrent process)
        out = local_record(store, record.id)
        return out if out is not None else local  # deleted meanwhile: what was imported
