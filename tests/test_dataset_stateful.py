"""Stateful test of the Dataset API against a plain model (``dict[path] -> bytes``).

Random sequences of create (0-3 parents), add_files (with dataset_path and wildcards),
remove_files (wildcards), sync_folder, upload/finalize, squash, writable_copy,
get_local_copy and get_mutable_local_copy. Every materialized folder is compared byte
for byte with the model; listings and returned counts are checked on the way.

Paths come from a tiny alphabet in which ``x`` is both a file name and a folder name,
so overwrites, equal contents and file/folder conflicts happen often. The merge oracle
(tests/dataset_helpers.py) states treeops' rule independently: later overrides earlier
path by path, and where a file meets a folder the later side's kind wins the whole name.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataset_helpers import (
    Model,
    is_read_only_tree,
    merge_models,
    model_set,
    read_tree,
    remove_match,
    write_tree,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dsvc.dataset import Dataset

NAMES = ["x", "y.c", "a"]
CONTENTS = [b"", b"1", b"22", b"hello world\n" * 20]
contents = st.one_of(st.sampled_from(CONTENTS), st.binary(max_size=48))
rel_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
folders = st.dictionaries(rel_paths, contents, max_size=5)
prefixes = st.sampled_from([None, "x", "a", "/a/x"])
patterns = st.sampled_from(["*.c", "x", "a/*", "*", "a/x", "/x", "nomatch*", "y.c", "x/", "*/x"])
index = st.integers(min_value=0, max_value=10_000)


def consistent(files: dict[str, bytes]) -> Model:
    """Drop file/folder conflicts (a file and a folder cannot share a name on disk)."""
    out: Model = {}
    for p, data in files.items():
        model_set(out, p, data)
    return out


def with_prefix(prefix: str | None, rel: str) -> str:
    pre = "/".join(x for x in (prefix or "").split("/") if x)
    return f"{pre}/{rel}" if pre else rel


def under(model: Model, prefix: str | None) -> Model:
    pre = "/".join(x for x in (prefix or "").split("/") if x)
    if not pre:
        return dict(model)
    return {k[len(pre) + 1 :]: v for k, v in model.items() if k.startswith(pre + "/")}


def make_machine(base: Path) -> type[RuleBasedStateMachine]:
    counter = itertools.count()

    class DatasetMachine(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.drafts: list[tuple[Dataset, Model, Model]] = []  # (ds, model, base model)
            self.finals: list[tuple[Dataset, Model]] = []

        def fresh(self) -> Path:
            return base / f"src{next(counter)}"

        # -- creating ------------------------------------------------------------

        @rule(parents=st.lists(index, max_size=3), name=st.sampled_from(["d1", "d2"]))
        def create(self, parents: list[int], name: str) -> None:
            chosen = [self.finals[i % len(self.finals)] for i in parents] if self.finals else []
            ds = Dataset.create(
                dataset_name=name,
                dataset_project=None if chosen else "proj",
                parent_datasets=[d for d, _ in chosen],
            )
            model = merge_models(m for _, m in chosen)
            assert ds.list_files() == sorted(model)
            assert ds.project == (chosen[-1][0].project if chosen else "proj")
            self.drafts.append((ds, model, dict(model)))

        @precondition(lambda self: self.finals)
        @rule(i=index)
        def writable_copy(self, i: int) -> None:
            src, model = self.finals[i % len(self.finals)]
            ds = Dataset.get(dataset_id=src.id, writable_copy=True)
            assert ds.id != src.id and not ds.is_final()
            assert ds.get_dependency_graph()[ds.id] == [src.id]
            self.drafts.append((ds, dict(model), dict(model)))

        @precondition(lambda self: self.finals)
        @rule(picks=st.lists(index, min_size=1, max_size=3))
        def squash(self, picks: list[int]) -> None:
            chosen = [self.finals[i % len(self.finals)] for i in picks]
            ds = Dataset.squash("squashed", dataset_ids=[d.id for d, _ in chosen])
            model = merge_models(m for _, m in chosen)
            assert ds.is_final()
            assert ds.get_dependency_graph() == {ds.id: []}
            assert ds.project == chosen[0][0].project
            assert ds.list_files() == sorted(model)
            self.finals.append((ds, model))

        # -- editing drafts ------------------------------------------------------

        @precondition(lambda self: self.drafts)
        @rule(
            i=index,
            files=folders,
            prefix=prefixes,
            wildcard=st.sampled_from([None, "*.c", ["x", "a/*"]]),
            recursive=st.booleans(),
        )
        def add_files(
            self,
            i: int,
            files: dict[str, bytes],
            prefix: str | None,
            wildcard: str | list[str] | None,
            recursive: bool,
        ) -> None:
            ds, model, base_model = self.drafts[i % len(self.drafts)]
            files = consistent(files)
            src = write_tree(self.fresh(), files)
            n = ds.add_files(src, wildcard=wildcard, dataset_path=prefix, recursive=recursive)
            picked = {p: v for p, v in files.items() if _wild(p, wildcard, recursive)}
            # ClearML's count: new paths, plus unchanged files this (never uploaded) draft
            # added itself; modified files are not counted
            expected = 0
            for rel, data in picked.items():
                path = with_prefix(prefix, rel)
                if path not in model or (model[path] == data and base_model.get(path) != data):
                    expected += 1
            for rel, data in picked.items():
                model_set(model, with_prefix(prefix, rel), data)
            assert n == expected
            assert ds.list_files() == sorted(model)

        @precondition(lambda self: self.drafts)
        @rule(i=index, pattern=patterns, recursive=st.booleans())
        def remove_files(self, i: int, pattern: str, recursive: bool) -> None:
            ds, model, _ = self.drafts[i % len(self.drafts)]
            doomed = [p for p in model if remove_match(p, pattern, recursive)]
            assert ds.remove_files(pattern, recursive=recursive) == len(doomed)
            for p in doomed:
                del model[p]
            assert ds.list_files() == sorted(model)

        @precondition(lambda self: self.drafts)
        @rule(i=index, files=folders, prefix=st.sampled_from([None, "x", "a"]))
        def sync_folder(self, i: int, files: dict[str, bytes], prefix: str | None) -> None:
            ds, model, _ = self.drafts[i % len(self.drafts)]
            files = consistent(files)
            src = write_tree(self.fresh(), files)
            if prefix and prefix in model:  # a file where the folder goes: it is replaced
                expected = (1, len(files), 0)
                del model[prefix]
            else:
                old = under(model, prefix)
                expected = (
                    len(old.keys() - files.keys()),
                    len(files.keys() - old.keys()),
                    sum(1 for k in old.keys() & files.keys() if old[k] != files[k]),
                )
                for k in old:
                    del model[with_prefix(prefix, k)]
            for rel, data in files.items():
                model_set(model, with_prefix(prefix, rel), data)
            assert ds.sync_folder(src, dataset_path=prefix) == expected
            assert ds.list_files() == sorted(model)

        @precondition(lambda self: self.drafts)
        @rule(i=index, upload=st.booleans())
        def finalize(self, i: int, upload: bool) -> None:
            ds, model, base_model = self.drafts.pop(i % len(self.drafts))
            assert sorted(ds.list_added_files()) == sorted(model.keys() - base_model.keys())
            assert sorted(ds.list_removed_files()) == sorted(base_model.keys() - model.keys())
            assert sorted(ds.list_modified_files()) == sorted(
                k for k in model.keys() & base_model.keys() if model[k] != base_model[k]
            )
            if upload:
                ds.upload()
                assert not ds.is_dirty()
            assert ds.finalize() is True
            assert ds.is_final()
            self.finals.append((ds, model))

        # -- reading ---------------------------------------------------------------

        @precondition(lambda self: self.finals)
        @rule(i=index)
        def get_local_copy(self, i: int) -> None:
            ds, model = self.finals[i % len(self.finals)]
            path = ds.get_local_copy()
            assert read_tree(path) == model
            assert is_read_only_tree(path)
            assert ds.get_local_copy() == path
            assert ds.verify_dataset_hash() == []

        @precondition(lambda self: self.drafts or self.finals)
        @rule(i=index)
        def get_mutable_local_copy(self, i: int) -> None:
            both = [(d, m) for d, m, _ in self.drafts] + self.finals
            ds, model = both[i % len(both)]
            target = self.fresh()
            assert ds.get_mutable_local_copy(target) == str(target)
            assert read_tree(target) == model
            assert ds.verify_dataset_hash(local_copy_path=str(target)) == []

        @invariant()
        def newest_draft_matches(self) -> None:
            if getattr(self, "drafts", None):
                ds, model, _ = self.drafts[-1]
                entries = ds.file_entries_dict
                assert sorted(entries) == sorted(model)
                assert all(entries[p].size == len(model[p]) for p in model)

    return DatasetMachine


def _wild(rel: str, wildcard: str | list[str] | None, recursive: bool) -> bool:
    """add_files' wildcard rule (pathlib rglob/glob): see dsvc.ingest.matches_wildcard."""
    import fnmatch

    if wildcard is None:
        return recursive or "/" not in rel
    parts = rel.split("/")
    for pat in [wildcard] if isinstance(wildcard, str) else wildcard:
        pp = pat.split("/")
        k = len(pp)
        tail = parts[-k:] if recursive else parts
        if len(tail) == k and len(parts) >= k and all(map(fnmatch.fnmatchcase, tail, pp)):
            return True
    return False


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A tmp dir on tmpfs when there is one: the store fsyncs every commit, which is
    most of this test's wall time on a disk (semantics are the same either way)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="dsvc-stateful-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_dataset_api_against_model(fast_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSVC_HOME", str(fast_tmp / "home"))
    machine = make_machine(fast_tmp / "work")
    os.makedirs(fast_tmp / "work", exist_ok=True)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(os.environ.get("DSVC_STATEFUL_EXAMPLES", "100")),
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
