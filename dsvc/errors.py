"""The one exception hierarchy of dsvc.

Every error a user can cause or meet derives from :class:`DsvcError`. Subclasses are
grouped by *meaning* so callers can catch what they can act on (not found, wrong state,
integrity, remote, conflict, invalid input). Where ClearML's ``Dataset`` raises
``ValueError`` the matching dsvc class also subclasses ``ValueError``, so ClearML scripts
that catch ``ValueError`` keep working.

Messages say what happened, to what, and what to do next. What to do is data, not
text to be parsed: an error raised with a :class:`Remedy` keeps the problem
(``problem``) and the remedy (``remedy``) apart, so the ``dsvc`` command line renders
the remedy in its own words (flags and commands) while ``str(error)`` gives the Python
one (arguments and methods). The CLI maps each class to a distinct exit code
(``exit_code``) and prints :meth:`DsvcError.cli_message` on one line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Remedy:
    """What to do about an error, for a Python caller and for the command line.

    ``cli`` is left empty when the same words fit both (e.g. "free some space").
    """

    python: str
    cli: str = ""

    def for_cli(self) -> str:
        """The command-line wording (``cli``, else the Python one)."""
        return self.cli or self.python


class DsvcError(Exception):
    """Root of every dsvc error.

    ``DsvcError(problem, remedy=Remedy(...))``: ``str(e)`` is ``"problem; remedy"`` in
    Python's words, :meth:`cli_message` the same in the command line's.
    """

    #: process exit code used by the ``dsvc`` command line for this kind of error
    exit_code: int = 1

    def __init__(self, *args: object, remedy: Remedy | None = None) -> None:
        if remedy is not None and args:
            super().__init__(f"{args[0]}; {remedy.python}", *args[1:])
        else:
            super().__init__(*args)
        #: what went wrong, without the remedy
        self.problem: str = str(args[0]) if args else ""
        #: what to do about it (None: the message already says it, or nothing can be done)
        self.remedy: Remedy | None = remedy

    def cli_message(self) -> str:
        """The message in the command line's words (its flags and commands)."""
        if self.remedy is None:
            return str(self)
        return f"{self.problem}; {self.remedy.for_cli()}"


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

    def __init__(
        self, message: str, object_id: bytes | None = None, *, remedy: Remedy | None = None
    ) -> None:
        super().__init__(message, remedy=remedy)
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

    def __init__(
        self, message: str, object_id: bytes | None = None, *, remedy: Remedy | None = None
    ) -> None:
        super().__init__(message, remedy=remedy)
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


# -- remedies shared by several raise sites -------------------------------------------------

#: a dataset lookup found nothing
LIST_DATASETS = Remedy("list them with Dataset.list_datasets()", "list them with `dsvc search`")
#: a target folder holds files
OVERWRITE = Remedy("pass overwrite=True to replace them", "pass --overwrite to replace them")
#: deleting a published dataset or a parent of another one
FORCE_DELETE = Remedy("pass force=True to delete anyway", "pass --force to delete anyway")
#: finalizing a draft whose changes are not on its remote yet
UPLOAD_FIRST = Remedy(
    "call upload() first or finalize(auto_upload=True)", "run `dsvc upload` first, or `dsvc close`"
)


def child_remedy(dataset_id: str) -> Remedy:
    """Changing a finalized dataset: make a child version of it instead."""
    return Remedy(
        f"create a child version with Dataset.create(parent_datasets=['{dataset_id}'], ...)",
        f"create a child version with `dsvc create --parents {dataset_id}`",
    )
