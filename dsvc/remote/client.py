"""A remote seen from one local store (:class:`Remote`), and :func:`resolve`, which
opens it once per store (the remotes are attached to their store: ``Store.attached``).

The protocol is split by job, each module building on the one before: ``repo``
(connection, ``dsvc.json``, index cache, gc marks) <- ``fetch`` (ranged, verified reads)
<- ``refs`` (records, metadata, refs) <- ``push`` (plan, packs, publish), ``gc`` and
``check`` (fsck). The layout and invariants are in docs/remote-protocol.md.
"""

from __future__ import annotations

from typing import Literal, overload

from dsvc.errors import ConfigError
from dsvc.remote.check import RemoteCheck
from dsvc.remote.config import lookup
from dsvc.remote.gc import RemoteGc
from dsvc.remote.push import RemotePush
from dsvc.store import Store


class Remote(RemotePush, RemoteGc, RemoteCheck):
    """One remote seen from one local store: push, fetch, records and refs, gc, fsck."""


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
    # one cache: the remotes are attached to their store, and go when it is closed
    return store.attached(
        ("remote", url, retries), lambda: Remote(store, name, url, options, retries=retries)
    )
