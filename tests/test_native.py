"""The optional C modules are built wherever a C compiler is, so CI tests their path."""

from __future__ import annotations

import os
import shutil
import sysconfig

import pytest

from dsvc import fsbatch, objects


@pytest.mark.parametrize(
    ("name", "loaded"),
    [("_fsbatch", lambda: fsbatch.native), ("_treerows", lambda: objects.treerows)],
)
def test_the_c_module_is_built_wherever_a_compiler_is(name, loaded):
    """`pip install -e .` builds them when a compiler exists (see dsvc/native.py)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) here: the Python path is the one in use")
    if os.environ.get("DSVC_NATIVE") == "0":
        pytest.skip("DSVC_NATIVE=0")
    assert loaded() is not None, f"dsvc.{name} was not built: run `pip install -e .`"
