"""Coalescing: concurrent misses for one variant cause one mint.

Two layers. Within a process, a single-flight map: the first request starts the work as a
task of its own, later ones await the same task (shielded, so a client that hangs up does not
cancel work others wait for). Across processes (and, with Redis, machines), a lease in the
shared store: only its holder mints; the others poll the shared cache until the result
appears, the lease frees up (then one of them takes over), or their wait runs out (503).
A lease expires on its own unless its holder keeps renewing it (every third of the TTL while
it mints), so a crashed leader blocks followers for at most one TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread
import diskcache

from proxy.errors import ProxyError, ServiceUnavailableError

T = TypeVar("T")
log = logging.getLogger("cutproxy.coalesce")


class Lease(Protocol):
    """A named, expiring lock in the shared store, released only by its holder."""

    async def acquire(self, key: str, ttl: float) -> str | None:
        """A holder token when the lease was free, else None."""
        ...

    async def release(self, key: str, token: str) -> None: ...

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        """Push the expiry ``ttl`` seconds out if ``token`` still holds the lease."""
        ...

    async def close(self) -> None: ...


class DiskLease:
    """Leases in a diskcache shared by the worker processes of one host."""

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), eviction_policy="none")

    def _acquire(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(8)
        # add() is SQLite insert-if-absent and treats an expired row as absent.
        return token if self._cache.add(key, token, expire=ttl) else None

    def _release(self, key: str, token: str) -> None:
        with self._cache.transact():
            if self._cache.get(key) == token:
                self._cache.delete(key)

    def _extend(self, key: str, token: str, ttl: float) -> bool:
        with self._cache.transact():
            return self._cache.get(key) == token and bool(self._cache.touch(key, expire=ttl))

    async def acquire(self, key: str, ttl: float) -> str | None:
        return await anyio.to_thread.run_sync(self._acquire, key, ttl)

    async def release(self, key: str, token: str) -> None:
        await anyio.to_thread.run_sync(self._release, key, token)

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        return await anyio.to_thread.run_sync(self._extend, key, token, ttl)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._cache.close)


class SingleFlight:
    """In-process: one task per key; every caller awaits that one task."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def joined(self, key: str) -> bool:
        return key in self._tasks

    async def run(self, key: str, work: Callable[[], Awaitable[T]], wait: float) -> T:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(lambda _t: self._tasks.pop(key, None))
        try:
            async with asyncio.timeout(wait):
                result: T = await asyncio.shield(task)
                return result
        except TimeoutError:
            raise ServiceUnavailableError(
                "this image is still being rendered; retry shortly",
                code="render_pending",
                retry_after=max(1.0, min(wait, 5.0)),
            ) from None

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for every in-flight task: used on graceful shutdown."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


async def lead_or_follow(
    lease: Lease,
    key: str,
    *,
    ttl: float,
    wait: float,
    lead: Callable[[], Awaitable[T]],
    check: Callable[[], Awaitable[T | None]],
    poll: float = 0.05,
) -> T:
    """Run ``lead`` under the lease, or wait for its holder's result via ``check``.

    ``check`` looks for a finished result in the shared store; it runs once more after the
    lease is won, because the previous holder may have finished just before releasing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = poll
    while True:
        token = await lease.acquire(_lease_name(key), ttl)
        if token is not None:
            try:
                found = await check()
                if found is not None:
                    return found
                async with _renewing(lease, _lease_name(key), token, ttl):
                    return await lead()
            finally:
                await lease.release(_lease_name(key), token)
        found = await check()
        if found is not None:
            return found
        if loop.time() + delay > deadline:
            raise ServiceUnavailableError(
                "this image is being rendered by another worker; retry shortly",
                code="render_pending",
                retry_after=max(1.0, min(wait, 5.0)),
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


@contextlib.asynccontextmanager
async def holding(lease: Lease, keys: Sequence[str], *, ttl: float) -> AsyncIterator[set[str]]:
    """Take, without waiting, the lease of each key that is free; yield the keys taken.

    For work on several keys at once (a warm-up's one token for many variants): the leases
    are renewed while the body runs and released after it, so a miss for one of those keys
    meanwhile waits for the result (:func:`lead_or_follow`) instead of minting it again.
    Store the results before the body ends. A key whose lease another holder has is left out:
    that one is being rendered already.
    """
    tokens: dict[str, str] = {}
    try:
        for key in keys:
            token = await lease.acquire(_lease_name(key), ttl)
            if token is not None:
                tokens[key] = token
        async with contextlib.AsyncExitStack() as stack:
            for key, token in tokens.items():
                await stack.enter_async_context(_renewing(lease, _lease_name(key), token, ttl))
            yield set(tokens)
    finally:
        for key, token in tokens.items():
            await lease.release(_lease_name(key), token)


def _lease_name(key: str) -> str:
    return f"lease:{key}"


@contextlib.asynccontextmanager
async def _renewing(lease: Lease, key: str, token: str, ttl: float) -> AsyncIterator[None]:
    """Keep extending a held lease while its work runs.

    So the TTL only has to outlast a heartbeat, not the slowest mint: a live leader keeps its
    lease however long the upstream takes, a dead one loses it within ``ttl`` seconds.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if not await lease.extend(key, token, ttl):
                    log.warning("lost the lease on %s while minting; another worker may mint", key)
                    return
            except ProxyError as exc:  # the shared store is down: the lease will lapse
                log.warning("could not extend the lease on %s: %s", key, exc.message)

    task = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
