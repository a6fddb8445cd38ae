"""The one exception hierarchy of dsvc.

Every error a user can cause or meet derives from :class:`DsvcError`. Subclasses are
grouped by *meaning* so callers can catch what they can act on (not found, wrong state,
integrity, remote, conflict, invalid input). Where ClearML's ``Dataset`` raises
``ValueError`` the matching dsvc class also subclasses ``ValueError``, so ClearML scripts
that catch ``ValueError`` keep working.

Messages say what happened, to what, and what to do next. The CLI maps each class to a
distinct exit code (``exit_code``) and prints the message on one line.
"""

from __future__ import annotations


class DsvcError(Exception):
    """Root of every dsvc error."""

    #: process exit code used by the ``dsvc`` command line for this kind of error
    exit_code: int = 1


class UsageError(DsvcError, ValueError):
    """A call was made with arguments that cannot work (bad combination, empty name...)."""

    exit_code = 2


class InvalidPathError(UsageError):
    """A file or dataset path is not acceptable (escapes its folder, bad name, bad UTF-8)."""


class WildcardError(UsageError, NotImplementedError):
    """A wildcard pathlib cannot match (absolute, like ``/*.jpg``); also a
    ``NotImplementedError``, which is what ClearML's ``add_files`` raises for it."""


class NotFoundError(DsvcError, ValueError):
    """A dataset, version, object, file or remote does not exist."""

    exit_code = 3


class ObjectNotFoundError(NotFoundError):
    """A content-addressed object (chunk, blob, tree, commit) is missing from a store."""

    def __init__(self, message: str, object_id: bytes | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id


class StateError(DsvcError, ValueError):
    """The operation is not allowed in the current state (e.g. modifying a finalized dataset)."""

    exit_code = 4


class PendingUploadError(StateError):
    """``finalize`` on a draft whose changes are not on its remote yet: the one failure
    ClearML's ``finalize(raise_on_error=False)`` answers with False."""


class IntegrityError(DsvcError):
    """Stored bytes do not match their id, or a stored structure is malformed."""

    exit_code = 5

    def __init__(self, message: str, object_id: bytes | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id


class RemoteError(DsvcError, ValueError):
    """A remote could not be reached or refused a request (network, credentials, bucket).

    Also a ``ValueError``: ClearML documents ``upload`` failures as ``ValueError``.
    """

    exit_code = 6


class ConflictError(DsvcError):
    """A concurrent writer changed what this operation expected (lost a compare-and-swap)."""

    exit_code = 7


class ConfigError(UsageError):
    """The store or remote configuration is missing, malformed or incompatible."""


class StoreCorruptError(IntegrityError):
    """The local store's LMDB file is structurally damaged (truncated, overwritten pages).

    Its message names the store and the way out: restore the versions from a remote
    into a fresh store (``dsvc clone``), or move the damaged store away.
    """


class StorageError(DsvcError):
    """The local disk refused a write or a read (disk full, quota, I/O error)."""

    exit_code = 8


class DiskFullError(StorageError):
    """No space left (ENOSPC, EDQUOT, EFBIG) where dsvc writes; the message says where."""
