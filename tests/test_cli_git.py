"""The command line a git or DVC user expects (issue 14), and errors that carry their
remedy as data (issue 12): each item runs the installed ``dsvc`` in a subprocess where
exit codes and streams matter (helpers from test_cli)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from test_cli import dsvc, js, new_id, one_error_line, write

from dsvc.errors import LIST_DATASETS, DsvcError, NotFoundError, Remedy, StateError

# -- errors carry their remedy as data (issue 12) ------------------------------------------


def test_remedy_is_data_rendered_per_audience() -> None:
    e = StateError("dataset x is finalized", remedy=Remedy("call a()", "run `dsvc a`"))
    assert str(e) == "dataset x is finalized; call a()"
    assert e.problem == "dataset x is finalized"
    assert e.cli_message() == "dataset x is finalized; run `dsvc a`"
    same = pickle.loads(pickle.dumps(e))  # crosses process pools intact
    assert same.cli_message() == e.cli_message() and str(same) == str(e)
    assert DsvcError("plain").cli_message() == "plain"


def test_cli_renders_the_remedy_once_in_its_own_words(tmp_path: Path) -> None:
    from dsvc.dataset import Dataset

    home = tmp_path / "h"
    dsvc(home, "init")
    p = dsvc(home, "get", "--id", "0" * 32, rc=3)
    line = one_error_line(p)
    assert line.count("dsvc search") == 1 and "list_datasets" not in line, line
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSVC_HOME", str(home))
        with pytest.raises(NotFoundError) as ei:
            Dataset.get(dataset_id="0" * 32)
    assert ei.value.remedy is LIST_DATASETS and "Dataset.list_datasets()" in str(ei.value)


def test_create_error_names_flags_not_python_arguments(tmp_path: Path) -> None:
    line = one_error_line(dsvc(tmp_path / "h", "create", "--name", "n", rc=2))
    assert "--project" in line and "dataset_project" not in line and "parent_datasets" not in line


def test_finalized_dataset_hint_names_dsvc_create(tmp_path: Path) -> None:
    home = tmp_path / "h"
    write(tmp_path / "d", {"a.txt": "a"})
    did = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    dsvc(home, "add", "--files", str(tmp_path / "d"))
    dsvc(home, "close")
    line = one_error_line(dsvc(home, "add", "--id", did, "--files", str(tmp_path / "d"), rc=4))
    assert f"`dsvc create --parents {did}`" in line and "Dataset.create" not in line


def test_no_regex_rewriting_of_messages_in_the_cli() -> None:
    src = (Path(__file__).parent.parent / "dsvc" / "cli" / "core.py").read_text()
    assert "_CLI_HINTS" not in src and "re.compile(r\"Dataset" not in src


# -- helpers --------------------------------------------------------------------------------


def _version(home: Path, folder: Path, *create_args: str) -> str:
    """A finalized version of ``folder`` (create with ``create_args``, add, close)."""
    did = new_id(dsvc(home, "create", *create_args).stdout)
    dsvc(home, "add", str(folder))
    dsvc(home, "close")
    return did


def _data(root: Path, n: int = 3, big: int = 0) -> Path:
    files: dict[str, bytes | str] = {f"f{i}.txt": f"file {i}\n" for i in range(n)}
    if big:
        files["big.bin"] = bytes(range(256)) * (big // 256)
    return write(root, files)


# -- status, show, du (issue 14) -------------------------------------------------------------


def test_status_shows_staged_changes_and_versions_not_on_the_remote(tmp_path: Path) -> None:
    home, data, remote = tmp_path / "h", _data(tmp_path / "d"), tmp_path / "remote"
    v1 = _version(home, data, "--project", "p", "--name", "n")
    out = dsvc(home, "status").stdout
    assert "finalized" in out and "Nothing staged" in out and "No default remote" in out
    dsvc(home, "remote", "add", "origin", str(remote), "--init")
    out = dsvc(home, "status").stdout
    assert "Not on origin yet (1 version;" in out and v1[:8] in out
    dsvc(home, "push")
    assert "Every finalized version is on origin." in dsvc(home, "status").stdout
    dsvc(home, "create", "--parents", v1)
    write(tmp_path / "more", {"new.txt": "new"})
    dsvc(home, "add", str(tmp_path / "more"))
    dsvc(home, "remove", "f0.txt")
    out = dsvc(home, "status").stdout
    assert "a draft" in out and "new.txt" in out and "f0.txt" in out
    assert "1 added, 1 removed, 0 modified" in out
    st = js(home, "status")
    assert st["changes"]["counts"] == {"added": 1, "removed": 1, "modified": 0}
    assert [c["path"] for c in st["changes"]["added"]] == ["new.txt"]
    assert st["unpushed"] == [] and st["remote"] == "origin"
    # a folder against the version: what `sync` would change
    (data / "f1.txt").write_text("changed\n")
    folder = js(home, "status", str(data), "--id", v1)
    assert folder["changes"]["counts"] == {"added": 0, "removed": 0, "modified": 1}
    assert folder["changes"]["to"] == str(data)


def test_status_counts_a_version_pushed_only_once_its_name_lists_it(tmp_path: Path) -> None:
    """Review bug: `dsvc status` took a version as pushed when the remote had its record,
    but a push killed between the record and the ref (refs last) leaves the version
    unknown to every lookup by name on other machines (`dsvc get --project --name`,
    `Dataset.get`). Status now also reads the name's ref, as those lookups do, and lists
    the version as not pushed until a push completes it."""
    import msgpack

    from dsvc.remote.backend import Backend

    home, data, remote = tmp_path / "h", _data(tmp_path / "d"), tmp_path / "remote"
    dsvc(home, "remote", "add", "origin", str(remote), "--init")
    v1 = _version(home, data, "--project", "p", "--name", "n")
    dsvc(home, "push")
    assert js(home, "status")["unpushed"] == []
    # the state a push killed right after writing the record leaves: no ref entry
    b = Backend.from_url(str(remote))
    ref = msgpack.unpackb(b.get("refs/names/p/n"), raw=False)
    del ref["versions"][v1]
    b.put("refs/names/p/n", msgpack.packb(ref, use_bin_type=True))
    other = tmp_path / "other"  # a machine that reads the remote without cloning it
    dsvc(other, "remote", "add", "origin", str(remote))
    dsvc(other, "get", "--project", "p", "--name", "n", rc=3)  # not found by name there

    assert js(home, "status")["unpushed"] == [v1]
    out = dsvc(home, "status").stdout
    assert "Not on origin yet (1 version;" in out and v1[:8] in out
    dsvc(home, "push")  # completes it: the ref lists it again
    assert js(home, "status")["unpushed"] == []
    assert "Every finalized version is on origin." in dsvc(home, "status").stdout
    dsvc(other, "get", "--project", "p", "--name", "n")


def test_show_prints_the_library_numbers(tmp_path: Path) -> None:
    from dsvc.dataset import Dataset

    home = tmp_path / "h"
    data = _data(tmp_path / "d", n=2, big=300_000)
    (data / "copy.bin").write_bytes((data / "big.bin").read_bytes())  # deduplicated
    v1 = _version(home, data, "--project", "p", "--name", "n")
    write(data, {"f9.txt": "another file\n"})
    v2 = _version(home, data, "--parents", v1)
    logical = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    shown = js(home, "show", v2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSVC_HOME", str(home))
        u = Dataset.get(dataset_id=v2).usage()
    assert shown["usage"]["files"] == u.files == 5
    assert shown["usage"]["logical_bytes"] == u.logical_bytes == logical
    assert shown["usage"]["stored_bytes"] == u.stored_bytes < logical / 1.5  # dedup
    assert shown["usage"]["dedup_ratio"] > 1.5
    assert 0 < shown["usage"]["new_bytes"] == u.new_bytes < u.stored_bytes  # only f9
    assert shown["usage"]["new_chunks"] == 1
    assert shown["changes"] == {"added": 1, "removed": 0, "modified": 0}
    assert shown["parents"] == [v1] and js(home, "show", v1)["children"] == [v2]
    text = dsvc(home, "show", v2[:8]).stdout
    assert "5 files" in text and "dedup" in text and "1 chunk no parent has" in text


def test_du_sums_the_store_by_dataset(tmp_path: Path) -> None:
    home = tmp_path / "h"
    data = _data(tmp_path / "d", n=2, big=100_000)
    _version(home, data, "--project", "p", "--name", "a")
    _version(home, data, "--project", "p", "--name", "b")  # same content: all shared
    du = js(home, "du")
    rows = {r["name"]: r for r in du["datasets"]}
    assert set(rows) == {"a", "b"} and du["versions"] == 2
    assert rows["a"]["shared_chunks"] == rows["a"]["chunks"] == du["shared_chunks"] > 0
    assert du["stored_bytes"] == rows["a"]["stored_bytes"] == rows["b"]["stored_bytes"]
    assert du["logical_bytes"] == 2 * rows["a"]["logical_bytes"]
    assert "p/a" in dsvc(home, "du").stdout


# -- remotes and config as in git (issue 14) --------------------------------------------------


def test_remote_management_as_in_git(tmp_path: Path) -> None:
    home, data, r1, r2 = tmp_path / "h", _data(tmp_path / "d"), tmp_path / "r1", tmp_path / "r2"
    dsvc(home, "init")
    assert "no remotes" in dsvc(home, "remote").stderr  # plain `remote` lists, exit 0
    v1 = _version(home, data, "--project", "p", "--name", "n")
    dsvc(home, "remote", "add", "origin", str(r1), "--init")
    dsvc(home, "push")
    assert "origin" in dsvc(home, "remote").stdout
    info = js(home, "remote", "show", "origin")
    assert info["reachable"] and info["repository"] and [d["id"] for d in info["datasets"]] == [v1]
    assert v1[:8] in dsvc(home, "remote", "show", "origin").stdout
    dsvc(home, "remote", "rename", "origin", "backup")
    assert js(home, "remote", "list") == [
        {"name": "backup", "url": str(r1), "default": True, "options": {}}
    ]
    dsvc(home, "remote", "set-url", "backup", str(r2))
    info = js(home, "remote", "show", "backup")
    assert info["url"] == str(r2) and not info["repository"] and info["datasets"] == []
    assert "no dsvc repository" in dsvc(home, "remote", "show", "backup").stdout
    dsvc(home, "remote", "show", "nope", rc=3)
    dsvc(home, "remote", "rename", "nope", "x", rc=3)


def test_config_unset_and_unknown_keys(tmp_path: Path) -> None:
    home = tmp_path / "h"
    dsvc(home, "init")
    line = one_error_line(dsvc(home, "config", "set", "nope", "1", rc=2))
    assert "unknown setting 'nope'" in line and "zstd_level" in line
    dsvc(home, "config", "get", "nope", rc=3)  # nothing was saved
    dsvc(home, "config", "set", "zstd_level", "9")
    assert dsvc(home, "config", "get", "zstd_level").stdout.strip() == "9"
    dsvc(home, "config", "unset", "zstd_level")
    assert dsvc(home, "config", "get", "zstd_level").stdout.strip() == "1"
    dsvc(home, "config", "unset", "chunker", rc=2)
    dsvc(home, "config", "unset", "nope", rc=3)


# -- output ----------------------------------------------------------------------------------


def test_quiet_silences_chatter_and_hints_go_to_stderr(tmp_path: Path) -> None:
    home, data, remote = tmp_path / "h", _data(tmp_path / "d"), tmp_path / "r"
    p = dsvc(home, "create", "--project", "p", "--name", "n")
    assert "next: dsvc add" in p.stderr and "next:" not in p.stdout
    dsvc(home, "add", str(data))
    dsvc(home, "close")
    assert dsvc(home, "-q", "remote", "add", "origin", str(remote), "--init").stdout.strip() == (
        f"Initialized an empty dsvc repository at {remote}"
    )
    dsvc(home, "push")
    assert dsvc(tmp_path / "c", "-q", "clone", str(remote), str(tmp_path / "c")).stdout == ""
    assert dsvc(home, "-q", "remote", "remove", "origin").stdout == ""
    assert "Added remote o" in dsvc(home, "remote", "add", "o", str(remote)).stdout
    assert "Removed remote o" in dsvc(home, "remote", "remove", "o").stdout  # without -q


def test_plural_units_and_sentences(tmp_path: Path) -> None:
    home = tmp_path / "h"
    data = _data(tmp_path / "d", n=1)
    dsvc(home, "create", "--project", "p", "--name", "n")
    assert dsvc(home, "add", str(data)).stdout.startswith("1 file added")
    v1 = new_id(dsvc(home, "close").stdout)
    v2 = _version(home, _data(tmp_path / "e", n=2), "--project", "p", "--name", "m")
    assert "from 2 versions" in dsvc(home, "squash", "--name", "s", "--ids", v1, v2).stdout
    err = dsvc(home, "get", v1, "--verbose").stderr
    assert "1 file, 7 B" in err and "bytes" not in err
    dsvc(home, "delete", "--id", v2)
    dry = dsvc(home, "gc", "--dry-run").stdout
    assert dry.startswith("Would delete ") and "nothing was deleted (dry run)" in dry
    assert "Deleted" not in dry and "chunks_deleted" not in dry
    done = dsvc(home, "gc").stdout
    assert done.startswith("Deleted ") and " freed)" in done
    assert js(home, "gc", "--dry-run")["chunks_deleted"] == 0  # the dry run deleted nothing


def test_singular_counts_in_fsck_verify_and_cache(tmp_path: Path) -> None:
    home = tmp_path / "h"
    did = _version(home, write(tmp_path / "d", {"one.txt": "1"}), "--project", "p", "--name", "n")
    out = dsvc(home, "fsck").stdout
    assert out.startswith("checked 1 chunk and ") and "1 chunks" not in out
    assert dsvc(home, "verify", "--id", did).stdout.startswith(f"Verified 1 file of {did}")
    dsvc(home, "get", did)  # one cached copy
    assert "1 cached copy and" in dsvc(home, "cache", "clear").stdout


def test_compare_lists_files_only_with_verbose(tmp_path: Path) -> None:
    home = tmp_path / "h"
    v1 = _version(home, _data(tmp_path / "d", n=1), "--project", "p", "--name", "n")
    v2 = _version(home, _data(tmp_path / "e", n=2), "--project", "p", "--name", "n")
    short = dsvc(home, "compare", "--source", v1, "--target", v2).stdout
    assert "f1.txt" not in short and "1 added, 0 removed, 0 modified" in short
    assert "f1.txt" in dsvc(home, "compare", "--source", v1, "--target", v2, "--verbose").stdout


# -- positional arguments ---------------------------------------------------------------------


def test_positional_arguments_and_clearml_aliases(tmp_path: Path) -> None:
    home = tmp_path / "h"
    a, b = _data(tmp_path / "a", n=1), write(tmp_path / "b", {"x.txt": "x"})
    did = new_id(dsvc(home, "create", "--project", "p", "--name", "n").stdout)
    assert dsvc(home, "add", str(a), str(b)).stdout.startswith("2 files added")
    dsvc(home, "add", "--files", str(a), rc=0)  # clearml-data's spelling still works
    dsvc(home, "add", rc=2)
    dsvc(home, "remove", "x.txt")
    dsvc(home, "close")
    got = tmp_path / "got"
    dsvc(home, "get", did[:8], "--copy", str(got))
    assert sorted(p.name for p in got.iterdir()) == ["f0.txt"]
    assert [r["id"] for r in js(home, "log", did[:8])] == [did]
    assert js(home, "show", did)["id"] == did
    assert [f["path"] for f in js(home, "list", did)] == ["f0.txt"]
    assert js(home, "list", "--id", did) == js(home, "list", did)
    line = one_error_line(dsvc(home, "get", did, "--id", "abcd1234", rc=2))
    assert "not both" in line


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("add", "--files", ".", "--max-workers", "-1"),
        ("log", "-n", "-1"),
        ("gc", "--grace", "-5"),
        ("create", "--project", "p", "--name", "n", "--version", "notaversion"),
        ("get", "--num-parts", "0", "--part", "0"),
    ],
)
def test_bad_numbers_and_versions_are_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    home = tmp_path / "h"
    dsvc(home, "create", "--project", "p", "--name", "base")
    line = one_error_line(dsvc(home, *args, rc=2))
    assert "internal error" not in line


def test_get_by_id_refuses_version(tmp_path: Path) -> None:
    home = tmp_path / "h"
    did = _version(home, _data(tmp_path / "d"), "--project", "p", "--name", "n")
    line = one_error_line(dsvc(home, "get", "--id", did, "--version", "1.0", rc=2))
    assert "--version" in line


def test_diff_errors_name_what_was_given(tmp_path: Path) -> None:
    home = tmp_path / "h"
    dsvc(home, "init")
    line = one_error_line(dsvc(home, "diff", rc=2))
    assert "--id" not in line and "ID" in line
    did = _version(home, _data(tmp_path / "d"), "--project", "p", "--name", "n")
    line = one_error_line(dsvc(home, "diff", did[:4], "./nofolder", cwd=tmp_path, rc=3))
    assert "nofolder is not a folder" in line and "project" not in line
    stat = js(home, "diff", did, str(tmp_path / "d"), "--stat")
    assert stat["counts"] == {"added": 0, "removed": 0, "modified": 0} and "added" not in stat
    one_error_line(dsvc(home, "graph", "--id", did, "--format", "svg", "--json", rc=2))


def test_debug_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    home = tmp_path / "h"
    dsvc(home, "init")
    p = dsvc(home, "get", "--id", "0" * 32, "--debug", rc=3)
    assert "Traceback" in p.stderr and "NotFoundError" in p.stderr


def test_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    import os
    import subprocess

    from test_cli import DSVC

    home = tmp_path / "h"
    write(tmp_path / "d", {f"f{i:04}.txt": str(i) for i in range(3000)})
    _version(home, tmp_path / "d", "--project", "p", "--name", "n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSVC_")}
    env["DSVC_HOME"] = str(home)
    p = subprocess.Popen([*DSVC, "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == ""


def test_short_ids_resolve_against_remote_records(tmp_path: Path) -> None:
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    did = _version(a, _data(tmp_path / "d"), "--project", "p", "--name", "n")
    dsvc(a, "remote", "add", "origin", str(remote), "--init")
    dsvc(a, "push")
    dsvc(b, "remote", "add", "origin", str(remote))  # no fetch: the record is remote only
    assert js(b, "show", did[:6])["id"] == did
    assert [r["id"] for r in js(b, "log", did[:6])] == [did]
    assert dsvc(b, "cat", did[:6], "f1.txt").stdout == "file 1\n"


# -- push --dry-run ---------------------------------------------------------------------------


def test_push_dry_run_says_what_would_be_sent_and_sends_nothing(tmp_path: Path) -> None:
    home, remote = tmp_path / "h", tmp_path / "r"
    v1 = _version(home, _data(tmp_path / "d", big=200_000), "--project", "p", "--name", "n")
    dsvc(home, "remote", "add", "origin", str(remote), "--init")
    before = sorted(p.relative_to(remote) for p in remote.rglob("*"))
    out = dsvc(home, "push", "--dry-run").stdout
    assert out.startswith("Would push 1 dataset to origin:") and "nothing was sent" in out
    assert sorted(p.relative_to(remote) for p in remote.rglob("*")) == before
    assert js(home, "remote", "show", "origin")["datasets"] == []
    plan = js(home, "push", "--dry-run")
    pushed = js(home, "push")
    assert plan["datasets"] == pushed["datasets"] == [v1]
    assert (plan["chunks"], plan["objects"]) == (pushed["chunks"], pushed["objects"])
    assert "Would push nothing" in dsvc(home, "push", "--dry-run").stdout
    # a draft cannot be pushed: a state error (exit 4), not a configuration one
    draft = new_id(dsvc(home, "create", "--parents", v1).stdout)
    dsvc(home, "push", "--id", draft, "--dry-run", rc=4)


def test_pushing_a_draft_is_a_state_error_in_the_library(tmp_path: Path) -> None:
    from dsvc.dataset import Dataset
    from dsvc.lookup import remote_for
    from dsvc.registry import open_store

    home, remote = tmp_path / "h", tmp_path / "r"
    dsvc(home, "create", "--project", "p", "--name", "n")
    dsvc(home, "remote", "add", "origin", str(remote), "--init")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSVC_HOME", str(home))
        draft = Dataset.get(dataset_project="p", dataset_name="n")
        store = open_store()
        with pytest.raises(StateError, match="is a draft"):
            remote_for(store, "origin").push_dataset(draft.id, show_progress=False)


# -- shell completion ---------------------------------------------------------------------------


def _complete(home: Path, words: str, **env: str) -> list[str]:
    """What click's bash completion offers for ``words`` (the last one being typed)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    p = dsvc(
        home,
        env={"_DSVC_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword), **env},
    )
    return [line.split(",", 1)[1] for line in p.stdout.splitlines()]


def test_completion_of_ids_projects_names_and_remotes(tmp_path: Path) -> None:
    home = tmp_path / "h"
    did = _version(home, _data(tmp_path / "d"), "--project", "vision", "--name", "cats")
    _version(home, _data(tmp_path / "e"), "--project", "audio", "--name", "birds")
    dsvc(home, "remote", "add", "origin", str(tmp_path / "r"))
    assert _complete(home, f"dsvc show {did[:5]}") == [did]
    assert _complete(home, f"dsvc get --id {did[:5]}") == [did]
    assert _complete(home, "dsvc get --project ") == ["audio", "vision"]
    assert _complete(home, "dsvc log --project vision --name ") == ["cats"]
    assert _complete(home, "dsvc remote show o") == ["origin"]
    assert _complete(home, "dsvc push ") == ["origin"]
    assert _complete(home, "dsvc --home " + str(home) + " show " + did[:5], DSVC_HOME="") == [did]


def test_install_completion_adds_the_line_once(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "SHELL": "/bin/bash"}
    out = dsvc(None, "--install-completion", env=env).stdout
    assert ".bashrc" in out
    again = dsvc(None, "--install-completion", env=env).stdout
    assert "already" in again
    rc = (tmp_path / ".bashrc").read_text()
    assert rc.count('eval "$(_DSVC_COMPLETE=bash_source dsvc)"') == 1
    one_error_line(dsvc(None, "--install-completion", env={**env, "SHELL": "/bin/tcsh"}, rc=2))


# -- ls / cat of a remote-only version ----------------------------------------------------------


def test_ls_and_cat_of_a_remote_only_version_fetch_only_what_they_read(tmp_path: Path) -> None:
    import os

    from dsvc.registry import open_store

    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    data = write(tmp_path / "d", {"small.txt": "small\n", "sub/x.txt": "x\n"})
    (data / "big.bin").write_bytes(os.urandom(3 << 20))  # several chunks
    did = _version(a, data, "--project", "p", "--name", "n")
    dsvc(a, "remote", "add", "origin", str(remote), "--init")
    dsvc(a, "push")
    dsvc(b, "remote", "add", "origin", str(remote))

    def chunks() -> int:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DSVC_HOME", str(b))
            return int(open_store().stats()["chunks"])

    assert dsvc(b, "ls", "-R", did[:8]).stdout.split() == [
        "big.bin", "small.txt", "sub/", "sub/x.txt"
    ]  # fmt: skip
    assert chunks() == 0  # listing reads folders only
    assert dsvc(b, "cat", did[:8], "small.txt").stdout == "small\n"
    assert chunks() == 1  # the one chunk of small.txt, not big.bin's


# -- README and guide -----------------------------------------------------------------------------


def test_readme_says_how_to_get_dsvc_on_path_and_clone_carries_the_endpoint() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "source .venv/bin/activate" in readme and "pipx install ." in readme
    lines = [ln for ln in readme.splitlines() if ln.startswith("dsvc ")]
    adds = [ln for ln in lines if ln.startswith("dsvc remote add") and "s3://" in ln]
    clones = [ln for ln in lines if ln.startswith("dsvc clone s3://")]
    assert adds and clones
    for ln in adds + clones:
        assert "--option endpoint=" in ln, ln


def test_guide_walks_through_status_show_and_push_dry_run() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "guide.md").read_text()
    for cmd in ("$ dsvc status", "$ dsvc close && dsvc show", "$ dsvc push --dry-run"):
        assert cmd in guide, cmd
