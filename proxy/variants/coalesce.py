"""Coalescing: concurrent misses for one variant cause one mint.

Two layers. Within a process, a single-flight map: the first request starts the work as a
task of its own, later ones await the same task (shielded, so a client that hangs up does not
cancel work others wait for). Across processes (and, with Redis, machines), a lease in the
shared store (:mod:`proxy.stores.leases`): only its holder mints; the others poll the shared
cache until the result appears, the lease frees up (then one of them takes over), or their
wait runs out (503).

A lease expires on its own unless its holder keeps renewing it (every third of the TTL while
it works), so a crashed holder on another machine blocks the others for at most one TTL. On
one host it blocks nobody: a lease names its holder (host, process id, a random part), and a
contender on the same host that finds the holder's process gone takes the lease at once.

:class:`KeyedLock` is the same lease held as a lock, for changes to an image (and to the
owners of its original): in-process first, then across workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from proxy.errors import LeaseLostError, ProxyError, ServiceUnavailableError
from proxy.stores.leases import Lease

T = TypeVar("T")
log = logging.getLogger("cutproxy.coalesce")


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
    following: Callable[[], None] | None = None,
) -> T:
    """Run ``lead`` under the lease, or wait for its holder's result via ``check``.

    ``check`` looks for a finished result in the shared store; it runs once more after the
    lease is won, because the previous holder may have finished just before releasing.
    ``following`` is called once, when the lease is first found held by another.
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
                async with renewing(lease, _lease_name(key), token, ttl):
                    return await lead()
            finally:
                await lease.release(_lease_name(key), token)
        if following is not None:
            following()
            following = None
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
                await stack.enter_async_context(renewing(lease, _lease_name(key), token, ttl))
            yield set(tokens)
    finally:
        for key, token in tokens.items():
            await lease.release(_lease_name(key), token)


def _lease_name(key: str) -> str:
    return f"lease:{key}"


def renewing(
    lease: Lease, key: str, token: str, ttl: float, *, abort: bool = False
) -> LeaseHeartbeat:
    """``async with renewing(...)``: keep a held lease alive while the body runs."""
    return LeaseHeartbeat(lease, key, token, ttl, abort=abort)


class LeaseHeartbeat:
    """Keeps extending a held lease while its work runs.

    So the TTL only has to outlast a heartbeat, not the slowest mint or upload: a live
    holder keeps its lease however long the upstream takes, a dead one loses it within
    ``ttl`` seconds (at once on its own host, see :func:`holder_gone`).

    The heartbeat never raises into the work: a store that fails to answer is logged and
    tried again at the next beat (the lease lapses if it stays down). If the lease is found
    taken by another holder, ``abort=True`` stops the work (the task is cancelled and
    :class:`LeaseLostError` raised in its place); without it the loss is only logged, for
    work already paid for, such as a mint.
    """

    def __init__(self, lease: Lease, key: str, token: str, ttl: float, *, abort: bool = False):
        self._lease = lease
        self._key = key
        self._token = token
        self._ttl = ttl
        self._abort = abort
        self._done = False
        self._stopped_owner = False
        self._owner: asyncio.Task[Any] | None = None
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._owner = asyncio.current_task()
        self._beat = asyncio.ensure_future(self._heartbeat())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        assert self._beat is not None
        self._beat.cancel()
        await asyncio.wait([self._beat])  # raises only if the work itself is being cancelled
        if not self._beat.cancelled() and self._beat.exception() is not None:
            log.error("the lease heartbeat on %s failed: %r", self._key, self._beat.exception())
        if self._stopped_owner:
            assert self._owner is not None
            # Cancelled by the loss alone (not also from outside): the loss is the error.
            if self._owner.uncancel() == 0 and isinstance(exc, asyncio.CancelledError):
                raise LeaseLostError(
                    "this change lost its lock to another worker while it ran; retry shortly",
                    retry_after=1.0,
                ) from None

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                kept = await self._lease.extend(self._key, self._token, self._ttl)
            except ProxyError as error:  # the shared store is down: the lease may lapse
                log.warning("could not extend the lease on %s: %s", self._key, error.message)
                continue
            except Exception as error:  # never over the work it guards: log it and beat on
                log.error("could not extend the lease on %s: %r", self._key, error)
                continue
            if self._done:
                return
            if kept:
                continue
            if self._abort and self._owner is not None:
                log.warning("lost the lease on %s to another holder; stopping its work", self._key)
                self._stopped_owner = True
                self._owner.cancel()
            else:
                log.warning(
                    "lost the lease on %s while minting; another worker may mint", self._key
                )
            return


# --- keyed locks -------------------------------------------------------------------------------


class KeyedLock:
    """Mutual exclusion per key: across tasks (asyncio) and across workers (the lease).

    The lease is renewed every third of ``ttl`` while the lock is held, however long the
    work takes (an upload may take minutes); if it is lost all the same (this process
    stalled past ``ttl`` and another took the lease over), the work is stopped with
    :class:`proxy.errors.LeaseLostError` rather than run on unguarded. A holder that died
    leaves its lease behind: taken over at once on the same host (the lease names its
    process), after ``ttl`` from another host (Redis).
    """

    def __init__(self, lease: Lease, *, ttl: float = 15.0, wait: float = 30.0) -> None:
        self._lease = lease
        self._ttl = ttl
        self._wait = wait
        self._local: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        local = self._local.get(key)
        if local is None:
            local = self._local[key] = asyncio.Lock()
        async with local:
            name = f"lock:{key}"
            deadline = time.monotonic() + self._wait
            delay = 0.005
            while (token := await self._lease.acquire(name, self._ttl)) is None:
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailableError(
                        "another change to this image is in progress; retry shortly",
                        code="image_busy",
                        retry_after=1.0,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            try:
                async with renewing(self._lease, name, token, self._ttl, abort=True):
                    yield
            finally:
                await self._lease.release(name, token)
