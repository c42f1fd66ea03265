"""Secrets of the prefix cache: where they come from, and how they are kept out of argv and logs.

Two secrets, each named by an environment variable (never a config value, never a command
line argument):

- the Redis password (`REDIS_PASSWORD_ENV`, default `THINKROUTE_REDIS_PASSWORD`), and
- the MAC key that authenticates every stored KV block (`MAC_KEY_ENV`, default
  `THINKROUTE_KV_MAC_KEY`; see codec.py).

`read_secret(NAME)` returns `$NAME` when set, else the contents of the file named by
`$NAME_FILE` (the Docker / Kubernetes secrets convention), which must not be readable by
group or others (mode 0600 or stricter): a world-readable secret file is refused with an
error that says how to fix it. `redact_url` removes a password from a Redis URL before it
is logged. `write_private_file` writes a file that only its owner can read (the launcher's
worker config and Redis config files).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REDIS_PASSWORD_ENV = "THINKROUTE_REDIS_PASSWORD"
MAC_KEY_ENV = "THINKROUTE_KV_MAC_KEY"


class SecretError(ValueError):
    """A secret file exists but is unsafe or unreadable."""


def read_secret(env_name: str | None) -> str | None:
    """`$env_name`, else the contents of the file `$env_name_FILE` (trailing newline stripped), else None.

    Raises SecretError when the file is readable by group or others, or cannot be read.
    """
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value:
        return value
    path = os.environ.get(env_name + "_FILE")
    if not path:
        return None
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"secret file {p} (from ${env_name}_FILE) is accessible by group/others "
                              f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {p}`")
        return p.read_text().rstrip("\r\n") or None
    except OSError as e:
        raise SecretError(f"cannot read secret file {p} (from ${env_name}_FILE): {e.strerror}") from None


def redact_url(url: str) -> str:
    """The URL with any password (and user) replaced by `***`, safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def url_has_password(url: str) -> bool:
    """True when the URL carries credentials (they would travel wherever the URL goes)."""
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def write_private_file(path: Path, text: str) -> Path:
    """Create or replace `path` with `text`, mode 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
