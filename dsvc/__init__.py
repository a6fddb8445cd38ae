"""dsvc: a Git-style, content-addressed version store for datasets.

``from dsvc import Dataset`` gives ClearML Data's ``Dataset`` API on a local LMDB store
with object-store remotes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type checkers see the class; at run time it is imported on first use
    from dsvc.dataset import Dataset

__version__ = "0.1.0"

__all__ = ["Dataset", "__version__"]


def __getattr__(name: str) -> object:  # lazy: `import dsvc` stays cheap for the CLI and tools
    if name == "Dataset":
        from dsvc.dataset import Dataset

        return Dataset
    raise AttributeError(f"module 'dsvc' has no attribute {name!r}")
