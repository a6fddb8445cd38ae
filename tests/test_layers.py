"""The layering rule of docs/architecture.md: each module imports only layers below it."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "dsvc"

LAYERS = {
    "model": 0,
    "store": 1,
    "transport": 2,
    "work": 3,
    "dataset": 4,
    "face": 5,
}

MODULES = {
    "dsvc": "face",
    "dsvc.__main__": "face",
    "dsvc.cli": "face",
    "dsvc.demo": "face",
    "dsvc.compat": "face",
    "dsvc.fs": "face",
    "dsvc.torch": "face",
    "dsvc.dataset": "dataset",
    "dsvc.registry": "dataset",
    "dsvc.maintenance": "dataset",
    "dsvc.lookup": "dataset",
    "dsvc.catalog": "dataset",
    "dsvc.selection": "dataset",
    "dsvc.stream": "dataset",
    "dsvc.reports": "dataset",
    "dsvc.finalize": "dataset",
    "dsvc.usage": "dataset",
    "dsvc.ingest": "work",
    "dsvc.external": "work",
    "dsvc.checkout": "work",
    "dsvc.treeops": "work",
    "dsvc.graft": "work",
    "dsvc.remote": "transport",
    "dsvc.store": "store",
    "dsvc.storecheck": "store",
    "dsvc.packfile": "store",
    "dsvc.directio": "store",
    "dsvc.ids": "model",
    "dsvc.chunker": "model",
    "dsvc.codec": "model",
    "dsvc.objects": "model",
    "dsvc.walk": "model",
    "dsvc.retry": "model",
    "dsvc.record": "model",
    "dsvc.errors": "model",
    "dsvc.faultpoints": "model",
    "dsvc.progress": "model",
    "dsvc.parallel": "model",
    "dsvc.fsbatch": "model",
    "dsvc._fsbatch": "model",
    "dsvc._treerows": "model",
    "dsvc.native": "model",
    "dsvc.libc": "model",
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in MODULES:
            return MODULES[name]
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsvc"):
            out.add(node.module)
            for alias in node.names:  # `from dsvc import codec` imports dsvc.codec
                sub = ROOT.parent / node.module.replace(".", "/") / alias.name
                if node.module == "dsvc" or sub.with_suffix(".py").exists() or sub.is_dir():
                    out.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("dsvc"))
    return out


FILES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_only_lower_layers(path: Path) -> None:
    me = module_name(path)
    mine = LAYERS[layer_of(me)]
    for imp in imports(path):
        if imp == "dsvc" or imp == me:
            continue
        theirs = LAYERS[layer_of(imp)]
        same_layer_ok = theirs == mine
        assert theirs < mine or same_layer_ok, f"{me} ({layer_of(me)}) imports {imp} ({layer_of(imp)})"


#: inside the transport layer, the remote protocol's modules build on each other in this
#: order (docs/architecture.md); a module imports only those of a lower rank
REMOTE_ORDER = {
    "dsvc.remote.options": 0,
    "dsvc.remote.backend": 1,
    "dsvc.remote.config": 1,
    "dsvc.remote.packs": 1,
    "dsvc.remote.repo": 2,
    "dsvc.remote.fetch": 3,
    "dsvc.remote.refs": 4,
    "dsvc.remote.push": 5,
    "dsvc.remote.gc": 5,
    "dsvc.remote.check": 5,
    "dsvc.remote.client": 6,
}


@pytest.mark.parametrize("module", sorted(REMOTE_ORDER))
def test_remote_modules_import_only_lower_ranks(module: str) -> None:
    path = ROOT.parent / (module.replace(".", "/") + ".py")
    for imp in imports(path):
        if imp in REMOTE_ORDER and imp != module:
            assert REMOTE_ORDER[imp] < REMOTE_ORDER[module], f"{module} imports {imp}"


def test_every_remote_module_has_a_rank() -> None:
    found = {module_name(p) for p in (ROOT / "remote").glob("*.py")} - {"dsvc.remote"}
    assert found == set(REMOTE_ORDER)


def test_every_module_has_a_layer() -> None:
    for path in FILES:
        layer_of(module_name(path))


#: modules of the store layer that may use LMDB and the Store's internals directly
STORE_INTERNALS = {"dsvc.store", "dsvc.storecheck", "dsvc.packfile"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_store_used_only_through_its_interface(path: Path) -> None:
    """Outside the store layer, nothing opens a raw LMDB transaction (``._begin``), a
    database by name (``.db(``) or LMDB itself: the store is used through
    ``Store.reader()`` and ``Store.batch()`` (issue 12)."""
    if module_name(path) in STORE_INTERNALS:
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("_begin", "db", "env", "_dbs"):
            raise AssertionError(f"{path.name}:{node.lineno} uses the store's .{node.attr}")
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.split(".")[0] == "lmdb"]
            assert not bad, f"{path.name}:{node.lineno} imports lmdb"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lmdb":
            raise AssertionError(f"{path.name}:{node.lineno} imports from lmdb")


def test_interface_rule_catches_a_raw_transaction(tmp_path: Path) -> None:
    """The rule above is not vacuous: a module reaching into the store fails it."""
    bad = ROOT / "_layers_probe.py"
    try:
        bad.write_text("import lmdb\n\ndef f(store):\n    return store._begin()\n")
        with pytest.raises(AssertionError):
            test_store_used_only_through_its_interface(bad)
        bad.write_text("def f(store):\n    return store.db('chunks')\n")
        with pytest.raises(AssertionError):
            test_store_used_only_through_its_interface(bad)
    finally:
        bad.unlink(missing_ok=True)


def test_the_command_line_starts_without_loading_the_library() -> None:
    """The function-level imports in ``dsvc/cli/`` are deliberate (cli/core.py): ``dsvc
    --help`` and shell completion load click and the record store, not the dataset, work
    or transport layers (obstore alone costs ~0.3 s)."""
    import subprocess
    import sys

    code = "import sys, dsvc.cli; print('\\n'.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    loaded = set(out)
    assert "dsvc.cli" in loaded and "dsvc.store" in loaded
    heavy = {"dsvc.dataset", "dsvc.ingest", "dsvc.checkout", "dsvc.lookup", "dsvc.remote"}
    heavy |= {"dsvc.maintenance", "dsvc.stream", "obstore", "numpy", "pandas", "fsspec"}
    heavy |= {"dsvc.progress", "tqdm"}  # tqdm alone: ~24 ms
    assert not loaded & heavy, sorted(loaded & heavy)
