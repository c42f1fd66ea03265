"""Secrets of the prefix cache: environment or 0600 files, never in URLs, config dicts or logs."""
import os

import pytest

from workers.kv.config import RedisKVSettings, redis_kv_transfer_config
from workers.kv.secrets import SecretError, read_secret, redact_url, url_has_password, write_private_file


def test_secret_from_env_then_from_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TR_TEST_SECRET", raising=False)
    monkeypatch.delenv("TR_TEST_SECRET_FILE", raising=False)
    assert read_secret("TR_TEST_SECRET") is None and read_secret(None) is None
    f = write_private_file(tmp_path / "s", "from-file\n")
    assert (os.stat(f).st_mode & 0o777) == 0o600
    monkeypatch.setenv("TR_TEST_SECRET_FILE", str(f))
    assert read_secret("TR_TEST_SECRET") == "from-file"
    monkeypatch.setenv("TR_TEST_SECRET", "from-env")
    assert read_secret("TR_TEST_SECRET") == "from-env"


def test_a_world_readable_secret_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    f = tmp_path / "s"
    f.write_text("pw")
    f.chmod(0o644)
    monkeypatch.delenv("TR_TEST_SECRET", raising=False)
    monkeypatch.setenv("TR_TEST_SECRET_FILE", str(f))
    with pytest.raises(SecretError, match="chmod 600"):
        read_secret("TR_TEST_SECRET")


def test_urls_are_redacted():
    assert redact_url("redis://:hunter2@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert redact_url("rediss://user:hunter2@h/1") == "rediss://***@h/1"
    assert redact_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"
    assert url_has_password("redis://:x@h:1/0") and not url_has_password("redis://h:1/0")


def test_connector_config_holds_no_secret():
    cfg = redis_kv_transfer_config("redis://127.0.0.1:6390/0", "r0", model_id="m")
    extra = cfg["kv_connector_extra_config"]
    assert extra["password_env"] == "THINKROUTE_REDIS_PASSWORD" and extra["mac_key_env"] == "THINKROUTE_KV_MAC_KEY"
    assert "password" not in extra
    with pytest.raises(ValueError, match="must not carry a password"):
        redis_kv_transfer_config("redis://:hunter2@127.0.0.1:6390/0")
    with pytest.raises(ValueError, match="must not hold the Redis password"):
        RedisKVSettings.from_extra({"password": "hunter2"})
