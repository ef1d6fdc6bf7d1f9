"""``cutproxy serve --demo`` while Redis is down: it starts, says it is not ready, and
registers the demo once Redis is back."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.redis.server import RedisServer
from tests.servers import cutproxy, free_port, start, wait_for

DEMO = "/img/demo/160x120/ffffff.png"


def test_demo_starts_not_ready_while_redis_is_down_then_registers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.stop()
    proxy = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--demo"),
        port=free_port(),
        log_path=tmp_path / "proxy.log",
        env={
            "PROXY_DATA_DIR": str(tmp_path / "data"),
            "PROXY_REDIS_URL": redis_server.url,
            "PROXY_READY_CACHE": "0",
        },
        ready_path="/health/live",
    )
    try:
        ready = httpx.get(f"{proxy.url}/health/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"]["ok"] is False
        assert httpx.get(proxy.url + DEMO, timeout=10).status_code == 503
        assert "could not register the demo image yet" in proxy.log()

        redis_server.start()
        wait_for(lambda: httpx.get(f"{proxy.url}/health/ready", timeout=10).is_success, 20)
        wait_for(lambda: httpx.get(proxy.url + DEMO, timeout=30).status_code == 302, 20)
        assert proxy.log().count("registered the demo image") == 1
    finally:
        proxy.stop()
