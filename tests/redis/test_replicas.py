"""Two real proxy processes that share only a Redis server, in front of one standalone engine.

Each replica has its own PROXY_DATA_DIR, so anything they agree on went through Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN, Engine, product_png, register
from tests.redis.replicas import get_split, start_replica
from tests.redis.server import RedisServer
from tests.servers import Server

pytestmark = pytest.mark.slow


@pytest.fixture
def start_replicas(
    engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[[float], list[Server]]]:
    """Two replicas; ``view_ttl`` is PROXY_IMAGE_VIEW_TTL, how long each trusts its view of
    an image's version before asking the registry again."""
    started: list[Server] = []

    def two(view_ttl: float) -> list[Server]:
        for name in ("a", "b"):
            started.append(
                start_replica(
                    name,
                    engine.url,
                    redis_server.url,
                    tmp_path,
                    PROXY_LEASE_TTL="1",
                    PROXY_IMAGE_VIEW_TTL=str(view_ttl),
                )
            )
        return started[-2:]

    try:
        yield two
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def replicas(start_replicas: Callable[[float], list[Server]]) -> list[Server]:
    # A long view: a replacement can only show at once through the invalidation channel.
    return start_replicas(60.0)


def redirects(answers: list[httpx.Response | BaseException]) -> set[str]:
    assert all(isinstance(a, httpx.Response) and a.status_code == 302 for a in answers), {
        a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers
    }
    return {a.headers["location"] for a in answers if isinstance(a, httpx.Response)}


def test_500_cold_requests_split_over_two_replicas_mint_once(
    engine: Engine, replicas: list[Server]
) -> None:
    a, b = replicas
    register(a.url, "sku-1", engine.upload(product_png()), (800, 600))
    before = engine.minted()
    answers = asyncio.run(get_split([a.url, b.url], "/img/sku-1/300x300/ffffff.jpg", 500))
    locations = redirects(answers)
    assert len(locations) == 1
    assert engine.minted() == before + 1
    assert httpx.get(locations.pop(), timeout=10).headers["content-type"] == "image/jpeg"


def test_a_registration_through_one_replica_is_served_and_replaced_by_the_other(
    engine: Engine, replicas: list[Server]
) -> None:
    a, b = replicas
    assert httpx.get(f"{b.url}/img/sku-2/200x200/ffffff.png").status_code == 404
    first = engine.upload(product_png())
    assert register(a.url, "sku-2", first, (800, 600)) == 201
    old = httpx.get(f"{b.url}/img/sku-2/200x200/ffffff.png")
    assert old.status_code == 302
    again = httpx.get(f"{b.url}/img/sku-2/200x200/ffffff.png")
    assert again.headers["location"] == old.headers["location"]  # now in b's memory tier
    # a never served it, yet lists it: the cached variants are read from Redis.
    listed = httpx.get(f"{a.url}/images/sku-2", headers={"Authorization": f"Bearer {ADMIN}"})
    assert [(v["path"], v["url"]) for v in listed.json()["variants"]] == [
        ("/img/sku-2/200x200/ffffff.png", old.headers["location"])
    ]

    # Replacing the image through a must reach b's memory tier too, not only Redis.
    second = engine.upload(product_png(640, 480))
    assert register(a.url, "sku-2", second, (640, 480)) == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = httpx.get(f"{b.url}/img/sku-2/200x200/ffffff.png")
        if new.headers["location"] != old.headers["location"]:
            break
        time.sleep(0.05)
    assert new.status_code == 302 and new.headers["location"] != old.headers["location"]


async def test_killing_the_lease_holder_mid_mint_still_redirects_every_surviving_client(
    engine: Engine, redis_server: RedisServer, replicas: list[Server]
) -> None:
    a, b = replicas
    register(a.url, "sku-3", engine.upload(product_png()), (800, 600))
    path = "/img/sku-3/250x250/ffffff.webp"
    before = engine.minted()
    engine.faults(process_latency=2.0)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        # a's clients first, so a holds the lease: its token is minted, processing is slow.
        on_a = [asyncio.ensure_future(client.get(a.url + path)) for _ in range(50)]
        await _until(lambda: engine.minted() == before + 1)
        leases = list(redis_server.client().scan_iter(match="cutproxy:lease:*"))
        assert len(leases) == 1
        holder = redis_server.client().get(leases[0])  # host:pid:random
        assert holder is not None and f":{a.proc.pid}:".encode() in holder
        on_b = [asyncio.ensure_future(client.get(b.url + path)) for _ in range(50)]
        await asyncio.sleep(0.3)  # b's requests are following a's lease now
        assert not any(task.done() for task in on_b)
        a.kill()  # SIGKILL mid-mint: no release, no clean-up; the lease lapses after 1 s
        from_a = await asyncio.gather(*on_a, return_exceptions=True)
        from_b = await asyncio.gather(*on_b, return_exceptions=True)

    # a's clients lose their connection with a: expected of a crash, nothing can answer them.
    assert all(isinstance(answer, httpx.TransportError) for answer in from_a)
    # Every client of the surviving replica gets the one redirect b minted after taking over.
    assert len(redirects(from_b)) == 1
    assert engine.minted() == before + 2  # a's lost mint and b's


def test_redis_down_serves_memory_hits_refuses_misses_and_recovers(
    engine: Engine, redis_server: RedisServer, start_replicas: Callable[[float], list[Server]]
) -> None:
    view_ttl = 0.5
    replicas = start_replicas(view_ttl)
    a = replicas[0]
    register(a.url, "sku-4", engine.upload(product_png()), (800, 600))
    warm = "/img/sku-4/100x100/ffffff.png"
    cold = "/img/sku-4/120x120/ffffff.png"
    hit = {s.url: httpx.get(s.url + warm).headers["location"] for s in replicas}
    before = engine.minted()
    redis_server.client().save()  # so the restarted Redis still knows the registration
    redis_server.stop()
    time.sleep(view_ttl + 0.1)  # past the view's life: hits must not need the registry

    for server in replicas:
        answer = httpx.get(server.url + warm)
        assert answer.status_code == 302 and answer.headers["location"] == hit[server.url]
        for _ in range(3):
            refused = httpx.get(server.url + cold)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "shared_store_unavailable"
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["cache-control"] == "no-store"
    assert engine.minted() == before  # nothing minted blindly
    for server in replicas:  # logged once per outage, not once per request, and counted
        assert server.log().count("shared store (Redis) unreachable") == 1
        assert _unavailable_count(server) >= 3

    redis_server.start()
    for server in replicas:
        answer = _retry_until_not_503(server.url + cold)
        assert answer.status_code == 302, answer.text
        assert "reachable again" in server.log()
        assert httpx.get(server.url + warm).headers["location"] == hit[server.url]
    assert engine.minted() == before + 1


async def _until(predicate: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _retry_until_not_503(url: str, timeout: float = 5) -> httpx.Response:
    """Clients retry after a 503; the first retry may meet a reconnecting pool."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(url, timeout=10)
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def _unavailable_count(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cutproxy_shared_store_unavailable_total{")
    )
