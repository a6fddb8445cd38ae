"""``Dataset``: ClearML Data's Dataset class on the dsvc store.

A ClearML script runs after changing only its import line. Differences, all
deliberate, are listed in docs/coming-from-clearml.md; the main ones: no server (the
local store under ``DSVC_HOME`` plus object-store remotes replace it), and a finalized
dataset refuses modification client-side.

State lives in the store, never only in the object: every call re-reads the dataset's
record and writes its change back with compare-and-swap, so ``create`` in one process,
``add_files`` in a second and ``finalize`` in a third work, and two processes editing
one draft do not lose each other's files.
"""

from __future__ import annotations

import functools
import io
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

import msgpack

from dsvc import catalog, external, reports
from dsvc import finalize as finalize_protocol
from dsvc import registry as reg
from dsvc.checkout import (
    CacheLayout,
    FetchFn,
    build_copy,
    materialize,
    materialize_shared,
    refuse_store_overlap,
    serve_copy,
)
from dsvc.errors import (
    OVERWRITE,
    DsvcError,
    IntegrityError,
    InvalidPathError,
    NotFoundError,
    PendingUploadError,
    Remedy,
    StateError,
    UsageError,
    child_remedy,
)
from dsvc.graft import collisions, graft_tree
from dsvc.ids import to_hex
from dsvc.ingest import TreeResult, content_id, ingest_tree
from dsvc.lookup import (
    check_get_criteria,
    finalized_last_parent,
    find_record,
    latest_named,
    not_found_error,
    reach_destination,
    remote_for,
    remote_record,
    squash_sources,
    warn,
)
from dsvc.objects import (
    EMPTY_TREE_ID,
    KIND_CHUNKFILE,
    KIND_EXTERNAL,
    KIND_TREE,
    Entry,
    split_path,
)
from dsvc.progress import Progress
from dsvc.record import Record
from dsvc.registry import last_used as last_used  # documented as dsvc.dataset.last_used
from dsvc.remote.config import lookup as remote_lookup
from dsvc.selection import (
    clean_dataset_path,
    collision_message,
    iter_part,
    match_dataset_path,
    split_parts,
)
from dsvc.store import Store
from dsvc.stream import Reader, clean_path, open_mode
from dsvc.treeops import (
    Change,
    DiffStats,
    LeanTrees,
    RelPath,
    Trees,
    apply_edits,
    diff,
    diff_counts,
    diff_stats,
    edit_effects,
    lookup,
    merge,
    owners,
    squash_tree,
    walk,
)
from dsvc.usage import VersionUsage, version_usage

#: largest file a writable copy reads from a remote straight into memory and then the
#: file (larger ones go through the store, chunk by chunk)
DIRECT_FETCH_MAX = 64 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset, as ClearML's ``FileEntry`` exposes it.

    ``artifact_name`` names the ClearML zip part that held the file; dsvc stores files as
    chunks, not in parts, so it is always None. ``hash`` is the file's content id.
    """

    relative_path: str
    hash: str
    size: int
    parent_dataset_id: str | None = None
    local_path: str | None = None
    artifact_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The entry as ClearML's ``FileEntry.as_dict`` gives it (``local_path`` only when set)."""
        out: dict[str, Any] = {
            "relative_path": self.relative_path,
            "hash": self.hash,
            "parent_dataset_id": self.parent_dataset_id,
            "size": self.size,
            "artifact_name": self.artifact_name,
        }
        if self.local_path:
            out["local_path"] = self.local_path
        return out


@dataclass(frozen=True)
class LinkEntry:
    """One external file (``add_external_files``), as ClearML's ``LinkEntry`` exposes it.

    ``hash`` is ClearML's optional SHA-256 from object metadata (``read_hash``), which
    dsvc does not read: always None. The ETag/version dsvc records are in the tree entry
    (docs/format.md §4.4) and are checked by every copy.
    """

    link: str
    relative_path: str
    parent_dataset_id: str | None = None
    size: int | None = None
    hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The entry as ClearML's ``LinkEntry.as_dict`` gives it."""
        return {
            "link": self.link,
            "relative_path": self.relative_path,
            "parent_dataset_id": self.parent_dataset_id,
            "size": self.size,
            "hash": self.hash,
        }


def _now() -> int:
    return time.time_ns()


def _as_list(v: str | Iterable[str] | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return list(v)


def _id_of(d: str | Dataset) -> str:
    return d.id if isinstance(d, Dataset) else str(d)


def _store() -> Store:
    return reg.open_store()


def _leased(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run a method that writes content and then a record referring to it (a commit, a
    merged tree) inside a store lease, so a concurrent local gc cannot sweep that
    content in between (docs/architecture.md, "gc and writers"). Class methods lease the
    process-wide store, which is the one they use."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(self_or_cls: Any, *args: Any, **kw: Any) -> Any:
            store = self_or_cls._store if isinstance(self_or_cls, Dataset) else _store()
            with store.lease(what, announce=False):
                return fn(self_or_cls, *args, **kw)

        return run

    return deco


class Dataset:
    """A dataset version: a draft you edit, or a finalized, immutable version.

    Get instances through :meth:`create`, :meth:`get` or :meth:`squash`.
    """

    def __init__(self, store: Store, record: Record) -> None:
        self._store = store
        self._rec = record
        # dataset path -> source file, for what add_files added through this object
        # (a later add of another file to the same path is reported: issue 9.10)
        # (dataset folder, source folder, tree id) of each add_files of this object
        self._sources: list[tuple[RelPath, str, bytes]] = []

    # -- identity ------------------------------------------------------------------

    def _refresh(self) -> Record:
        self._rec = reg.require(self._store, self._rec.id)
        return self._rec

    @property
    def id(self) -> str:
        """Stable 32-hex id, available from ``create`` on."""
        return self._rec.id

    @property
    def name(self) -> str:
        return self._refresh().name

    @property
    def project(self) -> str:
        return self._refresh().project

    @property
    def version(self) -> str | None:
        return self._refresh().version

    @version.setter
    def version(self, value: str) -> None:
        self._update(lambda r: r.replace(version=str(value)), allow_final=True)

    @property
    def tags(self) -> list[str]:
        return list(self._refresh().tags or [])

    @tags.setter
    def tags(self, values: Sequence[str] | None) -> None:
        new = _as_list(values)  # ClearML: ``ds.tags = None`` clears the tags
        self._update(lambda r: r.replace(tags=new), allow_final=True)

    def add_tags(self, tags: str | Sequence[str]) -> None:
        """Add tags (kept unique, in order)."""
        new = _as_list(tags)
        self._update(
            lambda r: r.replace(tags=list(dict.fromkeys([*r.tags, *new]))),
            allow_final=True,
        )

    def remove_tags(self, tags: str | Sequence[str]) -> None:
        drop = set(_as_list(tags))
        self._update(
            lambda r: r.replace(tags=[t for t in r.tags if t not in drop]),
            allow_final=True,
        )

    @property
    def description(self) -> str:
        return self._refresh().description or ""

    def set_description(self, description: str) -> None:
        self._update(lambda r: r.replace(description=str(description)), allow_final=True)

    @property
    def status(self) -> str:
        return self._refresh().status

    def is_final(self) -> bool:
        """True once the dataset is finalized (or published)."""
        return self._refresh().status in reg.COMPLETED_STATES

    def is_dirty(self) -> bool:
        """True when the draft has changes that were not uploaded yet.

        A new draft is clean: its content is its parents', which are stored already.
        """
        r = self._refresh()
        uploaded = r.uploaded_tree or r.base_tree
        return r.status == reg.DRAFT and uploaded != r.tree

    def __repr__(self) -> str:
        r = self._rec
        return f"<Dataset {r.project}/{r.name} v{r.version} {r.id} ({r.status})>"

    def _trees(self) -> Trees:
        return Trees(self._store)

    def _update(
        self,
        change: Callable[[Record], Record],
        *,
        allow_final: bool = False,
        allow_frozen: bool = False,
    ) -> Record:
        def checked(r: Record) -> Record:
            if not allow_final and r.status != reg.DRAFT:
                raise StateError(
                    f"dataset {r.project}/{r.name} ({r.id}) is finalized and cannot "
                    "be modified",
                    remedy=child_remedy(r.id),
                )
            if not (allow_final or allow_frozen) and r.finalizing:
                raise StateError(_frozen_message(r))
            return change(r)

        self._rec = reg.update(self._store, self.id, checked)
        return self._rec

    # -- creation and lookup ---------------------------------------------------------

    @classmethod
    @_leased("create")
    def create(
        cls,
        dataset_name: str | None = None,
        dataset_project: str | None = None,
        dataset_tags: Sequence[str] | None = None,
        parent_datasets: Sequence[str | Dataset] | None = None,
        use_current_task: bool = False,
        dataset_version: str | None = None,
        output_uri: str | None = None,
        description: str | None = None,
    ) -> Dataset:
        """Create a new draft whose content is the in-order merge of its parents.

        A later parent overrides an earlier one for the same path. The project defaults
        to the last parent's; the version to the highest existing version bumped.
        """
        store = _store()
        if output_uri is not None:
            remote_lookup(store, output_uri)  # a typo fails now, not at upload time
        parents = [reg.require(store, _id_of(p)) for p in (parent_datasets or [])]
        for p in parents:
            if p.status not in reg.COMPLETED_STATES:
                raise StateError(
                    f"parent dataset {p.project}/{p.name} ({p.id}) is not finalized; "
                    "finalize it before using it as a parent"
                )
        if use_current_task and not dataset_name:
            raise UsageError("use_current_task needs a ClearML server; pass dataset_name")
        if not dataset_name or not str(dataset_name).strip():
            if parents:
                dataset_name = parents[-1].name
            else:
                raise UsageError(
                    "a new dataset needs a name and a project; there is no ClearML task to "
                    "name it",
                    remedy=Remedy(
                        "pass dataset_name and dataset_project (or parent_datasets to take "
                        "them from)",
                        "pass --name and --project (or --parents to take them from)",
                    ),
                )
        if not dataset_project:
            if not parents:
                raise UsageError(
                    f"dataset {dataset_name!r} needs a project",
                    remedy=Remedy(
                        "pass dataset_project (or parent_datasets to take the project from)",
                        "pass --project (or --parents to take the project from)",
                    ),
                )
            dataset_project = parents[-1].project
        # before anything reaches a remote: a bad label fails at the remote's ref, after
        # the version's record was created there
        dataset_name = reg.check_label("name", str(dataset_name))
        dataset_project = reg.check_label("project", str(dataset_project))
        if output_uri is not None:  # reached before the draft is written: a typo fails now
            reach_destination(store, output_uri, "output_uri", starting=False)
        # ClearML allows an explicit version twice (its lookup then picks the most
        # recently updated of the two); only a missing version is numbered for you
        dataset_version = str(dataset_version).strip() if dataset_version is not None else ""
        if not dataset_version:
            # versions pushed from other machines count too, so numbering never repeats;
            # the name index and the remote's ref give the latest without every record
            top = latest_named(
                store,
                dataset_project,
                dataset_name,
                unreachable="numbering versions from the local store only",
            )
            dataset_version = reg.next_version([top] if top is not None else [])
        trees = LeanTrees(store)  # keeps no tree in memory: parents may be large
        with store.batch() as b:
            trees.batch = b
            base = merge(trees, [p.tree for p in parents])
        now = _now()
        rec = Record(
            id=uuid.uuid4().hex,
            name=str(dataset_name),
            project=str(dataset_project),
            version=str(dataset_version),
            tags=list(dataset_tags or []),
            description=description or "",
            status=reg.DRAFT,
            parents=[p.id for p in parents],
            parent_commits=[p.commit for p in parents if p.commit is not None],
            base_tree=base,
            tree=base,
            created=now,
            modified=now,
            output_uri=output_uri,
            removed_any=False,  # a new draft is its base
        )
        reg.insert(store, rec)
        return cls(store, rec)

    @classmethod
    def get(
        cls,
        dataset_id: str | None = None,
        dataset_project: str | None = None,
        dataset_name: str | None = None,
        dataset_tags: Sequence[str] | None = None,
        only_completed: bool = False,
        only_published: bool = False,
        include_archived: bool = False,
        auto_create: bool = False,
        writable_copy: bool = False,
        dataset_version: str | None = None,
        alias: str | None = None,
        overridable: bool = False,
        shallow_search: bool = False,
        **kwargs: Any,
    ) -> Dataset:
        """Find a dataset by id; by project + name (highest version, else most recent);
        or by project or tags alone (most recent). Looks in the local store, then in the
        default remote. ``writable_copy=True`` returns a new child draft of the found one.

        As in ClearML, a call without any criterion (``Dataset.get()``, or
        ``dataset_id=None`` from an unset environment variable) and unknown keyword
        arguments (names not starting with ``_``) raise ``ValueError``.
        """
        check_get_criteria(dataset_id, dataset_project, dataset_name, dataset_tags, kwargs)
        store = _store()
        rec = find_record(
            store,
            dataset_id,
            dataset_project,
            dataset_name,
            dataset_tags,
            dataset_version,
            only_completed,
            only_published,
            include_archived,
        )
        if rec is None:
            if auto_create and dataset_name and dataset_project:
                return cls.create(
                    dataset_name=dataset_name,
                    dataset_project=dataset_project,
                    dataset_tags=dataset_tags,
                    dataset_version=dataset_version,
                )
            raise not_found_error(
                dataset_id, dataset_project, dataset_name, dataset_tags, dataset_version
            )
        ds = cls(store, rec)
        if writable_copy:
            if rec.status not in reg.COMPLETED_STATES:
                raise StateError(
                    f"dataset {rec.id} is a draft; a writable copy needs a finalized version"
                )
            return cls.create(
                dataset_name=rec.name,
                dataset_project=rec.project,
                parent_datasets=[rec.id],
                dataset_tags=rec.tags,
            )
        return ds

    @classmethod
    def list_datasets(
        cls,
        dataset_project: str | None = None,
        partial_name: str | None = None,
        tags: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        only_completed: bool = True,
        recursive_project_search: bool = True,
        include_archived: bool = True,
    ) -> list[dict[str, Any]]:
        """Datasets of the local store and the default remote, newest first."""
        return catalog.list_datasets(
            _store(),
            dataset_project=dataset_project,
            partial_name=partial_name,
            tags=tags,
            ids=ids,
            only_completed=only_completed,
            recursive_project_search=recursive_project_search,
            include_archived=include_archived,
        )

    @classmethod
    def delete(
        cls,
        dataset_id: str | None = None,
        dataset_project: str | None = None,
        dataset_name: str | None = None,
        force: bool = False,
        dataset_version: str | None = None,
        entire_dataset: bool = False,
        shallow_search: bool = False,
        delete_files: bool = True,
        delete_external_files: bool = False,
        remote: str | bool | None = None,
    ) -> None:
        """Delete one version (or every version with ``entire_dataset``) from the local
        store. Content shared with other versions stays; ``dsvc gc`` reclaims the rest.
        ``remote`` (a remote's name or URL, or True for the default remote) deletes the
        finalized versions from that remote too, first (its ``gc`` reclaims the content);
        without it the remote copy stays and ``fetch`` brings the version back.

        Never a guess, as in ClearML: ``entire_dataset`` needs ``force=True``, and a
        project + name matching several versions (no ``dataset_version``) is refused
        with "Multiple datasets found" and deletes nothing. Without ``force`` a version
        that is the parent of another, or is published, is kept.
        """
        catalog.delete(
            _store(),
            dataset_id=dataset_id,
            dataset_project=dataset_project,
            dataset_name=dataset_name,
            force=force,
            dataset_version=dataset_version,
            entire_dataset=entire_dataset,
            remote=remote,
        )

    @classmethod
    def rename(cls, new_dataset_name: str, dataset_project: str, dataset_name: str) -> None:
        """Rename every version of ``dataset_project/dataset_name``."""
        catalog.rename(new_dataset_name, dataset_project, dataset_name, _store)

    @classmethod
    def move_to_project(
        cls, new_dataset_project: str, dataset_project: str, dataset_name: str
    ) -> None:
        """Move every version of ``dataset_project/dataset_name`` to another project."""
        catalog.move_to_project(new_dataset_project, dataset_project, dataset_name, _store)

    # -- content -------------------------------------------------------------------

    def add_files(
        self,
        path: str | os.PathLike[str],
        wildcard: str | Sequence[str] | None = None,
        local_base_folder: str | None = None,
        dataset_path: str | None = None,
        recursive: bool = True,
        verbose: bool = False,
        max_workers: int | None = None,
    ) -> int:
        """Add a file or a folder; returns the number of files added, counted as ClearML
        counts them: new paths, plus files this draft added before and has not uploaded
        yet; a modified file is not counted (clearml/datasets/dataset.py ``_add_files``).

        Unchanged files cost a ``stat`` (stat cache), changed ones store only new chunks.
        """
        self._require_draft()
        src = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.exists(src):
            raise NotFoundError(f"cannot add {src!r} to dataset {self.id}: no such file or folder")
        prefix = clean_dataset_path(dataset_path)
        # the added files keep their paths relative to the folder (or local_base_folder)
        srcdir = src if os.path.isdir(src) else os.path.dirname(src)
        dest = prefix
        if local_base_folder:
            base = os.path.abspath(os.path.expanduser(local_base_folder))
            rel = os.path.relpath(srcdir, base)
            if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
                raise InvalidPathError(
                    f"{src!r} is not inside local_base_folder {base!r}; pick a base folder "
                    "that contains the files"
                )
            if rel != ".":
                dest = (*prefix, *split_path(rel.replace(os.sep, "/")))
        # the lease keeps `gc` away from content no record references until the graft
        with self._store.lease(f"add_files {self.id}"):
            res = self._ingest_tree(
                src,
                wildcard if wildcard is None or isinstance(wildcard, str) else list(wildcard),
                recursive,
                verbose,
                max_workers,
                f"add {os.path.basename(src)}",
            )
            for p, why in res.stats.skipped:
                warn(f"skipped {p}: {why}")
            if res.entry is None:
                return 0
            self._warn_collisions(dest, srcdir, res.entry.id)
            return self._graft(dest, res.entry, res.files)

    def add_external_files(
        self,
        source_url: str | Sequence[str],
        wildcard: str | Sequence[str] | None = None,
        dataset_path: str | Sequence[str] | None = None,
        recursive: bool = True,
        verbose: bool = False,
        max_workers: int | None = None,
        read_hash: bool = False,
    ) -> int:
        """Add files that stay where they are (``s3://``, ``gs://``, ``azure://``,
        ``http(s)://``, ``file://`` or a local path): the version records each file's
        URL, size and ETag/version/mtime, not its content; copies download and check it
        (see :mod:`dsvc.external`). A folder or prefix adds every file below it
        (filtered by ``wildcard``); ``dataset_path`` may be a list, one per URL.

        Returns the number of new link paths, as ClearML counts them (a link that
        replaces another link is not counted; clearml/datasets/dataset.py
        ``_add_external_files``). A URL where nothing is found adds nothing, with a
        warning, as in ClearML. ``read_hash`` (ClearML: a SHA-256 from object metadata)
        is accepted and ignored: dsvc records and checks the ETag instead.
        """
        self._require_draft()
        urls = [source_url] if isinstance(source_url, str) else list(source_url)
        if dataset_path is None or isinstance(dataset_path, str):
            paths: list[str | None] = [dataset_path] * len(urls)
        else:
            paths = list(dataset_path)
            if len(paths) != len(urls):
                raise UsageError(
                    "dataset_path must be a string or a list of strings with the same length "
                    f"as source_url (received {len(paths)} paths for {len(urls)} source urls)"
                )
        with self._store.lease(f"add_external_files {self.id}"):
            links: list[tuple[RelPath, Any]] = []
            for url, dp in zip(urls, paths, strict=True):
                found = external.list_links(self._store, url, wildcard, recursive)
                if not found:
                    warn(f"could not list or find external file(s) at {url}; nothing added")
                prefix = clean_dataset_path(dp)
                links += [((*prefix, *rel), link) for rel, link in found]
            edits: dict[RelPath, Entry | None] = dict(external.link_entries(self._store, links))
            trees = self._trees()
            root = self._refresh().tree
            count = 0
            for p in edits:
                old = lookup(trees, root, p)
                if old is None or old.kind != KIND_EXTERNAL:
                    count += 1
            if verbose:
                for p, link in links:
                    print(f"external file {link.url} added as {'/'.join(p)}")
            self._apply(edits)
            return count

    def _ingest_tree(
        self,
        src: str,
        wildcard: str | list[str] | None,
        recursive: bool,
        verbose: bool,
        max_workers: int | None,
        desc: str,
    ) -> TreeResult:
        # A folder is walked once, folder by folder, so its total is not known up front
        # (the bar shows bytes and rate); a single file's is, so its bar shows a percentage.
        total = os.path.getsize(src) if os.path.isfile(src) else None
        with Progress(desc, total, enabled=True) as bar:
            res = ingest_tree(
                self._store,
                src,
                wildcard=wildcard,
                recursive=recursive,
                max_workers=max_workers,
                progress=bar.update,
            )
        if verbose:
            st = res.stats
            print(
                f"{self.id}: {st.files} files, {st.cached_files} unchanged, "
                f"{st.new_chunks} new chunks ({st.new_bytes_stored} bytes stored)"
            )
        return res

    def _warn_collisions(self, dest: RelPath, srcdir: str, tid: bytes) -> None:
        """Warn about files this add replaces that an earlier add of this object filled
        from another file (adding ``cats`` then ``dogs`` that both hold ``a.jpg``)."""
        total, shown = collisions(self._trees_lean(), self._sources, dest, srcdir, tid)
        self._sources.append((dest, srcdir, tid))
        if total:
            warn(collision_message(shown, total=total))

    def _trees_lean(self) -> LeanTrees:
        return LeanTrees(self._store)

    def _graft(self, dest: RelPath, new: Entry, files: int) -> int:
        """Put the ``files`` files of the tree ``new`` at ``dest`` of the staged tree (a
        file of ``new`` replaces what is at its path; folders merge); returns the count
        ClearML's ``add_files`` reports (:func:`dsvc.graft.graft_tree`). Work is
        proportional to where ``new`` differs from the staged tree: equal subtrees are
        never opened."""
        count = 0

        def change(r: Record) -> Record:
            nonlocal count
            trees = LeanTrees(self._store)
            with self._store.batch() as b:
                trees.batch = b
                root = r.tree
                entry, count, removes = graft_tree(trees, r, dest, new, files)
                tree = entry.id if not dest else apply_edits(trees, root, {dest: entry})
            return r.replace(tree=tree, removed_any=bool(r.removed_any or removes))

        with self._store.lease(f"edit {self.id}", announce=False):  # new trees, then record
            self._update(change)
        return count

    def _apply(self, edits: Mapping[RelPath, Entry | None]) -> int:
        """Apply edits to the staged tree (CAS on the record); returns how many changed.

        Also keeps the record's ``removed_any`` flag: False while every edit since
        ``create`` only added or replaced files, so the staged tree holds every path of
        its base (``squash`` uses that to skip merging along a lineage).
        """
        if not edits:
            return 0
        changed = 0

        def change(r: Record) -> Record:
            nonlocal changed
            trees = Trees(self._store)
            with self._store.batch() as b:
                trees.batch = b
                old = r.tree
                changed, removes = edit_effects(trees, old, edits)
                new = apply_edits(trees, old, edits)
            return r.replace(tree=new, removed_any=bool(r.removed_any or removes))

        with self._store.lease(f"edit {self.id}", announce=False):  # new trees, then record
            self._update(change)
        return changed

    def remove_files(
        self, dataset_path: str | None = None, recursive: bool = True, verbose: bool = False
    ) -> int:
        """Remove files matching ``dataset_path`` (wildcards allowed); returns how many.

        Matching follows ClearML (see docs/guide.md): with ``recursive``, ``*`` also
        crosses ``/`` (``*.csv`` removes every CSV at any depth); a folder path removes
        everything below it; a leading ``/`` is ignored.
        """
        self._require_draft()
        pattern = (dataset_path or "").replace("\\", "/").lstrip("/")
        if not pattern:
            raise UsageError(f"remove_files on dataset {self.id} needs dataset_path")
        trees = self._trees()
        doomed = [
            p
            for p, e in walk(trees, self._rec.tree)
            if match_dataset_path("/".join(p), pattern, recursive)
            or (e.kind == KIND_EXTERNAL and self._link_matches(e, dataset_path or "", recursive))
        ]
        if verbose:
            for p in doomed:
                print(f"removing {'/'.join(p)}")
        return self._apply(dict.fromkeys(doomed))

    def _link_matches(self, e: Entry, pattern: str, recursive: bool) -> bool:
        """ClearML removes external files by their link too (``remove_files("s3://b/x")``,
        clearml/datasets/dataset.py:606-611)."""
        if "://" not in pattern:
            return False
        url = external.read_link(self._store, e).url
        return url == pattern or match_dataset_path(url, pattern, recursive)

    def sync_folder(
        self,
        local_path: str | os.PathLike[str],
        dataset_path: str | None = None,
        verbose: bool = False,
    ) -> tuple[int, int, int]:
        """Make the content under ``dataset_path`` equal to ``local_path``.

        Returns ``(removed, added, modified)`` file counts.
        """
        self._require_draft()
        src = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if not os.path.isdir(src):
            raise NotFoundError(f"cannot sync dataset {self.id} from {src!r}: not a folder")
        prefix = clean_dataset_path(dataset_path)
        with self._store.lease(f"sync_folder {self.id}"):
            res = self._ingest_tree(src, None, True, verbose, None, f"sync {os.path.basename(src)}")
            for p, why in res.stats.skipped:
                warn(f"skipped {p}: {why}")
            # the folder's tree is diffed with the staged one: equal subtrees (the
            # unchanged folders) are skipped by id, never opened, and the changed
            # folders the walk compared with their summaries are counted from there
            # (1% of 1M files changed: 2,000 trees not decoded)
            trees = LeanTrees(self._store)
            folder = res.entry.id if res.entry is not None else EMPTY_TREE_ID
            sub = lookup(trees, self._refresh().tree, prefix)
            if sub is not None and sub.kind != KIND_TREE:
                # a file where the folder should be: it goes
                removed, added, modified = 1, res.files, 0
            else:
                old_sub = sub.id if sub is not None else EMPTY_TREE_ID
                removed, added, modified = diff_counts(trees, old_sub, folder, res.changes)
            if verbose:
                print(f"{self.id}: {removed} removed, {added} added, {modified} modified")
            if removed or added or modified:
                self._set_subtree(prefix, sub, res.entry, removed > 0)
            return removed, added, modified

    def _set_subtree(
        self, prefix: RelPath, expect: Entry | None, new: Entry | None, removes: bool
    ) -> None:
        """Make the staged content under ``prefix`` the tree ``new`` (None: nothing).
        When another writer changed that part since it was read as ``expect``, only
        the differences from ``expect`` are applied, so its files stay."""

        def change(r: Record) -> Record:
            trees = LeanTrees(self._store)
            with self._store.batch() as b:
                trees.batch = b
                root = r.tree
                now = lookup(trees, root, prefix)
                if now == expect or (expect is not None and expect.kind != KIND_TREE):
                    if not prefix:
                        tree = new.id if new is not None else trees.ensure_empty()
                    else:
                        tree = apply_edits(trees, root, {prefix: new})
                else:
                    old = expect.id if expect is not None else EMPTY_TREE_ID
                    edits = {
                        (*prefix, *c.path): c.new
                        for c in diff(trees, old, new.id if new is not None else EMPTY_TREE_ID)
                    }
                    tree = apply_edits(trees, root, edits)
            return r.replace(tree=tree, removed_any=bool(r.removed_any or removes))

        with self._store.lease(f"edit {self.id}", announce=False):  # new trees, then record
            self._update(change)

    # -- listing -------------------------------------------------------------------

    def _files(self, dataset_id: str | None = None) -> dict[str, Entry]:
        rec = self._refresh() if dataset_id is None else reg.require(self._store, dataset_id)
        return {"/".join(p): e for p, e in walk(self._trees(), rec.tree)}

    def list_files(
        self, dataset_path: str | None = None, recursive: bool = True, dataset_id: str | None = None
    ) -> list[str]:
        """Sorted paths of the dataset's files, optionally filtered by a wildcard
        (``dataset_path``, rules in docs/matching.md) and, as in ClearML, by
        ``dataset_id``: only the files whose current content was added by that version
        (this one or an ancestor; see ``FileEntry.parent_dataset_id``).
        """
        if dataset_id is None:
            files = sorted(self._files())
        else:
            files = sorted(
                p for p, fe in self.file_entries_dict.items() if fe.parent_dataset_id == dataset_id
            )
        if not dataset_path:
            return files
        pattern = str(dataset_path).replace("\\", "/").lstrip("/")
        return [f for f in files if match_dataset_path(f, pattern, recursive)]

    def diff(self, other: str | Dataset | None = None) -> Iterator[Change]:
        """The files that differ from ``other`` (a version or its id; default: the merge
        of this version's parents, what this version changed) to this version, streamed
        as ``treeops.Change(path, old, new)`` (``old`` None: added, ``new`` None:
        removed) in sorted path order. Only folders whose content differs are read.
        ``dsvc.treeops.diff_stats(ds.diff(...))`` sums them up.
        """
        rec = self._refresh()
        base = rec.base if other is None else reg.require(self._store, _id_of(other)).tree
        return diff(self._trees(), base, rec.tree)

    def stats(self, other: str | Dataset | None = None) -> DiffStats:
        """Counts and bytes of :meth:`diff` (added, removed, modified files)."""
        return diff_stats(self.diff(other))

    def usage(self) -> VersionUsage:
        """Files, logical bytes, stored (compressed, deduplicated) bytes, the bytes this
        version added over its parents and the dedup ratio (``dsvc show`` prints them)."""
        return version_usage(self._store, self._refresh())

    def _changes(self, dataset_id: str | None) -> list[Change]:
        rec = self._refresh()
        base = rec.base if dataset_id is None else reg.require(self._store, dataset_id).tree
        key = (base, rec.tree)
        # list_added/modified/removed_files in a row diff once (trees are immutable,
        # so the same pair of ids always gives the same changes)
        last = getattr(self, "_last_changes", None)
        if last is None or last[0] != key:
            last = self._last_changes = (key, list(diff(self._trees(), base, rec.tree)))
        return last[1]

    def list_added_files(self, dataset_id: str | None = None) -> list[str]:
        """Files added compared with ``dataset_id`` (default: the merge of the parents)."""
        return ["/".join(c.path) for c in self._changes(dataset_id) if c.status == "added"]

    def list_removed_files(self, dataset_id: str | None = None) -> list[str]:
        return ["/".join(c.path) for c in self._changes(dataset_id) if c.status == "removed"]

    def list_modified_files(self, dataset_id: str | None = None) -> list[str]:
        return ["/".join(c.path) for c in self._changes(dataset_id) if c.status == "modified"]

    @property
    def file_entries_dict(self) -> dict[str, FileEntry]:
        """``relative path -> FileEntry`` for every file of this version.

        ``parent_dataset_id`` is the version (this one or an ancestor) whose change
        gave the file its current content, as in ClearML.
        """
        rec = self._refresh()
        files = self._files()
        who = owners(self._trees(), rec, files, lambda pid: reg.get(self._store, pid))
        return {
            path: FileEntry(path, to_hex(e.id), e.size, who.get(path, rec.id))
            for path, e in files.items()
            if e.kind != KIND_EXTERNAL  # ClearML keeps links apart (link_entries_dict)
        }

    @property
    def file_entries(self) -> list[FileEntry]:
        return list(self.file_entries_dict.values())

    @property
    def link_entries_dict(self) -> dict[str, LinkEntry]:
        """``relative path -> LinkEntry`` for every external file (``add_external_files``);
        ``parent_dataset_id`` as in :attr:`file_entries_dict`."""
        rec = self._refresh()
        files = self._files()
        links = {p: e for p, e in files.items() if e.kind == KIND_EXTERNAL}
        if not links:
            return {}
        remote = remote_for(self._store, rec.remote or rec.output_uri)
        external.fetch_links(self._store, list(links.values()), remote)
        who = owners(self._trees(), rec, files, lambda pid: reg.get(self._store, pid))
        return {
            p: LinkEntry(
                external.read_link(self._store, e).url, p, who.get(p, rec.id), e.size
            )
            for p, e in links.items()
        }

    @property
    def link_entries(self) -> list[LinkEntry]:
        """The external links of this version (``link_entries_dict``'s values)."""
        return list(self.link_entries_dict.values())

    def get_default_storage(self) -> str | None:
        """Where ``upload()`` sends content: the dataset's ``output_uri``, else the remote
        it was uploaded to, else the default remote's URL; None when the local store is
        the only storage (ClearML: the task's output URI or the default destination)."""
        rec = self._refresh()
        spec = rec.output_uri or rec.remote
        if spec:
            return str(spec)
        remote = remote_for(self._store, None)
        return remote.url if remote is not None else None

    @property
    def changed_files(self) -> dict[str, int]:
        """ClearML's counts of this version's changes against its parents:
        ``{"files added", "files removed", "files modified"}`` (computed from the trees)."""
        counts = {"files added": 0, "files removed": 0, "files modified": 0}
        for c in self._changes(None):
            counts[f"files {c.status}"] += 1
        return counts

    def update_changed_files(
        self,
        num_files_added: int | None = None,
        num_files_modified: int | None = None,
        num_files_removed: int | None = None,
    ) -> None:
        """Accepted and ignored: :attr:`changed_files` is computed from the version's
        trees, so there are no counters to keep (ClearML updates its task's counters)."""

    def get_offline_mode_folder(self) -> None:
        """None: dsvc keeps everything in the store (``DSVC_HOME``), never in an offline
        session folder (ClearML: the offline session's folder)."""
        return None

    @classmethod
    def import_offline_session(
        cls, session_folder_zip: str, upload: bool = True, finalize: bool = False
    ) -> str:
        """Refused: ClearML's offline sessions are task folders for a server; dsvc has no
        server, and its versions move between machines with ``dsvc push``/``clone``."""
        raise UsageError(
            f"cannot import the ClearML offline session {session_folder_zip!r}: dsvc has no "
            "offline sessions (there is no server); create the dataset with dsvc and move "
            "it with push/fetch, or add the session's files with add_files"
        )

    @classmethod
    def is_offline(cls) -> bool:
        """Always True: dsvc has no server, so it is in ClearML's offline mode for good
        (every call works on the local store and the configured remotes)."""
        return True

    @classmethod
    def set_offline(cls, offline_mode: bool = False) -> None:
        """Accepted and ignored: there is no server to go on- or offline with (see
        :meth:`is_offline`)."""

    def get_dependency_graph(self) -> dict[str, list[str]]:
        """``{dataset id: [parent ids]}`` for this version and all its ancestors."""
        graph: dict[str, list[str]] = {}
        todo = [self.id]
        while todo:
            did = todo.pop()
            if did in graph:
                continue
            rec = reg.get(self._store, did) or remote_record(self._store, did)
            parents = list(rec.parents) if rec else []
            graph[did] = parents
            todo.extend(parents)
        return graph

    def get_num_chunks(self, include_parents: bool = True) -> int:
        """Number of distinct content chunks the version's files are made of."""
        seen: set[bytes] = set()
        for e in self._files().values():
            if e.kind == KIND_EXTERNAL:  # content stays at its URL
                continue
            for cid, _ in self._store.file_chunks(e):
                seen.add(cid)
        return len(seen)

    # -- metadata ------------------------------------------------------------------

    def set_metadata(
        self, metadata: Any, metadata_name: str = "metadata", ui_visible: bool = True
    ) -> None:
        """Attach data under a name: dicts, lists, numbers, text, bytes, numpy arrays
        and pandas DataFrames (get_metadata gives back the same type).

        Allowed on drafts only: a finalized version's metadata is part of its commit.
        As in ClearML, a name may not start with ``data_``.
        """
        if str(metadata_name).startswith("data_"):
            raise UsageError(f"metadata_name can not start with 'data_' (got {metadata_name!r})")
        if hasattr(metadata, "to_dict") and hasattr(metadata, "columns"):
            metadata = {"__dataframe__": metadata.to_dict(orient="split")}
        elif _is_ndarray(metadata):
            if metadata.dtype.hasobject:
                raise UsageError(
                    f"metadata {metadata_name!r}: numpy arrays of Python objects cannot be "
                    "stored; convert them to a list or a numeric dtype"
                )
            metadata = {
                "__ndarray__": {
                    "dtype": metadata.dtype.str,
                    "shape": list(metadata.shape),
                    "data": metadata.tobytes(order="C"),
                }
            }
        try:
            msgpack.packb(metadata, use_bin_type=True)
        except (TypeError, ValueError) as e:
            raise UsageError(f"metadata {metadata_name!r} cannot be stored: {e}") from None
        self._update(
            lambda r: r.replace(metadata={**r.metadata, metadata_name: metadata})
        )

    def get_logger(self) -> reports.Logger:
        """A logger whose reports (tables, scalars, histograms, text, images, media) are
        stored with this draft and become part of its commit at ``finalize``, so they
        travel with push/fetch; ``dsvc show --reports ID`` renders them as one HTML page
        (see :mod:`dsvc.reports`)."""
        return reports.Logger(
            self._store, self.id, lambda: self._refresh().status == reg.DRAFT
        )

    @property
    def _task(self) -> reports.DatasetTask:
        """ClearML scripts use ``dataset._task`` (the urbansounds examples upload an
        artifact through it); a stand-in whose artifacts are kept as metadata."""
        return reports.DatasetTask(self, lambda: list(self._refresh().metadata or {}))

    def get_reports(self) -> list[dict[str, Any]]:
        """The events reported through :meth:`get_logger` (fetching the commit from the
        remote if a finalized version's is not local)."""
        rec = self._refresh()
        remote = remote_for(self._store, rec.remote or rec.output_uri)
        return reports.version_events(self._store, rec, remote)

    def get_metadata(self, metadata_name: str = "metadata") -> Any:
        """The metadata stored under ``metadata_name`` (None if absent)."""
        value = (self._refresh().metadata or {}).get(metadata_name)
        if isinstance(value, dict) and "__ndarray__" in value:
            import numpy as np  # optional: only metadata that holds an array needs it

            a = value["__ndarray__"]
            return np.frombuffer(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"]).copy()
        if isinstance(value, dict) and "__dataframe__" in value:
            try:
                import pandas as pd  # optional: only metadata that holds a DataFrame

                d = value["__dataframe__"]
                return pd.DataFrame(d["data"], index=d["index"], columns=d["columns"])
            except ImportError:
                return value["__dataframe__"]
        return value

    # -- upload and finalize -----------------------------------------------------------

    def upload(
        self,
        show_progress: bool = True,
        verbose: bool = False,
        output_url: str | None = None,
        compression: Any = None,
        chunk_size: int | None = None,
        max_workers: int | None = None,
        retries: int = 3,
        preview: bool = True,
        upload_as_external_links: bool = False,
    ) -> None:
        """Send the draft's content that the destination lacks.

        Destination: ``output_url``, else the dataset's ``output_uri``, else the default
        remote. With no remote at all the local store is the storage and upload only
        records that the current content is stored.

        ``upload_as_external_links=True`` (ClearML 2.1) first writes the files this draft
        added or changed as plain objects under ``<destination>/external_links/<id>/``
        and replaces them by external links to those objects (inherited files stay as
        they are). ``preview`` (ClearML: a preview in the web UI) stores a preview
        report with the version: the file listing and the first rows of tabular files
        (see :meth:`get_logger`, ``dsvc show --reports``).
        """
        rec = self._refresh()
        if rec.status != reg.DRAFT:
            raise StateError(f"dataset {rec.id} is finalized; nothing to upload")
        dest = output_url or rec.output_uri
        if dest:  # a destination no remote names is reached first (a typo fails here)
            reach_destination(self._store, dest, "output_url", starting=True)
        if upload_as_external_links:
            if preview:  # before links replace the files: previews read stored content
                self._store_preview(rec)
            self._upload_as_links(output_url, max_workers)
            rec = self._refresh()
        spec = output_url or rec.output_uri
        remote = remote_for(self._store, spec, required=spec is not None, retries=retries)
        tree = rec.tree
        where = None
        if remote is not None:
            remote.push_tree(
                tree,
                show_progress=show_progress,
                verbose=verbose,
                pack_size_mb=chunk_size,
                max_workers=max_workers,
                retries=retries,
                label=f"dataset {rec.project}/{rec.name} ({rec.id})",
            )
            where = remote.url
        if preview and not upload_as_external_links:
            # after the push, whose checks name the file and dataset of damaged content
            self._store_preview(rec)
        self._update(
            lambda r: r.replace(uploaded_tree=tree, remote=where or r.remote),
            allow_frozen=True,  # a retried `dsvc close` uploads before finalizing again
        )

    def _stored_changes(self, rec: Record) -> Iterator[tuple[RelPath, Entry]]:
        """The files the draft added or changed over its base whose content is stored
        (not external links): what a preview shows and what links upload."""
        for c in diff(self._trees(), rec.base, rec.tree):
            if c.new is not None and c.new.kind != KIND_EXTERNAL:
                yield c.path, c.new

    def _store_preview(self, rec: Record) -> None:
        reports.set_preview(
            self._store,
            rec.id,
            (("/".join(path), entry) for path, entry in self._stored_changes(rec)),
        )

    def _upload_as_links(self, output_url: str | None, max_workers: int | None) -> None:
        rec = self._refresh()
        dest = output_url or self.get_default_storage()
        if not dest:
            raise UsageError(
                f"dataset {rec.id}: output_url must be set when upload_as_external_links=True "
                "(or give the dataset an output_uri, or configure a default remote)"
            )
        found = remote_lookup(self._store, dest)
        url, options = (found[1], found[2]) if found is not None else (dest, {})
        files = list(self._stored_changes(rec))
        base = f"{url.rstrip('/')}/external_links/{rec.id}"
        with self._store.lease(f"upload {self.id}"):
            links = external.upload_as_links(
                self._store, files, base, options, max_workers=max_workers
            )
            self._apply(dict(external.link_entries(self._store, links)))

    def finalize(
        self, verbose: bool = False, raise_on_error: bool = True, auto_upload: bool = False
    ) -> bool:
        """Freeze the draft into an immutable version (writes its commit).

        With a remote, refused while changes are not uploaded (``auto_upload=True``
        uploads them first); then the version is published to the remote.

        Safe to retry after a crash, and against concurrent edits (docs/architecture.md,
        "Finalize"): the draft is first *frozen* locally (its commit is fixed in the
        record, and its content can no longer change), then published (idempotent),
        then marked final. A draft whose id the remote already publishes becomes that
        version, with the published content.
        """
        try:
            rec = self._refresh()
            if rec.status != reg.DRAFT:
                raise StateError(f"dataset {rec.id} is already finalized")
            spec = rec.remote or rec.output_uri
            remote = remote_for(self._store, spec, required=spec is not None)
            # the lease keeps `gc` from sweeping the commit before the record names it
            with self._store.lease(f"finalize {self.id}"):
                rec = finalize_protocol.run(self, rec, remote, auto_upload, verbose)
            if verbose:
                print(f"finalized {rec.project}/{rec.name} v{rec.version} ({rec.id})")
            return True
        except PendingUploadError:
            # ClearML's raise_on_error covers pending uploads only (dataset.py:960-967);
            # any other failure (already final, remote down) raises either way
            if raise_on_error:
                raise
            return False

    def publish(self, raise_on_error: bool = True) -> bool:
        """Mark a finalized version as published.

        A draft raises whatever ``raise_on_error`` says, as in ClearML (dataset.py:1054).
        """
        rec = self._refresh()
        if rec.status == reg.DRAFT:
            raise StateError(f"dataset {rec.id} must be finalized before publishing")
        try:
            self._update(lambda r: r.replace(status=reg.PUBLISHED), allow_final=True)
            return True
        except DsvcError:
            if raise_on_error:
                raise
            return False

    # -- local copies --------------------------------------------------------------

    def _selected(
        self, part: int | None, num_parts: int | None, files: str | Sequence[str] | None
    ) -> list[tuple[RelPath, Entry]]:
        return list(self._iter_selected(part, num_parts, files)[0])

    def _iter_selected(
        self, part: int | None, num_parts: int | None, files: str | Sequence[str] | None
    ) -> tuple[Iterator[tuple[RelPath, Entry]], int]:
        """The selected files, lazily (folder by folder: memory holds no listing), and
        about how many bytes they hold (for progress). A selection by pattern is walked
        twice when it is split into parts (the split needs its total first)."""
        trees, root = self._trees(), self._rec.tree
        pats = [p.replace("\\", "/").lstrip("/") for p in _as_list(files)]

        def listing() -> Iterator[tuple[RelPath, Entry]]:
            for p, e in walk(trees, root):
                if not pats or any(match_dataset_path("/".join(p), q, True) for q in pats):
                    yield p, e

        if num_parts is None and part is None:
            return listing(), self._total_size(self._rec) if not pats else 0
        split_parts([], part, num_parts)  # checks part and num_parts now
        # the split needs the exact total first: one more walk, no listing kept
        total = sum(e.size for _, e in listing())
        count = 0 if total else sum(1 for _ in listing())  # only empty files: by count
        assert num_parts is not None
        return iter_part(listing(), total, count, part, num_parts), total // num_parts

    def _resolve_links(
        self, entries: list[tuple[RelPath, Entry]], max_workers: int | None
    ) -> list[tuple[RelPath, Entry]]:
        """``entries`` with external links replaced by their downloaded content."""
        if not any(e.kind == KIND_EXTERNAL for _, e in entries):
            return entries
        rec = self._rec
        remote = remote_for(self._store, rec.remote or rec.output_uri)
        return external.resolve(
            self._store,
            entries,
            remote=remote,
            label=f" of dataset {rec.id}",
            max_workers=max_workers,
        )

    def _ensure_content(
        self, entries: list[tuple[RelPath, Entry]], max_workers: int | None
    ) -> None:
        """Fetch from the remote whatever content of ``entries`` is not local."""
        missing = self._store.missing_content(e for _, e in entries)
        if not missing:
            return
        rec = self._rec
        remote = remote_for(self._store, rec.remote or rec.output_uri)
        if remote is None:
            raise NotFoundError(
                f"dataset {rec.id}: {len(missing)} files have content that is not in the local "
                "store and no remote is configured; add the remote it was pushed to"
            )
        try:
            remote.fetch_files(missing, max_workers=max_workers)
        except IntegrityError as e:
            raise self._name_bad_file(e, entries) from None

    def _name_bad_file(
        self, e: IntegrityError, entries: list[tuple[RelPath, Entry]]
    ) -> IntegrityError:
        """``e`` again, naming the file of this dataset that holds the damaged object."""
        bad = e.object_id
        where = [
            "/".join(p)
            for p, en in entries
            if bad is not None
            and (
                en.id == bad
                or (
                    en.kind != KIND_CHUNKFILE
                    and self._store.has_object(en.id)
                    and any(c == bad for c, _ in self._store.file_chunks(en))
                )
            )
        ]
        return IntegrityError(
            f"{e} (file {where[0] if where else '?'} of dataset {self._rec.id})", bad
        )

    def _direct_fetch(self, entries: list[tuple[RelPath, Entry]]) -> FetchFn | None:
        """For a writable copy: a fetcher that reads content missing locally from the
        remote straight into the files (half the writes of fetching into the store
        first; nothing is kept in the store). None when everything is local, there is
        no remote, or a file is too large to hold in memory (then the store path runs).
        """
        missing = self._store.missing_content(e for _, e in entries)
        if not missing or any(e.size > DIRECT_FETCH_MAX for e in missing):
            return None
        rec = self._rec
        remote = remote_for(self._store, rec.remote or rec.output_uri)
        if remote is None:
            return None
        remote.fetch_blobs(missing)
        return lambda ids: remote.read_chunks(ids)

    def get_local_copy(
        self,
        use_soft_links: bool | None = None,
        part: int | None = None,
        num_parts: int | None = None,
        raise_on_error: bool = True,
        max_workers: int | None = None,
        files: str | Sequence[str] | None = None,
    ) -> str:
        """A read-only folder with the version's files, in the cache under DSVC_HOME.

        Built once (atomically, safe across processes) and reused; identical files of
        different versions share disk through hard links.
        """
        # a draft raises whatever raise_on_error says, as in ClearML (dataset.py:1116)
        rec = self._refresh()
        if rec.status not in reg.COMPLETED_STATES:
            raise StateError(
                f"dataset {rec.project}/{rec.name} ({rec.id}) is not finalized",
                remedy=Remedy(
                    "finalize it first, or use get_mutable_local_copy() for a draft",
                    "close it first (`dsvc close`), or use `dsvc get --copy DIR` for a draft",
                ),
            )
        try:
            layout = CacheLayout(self._store.home)
            name = layout.copy_name(rec.id, _as_list(files), part, num_parts)
            target = layout.copy_path(name)
            cache = layout.content_cache()
            if target.is_dir():
                # a stat per file against the copy's manifest; changed or missing files
                # (an in-place write as root reaches every hard link) come from the store
                serve_copy(
                    self._store,
                    cache,
                    name,
                    lambda: self._resolve_links(self._selected(part, num_parts, files), max_workers),
                    lambda es: self._ensure_content(es, max_workers),
                )
                return str(target)
            if not files and part is None and num_parts is None:
                # the whole version: folder by folder, memory bounded by a folder
                with Progress(f"copy {rec.name}", self._total_size(rec), enabled=True) as bar:
                    build_copy(
                        self._store,
                        rec.tree,
                        target,
                        content_cache=cache,
                        ensure_content=lambda es: self._ensure_content(es, max_workers),
                        resolve=lambda es: self._resolve_links(es, max_workers),
                        max_workers=max_workers,
                        progress=bar.update,
                        base=self._materialized_parent(rec, layout),
                    )
                return str(target)
            # a part or a selection: batch by batch from a lazy listing
            entries, total = self._iter_selected(part, num_parts, files)

            def local(
                batch: list[tuple[RelPath, Entry]],
            ) -> tuple[list[tuple[RelPath, Entry]], None]:
                batch = self._resolve_links(batch, max_workers)
                self._ensure_content(batch, max_workers)
                return batch, None

            with Progress(f"copy {rec.name}", total, enabled=True) as bar:
                materialize_shared(
                    self._store,
                    entries,
                    target,
                    content_cache=cache,
                    max_workers=max_workers,
                    progress=bar.update,
                    prepare=local,
                )
            return str(target)
        except DsvcError:
            if raise_on_error:
                raise
            return ""

    def _materialized_parent(self, rec: Record, layout: CacheLayout) -> tuple[bytes, str] | None:
        """``(tree, path)`` of a parent version's complete cached copy, if one is there: a
        child's copy links its unchanged files from it (``build_copy``'s ``base``)."""
        for pid in rec.parents:
            path = layout.copy_path(pid)
            parent = reg.get(self._store, pid) if path.is_dir() else None
            if parent is not None:
                return parent.tree, str(path)
        return None

    def _total_size(self, rec: Record) -> int:
        """The bytes of a version's files (a folder entry carries its total size)."""
        return sum(e.size for e in self._trees().get(rec.tree).values())

    def open(self, path: str, mode: str = "rb") -> IO[Any]:
        """Open one file of this version for reading, without a local copy.

        Reads fetch only the chunks they touch (local store first, else ranged reads from
        the remote, each chunk verified and kept in the store); see docs/streaming.md.
        ``mode`` is ``"rb"`` (a seekable binary file) or ``"r"`` (UTF-8 text).
        """
        text = open_mode(mode)
        rec = self._refresh()
        reader = self._stream_reader(rec)
        e = reader.lookup(rec.tree, clean_path(path))
        if e is None or e.kind == KIND_TREE:
            what = "is a folder" if e is not None else "does not exist"
            raise NotFoundError(
                f"dataset {rec.id}: file {path!r} {what}; list the files with list_files()"
            )
        f = reader.open(e, path)
        # a DsvcFile is a binary file object (io.BufferedIOBase), which typeshed does not
        # count as an IO[bytes]
        return cast(IO[Any], io.TextIOWrapper(f, encoding="utf-8") if text else f)

    def read_bytes(self, path: str) -> bytes:
        """The content of one file of this version (see :meth:`open`)."""
        with self.open(path, "rb") as f:
            return f.read()

    def _stream_reader(self, rec: Record) -> Reader:
        r = getattr(self, "_reader", None)
        if r is None:
            spec = rec.remote or rec.output_uri
            r = self._reader = Reader(self._store.home, spec, store=self._store)
        return r

    def get_mutable_local_copy(
        self,
        target_folder: str | os.PathLike[str],
        overwrite: bool = False,
        part: int | None = None,
        num_parts: int | None = None,
        raise_on_error: bool = True,
        max_workers: int | None = None,
    ) -> str | None:
        """Independent, writable files in ``target_folder`` (drafts allowed)."""
        try:
            target = os.path.abspath(os.path.expanduser(os.fspath(target_folder)))
            refuse_store_overlap(self._store, target)  # before anything is fetched or moved
            if os.path.isdir(target) and os.listdir(target) and not overwrite:
                raise StateError(
                    f"target folder {target!r} already contains files", remedy=OVERWRITE
                )
            self._refresh()
            # batch by batch from a lazy listing: memory holds one batch of files
            entries, total = self._iter_selected(part, num_parts, None)
            current: list[tuple[RelPath, Entry]] = []

            def prepare(
                batch: list[tuple[RelPath, Entry]],
            ) -> tuple[list[tuple[RelPath, Entry]], FetchFn | None]:
                batch = self._resolve_links(batch, max_workers)
                current[:] = batch  # an IntegrityError names its file from these
                fetch = self._direct_fetch(batch)
                if fetch is None:
                    self._ensure_content(batch, max_workers)
                return batch, fetch

            with Progress(f"copy {self._rec.name}", total, enabled=True) as bar:
                try:
                    materialize(
                        self._store,
                        entries,
                        target,
                        overwrite=overwrite,
                        max_workers=max_workers,
                        progress=bar.update,
                        prepare=prepare,
                    )
                except IntegrityError as e:
                    raise self._name_bad_file(e, current) from None
            return target
        except DsvcError:
            if raise_on_error:
                raise
            return None

    def verify_dataset_hash(
        self, local_copy_path: str | None = None, skip_hash: bool = False, verbose: bool = False
    ) -> list[str]:
        """Paths whose file in ``local_copy_path`` (default: the cached copy) is missing,
        has the wrong size or (unless ``skip_hash``) the wrong content."""
        root = local_copy_path or self.get_local_copy()
        bad = []
        chunker = self._store.chunker
        files = self._files()
        resolved = self._resolve_links([(tuple(p.split("/")), e) for p, e in files.items()], None)
        for path, e in zip(files, (e for _, e in resolved), strict=True):
            full = os.path.join(root, *path.split("/"))
            try:
                size = os.path.getsize(full)
            except OSError:
                bad.append(path)
                continue
            if size != e.size:
                bad.append(path)
                continue
            if skip_hash:
                continue
            with open(full, "rb") as f:
                fid = content_id(chunker, f)
            if fid != e.id:
                bad.append(path)
        if verbose:
            for p in bad:
                print(f"mismatch: {p}")
        return bad

    # -- squash ----------------------------------------------------------------------

    @classmethod
    @_leased("squash")
    def squash(
        cls,
        dataset_name: str,
        dataset_ids: Sequence[str | Dataset] | None = None,
        dataset_project_name_pairs: Sequence[tuple[str, str]] | None = None,
        output_url: str | None = None,
        close_squashed_dataset: bool = True,
    ) -> Dataset:
        """A new parentless version: the in-order merge of the full content of each
        listed version. Writes trees and one commit; copies no file content.

        With ``close_squashed_dataset=False`` the result stays a draft (nothing uploaded
        or finalized), as in ClearML.
        """
        store = _store()
        ids = [_id_of(d) for d in dataset_ids] if dataset_ids else None
        found = squash_sources(store, ids, dataset_project_name_pairs)
        if not dataset_name:
            raise UsageError("Dataset.squash needs a non-empty dataset_name")
        for r in found:
            if r.status not in reg.COMPLETED_STATES:
                raise StateError(f"squash: dataset {r.id} is not finalized")
        trees = Trees(store)
        with store.batch() as b:
            trees.batch = b
            root = squash_tree(trees, found, finalized_last_parent(store))
        ds = cls.create(
            dataset_name=dataset_name, dataset_project=found[0].project, output_uri=output_url
        )
        squashed_from = [r.id for r in found]
        ds._update(
            lambda r: r.replace(
                tree=root, base_tree=trees.ensure_empty(), squashed_from=squashed_from
            )
        )
        if not close_squashed_dataset:
            return ds
        if output_url is not None:
            ds.upload(output_url=output_url)
        else:
            ds._update(lambda r: r.replace(uploaded_tree=root))
        ds.finalize()
        return ds

    # -- helpers ---------------------------------------------------------------------

    def _require_draft(self) -> Record:
        r = self._refresh()
        if r.status != reg.DRAFT:
            raise StateError(
                f"dataset {r.project}/{r.name} ({r.id}) is finalized and cannot be "
                "modified",
                remedy=child_remedy(r.id),
            )
        if r.finalizing:
            raise StateError(_frozen_message(r))
        return r


# -- module helpers --------------------------------------------------------------------



def _frozen_message(r: Record) -> str:
    return (
        f"dataset {r.project}/{r.name} ({r.id}) is being finalized (a finalize() "
        "started, and may have been interrupted), so its content can no longer change; call "
        "finalize() to complete it, then add to a child version"
    )



def _is_ndarray(v: Any) -> bool:
    """A numpy array, recognised without importing numpy when the caller did not."""
    return type(v).__module__ == "numpy" and type(v).__name__ == "ndarray"
