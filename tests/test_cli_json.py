"""Every ``--json`` output follows its schema in dsvc/cli/schemas.py (printed in
docs/cli.md): one vocabulary across commands (issue 14). Runs each command on a real
store with a folder remote and validates what it prints."""

from __future__ import annotations

from typing import Any

import click
import jsonschema
import pytest
from test_cli import dsvc, js, new_id, write

from dsvc.cli import cli
from dsvc.cli.schemas import SCHEMAS


def _json_commands() -> set[str]:
    """Paths (``remote show``) of every command with a ``--json`` option."""
    out: set[str] = set()

    def visit(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                visit(sub, f"{path} {name}".strip())
        elif any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option)):
            out.add(path)

    visit(cli, "")
    return out


def test_every_json_command_has_a_schema() -> None:
    assert _json_commands() == set(SCHEMAS)
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """``command path -> [JSON outputs]`` from a store with two versions and a remote."""
    tmp = tmp_path_factory.mktemp("json")
    home, remote = tmp / "h", tmp / "r"
    data = write(tmp / "d", {"a.txt": "a\n", "sub/b.txt": "b\n"})
    v1 = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    dsvc(home, "add", str(data))
    dsvc(home, "close")
    write(data, {"c.txt": "c\n"})
    v2 = new_id(dsvc(home, "create", "--parents", v1).stdout)
    dsvc(home, "add", str(data))
    dsvc(home, "close")
    dsvc(home, "remote", "add", "origin", str(remote), "--init")
    runs: dict[str, list[tuple[str, ...]]] = {
        "list": [("list", v2), ("list", v2, "--modified")],
        "search": [("search",)],
        "compare": [("compare", "--source", v1, "--target", v2)],
        "diff": [("diff", v1, v2), ("diff", v1, v2, "--stat"), ("diff", v2, str(data))],
        "verify": [("verify", "--id", v2)],
        "status": [("status",), ("status", str(data))],
        "show": [("show", v2), ("show", v1), ("show", v2, "--reports", "-o", str(tmp / "r.html"))],
        "du": [("du",)],
        "log": [("log", v2)],
        "graph": [("graph", "--id", v2)],
        "remote list": [("remote", "list")],
        "push": [("push", "--dry-run"), ("push",), ("push", "--dry-run")],
        "remote show": [("remote", "show", "origin")],
        "fetch": [("fetch",)],
        "pull": [("pull",)],
        "gc": [("gc", "--dry-run"), ("gc",), ("gc", "--remote", "origin", "--dry-run")],
        "fsck": [("fsck",)],
        "ls": [("ls", v2), ("ls", v2, "sub", "-R")],
        "cache verify": [("cache", "verify")],
        "cache clear": [("cache", "clear")],
        "config get": [("config", "get"), ("config", "get", "zstd_level")],
    }
    return {cmd: [js(home, *args) for args in argv] for cmd, argv in runs.items()}


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_json_output_follows_its_schema(outputs: dict[str, list[Any]], command: str) -> None:
    assert outputs[command], command
    for doc in outputs[command]:
        jsonschema.validate(doc, SCHEMAS[command])


def test_the_vocabulary_is_the_same_across_commands(outputs: dict[str, list[Any]]) -> None:
    diff, stat, _ = outputs["diff"]
    assert outputs["compare"][0] == diff  # compare and diff say the same thing
    assert set(stat) == {"from", "to", "counts"}  # --stat leaves the lists out
    dry, pushed, again = outputs["push"]
    assert dry["dry_run"] and not pushed["dry_run"]
    assert dry["datasets"] == pushed["datasets"] and again["datasets"] == []
    assert (dry["objects"], dry["chunks"]) == (pushed["objects"], pushed["chunks"])
    assert 0 < dry["bytes"] <= pushed["bytes"]  # packs add their headers and indexes
    assert again["objects"] == again["chunks"] == 0
    ids = set(pushed["datasets"])
    assert set(outputs["fetch"][0]["datasets"]) == ids == set(outputs["pull"][0]["datasets"])
    assert {d["id"] for d in outputs["remote show"][0]["datasets"]} == ids
    assert all(isinstance(r["size"], int) for r in outputs["log"][0])  # the size text shows
