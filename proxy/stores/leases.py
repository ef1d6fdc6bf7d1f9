"""Leases: a named, expiring lock in the shared store, released only by its holder.

    Lease          protocol: acquire / release / extend / close
    ├── DiskLease  diskcache under PROXY_DATA_DIR: the worker processes of one host
    └── RedisLease SET NX PX with a token, compare-and-delete/extend in Lua: every replica

A lease names its holder (``host:pid:random``, :func:`holder_token`), so a contender on the
holder's own host that finds its process gone takes the lease over at once
(:func:`holder_gone`); a holder that died on another host is waited for until its TTL lapses.
What is built on leases (single flight across processes, keyed locks, heartbeats) lives in
:mod:`proxy.variants.coalesce`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread
import diskcache

from proxy.errors import SharedStoreUnavailableError

if TYPE_CHECKING:
    import redis.asyncio

    from proxy.stores.redis_health import RedisHealth

log = logging.getLogger("cutproxy.leases")


class Lease(Protocol):
    """A named, expiring lock in the shared store, released only by its holder."""

    async def acquire(self, key: str, ttl: float) -> str | None:
        """A holder token when the lease was free (or its holder's process is gone), else None."""
        ...

    async def release(self, key: str, token: str) -> None: ...

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        """Push the expiry ``ttl`` seconds out if ``token`` still holds the lease."""
        ...

    async def holder(self, key: str) -> str | None:
        """Who holds the lease on ``key`` now (``host:pid:random``), if anyone: a look that
        takes nothing (whether that holder is alive: :func:`holder_gone`)."""
        ...

    async def close(self) -> None: ...


# --- who holds a lease ------------------------------------------------------------------------


@functools.cache
def host_identity() -> str:
    """Names the process table this process lives in: the host name, plus (on Linux) the
    kernel's boot id and the PID namespace, so two containers that share a volume or a Redis
    never read each other's process ids as their own."""
    name = socket.gethostname().replace(":", "-")
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        return name
    return f"{name}/{boot}/{namespace}"


def holder_token() -> str:
    """A fresh lease token naming its holder: ``host:pid:random``."""
    return f"{host_identity()}:{os.getpid()}:{secrets.token_hex(8)}"


def holder_gone(token: str) -> bool:
    """Whether ``token`` names a process of this host that no longer runs.

    Only a same-host holder can be checked (``kill(pid, 0)``, or a zombie in ``/proc``); a
    holder elsewhere, or a token of another shape, counts as alive: its lease lapses by TTL.
    """
    host, _, rest = token.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != host_identity() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, as another user
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet: dead, whatever ``kill`` says."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


# --- one host: diskcache ---------------------------------------------------------------------


class DiskLease:
    """Leases in a diskcache shared by the worker processes of one host."""

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), eviction_policy="none")

    def _acquire(self, key: str, ttl: float) -> str | None:
        token = holder_token()
        with self._cache.transact():
            # get() treats an expired row as absent.
            current = self._cache.get(key)
            if current is not None:
                if not holder_gone(str(current)):
                    return None
                log.warning("took over the lease on %s: its holder %s is gone", key, current)
            self._cache.set(key, token, expire=ttl)
        return token

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

    async def holder(self, key: str) -> str | None:
        current = await anyio.to_thread.run_sync(self._cache.get, key)
        return None if current is None else str(current)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._cache.close)


# --- every replica: Redis --------------------------------------------------------------------

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
    """:class:`Lease` across machines: ``SET key token NX PX ttl``.

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
