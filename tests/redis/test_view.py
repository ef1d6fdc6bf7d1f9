"""Hits never wait for Redis: past its life, an image's view is refreshed in the background.

A real redis-server, stopped with SIGSTOP (a hung Redis: connections stay open, nothing
answers), in front of a real ``cutproxy serve`` and of the app in-process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from proxy.app import Services
from proxy.stores.registry import VARIANTS_GENERATION, ImageRecord
from tests.clock import Clock
from tests.integration.conftest import Engine, product_png, register
from tests.ops.conftest import AUTH, running, settings
from tests.redis.replicas import start_replica
from tests.redis.server import RedisServer

URL = "/img/demo/320x240/ffffff.png"


@contextmanager
def stopped(redis_server: RedisServer) -> Iterator[None]:
    """Redis hung: SIGSTOP now, SIGCONT however the block ends."""
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


@pytest.mark.slow
def test_memory_hits_keep_answering_while_redis_hangs(
    engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> None:
    view_ttl = 0.2
    # Waiting on Redis would take 30 s: far past what the client below waits (5 s).
    server = start_replica(
        "a",
        engine.url,
        redis_server.url,
        tmp_path,
        PROXY_REDIS_TIMEOUT="30",
        PROXY_IMAGE_VIEW_TTL=str(view_ttl),
    )
    try:
        register(server.url, "sku", engine.upload(product_png()), (800, 600))
        url = f"{server.url}/img/sku/200x200/ffffff.png"
        location = httpx.get(url, timeout=30).headers["location"]
        with stopped(redis_server):
            time.sleep(view_ttl * 2)  # the view of the image has expired: Redis would be asked
            for _ in range(5):
                hit = httpx.get(url, timeout=5)
                assert hit.status_code == 302 and hit.headers["location"] == location
            as_json = httpx.get(url, headers={"Accept": "application/json"}, timeout=5)
            assert as_json.status_code == 200 and as_json.json()["url"] == location
        # Redis answers again: so do misses.
        assert httpx.get(f"{server.url}/img/sku/300x300/ffffff.png", timeout=30).is_redirect
    finally:
        server.stop()


async def test_past_its_life_the_view_serves_hits_while_one_read_refreshes_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    config = settings(
        tmp_path, demo=True, redis_url=redis_server.url, image_view_ttl=2.0, redis_timeout=30.0
    )
    async with running(config, clock) as (app, client):
        state: Services = app.services
        first = await client.get(URL)
        assert first.status_code == 302
        # Another replica dropped the image's variants and its message never came: only the
        # registry says so (a new generation, so a new version and new cache keys).
        record = await state.registry.get("demo")
        assert record is not None
        await state.registry.put(record.evolve(extra={**record.extra, VARIANTS_GENERATION: 7}))

        clock.advance(2.5)  # past the view's life
        with stopped(redis_server):
            # Answered from the last view at once (waiting on Redis would take 30 s), with
            # one read under way for all of them.
            hits = await asyncio.wait_for(asyncio.gather(*(client.get(URL) for _ in range(10))), 5)
            assert {hit.headers["location"] for hit in hits} == {first.headers["location"]}
            assert len(state.variants._refreshing) == 1
        await asyncio.wait_for(_refreshed(state), 10)

        fresh = await client.get(URL)  # the view has the new version: a miss, a new mint
        assert fresh.status_code == 302
        assert fresh.headers["location"] != first.headers["location"]


async def test_a_deleted_image_stops_being_served_once_the_view_is_refreshed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    config = settings(tmp_path, demo=True, redis_url=redis_server.url, image_view_ttl=2.0)
    async with running(config, clock) as (app, client):
        state: Services = app.services
        assert (await client.get(URL)).status_code == 302
        await state.registry.delete("demo")  # elsewhere, and the message was lost
        clock.advance(2.5)
        assert (await client.get(URL)).status_code == 302  # the last view, once
        await asyncio.wait_for(_refreshed(state), 10)
        gone = await client.get(URL)
        assert gone.status_code == 404 and gone.json()["error"] == "unknown_image"


async def _refreshed(state: Services) -> None:
    await asyncio.gather(*state.variants._refreshing.values())


async def test_a_read_under_way_when_the_image_changes_does_not_bring_the_old_version_back(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    config = settings(tmp_path, demo=True, redis_url=redis_server.url, image_view_ttl=2.0)
    async with running(config, clock) as (app, client):
        state: Services = app.services
        old = (await client.get(URL)).headers["location"]
        # The background read gets its answer from Redis, then takes its time to come back.
        answered, gate = asyncio.Event(), asyncio.Event()
        read = state.registry.get

        async def slow_get(image_id: str) -> ImageRecord | None:
            record = await read(image_id)
            answered.set()
            await gate.wait()
            return record

        monkeypatch.setattr(state.registry, "get", slow_get)
        clock.advance(2.5)
        assert (await client.get(URL)).headers["location"] == old  # the read is under way
        await asyncio.wait_for(answered.wait(), 10)  # with the old record
        monkeypatch.setattr(state.registry, "get", read)
        png = {**AUTH, "Content-Type": "image/png"}
        replaced = await client.put("/images/demo", content=product_png(640, 480), headers=png)
        assert replaced.json()["status"] == "replaced"
        gate.set()
        await asyncio.wait_for(_refreshed(state), 10)

        new = (await client.get(URL)).headers["location"]
        clock.advance(2.5)  # the view is read again: the same version, so the same variant
        await client.get(URL)
        await asyncio.wait_for(_refreshed(state), 10)
        again = (await client.get(URL)).headers["location"]
    assert new != old
    assert again == new  # rendered once: the late read did not key it under the old version
