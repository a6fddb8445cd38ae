"""dsvc.remote.backend on every kind of remote: file, memory, S3 (moto), Azure (Azurite),
GCS (fake-gcs-server behind an adapter, see tests/servers.py)."""

from __future__ import annotations

import base64
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import servers

from dsvc.errors import (
    ConfigError,
    ConflictError,
    InvalidPathError,
    NotFoundError,
    RemoteError,
)
from dsvc.remote import backend as backend_mod
from dsvc.remote.backend import Backend, ObjectVersion


def open_remote(spec: dict[str, Any]) -> Backend:
    return Backend.from_url(spec["url"], spec["options"])


# ---------------------------------------------------------------------- round trips


def test_put_get_head_list_delete(remote_spec: dict[str, Any]) -> None:
    b = open_remote(remote_spec)
    data = bytes(range(256)) * 40
    v = b.put("packs/p1.pack", data)
    assert v.etag or v.version
    assert b.get("packs/p1.pack") == data
    assert b.get_range("packs/p1.pack", 10, 20) == data[10:30]
    assert b.get_range("packs/p1.pack", 0, 0) == b""
    assert b.get_ranges("packs/p1.pack", [(0, 5), (300, 7), (len(data) - 3, 3)]) == [
        data[:5],
        data[300:307],
        data[-3:],
    ]
    got = b.get_versioned("packs/p1.pack")
    assert got is not None and got[0] == data
    info = b.head("packs/p1.pack")
    assert info is not None
    assert info.key == "packs/p1.pack" and info.size == len(data)
    assert info.version.etag == got[1].etag

    b.put("packs/p1.idx", b"idx")
    b.put("packs2/x", b"x")
    b.put("refs/heads/main", memoryview(b"ref"))
    assert sorted(i.key for i in b.list()) == [
        "packs/p1.idx",
        "packs/p1.pack",
        "packs2/x",
        "refs/heads/main",
    ]
    assert sorted(i.key for i in b.list("packs/")) == ["packs/p1.idx", "packs/p1.pack"]
    # a plain string prefix, not only whole "folders"
    assert sorted(i.key for i in b.list("packs")) == ["packs/p1.idx", "packs/p1.pack", "packs2/x"]
    assert [i.key for i in b.list("packs/p1.i")] == ["packs/p1.idx"]
    assert {i.key: i.size for i in b.list("refs/")} == {"refs/heads/main": 3}
    assert list(b.list("nothing/")) == []

    b.delete("packs/p1.pack")
    b.delete("packs/p1.pack")  # missing is not an error
    assert b.head("packs/p1.pack") is None
    assert b.get_versioned("packs/p1.pack") is None
    with pytest.raises(NotFoundError, match="p1.pack"):
        b.get("packs/p1.pack")
    with pytest.raises(NotFoundError):
        b.get_range("packs/p1.pack", 0, 1)


def test_put_file_small_and_multipart(
    remote_spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = open_remote(remote_spec)
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(1000))
    b.put_file("small", str(small))
    assert b.get("small") == small.read_bytes()
    if remote_spec["kind"] == "gcs":
        pytest.skip("fake-gcs-server has no XML multipart upload API (see GcsXmlAdapter)")
    # Lower the threshold so a 12 MiB file goes up in three 5 MiB parts (S3's minimum).
    monkeypatch.setattr(backend_mod, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(backend_mod, "MULTIPART_CHUNK", 5 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20) * 12)
    b.put_file("big", str(big))
    info = b.head("big")
    assert info is not None and info.size == 12 << 20
    assert b.get_range("big", (7 << 20) - 5, 10) == big.read_bytes()[(7 << 20) - 5 : (7 << 20) + 5]


def test_invalid_keys(remote_spec: dict[str, Any]) -> None:
    b = open_remote(remote_spec)
    for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/"]:
        with pytest.raises(InvalidPathError):
            b.put(bad, b"x")


# ---------------------------------------------------------------------- conditional writes


def test_create_if_absent(remote_spec: dict[str, Any]) -> None:
    b = open_remote(remote_spec)
    assert b.create("dsvc.json", b"v1") is True
    assert b.create("dsvc.json", b"v2") is False
    assert b.get("dsvc.json") == b"v1"


def test_compare_and_swap(remote_spec: dict[str, Any]) -> None:
    b = open_remote(remote_spec)
    v1 = b.compare_and_swap("refs/main", b"one", None)
    with pytest.raises(ConflictError):
        b.compare_and_swap("refs/main", b"again", None)  # must not exist yet
    v2 = b.compare_and_swap("refs/main", b"two", v1)
    assert v2 != v1
    with pytest.raises(ConflictError, match="refs/main"):
        b.compare_and_swap("refs/main", b"stale", v1)
    assert b.get("refs/main") == b"two"
    got = b.get_versioned("refs/main")
    assert got is not None and got[1].etag == v2.etag
    b.compare_and_swap("refs/main", b"three", got[1])
    assert b.get("refs/main") == b"three"
    b.delete("refs/main")
    with pytest.raises(ConflictError):
        b.compare_and_swap("refs/main", b"four", v2)  # deleted meanwhile
    # an unknown version never matches
    b.put("refs/x", b"x")
    with pytest.raises(ConflictError):
        b.compare_and_swap("refs/x", b"y", ObjectVersion('"nope"', "12345"))


def _increment(b: Backend, key: str, times: int) -> int:
    """Read-modify-CAS-retry `times` increments of a decimal counter; returns CAS losses."""
    losses = 0
    for _ in range(times):
        while True:
            got = b.get_versioned(key)
            assert got is not None
            try:
                b.compare_and_swap(key, str(int(got[0]) + 1).encode(), got[1])
                break
            except ConflictError:
                losses += 1
    return losses


def test_cas_race_threads(remote_spec: dict[str, Any]) -> None:
    first = open_remote(remote_spec)
    first.put("counter", b"0")
    errors: list[BaseException] = []
    losses: list[int] = []

    def worker() -> None:
        try:  # each thread is its own client, as separate pushers would be
            losses.append(_increment(open_remote(remote_spec), "counter", 10))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert first.get("counter") == b"80"  # nothing lost
    assert len(losses) == 8


def _process_worker(url: str, n: int) -> None:
    _increment(Backend.from_url(url), "counter", n)


def test_cas_race_processes_local(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'remote'}"
    Backend.from_url(url).put("counter", b"0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_worker, args=(url, 10)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert Backend.from_url(url).get("counter") == b"40"


def test_check_conditional_writes(remote_spec: dict[str, Any]) -> None:
    b = open_remote(remote_spec)
    b.check_conditional_writes()
    assert [i.key for i in b.list("_probe/")] == []  # cleaned up


class CreateIgnoresCondition(Backend):
    """A remote like some S3 clones: accepts If-None-Match but overwrites anyway."""

    def create(self, key: str, data: bytes) -> bool:
        self.put(key, data)
        return True


class CasIgnoresCondition(Backend):
    def compare_and_swap(
        self, key: str, data: bytes, expected: ObjectVersion | None
    ) -> ObjectVersion:
        return self.put(key, data)


@pytest.mark.parametrize("broken", [CreateIgnoresCondition, CasIgnoresCondition])
def test_check_conditional_writes_refuses_broken_remote(
    remote_spec: dict[str, Any], broken: type[Backend]
) -> None:
    b = broken.from_url(remote_spec["url"], remote_spec["options"])
    assert isinstance(b, broken)
    with pytest.raises(ConfigError, match="ignores conditional writes.*refusing to use it"):
        b.check_conditional_writes()
    assert [i.key for i in b.list("_probe/")] == []


# ---------------------------------------------------------------------- failures


def _closed_port() -> int:
    return servers.free_port()  # bound then released: nothing listens there


SECRET = "s3cr3t-Value-That-Must-Not-Leak"


def _down_remotes() -> list[tuple[str, dict[str, str]]]:
    port = _closed_port()
    ep = f"http://127.0.0.1:{port}"
    return [
        (
            "s3://bkt/p",
            {
                "endpoint": ep,
                "region": "us-east-1",
                "access_key_id": "AKIDDOWN",
                "secret_access_key": SECRET,
            },
        ),
        (
            "az://cont/p",
            {
                "account_name": "devstoreaccount1",
                "endpoint": f"{ep}/devstoreaccount1",
                "account_key": base64.b64encode(SECRET.encode()).decode(),
            },
        ),
    ]


@pytest.mark.parametrize("which", [0, 1], ids=["s3", "azure"])
def test_remote_down_fails_fast_without_secrets(which: int) -> None:
    url, opts = _down_remotes()[which]
    b = Backend.from_url(url, opts, retries=2)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as ei:
        b.put("refs/x", b"1")
    assert time.monotonic() - t0 < 30
    msg = str(ei.value)
    assert "cannot reach the remote" in msg and url.split("/")[2] in msg
    for text in (msg, repr(b), b.url):
        assert SECRET not in text and opts.get("account_key", SECRET) not in text
    with pytest.raises(RemoteError):
        b.get("refs/x")


def test_remote_down_gcs(tmp_path: Path) -> None:
    opts = servers.gcs_options(_closed_port(), tmp_path)
    b = Backend.from_url("gs://bkt/p", opts, retries=1)
    with pytest.raises(RemoteError, match="cannot reach the remote"):
        b.head("x")


@pytest.mark.servers
def test_s3_wrong_credentials(server_dir: Path) -> None:
    # A second moto that enforces IAM auth from the first request: no key is valid there.
    port = servers.free_port()
    srv = servers.Server(
        "moto-auth",
        [servers.sys.executable, "-m", "moto.server", "-H", servers.HOST, "-p", str(port)],
        port,
        server_dir,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
    )
    try:
        srv.wait_ready("/moto-api/")
        opts = servers.s3_options(f"http://127.0.0.1:{port}")
        opts["secret_access_key"] = SECRET
        b = Backend.from_url("s3://bkt/p", opts)
        with pytest.raises(RemoteError, match="check the credentials") as ei:
            b.get("x")
        assert SECRET not in str(ei.value)
        with pytest.raises(RemoteError, match="check the credentials"):
            b.put("x", b"1")
    finally:
        srv.stop()


@pytest.mark.servers
def test_azure_wrong_key(azure_server: dict[str, Any]) -> None:
    opts = dict(azure_server["options"])
    opts["account_key"] = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    b = Backend.from_url(f"az://{azure_server['bucket']}/p", opts)
    with pytest.raises(RemoteError, match="check the credentials") as ei:
        b.put("x", b"1")
    assert opts["account_key"] not in str(ei.value)


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["s3", "azure", "gcs"])
def test_missing_bucket(kind: str, request: pytest.FixtureRequest) -> None:
    srv = request.getfixturevalue(f"{kind}_server")
    scheme = {"s3": "s3", "azure": "az", "gcs": "gs"}[kind]
    b = Backend.from_url(f"{scheme}://no-such-bucket-x/p", srv["options"])
    with pytest.raises(RemoteError, match="does not exist"):
        b.put("x", b"1")
    with pytest.raises((RemoteError, NotFoundError)):
        b.get("x")


@pytest.mark.servers
def test_credentials_never_shown(s3_server: dict[str, Any]) -> None:
    b = Backend.from_url(f"s3://{s3_server['bucket']}/p", s3_server["options"])
    secret = s3_server["options"]["secret_access_key"]
    assert secret not in repr(b) and secret not in b.url and secret not in str(vars(b).get("url"))
    assert b.url == f"s3://{s3_server['bucket']}/p"


# ---------------------------------------------------------------------- URL forms


def test_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    b = Backend.from_url("rel/remote")
    assert b.url == str(tmp_path / "rel" / "remote")
    # opening creates nothing; reads see an empty remote, the first write creates it
    assert b.head("a/b") is None and list(b.list()) == []
    assert not (tmp_path / "rel").exists()
    b.put("a/b", b"1")
    assert (tmp_path / "rel" / "remote" / "a" / "b").read_bytes() == b"1"
    b2 = Backend.from_url(f"file://{tmp_path}/rel/remote")
    assert b2.url == f"file://{tmp_path}/rel/remote" and b2.get("a/b") == b"1"
    b3 = Backend.from_url(str(tmp_path / "abs"))
    assert b3.url == str(tmp_path / "abs")


def test_memory_is_shared_by_name() -> None:
    a = Backend.from_url("memory://shared-test")
    a.put("k", b"v")
    assert Backend.from_url("memory://shared-test").get("k") == b"v"
    assert Backend.from_url("memory://other-test").head("k") is None


def test_azure_url_forms() -> None:
    opts = {"account_key": "a2V5", "endpoint": "http://127.0.0.1:9/acct"}
    b = Backend.from_url("azure://acct.blob.core.windows.net/cont/some/prefix", opts)
    assert b.url == "azure://acct.blob.core.windows.net/cont/some/prefix"
    assert "a2V5" not in repr(b)
    b = Backend.from_url("az://cont/pre", {**opts, "account_name": "acct"})
    assert b.url == "az://cont/pre"


def test_bad_url_and_options() -> None:
    with pytest.raises(ConfigError, match="unsupported remote URL scheme"):
        Backend.from_url("ftp://user:pw@host/x")
    with pytest.raises(ConfigError) as ei:
        Backend.from_url("s3://b/p", {"no_such_option": "1", "secret_access_key": SECRET})
    assert SECRET not in str(ei.value)


def test_scrub_removes_signatures() -> None:
    text = (
        "GET https://a.blob.core.windows.net/c/x?sv=2021&sig=abcDEF%2B&se=2030 "
        "X-Amz-Signature=deadbeef Authorization: AWS4-HMAC-SHA256 Credential=AKID/x"
    )
    out = backend_mod._scrub(text, ("AKID",))
    for leaked in ("abcDEF", "deadbeef", "AKID", "AWS4-HMAC"):
        assert leaked not in out


def test_userinfo_in_url_is_never_displayed() -> None:
    b = Backend.from_url(f"s3://AKIDX:{SECRET}@bkt/p", {"endpoint": "http://127.0.0.1:9"})
    assert b.url == "s3://bkt/p" and SECRET not in repr(b)
