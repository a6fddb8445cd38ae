"""Garbage collection of a remote: mark the packs no record reaches, sweep them after
a grace period (docs/remote-protocol.md §7)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dsvc import walk
from dsvc.errors import ConflictError
from dsvc.record import (
    is_hex32,
)
from dsvc.remote.packs import (
    decode_index,
)
from dsvc.remote.refs import RemoteRefs
from dsvc.remote.repo import GC_MARKS, _encode
from dsvc.retry import cas_retry
from dsvc.store import Store


@dataclass
class GcStats:
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_kept: int = 0
    packs_too_young: int = 0
    deleted: list[str] = field(default_factory=list)


def _reach(store: Store, tree: bytes, out: set[bytes]) -> None:
    """Add every object and chunk id below ``tree`` to ``out`` (:func:`dsvc.walk.reach`)."""
    for _step in walk.reach(
        [tree], store.get_tree, lambda b: [c for c, _ in store.get_blob(b).chunks], out
    ):
        pass  # the walk adds what it yields to ``out``


class RemoteGc(RemoteRefs):
    """Garbage collection of a remote's packs."""

    def gc(
        self, *, grace_seconds: float = 86400, dry_run: bool = False
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
        store = self.store
        zero = {"packs_deleted": 0, "bytes_deleted": 0, "packs_kept": 0, "packs_marked": 0}
        if not self.ensure_repo(create=False):
            return {**zero, "packs_too_young": 0, "dry_run": dry_run}
        if not dry_run:
            self.ensure_repo(create=True)  # probes conditional writes once
        self.refresh_index()
        bad = self._damaged
        reachable: set[bytes] = set()
        # metadata fetched here may be named by no local record: the lease keeps a local
        # gc from sweeping it before _reach has read it
        with store.lease(f"gc {self.url}", announce=False):
            for rec in self.list_records(strict=True):
                self.fetch_metadata(rec.tree)
                _reach(store, rec.tree, reachable)
                # what the version's diff reads (the merge of its parents) and, as in
                # git, its history: a forced delete of a parent drops the parent's
                # record, never what its children need
                trees = [rec.base_tree] if rec.base_tree is not None else []
                for _c, tree in walk.history(
                    [rec.commit] if rec.commit else [], self._gc_commit, reachable
                ):
                    trees += [tree] if tree is not None else []
                for tree in trees:
                    if tree not in reachable and self.index.has(tree):
                        self.fetch_metadata(tree)
                        _reach(store, tree, reachable)

        def mark() -> tuple[GcStats, int, dict[str, tuple[Any, Any, list]]]:
            """Mark and plan the sweep, then commit marks and the sweep list by CAS
            (before deleting anything); a lost race (a pusher rescued a pack, or another
            gc ran) starts over."""
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
                return stats, marked_now, {}
            for name in sweep:
                marks.pop(name, None)
                doc["deleting"].setdefault(name, now)
            if doc["marked"] or doc["deleting"] or ver is not None:
                self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
            return stats, marked_now, sweep

        stats, marked_now, sweep = cas_retry(
            mark, f"remote {self.url}: gc/marks is too contended; run gc again"
        )
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
        if swept:
            self.index.forget_packs({bytes.fromhex(n) for n in swept})
            self._clear_deleting(swept)
            self._prune_damage(swept)
        return {
            "packs_deleted": stats.packs_deleted,
            "bytes_deleted": stats.bytes_deleted,
            "packs_kept": stats.packs_kept,
            "packs_marked": marked_now,
            "packs_too_young": stats.packs_too_young,
            "dry_run": dry_run,
        }

    def _gc_commit(self, cid: bytes) -> tuple[bytes, tuple[bytes, ...]] | None:
        """``(tree, parents)`` of a commit the remote holds (fetched into the store), or
        None when it holds none (a parent that was never pushed)."""
        if not self.store.has_object(cid):
            if not self.index.has(cid):
                return None
            self._fetch_values([cid])
        c = self.store.get_commit(cid)
        return c.tree, c.parents

    def _claim(self, name: str) -> bool:
        """Right before deleting a pack: check by compare-and-swap that it is still on the
        ``deleting`` list (stamping it anew), so a change made to the list since the sweep
        planned (another gc found it reachable) wins over this sweep."""

        def attempt() -> bool:
            doc, ver = self._read_marks()
            if name not in doc["deleting"]:
                return False
            doc["deleting"][name] = time.time()
            self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)
            return True

        return cas_retry(attempt, f"remote {self.url}: gc/marks is too contended; run gc again")

    def _clear_deleting(self, names: set[str]) -> None:

        def attempt() -> None:
            doc, ver = self._read_marks()
            if names & doc["deleting"].keys():
                for n in names:
                    doc["deleting"].pop(n, None)
                self.backend.compare_and_swap(GC_MARKS, _encode(doc), ver)

        try:
            cas_retry(attempt, "")
        except ConflictError:
            pass  # swept packs left on the list: the next gc finds them gone and drops them
