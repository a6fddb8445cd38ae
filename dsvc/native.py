"""The optional C accelerators (``dsvc._fsbatch``, ``dsvc._treerows``).

``pip install`` builds them when a C compiler is there. Each has a Python path with the
same results, used when the module is missing or ``DSVC_NATIVE=0`` (tests run both).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """The C module ``dsvc.<name>``, or None when it is not built or switched off."""
    if os.environ.get("DSVC_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module(f"dsvc.{name}")
    except ImportError:  # not built here (no compiler at install): the Python path
        return None
