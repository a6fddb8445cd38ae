"""Drivers of the compared tools: dsvc, DVC and restic.

Each step of each tool runs as its own child process, so the wall time includes the
tool's start-up (what a user waits for) and ``os.wait4`` gives the child's peak RSS.

Steps (same for every tool; ``compare.py`` decides the order):

``add``      first add + commit of a folder into an empty local store
``version``  record the folder as the next version (re-add, modify, daily snapshot)
``push``     send the local store's versions to a folder remote
``restore``  an empty store + that remote -> the latest version in an empty folder

What each tool does for them:

* **dsvc** (Python API, in ``python peers.py dsvc STEP ...``): ``Dataset.create`` +
  ``add_files`` + ``upload`` + ``finalize``; a child version with ``sync_folder`` +
  ``upload`` + ``finalize``; ``add_remote(store, 'origin', folder)`` +
  ``Remote.push_dataset`` (every version, parents first); a second empty
  ``DSVC_HOME`` with only the remote -> ``Dataset.get(project, name)
  .get_mutable_local_copy(target)``.
* **DVC** (git-less repo, ``dvc init --no-scm``): ``dvc add data`` for add and every
  version; ``dvc remote add -d`` + ``dvc push`` (pushes what the current ``.dvc`` file
  references: without git, DVC only knows the latest version); restore = a fresh
  ``dvc init --no-scm`` repo with the ``.dvc`` file and the remote config, ``dvc pull``.
* **restic** (repository format 2, compression ``auto``): ``restic backup`` for add and
  every version; push = ``restic copy`` of every snapshot into a second repository in
  the remote folder (created untimed with ``init --copy-chunker-params`` so dedup
  carries over: that is creating the bucket, not pushing); restore = ``restic restore
  latest`` from the remote repository with an empty cache.

Stored bytes are apparent sizes (``du -sb``): dsvc's whole ``DSVC_HOME`` (LMDB file
with the stat cache), DVC's ``.dvc/cache``, restic's repository (its local cache of
metadata is not counted), and the remote folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = "bench"
NAME = "data"
RESTIC_PASSWORD = "dsvc-bench"  # a throw-away repository's password, not a secret
STEP_TIMEOUT = 3600


@dataclass
class Measure:
    wall_s: float
    peak_rss: int  # bytes
    out: str = ""
    peak_anon: int = 0  # bytes of anonymous memory (sampled)


class StepError(RuntimeError):
    pass


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None
) -> Measure:
    """Run ``cmd``; its wall time and peak RSS.

    The command runs under a small wrapper process (``peers.py measure``) that starts it
    and reads its rusage with ``wait4``: Linux carries the memory high-water mark of the
    process that calls exec over to the new program, so a child started straight from
    this (large) process would report at least our own peak.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        fd, report = tempfile.mkstemp(prefix="measure-", suffix=".json")
        os.close(fd)
        try:
            p = subprocess.run(
                [sys.executable, "-S", __file__, "measure", report, "--", *map(str, cmd)],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                timeout=STEP_TIMEOUT,
                check=False,
            )
            with open(report) as f:
                got = json.loads(f.read() or "{}")
        except subprocess.TimeoutExpired:
            raise StepError(f"{cmd[0]} timed out after {STEP_TIMEOUT} s: {cmd}") from None
        finally:
            os.unlink(report)
        out.seek(0)
        err.seek(0)
        text, etext = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0 or "wall_s" not in got:
        raise StepError(
            f"{' '.join(map(str, cmd))} failed with exit code {p.returncode}:\n{etext[-3000:]}"
        )
    return Measure(got["wall_s"], got["maxrss_kib"] * 1024, text, got.get("anon_kib", 0) * 1024)


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _measure_main(report: str, cmd: list[str]) -> int:
    """``peers.py measure REPORT -- CMD...``: run CMD, write its wall time, its peak RSS
    (``wait4``) and its peak anonymous RSS (``RssAnon`` sampled every 10 ms: RSS also
    counts file pages a tool maps, such as dsvc's LMDB file, which are page cache)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    anon = 0
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        anon = max(anon, _rss_anon_kib(p.pid))
        time.sleep(0.01)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    p.returncode = code
    with open(report, "w") as f:
        json.dump({"wall_s": wall, "maxrss_kib": ru.ru_maxrss, "anon_kib": anon, "exit": code}, f)
    return code


def du(path: str | Path) -> int:
    """Apparent size of everything below ``path`` (``du -sb``); 0 if absent."""
    total = 0
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            try:
                total += os.lstat(d).st_size
            except FileNotFoundError:
                pass
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    total += e.stat(follow_symlinks=False).st_size
    return total


class Tool:
    """One tool on one workload: a local store under ``root`` and a remote folder."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.remote = root / "remote"
        root.mkdir(parents=True, exist_ok=True)

    def add(self, data: Path) -> Measure:
        raise NotImplementedError

    def version(self, data: Path) -> Measure:
        raise NotImplementedError

    def push(self) -> Measure:
        raise NotImplementedError

    def restore(self, target: Path) -> Measure:
        """Restore the latest version into ``target``; returns where the files are."""
        raise NotImplementedError

    def restored_root(self, target: Path, data: Path) -> Path:
        return target

    def local_bytes(self) -> int:
        raise NotImplementedError

    def restore_store_bytes(self) -> int:
        return 0

    def remote_bytes(self) -> int:
        return du(self.remote)


# -- dsvc ----------------------------------------------------------------------------


class Dsvc(Tool):
    name = "dsvc"

    def __init__(self, root: Path, python: str = sys.executable) -> None:
        super().__init__(root)
        self.home = root / "home"
        self.home2 = root / "home-restore"
        self.python = python

    def _step(self, *args: str | Path, home: Path | None = None) -> Measure:
        env = {**os.environ, "DSVC_HOME": str(home or self.home)}
        env.pop("DSVC_REMOTE", None)
        return run([self.python, __file__, "dsvc", *map(str, args)], env=env)

    def add(self, data: Path) -> Measure:
        return self._step("add", data)

    def version(self, data: Path) -> Measure:
        return self._step("version", data)

    def push(self) -> Measure:
        return self._step("push", self.remote)

    def restore(self, target: Path) -> Measure:
        return self._step("restore", self.remote, target, home=self.home2)

    def local_bytes(self) -> int:
        return du(self.home)

    def used_bytes(self) -> int:
        """Bytes of the LMDB pages in use (the file reuses freed pages and grows in
        steps, so its size alone misstates what one version added)."""
        m = run(
            [self.python, __file__, "dsvc", "used"], env={**os.environ, "DSVC_HOME": str(self.home)}
        )
        return int(json.loads(m.out)["used"])

    def restore_store_bytes(self) -> int:
        return du(self.home2)


def _dsvc_main(argv: list[str]) -> None:
    """The dsvc side of a step, in its own process (``DSVC_HOME`` set by the caller)."""
    from dsvc import registry as reg
    from dsvc.dataset import Dataset
    from dsvc.remote.client import resolve
    from dsvc.remote.config import add_remote

    step, *args = argv
    if step == "add":
        ds = Dataset.create(dataset_name=NAME, dataset_project=PROJECT)
        n = ds.add_files(args[0])
        ds.upload(show_progress=False)
        ds.finalize()
        print(json.dumps({"id": ds.id, "changed": n}))
    elif step == "version":
        parent = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
        ds = Dataset.create(parent_datasets=[parent.id])
        removed, added, modified = ds.sync_folder(args[0])
        ds.upload(show_progress=False)
        ds.finalize()
        print(json.dumps({"id": ds.id, "changed": removed + added + modified}))
    elif step == "used":
        store = reg.open_store()
        print(json.dumps({"used": store.used_bytes()}))
    elif step == "push":
        store = reg.open_store()
        add_remote(store, "origin", args[0])
        latest = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
        remote = resolve(store, "origin", required=True)
        s = remote.push_dataset(latest.id, show_progress=False)
        print(json.dumps({"bytes_sent": s.bytes_sent, "packs": s.packs}))
    elif step == "restore":
        store = reg.open_store()
        add_remote(store, "origin", args[0])
        ds = Dataset.get(dataset_project=PROJECT, dataset_name=NAME)
        ds.get_mutable_local_copy(args[1])
        print(json.dumps({"id": ds.id}))
    else:
        raise SystemExit(f"unknown dsvc step {step!r}")


# -- DVC -----------------------------------------------------------------------------


class Dvc(Tool):
    """``dvc`` in a git-less repository whose root is the data folder's parent."""

    name = "DVC"

    def __init__(self, root: Path, exe: str, data: Path) -> None:
        super().__init__(root)
        self.exe = exe
        self.repo = data.parent  # DVC tracks only paths inside its repository
        self.data = data
        self.restore_repo = root / "restore-repo"
        self.env = {
            **os.environ,
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(root / "site-cache"),
        }

    def _dvc(self, *args: str | Path, cwd: Path | None = None) -> Measure:
        return run([self.exe, *map(str, args)], env=self.env, cwd=cwd or self.repo)

    def init(self) -> None:
        if not (self.repo / ".dvc").exists():
            self._dvc("init", "--no-scm", "-q")
            self._dvc("config", "core.analytics", "false")
            self._dvc("config", "core.check_update", "false")

    def add(self, data: Path) -> Measure:
        self.init()
        return self._dvc("add", "-q", data.name)

    version = add

    def push(self) -> Measure:
        self._dvc("remote", "add", "-f", "-d", "r", self.remote)
        return self._dvc("push", "-q")

    def restore(self, target: Path) -> Measure:
        r = self.restore_repo
        r.mkdir(parents=True)
        # the set-up a user does once (clone the project): not timed
        self._dvc("init", "--no-scm", "-q", cwd=r)
        shutil.copy(self.repo / ".dvc" / "config", r / ".dvc" / "config")
        shutil.copy(self.repo / f"{self.data.name}.dvc", r / f"{self.data.name}.dvc")
        m = self._dvc("pull", "-q", cwd=r)
        os.rename(r / self.data.name, target)
        return m

    def local_bytes(self) -> int:
        return du(self.repo / ".dvc" / "cache")

    def restore_store_bytes(self) -> int:
        return du(self.restore_repo / ".dvc" / "cache")


# -- restic --------------------------------------------------------------------------


class Restic(Tool):
    name = "restic"

    def __init__(self, root: Path, exe: str) -> None:
        super().__init__(root)
        self.exe = exe
        self.repo = root / "repo"
        self.env = {
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_FROM_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_CACHE_DIR": str(root / "cache"),
        }

    def _restic(self, *args: str | Path, env: dict[str, str] | None = None) -> Measure:
        return run([self.exe, *map(str, args)], env=env or self.env, cwd=self.root)

    def add(self, data: Path) -> Measure:
        if not self.repo.exists():
            self._restic("-r", self.repo, "init", "--repository-version", "2")
        return self.version(data)

    def version(self, data: Path) -> Measure:
        return self._restic("-r", self.repo, "backup", "--quiet", "--host", "bench", data)

    def push(self) -> Measure:
        self._restic("-r", self.remote, "init", "--from-repo", self.repo, "--copy-chunker-params")
        return self._restic("-r", self.remote, "copy", "--quiet", "--from-repo", self.repo)

    def restore(self, target: Path) -> Measure:
        env = {**self.env, "RESTIC_CACHE_DIR": str(self.root / "cache-restore")}
        return self._restic("-r", self.remote, "restore", "latest", "--target", target, env=env)

    def restored_root(self, target: Path, data: Path) -> Path:
        return target / str(data).lstrip("/")  # restic restores absolute paths

    def local_bytes(self) -> int:
        return du(self.repo)


def find_exe(given: str | None, name: str) -> str | None:
    if given:
        return given if os.path.exists(given) and os.access(given, os.X_OK) else None
    return shutil.which(name)


def version_of(exe: str, *args: str) -> str:
    try:
        out = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=120, check=False
        ).stdout
    except OSError:
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        sys.exit(_measure_main(argv[1], argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tool", choices=["dsvc"])
    ap.add_argument("args", nargs="+")
    a = ap.parse_args(argv)
    _dsvc_main(a.args)


if __name__ == "__main__":
    main()
