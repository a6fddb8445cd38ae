"""dsvc: a Git-style, content-addressed version store for datasets.

``from dsvc import Dataset`` gives ClearML Data's ``Dataset`` API on a local LMDB store
with object-store remotes.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Dataset", "__version__"]


def __getattr__(name: str):  # lazy: `import dsvc` stays cheap for the CLI and tools
    if name == "Dataset":
        from dsvc.dataset import Dataset

        return Dataset
    raise AttributeError(f"module 'dsvc' has no attribute {name!r}")
