"""The cost and abuse guards, wired into the request path.

Every cache miss mints a token upstream, and minting spends the customer's credits. A
request passes the guards in imgproxy's order::

    signature → URL grammar → size ladder → cache (hits: never limited)
      → on a miss: client's miss rate → credit budget → coalesce / batch → mint

:class:`Guards` is the request side (used by the ``/img`` handler): signature, ladder,
the client's address, and how a fallback answer looks. :class:`MissGuard` is the miss side
(used by :class:`proxy.service.VariantService`, which alone knows a request is a miss): it
admits or refuses a mint, batches the admitted ones, keeps the books (budget refunds and the
:class:`proxy.budget.CostLedger`) and finds the nearest cached size when a miss is refused.

Signed non-canonical URLs: the signature is checked against the path as requested; the
308 to the canonical spelling or the ladder's size carries a fresh signature (first key,
same ``exp``). So a page may sign whatever it puts in ``srcset``; signing canonical ladder
sizes saves the extra hop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
import diskcache
import limits.errors
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import grammar, ladder
from proxy.admin import require_admin
from proxy.batching import Batcher, Outcome, RenderMany
from proxy.budget import (
    LEDGER_FIELDS,
    ClientLimiter,
    CostLedger,
    CounterStore,
    CreditBudget,
    DiskStore,
    IPNetwork,
    MissLimiter,
    batching_saving,
    client_address,
    estimate_credits,
    parse_networks,
)
from proxy.cache import CachedOutput, TwoTierCache
from proxy.errors import MissRefusedError, ProxyError, UpstreamError
from proxy.registry import ImageRecord
from proxy.settings import Settings
from proxy.signing import EXPIRY_PARAM, SIGNATURE_PARAM, Signer
from proxy.variant import Variant, output_variant

if TYPE_CHECKING:
    from proxy.budget import BudgetStore
    from proxy.redis_store import RedisStore

log = logging.getLogger("cutproxy.guards")

FALLBACK_HEADER = "X-Cutproxy-Fallback"
MAX_FALLBACK_TRIES = 8  # cached candidates read before giving up on a fallback
MAX_INDEXED = 512  # per image; the soonest-expiring entries make room


# --- request side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Guards:
    """Signature, ladder and client address: what the ``/img`` handler checks."""

    signer: Signer | None = None
    ladder: ladder.Ladder | None = None
    policy: str = "off"
    trusted: tuple[IPNetwork, ...] = ()
    fallback_max_age: int = 60

    @classmethod
    def from_settings(cls, settings: Settings) -> Guards:
        return cls(
            signer=Signer.from_settings(settings),
            ladder=ladder.Ladder.from_settings(settings),
            policy=settings.ladder_policy,
            trusted=parse_networks(settings.trusted_proxies),
            fallback_max_age=settings.fallback_max_age,
        )

    def verify(self, path: str, query_string: bytes, now: float) -> None:
        """403 unless the URL is signed (when signing keys are configured)."""
        if self.signer is not None:
            self.signer.verify(path, QueryParams(query_string), now)

    def hold(
        self, parsed: Variant | grammar.Canonical, limits: grammar.Limits
    ) -> Variant | grammar.Canonical:
        """Hold a parsed request to the ladder: the variant, or where to redirect it.

        A non-canonical spelling is judged by what it means, so ``320x240@2x`` off the
        ladder redirects straight to its rung, in one hop.
        """
        if self.ladder is None or self.policy == "off":
            return parsed
        variant = parsed if isinstance(parsed, Variant) else _canonical_variant(parsed, limits)
        if variant is None:
            return parsed
        held = ladder.apply(self.ladder, self.policy, variant)
        return held if isinstance(held, grammar.Canonical) else parsed

    def redirect_query(self, request: Request, target: str) -> str:
        """The query for a redirect to ``target``: signed anew when signing is on."""
        if self.signer is None:
            return request.url.query
        pairs = [
            (name, value)
            for name, value in parse_qsl(request.url.query, keep_blank_values=True)
            if name not in (SIGNATURE_PARAM, EXPIRY_PARAM)
        ]
        raw_exp = request.query_params.get(EXPIRY_PARAM)
        exp = int(raw_exp) if raw_exp else None  # verify() accepted it: digits only
        pairs.append((SIGNATURE_PARAM, self.signer.sign_path(target, exp)))
        if exp is not None:
            pairs.append((EXPIRY_PARAM, str(exp)))
        return urlencode(pairs)

    def client(self, request: Request) -> str:
        """The address held responsible for the request's misses."""
        peer = request.client.host if request.client is not None else ""
        return client_address(peer, request.headers, self.trusted) or "unknown"

    def mark_fallback(
        self, response: Response, reason: str | None, output: CachedOutput, now: float
    ) -> None:
        """Label a fallback answer; browsers may keep it briefly, shared caches never.

        The caller built ``response`` as a per-request decision (``no-store`` everywhere);
        this lets the browser reuse it for ``PROXY_FALLBACK_MAX_AGE`` seconds (``private``).
        """
        response.headers[FALLBACK_HEADER] = reason or "refused"
        age = max(0, min(self.fallback_max_age, math.floor(output.remaining(now))))
        response.headers["Cache-Control"] = f"private, max-age={age}" if age else "no-store"


def _canonical_variant(target: grammar.Canonical, limits: grammar.Limits) -> Variant | None:
    parts = target.path.split("/")  # "", "img", id, size, filename
    if len(parts) != 5:
        return None
    parsed = grammar.parse(parts[2], parts[3], parts[4], limits)
    return parsed if isinstance(parsed, Variant) else None


# --- the books -------------------------------------------------------------------------------


class CostEvents(Protocol):
    """What the miss guard reports; :class:`proxy.metrics.Metrics` listens."""

    def credits_saved_by(self, by: str, credits: float) -> None:
        """Credits not spent, ``by`` coalescing or batching."""

    def budget_remaining(self, window: str, credits: float) -> None:
        """Credits left in the budget ``window`` (hour, day)."""

    def miss_refused(self, reason: str, answer: str) -> None:
        """A miss was refused for ``reason`` (client_rate, budget), answered by ``answer``
        (fallback, 429)."""


class NoCostEvents:
    def credits_saved_by(self, by: str, credits: float) -> None:
        pass

    def budget_remaining(self, window: str, credits: float) -> None:
        pass

    def miss_refused(self, reason: str, answer: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits counted against the budget before a mint, and when (for a refund)."""

    credits: float
    at: float


# --- the per-image index of cached variants (for fallbacks) ----------------------------------


class VariantIndex(Protocol):
    """Which variant cache keys of an image were minted lately, and until when they live."""

    async def add(self, image_id: str, key: str, expires_at: float) -> None: ...

    async def entries(self, image_id: str, now: float) -> dict[str, float]:
        """Live entries: cache key → expires_at."""
        ...

    async def close(self) -> None: ...


class DiskVariantIndex:
    """One diskcache row per image, shared by one host's workers."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self._cache = diskcache.Cache(str(directory))
        self._clock = clock

    def _add(self, image_id: str, key: str, expires_at: float) -> None:
        now = self._clock()
        with self._cache.transact():
            entries = {k: t for k, t in dict(self._cache.get(image_id, {})).items() if t > now}
            entries[key] = expires_at
            if len(entries) > MAX_INDEXED:
                keep = sorted(entries.items(), key=lambda item: item[1])[-MAX_INDEXED:]
                entries = dict(keep)
            self._cache.set(image_id, entries, expire=max(1.0, max(entries.values()) - now))

    def _entries(self, image_id: str, now: float) -> dict[str, float]:
        return {k: t for k, t in dict(self._cache.get(image_id, {})).items() if t > now}

    async def add(self, image_id: str, key: str, expires_at: float) -> None:
        await anyio.to_thread.run_sync(self._add, image_id, key, expires_at)

    async def entries(self, image_id: str, now: float) -> dict[str, float]:
        return await anyio.to_thread.run_sync(self._entries, image_id, now)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._cache.close)


class RedisVariantIndex:
    """A hash per image (field: cache key, value: expires_at) that expires with its newest entry."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def _key(self, image_id: str) -> str:
        return f"{self._store.prefix}fallback-index:{image_id}"

    async def add(self, image_id: str, key: str, expires_at: float) -> None:
        name = self._key(image_id)
        ttl_ms = max(1000, int((expires_at - self._store.clock()) * 1000))
        with self._store.health.guard("fallback index"):
            async with self._store.client.pipeline(transaction=True) as pipe:
                pipe.hset(name, key, repr(expires_at))
                # The newest entry lives longest: the hash lives as long as it.
                pipe.pexpire(name, ttl_ms)
                pipe.hlen(name)
                *_, size = await pipe.execute()
            if int(size) > MAX_INDEXED:
                entries = await self._read(name)
                doomed = sorted(entries, key=entries.__getitem__)[: int(size) - MAX_INDEXED]
                await self._store.client.hdel(name, *doomed)

    async def _read(self, name: str) -> dict[str, float]:
        raw: dict[Any, Any] = await self._store.client.hgetall(name)
        return {_text(k): float(_text(v)) for k, v in raw.items()}

    async def entries(self, image_id: str, now: float) -> dict[str, float]:
        with self._store.health.guard("fallback index"):
            entries = await self._read(self._key(image_id))
        return {k: t for k, t in entries.items() if t > now}

    async def close(self) -> None:
        """The client belongs to :class:`proxy.redis_store.RedisStore`."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- miss side -------------------------------------------------------------------------------


@dataclass
class MissGuard:
    """Admits or refuses misses, batches the admitted ones, keeps the books."""

    settings: Settings
    budget: CreditBudget
    ledger: CostLedger
    index: VariantIndex
    limiter: MissLimiter | None = None
    clock: Callable[[], float] = time.time
    events: CostEvents = field(default_factory=NoCostEvents)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    batcher: Batcher[Reservation] = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(
            window=self.settings.batch_window_ms / 1000,
            max_size=self.settings.batch_max_variants,
            price=self._price,
            settle=self._settle,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
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
        limiter: MissLimiter | None = None
        if redis is not None:
            store = counters = redis.counters
            index = RedisVariantIndex(redis)
            if rate:
                limiter = ClientLimiter(rate, storage=redis.limiter_storage(settings))
        else:
            disk = DiskStore.open(settings.data_dir / "guards")
            store = counters = disk
            index = DiskVariantIndex(settings.data_dir / "guards-index", clock)
            closers.append(disk.close)
            if rate:
                limiter = disk.miss_limiter(rate, clock)  # one count for the host's workers
        budget = CreditBudget(
            store,
            per_hour=settings.budget_credits_per_hour,
            per_day=settings.budget_credits_per_day,
        )
        return cls(
            settings=settings,
            budget=budget,
            ledger=CostLedger(counters),
            index=index,
            limiter=limiter,
            clock=clock,
            events=events or NoCostEvents(),
            closers=closers,
        )

    async def aclose(self) -> None:
        await self.index.close()
        for close in self.closers:
            await anyio.to_thread.run_sync(close)

    # -- the mint -----------------------------------------------------------------------------
    def estimate(self, variant: Variant, record: ImageRecord) -> float:
        """What minting this variant alone costs, by the upstream's price rules."""
        return self._price(record, [variant])

    def _price(self, record: ImageRecord, variants: list[Variant]) -> float:
        """What one token for these variants of the image costs."""
        return estimate_credits(
            [output_variant(v, self.settings, record.original_size) for v in variants]
        )

    async def mint(
        self,
        record: ImageRecord,
        variant: Variant,
        client: str | None,
        render_many: RenderMany,
    ) -> CachedOutput:
        """Admit the miss (rate, budget), then mint it, batched with its image's others."""

        async def admit(credits: float) -> Reservation:
            return await self.admit(client, credits)

        return await self.batcher.render(record, variant, admit, render_many)

    async def admit(self, client: str | None, credits: float) -> Reservation:
        """Count one miss for ``client`` and reserve ``credits``; MissRefusedError if over."""
        if self.limiter is not None and client is not None:
            try:
                wait = await self.limiter.hit(client)
            except limits.errors.StorageError as exc:
                from proxy.redis_store import unavailable

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
        now = self.clock()
        if self.budget.limited:
            if not await self.budget.try_spend(credits, now):
                windows = await self.budget.remaining(now)
                self._report(windows)
                spent = [name for name, w in windows.items() if w["remaining"] < credits]
                retry = await self.budget.retry_after(credits, now)
                raise MissRefusedError(
                    f"the credit budget for this {' and '.join(spent) or 'hour'} is spent; "
                    "sizes already cached are still served",
                    code="credit_budget_spent",
                    retry_after=max(1.0, retry if retry is not None else 60.0),
                    reason="budget",
                    client=client,
                )
            self._report(await self.budget.remaining(now))
        return Reservation(credits, now)

    async def _settle(self, outcome: Outcome[Reservation]) -> None:
        """After a batch: count what it spent and saved; give back what was not charged."""
        try:
            await self._keep_books(outcome)
        except ProxyError as exc:  # the shared store is down: the books lose one entry
            log.warning("could not record a mint's cost: %s", exc.message)

    async def _keep_books(self, outcome: Outcome[Reservation]) -> None:
        variants = list(dict.fromkeys(m.variant for m in outcome.members))
        specs = [output_variant(v, self.settings, outcome.record.original_size) for v in variants]
        reserved = sum(m.payload.credits for m in outcome.members)
        first = min(m.payload.at for m in outcome.members)
        cost = estimate_credits(specs)
        ambiguous = outcome.error is not None and _maybe_charged(outcome.error)
        if ambiguous:
            # The upstream may have charged: the books say "possibly spent", the budget keeps
            # it counted, and nothing else remembers it (the next miss mints afresh).
            await self.ledger.record(possibly_spent=cost, ambiguous_mints=1)
        if outcome.error is None or outcome.charged:
            saved = batching_saving(specs) if len(specs) > 1 else 0.0
            await self.ledger.record(spent=cost, saved_by_batching=saved)
            if saved:
                self.events.credits_saved_by("batching", saved)
        if outcome.error is None or outcome.charged or ambiguous:
            refund = max(0.0, round(reserved - cost, 2))
        else:
            refund = reserved  # refused, or never sent: nothing was charged
        if refund and self.budget.limited:
            await self.budget.refund(refund, first)
            self._report(await self.budget.remaining(self.clock()))

    async def coalesced(self, credits: float) -> None:
        """A request got a mint another request paid for: one mint saved."""
        if credits <= 0:
            return
        try:
            await self.ledger.record(saved_by_coalescing=credits)
        except ProxyError as exc:
            log.warning("could not record a coalescing saving: %s", exc.message)
            return
        self.events.credits_saved_by("coalescing", credits)

    def _report(self, windows: Mapping[str, Mapping[str, float]]) -> None:
        for name, window in windows.items():
            self.events.budget_remaining(name, window["remaining"])

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
        totals = await self.ledger.snapshot()
        windows = await self.budget.remaining(now)
        self._report(windows)
        for window in windows.values():
            window["resets_in"] = math.ceil(window["resets_in"])
        return {
            **totals,
            "budget": windows,
            "client_miss_rate": self.limiter.rate if self.limiter is not None else None,
            "batch_window_ms": self.settings.batch_window_ms,
        }


def _maybe_charged(error: BaseException) -> bool:
    """Whether a mint that failed may still have been charged.

    The upstream client decides (:mod:`proxy.upstream`): a mint that never reached the
    upstream, or that it refused (400, 401, 402, 429...), was not charged; one whose answer
    was lost or was a 5xx is ambiguous (``maybe_charged``). Errors raised before any
    upstream call are not upstream errors, and were not charged either.
    """
    return isinstance(error, UpstreamError) and error.maybe_charged


# --- the admin endpoint ----------------------------------------------------------------------


async def costs_endpoint(request: Request) -> Response:
    """``GET /admin/costs``: credits spent and saved, and what is left of the budget."""
    state = request.app.state.proxy
    require_admin(request, state.settings.admin_token)
    guard: MissGuard | None = state.variants.guards
    body: dict[str, Any] = (
        await guard.costs()
        if guard is not None
        else {**dict.fromkeys(LEDGER_FIELDS, 0.0), "ambiguous_mints": 0, "budget": {}}
    )
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
