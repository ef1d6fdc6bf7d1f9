"""Health endpoints with the upstream up, down and hanging, and a store that won't write."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from proxy.ops.health import Readiness
from proxy.stores.cache import CachedOutput
from tests.ops.conftest import (
    Clock,
    FakeUpstream,
    register,
    running,
    settings,
    upstream_settings,
)


async def test_live_and_ready_with_the_embedded_engine(tmp_path: Path, clock: Clock) -> None:
    async with running(settings(tmp_path), clock) as (_app, client):
        for path in ("/health", "/health/live"):
            answer = await client.get(path)
            assert answer.status_code == 200 and answer.json()["status"] == "ok"
        ready = await client.get("/health/ready")
        minted = (await client.get("/_engine/stats")).json()["tokens_minted"]
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["store"]["ok"] and body["checks"]["upstream"]["ok"]
    assert ready.headers["cache-control"] == "no-store"
    assert minted == 0  # a probe spends nothing


async def test_ready_follows_the_upstream_and_is_cached(tmp_path: Path, clock: Clock) -> None:
    upstream = FakeUpstream()
    config = upstream_settings(tmp_path, ready_cache=5.0)
    async with running(config, clock, upstream_transport=upstream.transport()) as (_a, client):
        answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(10)))
        assert {a.status_code for a in answers} == {200}
        # Ten probes, one upstream call: a HEAD of the origin, never the paid API.
        assert [(r.method, str(r.url)) for r in upstream.calls] == [
            ("HEAD", "https://backgroundcut.co/")
        ]

        upstream.script.append(httpx.ConnectError("refused"))
        clock.now += 4
        assert (await client.get("/health/ready")).status_code == 200  # still the cached answer
        clock.now += 2
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["status"] == "not_ready"
        assert down.json()["checks"]["store"]["ok"] is True
        assert "upstream" in down.json()["checks"]["upstream"]["error"]
        assert (await client.get("/health/live")).status_code == 200  # alive all the same

        clock.now += 6
        assert (await client.get("/health/ready")).status_code == 200  # back
    assert len(upstream.calls) == 3


async def test_an_unreachable_upstream_can_be_reported_without_leaving_the_pool(
    tmp_path: Path, clock: Clock
) -> None:
    upstream = FakeUpstream()
    upstream.script.append(httpx.ConnectError("refused"))
    config = upstream_settings(tmp_path, ready_requires_upstream=False)
    async with running(config, clock, upstream_transport=upstream.transport()) as (_a, client):
        answer = await client.get("/health/ready")
    assert answer.status_code == 200
    assert answer.json()["checks"]["upstream"]["ok"] is False
    assert answer.json()["checks"]["store"]["ok"] is True


async def test_any_http_answer_from_the_real_upstream_counts(tmp_path: Path, clock: Clock) -> None:
    upstream = FakeUpstream()
    upstream.script.append(httpx.Response(503))
    config = upstream_settings(tmp_path)
    async with running(config, clock, upstream_transport=upstream.transport()) as (_a, client):
        assert (await client.get("/health/ready")).status_code == 200


async def test_a_hanging_upstream_makes_ready_fail_fast(tmp_path: Path, clock: Clock) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    config = upstream_settings(tmp_path, ready_timeout=0.2)
    transport = httpx.MockTransport(hang)
    async with running(config, clock, upstream_transport=transport) as (_a, client):
        answer = await asyncio.wait_for(client.get("/health/ready"), 5)
    assert answer.status_code == 503
    assert answer.json()["checks"]["upstream"]["error"] == "the upstream did not answer within 0.2s"


class BrokenTier:
    async def get(self, key: str) -> CachedOutput | None:
        raise OSError("disk I/O error")

    async def set(self, key: str, output: CachedOutput) -> None:
        raise OSError("disk I/O error")

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int:
        return 0

    async def close(self) -> None: ...


async def test_a_store_that_cannot_write_is_not_ready(tmp_path: Path, clock: Clock) -> None:
    async def reachable(timeout: float) -> bool:
        return True

    tmp_path.joinpath("file").write_text("not a directory")
    for data_dir, shared in ((tmp_path / "file", None), (tmp_path, BrokenTier())):
        async with running(settings(tmp_path / "ok"), clock) as (app, _client):
            readiness = Readiness(
                data_dir=data_dir,
                shared=shared or app.services.variants.cache.shared,
                probe_upstream=reachable,
                timeout=1.0,
                cache_seconds=0.0,
                clock=clock,
            )
            result = await readiness.check()
        assert result["ready"] is False
        store = result["checks"]["store"]
        assert store["ok"] is False and "not writable" in store["error"]
        assert result["checks"]["upstream"]["ok"] is True


async def test_failed_upstream_calls_make_ready_fail_until_one_succeeds_or_time_passes(
    tmp_path: Path, clock: Clock
) -> None:
    upstream = FakeUpstream()
    config = upstream_settings(
        tmp_path,
        ready_cache=0.0,
        ready_upstream_failures=2,
        ready_failure_window=30.0,
        retry_attempts=1,
        batch_window_ms=0,
    )
    async with running(config, clock, upstream_transport=upstream.transport()) as (_a, client):
        await register(client)
        # The origin answers the probe; the API fails: a 503, then no connection at all.
        upstream.script += [httpx.Response(503), httpx.ConnectError("refused")]
        for width in (100, 110):
            assert (await client.get(f"/img/sku/{width}x100/ffffff.jpg")).status_code >= 500
        down = await client.get("/health/ready")
        assert down.status_code == 503
        error = down.json()["checks"]["upstream"]["error"]
        assert error == "the last 2 upstream calls failed (latest token: unreachable)"

        # A request's own 4xx says nothing about the upstream; a success ends the run.
        upstream.script.append(httpx.Response(400, json={"error": "bad image"}))
        assert (await client.get("/img/sku/120x100/ffffff.jpg")).status_code != 302
        still = (await client.get("/health/ready")).json()["checks"]["upstream"]["error"]
        assert still.startswith("the last 2 upstream calls failed")
        assert (await client.get("/img/sku/130x100/ffffff.jpg")).status_code == 302
        assert (await client.get("/health/ready")).status_code == 200

        # Out of rotation, no calls come to show a recovery: the run expires by itself.
        upstream.script += [httpx.Response(502), httpx.Response(502)]
        for width in (140, 150):
            assert (await client.get(f"/img/sku/{width}x100/ffffff.jpg")).status_code >= 500
        assert (await client.get("/health/ready")).status_code == 503
        clock.now += 31
        assert (await client.get("/health/ready")).status_code == 200
