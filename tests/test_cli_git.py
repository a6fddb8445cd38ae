"""The command line a git or DVC user expects (issue 14), and errors that carry their
remedy as data (issue 12): each item runs the installed ``dsvc`` in a subprocess where
exit codes and streams matter (helpers from test_cli)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from test_cli import dsvc, new_id, one_error_line, write

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
