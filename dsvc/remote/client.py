"""A remote seen from one local store (:class:`Remote`), and the process-wide cache of
open remotes (:func:`resolve`, :func:`forget`).

The protocol is split by job, each module building on the one before: ``repo``
(connection, ``dsvc.json``, index cache, gc marks) <- ``fetch`` (ranged, verified reads)
<- ``refs`` (records, metadata, refs) <- ``push`` (plan, packs, publish), ``gc`` and
``check`` (fsck). The layout and invariants are in docs/remote-protocol.md.
"""

from __future__ import annotations

import os
import threading
from typing import Literal, overload

from dsvc.errors import ConfigError
from dsvc.remote.check import RemoteCheck
from dsvc.remote.config import lookup
from dsvc.remote.gc import RemoteGc
from dsvc.remote.push import RemotePush
from dsvc.store import Store


class Remote(RemotePush, RemoteGc, RemoteCheck):
    """One remote seen from one local store: push, fetch, records and refs, gc, fsck."""


_open: dict[tuple[str, str, int], Remote] = {}
_open_lock = threading.Lock()
#: remotes inherited through fork: their obstore clients belong to the parent (a child
#: opens its own), but they stay referenced so the child never tears the parent's down
_inherited: list[Remote] = []


def _after_fork_in_child() -> None:
    global _open_lock
    _inherited.extend(_open.values())
    _open.clear()
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@overload
def resolve(
    store: Store, spec: str | None, *, required: Literal[True], retries: int = 3
) -> Remote: ...
@overload
def resolve(
    store: Store, spec: str | None, *, required: bool = False, retries: int = 3
) -> Remote | None: ...
def resolve(
    store: Store, spec: str | None, *, required: bool = False, retries: int = 3
) -> Remote | None:
    """The remote named or addressed by ``spec`` (None: ``DSVC_REMOTE`` or the default).

    Returns None when no remote is configured (unless ``required``).
    """
    found = lookup(store, spec)
    if found is None:
        if required:
            raise ConfigError("no remote configured; add one with `dsvc remote add NAME URL`")
        return None
    name, url, options = found
    k = (str(store.home), url, retries)
    with _open_lock:
        r = _open.get(k)
        if r is None:
            r = _open[k] = Remote(store, name, url, options, retries=retries)
        return r


def forget(store: Store) -> None:
    """Drop the cached remotes of ``store`` (before the store is closed)."""
    with _open_lock:
        for k in [k for k in _open if k[0] == str(store.home)]:
            del _open[k]
