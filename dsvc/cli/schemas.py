"""The JSON vocabulary of ``--json``: one JSON Schema per command, printed in
docs/cli.md (``docgen``) and checked against each command's real output by
tests/test_cli_json.py.

The same words mean the same thing everywhere: ``id`` is a 32-hex dataset id and
``datasets`` is always a list of them; ``from``/``to`` name the two sides of a
comparison; ``size`` is a file's size and ``bytes``/``*_bytes`` count bytes; times are
ISO 8601 strings; counts are integers. A dataset is described by the fields of
``record`` wherever one appears.
"""

from __future__ import annotations

from typing import Any

ID: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
IDS: dict[str, Any] = {"type": "array", "items": ID}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
TEXT: dict[str, Any] = {"type": "string"}
MAYBE_TEXT: dict[str, Any] = {"type": ["string", "null"]}
MAYBE_COUNT: dict[str, Any] = {"type": ["integer", "null"], "minimum": 0}
RATIO: dict[str, Any] = {"type": ["number", "null"], "minimum": 0}
HEX: dict[str, Any] = {"type": ["string", "null"], "pattern": "^[0-9a-f]+$"}


def _obj(
    props: dict[str, Any], *, optional: tuple[str, ...] = (), extra: bool = False
) -> dict[str, Any]:
    """An object with exactly ``props`` (all required but ``optional``)."""
    return {
        "type": "object",
        "properties": props,
        "required": [k for k in props if k not in optional],
        "additionalProperties": extra,
    }


RECORD_FIELDS: dict[str, Any] = {
    "id": ID,
    "project": TEXT,
    "name": TEXT,
    "version": MAYBE_TEXT,
    "status": {"enum": ["draft", "final", "published"]},
    "tags": {"type": "array", "items": TEXT},
    "description": TEXT,
    "parents": IDS,
    "squashed_from": IDS,
    "created": MAYBE_TEXT,
    "finalized": MAYBE_TEXT,
    "commit": HEX,
    "tree": HEX,
    "remote": MAYBE_TEXT,
}
RECORD = _obj(RECORD_FIELDS)

CHANGE = _obj({"path": TEXT, "size": MAYBE_COUNT, "old_size": MAYBE_COUNT})
COUNTS = _obj({"added": COUNT, "removed": COUNT, "modified": COUNT})
CHANGES = _obj(
    {
        "from": TEXT,
        "to": TEXT,
        "counts": COUNTS,
        "added": {"type": "array", "items": CHANGE},
        "removed": {"type": "array", "items": CHANGE},
        "modified": {"type": "array", "items": CHANGE},
    },
    optional=("added", "removed", "modified"),  # left out with --stat
)
USAGE = _obj(
    {
        "files": COUNT,
        "logical_bytes": COUNT,
        "chunks": COUNT,
        "stored_bytes": COUNT,
        "missing_chunks": COUNT,
        "new_chunks": COUNT,
        "new_bytes": COUNT,
        "dedup_ratio": RATIO,
    }
)
REMOTE_ROW = _obj(
    {
        "name": TEXT,
        "url": TEXT,
        "default": {"type": "boolean"},
        "options": {"type": "object", "additionalProperties": TEXT},
    }
)
DU_ROW = {
    "project": TEXT,
    "name": TEXT,
    "versions": COUNT,
    "logical_bytes": COUNT,
    "chunks": COUNT,
    "stored_bytes": COUNT,
    "shared_chunks": COUNT,
    "shared_bytes": COUNT,
    "dedup_ratio": RATIO,
}

SHOW = _obj(
    {
        **RECORD_FIELDS,
        "usage": {"oneOf": [USAGE, {"type": "null"}]},
        "changes": {"oneOf": [COUNTS, {"type": "null"}]},
        "children": IDS,
        "remotes": {
            "type": "array",
            "items": _obj({"name": TEXT, "has": {"type": ["boolean", "null"]}}),
        },
        "metadata": {"type": "array", "items": TEXT},
    }
)
#: `dsvc show --reports --json`: where the version's reports page was written
SHOW_REPORTS = _obj({"id": ID, "reports": COUNT, "page": TEXT})

#: command path (without ``dsvc``) -> schema of its ``--json`` output
SCHEMAS: dict[str, dict[str, Any]] = {
    "list": {
        "type": "array",
        "items": _obj(
            {
                "path": TEXT,
                "size": MAYBE_COUNT,
                "hash": MAYBE_TEXT,
                "dataset_id": {"type": ["string", "null"]},
                "status": {"enum": ["added", "removed", "modified"]},
            },
            optional=("status",),  # with --modified
        ),
    },
    "search": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "id": ID,
                "project": TEXT,
                "name": TEXT,
                "version": MAYBE_TEXT,
                "status": TEXT,
                "tags": {"type": "array", "items": TEXT},
                "created": TEXT,
            },
            "required": ["id", "project", "name", "version", "status", "tags", "created"],
        },
    },
    "compare": CHANGES,
    "diff": CHANGES,
    "verify": _obj(
        {
            "id": ID,
            "folder": MAYBE_TEXT,
            "files": COUNT,
            "ok": {"type": "boolean"},
            "mismatches": {"type": "array", "items": TEXT},
        }
    ),
    "status": _obj(
        {
            "dataset": RECORD,
            "changes": CHANGES,
            "remote": MAYBE_TEXT,
            # finalized versions the default remote lacks (null: no remote, or unreadable)
            "unpushed": {"type": ["array", "null"], "items": ID},
        }
    ),
    "show": {"oneOf": [SHOW, SHOW_REPORTS]},
    "du": _obj(
        {
            "datasets": {"type": "array", "items": _obj(DU_ROW)},
            "versions": COUNT,
            "logical_bytes": COUNT,
            "chunks": COUNT,
            "stored_bytes": COUNT,
            "shared_chunks": COUNT,
            "shared_bytes": COUNT,
            "unreferenced_chunks": COUNT,
            "unreferenced_bytes": COUNT,
            "dedup_ratio": RATIO,
        }
    ),
    "log": {
        "type": "array",
        "items": _obj({**RECORD_FIELDS, "size": MAYBE_COUNT, "local": {"type": "boolean"}}),
    },
    "graph": _obj(
        {
            "root": ID,
            "nodes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": RECORD_FIELDS,
                    "required": ["id"],  # an unknown ancestor has its id only
                    "additionalProperties": False,
                },
            },
            "edges": {
                "type": "array",
                "items": _obj({"parent": ID, "child": ID, "kind": {"enum": ["parent", "squash"]}}),
            },
        }
    ),
    "remote list": {"type": "array", "items": REMOTE_ROW},
    "remote show": _obj(
        {
            **REMOTE_ROW["properties"],
            "reachable": {"type": "boolean"},
            "repository": {"type": "boolean"},
            "error": MAYBE_TEXT,
            "datasets": {
                "type": "array",
                "items": _obj(
                    {
                        "id": ID,
                        "project": TEXT,
                        "name": TEXT,
                        "version": MAYBE_TEXT,
                        "status": MAYBE_TEXT,
                    }
                ),
            },
        }
    ),
    "push": _obj(
        {
            "remote": TEXT,
            "dry_run": {"type": "boolean"},
            "datasets": IDS,
            "packs": MAYBE_COUNT,  # null on a dry run
            "objects": COUNT,
            "chunks": COUNT,
            "bytes": COUNT,
            "seconds": {"type": "number", "minimum": 0},
        },
        optional=("seconds",),
    ),
    "fetch": _obj({"remote": TEXT, "datasets": IDS, "new": IDS}),
    "pull": _obj(
        {
            "remote": TEXT,
            "datasets": IDS,
            "new": IDS,
            "files": COUNT,
            "bytes": COUNT,
            "seconds": {"type": "number", "minimum": 0},
        }
    ),
    "gc": {
        "type": "object",
        "properties": {
            "dry_run": {"type": "boolean"},
            "chunks_deleted": COUNT,
            "objects_deleted": COUNT,
            "bytes_freed": COUNT,
            "packs_deleted": COUNT,
            "bytes_deleted": COUNT,
        },
        "required": ["dry_run"],
    },
    "fsck": {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "chunks": COUNT, "objects": COUNT},
        "required": ["ok"],
    },
    "ls": {
        "type": "array",
        "items": _obj(
            {"path": TEXT, "type": {"enum": ["file", "directory"]}, "size": COUNT, "id": TEXT}
        ),
    },
    "cache verify": {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "repaired": COUNT},
        "required": ["ok"],
    },
    "cache clear": {
        "type": "object",
        "properties": {"cached_copies": COUNT, "cache_files": COUNT},
        "required": ["cached_copies", "cache_files"],
    },
    "config get": {},  # a setting's own value (any JSON), or every setting as an object
}
