"""The launcher's argv and files carry no secret (the process-level check is tests/integration/test_secrets_argv.py)."""
import os
import stat

from router import launcher
from router.config import load_config


class FakePopen:
    calls: list = []

    def __init__(self, args, **kw):
        FakePopen.calls.append((args, kw.get("env") or {}))
        self.pid, self.returncode = 99999999, None

    def poll(self):
        return None


def test_workers_get_secrets_by_environment_and_config_by_0600_file(tmp_path, monkeypatch):
    for k in ("THINKROUTE_REDIS_PASSWORD", "THINKROUTE_KV_MAC_KEY", "THINKROUTE_REDIS_PASSWORD_FILE",
              "THINKROUTE_KV_MAC_KEY_FILE"):
        monkeypatch.setenv(k, "")  # registers the original value, restored after the test
        monkeypatch.delenv(k)
    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(launcher.WorkerProcess, "ready", lambda self: True)
    FakePopen.calls = []
    cfg = load_config()
    c = launcher.LocalCluster(cfg, tmp_path)
    c.ensure_secrets()
    password, mac_key = os.environ["THINKROUTE_REDIS_PASSWORD"], os.environ["THINKROUTE_KV_MAC_KEY"]
    assert len(password) >= 32 and len(mac_key) >= 32 and password != mac_key
    c.start_workers("redis://127.0.0.1:6390/0")
    c._stopping = True
    assert len(FakePopen.calls) == sum(p.replicas for p in cfg.models.values()) >= 2
    for (args, env), w in zip(FakePopen.calls, c.workers):
        argv = " ".join(map(str, args))
        assert password not in argv and mac_key not in argv and "--config-json" not in argv
        assert args[args.index("--config-file") + 1] == str(w.config_file)
        assert stat.S_IMODE(w.config_file.stat().st_mode) == 0o600
        text = w.config_file.read_text()
        assert password not in text and mac_key not in text and '"password_env": "THINKROUTE_REDIS_PASSWORD"' in text
        assert env["THINKROUTE_REDIS_PASSWORD"] == password and env["THINKROUTE_KV_MAC_KEY"] == mac_key
