"""Git-style commands on the store: init, gc, fsck, config, demo (remotes: ``remotes``)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from dsvc import registry
from dsvc.cli.core import (
    cli,
    emit_json,
    human_duration,
    human_size,
    is_quiet,
    json_option,
    open_store,
    plural,
    result,
    say,
)
from dsvc.cli.remotes import fsck_remote, remote_for
from dsvc.cli.render import printable
from dsvc.codec import DEFAULT_LEVEL
from dsvc.errors import IntegrityError, NotFoundError, StoreCorruptError, UsageError
from dsvc.store import Store, corrupt_message, default_home

# maintenance, checkout, demo and the transport are imported inside the commands that use them (`dsvc --help` loads no library: cli/core.py)

# -- init ----------------------------------------------------------------------------------


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def init(directory: str | None) -> None:
    """Create a store in DIRECTORY (default: --home, $DSVC_HOME or ~/.dsvc).

    Commands use the store in $DSVC_HOME (or --home); point it at the new store.

    \b
    Example:
      dsvc init ./team-store && export DSVC_HOME=$PWD/team-store
    """
    home = os.path.abspath(directory) if directory else str(default_home())
    existed = os.path.exists(os.path.join(home, "store.lmdb"))
    store = registry.open_store(home)
    params = store.chunker_params
    verb = "Reinitialized existing" if existed else "Initialized empty"
    result(f"{verb} dsvc store in {home}")
    say(
        f"  chunks {human_size(params.min_size)}/{human_size(params.avg_size)}/"
        f"{human_size(params.max_size)} (min/avg/max), zstd level {store.level}"
    )
    if directory and os.path.abspath(directory) != str(default_home()):
        say(f"  use it with: export DSVC_HOME={home}   (or dsvc --home {home} ...)")


# -- gc / fsck ------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--remote",
    "remote_spec",
    metavar="REMOTE",
    help="Collect garbage on this remote instead of the local store.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option(
    "--grace",
    type=click.IntRange(min=0),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="On a remote: keep packs younger than this (pushes in flight).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Locally: wait up to this long for `add`/`close` in other processes to finish.",
)
@json_option
def gc(remote_spec: str | None, dry_run: bool, grace: int, wait: float, as_json: bool) -> None:
    """Delete content no dataset version references any more (after `dsvc delete`).

    \b
    Example:
      dsvc gc --dry-run
      dsvc gc --remote origin
    """
    store = open_store(create=False)
    t0 = time.monotonic()
    if remote_spec:
        counts = remote_for(store, remote_spec).gc(grace_seconds=grace, dry_run=dry_run)
    else:
        from dsvc.maintenance import local_gc

        counts = local_gc(store, dry_run=dry_run, wait=wait)
    if as_json:
        emit_json({"dry_run": dry_run, **counts})
        return
    took = human_duration(time.monotonic() - t0)
    if remote_spec:
        result(_remote_gc_sentence(counts, remote_spec, dry_run, took))
    else:
        result(_local_gc_sentence(counts, str(store.home), dry_run, took))


def _local_gc_sentence(c: dict[str, Any], where: str, dry_run: bool, took: str) -> str:
    """``dsvc gc``'s report as a sentence: "Deleted 3 chunks and ..." ("Would delete")."""
    extras = [
        plural(c.get("statcache_purged", 0), "stat-cache entry", "stat-cache entries"),
        plural(c.get("cached_copies_deleted", 0), "cached copy", "cached copies"),
        plural(c.get("cache_files_deleted", 0), "content-cache file"),
        plural(c.get("temp_deleted", 0), "temporary file"),
    ]
    verb = "Would delete" if dry_run else "Deleted"
    freed = "would be freed" if dry_run else "freed"
    text = (
        f"{verb} {plural(c.get('chunks_deleted', 0), 'chunk')} and "
        f"{plural(c.get('objects_deleted', 0), 'object')} "
        f"({human_size(c.get('bytes_freed', 0))} {freed}), {', '.join(extras[:-1])} and "
        f"{extras[-1]} in store {where} ({took})"
    )
    return text + ("; nothing was deleted (dry run)" if dry_run else "")


def _remote_gc_sentence(c: dict[str, Any], name: str, dry_run: bool, took: str) -> str:
    """``dsvc gc --remote``'s report as a sentence."""
    verb = "Would delete" if dry_run else "Deleted"
    text = (
        f"{verb} {plural(c.get('packs_deleted', 0), 'pack')} "
        f"({human_size(c.get('bytes_deleted', 0))}) on remote {name}; "
        f"{plural(c.get('packs_kept', 0), 'pack')} kept"
    )
    if c.get("packs_marked"):
        text += (
            f", {plural(c['packs_marked'], 'pack')} "
            f"{'would be' if dry_run else ''} marked unused (a gc after --grace deletes them)"
        ).replace("  ", " ")
    if c.get("packs_too_young"):
        text += f", {plural(c['packs_too_young'], 'pack')} younger than --grace left alone"
    return text + f" ({took})" + ("; nothing was deleted (dry run)" if dry_run else "")


@cli.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Drop bad values (and the stat-cache entries and cached copies made from them), "
    "fetch the damaged datasets again from their remote, and list what must be re-added.",
)
@click.option(
    "--remote",
    "remote_spec",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Verify a remote's packs instead (default: the default remote) and mark damaged "
    "objects absent, so that `dsvc push` from a store that has them repairs the remote.",
)
@json_option
def fsck(repair: bool, remote_spec: str | None, as_json: bool) -> None:
    """Verify every chunk and object of the store against its hash, and that every
    dataset's content is there (exit 5 if anything is bad or missing).

    \b
    Example:
      dsvc fsck && echo store is sound
      dsvc fsck --repair
      dsvc fsck --remote origin
    """
    if remote_spec is not None:
        return fsck_remote(remote_spec or None, as_json)
    try:
        store = open_store(create=False)
    except StoreCorruptError as e:  # too damaged to open: the message says what and why
        if as_json:
            emit_json({"ok": False, "structure": [str(e)]})
        raise
    t0 = time.monotonic()
    from dsvc.maintenance import fsck as fsck_store
    from dsvc.maintenance import fsck_repair

    rep = (fsck_repair if repair else fsck_store)(store, progress=not is_quiet())
    if rep["structure"]:
        if as_json:
            emit_json({**rep, "ok": False})
        else:
            for problem in rep["structure"]:
                result(f"damaged: {problem}")
        raise StoreCorruptError(
            corrupt_message(store.home, f"{len(rep['structure'])} damaged pages or records")
        )
    bad = len(rep["bad_chunks"]) + len(rep["bad_objects"])
    missing = rep["missing"]
    cache = rep["cache"]
    cache_bad = (
        cache["unrepairable"] if repair else cache["bad_cache_files"] + cache["bad_copy_files"]
    )
    ok = not missing and (repair or bad == 0) and not cache_bad
    if as_json:
        emit_json({**rep, "ok": ok})
    else:
        result(
            f"checked {plural(rep['chunks'], 'chunk')} and {plural(rep['objects'], 'object')} "
            f"({human_size(rep['bytes'])}) in {human_duration(time.monotonic() - t0)}"
        )
        for cid in rep["bad_chunks"]:
            result(f"bad chunk {cid}")
        for oid in rep["bad_objects"]:
            result(f"bad object {oid}")
        if repair and bad:
            result(
                f"dropped {rep['dropped']} bad values, {rep['statcache_purged']} stat-cache "
                f"entries, {rep['cached_copies_deleted']} cached copies and "
                f"{rep['cache_files_deleted']} content-cache files"
            )
        for did in rep.get("refetched", []):
            result(f"fetched dataset {did} again from its remote")
        for d in missing:
            result(_damage_line(d, repair))
            known = d.get("sources") or {}
            for f in d["files"]:
                was = known.get(f)
                result(printable(f"  {f}" + (f"  (added from {', '.join(was)})" if was else "")))
        for f in cache_bad:
            result(printable(f"changed cached file {f}"))
        if repair and cache["repaired"]:
            result(f"repaired {cache['repaired']} changed files of cached copies")
    if bad and not repair:
        raise IntegrityError(
            f"{bad} corrupted item{'s' if bad != 1 else ''} in {store.path}; datasets using them "
            "cannot be read: run `dsvc fsck --repair` (it fetches them again from a remote, "
            "or lists the files to re-add)"
        )
    if missing:
        what = (
            "add the files listed again (`dsvc add --files`, to this or a new version): "
            "every version that uses them becomes readable"
            if repair
            else "run `dsvc fsck --repair`"
        )
        raise IntegrityError(
            f"{len(missing)} dataset{'s' if len(missing) != 1 else ''} in {store.home} cannot "
            f"be read completely ({', '.join(d['id'] for d in missing[:3])}"
            f"{'...' if len(missing) > 3 else ''}); {what}"
        )
    if cache_bad:
        raise IntegrityError(
            f"{len(cache_bad)} changed file{'s' if len(cache_bad) != 1 else ''} in the content "
            f"cache {store.home / 'cache'} (the store is sound): `dsvc cache verify` repairs "
            "them from the store"
        )


def _damage_line(d: dict[str, Any], repair: bool) -> str:
    """One line naming a damaged dataset and what to do about it."""
    name = printable(f"{d['project']}/{d['name']} v{d['version']} ({d['id']})")
    parts = []
    if d["files"]:
        n = len(d["files"])
        parts.append(f"{n} file{'s' if n != 1 else ''} {'to re-add' if repair else 'unreadable'}")
    if d["folders"]:
        parts.append(printable(f"folder listing lost for {', '.join(d['folders'])}"))
    if d["commit"]:
        parts.append("its commit is lost")
    return f"damaged {name}: {'; '.join(parts)}" + (
        "" if d["files"] and not d["folders"] and not d["commit"] else
        " (only a remote that has the version can restore it)"
    )


# -- cache -------------------------------------------------------------------------------------


@cli.group(no_args_is_help=True)
def cache() -> None:
    """Check or empty the cache of read-only copies under DSVC_HOME/cache.

    \b
    Example:
      dsvc cache verify
      dsvc cache clear
    """


@cache.command("verify")
@json_option
def cache_verify(as_json: bool) -> None:
    """Check every cached copy and content-cache file, and repair them from the store.

    Hashes each content-cache file; checks each file of each cached copy against the
    stat recorded when it was made (hashing only where the ctime alone moved). Bad
    files are replaced from the store; copies that cannot be checked are removed
    (`dsvc get` rebuilds them). Exit 5 if something could not be repaired.

    \b
    Example:
      dsvc cache verify --json
    """
    from dsvc.checkout import verify_cache

    store = open_store()
    t0 = time.monotonic()
    rep = verify_cache(store, repair=True)
    if as_json:
        emit_json({**rep, "ok": not rep["unrepairable"]})
    else:
        result(
            f"checked {plural(rep['cache_files'], 'cache file')} and "
            f"{plural(rep['cached_copies'], 'cached copy', 'cached copies')} in "
            f"{human_duration(time.monotonic() - t0)}; repaired {plural(rep['repaired'], 'file')}, "
            f"dropped {plural(len(rep['bad_cache_files']), 'cache file')}"
        )
        for f in rep["bad_copy_files"]:
            result(printable(f"repaired {f}"))
        for name in rep["copies_without_manifest"]:
            result(f"removed unverifiable copy {name}")
    if rep["unrepairable"]:
        raise IntegrityError(
            f"cached copies {rep['unrepairable']} had files whose content is not in the store; "
            "they were removed: `dsvc get` fetches and rebuilds them"
        )


@cache.command("clear")
@json_option
def cache_clear(as_json: bool) -> None:
    """Remove every cached copy and content-cache file (the store keeps the content).

    \b
    Example:
      dsvc cache clear
    """
    from dsvc.checkout import clear_cache

    store = open_store()
    rep = clear_cache(store)
    if as_json:
        emit_json(rep)
    else:
        result(
            f"removed {plural(rep['cached_copies'], 'cached copy', 'cached copies')} and "
            f"{plural(rep['cache_files'], 'cache file')} "
            f"from {store.home / 'cache'}"
        )


# -- config ----------------------------------------------------------------------------------

_MANAGED = {"remotes": "dsvc remote add/remove", "default_remote": "dsvc remote set-default"}
#: the settings `config set` changes, with what `config unset` puts back
_SETTABLE = {"zstd_level": DEFAULT_LEVEL}
#: fixed when the store is created (dedup depends on them)
_FIXED = ("chunker", "format_version")


def _refuse(key: str) -> None:
    """A usage error for a key `config set`/`unset` may not touch."""
    if key in _MANAGED:
        raise UsageError(f"{key!r} is managed by `{_MANAGED[key]}`")
    if key in _FIXED:
        raise UsageError(f"{key!r} is fixed when the store is created; use a new store")
    if key not in _SETTABLE:
        raise UsageError(
            f"unknown setting {key!r}; the settings are: {', '.join(sorted(_SETTABLE))}"
        )


@cli.group(no_args_is_help=True)
def config() -> None:
    """Read and change store settings (zstd_level...).

    \b
    Example:
      dsvc config get chunker
      dsvc config set zstd_level 3
    """


def _all_config(store: Store) -> dict[str, Any]:
    with store.reader() as r:
        out = dict(r.config_items())
    if "remotes" in out:
        from dsvc.remote.config import display_url, mask_options

        out["remotes"] = {
            n: {**r, "url": display_url(r["url"]), "options": mask_options(r.get("options"))}
            for n, r in out["remotes"].items()
        }
    return out


@config.command("get")
@click.argument("key", required=False)
@json_option
def config_get(key: str | None, as_json: bool) -> None:
    """Print the value of KEY (every setting when KEY is left out).

    \b
    Example:
      dsvc config get zstd_level
    """
    store = open_store(create=False)
    values = _all_config(store)
    if key is None:
        if as_json:
            emit_json(values)
        else:
            for k in sorted(values):
                result(f"{k} = {json.dumps(values[k], sort_keys=True)}")
        return
    if key not in values:
        raise NotFoundError(f"no setting {key!r}; see `dsvc config get` for all of them")
    v = values[key]
    if as_json:
        emit_json(v)
    else:
        result(v if isinstance(v, str) else json.dumps(v, sort_keys=True))


@config.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Set KEY to VALUE (parsed as JSON when it is valid JSON, else text).

    \b
    Example:
      dsvc config set zstd_level 3
    """
    _refuse(key)
    store = open_store()
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    if key == "zstd_level" and not (isinstance(parsed, int) and 0 <= parsed <= 19):
        raise UsageError("zstd_level must be an integer from 0 (no compression) to 19")
    store.set_config(key, parsed)
    result(f"{key} = {json.dumps(parsed)}")


@config.command("unset")
@click.argument("key")
def config_unset(key: str) -> None:
    """Put KEY back to its default (or drop a setting this dsvc does not know).

    \b
    Example:
      dsvc config unset zstd_level
    """
    store = open_store(create=False)
    if key not in _SETTABLE and key not in _MANAGED and key not in _FIXED:
        if store.get_config(key) is None:
            raise NotFoundError(f"no setting {key!r}; see `dsvc config get` for all of them")
        store.delete_config(key)  # left by an older dsvc that took any key
        say(f"removed {key}")
        return
    _refuse(key)
    store.set_config(key, _SETTABLE[key])
    result(f"{key} = {json.dumps(_SETTABLE[key])}")


# -- demo ------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Work here (kept) instead of a temporary folder.",
)
@click.option(
    "--size-mb",
    type=float,
    default=6.0,
    show_default=True,
    help="Approximate size of the sample data.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary folder.")
def demo(workdir: str | None, size_mb: float, keep: bool) -> None:
    """Run the whole workflow on generated sample data in a scratch store.

    create, add, close; modify and sync a second version; squash; push to a folder
    remote; clone into a second empty store and get the files back, byte for byte.
    Nothing outside the scratch folder is touched.

    \b
    Example:
      dsvc demo
      dsvc demo --workdir ./demo --size-mb 50
    """
    from dsvc.demo import run_demo

    run_demo(workdir=workdir, size_mb=size_mb, keep=keep, echo=click.echo)
