"""Cost guards: what a mint costs, how much may be spent, and who is causing the misses.

- :func:`estimate_credits` and :func:`batching_saving` (from :mod:`proxy.upstream.contract`,
  re-exported) price a mint's ``output_variants`` by the upstream's rules, and what one
  token for several variants saves;
- :class:`CreditBudget` caps estimated credits per UTC hour and day, over a
  :class:`BudgetStore` (here :class:`DiskStore`, shared by one host's worker processes;
  a Redis store can satisfy the same protocol for several hosts);
- :class:`ClientLimiter` caps cache misses per client with the ``limits`` library;
- :func:`client_address` finds the client behind trusted reverse proxies;
- :class:`CostLedger` counts credits spent and saved, for operators.

Time is always a parameter (``now``, unix seconds) or an injected clock.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import anyio.to_thread
import diskcache
import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage

from proxy.setting_values import IPNetwork, parse_networks, parse_rate
from proxy.upstream.contract import batching_saving, estimate_credits, to_hundredths

__all__ = [
    "BudgetStore",
    "ClientLimiter",
    "CostLedger",
    "CounterStore",
    "CreditBudget",
    "DiskStore",
    "Window",
    "batching_saving",
    "client_address",
    "estimate_credits",
    "parse_networks",
    "parse_rate",
]

_R = TypeVar("_R")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- stores -------------------------------------------------------------------------------


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


class DiskStore:
    """:class:`BudgetStore` and :class:`CounterStore` on a ``diskcache.Cache`` (SQLite).

    Worker processes that open the same directory share the counters: SQLite transactions
    make check-and-add atomic. Amounts are kept as integer hundredths of a credit (like
    :func:`proxy.upstream.contract.to_hundredths`) so that sums are exact. All disk access
    runs in a worker thread.
    """

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache

    @classmethod
    def open(cls, directory: Path | str) -> DiskStore:
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

    def miss_limiter(self, rate: str, clock: Callable[[], float] = time.time) -> DiskClientLimiter:
        """A per-client miss rate counted in this store: one count for every worker."""
        return DiskClientLimiter(rate, self._cache, clock=clock)


_UNITS_PER_CREDIT = 100
_units = to_hundredths


async def _in_thread(func: Callable[..., _R], *args: Any) -> _R:
    return await anyio.to_thread.run_sync(functools.partial(func, *args))


# --- the credit budget ----------------------------------------------------------------------

HOUR = 3600.0
DAY = 86400.0


class CreditBudget:
    """Caps the estimated credits misses may spend per UTC clock hour and per UTC day.

    Windows are fixed (``12:00-13:00 UTC``, a UTC calendar day) so every worker and every
    host agrees on them from the clock alone. ``None`` limits are unlimited and not counted.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        per_hour: float | None = None,
        per_day: float | None = None,
        namespace: str = "budget",
    ) -> None:
        for name, limit in (("per_hour", per_hour), ("per_day", per_day)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{name} must be greater than 0 or None")
        self._store = store
        self._limits = {"hour": (HOUR, per_hour), "day": (DAY, per_day)}
        self._namespace = namespace

    @property
    def limited(self) -> bool:
        """False when both limits are None: every spend is allowed without a store call."""
        return any(limit is not None for _, limit in self._limits.values())

    async def try_spend(self, amount: float, now: float) -> bool:
        """Count ``amount`` against every limited window at ``now``; False if it won't fit."""
        if amount < 0:
            raise ValueError("amount must not be negative")
        windows = [window for _, window, _ in self._windows(now)]
        if not windows:
            return True
        return await self._store.spend(windows, amount)

    async def refund(self, amount: float, spent_at: float) -> None:
        """Give back ``amount`` spent at ``spent_at`` (e.g. the upstream refused with a 400)."""
        windows = [window for _, window, _ in self._windows(spent_at)]
        if windows and amount > 0:
            await self._store.refund(windows, amount)

    async def remaining(self, now: float) -> dict[str, dict[str, float]]:
        """Per limited window (``hour``, ``day``): limit, spent, remaining and resets_in."""
        out: dict[str, dict[str, float]] = {}
        for name, window, resets_in in self._windows(now):
            spent = await self._store.spent(window.key)
            out[name] = {
                "limit": window.limit,
                "spent": spent,
                "remaining": max(window.limit - spent, 0.0),
                "resets_in": resets_in,
            }
        return out

    async def retry_after(self, amount: float, now: float) -> float | None:
        """Seconds until every window too full for ``amount`` has reset; None if it fits."""
        waits = [
            resets_in
            for _, window, resets_in in self._windows(now)
            if await self._store.spent(window.key) + amount > window.limit
        ]
        return max(waits) if waits else None

    def _windows(self, now: float) -> list[tuple[str, Window, float]]:
        out = []
        for name, (period, limit) in self._limits.items():
            if limit is None:
                continue
            index = int(now // period)
            resets_in = (index + 1) * period - now
            key = f"{self._namespace}:{name}:{index}"
            # Keys are per window, so expiry is only clean-up: keep one spare period.
            out.append((name, Window(key, limit, 2 * period), resets_in))
        return out


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
    """A moving window of each client's misses in a ``diskcache.Cache``, shared by workers.

    Without Redis the worker processes of one host share ``PROXY_DATA_DIR``: keeping each
    client's recent miss times there, changed inside one SQLite transaction, gives them one
    count (``limits``' memory storage would give each worker a count of its own). Answers as
    :class:`ClientLimiter` with the moving window does: the wait is until the oldest miss
    leaves the window.
    """

    def __init__(
        self,
        rate: str,
        cache: diskcache.Cache,
        *,
        clock: Callable[[], float] = time.time,
        namespace: str = "misses",
    ) -> None:
        super().__init__(rate, clock, namespace)
        self._cache = cache

    async def hit(self, client_id: str) -> float | None:
        return await _in_thread(self._hit, client_id)

    def _hit(self, client_id: str) -> float | None:
        now = self._clock()
        window = float(self._item.get_expiry())
        key = f"{self._namespace}:{client_id}"
        with self._cache.transact():
            recent = [t for t in self._cache.get(key, ()) if t > now - window]
            if len(recent) >= self._item.amount:
                return max(recent[0] + window - now, 0.0)
            recent.append(now)
            self._cache.set(key, recent, expire=window)
        return None


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


# --- the ledger -----------------------------------------------------------------------------

LEDGER_FIELDS = (
    "spent",
    "saved_by_coalescing",
    "saved_by_batching",
    "possibly_spent",
    "ambiguous_mints",
)


class CostLedger:
    """Running totals of estimated credits: spent, saved by coalescing, saved by batching,
    and what ambiguous mints may have cost.

    "Saved by coalescing" is a mint that waiting requests did not make; "saved by batching"
    is :func:`batching_saving` of a multi-variant mint. An *ambiguous* mint failed after the
    upstream may have charged it (a dropped connection, a timeout, a 5xx): it is counted in
    ``ambiguous_mints`` and its price in ``possibly_spent``, not in ``spent``. Totals live in
    a :class:`CounterStore`, so every worker process adds to and reports the same numbers.
    """

    def __init__(self, store: CounterStore, namespace: str = "ledger") -> None:
        self._store = store
        self._keys = {name: f"{namespace}:{name}" for name in LEDGER_FIELDS}

    async def record(
        self,
        *,
        spent: float = 0.0,
        saved_by_coalescing: float = 0.0,
        saved_by_batching: float = 0.0,
        possibly_spent: float = 0.0,
        ambiguous_mints: int = 0,
    ) -> None:
        """Add to the totals (credits and a count, never negative)."""
        amounts = {
            "spent": spent,
            "saved_by_coalescing": saved_by_coalescing,
            "saved_by_batching": saved_by_batching,
            "possibly_spent": possibly_spent,
            "ambiguous_mints": float(ambiguous_mints),
        }
        if any(value < 0 for value in amounts.values()):
            raise ValueError("ledger amounts must not be negative")
        nonzero = {self._keys[name]: value for name, value in amounts.items() if value}
        if nonzero:
            await self._store.add(nonzero)

    async def snapshot(self) -> dict[str, float]:
        """``{"spent": ..., "saved_by_coalescing": ..., "saved_by_batching": ...,
        "possibly_spent": ..., "ambiguous_mints": ...}`` (the count a whole number)."""
        values = await self._store.read(list(self._keys.values()))
        totals = {name: values[key] for name, key in self._keys.items()}
        totals["ambiguous_mints"] = round(totals["ambiguous_mints"])
        return totals
