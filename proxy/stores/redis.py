"""Redis as the store every replica shares: variant cache, registry, leases and guard counters.

    RedisStore                 one asyncio client (a bounded pool, short timeouts) per process
    ├── RedisTier              SharedTier: entries with PX expiry + a per-image index set
    ├── RedisRegistry          Registry: a JSON value per image + a sorted set of ids
    ├── RedisLease             Lease: SET NX PX with a token; compare-and-delete/extend in Lua
    ├── RedisCounters          BudgetStore and CounterStore (proxy.budget) in whole hundredths
    └── invalidations()        pub/sub: what one replica deletes leaves every memory tier at once

Redis errors are translated here, at the boundary, into :class:`SharedStoreUnavailableError`
(503 + Retry-After). The memory tier is consulted before any call reaches this module, so hits
keep working while Redis is down; a miss needs the lease, so it is refused rather than minted
blindly. Writes whose loss only costs a later re-mint (caching a fresh result, releasing or
extending a lease) are logged and dropped instead. redis-py's pool reconnects by itself, so
the proxy recovers as soon as Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import limits.aio.storage
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.errors import SharedStoreUnavailableError
from proxy.settings import Settings
from proxy.stores.cache import CachedOutput, Clock, MemoryTier
from proxy.stores.registry import ImageRecord
from proxy.upstream.contract import to_hundredths
from proxy.variants.coalesce import holder_gone, holder_token

if TYPE_CHECKING:
    from proxy.guards.budget import Window

log = logging.getLogger("cutproxy.redis")

RETRY_AFTER = 5.0  # what a 503 tells clients while Redis is down
HEALTH_CHECK_INTERVAL = 10  # idle connections (and the pub/sub one) are PINGed this often
_UNITS_PER_CREDIT = 100

# What "Redis is unreachable" looks like: refused, reset, timed out, loading, failed over.
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

_IMAGE_PREFIX = re.compile(r"/img/([A-Za-z0-9_-]+)/")


class RedisHealth:
    """Whether Redis answered lately, and how often it did not: logs each change once.

    ``on_unavailable`` hooks (metrics) are called with the operation that failed.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.reachable = True
        self.down_since: float | None = None
        self.failures = 0
        self.on_unavailable: list[Callable[[str], None]] = []

    def failed(self, operation: str, exc: BaseException) -> None:
        self.failures += 1
        if self.reachable:
            self.reachable = False
            self.down_since = self._clock()
            log.error(
                "shared store (Redis) unreachable on %s: %s; serving memory hits only, "
                "misses answer 503 until it is back",
                operation,
                type(exc).__name__,
            )
        for hook in self.on_unavailable:
            hook(operation)

    def succeeded(self) -> None:
        if not self.reachable:
            down_for = self._clock() - (self.down_since or self._clock())
            self.reachable = True
            self.down_since = None
            log.warning("shared store (Redis) reachable again after %.1f s", down_for)

    @contextlib.contextmanager
    def guard(self, operation: str) -> Iterator[None]:
        """Run one Redis operation: its connection errors become a 503, its success is noted."""
        try:
            yield
        except UNREACHABLE as exc:
            self.failed(operation, exc)
            raise unavailable(exc) from exc
        self.succeeded()


def connect(settings: Settings) -> redis.asyncio.Redis:
    """A client over a bounded pool with short timeouts and one quick retry.

    The retry covers a connection that went stale while Redis restarted; beyond it, a
    failure is reported at once rather than holding requests in back-off.
    """
    if settings.redis_url is None:
        raise ValueError("PROXY_REDIS_URL is not set")
    # TCP keep-alive is a TCP option: redis-py's unix-socket connection refuses the argument.
    tcp = not settings.redis_url.lower().startswith("unix:")
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout,  # waiting for a free connection
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        **({"socket_keepalive": True} if tcp else {}),
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(NoBackoff(), 1),
    )
    return redis.asyncio.Redis(connection_pool=pool)


class RedisStore:
    """The one client of a process and the stores built on it; ``aclose`` closes it."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "cutproxy:",
        clock: Clock = time.time,
        health: RedisHealth | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.health = health or RedisHealth()
        self.tier = RedisTier(client, prefix=prefix, clock=clock, health=self.health)
        self.registry = RedisRegistry(client, prefix=prefix, health=self.health)
        self.lease = RedisLease(client, prefix=prefix, health=self.health)
        self.counters = RedisCounters(client, prefix=prefix, health=self.health)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.time) -> RedisStore:
        return cls(connect(settings), prefix=settings.redis_prefix, clock=clock)

    @property
    def channel(self) -> str:
        return self.tier.channel

    async def ping(self) -> bool:
        """True when Redis answers now (for /health); never raises."""
        try:
            with self.health.guard("ping"):
                await self.client.ping()
        except SharedStoreUnavailableError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def invalidations(
        self, memory: MemoryTier, forget: Callable[[str], None] | None = None
    ) -> AsyncIterator[None]:
        """While open, prefixes deleted on any replica are dropped from ``memory`` too, and
        ``forget`` is told the image id of an image prefix (its cached version, if any)."""
        task = asyncio.ensure_future(
            _listen(self.client, self.channel, memory, forget, self.health)
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def limiter_storage(self, settings: Settings) -> limits.aio.storage.Storage:
        """A ``limits`` storage on the same Redis for :class:`proxy.budget.ClientLimiter`.

        Its failures arrive as ``limits.errors.StorageError``: where the limiter is called,
        turn them into the proxy's 503 with :meth:`unavailable`.
        """
        assert settings.redis_url is not None
        return limits.aio.storage.RedisStorage(
            limits_uri(settings.redis_url),
            implementation="redispy",
            key_prefix=f"{self.prefix}limits",
            wrap_exceptions=True,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
        )

    def unavailable(self, operation: str, exc: BaseException) -> SharedStoreUnavailableError:
        """Count and log a Redis failure met outside this module; the 503 to raise for it."""
        self.health.failed(operation, exc)
        return unavailable(exc)

    async def aclose(self) -> None:
        await self.client.aclose()


def limits_uri(redis_url: str) -> str:
    """``PROXY_REDIS_URL`` as the ``limits`` library names the same server.

    It takes ``async+redis://`` and ``async+rediss://``, but a unix socket is
    ``async+redis+unix://``: given ``async+unix://`` it would try Valkey instead.
    """
    scheme, sep, rest = redis_url.partition("://")
    scheme = "redis+unix" if scheme.lower() == "unix" else scheme.lower()
    return f"async+{scheme}{sep}{rest}"


def unavailable(exc: BaseException) -> SharedStoreUnavailableError:
    """The 503 for a Redis failure met outside this module (e.g. inside ``limits``)."""
    return SharedStoreUnavailableError(
        "the shared store is unreachable; retry shortly", retry_after=RETRY_AFTER
    )


LISTEN_BACKOFF = 0.1  # seconds before subscribing again; doubles on each failure in a row
LISTEN_BACKOFF_MAX = 2.0  # when Redis is unreachable
LISTEN_BACKOFF_MAX_ERROR = 30.0  # after any other failure (logged each time)


async def _listen(
    client: redis.asyncio.Redis,
    channel: str,
    memory: MemoryTier,
    forget: Callable[[str], None] | None,
    health: RedisHealth,
) -> None:
    """Apply invalidations published by any replica; subscribe again after any failure.

    This only makes replacements show at once. Correctness does not hang on it: cache keys
    carry the image's version, which every worker re-reads from the registry within
    ``PROXY_IMAGE_VIEW_TTL``, so a message lost while the connection was broken costs at
    most that long. Still, the listener never gives up: an unreachable Redis is reported by
    ``health`` (once per outage), any other failure is logged with its traceback, and it
    subscribes again after a back-off. A message that cannot be applied is logged and
    skipped.
    """
    backoff = LISTEN_BACKOFF
    broken = False
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if broken:  # the subscription answered: it works again
                    log.info("invalidation channel subscribed again")
                    broken, backoff = False, LISTEN_BACKOFF
                if message is not None and message.get("type") == "message":
                    _apply(message["data"], memory, forget)
        except UNREACHABLE as exc:
            if not broken:
                health.failed("invalidation channel", exc)
            cap = LISTEN_BACKOFF_MAX
        except Exception:
            log.exception("the invalidation listener failed; subscribing again in %.1f s", backoff)
            cap = LISTEN_BACKOFF_MAX_ERROR
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        broken = True
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, cap)


def _apply(data: bytes | str, memory: MemoryTier, forget: Callable[[str], None] | None) -> None:
    """One invalidation: drop the prefix from ``memory`` and forget the image's version."""
    try:
        prefix = _text(data)
        memory.delete_prefix(prefix)
        image = _IMAGE_PREFIX.fullmatch(prefix)
        if image is not None and forget is not None:
            forget(image.group(1))
    except Exception:
        log.exception("invalidation message %r could not be applied; skipped", data[:200])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the variant cache ------------------------------------------------------------------------

# KEYS: entry, image index. ARGV: value, px. The index lives as long as its longest entry.
_SET_ENTRY = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] ~= KEYS[1] then
  redis.call('SADD', KEYS[2], KEYS[1])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
end
return 1
"""

# KEYS: image index. ARGV: full-key prefix. Deletes indexed entries under the prefix.
_DELETE_INDEXED = """
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(key, 1, string.len(ARGV[1])) == ARGV[1] then
    n = n + redis.call('DEL', key)
    redis.call('SREM', KEYS[1], key)
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return n
"""


class RedisTier:
    """:class:`proxy.cache.SharedTier` in Redis: one string per entry, expiring with it.

    Each entry is also listed in its image's index set, so dropping an image's variants
    (``delete_prefix("/img/<id>/")``) touches only those keys, never a SCAN of the keyspace.
    Every delete is published so other replicas drop the same entries from memory.
    """

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str, clock: Clock, health: RedisHealth
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._health = health
        self.channel = f"{prefix}invalidate"
        self._set_entry = client.register_script(_SET_ENTRY)
        self._delete_indexed = client.register_script(_DELETE_INDEXED)

    def _key(self, key: str) -> str:
        return f"{self._prefix}cache:{key}"

    def _index(self, key: str) -> str:
        image = _IMAGE_PREFIX.match(key)
        return f"{self._prefix}index:{image.group(0)}" if image else self._key(key)

    async def get(self, key: str) -> CachedOutput | None:
        with self._health.guard("cache read"):
            raw = await self._client.get(self._key(key))
        if raw is None:
            return None
        output = CachedOutput.from_dict(json.loads(raw))
        return output if output.expires_at > self._clock() else None

    async def set(self, key: str, output: CachedOutput) -> None:
        """Best effort: a lost write costs a re-mint later, never a wrong answer."""
        px = int((output.expires_at - self._clock()) * 1000)
        if px <= 0:
            return
        value = json.dumps(output.to_dict())
        with contextlib.suppress(SharedStoreUnavailableError), self._health.guard("cache write"):
            await self._set_entry(keys=[self._key(key), self._index(key)], args=[value, px])

    async def scan(self, prefix: str) -> dict[str, CachedOutput]:
        """Live entries of one image (``/img/<id>/...``), read through its index set."""
        if not _IMAGE_PREFIX.fullmatch(prefix):
            raise ValueError(f"only an image's prefix can be listed, not {prefix!r}")
        full_prefix = self._key(prefix)
        with self._health.guard("cache read"):
            members = await self._client.smembers(self._index(prefix))
            keys = sorted(k for k in (_text(m) for m in members) if k.startswith(full_prefix))
            values = await self._client.mget(keys) if keys else []
        now = self._clock()
        found: dict[str, CachedOutput] = {}
        for key, raw in zip(keys, values, strict=True):
            if raw is not None:  # the index may outlive an expired entry by a moment
                output = CachedOutput.from_dict(json.loads(raw))
                if output.expires_at > now:
                    found[key.removeprefix(self._key(""))] = output
        return found

    async def delete(self, key: str) -> None:
        with self._health.guard("cache delete"):
            await self._client.delete(self._key(key))
            await self._client.publish(self.channel, key)

    async def delete_prefix(self, prefix: str) -> int:
        with self._health.guard("cache delete"):
            if _IMAGE_PREFIX.match(prefix):
                deleted = await self._delete_indexed(
                    keys=[self._index(prefix)], args=[self._key(prefix)]
                )
            else:
                deleted = await self._scan_delete(self._key(prefix))
            await self._client.publish(self.channel, prefix)
        return int(deleted)

    async def _scan_delete(self, full_prefix: str) -> int:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", full_prefix) + "*"
        deleted = 0
        async for key in self._client.scan_iter(match=pattern, count=500):
            deleted += int(await self._client.delete(key))
        return deleted

    async def close(self) -> None:
        """The client belongs to :class:`RedisStore`, which closes it."""


# --- the registry -----------------------------------------------------------------------------


class RedisRegistry:
    """:class:`proxy.registry.Registry` in Redis: ``image:<id>`` JSON and an ``images`` zset.

    All ids score 0 in the sorted set, so ``ZRANGEBYLEX`` pages through them in id order.
    Nothing expires: like the disk registry, records stay until deleted.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str, health: RedisHealth) -> None:
        self._client = client
        self._prefix = prefix
        self._health = health
        self._ids = f"{prefix}images"

    def _key(self, image_id: str) -> str:
        return f"{self._prefix}image:{image_id}"

    async def get(self, image_id: str) -> ImageRecord | None:
        with self._health.guard("registry read"):
            raw = await self._client.get(self._key(image_id))
        return None if raw is None else ImageRecord.from_dict(json.loads(raw))

    async def put(self, record: ImageRecord) -> None:
        with self._health.guard("registry write"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.image_id), json.dumps(record.to_dict()))
                pipe.zadd(self._ids, {record.image_id: 0})
                await pipe.execute()

    async def delete(self, image_id: str) -> bool:
        with self._health.guard("registry write"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(image_id))
                pipe.zrem(self._ids, image_id)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list(self, after: str | None = None, limit: int = 100) -> list[ImageRecord]:
        if limit <= 0:
            return []
        start = f"({after}" if after is not None else "-"
        with self._health.guard("registry read"):
            ids = await self._client.zrangebylex(self._ids, start, "+", start=0, num=limit)
            if not ids:
                return []
            raws = await self._client.mget([self._key(_text(i)) for i in ids])
        return [ImageRecord.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    async def count(self) -> int:
        with self._health.guard("registry read"):
            return int(await self._client.zcard(self._ids))

    async def close(self) -> None:
        """The client belongs to :class:`RedisStore`, which closes it."""


# --- coalescing leases ------------------------------------------------------------------------

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: the lease. ARGV: the dead holder's token, the new token, the ttl (ms).
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 or 0
end
return 0
"""


class RedisLease:
    """:class:`proxy.coalesce.Lease` across machines: ``SET key token NX PX ttl``.

    Only the holder's token releases or extends it (compare-and-act in Lua, atomic in Redis).
    The token names its holder (``host:pid:random``) so an operator can see who is minting,
    and so a contender on the holder's own host that finds its process gone takes the lease
    over at once; a holder that died on another host is waited for until its TTL lapses.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str, health: RedisHealth) -> None:
        self._client = client
        self._prefix = prefix
        self._health = health
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)
        self._take_over = client.register_script(_TAKE_OVER)

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"

    async def acquire(self, key: str, ttl: float) -> str | None:
        token = holder_token()
        with self._health.guard("lease"):
            if await self._client.set(self._key(key), token, nx=True, px=_ms(ttl)):
                return token
            raw = await self._client.get(self._key(key))
            holder = None if raw is None else _text(raw)
            if holder is None or not holder_gone(holder):
                return None
            args: list[str | int] = [holder, token, _ms(ttl)]
            if not await self._take_over(keys=[self._key(key)], args=args):
                return None
        log.warning("took over the lease on %s: its holder %s is gone", key, holder)
        return token

    async def release(self, key: str, token: str) -> None:
        """Best effort: an unreleased lease lapses by itself after its TTL."""
        with contextlib.suppress(SharedStoreUnavailableError), self._health.guard("lease"):
            await self._release(keys=[self._key(key)], args=[token])

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        with self._health.guard("lease"):
            return bool(await self._extend(keys=[self._key(key)], args=[token, _ms(ttl)]))

    async def holder(self, key: str) -> str | None:
        """Who holds the lease on ``key`` now (``host:pid:random``), if anyone."""
        with self._health.guard("lease"):
            raw = await self._client.get(self._key(key))
        return None if raw is None else _text(raw)

    async def close(self) -> None:
        """The client belongs to :class:`RedisStore`, which closes it."""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


# --- budget and ledger counters ---------------------------------------------------------------

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
    """:class:`proxy.budget.BudgetStore` and :class:`proxy.budget.CounterStore` in Redis.

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
