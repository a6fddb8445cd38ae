"""Shared pytest fixtures. Each block is owned by one part of dsvc; append new blocks below."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Some tests materialize trees over 1,000 folders deep (hostile remotes); pytest removes old
# temporary folders with the recursive shutil.rmtree, which needs a frame per level.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))

# ======================================================================================
# Remote object stores (dsvc/remote/backend.py; servers in tests/servers.py)
# --------------------------------------------------------------------------------------
# Session fixtures start real servers on free loopback ports the first time a test needs
# them and stop them at the end of the session. `remote_spec` runs a test on every
# backend: it yields {"kind", "url", "options"} ready for Backend.from_url, with a fresh
# prefix per test. Server-backed params carry the `servers` marker (-m "not servers").
# ======================================================================================

if str(Path(__file__).parent) not in sys.path:  # `import servers` with or without __init__
    sys.path.insert(0, str(Path(__file__).parent))
import servers  # noqa: E402

REMOTE_KINDS = ["file", "memory", "s3", "azure", "gcs"]
SERVER_KINDS = frozenset({"s3", "azure", "gcs"})
TEST_BUCKET = "dsvc-test"


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs and data of the test servers (kept by pytest's tmp retention for debugging)."""
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def s3_server(server_dir: Path) -> Iterator[dict[str, Any]]:
    """moto in server mode, with bucket TEST_BUCKET."""
    try:
        srv = servers.start_moto(server_dir)
    except (OSError, RuntimeError) as e:
        servers.unavailable(f"moto S3 server did not start: {e}")
    endpoint = f"http://{servers.HOST}:{srv.port}"
    try:
        servers.s3_create_bucket(endpoint, TEST_BUCKET)
        yield {
            "endpoint": endpoint,
            "port": srv.port,
            "bucket": TEST_BUCKET,
            "options": servers.s3_options(endpoint),
        }
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def azure_server(server_dir: Path) -> Iterator[dict[str, Any]]:
    """Azurite (blob only, in memory), with container TEST_BUCKET."""
    try:
        srv = servers.start_azurite(server_dir, server_dir / "azurite")
    except (OSError, RuntimeError) as e:
        servers.unavailable(f"Azurite did not start: {e}")
    try:
        servers.azure_create_container(srv.port, TEST_BUCKET)
        yield {"port": srv.port, "bucket": TEST_BUCKET, "options": servers.azure_options(srv.port)}
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def gcs_server(server_dir: Path) -> Iterator[dict[str, Any]]:
    """fake-gcs-server behind servers.GcsXmlAdapter, with bucket TEST_BUCKET."""
    try:
        srv = servers.start_fake_gcs(server_dir)
    except (OSError, RuntimeError) as e:
        servers.unavailable(f"fake-gcs-server did not start: {e}")
    adapter = servers.GcsXmlAdapter(srv.port)
    try:
        servers.gcs_create_bucket(srv.port, TEST_BUCKET)
        yield {
            "port": adapter.port,
            "bucket": TEST_BUCKET,
            "options": servers.gcs_options(adapter.port, server_dir),
        }
    finally:
        adapter.stop()
        srv.stop()


def _remote_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    uid = uuid.uuid4().hex[:12]
    if kind == "file":
        return {"kind": kind, "url": f"file://{tmp_path / 'remote'}", "options": {}}
    if kind == "memory":
        return {"kind": kind, "url": f"memory://test-{uid}", "options": {}}
    srv = request.getfixturevalue(f"{kind}_server")
    scheme = {"s3": "s3", "azure": "az", "gcs": "gs"}[kind]
    return {
        "kind": kind,
        "url": f"{scheme}://{srv['bucket']}/t-{uid}",
        "options": dict(srv["options"]),
    }


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.servers)])
def fs3_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A remote on a folder and on S3 (moto): for the slower tests, not every backend."""
    return _remote_spec(request.param, request, tmp_path)


@pytest.fixture(
    params=[
        pytest.param(k, marks=pytest.mark.servers) if k in SERVER_KINDS else k for k in REMOTE_KINDS
    ]
)
def remote_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """{"kind", "url", "options"} of an empty remote, once per backend kind."""
    return _remote_spec(request.param, request, tmp_path)


# ======================================================================================
# end of the remote object stores block
# ======================================================================================


# -- store hygiene (shared by all tests) ---------------------------------------------------


@pytest.fixture(autouse=True)
def _close_stores_after_each_test() -> Iterator[None]:
    """Each open store maps a 1 TiB virtual range (LMDB); a run that kept every store of
    every test open would run out of address space. Close them between tests."""
    yield
    from dsvc import registry

    registry.close_all()
