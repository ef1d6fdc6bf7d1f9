"""Issue 9's measurement: two replicas (2 workers each) sharing only Redis take a stampede of
cold requests for one variant; the engine should see one mint."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx

from tests.bench.harness import start_engine
from tests.integration.conftest import product_png, register
from tests.redis.replicas import get_split, start_replica
from tests.redis.server import start_redis

REQUESTS = 500


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        return await _stampede(Path(tmp), REQUESTS)


async def _stampede(tmp: Path, n: int) -> list[tuple[str, str, str]]:
    redis = start_redis(tmp / "redis.log")
    engine = start_engine(tmp)
    replicas = []
    try:
        for name in ("a", "b"):
            replicas.append(
                start_replica(
                    name, engine.url, redis.url, tmp, workers=2, PROXY_LOG_LEVEL="warning"
                )
            )
        register(replicas[0].url, "bench", engine.upload(product_png()), (800, 600))
        before = engine.minted()
        answers = await get_split([r.url for r in replicas], "/img/bench/500x500/ffffff.jpg", n)
        redirects = sum(isinstance(a, httpx.Response) and a.status_code == 302 for a in answers)
        mints = engine.minted() - before
        return [
            (
                f"mints for {n} concurrent cold requests across 2 replicas sharing Redis "
                f"({redirects} redirects)",
                str(mints),
                "1",
            )
        ]
    finally:
        for replica in replicas:
            replica.stop()
        engine.server.stop()
        redis.stop()
