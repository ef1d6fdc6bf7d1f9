"""Redis as the store every replica shares: the connection, the bundle, the invalidations.

    RedisStore                 one asyncio client (a bounded pool, short timeouts) per process
    ├── tier                   RedisTier (proxy.stores.cache): entries with PX expiry
    ├── registry               RedisRegistry (proxy.stores.registry): a JSON value per image
    ├── lease                  RedisLease (proxy.stores.leases): SET NX PX with a token
    ├── counters               RedisCounters (proxy.stores.counters): budget and ledger
    ├── index                  RedisVariantIndex (proxy.stores.index): for fallbacks
    └── invalidations()        pub/sub: what one replica deletes leaves every memory tier at once

Each kind's Redis implementation lives beside its memory and disk ones; this module connects
and builds them. Redis errors are translated at the boundary, by
:class:`proxy.stores.redis_health.RedisHealth` (one per bundle, in a module of its own so
that the kinds can name it without importing this one), into
:class:`SharedStoreUnavailableError` (503 + Retry-After). The memory tier is consulted before
any call reaches Redis, so hits keep working while Redis is down; a miss needs the lease, so
it is refused rather than minted blindly. Writes whose loss only costs a later re-mint
(caching a fresh result, releasing or extending a lease) are logged and dropped instead.
redis-py's pool reconnects by itself, so the proxy recovers as soon as Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import limits.aio.storage
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.errors import SharedStoreUnavailableError
from proxy.settings import Settings
from proxy.stores.cache import IMAGE_PREFIX, Clock, MemoryTier, RedisTier
from proxy.stores.counters import RedisCounters
from proxy.stores.index import RedisVariantIndex
from proxy.stores.leases import RedisLease
from proxy.stores.redis_health import UNREACHABLE, RedisHealth, unavailable
from proxy.stores.registry import RedisRegistry

log = logging.getLogger("cutproxy.redis")

HEALTH_CHECK_INTERVAL = 10  # idle connections (and the pub/sub one) are PINGed this often


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
        self.index = RedisVariantIndex(client, prefix=prefix, clock=clock, health=self.health)

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
        """A ``limits`` storage on the same Redis for :class:`proxy.guards.clients.ClientLimiter`.

        Its failures arrive as ``limits.errors.StorageError``: where the limiter is called,
        turn them into the proxy's 503 with :meth:`unavailable`. It draws on this client's
        bounded, blocking pool (PROXY_REDIS_MAX_CONNECTIONS): a pool of its own would refuse
        the 101st concurrent call (redis-py's MaxConnectionsError) instead of waiting, and
        a burst of store-mode misses, each counted against the derive rate, would get 503s.
        """
        assert settings.redis_url is not None
        return limits.aio.storage.RedisStorage(
            limits_uri(settings.redis_url),
            implementation="redispy",
            key_prefix=f"{self.prefix}limits",
            wrap_exceptions=True,
            connection_pool=self.client.connection_pool,  # type: ignore[arg-type]  # passed on to redis-py
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
        image = IMAGE_PREFIX.fullmatch(prefix)
        if image is not None and forget is not None:
            forget(image.group(1))
    except Exception:
        log.exception("invalidation message %r could not be applied; skipped", data[:200])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
