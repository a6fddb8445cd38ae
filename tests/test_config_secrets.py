"""Remote configuration that must be refused, and secrets that must never be kept or shown
(issue 10, items 6-12): URL typos, unknown or credential options (under every alias
obstore knows), endpoints obstore would panic on, the standard AWS_* set-up of an
S3-compatible store, clone/push onto something that is not a dsvc repository, read-only
commands on a missing store, and no instance-metadata lookups next to a custom endpoint.

The command line runs in subprocesses (as users run it); remote cases run against a
folder and moto's S3 server (``fs3_spec``).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servers
from remote_helpers import read_tree, run_script, write_tree

from dsvc.errors import ConfigError, DsvcError, RemoteError
from dsvc.remote import config
from dsvc.remote import options as ropts
from dsvc.remote.backend import Backend
from dsvc.store import Store

EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STATE = 2, 3, 4
SECRET = "Sup3r-Secret-Value-0123456789"
REPO = Path(__file__).resolve().parent.parent


def run(
    home: Path | None,
    *args: str,
    rc: int | None = 0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``dsvc ARGS`` in a subprocess with a clean environment (no AWS_*/DSVC_* of ours)."""
    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DSVC_", "AWS_", "GOOGLE_", "AZURE_"))
    }
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    if home is not None:
        e["DSVC_HOME"] = str(home)
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "dsvc", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=120,
    )
    if rc is not None:
        assert p.returncode == rc, f"dsvc {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr and "PanicException" not in p.stderr, p.stderr
    return p


def cli_remote(spec: dict[str, Any]) -> tuple[str, list[str], dict[str, str]]:
    """(URL, ``-o`` arguments, environment) to reach ``spec`` from the command line:
    plain options as ``-o``, credentials in the provider's variables."""
    plain, creds = config.split_credentials(spec["options"])
    args = [a for k, v in sorted(plain.items()) for a in ("-o", f"{k}={v}")]
    env = {f"AWS_{k.upper()}": v for k, v in creds.items()}
    return spec["url"], args, env


def make_store_with_a_version(home: Path, data: Path) -> str:
    run(None, "init", str(home))
    out = run(home, "create", "--project", "p", "--name", "n").stdout
    run(home, "add", "--files", str(data))
    run(home, "close")
    return out


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data", {"a.txt": b"alpha\n" * 100, "d/b.bin": os.urandom(5000)})


# ---------------------------------------------------------------------- 6: URL typos


TYPOS = ["s3:/bucket/x", "s3:bucket/x", "gs:/bucket/x", "ftp://x/y", "s3://", "gs:///x",
         "share/dsvc", "s3://bucket/a/../b", "s3://bucket/x?versionId=1"]  # fmt: skip


@pytest.mark.parametrize("url", TYPOS)
def test_url_typos_are_refused_where_given(url: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    with pytest.raises(ConfigError):
        config.add_remote(store, "origin", url)
    assert store.get_config("remotes") is None
    with pytest.raises(ConfigError):
        config.lookup(store, url)  # a URL passed to push/fetch/upload(output_url=)


def test_typo_hint_names_the_probable_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 's3://bucket/x'"):
        config.add_remote(Store(tmp_path / "home"), "origin", "s3:/bucket/x")


def test_cli_refuses_typos_and_creates_no_local_folder(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    make_store_with_a_version(home, data)
    for url in ("s3:/bucket/x", "s3:bucket/x", "gs:/bucket/x", "ftp://x/y", "s3://", "memory://x",
                "share"):  # fmt: skip
        p = run(home, "remote", "add", "origin", url, rc=EXIT_USAGE, cwd=tmp_path)
        assert "error" in p.stderr
        run(home, "clone", url, str(tmp_path / "c"), rc=EXIT_USAGE, cwd=tmp_path)
        rc = EXIT_NOT_FOUND if url == "share" else EXIT_USAGE  # a bare word names a remote
        run(home, "push", "--init", rc=rc, cwd=tmp_path, env={"DSVC_REMOTE": url})
    assert sorted(os.listdir(tmp_path)) == ["data", "home"]  # no ./s3:, ./gs:, ./c
    assert json.loads(run(home, "remote", "list", "--json").stdout) == []


def test_unknown_option_names_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(None, "init", str(home))
    p = run(home, "remote", "add", "o", "s3://b/p", "-o", "endpiont=http://h:1", rc=EXIT_USAGE)
    assert "did you mean 'endpoint'" in p.stderr
    run(home, "remote", "add", "o", str(tmp_path / "r"), "-o", "region=x", rc=EXIT_USAGE)
    run(home, "remote", "add", "o", "s3://b/p", "-o", "bucket=other", rc=EXIT_USAGE)
    run(home, "remote", "add", "o", "s3://b/p", "-o", "endpoint=http://h:1", "-o", "region=r")
    listed = json.loads(run(home, "remote", "list", "--json").stdout)
    assert listed[0]["options"] == {"endpoint": "http://h:1", "region": "r"}


def test_plain_paths_must_be_absolute_or_dot_prefixed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(None, "init", str(home))
    run(home, "remote", "add", "a", "share", rc=EXIT_USAGE, cwd=tmp_path)
    run(home, "remote", "add", "a", "./share", cwd=tmp_path)
    run(home, "remote", "add", "b", str(tmp_path / "abs"))
    urls = {r["name"]: r["url"] for r in json.loads(run(home, "remote", "list", "--json").stdout)}
    assert urls == {"a": str(tmp_path / "share"), "b": str(tmp_path / "abs")}


def test_python_api_validates_output_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsvc.dataset import Dataset

    monkeypatch.setenv("DSVC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        Dataset.create(dataset_name="n", dataset_project="p", output_uri="gs:/bucket/x")
    ds = Dataset.create(dataset_name="n", dataset_project="p")
    ds.add_files(str(write_tree(tmp_path / "d", {"f": b"1"})))
    with pytest.raises(ConfigError):
        ds.upload(output_url="s3:bucket/x")
    monkeypatch.setenv("DSVC_REMOTE", "s3:/bucket/x")
    with pytest.raises(ConfigError, match="DSVC_REMOTE"):
        ds.upload()
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "gs:").exists()


# ---------------------------------------------------------------------- 7: panics


def test_endpoint_without_scheme_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(None, "init", str(home))
    p = run(home, "remote", "add", "o", "s3://b", "-o", "endpoint=127.0.0.1:5123", rc=EXIT_USAGE)
    assert "http://" in p.stderr
    for bad in ("http://", "http://user:pw@h:1", "http://h:99999", "https:/h"):
        run(home, "remote", "add", "o", "s3://b", "-o", f"endpoint={bad}", rc=EXIT_USAGE)


def test_endpoint_from_the_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:5123")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        b = Backend.from_url("s3://b/p", {"access_key_id": "a", "secret_access_key": SECRET})
        b.head("x")  # today: pyo3_runtime.PanicException: InvalidUri


def test_an_obstore_panic_becomes_a_remote_error() -> None:
    from obstore.store import S3Store

    # Bypass dsvc's validation to reach a real panic inside obstore (InvalidUri).
    raw = S3Store(
        "b", config={"endpoint": "127.0.0.1:5123", "access_key_id": "a", "secret_access_key": "s"}
    )
    b = Backend(raw, "s3://b")
    with pytest.raises(RemoteError, match="remote s3://b"):
        b.head("x")
    with pytest.raises(RemoteError):
        b.put("x", b"1")


# ---------------------------------------------------------------------- 8: AWS_* environment


@pytest.mark.servers
def test_s3_compatible_store_through_the_standard_environment_only(
    s3_server: dict[str, Any], tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "AWS_ENDPOINT_URL": s3_server["endpoint"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": servers.S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": servers.S3_SECRET,
        "AWS_REGION": "us-east-1",
    }
    url = f"s3://{s3_server['bucket']}/env-{uuid.uuid4().hex[:8]}"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    b = Backend.from_url(url)  # no options at all
    b.put("k", b"v")  # today: "HTTP error: builder error"
    assert b.get("k") == b"v"
    b.delete("k")
    # the whole command-line round trip, configured by the environment only
    home, clone = tmp_path / "a", tmp_path / "b"
    make_store_with_a_version(home, data)
    run(home, "remote", "add", "origin", url, "--init", env=env)
    assert "Pushed 1 dataset" in run(home, "push", env=env).stdout
    assert "Cloned 1 dataset" in run(None, "clone", url, str(clone), env=env).stdout
    run(clone, "get", "--project", "p", "--name", "n", "--copy", str(tmp_path / "got"), env=env)
    assert read_tree(tmp_path / "got") == read_tree(data)


# ---------------------------------------------------------------------- 9: clone targets


def test_clone_of_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    missing, target = tmp_path / "no-such-remote", tmp_path / "target"
    p = run(None, "clone", str(missing), str(target), rc=EXIT_NOT_FOUND)
    assert "no dsvc repository" in p.stderr
    assert not missing.exists() and not target.exists()


@pytest.mark.parametrize("populated", [False, True], ids=["empty", "foreign-files"])
def test_clone_of_a_place_without_a_repository_is_refused(
    fs3_spec: dict[str, Any], tmp_path: Path, populated: bool
) -> None:
    if populated:
        Backend.from_url(fs3_spec["url"], fs3_spec["options"]).put("other/file.txt", b"not ours")
    url, opts, env = cli_remote(fs3_spec)
    target = tmp_path / "target"
    p = run(None, "clone", url, str(target), *opts, rc=EXIT_NOT_FOUND, env=env)
    assert "no dsvc repository" in p.stderr and "--init" in p.stderr
    assert not target.exists()


def test_clone_into_a_non_empty_folder_that_is_not_a_store(tmp_path: Path, data: Path) -> None:
    remote = tmp_path / "remote"
    # a remote holding one version, pushed through the Python API
    args = {"url": str(remote), "options": {}, "folder": str(data), "project": "p", "name": "n"}
    pushed = run_script("push", args, home=tmp_path / "home")
    assert pushed.returncode == 0, pushed.stderr
    busy = write_tree(tmp_path / "busy", {"notes.txt": b"mine"})
    p = run(None, "clone", str(remote), str(busy), rc=EXIT_STATE)
    assert "not empty" in p.stderr
    assert os.listdir(busy) == ["notes.txt"]  # no store written into it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "Cloned 1 dataset" in run(None, "clone", str(remote), str(empty)).stdout


def test_starting_a_remote_is_explicit(
    fs3_spec: dict[str, Any], tmp_path: Path, data: Path
) -> None:
    url, opts, env = cli_remote(fs3_spec)
    home = tmp_path / "home"
    make_store_with_a_version(home, data)
    run(home, "remote", "add", "origin", url, *opts, env=env)
    p = run(home, "push", rc=EXIT_NOT_FOUND, env=env)
    assert "--init" in p.stderr
    b = Backend.from_url(fs3_spec["url"], fs3_spec["options"])
    assert list(b.list()) == []  # the refused push wrote nothing
    run(home, "push", "--init", env=env)
    assert b.head("dsvc.json") is not None
    # remote add --init on a fresh place starts an empty repository that clones fine
    fresh = url + "-fresh"
    run(home, "remote", "add", "fresh", fresh, *opts, "--init", env=env)
    c = run(None, "clone", fresh, str(tmp_path / "c"), *opts, env=env)
    assert "Cloned 0 datasets" in c.stdout and "empty repository" in c.stderr
    # --init on an existing repository keeps it
    out = run(home, "remote", "add", "again", url, *opts, "--init", env=env).stdout
    assert "already holds a dsvc repository" in out


# ---------------------------------------------------------------------- 10: missing store


@pytest.mark.parametrize(
    "args",
    [["search"], ["list"], ["get", "--copy", "out"], ["log"], ["fsck"], ["remote", "list"],
     ["config", "get"], ["diff"], ["verify", "--id", "0" * 32], ["gc", "--dry-run"]],
    ids=lambda a: a[0] if a[0] != "remote" else "remote-list",
)  # fmt: skip
def test_read_only_commands_do_not_create_a_store(args: list[str], tmp_path: Path) -> None:
    home = tmp_path / "no-store-here"
    p = run(None, "--home", str(home), *args, rc=EXIT_NOT_FOUND, cwd=tmp_path)
    assert "no dsvc store" in p.stderr and str(home) in p.stderr
    assert not home.exists()


# ---------------------------------------------------------------------- 11: credentials


def test_credential_keys_are_obstore_keys() -> None:
    for provider, keys in ropts.CREDENTIAL_KEYS.items():
        assert keys <= set(ropts.config_keys(provider).values()), provider


@pytest.mark.parametrize("provider", ["s3", "azure", "gcs"])
def test_every_alias_of_every_credential_is_refused(provider: str, tmp_path: Path) -> None:
    url = {"s3": "s3://b/p", "azure": "az://c/p", "gcs": "gs://b/p"}[provider]
    aliases = [a for a, k in ropts.config_keys(provider).items()
               if k in ropts.CREDENTIAL_KEYS[provider]]  # fmt: skip
    assert len(aliases) >= 2 * len(ropts.CREDENTIAL_KEYS[provider])
    store = Store(tmp_path / "home")
    for alias in aliases + [a.upper() for a in aliases]:
        with pytest.raises(ConfigError) as e:
            config.add_remote(store, "r", url, {alias: SECRET})
        assert SECRET not in str(e.value)
    assert store.get_config("remotes") is None
    store.close()
    assert SECRET.encode() not in (tmp_path / "home" / "store.lmdb" / "data.mdb").read_bytes()


def test_azure_master_key_alias_is_refused_by_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(None, "init", str(home))
    for opt in ("master_key", "access_key", "AZURE_STORAGE_ACCOUNT_KEY", "sas_token"):
        p = run(home, "remote", "add", "az", "az://c/p", "-o", "account_name=acct",
                "-o", f"{opt}={SECRET}", rc=EXIT_USAGE)  # fmt: skip
        assert "never stores credentials" in p.stderr and SECRET not in p.stderr + p.stdout
    assert SECRET.encode() not in (home / "store.lmdb" / "data.mdb").read_bytes()


def test_userinfo_in_urls_is_refused_and_never_printed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(None, "init", str(home))
    url = f"s3://AKIDEXAMPLE:{SECRET}@bucket/x"
    p = run(home, "remote", "add", "origin", url, "-o", "endpoint=http://h:1", rc=EXIT_USAGE)
    assert SECRET not in p.stdout + p.stderr and "user name or password" in p.stderr
    p = run(None, "clone", url, str(tmp_path / "c"), rc=EXIT_USAGE)
    assert SECRET not in p.stdout + p.stderr
    assert SECRET.encode() not in (home / "store.lmdb" / "data.mdb").read_bytes()


def test_a_remote_stored_with_credentials_by_an_older_version_is_not_printed(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    run(None, "init", str(home))
    store = Store(home)
    store.set_config(
        "remotes",
        {"old": {"url": f"s3://AKID:{SECRET}@bucket/x", "options": {"master_key": SECRET}}},
    )
    store.close()
    for args in (["remote", "list"], ["remote", "list", "--json"], ["config", "get"],
                 ["config", "get", "remotes", "--json"]):  # fmt: skip
        out = run(home, *args).stdout
        assert SECRET not in out and "bucket/x" in out


# ---------------------------------------------------------------------- 12: metadata services


class Recorder:
    """A loopback HTTP server that records each request (method, path, headers) and
    answers ``status`` with an empty body (or ``body``)."""

    def __init__(self, status: int = 404, body: bytes = b"") -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _any(self) -> None:
                rec.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer((servers.HOST, 0), H)
        self.port = self.server.server_address[1]
        self.url = f"http://{servers.HOST}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.stop()


@pytest.fixture
def no_cloud_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere: no AWS_/GOOGLE_/AZURE_ variables, an empty HOME."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "GOOGLE_", "AZURE_", "DSVC_REMOTE")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))


@pytest.mark.servers
def test_s3_custom_endpoint_without_credentials_stays_on_the_endpoint(
    s3_server: dict[str, Any], no_cloud_env: None
) -> None:
    # Without the fix obstore first asks 169.254.169.254 for credentials and fails
    # there. Now the requests go, unsigned, to the endpoint alone: moto accepts the
    # anonymous write and refuses the anonymous read of a private object (403), which
    # dsvc reports as a credentials problem of that remote.
    b = Backend.from_url(
        f"s3://{s3_server['bucket']}/anon-{uuid.uuid4().hex[:8]}",
        {"endpoint": s3_server["endpoint"]},
        retries=0,
    )
    b.put("k", b"v")
    with pytest.raises(RemoteError, match="403.*check the credentials"):
        b.get("k")


def test_s3_custom_endpoint_without_credentials_sends_unsigned_requests_there(
    recorder: Recorder, no_cloud_env: None
) -> None:
    b = Backend.from_url("s3://bucket/p", {"endpoint": recorder.url}, retries=0)
    assert b.head("x") is None  # the recorder answers 404: the request reached it
    assert recorder.requests, "no request reached the configured endpoint"
    assert all("Authorization" not in h for _, _, h in recorder.requests)


def test_s3_instance_metadata_only_when_asked(recorder: Recorder, no_cloud_env: None) -> None:
    # Asking for it (metadata_endpoint) still uses the instance-metadata credentials flow.
    b = Backend.from_url(
        "s3://bucket/p",
        {"endpoint": "http://127.0.0.1:9", "metadata_endpoint": recorder.url},
        retries=0,
    )
    with pytest.raises(DsvcError):
        b.head("x")
    assert any("/latest/" in path for _, path, _ in recorder.requests), recorder.requests


def test_gcs_custom_endpoint_without_credentials_never_asks_the_metadata_server(
    recorder: Recorder, no_cloud_env: None
) -> None:
    b = Backend.from_url("gs://bucket/p", {"base_url": recorder.url}, retries=0)
    assert b.head("x") is None  # the recorder answers 404: the request reached it
    assert recorder.requests, "no request reached the configured endpoint"
    for _method, _path, headers in recorder.requests:
        assert "Authorization" not in headers  # unsigned: no token was fetched anywhere


def test_azure_custom_endpoint_without_credentials_never_asks_the_metadata_server(
    recorder: Recorder, no_cloud_env: None
) -> None:
    # without a key Azure's client would ask the managed-identity endpoint (IMDS) first
    opts = {"account_name": "acct", "endpoint": f"{recorder.url}/acct"}
    b = Backend.from_url("az://cont/p", opts, retries=0)
    assert b.head("x") is None
    assert recorder.requests and all("Authorization" not in h for _, _, h in recorder.requests)


def test_gcs_tests_use_credentials_that_disable_oauth(tmp_path: Path) -> None:
    # The GCS fixture's service-account file names the emulator and disables OAuth, so
    # no test's GCS client ever asks Google's metadata server for a token.
    opts = servers.gcs_options(1, tmp_path)
    sa = json.loads(Path(opts["service_account"]).read_text())
    assert sa["disable_oauth"] is True and sa["gcs_base_url"].startswith("http://127.0.0.1:")
    assert not ropts.wants_unsigned("gcs", opts)  # credentials given: left to obstore
