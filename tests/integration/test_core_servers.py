"""The proxy core over real sockets: 2 uvicorn workers in front of a standalone engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.integration.conftest import Engine, product_png, register, start_proxy


async def _get_many(url: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.get(url) for _ in range(n)))


def test_concurrent_cold_requests_mint_once_and_survive_a_restart(
    engine: Engine, tmp_path: Path
) -> None:
    unique = engine.upload(product_png())
    proxy = start_proxy(engine, tmp_path)
    try:
        register(proxy.url, "sku-1", unique, (800, 600))
        before = engine.minted()
        answers = asyncio.run(_get_many(f"{proxy.url}/img/sku-1/400x400/ffffff.jpg", 200))
        assert {a.status_code for a in answers} == {302}
        locations = {a.headers["location"] for a in answers}
        assert len(locations) == 1
        assert engine.minted() == before + 1
        max_age = int(answers[0].headers["cache-control"].split("max-age=")[1])
        assert 6000 < max_age <= 7200 - 300
        # the redirect points at a real JPEG that fits inside 400x400
        image = httpx.get(locations.pop(), timeout=10)
        assert image.headers["content-type"] == "image/jpeg"
    finally:
        proxy.stop()

    again = start_proxy(engine, tmp_path, name="proxy2")
    try:
        answer = httpx.get(f"{again.url}/img/sku-1/400x400/ffffff.jpg", timeout=10)
        assert answer.status_code == 302
        assert answer.headers["location"] == answers[0].headers["location"]
        assert engine.minted() == before + 1  # served from the disk tier, no new mint
    finally:
        again.stop()


def test_a_slow_or_dead_engine_fails_fast_while_hits_keep_working(
    engine: Engine, tmp_path: Path
) -> None:
    unique = engine.upload(product_png())
    proxy = start_proxy(
        engine,
        tmp_path,
        PROXY_TOKEN_TIMEOUT="1",
        PROXY_PROCESS_TIMEOUT="1",
        PROXY_RETRY_ATTEMPTS="2",
        PROXY_RETRY_BACKOFF="0.1",
    )
    try:
        register(proxy.url, "sku-2", unique, (800, 600))
        warm = httpx.get(f"{proxy.url}/img/sku-2/100x100/ffffff.png", timeout=10)
        assert warm.status_code == 302

        engine.faults(token_latency=5.0)
        started = time.monotonic()
        slow = httpx.get(f"{proxy.url}/img/sku-2/120x120/ffffff.png", timeout=10)
        assert slow.status_code == 504, slow.text
        assert slow.json()["error"] == "upstream_timeout"
        assert slow.headers["cache-control"] == "no-store"
        assert time.monotonic() - started < 3
        assert httpx.get(f"{proxy.url}/img/sku-2/100x100/ffffff.png").status_code == 302

        engine.faults(token_latency=0.0)
        engine.server.stop()
        started = time.monotonic()
        dead = httpx.get(f"{proxy.url}/img/sku-2/140x140/ffffff.png", timeout=10)
        assert dead.status_code == 502
        assert dead.json()["error"] == "upstream_unreachable"
        assert time.monotonic() - started < 3
        hit = httpx.get(f"{proxy.url}/img/sku-2/100x100/ffffff.png")
        assert hit.status_code == 302 and hit.headers["location"] == warm.headers["location"]
    finally:
        proxy.stop()


def test_an_upload_the_engine_forgot_is_a_clear_502(engine: Engine, tmp_path: Path) -> None:
    proxy = start_proxy(engine, tmp_path)
    try:
        # registered by unique_filename alone: the proxy keeps no original to upload again
        register(proxy.url, "gone", "00000000-dead-beef-0000-000000000000", (800, 600))
        answer = httpx.get(f"{proxy.url}/img/gone/100x100/ffffff.jpg", timeout=10)
        assert answer.status_code == 502
        body = answer.json()
        assert body["error"] in ("upstream_upload_gone", "original_not_kept")
        assert "upload" in body["message"] or "original" in body["message"]
    finally:
        proxy.stop()
