"""The finalize protocol of a draft (docs/architecture.md, "Finalize"): freeze, commit,
publish, mark final; or adopt what a remote already publishes under the draft's id.

Every step is safe to repeat after a crash at any point: the draft is first *frozen*
(its commit fixed in its record, so its content can no longer change), then its commit
is written, then the version is published (create-only record, then ref), then the
local record is marked final. :meth:`dsvc.dataset.Dataset.finalize` runs :func:`run`
inside a store lease, so a concurrent ``gc`` cannot sweep the commit before the record
names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dsvc import registry as reg
from dsvc import reports
from dsvc.errors import UPLOAD_FIRST, ConflictError, IntegrityError, PendingUploadError, RemoteError
from dsvc.ids import to_hex
from dsvc.lookup import warn
from dsvc.objects import Commit
from dsvc.record import Record

if TYPE_CHECKING:
    from dsvc.remote.client import Remote
    from dsvc.store import Store


class Dataset(Protocol):
    """What the protocol needs of a version (:class:`dsvc.dataset.Dataset` has it); named
    here so that this module does not import the class that calls it."""

    _store: Store

    @property
    def id(self) -> str: ...

    def _refresh(self) -> Record: ...

    def _update(
        self,
        change: Callable[[Record], Record],
        *,
        allow_final: bool = False,
        allow_frozen: bool = False,
    ) -> Record: ...

    def upload(self, show_progress: bool = True, verbose: bool = False) -> None: ...


def run(
    ds: Dataset, rec: Record, remote: Remote | None, auto_upload: bool, verbose: bool
) -> Record:
    """Finalize ``ds``, a draft whose record is ``rec``, against ``remote``, inside the
    caller's store lease: adopt the remote's record of this id if it publishes one
    already, else freeze, write the commit, publish (parents first) and mark final.
    Returns the final record."""
    theirs = published_record(ds, remote, rec, auto_upload)
    if remote is not None and theirs is not None and theirs.commit:
        rec = adopt(ds, remote, theirs, theirs.commit)
    else:
        rec = freeze(ds, remote, auto_upload, verbose)
        cid = frozen_commit(ds, rec)
        if remote is not None:
            for pid in rec.parents or []:  # lineage complete on the remote
                if remote.get_record(pid) is None:
                    remote.push_dataset(pid, show_progress=False)
            remote.publish(published(rec, cid))
        rec = mark_final(ds, cid)
    return rec


def published_record(
    ds: Dataset, remote: Remote | None, rec: Record, auto_upload: bool
) -> Record | None:
    """The remote's record of this id, if the remote publishes it already."""
    if remote is None:
        return None
    try:
        return remote.get_record(ds.id)
    except RemoteError:
        pending = not rec.finalizing and rec.uploaded_tree != rec.tree
        if pending and not auto_upload:  # the first thing to fix, and it says what to do
            raise PendingUploadError(
                not_uploaded_message(rec, remote), remedy=UPLOAD_FIRST
            ) from None
        raise


def freeze(ds: Dataset, remote: Remote | None, auto_upload: bool, verbose: bool) -> Record:
    """Fix the draft's commit in its record (``finalizing``) unless already fixed.

    From then on content changes are refused, so whatever a crash interrupts, the
    retry publishes the same commit. With a remote the frozen tree must be the
    uploaded one; ``auto_upload`` uploads again when an edit landed meanwhile.
    """
    for _ in range(20):
        rec = ds._refresh()
        if rec.finalizing:
            return rec
        if remote is not None and rec.uploaded_tree != rec.tree:
            if not auto_upload:
                raise PendingUploadError(not_uploaded_message(rec, remote), remedy=UPLOAD_FIRST)
            ds.upload(show_progress=verbose, verbose=verbose)

        def freeze(r: Record) -> Record:
            if r.finalizing:
                return r  # frozen by a concurrent finalize: publish the same commit
            if remote is not None and r.uploaded_tree != r.tree:
                raise EditedMeanwhile
            meta = reports.commit_meta(ds._store, r.id, commit_meta(r))
            commit = Commit(tree=r.tree, parents=tuple(r.parent_commits or ()), meta=meta)
            return r.replace(finalizing={"commit": commit.id, "meta": meta})

        try:
            return ds._update(freeze)
        except EditedMeanwhile:
            continue
    raise ConflictError(
        f"dataset {ds.id} kept changing while finalizing; stop editing it and retry"
    )


def frozen_commit(ds: Dataset, rec: Record) -> bytes:
    """Write the frozen commit (again, if a crash or gc lost it) and return its id."""
    fin = rec.finalizing
    assert fin is not None  # rec comes from _freeze, which returns a frozen record
    commit = Commit(tree=rec.tree, parents=tuple(rec.parent_commits or ()), meta=fin["meta"])
    cid = ds._store.put_commit(commit)
    if cid != fin["commit"]:
        raise IntegrityError(
            f"dataset {rec.id}: the frozen commit {to_hex(fin['commit'])} does not match "
            f"its record (got {to_hex(cid)})",
            fin["commit"],
        )
    return cid


def mark_final(ds: Dataset, cid: bytes) -> Record:
    def done(r: Record) -> Record:
        if r.status in reg.COMPLETED_STATES and r.commit == cid:
            return r  # a concurrent finalize of the same draft got there first
        fin = r.finalizing or {}
        if r.status != reg.DRAFT or fin.get("commit") != cid:
            raise ConflictError(
                f"dataset {r.id} was finalized by another process with another commit"
            )
        return r.replace(status=reg.FINAL, commit=cid, finalized=time.time_ns(), finalizing=None)

    return ds._update(done, allow_final=True)


def adopt(ds: Dataset, remote: Remote, published: Record, cid: bytes) -> Record:
    """The remote already publishes this id (a finalize that was killed after its
    remote record, possibly by an older dsvc): the version *is* what was published.
    Completes the remote side (ref) and records the published commit (``cid``)
    locally."""
    remote.fetch_metadata(published.tree, [cid])  # no-op when local
    remote.update_ref(published.project, published.name, ds.id, published.version)
    before = ds._refresh()
    if before.tree != published.tree:
        warn(
            f"dataset {before.project}/{before.name} ({ds.id}) was already "
            f"published on {remote.url} by an interrupted finalize; it is now that "
            "version, and the changes made since are not in it (add them to a child "
            f"version: Dataset.create(parent_datasets=['{ds.id}']))"
        )

    def adopt(r: Record) -> Record:
        if r.status in reg.COMPLETED_STATES:
            return r
        return r.replace(
            status=reg.FINAL,
            commit=cid,
            tree=published.tree,
            uploaded_tree=published.tree,
            finalized=time.time_ns(),
            finalizing=None,
        )

    return ds._update(adopt, allow_final=True)


class EditedMeanwhile(Exception):
    """An edit landed after the upload that finalize was about to freeze."""


def not_uploaded_message(rec: Record, remote: Remote) -> str:
    return (
        f"dataset {rec.project}/{rec.name} ({rec.id}) has changes that were not "
        f"uploaded to {remote.url}"
    )


def _published(rec: Record, cid: bytes) -> Record:
    """The record as the remote publishes it: final, with its commit."""
    return rec.replace(status=reg.FINAL, commit=cid, finalizing=None)


def published(rec: Record, cid: bytes) -> Record:
    """The record as the remote publishes it: final, with its commit."""
    return rec.replace(status=reg.FINAL, commit=cid, finalizing=None)


def commit_meta(rec: Record) -> dict[str, Any]:
    return {
        "dataset_id": rec.id,
        "name": rec.name,
        "project": rec.project,
        "version": rec.version,
        "tags": list(rec.tags or []),
        "description": rec.description or "",
        "created": rec.created,
        "parents": list(rec.parents or []),
        "metadata": rec.metadata or {},
    }
