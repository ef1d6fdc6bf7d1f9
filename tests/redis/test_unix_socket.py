"""``PROXY_REDIS_URL=unix://...``: every store, the per-client miss limiter included."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.components import require
from tests.redis.server import RedisServer, start_redis
from tests.servers import cutproxy, free_port, start


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require("redis-server")  # skipped with the install command, failed under CI
    short = Path(tempfile.mkdtemp(prefix="cp-redis-"))  # socket paths are limited to ~100 B
    server = start_redis(tmp_path / "redis.log", socket=short / "redis.sock")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_serve_with_a_unix_socket_redis_and_a_client_miss_rate(
    unix_redis: RedisServer, tmp_path: Path
) -> None:
    proxy = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--demo"),
        port=free_port(),
        log_path=tmp_path / "proxy.log",
        env={
            "PROXY_DATA_DIR": str(tmp_path / "data"),
            "PROXY_REDIS_URL": unix_redis.unix_url,
            "PROXY_CLIENT_MISS_RATE": "2/minute",
            "PROXY_BATCH_WINDOW_MS": "0",
            "PROXY_REDIS_PREFIX": "unix-test:",
        },
        ready_path="/health/live",
    )
    try:
        answers = [
            httpx.get(f"{proxy.url}/img/demo/{w}x100/ffffff.png", timeout=30) for w in (100, 110)
        ]
        third = httpx.get(f"{proxy.url}/img/demo/120x100/ffffff.png", timeout=30)
    finally:
        proxy.stop()
    assert [a.status_code for a in answers] == [302, 302], proxy.log()[-2000:]
    assert third.headers.get("x-cutproxy-fallback") == "client_rate" or third.status_code == 429
    with unix_redis.client() as client:
        assert client.keys("unix-test:limits*"), "the limiter counted in this Redis"
