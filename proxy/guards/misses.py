"""The cost and abuse guards on misses.

Every cache miss mints a token upstream, and minting spends the customer's credits. A
request passes the guards in imgproxy's order::

    signature → URL grammar → size ladder → cache (hits: never limited)
      → on a miss: client's miss rate → credit budget → coalesce / batch → mint

The first three are the variant decision's (:mod:`proxy.url.decision`). :class:`MissGuard`
is the miss side (used by :class:`proxy.variants.service.VariantService`, which alone knows a
request is a miss, and batches the admitted ones): it prices a miss, admits or refuses it (the
client's rate, then a budget reservation), and finds the nearest cached size when a miss is
refused. Every token, a miss's or not, is minted by its :class:`proxy.guards.minter.Minter`,
which holds the budget and keeps the books (:class:`proxy.guards.budget.CostLedger`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import limits.errors

from proxy.errors import MissRefusedError, ProxyError
from proxy.guards.budget import LEDGER_FIELDS, CostLedger, CreditBudget, estimate_credits
from proxy.guards.clients import ClientLimiter, DiskClientLimiter, MissLimiter
from proxy.guards.minter import CostEvents, Minter, NoCostEvents, Reservation
from proxy.settings import Settings
from proxy.stores.cache import CachedOutput, TwoTierCache
from proxy.stores.counters import CounterStore, DiskCounters
from proxy.stores.index import DiskVariantIndex, VariantIndex
from proxy.stores.redis_health import unavailable
from proxy.stores.registry import ImageRecord
from proxy.upstream.client import UpstreamClient
from proxy.url import ladder
from proxy.url.variant import Variant, output_variant

if TYPE_CHECKING:
    from proxy.stores.counters import BudgetStore
    from proxy.stores.redis import RedisStore

log = logging.getLogger("cutproxy.guards")

MAX_FALLBACK_TRIES = 8  # cached candidates read before giving up on a fallback


# --- the books -------------------------------------------------------------------------------

# The minter keeps them (:mod:`proxy.guards.minter`): what is spent, saved and reserved.


# --- miss side -------------------------------------------------------------------------------

_NO_TOTALS = {**dict.fromkeys(LEDGER_FIELDS, 0.0), "ambiguous_mints": 0}


@dataclass
class MissGuard:
    """Admits or refuses misses, prices them, and finds fallbacks; the minter keeps the books."""

    settings: Settings
    minter: Minter
    index: VariantIndex
    limiter: MissLimiter | None = None
    derive_limiter: MissLimiter | None = None  # store mode: PROXY_CLIENT_DERIVE_RATE
    clock: Callable[[], float] = time.time
    events: CostEvents = field(default_factory=NoCostEvents)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        upstream: UpstreamClient,
        clock: Callable[[], float] = time.time,
        redis: RedisStore | None = None,
        events: CostEvents | None = None,
    ) -> MissGuard:
        """Counters and the index in Redis when there is one, else under PROXY_DATA_DIR."""
        store: BudgetStore
        counters: CounterStore
        index: VariantIndex
        closers: list[Callable[[], Any]] = []
        rate = settings.client_miss_rate
        # Store mode: derivations (CPU, not credits) have a rate of their own per client.
        derive_rate = settings.derive_rate if settings.store_mode else None
        limiter: MissLimiter | None = None
        derive_limiter: MissLimiter | None = None
        if redis is not None:
            store = counters = redis.counters
            index = redis.index
            if rate:
                limiter = ClientLimiter(rate, storage=redis.limiter_storage(settings))
            if derive_rate:
                derive_limiter = ClientLimiter(
                    derive_rate, storage=redis.limiter_storage(settings), namespace="derives"
                )
        else:
            disk = DiskCounters.open(settings.data_dir / "guards")
            store = counters = disk
            index = DiskVariantIndex(settings.data_dir / "guards-index", clock)
            closers.append(disk.close)
            if rate:
                limiter = DiskClientLimiter(rate, disk, clock=clock)  # one count for the host
            if derive_rate:
                derive_limiter = DiskClientLimiter(
                    derive_rate, disk, clock=clock, namespace="derives"
                )
        budget = CreditBudget(
            store,
            per_hour=settings.budget_credits_per_hour,
            per_day=settings.budget_credits_per_day,
        )
        events = events or NoCostEvents()
        minter = Minter(
            upstream,
            budget=budget,
            ledger=CostLedger(counters),
            ladder=ladder.Ladder.from_settings(settings),
            policy=settings.ladder_policy,
            clock=clock,
            events=events,
        )
        return cls(
            settings=settings,
            minter=minter,
            index=index,
            limiter=limiter,
            derive_limiter=derive_limiter,
            clock=clock,
            events=events,
            closers=closers,
        )

    async def aclose(self) -> None:
        await self.index.close()
        for close in self.closers:
            await anyio.to_thread.run_sync(close)

    # -- admission ----------------------------------------------------------------------------
    def estimate(self, variant: Variant, record: ImageRecord) -> float:
        """What minting this variant alone costs, by the upstream's price rules."""
        return self.price(record, [variant])

    def price(self, record: ImageRecord, variants: list[Variant]) -> float:
        """What one token for these variants of the image costs."""
        return estimate_credits(
            [output_variant(v, self.settings, record.original_size) for v in variants]
        )

    async def admit(self, client: str | None, credits: float) -> Reservation:
        """Count one miss for ``client`` and reserve ``credits``; MissRefusedError if over."""
        if self.limiter is not None and client is not None:
            try:
                wait = await self.limiter.hit(client)
            except limits.errors.StorageError as exc:
                raise unavailable(exc) from exc
            if wait is not None:
                raise MissRefusedError(
                    f"this client has caused too many cache misses (at most "
                    f"{self.limiter.rate}); sizes already cached are still served",
                    code="client_miss_rate",
                    retry_after=max(1.0, wait),
                    reason="client_rate",
                    client=client,
                )
        return await self.minter.reserve(credits, client=client)

    async def admit_derivation(self, client: str | None) -> None:
        """Count one derivation for ``client`` (store mode); MissRefusedError (429) if over
        ``PROXY_CLIENT_DERIVE_RATE``. Hits and waits for a derivation in flight are free."""
        if self.derive_limiter is None or client is None:
            return
        try:
            wait = await self.derive_limiter.hit(client)
        except limits.errors.StorageError as exc:
            raise unavailable(exc) from exc
        if wait is not None:
            self.events.miss_refused("derive_rate", "429")
            raise MissRefusedError(
                f"this client has caused too many derivations (at most "
                f"{self.derive_limiter.rate}); variants already kept are still served",
                code="client_derive_rate",
                retry_after=max(1.0, wait),
                reason="derive_rate",
                client=client,
            )

    async def coalesced(self, credits: float) -> None:
        """A request got a mint another request paid for: one mint saved."""
        if credits <= 0 or self.minter.ledger is None:
            return
        try:
            await self.minter.ledger.record(saved_by_coalescing=credits)
        except ProxyError as exc:
            log.warning("could not record a coalescing saving: %s", exc.message)
            return
        self.events.credits_saved_by("coalescing", credits)

    # -- fallbacks ----------------------------------------------------------------------------
    async def remember(self, variant: Variant, key: str, output: CachedOutput) -> None:
        """Note a freshly cached variant, so refused misses can fall back to it."""
        try:
            await self.index.add(variant.image_id, key, output.expires_at)
        except ProxyError as exc:
            log.warning("could not index %s for fallbacks: %s", variant.path, exc.message)

    async def fallback(
        self, variant: Variant, key: str, cache: TwoTierCache, refused: MissRefusedError
    ) -> tuple[Variant, CachedOutput] | None:
        """The nearest cached size of the same image, background and format, if any."""
        answer = "429"
        try:
            found = await self._nearest(variant, key, cache)
        except ProxyError:
            found = None
        if found is not None:
            answer = "fallback"
        self.events.miss_refused(refused.reason, answer)
        return found

    async def _nearest(
        self, variant: Variant, key: str, cache: TwoTierCache
    ) -> tuple[Variant, CachedOutput] | None:
        suffix = key[len(variant.path) :]  # "#<profile>~<version>": same settings, same image
        same = re.compile(
            re.escape(f"/img/{variant.image_id}/")
            + r"(\d+)x(\d+)"
            + re.escape(f"/{variant.bg}.{variant.ext}{suffix}")
        )
        wanted = math.log(variant.width * variant.height)
        candidates: list[tuple[float, int, str, Variant]] = []
        for other in await self.index.entries(variant.image_id, self.clock()):
            match = same.fullmatch(other)
            if match is None or other == key:
                continue
            width, height = int(match[1]), int(match[2])
            area = width * height
            served = dataclasses.replace(variant, width=width, height=height)
            # Nearest on a log scale; on a tie the larger one (a browser scales it down).
            candidates.append((abs(math.log(area) - wanted), -area, other, served))
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        for _, _, other, served in candidates[:MAX_FALLBACK_TRIES]:
            output, _tier = await cache.get(other)
            if output is not None:
                return served, output
        return None

    # -- the admin view -----------------------------------------------------------------------
    async def costs(self) -> dict[str, Any]:
        now = self.clock()
        budget, ledger = self.minter.budget, self.minter.ledger
        totals = await ledger.snapshot() if ledger is not None else _NO_TOTALS
        windows = await budget.remaining(now) if budget is not None else {}
        for name, window in windows.items():
            self.events.budget_remaining(name, window["remaining"])
        for window in windows.values():
            window["resets_in"] = math.ceil(window["resets_in"])
        return {
            **totals,
            "budget": windows,
            "client_miss_rate": self.limiter.rate if self.limiter is not None else None,
            **(
                {"client_derive_rate": self.derive_limiter.rate}
                if self.derive_limiter is not None
                else {}
            ),
            "batch_window_ms": self.settings.batch_window_ms,
        }
