"""The docs cannot drift: links, quoted files and quoted constants are checked against the code."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from dsvc import codec, record
from dsvc.chunker import DEFAULT_PARAMS

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A quoted repository path: `dsvc/store.py`, `tests/test_store.py`, `benchmarks/x.py`, `docs/x.md`.
QUOTED_PATH = re.compile(r"`((?:dsvc|tests|benchmarks|docs)/[\w./-]+\.(?:py|md))`")
# A bare test module name as the invariant lists quote them: `test_store.py`.
QUOTED_TEST = re.compile(r"`(test_\w+\.py)(?:::\w+)?`")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
        assert resolved.exists(), f"{doc.name} links to a missing file: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_quoted_files_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = [p for p in QUOTED_PATH.findall(text) if not (REPO / p).exists()]
    missing += [t for t in QUOTED_TEST.findall(text) if not (REPO / "tests" / t).exists()]
    assert not missing, f"{doc.name} quotes files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_no_reference_to_the_design_note_outside_the_repo(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text, f"{doc.name}: the design lives in docs/design.md"
    assert "../shared" not in text, f"{doc.name} points outside the repository"


def test_code_cites_docs_that_exist() -> None:
    for src in (REPO / "dsvc").rglob("*.py"):
        text = src.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text, f"{src}: cite docs/design.md"
        for ref in re.findall(r"docs/[\w-]+\.md", text):
            assert (REPO / ref).exists(), f"{src} cites {ref}, which does not exist"


def _kib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def test_format_doc_states_the_chunker_defaults_of_the_code() -> None:
    text = (REPO / "docs" / "format.md").read_text(encoding="utf-8")
    p = DEFAULT_PARAMS
    quoted = (
        f"min {_kib(p.min_size)}, avg {_kib(p.avg_size)}, max {_kib(p.max_size)}, "
        f"normalization {p.normalization}"
    )
    assert quoted in " ".join(text.split()), f"docs/format.md must say: {quoted}"


def test_format_doc_states_the_codec_constants_of_the_code() -> None:
    text = " ".join((REPO / "docs" / "format.md").read_text(encoding="utf-8").split())
    assert f"MIN_SAVING = {codec.MIN_SAVING}" in text
    assert f"(default {codec.DEFAULT_LEVEL})" in text
    assert f"`0x{codec.RAW:02x}` | raw" in text
    assert f"`0x{codec.ZSTD:02x}` | zstd" in text


def _record_table() -> dict[str, dict[str, str]]:
    """docs/format.md §8's field table: field -> {since, type, required, owner, meaning}."""
    text = (REPO / "docs" / "format.md").read_text(encoding="utf-8")
    head = f"## 8. Dataset records (record version {record.RECORD_VERSION})"
    assert head in text, f"docs/format.md must have: {head}"
    section = text.split(head, 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    out = {}
    for ln in rows:
        cells = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        name, since, typ, required, owner, meaning = cells
        out[name.strip("`")] = {
            "since": since,
            "type": typ,
            "required": required,
            "owner": owner,
            "meaning": meaning,
        }
    return out


def test_format_doc_lists_every_record_field_of_the_code() -> None:
    table = _record_table()
    assert sorted(table) == sorted(record.FIELDS)  # the same fields
    for name, (_check, default) in record.FIELDS.items():
        row = table[name]
        assert (row["required"] == "yes") == (default is record.REQUIRED), name
        assert 1 <= int(row["since"]) <= record.RECORD_VERSION, name
    assert {n for n, r in table.items() if r["owner"] == "local"} == set(record.LOCAL_FIELDS)
    assert {n for n, r in table.items() if r["owner"].endswith("meta")} == set(
        record.META_FIELDS
    )
    # and the dataclass has exactly these fields (plus `extra`, the unknown ones)
    names = [f.name for f in dataclasses.fields(record.Record)]
    assert sorted(names) == sorted([*record.FIELDS, "extra"])


ARCH = REPO / "docs" / "architecture.md"
# `test_x.py::test_name` as the docs quote tests
QUOTED_TEST_NAME = re.compile(r"`(test_\w+\.py)::(\w+)`")


def _test_functions(test_file: Path) -> set[str]:
    tree = ast.parse(test_file.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_quoted_test_names_exist(doc: Path) -> None:
    """A doc that names a test (`test_x.py::test_name`) names one that exists."""
    text = doc.read_text(encoding="utf-8")
    missing = [
        f"{f}::{name}"
        for f, name in QUOTED_TEST_NAME.findall(text)
        if not (REPO / "tests" / f).exists()
        or name not in _test_functions(REPO / "tests" / f)
    ]
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


def _invariants() -> dict[int, str]:
    text = ARCH.read_text(encoding="utf-8")
    section = text.split("\n## Invariants\n", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n(?=\d+\. )", section)
    return {int(i.split(".", 1)[0]): i for i in items if re.match(r"\d+\. ", i)}


def test_every_invariant_names_a_test_that_exists() -> None:
    inv = _invariants()
    assert sorted(inv) == list(range(1, len(inv) + 1)) and len(inv) >= 23
    all_tests = {
        name for f in (REPO / "tests").glob("test_*.py") for name in _test_functions(f)
    }
    for n, text in inv.items():
        named = set(re.findall(r"`(?:test_\w+\.py::)?(test_\w+)`", text))
        files = re.findall(r"`(test_\w+\.py)`", text)
        assert named or files, f"invariant {n} of docs/architecture.md names no test"
        assert named <= all_tests, f"invariant {n} names missing tests: {named - all_tests}"


def _table_modules() -> dict[str, str]:
    """docs/architecture.md's layer table: module -> layer (remote/ files spelled out)."""
    text = ARCH.read_text(encoding="utf-8")
    out = {}
    for line in text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "---"):
            continue
        for name in re.findall(r"`([\w/.]+)`", cells[1]):
            out[name] = cells[0]
    return out


def test_architecture_layer_table_matches_the_code_and_the_layer_test() -> None:
    """Every module in the table exists, every dsvc module is in it, in the layer that
    tests/test_layers.py enforces."""
    import test_layers

    table = _table_modules()
    for name in table:
        path = REPO / "dsvc" / name
        if not path.exists() and not name.startswith("remote/"):
            path = REPO / "dsvc" / "remote" / name  # `fetch.py` after `remote/repo.py`
        assert path.exists() or (REPO / "dsvc" / "remote" / name).exists(), name
    listed = {n.split("/")[-1] if n.startswith("remote/") else n for n in table}
    for src in sorted((REPO / "dsvc").glob("*.py")):
        assert src.name in listed, f"docs/architecture.md's layer table misses dsvc/{src.name}"
        module = "dsvc" if src.stem == "__init__" else f"dsvc.{src.stem}"
        assert table[src.name] == test_layers.layer_of(module), src.name
    for src in sorted((REPO / "dsvc" / "remote").glob("*.py")):
        if src.name != "__init__.py":
            assert src.name in listed, f"the layer table misses dsvc/remote/{src.name}"
            assert test_layers.layer_of(f"dsvc.remote.{src.stem}") == "transport"
    assert table["cli/"] == "face" and (REPO / "dsvc" / "cli").is_dir()
