"""The fallback index: which variants of an image were cached lately, and until when.

    VariantIndex           protocol: add / entries / close
    ├── DiskVariantIndex   one diskcache row per image: one host's worker processes
    └── RedisVariantIndex  one hash per image: every replica

A miss refused by the guards (a client over its rate, a spent budget) is answered with the
nearest cached size of the same image, found through this index (:mod:`proxy.guards.misses`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
import diskcache

if TYPE_CHECKING:
    import redis.asyncio

    from proxy.stores.redis_health import RedisHealth

MAX_INDEXED = 512  # per image; the soonest-expiring entries make room


class VariantIndex(Protocol):
    """Which variant cache keys of an image were minted lately, and until when they live."""

    async def add(self, image_id: str, key: str, expires_at: float) -> None: ...

    async def entries(self, image_id: str, now: float) -> dict[str, float]:
        """Live entries: cache key → expires_at."""
        ...

    async def close(self) -> None: ...


class DiskVariantIndex:
    """One diskcache row per image, shared by one host's workers."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self._cache = diskcache.Cache(str(directory))
        self._clock = clock

    def _add(self, image_id: str, key: str, expires_at: float) -> None:
        now = self._clock()
        with self._cache.transact():
            entries = {k: t for k, t in dict(self._cache.get(image_id, {})).items() if t > now}
            entries[key] = expires_at
            if len(entries) > MAX_INDEXED:
                keep = sorted(entries.items(), key=lambda item: item[1])[-MAX_INDEXED:]
                entries = dict(keep)
            self._cache.set(image_id, entries, expire=max(1.0, max(entries.values()) - now))

    def _entries(self, image_id: str, now: float) -> dict[str, float]:
        return {k: t for k, t in dict(self._cache.get(image_id, {})).items() if t > now}

    async def add(self, image_id: str, key: str, expires_at: float) -> None:
        await anyio.to_thread.run_sync(self._add, image_id, key, expires_at)

    async def entries(self, image_id: str, now: float) -> dict[str, float]:
        return await anyio.to_thread.run_sync(self._entries, image_id, now)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._cache.close)


class RedisVariantIndex:
    """A hash per image (field: cache key, value: expires_at) that expires with its newest entry."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        clock: Callable[[], float],
        health: RedisHealth,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._health = health

    def _key(self, image_id: str) -> str:
        return f"{self._prefix}fallback-index:{image_id}"

    async def add(self, image_id: str, key: str, expires_at: float) -> None:
        name = self._key(image_id)
        ttl_ms = max(1000, int((expires_at - self._clock()) * 1000))
        with self._health.guard("fallback index"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(name, key, repr(expires_at))
                # The newest entry lives longest: the hash lives as long as it.
                pipe.pexpire(name, ttl_ms)
                pipe.hlen(name)
                *_, size = await pipe.execute()
            if int(size) > MAX_INDEXED:
                entries = await self._read(name)
                doomed = sorted(entries, key=entries.__getitem__)[: int(size) - MAX_INDEXED]
                await self._client.hdel(name, *doomed)

    async def _read(self, name: str) -> dict[str, float]:
        raw: dict[Any, Any] = await self._client.hgetall(name)
        return {_text(k): float(_text(v)) for k, v in raw.items()}

    async def entries(self, image_id: str, now: float) -> dict[str, float]:
        with self._health.guard("fallback index"):
            entries = await self._read(self._key(image_id))
        return {k: t for k, t in entries.items() if t > now}

    async def close(self) -> None:
        """The client belongs to :class:`proxy.stores.redis.RedisStore`, which closes it."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
