"""Whether Redis answers: its failures noted once per outage, and turned into a 503.

Every Redis operation of the stores runs inside :meth:`RedisHealth.guard`: a connection
error (refused, reset, timed out, loading, failed over) is counted, logged when the outage
begins, and raised as :class:`proxy.errors.SharedStoreUnavailableError` (503 with
Retry-After); the next success logs the recovery. The Redis version of each kind
(proxy/stores/cache.py, registry.py, leases.py, counters.py, index.py) and the bundle that
builds them (:mod:`proxy.stores.redis`) share one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import redis.exceptions

from proxy.errors import SharedStoreUnavailableError

log = logging.getLogger("cutproxy.redis")

RETRY_AFTER = 5.0  # what a 503 tells clients while Redis is down

# What "Redis is unreachable" looks like: refused, reset, timed out, loading, failed over.
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


class RedisHealth:
    """Whether Redis answered lately, and how often it did not: logs each change once.

    ``on_unavailable`` hooks (metrics) are called with the operation that failed.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
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


def unavailable(exc: BaseException) -> SharedStoreUnavailableError:
    """The 503 for a Redis failure met outside this module (e.g. inside ``limits``)."""
    return SharedStoreUnavailableError(
        "the shared store is unreachable; retry shortly", retry_after=RETRY_AFTER
    )
