"""The engine's API key when none is configured: random, made once per data dir, mode 0600.

No key is written in the source: a well-known default would let anyone who reaches the port
mint renders and switch fault injection on. The first process to need a key writes one to
``<data dir>/api-key`` (owner read/write only); every worker, restart and the proxy embedding
the engine read that same file. The key is never printed or logged, only the file's path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from proxy.engine.settings import EngineSettings
from proxy.envconfig import SettingsError

KEY_FILE = "api-key"


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def with_api_key(settings: EngineSettings) -> EngineSettings:
    """``settings`` with its API key: the configured one, else the data dir's (made if new)."""
    if settings.api_key:
        return settings
    return settings.replace(api_key=load_or_create(settings.data_dir))


def load_or_create(data_dir: Path) -> str:
    """Blocking: the key kept in ``data_dir``; the first caller creates it.

    Workers starting together may race: each writes a candidate to its own file and links
    it into place; ``link`` fails for all but the first, and everyone reads the winner.
    """
    path = key_path(data_dir)
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        candidate = data_dir / f".{KEY_FILE}-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(candidate, path)
        finally:
            candidate.unlink()
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        path.chmod(0o600)  # a copy restored with looser permissions: only its owner reads it
    key = path.read_text().strip()
    if not key:
        raise SettingsError(
            f"PROXY_ENGINE_API_KEY: unset, and {path} is empty (delete it to have a key made)"
        )
    return key
