"""The Redis stores against a real redis-server: cache, registry, leases, counters, outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from proxy.errors import SharedStoreUnavailableError
from proxy.guards.budget import CostLedger, CreditBudget
from proxy.guards.clients import ClientLimiter
from proxy.settings import Settings
from proxy.stores.cache import CachedOutput, MemoryTier
from proxy.stores.redis import RedisStore
from proxy.stores.registry import ImageRecord
from proxy.variants.coalesce import lead_or_follow
from tests.clock import Clock
from tests.redis.server import RedisServer


def make_store(server: RedisServer, clock: Clock | None = None, **overrides: object) -> RedisStore:
    settings = Settings.from_env({}, redis_url=server.url, **overrides)
    return RedisStore.from_settings(settings, clock or time.time)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    opened = make_store(redis_server)
    yield opened
    await opened.aclose()


def output(url: str, now: float, life: float = 600) -> CachedOutput:
    return CachedOutput(url, now + life, now)


async def eventually(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


# --- the variant cache ------------------------------------------------------------------------


async def test_entries_are_shared_and_expire_with_the_url(redis_server: RedisServer) -> None:
    clock = Clock()
    one, two = make_store(redis_server, clock), make_store(redis_server, clock)
    try:
        await one.tier.set("/img/a/10x10/white.jpg#p", output("https://o/1", clock.now, 60))
        seen = await two.tier.get("/img/a/10x10/white.jpg#p")
        assert seen is not None and seen.url == "https://o/1"
        # Redis drops the key itself when the URL dies: no dead entries pile up.
        ttl_ms = redis_server.client().pttl("cutproxy:cache:/img/a/10x10/white.jpg#p")
        assert 55_000 < ttl_ms <= 60_000
        clock.now += 60
        assert await two.tier.get("/img/a/10x10/white.jpg#p") is None
    finally:
        await one.aclose()
        await two.aclose()


async def test_an_image_prefix_drops_only_that_images_variants(store: RedisStore) -> None:
    now = time.time()
    for key in ("/img/a/10x10/white.jpg#p", "/img/a/20x20/white.jpg#p", "/img/ab/10x10/w.jpg#p"):
        await store.tier.set(key, output(f"https://o{key}", now))
    assert await store.tier.delete_prefix("/img/a/") == 2
    assert await store.tier.get("/img/a/10x10/white.jpg#p") is None
    assert await store.tier.get("/img/ab/10x10/w.jpg#p") is not None
    # Any other prefix still works (by SCAN), glob characters taken literally.
    await store.tier.set("other*key", output("https://o/x", now))
    await store.tier.set("otherXkey", output("https://o/y", now))
    assert await store.tier.delete_prefix("other*") == 1
    assert await store.tier.get("otherXkey") is not None


async def test_an_images_live_variants_are_listed_from_its_index(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    store = make_store(redis_server, clock)
    try:
        await store.tier.set("/img/a/10x10/white.jpg#p~v1", output("https://o/1", clock.now))
        await store.tier.set("/img/a/20x20/white.jpg#p~v1", output("https://o/2", clock.now))
        await store.tier.set("/img/ab/10x10/w.jpg#p~v1", output("https://o/3", clock.now))
        short = output("https://o/4", clock.now, life=5)
        await store.tier.set("/img/a/30x30/white.jpg#p~v1", short)
        listed = await store.tier.scan("/img/a/")
        assert sorted(listed) == [
            "/img/a/10x10/white.jpg#p~v1",
            "/img/a/20x20/white.jpg#p~v1",
            "/img/a/30x30/white.jpg#p~v1",
        ]
        assert listed["/img/a/20x20/white.jpg#p~v1"].url == "https://o/2"
        clock.now += 10  # the short-lived one has died
        assert sorted(await store.tier.scan("/img/a/")) == [
            "/img/a/10x10/white.jpg#p~v1",
            "/img/a/20x20/white.jpg#p~v1",
        ]
        assert await store.tier.scan("/img/none/") == {}
        with pytest.raises(ValueError):
            await store.tier.scan("/img/")
    finally:
        await store.aclose()


async def test_a_delete_on_one_replica_leaves_every_memory_tier(redis_server: RedisServer) -> None:
    clock = Clock()
    here, there = make_store(redis_server, clock), make_store(redis_server, clock)
    memory = MemoryTier(100, clock)
    forgotten: list[str] = []
    try:
        async with there.invalidations(memory, forgotten.append):
            memory.set("/img/a/10x10/white.jpg#p", output("https://o/old", clock.now))
            memory.set("/img/b/10x10/white.jpg#p", output("https://o/b", clock.now))
            await asyncio.sleep(0.2)  # let the subscription start
            await here.tier.delete_prefix("/img/a/")
            await eventually(lambda: memory.get("/img/a/10x10/white.jpg#p") is None)
            assert memory.get("/img/b/10x10/white.jpg#p") is not None
            assert forgotten == ["a"]  # its version is re-read from the registry next time
    finally:
        await here.aclose()
        await there.aclose()


async def test_a_message_that_cannot_be_applied_is_logged_and_the_next_ones_still_are(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    here, there = make_store(redis_server, clock), make_store(redis_server, clock)
    memory = MemoryTier(100, clock)
    forgotten: list[str] = []

    def forget(image_id: str) -> None:
        if image_id == "buggy":
            raise RuntimeError("a bug in forget")
        forgotten.append(image_id)

    try:
        async with there.invalidations(memory, forget):
            memory.set("/img/b/10x10/white.jpg#p", output("https://o/b", clock.now))
            await asyncio.sleep(0.2)  # let the subscription start
            await here.tier.delete_prefix("/img/buggy/")
            redis_server.client().publish(here.channel, b"\xff\xfe not text")
            await here.tier.delete_prefix("/img/b/")
            await eventually(lambda: memory.get("/img/b/10x10/white.jpg#p") is None)
            assert forgotten == ["b"]
    finally:
        await here.aclose()
        await there.aclose()
    skipped = [r for r in caplog.records if "could not be applied" in r.getMessage()]
    assert len(skipped) == 2 and all(r.exc_info for r in skipped)


async def test_the_listener_subscribes_again_after_any_failure(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    here, there = make_store(redis_server, clock), make_store(redis_server, clock)
    memory = MemoryTier(100, clock)
    admin = redis_server.client()
    caplog.set_level(logging.INFO, logger="cutproxy.redis")
    admin.execute_command("ACL", "SETUSER", "default", "resetchannels")  # SUBSCRIBE: NOPERM
    try:
        async with there.invalidations(memory, None):
            await eventually(lambda: "invalidation listener failed" in caplog.text)
            admin.execute_command("ACL", "SETUSER", "default", "allchannels")
            memory.set("/img/a/10x10/white.jpg#p", output("https://o/a", clock.now))
            # Published until heard: the listener subscribes again after its back-off.
            deadline = time.monotonic() + 10
            while memory.get("/img/a/10x10/white.jpg#p") is not None:
                assert time.monotonic() < deadline, "the listener never came back"
                await here.tier.delete_prefix("/img/a/")
                await asyncio.sleep(0.1)
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "allchannels")
        await here.aclose()
        await there.aclose()
    assert "invalidation channel subscribed again" in caplog.text


# --- the registry -----------------------------------------------------------------------------


async def test_the_registry_pages_in_id_order_and_counts(store: RedisStore) -> None:
    for image_id in ("c", "a", "b", "d"):
        await store.registry.put(ImageRecord(image_id, f"u-{image_id}", 10, 20, extra={"k": 1}))
    assert await store.registry.count() == 4
    first = await store.registry.list(limit=2)
    assert [r.image_id for r in first] == ["a", "b"]
    rest = await store.registry.list(after="b", limit=10)
    assert [r.image_id for r in rest] == ["c", "d"]
    got = await store.registry.get("c")
    assert got == ImageRecord("c", "u-c", 10, 20, extra={"k": 1})
    assert await store.registry.delete("c") is True
    assert await store.registry.delete("c") is False
    assert await store.registry.get("c") is None
    assert await store.registry.count() == 3


# --- leases -----------------------------------------------------------------------------------


async def test_a_lease_is_exclusive_and_only_its_holder_releases_it(store: RedisStore) -> None:
    token = await store.lease.acquire("lease:k", 5)
    assert token is not None
    assert await store.lease.acquire("lease:k", 5) is None
    await store.lease.release("lease:k", "someone-else")
    assert await store.lease.acquire("lease:k", 5) is None
    holder = await store.lease.holder("lease:k")
    assert holder == token and holder.count(":") >= 2  # host:pid:random
    await store.lease.release("lease:k", token)
    assert await store.lease.acquire("lease:k", 5) is not None


async def test_a_lease_lapses_unless_its_holder_extends_it(store: RedisStore) -> None:
    token = await store.lease.acquire("lease:k", 0.2)
    assert token is not None
    assert await store.lease.extend("lease:k", token, 0.6) is True
    await asyncio.sleep(0.3)
    assert await store.lease.acquire("lease:k", 1) is None  # extended past its first TTL
    await asyncio.sleep(0.4)
    assert await store.lease.extend("lease:k", token, 1) is False  # lapsed: too late
    assert await store.lease.acquire("lease:k", 1) is not None


async def test_a_follower_takes_over_from_a_leader_that_died(redis_server: RedisServer) -> None:
    dead, alive = make_store(redis_server), make_store(redis_server)
    try:
        # A leader that won the lease and then vanished: nothing will ever release it.
        assert await dead.lease.acquire("lease:v", 0.3) is not None
        minted: list[str] = []

        async def lead() -> str:
            minted.append("x")
            return "fresh"

        async def check() -> str | None:
            return None

        started = time.monotonic()
        result = await lead_or_follow(
            alive.lease, "v", ttl=0.3, wait=5, lead=lead, check=check, poll=0.02
        )
        assert result == "fresh" and minted == ["x"]
        assert 0.2 < time.monotonic() - started < 2
    finally:
        await dead.aclose()
        await alive.aclose()


async def test_a_slow_leader_keeps_its_lease_past_the_ttl(redis_server: RedisServer) -> None:
    one, two = make_store(redis_server), make_store(redis_server)
    try:
        mints = 0
        done = asyncio.Event()

        async def lead() -> str:
            nonlocal mints
            mints += 1
            await asyncio.sleep(0.8)  # four TTLs: only renewal keeps the lease
            done.set()
            return "fresh"

        async def check() -> str | None:
            return "fresh" if done.is_set() else None

        results = await asyncio.gather(
            lead_or_follow(one.lease, "v", ttl=0.2, wait=5, lead=lead, check=check, poll=0.02),
            lead_or_follow(two.lease, "v", ttl=0.2, wait=5, lead=lead, check=check, poll=0.02),
        )
        assert results == ["fresh", "fresh"]
        assert mints == 1
    finally:
        await one.aclose()
        await two.aclose()


# --- budget and ledger ------------------------------------------------------------------------


async def test_replicas_never_overspend_a_budget_between_them(redis_server: RedisServer) -> None:
    stores = [make_store(redis_server) for _ in range(3)]
    try:
        budgets = [CreditBudget(s.counters, per_hour=10, per_day=100) for s in stores]
        now = time.time()
        allowed = await asyncio.gather(*(budgets[i % 3].try_spend(1.0, now) for i in range(40)))
        assert sum(allowed) == 10
        left = await budgets[0].remaining(now)
        assert left["hour"]["spent"] == 10 and left["day"]["spent"] == 10
        await budgets[1].refund(1.5, now)
        assert (await budgets[2].remaining(now))["hour"]["spent"] == 8.5
        assert await budgets[0].try_spend(1.5, now) is True
        assert await budgets[0].try_spend(0.01, now) is False

        ledgers = [CostLedger(s.counters) for s in stores]
        await asyncio.gather(*(ledgers[i % 3].record(spent=0.25) for i in range(20)))
        await ledgers[0].record(saved_by_coalescing=1.1, saved_by_batching=0.3)
        assert await ledgers[2].snapshot() == {
            "spent": 5.0,
            "saved_by_coalescing": 1.1,
            "saved_by_batching": 0.3,
            "possibly_spent": 0.0,
            "ambiguous_mints": 0,
        }
    finally:
        for s in stores:
            await s.aclose()


async def test_the_miss_rate_of_a_client_is_counted_across_replicas(
    redis_server: RedisServer,
) -> None:
    import limits.errors

    settings = Settings.from_env({}, redis_url=redis_server.url)
    one, two = make_store(redis_server), make_store(redis_server)
    try:
        limiters = [
            ClientLimiter("3/minute", storage=s.limiter_storage(settings)) for s in (one, two)
        ]
        waits = [await limiters[i % 2].hit("203.0.113.7") for i in range(4)]
        assert waits[:3] == [None, None, None]
        assert waits[3] is not None and 0 < waits[3] <= 60
        assert await limiters[1].hit("203.0.113.8") is None  # another client, its own count

        redis_server.stop()
        with pytest.raises(limits.errors.StorageError) as caught:
            await limiters[0].hit("203.0.113.9")
        refused = one.unavailable("miss rate", caught.value)
        assert refused.status_code == 503 and one.health.failures == 1
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_burst_of_rate_counted_calls_waits_for_the_pool_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    # 250 misses at once (a cold page on one replica), each counted against a client rate:
    # the limiter's calls share the client's bounded pool and wait their turn for it.
    settings = Settings.from_env({}, redis_url=redis_server.url, redis_max_connections=8)
    store = make_store(redis_server, redis_max_connections=8)
    try:
        limiter = ClientLimiter("1000/minute", storage=store.limiter_storage(settings))
        waits = await asyncio.gather(*(limiter.hit(f"198.51.100.{i % 50}") for i in range(250)))
        assert waits == [None] * 250
    finally:
        await store.aclose()


# --- outages ----------------------------------------------------------------------------------


async def test_an_outage_is_a_quick_503_and_recovery_needs_nothing(
    redis_server: RedisServer,
) -> None:
    store = make_store(redis_server, redis_timeout=0.3)
    try:
        now = time.time()
        await store.tier.set("/img/a/1x1/w.jpg#p", output("https://o/a", now))
        redis_server.client().save()
        redis_server.stop()

        started = time.monotonic()
        with pytest.raises(SharedStoreUnavailableError) as caught:
            await store.tier.get("/img/a/1x1/w.jpg#p")
        assert caught.value.status_code == 503 and caught.value.retry_after
        with pytest.raises(SharedStoreUnavailableError):
            await store.lease.acquire("lease:x", 5)  # no lease, so no mint
        with pytest.raises(SharedStoreUnavailableError):
            await store.registry.get("a")
        await store.tier.set("/img/b/1x1/w.jpg#p", output("https://o/b", now))  # dropped
        await store.lease.release("lease:x", "t")  # dropped: it lapses by itself
        assert time.monotonic() - started < 3
        assert store.health.reachable is False and store.health.failures >= 3
        assert await store.ping() is False

        redis_server.start()
        got = await store.tier.get("/img/a/1x1/w.jpg#p")
        assert got is not None and got.url == "https://o/a"
        assert store.health.reachable is True
        assert await store.ping() is True
    finally:
        await store.aclose()


async def test_a_hung_redis_times_out_instead_of_hanging_requests(
    redis_server: RedisServer,
) -> None:
    import os
    import signal

    store = make_store(redis_server, redis_timeout=0.3)
    try:
        assert await store.ping() is True
        assert redis_server.proc is not None
        os.killpg(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(SharedStoreUnavailableError):
                await store.tier.get("/img/a/1x1/w.jpg#p")
            assert time.monotonic() - started < 2
        finally:
            os.killpg(redis_server.proc.pid, signal.SIGCONT)
        assert await store.tier.get("/img/a/1x1/w.jpg#p") is None
        assert store.health.reachable is True
    finally:
        await store.aclose()
