"""Named remotes: credentials are never stored, and reach the client from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsvc.errors import ConfigError, NotFoundError
from dsvc.remote import config
from dsvc.store import Store


def test_credentials_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    with pytest.raises(ConfigError) as e:
        config.add_remote(
            store,
            "s3main",
            "s3://b/p",
            {"endpoint": "http://x", "secret_access_key": "S3CR3T-VALUE"},
        )
    assert "DSVC_REMOTE_S3MAIN_SECRET_ACCESS_KEY" in str(e.value)
    assert "S3CR3T-VALUE" not in str(e.value)
    assert store.get_config("remotes") is None  # the failing call left nothing behind
    raw = (tmp_path / "home" / "store.lmdb" / "data.mdb").read_bytes()
    assert b"S3CR3T-VALUE" not in raw


def test_credentials_come_from_the_environment_per_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "home")
    config.add_remote(store, "my-bucket", "s3://b/p", {"endpoint": "http://127.0.0.1:9"})
    monkeypatch.setenv("DSVC_REMOTE_MY_BUCKET_SECRET_ACCESS_KEY", "from-env")
    name, url, options = config.lookup(store, "my-bucket")
    assert (name, url) == ("my-bucket", "s3://b/p")
    assert options == {"endpoint": "http://127.0.0.1:9", "secret_access_key": "from-env"}
    listed = config.list_remotes(store)
    assert listed[0]["options"] == {"endpoint": "http://127.0.0.1:9"}


def test_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "home")
    monkeypatch.delenv("DSVC_REMOTE", raising=False)
    assert config.lookup(store, None) is None
    config.add_remote(store, "a", str(tmp_path / "ra"))
    config.add_remote(store, "b", str(tmp_path / "rb"))
    assert config.lookup(store, None)[0] == "a"  # the first remote is the default
    config.set_default_remote(store, "b")
    assert config.lookup(store, None)[0] == "b"
    monkeypatch.setenv("DSVC_REMOTE", "a")
    assert config.lookup(store, None)[0] == "a"
    monkeypatch.setenv("DSVC_REMOTE", str(tmp_path / "elsewhere"))
    assert config.lookup(store, None) == (None, str(tmp_path / "elsewhere"), {})
    with pytest.raises(NotFoundError):
        config.lookup(store, "no-such-remote")
    config.remove_remote(store, "b")
    monkeypatch.delenv("DSVC_REMOTE")
    assert config.lookup(store, None)[0] == "a"
