"""Replicas sharing Redis share one budget, one per-client rate and one fallback index."""

from __future__ import annotations

from pathlib import Path

from proxy.serving.variant_route import FALLBACK_HEADER
from tests.guards.conftest import Rig, RigFactory
from tests.redis.server import RedisServer


async def replicas(
    make_rig: RigFactory, redis: RedisServer, tmp_path: Path, **settings: object
) -> tuple[Rig, Rig]:
    """Two replicas: their own disks, one Redis, one upstream (the engine's data dir)."""
    engine = {"data_dir": tmp_path / "engine"}
    first = await make_rig(redis_url=redis.url, engine=engine, batch_window_ms=0, **settings)
    second = await make_rig(redis_url=redis.url, engine=engine, batch_window_ms=0, **settings)
    second.clock.now = first.clock.now
    return first, second


async def test_replicas_share_the_budget_and_fall_back_to_each_others_sizes(
    make_rig: RigFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = await replicas(make_rig, redis_server, tmp_path, budget_credits_per_hour=1.5)
    await a.upload("shoe")
    await a.upload("bag")  # the same photo: one upload token between them, 0.5
    first = await a.get("/img/shoe/640x480/ffffff.jpg")
    second = await b.get("/img/shoe/200x150/ffffff.jpg")
    assert first.status_code == second.status_code == 302  # 1.0 spent between them
    assert FALLBACK_HEADER not in first.headers and FALLBACK_HEADER not in second.headers

    refused = await a.get("/img/bag/640x480/ffffff.jpg")
    assert refused.status_code == 429 and refused.json()["error"] == "credit_budget_spent"
    fallback = await b.get("/img/shoe/600x450/ffffff.jpg")  # minted on a, found via Redis
    assert fallback.headers[FALLBACK_HEADER] == "budget"
    assert fallback.headers["location"] == first.headers["location"]
    assert (await b.costs())["budget"]["hour"]["spent"] == 1.5
    assert (await a.costs())["spent"] == 1.5


async def test_replicas_share_a_clients_miss_rate(
    make_rig: RigFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = await replicas(make_rig, redis_server, tmp_path, client_miss_rate="2/hour")
    await a.upload("shoe")
    client = "203.0.113.5"
    assert (await a.get("/img/shoe/100x100/ffffff.jpg", address=client)).status_code == 302
    assert (await b.get("/img/shoe/110x110/ffffff.jpg", address=client)).status_code == 302
    third = await a.get("/img/shoe/120x120/ffffff.jpg", address=client)
    assert third.headers[FALLBACK_HEADER] == "client_rate"
    other = await b.get("/img/shoe/130x130/ffffff.jpg", address="198.51.100.1")
    assert FALLBACK_HEADER not in other.headers
