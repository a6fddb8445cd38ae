"""The ``dsvc`` command line, driven through the installed entry point in subprocesses.

Covers the ClearML workflow (create -> add -> close -> search -> get -> create --parents
-> remove -> sync -> squash -> compare), the git-style one (init -> remote add -> push ->
clone into an empty store -> get), error paths with their exit codes, ``--json`` output,
``--help`` examples, and docs/cli.md against the click definitions.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_BIN = shutil.which("dsvc", path=str(Path(sys.executable).parent))
DSVC = [_BIN] if _BIN else [sys.executable, "-m", "dsvc"]

EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STATE, EXIT_INTEGRITY, EXIT_REMOTE = 2, 3, 4, 5, 6


def dsvc(
    home: Path | None,
    *args: str,
    rc: int | None = 0,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``dsvc ARGS`` with DSVC_HOME=home; assert the exit code when ``rc`` is not None."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    if home is not None:
        e["DSVC_HOME"] = str(home)
    e.update(env or {})
    p = subprocess.run([*DSVC, *args], capture_output=True, text=True, cwd=cwd, env=e, timeout=120)
    if rc is not None:
        assert p.returncode == rc, (
            f"dsvc {' '.join(args)} -> {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


def js(home: Path | None, *args: str, **kw: Any) -> Any:
    return json.loads(dsvc(home, *args, "--json", **kw).stdout)


def new_id(out: str) -> str:
    m = re.search(r"id=([0-9a-f]{32})", out)
    assert m, out
    return m.group(1)


def write(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("dsvc: error: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write(
        tmp_path / "data",
        {
            "a.csv": "x,y\n1,2\n",
            "b.bin": os.urandom(50_000),
            "sub/c.txt": "hello\n",
            "sub/deep/d.txt": "deep\n",
        },
    )


# -- the ClearML workflow -------------------------------------------------------------------


def test_clearml_workflow(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    # create -> add (several paths after one flag) -> close
    v1 = new_id(dsvc(home, "create", "--project", "p", "--name", "n", "--tags", "raw", "v1").stdout)
    out = dsvc(
        home, "add", "--files", str(data / "a.csv"), str(data / "b.bin"), str(data / "sub")
    ).stdout
    assert "4 files added" in out
    assert v1 in dsvc(home, "close").stdout

    # search
    found = js(home, "search", "--project", "p")
    assert [d["id"] for d in found] == [v1]
    assert found[0]["status"] == "completed" and found[0]["tags"] == ["raw", "v1"]
    assert js(home, "search", "--tags", "nope") == []

    # list: path, size, hash
    files = js(home, "list", "--id", v1)
    assert {f["path"]: f["size"] for f in files} == {
        "a.csv": 8,
        "b.bin": 50_000,
        "c.txt": 6,
        "deep/d.txt": 5,
    }
    assert all(re.fullmatch(r"[0-9a-f]{32}", f["hash"]) for f in files)

    # get: a writable copy, a link to the cached copy, parts
    dsvc(home, "get", "--id", v1[:8], "--copy", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "deep" / "d.txt").read_text() == "deep\n"
    dsvc(home, "get", "--copy", str(tmp_path / "copy"), rc=EXIT_STATE)  # not empty
    dsvc(home, "get", "--copy", str(tmp_path / "copy"), "--overwrite")
    link = tmp_path / "link"
    out = dsvc(home, "get", "--link", str(link)).stdout.strip()
    assert link.is_symlink() and Path(out) == link
    assert (link / "a.csv").read_text() == "x,y\n1,2\n"
    parts = [
        {
            f.relative_to(tmp_path / f"p{i}").as_posix()
            for f in (tmp_path / f"p{i}").rglob("*")
            if f.is_file()
        }
        for i in range(2)
        if dsvc(
            home, "get", "--part", str(i), "--num-parts", "2", "--copy", str(tmp_path / f"p{i}")
        )
    ]
    assert parts[0] | parts[1] == {f["path"] for f in files} and not parts[0] & parts[1]

    # create --parents (name and project inherited) -> remove -> close
    v2 = new_id(dsvc(home, "create", "--parents", v1).stdout)
    assert "2 files removed" in dsvc(home, "remove", "--files", "deep/*", "a.csv").stdout
    dsvc(home, "close")
    assert sorted(f["path"] for f in js(home, "list")) == ["b.bin", "c.txt"]

    # sync a changed folder into a new version; syncing it again changes nothing: reverted
    (data / "a.csv").write_text("x,y\n3,4\n")
    (data / "sub" / "c.txt").unlink()
    write(data, {"new/e.txt": "new\n"})
    out = dsvc(
        home, "sync", "--project", "p", "--name", "n", "--parents", v2, "--folder", str(data)
    ).stdout
    v3 = new_id(out.splitlines()[-1])
    changes = {f["path"]: f["status"] for f in js(home, "list", "--id", v3, "--modified")}
    assert changes == {
        "a.csv": "added",
        "c.txt": "removed",
        "new/e.txt": "added",
        "sub/deep/d.txt": "added",
    }
    out = dsvc(home, "sync", "--parents", v3, "--folder", str(data)).stdout
    assert "Zero modifications" in out
    assert len(js(home, "search", "--project", "p", "--not-only-completed")) == 3
    v3_files = {"a.csv", "b.bin", "new/e.txt", "sub/deep/d.txt"}
    assert {f["path"] for f in js(home, "list")} == v3_files  # last used is v3 again

    # squash (metadata only) and compare
    v4 = new_id(dsvc(home, "squash", "--name", "flat", "--ids", v1, v3).stdout)
    flat = {f["path"] for f in js(home, "list", "--id", v4)}
    assert flat == {"a.csv", "b.bin", "c.txt", "deep/d.txt", "sub/deep/d.txt", "new/e.txt"}
    cmp = js(home, "compare", "--source", v1, "--target", v3)
    assert (cmp["from"], cmp["to"]) == (v1, v3)  # the vocabulary of diff --json
    assert {c["path"] for c in cmp["added"]} == {"new/e.txt", "sub/deep/d.txt"}
    assert {c["path"] for c in cmp["removed"]} == {"c.txt", "deep/d.txt"}
    assert [c["path"] for c in cmp["modified"]] == ["a.csv"]
    human = dsvc(home, "compare", "--source", v1, "--target", v3).stdout
    assert f"{len(cmp['added'])} added, {len(cmp['removed'])} removed" in human

    # verify, diff against the folder, log, graph
    dsvc(home, "verify", "--id", v3)
    assert js(home, "diff", v3, str(data)) == {
        "from": v3,
        "to": str(data),
        "counts": {"added": 0, "removed": 0, "modified": 0},
        "added": [],
        "removed": [],
        "modified": [],
    }
    log = js(home, "log", "--id", v3)
    assert [r["id"] for r in log] == [v3, v2, v1]  # newest first
    text = dsvc(home, "graph", "--id", v3).stdout
    assert v3[:8] in text and v2[:8] in text and v1[:8] in text
    g = js(home, "graph", "--id", v4)
    assert {(e["parent"], e["kind"]) for e in g["edges"] if e["child"] == v4} == {
        (v1, "squash"),
        (v3, "squash"),
    }
    assert dsvc(home, "graph", "--id", v3, "--format", "dot").stdout.startswith("digraph")
    assert "-->" in dsvc(home, "graph", "--id", v3, "--format", "mermaid").stdout
    svg = tmp_path / "g.svg"
    dsvc(home, "graph", "--id", v3, "--format", "svg", "-o", str(svg))
    assert "<svg" in svg.read_text()

    # the rest of the verbs
    dsvc(home, "publish", "--id", v3)
    dsvc(home, "set-description", "--id", v3, "--description", "cleaned")
    assert js(home, "log", "--id", v3)[0]["description"] == "cleaned"
    dsvc(home, "rename", "--project", "p", "--name", "n", "--new-name", "m")
    dsvc(home, "move", "--project", "p", "--name", "m", "--new-project", "q")
    assert {d["name"] for d in js(home, "search", "--project", "q")} == {"m"}
    dsvc(home, "delete", "--id", v1, rc=EXIT_STATE)  # v2 uses it as parent
    dsvc(home, "delete", "--id", v4)
    assert v4 not in {d["id"] for d in js(home, "search")}


def test_quiet_prints_only_results_and_last_used(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    ds = dsvc(home, "-q", "create", "--project", "p", "--name", "n").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", ds)
    dsvc(home, "--quiet", "add", "--files", str(data))
    p = dsvc(home, "-q", "close")
    assert p.stderr == ""
    # --home works like DSVC_HOME, and -m dsvc runs the same CLI
    out = subprocess.run(
        [sys.executable, "-m", "dsvc", "--home", str(home), "search", "--json"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DSVC_")},
    )
    assert out.returncode == 0 and json.loads(out.stdout)[0]["id"] == ds


# -- the git-style workflow -----------------------------------------------------------------


def test_git_workflow(tmp_path: Path, data: Path) -> None:
    home, remote, clone = tmp_path / "a", tmp_path / "remote", tmp_path / "b"
    assert "Initialized empty dsvc store" in dsvc(None, "init", str(home)).stdout
    assert "Reinitialized" in dsvc(None, "init", str(home)).stdout
    v1 = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    dsvc(home, "add", "--files", str(data))
    dsvc(home, "close")
    v2 = new_id(dsvc(home, "create", "--parents", v1).stdout)
    dsvc(home, "add", "--files", str(write(tmp_path / "more", {"x.txt": "x\n"}) / "x.txt"))
    dsvc(home, "close")
    draft = new_id(dsvc(home, "create", "--project", "p", "--name", "draft").stdout)

    dsvc(home, "remote", "add", "origin", str(remote), "--init")
    remotes = js(home, "remote", "list")
    assert remotes == [{"name": "origin", "url": str(remote), "default": True, "options": {}}]
    dsvc(home, "push", "--id", draft, rc=EXIT_STATE)
    pushed = js(home, "push")
    assert len(pushed["datasets"]) == 2 and pushed["bytes"] > 50_000
    again = js(home, "push")
    assert again["bytes"] == 0 and again["objects"] == 0  # idempotent

    out = dsvc(None, "clone", str(remote), str(clone)).stdout
    assert "Cloned 2 datasets" in out
    dsvc(None, "clone", str(remote), str(clone), rc=EXIT_STATE)  # not empty any more
    assert {d["id"] for d in js(clone, "search")} == {v1, v2}
    assert [r["id"] for r in js(clone, "log", "--project", "p", "--name", "n")] == [v2, v1]
    got = tmp_path / "got"
    dsvc(clone, "get", "--project", "p", "--name", "n", "--version", "1.0.0", "--copy", str(got))
    assert same_tree(got, data)
    dsvc(clone, "verify", "--id", v1, "--folder", str(got))
    fetched = js(clone, "fetch")
    assert fetched["new"] == [] and sorted(fetched["datasets"]) == sorted([v1, v2])
    pulled = js(clone, "pull")
    assert set(pulled["datasets"]) == {v1, v2}
    assert js(clone, "fsck")["ok"] is True
    dsvc(clone, "remote", "set-default", "origin")
    dsvc(clone, "remote", "remove", "origin")
    assert js(clone, "remote", "list") == []
    # the content was pulled: the version is readable with no remote at all
    dsvc(clone, "get", "--id", v2, "--copy", str(tmp_path / "got2"))
    assert (tmp_path / "got2" / "x.txt").read_text() == "x\n"
    gc = js(home, "gc", "--remote", "origin", "--dry-run")
    assert gc["dry_run"] is True


def test_config_get_set(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dsvc(None, "init", str(home))  # reading settings never creates a store
    assert js(home, "config", "get", "chunker")["min_size"] > 0
    dsvc(home, "config", "set", "zstd_level", "3")
    assert dsvc(home, "config", "get", "zstd_level").stdout.strip() == "3"
    assert one_error_line(dsvc(home, "config", "set", "zstd_level", "x", rc=EXIT_USAGE))
    dsvc(home, "config", "set", "chunker", "{}", rc=EXIT_USAGE)  # fixed at creation
    dsvc(home, "config", "get", "nope", rc=EXIT_NOT_FOUND)


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    p = dsvc(None, "demo", "--workdir", str(tmp_path / "demo"), "--size-mb", "2")
    assert "identical to data/ byte for byte" in p.stdout
    assert re.search(r"\d+% deduplicated", p.stdout)
    # a non-empty folder that is not a demo folder is refused
    write(tmp_path / "busy", {"x": "x"})
    dsvc(None, "demo", "--workdir", str(tmp_path / "busy"), rc=EXIT_STATE)


# -- error paths ----------------------------------------------------------------------------


def test_error_exit_codes(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    # usage: unknown option, missing required option, no dataset to default to
    line = one_error_line(dsvc(home, "add", "--bogus", rc=EXIT_USAGE))
    assert "--bogus" in line and "dsvc add --help" in line
    one_error_line(dsvc(home, "add", rc=EXIT_USAGE))
    line = one_error_line(dsvc(home, "add", "--files", str(data), rc=EXIT_USAGE))
    assert "--id" in line
    one_error_line(dsvc(home, "create", "--name", "x", rc=EXIT_USAGE))
    one_error_line(dsvc(home, "nosuchcommand", rc=EXIT_USAGE))
    # not found
    line = one_error_line(dsvc(home, "list", "--id", "0" * 32, rc=EXIT_NOT_FOUND))
    assert "0" * 32 in line
    dsvc(home, "get", "--project", "nope", "--name", "nope", rc=EXIT_NOT_FOUND)
    # wrong state: modifying a finalized dataset, with the CLI's hint
    ds = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    dsvc(home, "add", "--files", str(data))
    dsvc(home, "close")
    line = one_error_line(dsvc(home, "add", "--files", str(data), rc=EXIT_STATE))
    assert f"dsvc create --parents {ds}" in line
    dsvc(home, "remove", "--id", ds, "--files", "a.csv", rc=EXIT_STATE)
    dsvc(home, "close", "--id", ds, rc=EXIT_STATE)
    # --debug adds the traceback
    p = dsvc(home, "--debug", "list", "--id", "0" * 32, rc=EXIT_NOT_FOUND)
    assert "Traceback" in p.stderr


def test_verify_mismatch_is_integrity(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    dsvc(home, "create", "--project", "p", "--name", "n")
    dsvc(home, "add", "--files", str(data))
    dsvc(home, "close")
    dsvc(home, "get", "--copy", str(tmp_path / "w"))
    (tmp_path / "w" / "a.csv").write_text("x,y\n9,9\n")
    p = dsvc(home, "verify", "--folder", str(tmp_path / "w"), rc=EXIT_INTEGRITY)
    assert "mismatch: a.csv" in p.stderr
    rep = js(home, "verify", "--folder", str(tmp_path / "w"), rc=EXIT_INTEGRITY)
    assert rep["ok"] is False and rep["mismatches"] == ["a.csv"] and rep["files"] == 4


def test_delete_then_gc_reclaims_space(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = write(tmp_path / "src", {"only-here.bin": os.urandom(30_000)})
    ds = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    dsvc(home, "add", "--files", str(src))
    dsvc(home, "close")
    assert js(home, "gc", "--dry-run")["chunks_deleted"] == 0
    dsvc(home, "delete", "--id", ds)
    dry = js(home, "gc", "--dry-run")
    assert dry["dry_run"] is True and dry["chunks_deleted"] >= 1
    assert js(home, "fsck")["chunks"] >= 1  # nothing deleted by the dry run
    assert js(home, "gc")["chunks_deleted"] == dry["chunks_deleted"]
    assert js(home, "fsck")["chunks"] == 0


def test_fsck_finds_a_corrupted_byte(tmp_path: Path) -> None:
    home = tmp_path / "home"
    payload = os.urandom(40_000)  # incompressible: stored raw, so findable in the file
    src = write(tmp_path / "src", {"blob.bin": payload})
    dsvc(home, "create", "--project", "p", "--name", "n")
    dsvc(home, "add", "--files", str(src))
    dsvc(home, "close")
    rep = js(home, "fsck")
    assert rep["ok"] and rep["chunks"] >= 1 and rep["bad_chunks"] == []
    (db,) = (home / "store.lmdb" / "packs").glob("*.pack")  # chunk bytes: docs/format.md §5.1
    raw = bytearray(db.read_bytes())
    at = raw.find(payload[1000:1064])
    assert at > 0
    raw[at + 10] ^= 0xFF
    db.write_bytes(bytes(raw))
    p = dsvc(home, "fsck", rc=EXIT_INTEGRITY)
    assert re.search(r"bad chunk [0-9a-f]{32}", p.stdout)
    assert "corrupted" in one_error_line(p)
    rep = js(home, "fsck", rc=EXIT_INTEGRITY)
    assert len(rep["bad_chunks"]) == 1 and not rep["ok"]
    # reading the damaged file is refused too, never silently returned
    dsvc(home, "get", "--copy", str(tmp_path / "out"), rc=EXIT_INTEGRITY)


def test_remote_down_is_remote_error(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    dsvc(home, "create", "--project", "p", "--name", "n")
    dsvc(home, "add", "--files", str(data))
    dsvc(home, "close")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the remote's folder should be")
    dsvc(home, "remote", "add", "broken", str(blocker / "remote"))
    line = one_error_line(dsvc(home, "push", "broken", "--init", rc=EXIT_REMOTE))
    assert "remote" in line
    dsvc(home, "push", "--init", rc=EXIT_REMOTE)  # it is the default remote
    dsvc(home, "push", "nosuch", rc=EXIT_NOT_FOUND)
    dsvc(home, "remote", "remove", "broken")
    dsvc(home, "push", rc=EXIT_USAGE)  # no remote configured


# -- help, docs, parsing --------------------------------------------------------------------


def _all_commands() -> list[tuple[str, Any]]:
    import click

    from dsvc.cli import cli

    out = []

    def visit(cmd: click.Command, path: str) -> None:
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                visit(sub, f"{path} {name}")

    visit(cli, "dsvc")
    return out


def test_every_command_has_help_with_an_example() -> None:
    from click.testing import CliRunner

    from dsvc.cli import cli

    commands = _all_commands()
    assert len(commands) > 30
    runner = CliRunner()
    for path, _ in commands:
        r = runner.invoke(cli, [*path.split()[1:], "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Example:" in r.output and "dsvc " in r.output.split("Example:")[1], path


def test_help_and_version_through_the_entry_point(tmp_path: Path) -> None:
    out = dsvc(tmp_path, "--help").stdout
    for cmd in ("create", "add", "sync", "squash", "push", "clone", "graph", "fsck", "demo"):
        assert re.search(rf"^\s+{cmd}\s", out, re.M), cmd
    assert "Example:" in dsvc(tmp_path, "get", "-h").stdout
    from dsvc import __version__

    assert __version__ in dsvc(tmp_path, "--version").stdout


def test_docs_cli_md_is_generated_from_the_click_definitions() -> None:
    from dsvc.cli.docgen import render

    doc = (REPO / "docs" / "cli.md").read_text()
    assert doc == render(), "docs/cli.md is stale: python -m dsvc.cli.docgen > docs/cli.md"
    for path, cmd in _all_commands()[1:]:
        assert f"`{path}`" in doc, path
        for p in cmd.params:
            names = [p.human_readable_name] if p.param_type_name == "argument" else p.opts
            for opt in names:
                assert opt in doc, (path, opt)


def test_guide_documents_every_public_dataset_call() -> None:
    from dsvc.dataset import Dataset

    guide = (REPO / "docs" / "guide.md").read_text()
    clearml = (REPO / "docs" / "coming-from-clearml.md").read_text()
    for name in dir(Dataset):
        if not name.startswith("_"):
            assert name in guide, f"docs/guide.md does not mention Dataset.{name}"
            assert name in clearml, f"docs/coming-from-clearml.md does not mention {name}"
    for path, _ in _all_commands()[1:]:
        if path.count(" ") == 1:  # top-level commands appear on the ClearML page
            assert path.split()[1] in clearml, path


def test_python_m_entry_points(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    dsvc(None, "init", str(tmp_path))  # search reads a store, it never creates one
    for mod in ("dsvc", "dsvc.cli"):
        p = subprocess.run(
            [sys.executable, "-m", mod, "--home", str(tmp_path), "search", "--json"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr


def test_greedy_options_take_several_values() -> None:
    from dsvc.cli.core import expand_greedy

    g = {"--files", "--tags"}
    assert expand_greedy(["--files", "a", "b", "--x", "c"], g) == [
        "--files",
        "a",
        "--files",
        "b",
        "--x",
        "c",
    ]
    assert expand_greedy(["--tags", "t", "--files", "a"], g) == ["--tags", "t", "--files", "a"]
    assert expand_greedy(["--", "--files", "a", "b"], g) == ["--", "--files", "a", "b"]
