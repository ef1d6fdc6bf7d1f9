"""Redis leases: a holder that died on this host is replaced at once, elsewhere after its TTL."""

from __future__ import annotations

import os
import time

from proxy.settings import Settings
from proxy.stores.redis import RedisStore
from tests.lease_holder import lease_holder
from tests.redis.server import RedisServer

KEY = "lease:/img/mug/640x640/ffffff.jpg#p~v"


def open_store(server: RedisServer) -> RedisStore:
    return RedisStore.from_settings(Settings.from_env({}, redis_url=server.url), time.time)


async def test_a_lease_whose_holder_was_killed_on_this_host_is_taken_over_at_once(
    redis_server: RedisServer,
) -> None:
    store = open_store(redis_server)
    try:
        with lease_holder("redis", redis_server.url, KEY) as holder:
            assert await store.lease.acquire(KEY, 600) is None, "a live holder keeps its lease"
            holder.kill()  # mid-mint: its lease would live 600 s more
            taken = await store.lease.acquire(KEY, 600)
            assert taken is not None and f":{os.getpid()}:" in taken
            assert await store.lease.holder(KEY) == taken
            assert redis_server.client().pttl(f"cutproxy:{KEY}") > 590_000
    finally:
        await store.aclose()


async def test_a_holder_on_another_host_is_waited_for(redis_server: RedisServer) -> None:
    store = open_store(redis_server)
    try:
        # Its process cannot be looked at from here: only the TTL frees its lease.
        redis_server.client().set(f"cutproxy:{KEY}", "other-host:4242:0123456789abcdef", px=600_000)
        assert await store.lease.acquire(KEY, 600) is None
        assert await store.lease.holder(KEY) == "other-host:4242:0123456789abcdef"
    finally:
        await store.aclose()
