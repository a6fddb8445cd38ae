"""Which files a dataset call means: dataset-path matching, rebasing local paths, and
the deterministic split of a file list into parts (``part``/``num_parts``).

The matching rules are ClearML's and are written out with examples in docs/matching.md.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator

from dsvc.errors import InvalidPathError, UsageError
from dsvc.objects import Entry, split_path

RelPath = tuple[str, ...]


def match_dataset_path(path: str, pattern: str, recursive: bool) -> bool:
    """ClearML's dataset-path matching (``matches_any_wildcard``; see docs/matching.md).

    Besides ClearML's rule, a pattern naming a file or a folder exactly matches that file
    or everything below that folder (``data`` and ``data/`` both match ``data/a/x.jpg``).

    * recursive: the pattern is split at its last ``/`` into a folder part and a file
      part; the path must match ``<folder part>*`` and end with ``/<file part>`` (``*``
      crosses ``/``): ``*.csv`` matches every CSV at any depth, ``data/*.jpg`` matches
      ``data/sub/x.jpg``, ``x.csv`` matches ``a/b/x.csv``.
    * not recursive: the path and the pattern must have the same number of components,
      each matched by ``fnmatch`` (``*.csv`` matches top-level CSVs only).
    """
    if path == pattern or path.startswith(pattern.rstrip("/") + "/"):
        return True
    if recursive:
        file_part = pattern.rsplit("/", 1)[-1]
        dir_part = pattern[: len(pattern) - len(file_part)] + "*"
        return bool(file_part) and (
            fnmatch.fnmatchcase(path, dir_part)
            and fnmatch.fnmatchcase("/" + path, "*/" + file_part)
        )
    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


def collision_message(
    clashes: list[tuple[RelPath, str, str]], shown: int = 10, total: int | None = None
) -> str:
    """One warning naming the colliding files (the first ``shown`` of them); ``total``:
    how many there are, when ``clashes`` lists only the first ones."""
    total = len(clashes) if total is None else total
    lines = [f"  {'/'.join(p)}: {old} replaced by {new}" for p, old, new in clashes[:shown]]
    if total > shown:
        lines.append(f"  ... and {total - shown} more")
    return (
        f"{total} file(s) replaced files of the same dataset path added earlier "
        "from elsewhere (add them under different dataset paths, e.g. --dataset-folder, "
        "to keep both):\n" + "\n".join(lines)
    )


def split_parts(
    entries: list[tuple[RelPath, Entry]], part: int | None, num_parts: int | None
) -> list[tuple[RelPath, Entry]]:
    """Part ``part`` (0-based) of ``num_parts`` contiguous slices balanced by bytes.

    Deterministic: files are in canonical order; a file goes to the part in which the
    midpoint of its byte range falls, so every file lands in exactly one part.
    """
    total = sum(e.size for _, e in entries)
    return list(iter_part(entries, total, len(entries), part, num_parts))


def iter_part(
    entries: Iterable[tuple[RelPath, Entry]],
    total: int,
    count: int,
    part: int | None,
    num_parts: int | None,
) -> Iterator[tuple[RelPath, Entry]]:
    """:func:`split_parts` of a lazy listing whose byte ``total`` and file ``count`` are
    known (``count`` is used only when ``total`` is 0): memory holds no listing."""
    if num_parts is None or part is None:
        raise UsageError("part and num_parts go together (part counts from 0)")
    if num_parts < 1 or not 0 <= part < num_parts:
        raise UsageError(f"part must be in 0..{num_parts - 1}, got {part}")
    acc = 0
    for i, (p, e) in enumerate(entries):
        # by byte midpoint; a dataset of only empty files is split by count
        k = int((acc + e.size / 2) * num_parts / total) if total else i * num_parts // count
        acc += e.size
        if min(k, num_parts - 1) == part:
            yield p, e


def clean_dataset_path(dataset_path: str | None) -> RelPath:
    """Validate a path inside a dataset; a leading ``/`` means the dataset root."""
    if not dataset_path:
        return ()
    try:
        return split_path(str(dataset_path))
    except InvalidPathError as e:
        raise InvalidPathError(
            f"dataset_path {dataset_path!r} is not allowed ({e}); use a path relative to "
            "the dataset root without '..'"
        ) from None
