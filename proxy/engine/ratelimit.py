"""The engine's API rate limit: a moving window shared by all workers.

``limits`` supplies the strategy (:class:`~limits.strategies.MovingWindowRateLimiter`); the
window lives in the engine's diskcache so every worker process counts against the same
minute, and its timestamps come from the injected clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import diskcache
from limits import RateLimitItemPerMinute
from limits.storage import MovingWindowSupport, Storage
from limits.strategies import MovingWindowRateLimiter


class DiskCacheStorage(Storage, MovingWindowSupport):
    """A ``limits`` storage on a :class:`diskcache.Cache`, with an injectable clock."""

    STORAGE_SCHEME = None

    def __init__(self, cache: diskcache.Cache, clock: Callable[[], float]) -> None:
        super().__init__()
        self._cache = cache
        self._clock = clock

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (sqlite3.Error, diskcache.Timeout)

    # Fixed-window counters (part of the Storage interface).
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self._cache.transact():
            now = self._clock()
            count, until = self._cache.get(_key(key), (0, now + expiry))
            if until <= now:
                count, until = 0, now + expiry
            count += amount
            self._cache.set(_key(key), (count, until), expire=expiry, tag="ratelimit")
        return int(count)

    def get(self, key: str) -> int:
        count, until = self._cache.get(_key(key), (0, 0.0))
        return int(count) if until > self._clock() else 0

    def get_expiry(self, key: str) -> float:
        _, until = self._cache.get(_key(key), (0, self._clock()))
        return float(until)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        self._cache.evict("ratelimit")
        return None

    def clear(self, key: str) -> None:
        self._cache.delete(_key(key))

    # Moving window: the timestamps of the hits within the last ``expiry`` seconds.
    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self._cache.transact():
            now = self._clock()
            hits = self._window(key, now, expiry)
            if len(hits) + amount > limit:
                return False
            hits.extend([now] * amount)
            self._cache.set(_key(key), hits, expire=expiry, tag="ratelimit")
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self._clock()
        hits = self._window(key, now, expiry)
        if not hits:
            return now, 0
        return hits[0], len(hits)

    def _window(self, key: str, now: float, expiry: int) -> list[float]:
        stored: Any = self._cache.get(_key(key))
        if not isinstance(stored, list):
            return []
        return [t for t in stored if t > now - expiry]


def _key(key: str) -> str:
    return f"ratelimit:{key}"


class ApiRateLimit:
    """``per_minute`` API calls in any moving minute; :meth:`hit` says how long to wait."""

    def __init__(self, per_minute: int, cache: diskcache.Cache, clock: Callable[[], float]):
        self._item = RateLimitItemPerMinute(per_minute)
        self._clock = clock
        self._limiter = MovingWindowRateLimiter(DiskCacheStorage(cache, clock))

    def hit(self) -> float | None:
        """Count one call; None if allowed, else seconds until one would be."""
        if self._limiter.hit(self._item, "api"):
            return None
        reset_at, _ = self._limiter.get_window_stats(self._item, "api")
        return max(1.0, reset_at - self._clock())
