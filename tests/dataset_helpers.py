"""Helpers for the Dataset API tests: writing folders, reading folders, a merge oracle.

The oracle is a plain ``dict[str path] -> bytes`` model of a dataset version; the
merge rule mirrors the one documented in dsvc/treeops.py (later overrides earlier path
by path; where one side has a file and the other a folder under the same name, the
later side's kind wins the whole name).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

Model = dict[str, bytes]


def write_tree(root: str | os.PathLike[str], files: Mapping[str, bytes]) -> Path:
    """Create ``root`` with exactly ``files`` (paths with ``/``) in it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def read_tree(root: str | os.PathLike[str]) -> Model:
    """Every regular file below ``root`` as ``{relative path: bytes}``."""
    out: Model = {}
    root = os.fspath(root)
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            with open(full, "rb") as f:
                out[rel] = f.read()
    return out


def is_read_only_tree(root: str | os.PathLike[str]) -> bool:
    """True when no file below ``root`` has a write permission bit."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            if os.stat(os.path.join(dirpath, n)).st_mode & (
                stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            ):
                return False
    return True


def _prefixes(path: str) -> Iterable[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def model_set(model: Model, path: str, data: bytes) -> None:
    """Set one file as the dataset layer does: a file replaces a folder of that name,
    and a file below a path that is a file replaces that file."""
    for pre in _prefixes(path):
        model.pop(pre, None)
    below = path + "/"
    for k in [k for k in model if k.startswith(below)]:
        del model[k]
    model[path] = data


def merge_models(models: Iterable[Model]) -> Model:
    """In-order merge of full contents; the later side wins path by path, and its kind
    (file or folder) wins the whole name where the two sides disagree."""
    out: Model = {}
    for m in models:
        for path, data in sorted(m.items()):
            model_set(out, path, data)
    return out


def remove_match(path: str, pattern: str, recursive: bool) -> bool:
    """Independent statement of the removal rule of docs/matching.md (ClearML's
    ``matches_any_wildcard`` plus: a pattern equal to a file or a folder matches it)."""
    import fnmatch

    pattern = pattern.lstrip("/")
    if path == pattern or path.startswith(pattern.rstrip("/") + "/"):
        return True
    if recursive:
        file_part = pattern.split("/")[-1]
        dir_part = pattern[: -len(file_part)] + "*" if file_part else None
        return (
            dir_part is not None
            and fnmatch.fnmatchcase(path, dir_part)
            and fnmatch.fnmatchcase("/" + path, "*/" + file_part)
        )
    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))
