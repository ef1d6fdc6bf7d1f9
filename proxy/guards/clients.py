"""Who causes the misses: the client behind trusted proxies, and its miss rate.

- :func:`client_address` finds the client behind trusted reverse proxies
  (``PROXY_TRUSTED_PROXIES``, parsed by :func:`proxy.setting_values.parse_networks`);
- :class:`ClientLimiter` caps cache misses per client with the ``limits`` library (in
  memory, or in Redis for several hosts); :class:`DiskClientLimiter` does the same in the
  disk counter store, one count for the worker processes of one host
  (``PROXY_CLIENT_MISS_RATE``, parsed by :func:`proxy.setting_values.parse_rate`).

Time is an injected clock.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage

from proxy.setting_values import IPNetwork, parse_rate
from proxy.stores.counters import DiskCounters

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- per-client miss limits -----------------------------------------------------------------


class _PerClientRate:
    """A miss rate per client: the limit, the clock and the namespace its counts live in."""

    def __init__(self, rate: str, clock: Callable[[], float], namespace: str) -> None:
        self._item = parse_rate(rate)
        self._clock = clock
        self._namespace = namespace

    @property
    def rate(self) -> str:
        return str(self._item)


class ClientLimiter(_PerClientRate):
    """How many cache misses one client may cause, over a ``limits`` storage.

    ``storage`` is a ``limits`` storage URI (``memory://`` in-process, ``redis://host`` to
    share between hosts; the ``async+`` prefix is added) or a ready async storage.
    ``clock`` must be the storage's clock: ``limits`` reads wall-clock time itself, so it is
    only replaced together with that in tests.
    """

    def __init__(
        self,
        rate: str,
        *,
        storage: str | limits.aio.storage.Storage = "memory://",
        strategy: Literal["moving-window", "fixed-window"] = "moving-window",
        clock: Callable[[], float] = time.time,
        namespace: str = "misses",
    ) -> None:
        super().__init__(rate, clock, namespace)
        if isinstance(storage, str):
            scheme, sep, rest = storage.partition("://")
            if not sep:
                raise ValueError(f"expected a storage URI like memory://, got {storage!r}")
            if not scheme.startswith("async+"):
                scheme = f"async+{scheme}"
            built = limits.storage.storage_from_string(f"{scheme}://{rest}")
        else:
            built = storage
        if not isinstance(built, limits.aio.storage.Storage):
            raise TypeError("ClientLimiter needs an async limits storage")
        self._limiter: limits.aio.strategies.RateLimiter = (
            limits.aio.strategies.MovingWindowRateLimiter(built)
            if strategy == "moving-window"
            else limits.aio.strategies.FixedWindowRateLimiter(built)
        )

    async def hit(self, client_id: str) -> float | None:
        """Count one miss for ``client_id``: None if allowed, else seconds to wait.

        The wait is what a ``Retry-After`` header should say, rounded up: once it has
        passed, the client's next miss is allowed.
        """
        if await self._limiter.hit(self._item, self._namespace, client_id):
            return None
        stats = await self._limiter.get_window_stats(self._item, self._namespace, client_id)
        return max(stats.reset_time - self._clock(), 0.0)


class MissLimiter(Protocol):
    """Counts a client's misses: :class:`ClientLimiter` or :class:`DiskClientLimiter`."""

    @property
    def rate(self) -> str: ...

    async def hit(self, client_id: str) -> float | None:
        """Count one miss for ``client_id``: None if allowed, else seconds to wait."""
        ...


class DiskClientLimiter(_PerClientRate):
    """A moving window of each client's misses in a :class:`DiskCounters`, shared by workers.

    Without Redis the worker processes of one host share ``PROXY_DATA_DIR``: keeping each
    client's recent miss times there, changed inside one SQLite transaction, gives them one
    count (``limits``' memory storage would give each worker a count of its own). Answers as
    :class:`ClientLimiter` with the moving window does: the wait is until the oldest miss
    leaves the window.
    """

    def __init__(
        self,
        rate: str,
        store: DiskCounters,
        *,
        clock: Callable[[], float] = time.time,
        namespace: str = "misses",
    ) -> None:
        super().__init__(rate, clock, namespace)
        self._store = store

    async def hit(self, client_id: str) -> float | None:
        key = f"{self._namespace}:{client_id}"
        window = float(self._item.get_expiry())
        return await self._store.hit_window(key, self._item.amount, window, self._clock())


# --- the client's address -------------------------------------------------------------------


def client_address(
    scope_client_host: str, headers: Mapping[str, str], trusted: Sequence[IPNetwork]
) -> str:
    """The address to hold responsible for a request.

    Forwarding headers are read only when the direct peer is in ``trusted``: then the
    right-most address in ``X-Forwarded-For`` (or, without it, ``Forwarded: for=``) that is
    not itself a trusted proxy. A client can prepend what it likes to those headers, but
    not past the hop its trusted proxy appended. Configure the proxy to append to
    ``X-Forwarded-For``, or to drop it if it only writes ``Forwarded``.
    """
    peer = _ip(scope_client_host)
    if peer is None or not _trusted(peer, trusted):
        return str(peer) if peer is not None else scope_client_host
    hops = _header_values(headers, "x-forwarded-for")
    if not hops:
        hops = _forwarded_for(_header_values(headers, "forwarded"))
    last = peer
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            # An unreadable hop: the last address a trusted proxy vouched for is all we know.
            return str(last)
        if not _trusted(address, trusted):
            return str(address)
        last = address
    return str(last)


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getlist = getattr(headers, "getlist", None)  # Starlette's Headers keep repeated fields
    if callable(getlist):
        values = list(getlist(name))
    else:
        values = [value for key, value in headers.items() if key.lower() == name]
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _forwarded_for(elements: list[str]) -> list[str]:
    out = []
    for element in elements:
        for pair in element.split(";"):
            key, _, value = pair.partition("=")
            if key.strip().lower() == "for":
                out.append(value.strip().strip('"'))
    return out


def _ip(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
