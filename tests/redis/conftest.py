"""Fixtures: a real redis-server and a standalone engine, both on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import require
from tests.integration.conftest import engine  # noqa: F401  (the standalone engine fixture)
from tests.redis.server import RedisServer, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require("redis-server")
    server = start_redis(tmp_path / "redis.log")
    try:
        yield server
    finally:
        server.stop()
