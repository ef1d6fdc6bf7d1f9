"""Counters: the credit budget's windows and the cost ledger's totals, exact and shared.

    BudgetStore        protocol: spend (check-and-add, atomic) / refund / spent
    CounterStore       protocol: add (atomic) / read
    ├── DiskCounters   diskcache (SQLite) under PROXY_DATA_DIR: one host's worker processes;
    │                  also a moving window per key, for per-client miss rates
    └── RedisCounters  Lua scripts on Redis: every replica

Amounts are kept as whole hundredths of a credit (:func:`proxy.upstream.contract.to_hundredths`)
so sums are exact. What the counters mean (UTC hour and day windows, ledger fields) is the
guards' business (:mod:`proxy.guards.budget`); here are only keys and numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio.to_thread
import diskcache

from proxy.upstream.contract import to_hundredths

if TYPE_CHECKING:
    import redis.asyncio

    from proxy.stores.redis_health import RedisHealth

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Window:
    """One budget window: its counter's key, its limit in credits, and how long to keep it."""

    key: str
    limit: float
    ttl: float


class BudgetStore(Protocol):
    """Where budget counters live. Implementations must be atomic across processes."""

    async def spend(self, windows: Sequence[Window], amount: float) -> bool:
        """If ``amount`` fits under every window's limit, add it to all and return True;
        otherwise change nothing and return False. One atomic step."""
        ...

    async def refund(self, windows: Sequence[Window], amount: float) -> None:
        """Take ``amount`` back from each window's counter (never below 0)."""
        ...

    async def spent(self, key: str) -> float:
        """Credits counted under ``key`` (0 when absent)."""
        ...


class CounterStore(Protocol):
    """Where ledger counters live: atomic adds, consistent reads."""

    async def add(self, amounts: Mapping[str, float]) -> None:
        """Add each amount to its counter, all in one atomic step."""
        ...

    async def read(self, keys: Sequence[str]) -> dict[str, float]:
        """Current values of ``keys`` (0 when absent)."""
        ...


class DiskCounters:
    """:class:`BudgetStore` and :class:`CounterStore` on a ``diskcache.Cache`` (SQLite).

    Worker processes that open the same directory share the counters: SQLite transactions
    make check-and-add atomic. Amounts are kept as integer hundredths of a credit (like
    :func:`proxy.engine.pricing.to_hundredths`) so that sums are exact. All disk access
    runs in a worker thread.
    """

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache

    @classmethod
    def open(cls, directory: Path | str) -> DiskCounters:
        """Open (or create) the store in ``directory``, e.g. ``settings.data_dir / "guards"``."""
        return cls(diskcache.Cache(str(directory)))

    def close(self) -> None:
        self._cache.close()

    async def spend(self, windows: Sequence[Window], amount: float) -> bool:
        return await _in_thread(self._spend, tuple(windows), _units(amount))

    async def refund(self, windows: Sequence[Window], amount: float) -> None:
        await _in_thread(self._refund, tuple(windows), _units(amount))

    async def spent(self, key: str) -> float:
        return (await _in_thread(self._read, (key,)))[key]

    async def add(self, amounts: Mapping[str, float]) -> None:
        await _in_thread(self._add, {key: _units(value) for key, value in amounts.items()})

    async def read(self, keys: Sequence[str]) -> dict[str, float]:
        return await _in_thread(self._read, tuple(keys))

    def _spend(self, windows: tuple[Window, ...], units: int) -> bool:
        with self._cache.transact():
            current = [(window, int(self._cache.get(window.key, 0))) for window in windows]
            if any(value + units > _units(window.limit) for window, value in current):
                return False
            for window, value in current:
                self._cache.set(window.key, value + units, expire=window.ttl)
        return True

    def _refund(self, windows: tuple[Window, ...], units: int) -> None:
        with self._cache.transact():
            for window in windows:
                value = self._cache.get(window.key)
                if value is not None:
                    self._cache.set(window.key, max(int(value) - units, 0), expire=window.ttl)

    def _add(self, amounts: dict[str, int]) -> None:
        with self._cache.transact():
            for key, units in amounts.items():
                self._cache.incr(key, units, default=0)

    def _read(self, keys: tuple[str, ...]) -> dict[str, float]:
        with self._cache.transact():
            return {key: int(self._cache.get(key, 0)) / _UNITS_PER_CREDIT for key in keys}

    async def hit_window(self, key: str, limit: int, window: float, now: float) -> float | None:
        """Count one event under ``key`` at ``now`` in a moving window of ``window`` seconds
        that holds at most ``limit`` events: None when it fits (and is counted), else the
        seconds until the oldest event leaves the window (and nothing is counted)."""
        return await _in_thread(self._hit_window, key, limit, window, now)

    def _hit_window(self, key: str, limit: int, window: float, now: float) -> float | None:
        with self._cache.transact():
            recent = [t for t in self._cache.get(key, ()) if t > now - window]
            if len(recent) >= limit:
                return max(recent[0] + window - now, 0.0)
            recent.append(now)
            self._cache.set(key, recent, expire=window)
        return None


_UNITS_PER_CREDIT = 100
_units = to_hundredths


async def _in_thread(func: Callable[..., _R], *args: Any) -> _R:
    return await anyio.to_thread.run_sync(functools.partial(func, *args))


# --- every replica: Redis --------------------------------------------------------------------

# KEYS: window counters. ARGV: units, then each window's limit, then each window's ttl (ms).
_SPEND = """
local units = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  if tonumber(redis.call('GET', KEYS[i]) or '0') + units > tonumber(ARGV[1 + i]) then
    return 0
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], units)
  redis.call('PEXPIRE', KEYS[i], ARGV[1 + n + i])
end
return 1
"""

# KEYS: window counters. ARGV: units, then each window's ttl (ms). Never below zero.
_REFUND = """
local units = tonumber(ARGV[1])
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if value then
    redis.call('SET', KEYS[i], math.max(tonumber(value) - units, 0), 'PX', ARGV[1 + i])
  end
end
return 1
"""


class RedisCounters:
    """:class:`BudgetStore` and :class:`CounterStore` in Redis.

    Amounts are whole hundredths of a credit (``INCRBY`` is exact); check-and-add is one
    Lua script, so replicas never overspend a window between them.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str, health: RedisHealth) -> None:
        self._client = client
        self._prefix = prefix
        self._health = health
        self._spend = client.register_script(_SPEND)
        self._refund = client.register_script(_REFUND)

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"

    async def spend(self, windows: Sequence[Window], amount: float) -> bool:
        keys = [self._key(w.key) for w in windows]
        args = [
            to_hundredths(amount),
            *(to_hundredths(w.limit) for w in windows),
            *(_ms(w.ttl) for w in windows),
        ]
        with self._health.guard("budget"):
            return bool(await self._spend(keys=keys, args=args))

    async def refund(self, windows: Sequence[Window], amount: float) -> None:
        keys = [self._key(w.key) for w in windows]
        args = [to_hundredths(amount), *(_ms(w.ttl) for w in windows)]
        with self._health.guard("budget"):
            await self._refund(keys=keys, args=args)

    async def spent(self, key: str) -> float:
        return (await self.read([key]))[key]

    async def add(self, amounts: Mapping[str, float]) -> None:
        with self._health.guard("ledger"):
            async with self._client.pipeline(transaction=True) as pipe:
                for key, value in amounts.items():
                    pipe.incrby(self._key(key), to_hundredths(value))
                await pipe.execute()

    async def read(self, keys: Sequence[str]) -> dict[str, float]:
        if not keys:
            return {}
        with self._health.guard("budget"):
            values: list[Any] = await self._client.mget([self._key(k) for k in keys])
        return {
            key: int(value or 0) / _UNITS_PER_CREDIT
            for key, value in zip(keys, values, strict=True)
        }


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
