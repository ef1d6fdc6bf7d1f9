"""Two (or more) real ``cutproxy serve`` replicas that share nothing but a Redis server.

Used by the replica tests and by ``tests/bench/bench_replicas.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.servers import Server, cutproxy, free_port, start

ENGINE_KEY = "engine-dev-key"
ADMIN = "admin-token-for-tests-0123456789"


def start_replica(
    name: str, engine_url: str, redis_url: str, tmp_path: Path, workers: int = 1, **extra: str
) -> Server:
    """One replica with its own data dir: nothing on disk is shared with the others."""
    env = {
        "PROXY_API_KEY": ENGINE_KEY,
        "PROXY_TOKEN_URL": f"{engine_url}/api/v3/remove-bg/token/",
        "PROXY_PROCESS_URL": f"{engine_url}/v3/remove-bg/",
        "PROXY_ALLOWED_OUTPUT_HOSTS": "127.0.0.1",
        "PROXY_DATA_DIR": str(tmp_path / f"data-{name}"),
        "PROXY_ADMIN_TOKEN": ADMIN,
        "PROXY_REDIS_URL": redis_url,
        **extra,
    }
    return start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)),
        port=free_port(),
        log_path=tmp_path / f"{name}.log",
        env=env,
        ready_path="/health",
    )


def register(proxy_url: str, image_id: str, unique_filename: str, size: tuple[int, int]) -> int:
    """PUT /images/<id> through one replica; the status (201 created, 200 replaced)."""
    response = httpx.put(
        f"{proxy_url}/images/{image_id}",
        json={"unique_filename": unique_filename, "width": size[0], "height": size[1]},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text
    return response.status_code


async def get_split(
    urls: Sequence[str], path: str, n: int, timeout: float = 60
) -> list[httpx.Response | BaseException]:
    """``n`` concurrent GETs of ``path``, dealt round-robin over ``urls``; errors returned."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        return list(
            await asyncio.gather(
                *(client.get(f"{urls[i % len(urls)]}{path}") for i in range(n)),
                return_exceptions=True,
            )
        )
