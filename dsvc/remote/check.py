"""Checking a remote: read and verify every value of every pack, find what is not
complete, and record both in ``fsck/damaged`` (docs/remote-protocol.md §10)."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dsvc import codec
from dsvc.errors import IntegrityError, NotFoundError
from dsvc.ids import TAG_BLOB, TAG_COMMIT, TAG_TREE, to_hex
from dsvc.objects import Blob, Commit, decode_tree
from dsvc.progress import Progress
from dsvc.record import (
    is_hex32,
)
from dsvc.remote.fetch import _decode_budget, _range_jobs, _verify
from dsvc.remote.packs import (
    KIND_CHUNK,
    Location,
    decode_index,
    pack_name,
)
from dsvc.remote.refs import RemoteRefs
from dsvc.remote.repo import DAMAGE, DEFAULT_WORKERS, _encode
from dsvc.retry import cas_retry


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


def _absent_and_above(
    copies: dict[bytes, list[bytes]],
    damaged: set[tuple[bytes, bytes]],
    children: dict[bytes, set[bytes]],
) -> tuple[set[bytes], set[bytes]]:
    """Step 3, closure (invariant 9 of docs/architecture.md): every id an object
    references has a good copy. Returns the *absent* ids (referenced, but every copy is
    damaged or there is none) and every object *above* one (incomplete: its subtree is
    not all there)."""
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
    return absent, above


class RemoteCheck(RemoteRefs):
    """fsck of a remote."""

    def fsck(self, *, mark: bool = True, show_progress: bool = False) -> dict[str, Any]:
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
        if not self.ensure_repo(create=False):
            return out
        jobs, copies = self._read_indexes(out)
        damaged, children = self._read_packs(jobs, out, show_progress)
        absent, above = _absent_and_above(copies, damaged, children)
        incomplete = {(pack, oid) for oid in above for pack in copies.get(oid, ())}
        incomplete -= damaged
        out["damaged"] = [{"pack": pack_name(p), "object": to_hex(o)} for p, o in sorted(damaged)]
        out["absent"] = sorted(to_hex(o) for o in absent)
        out["incomplete"] = len(incomplete)
        out["datasets"] = self._unreadable_datasets(absent, above)
        out["ok"] = not (absent or out["bad_indexes"])
        if mark:
            self.ensure_repo(create=True)
            if self._add_damage(damaged, incomplete):
                self.refresh_index()
        return out

    def _read_indexes(
        self, out: dict[str, Any]
    ) -> tuple[list[tuple[bytes, list[tuple[bytes, Any]]]], dict[bytes, list[bytes]]]:
        """Step 1: every pack index (``packs/<32 hex>.idx``) decodes; one that does not
        is listed in ``bad_indexes`` and its pack is not read (nothing locates into it).
        Returns the ranged reads of every listed value, and which packs hold each id."""
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
        return jobs, copies

    def _read_packs(
        self,
        jobs: list[tuple[bytes, list[tuple[bytes, Any]]]],
        out: dict[str, Any],
        show_progress: bool,
    ) -> tuple[set[tuple[bytes, bytes]], dict[bytes, set[bytes]]]:
        """Step 2: read every listed value, in parallel ranged reads. Returns the
        damaged copies ``(pack, id)`` and, for each good object, the ids it references."""
        total = sum(g[-1][1].offset + g[-1][1].length - g[0][1].offset for _, g in jobs)
        damaged: set[tuple[bytes, bytes]] = set()
        children: dict[bytes, set[bytes]] = {}  # object -> what it references
        with (
            Progress(f"fsck {self.url}", total or None, enabled=show_progress) as bar,
            ThreadPoolExecutor(DEFAULT_WORKERS, thread_name_prefix="dsvc-fsck") as pool,
        ):
            for good, bad, nbytes in pool.map(self._check_range, jobs):
                for oid, refs in good:
                    out["objects"] += 1
                    if refs is not None:
                        children[oid] = refs
                out["objects"] += len(bad)
                damaged.update(bad)
                out["bytes"] += nbytes
                bar.update(nbytes)
        return damaged, children

    def _check_range(
        self, job: tuple[bytes, list[tuple[bytes, Any]]]
    ) -> tuple[list[tuple[bytes, set[bytes] | None]], list[tuple[bytes, bytes]], int]:
        """One ranged read of a pack. Invariant: every value the index lists is there
        whole, decodes within the decode budget and hashes to its id (an object's
        references are decoded too); a pack missing under its index loses every value.
        Returns ``(good: (id, references or None for a chunk), bad: (pack, id), bytes)``."""
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

    def _unreadable_datasets(self, absent: set[bytes], above: set[bytes]) -> list[str]:
        """Step 4: the versions whose commit or tree is absent or incomplete (they
        cannot be read back whole from this remote)."""
        return [
            rec.id
            for rec in self.list_records()
            if rec.commit in above or rec.commit in absent or rec.tree in above
        ]

    def _add_damage(
        self, damaged: set[tuple[bytes, bytes]], incomplete: set[tuple[bytes, bytes]]
    ) -> bool:
        """Write what fsck found into ``fsck/damaged`` by compare-and-swap (one write: all
        or nothing): damaged copies are added to those listed (a copy stays damaged), the
        incomplete ones replace those listed (fsck just computed them from the whole
        remote). False when nothing changed."""

        def attempt() -> bool:
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
            self.backend.compare_and_swap(DAMAGE, _encode({"v": 1, "packs": new}), ver)
            return True

        return cas_retry(attempt, f"remote {self.url}: {DAMAGE} is too contended; run fsck again")
