"""Two (or more) real ``cutproxy serve`` replicas that share nothing but a Redis server.

Used by the replica tests and by ``tests/bench/bench_replicas.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.integration.conftest import proxy_env
from tests.servers import Server, cutproxy, free_port, start


def start_replica(
    name: str, engine_url: str, redis_url: str, tmp_path: Path, workers: int = 1, **extra: str
) -> Server:
    """One replica with its own data dir: nothing on disk is shared with the others."""
    env = proxy_env(engine_url, tmp_path / f"data-{name}", PROXY_REDIS_URL=redis_url, **extra)
    return start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)),
        port=free_port(),
        log_path=tmp_path / f"{name}.log",
        env=env,
        ready_path="/health",
    )


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
