"""A PyTorch ``Dataset`` over the files of a dsvc version, streamed (``pip install dsvc[torch]``).

    from torch.utils.data import DataLoader
    from dsvc.torch import DsvcDataset

    ds = DsvcDataset("dsvc://vision/cats@1.0.0/train", pattern="*.jpg", transform=decode)
    for batch in DataLoader(ds, batch_size=32, num_workers=4, shuffle=True): ...

Item ``i`` is ``transform(bytes, path)`` of the ``i``-th file (sorted by path), or the
bytes when there is no transform. Files are read through :mod:`dsvc.stream`: only their
chunks are fetched, from the local store when present, else from the remote (and kept
in the store, so the next epoch is local). Items read in index order (no shuffle) read
ahead across files: the next files' chunks are fetched as coalesced ranged reads while
the current ones are decoded (a bounded window; shuffled reads fetch only themselves).

Safe with ``DataLoader(num_workers>0)``: the version is resolved once, here, and pinned
by id, so every worker reads the same version; each worker process opens its own LMDB
environment and obstore client (a pid check in the reader, fork hooks in the registry
and the remote cache), since neither may be shared across ``fork``. obstore's tokio
runtime is process-wide and its threads do not survive ``fork`` (a worker's first
remote read used to wait forever): a forked worker loads its own copy of obstore's
extension module on its first remote read (``dsvc.remote.backend``). With the
``spawn`` start method the dataset is pickled and rebuilt from its storage options.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch.utils.data

from dsvc.fs import DsvcFileSystem, parse_url
from dsvc.stream import DEFAULT_CACHE_BYTES

__all__ = ["DsvcDataset"]


class DsvcDataset(torch.utils.data.Dataset):
    """The files below a ``dsvc://`` URL as a map-style dataset (see the module docstring).

    ``pattern`` keeps the files whose path relative to the URL matches it (fnmatch, ``*``
    crosses ``/``); ``home``, ``remote``, ``remote_options`` and ``cache_bytes`` are the
    filesystem's storage options (:class:`dsvc.fs.DsvcFileSystem`).
    """

    def __init__(
        self,
        url: str,
        *,
        pattern: str | None = None,
        transform: Callable[[bytes, str], Any] | None = None,
        home: str | None = None,
        remote: str | None = None,
        remote_options: dict[str, str] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.fs = DsvcFileSystem(
            home=home,
            remote=remote,
            remote_options=remote_options,
            cache_bytes=cache_bytes,
            skip_instance_cache=True,
        )
        version = self.fs.version(url)
        _, _, rel = parse_url(url)
        # pinned by id: "latest" cannot move between workers or epochs
        self.root = "/".join((f"id:{version.id}", *rel))
        self.version_id = version.id
        if rel and self.fs.info(f"dsvc://{self.root}")["type"] == "file":
            self.root, files = self.root.rsplit("/", 1)[0], [rel[-1]]  # a single file
        else:
            cut = len(self.root) + 1
            files = [
                name[cut:]
                for name, info in self.fs.find(f"dsvc://{self.root}", detail=True).items()
                if info["type"] == "file"
                and (pattern is None or fnmatch.fnmatchcase(name[cut:], pattern))
            ]
        self.files: list[str] = files
        self.transform = transform
        # items read in index order (DataLoader without shuffle) read ahead across files
        self.fs.set_read_order(f"dsvc://{self.root}/{p}" for p in files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Any:
        path = self.files[index]
        data = self.fs.cat_file(f"dsvc://{self.root}/{path}")
        return data if self.transform is None else self.transform(data, path)
