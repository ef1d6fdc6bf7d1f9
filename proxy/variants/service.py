"""The variant service: from a canonical Variant to a cached output URL, minting at most once.

Order on every request: image version (in-memory view of the registry) → memory tier (no
I/O) → in-process single flight → shared tier → registry → cross-process lease → mint +
process → store in both tiers. A miss this process leads is admitted by the guards
(:class:`proxy.guards.misses.MissGuard`: the client's miss rate, the credit budget at the
miss's price) as it joins its image's batch (:class:`proxy.variants.batching.Batcher`,
owned here); hits, in either tier, never touch them. Every token, a miss's, a warm-up's or
a re-upload's, is minted by the guards' :class:`proxy.guards.minter.Minter` (ladder,
budget, books).

Cache keys carry the image's version (its content hash), so when an image is replaced every
worker stops serving the old variants within ``PROXY_IMAGE_VIEW_TTL``, without any message
between workers. With Redis, where replicas also hear of changes at once (pub/sub), a hit past
that time is answered from the last version seen while one background read refreshes it: no
hit ever waits for Redis, so a hung Redis cannot slow hits down.

When the upstream has forgotten an upload (it keeps files 2 hours), the kept
original is uploaded again together with the wanted variants: one token, one processing call,
shared by every request (and worker) that needs it (:mod:`proxy.variants.reupload`).

Why over 400 lines: the image view (the registry's records trusted for a while, refreshed in
the background) stays in the class whose ``peek`` is the hit path, which reads it with no
call in between; the miss path, the batch and the re-upload live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import LRUCache, TTLCache

from proxy.errors import (
    MissRefusedError,
    NotFoundError,
    ProxyError,
    SharedStoreUnavailableError,
    UpstreamError,
)
from proxy.guards.minter import Account, Minter, Reservation
from proxy.guards.misses import MissGuard
from proxy.settings import Settings
from proxy.stores.blobs import BlobStore
from proxy.stores.cache import CachedOutput, TwoTierCache, output_for
from proxy.stores.leases import Lease
from proxy.stores.registry import ImageRecord, Registry, record_version
from proxy.upstream.client import UpstreamClient
from proxy.url.variant import Variant, cache_key, output_variant
from proxy.variants.batching import Batcher, Ticket
from proxy.variants.coalesce import KeyedLock, SingleFlight, lead_or_follow
from proxy.variants.reupload import Reuploads

log = logging.getLogger("cutproxy.service")

_JOIN_ATTEMPTS = 3  # a request refused for other clients' rates leads its own miss at last


@dataclass(frozen=True, slots=True)
class Resolved:
    """The answer for one request and where it came from (for logs, metrics, headers)."""

    output: CachedOutput
    tier: str  # memory | shared | miss | coalesced | fallback
    credits: float = 0.0  # a miss: what minting it alone costs (what a coalesced wait saved)
    reason: str | None = None  # a fallback: why the miss was refused (client_rate, budget)
    served: Variant | None = None  # a fallback: the cached variant given instead


class ServiceEvents(Protocol):
    """What the service reports as it works; :class:`proxy.ops.metrics.Metrics` listens."""

    def resolved(self, tier: str) -> None:
        """A request got its answer from ``tier`` (memory, shared, miss, coalesced)."""

    def waiting(self, delta: int) -> None:
        """A request starts (+1) or stops (-1) waiting for another request's miss."""

    def rendering(self, delta: int) -> None:
        """A miss starts (+1) or stops (-1) rendering at the upstream."""

    def reuploaded(self) -> None:
        """A kept original was uploaded again because the upstream forgot it."""

    def short_lived_output(self) -> None:
        """An output URL's own expiry left less than twice the margin: kept for half."""


class NoEvents:
    def resolved(self, tier: str) -> None:
        pass

    def waiting(self, delta: int) -> None:
        pass

    def rendering(self, delta: int) -> None:
        pass

    def reuploaded(self) -> None:
        pass

    def short_lived_output(self) -> None:
        pass


@dataclass
class VariantService:
    settings: Settings
    cache: TwoTierCache
    registry: Registry
    lease: Lease
    upstream: UpstreamClient
    clock: Callable[[], float] = time.time
    flight: SingleFlight = field(default_factory=SingleFlight)
    blobs: BlobStore | None = None  # the kept originals, for re-uploads
    reuploads: SingleFlight = field(default_factory=SingleFlight)
    events: ServiceEvents = field(default_factory=NoEvents)
    guards: MissGuard | None = None  # rate, budget, prices and fallbacks for misses
    # Every token goes through the guards' minter (budget, ladder, books); bare without guards.
    minter: Minter = field(init=False)
    # Misses of one image arriving together share a token (only with guards: they price it).
    batcher: Batcher[Reservation] | None = field(init=False)
    locks: KeyedLock = field(init=False)  # per image; shared with the image service
    uploads: Reuploads = field(init=False)  # mints, uploading forgotten originals again
    # Past the view's life, hits are answered from the last record seen while one background
    # read refreshes it (None: when changes are announced, i.e. with Redis; see _stale).
    serve_stale: bool | None = None
    # image id → record, trusted for PROXY_IMAGE_VIEW_TTL: keeps the hit path free of I/O.
    records: TTLCache[str, ImageRecord] = field(init=False)
    # The last record seen of each image: answers hits while the view is refreshed, and
    # while the shared store is unreachable.
    last_records: LRUCache[str, ImageRecord] = field(init=False)
    # Images whose record is being read in the background, and those whose read failed
    # lately (not tried again for PROXY_IMAGE_VIEW_TTL).
    _refreshing: dict[str, asyncio.Task[None]] = field(init=False, default_factory=dict)
    _resting: TTLCache[str, bool] = field(init=False)
    _changes: int = field(init=False, default=0)  # images forgotten so far

    def __post_init__(self) -> None:
        self.records = TTLCache(
            maxsize=self.settings.memory_cache_size,
            ttl=self.settings.image_view_ttl,
            timer=self.clock,
        )
        self.last_records = LRUCache(maxsize=self.settings.memory_cache_size)
        self.minter = (
            self.guards.minter
            if self.guards is not None
            else Minter(self.upstream, clock=self.clock)
        )
        self.batcher = (
            Batcher(
                window=self.settings.batch_window_ms / 1000,
                max_size=self.settings.batch_max_variants,
                price=self.guards.price,
            )
            if self.guards is not None
            else None
        )
        self.locks = KeyedLock(self.lease, ttl=self.settings.lease_ttl)
        self.uploads = Reuploads(
            settings=self.settings,
            registry=self.registry,
            lease=self.lease,
            minter=self.minter,
            locks=self.locks,
            blobs=self.blobs,
            clock=self.clock,
            on_reupload=self.events.reuploaded,
            flight=self.reuploads,
        )
        self._resting = TTLCache(
            maxsize=self.settings.memory_cache_size,
            ttl=self.settings.image_view_ttl,
            timer=self.clock,
        )
        if self.serve_stale is None:
            # With Redis every replica hears of a change at once (pub/sub) and the view's life
            # only bounds a missed message; on one host's disk the view's life *is* how the
            # workers learn of changes, and the registry is a local read: it is awaited.
            self.serve_stale = self.settings.redis_url is not None

    def key(self, variant: Variant, version: str) -> str:
        return f"{cache_key(variant, self.settings)}~{version}"

    def peek(self, variant: Variant) -> CachedOutput | None:
        """The hit path: memory only, no I/O, no await."""
        try:
            # Indexing checks the view's expiry once; get() checks it twice (cachetools).
            record: ImageRecord | None = self.records[variant.image_id]
        except KeyError:
            record = self._stale(variant.image_id)
        return (
            None if record is None else self.cache.peek(self.key(variant, record_version(record)))
        )

    def _stale(self, image_id: str) -> ImageRecord | None:
        """The last record seen of an image out of view, for a hit, with a refresh under way.

        The refresh runs in the background (one per image): the hit is answered now, from
        what this worker last knew, however long the registry (Redis) takes to answer.
        """
        if not self.serve_stale:
            return None
        last = self.last_records.get(image_id)
        if last is not None:
            self._refresh_soon(image_id)
        return last

    def _refresh_soon(self, image_id: str) -> None:
        if image_id in self._refreshing or image_id in self._resting:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: the next request refreshes
            return
        self._refreshing[image_id] = loop.create_task(self._refresh(image_id))

    async def _refresh(self, image_id: str) -> None:
        """Read the image's record into the view; on failure, keep the last one for a while."""
        try:
            await self.flight.run(
                f"record:{image_id}",
                lambda: self._record(image_id),
                wait=self.settings.coalesce_wait,
            )
        except NotFoundError:
            self.forget(image_id)  # deleted meanwhile: stop serving it
        except ProxyError:  # Redis down (logged and counted where it failed): try later
            self._resting[image_id] = True
        except Exception:
            log.exception("refreshing the view of image %s failed", image_id)
            self._resting[image_id] = True
        finally:
            self._refreshing.pop(image_id, None)

    def viewed(self, image_id: str) -> ImageRecord | None:
        """The image's record as this worker last saw it (no I/O; None when not in view)."""
        return self.records.get(image_id) or self.last_records.get(image_id)

    def forget(self, image_id: str) -> None:
        """This worker changed the image: stop trusting its version at once."""
        self._changes += 1
        self.records.pop(image_id, None)
        self.last_records.pop(image_id, None)

    async def version(self, image_id: str) -> str:
        """The image's current version: from the view, else the registry (404 if unknown)."""
        return record_version(await self.record(image_id))

    async def record(self, image_id: str) -> ImageRecord:
        """The image's record: from the view, else the registry (404 if unknown)."""
        record = self.records.get(image_id)
        if record is not None:
            return record
        try:
            return await self.flight.run(
                f"record:{image_id}",
                lambda: self._record(image_id),
                wait=self.settings.coalesce_wait,
            )
        except SharedStoreUnavailableError:
            # Redis is down: the last version seen still finds memory hits; misses 503.
            last = self.last_records.get(image_id)
            if last is None:
                raise
            return last

    def view(self, image_id: str) -> ImageRecord | None:
        """The hit path's record of the image: in view, else the last one seen while a
        background read refreshes it (see :meth:`peek`); no I/O, no await."""
        try:
            return self.records[image_id]
        except KeyError:
            return self._stale(image_id)

    async def _record(self, image_id: str) -> ImageRecord:
        changes = self._changes
        record = await self.registry.get(image_id)
        if record is None:
            raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
        # An image forgotten while the read was under way may have changed after Redis
        # answered it: such a record answers its caller, but goes into no view.
        if changes == self._changes:
            self.records[image_id] = self.last_records[image_id] = record
        return record

    def hit(self, variant: Variant) -> Resolved | None:
        """A memory hit, counted, or None: no I/O, no await, nothing about the client."""
        output = self.hit_output(variant)
        return None if output is None else Resolved(output, "memory")

    def hit_output(self, variant: Variant) -> CachedOutput | None:
        """:meth:`hit`'s output alone, for the hit path (a Resolved costs it half a us)."""
        output = self.peek(variant)
        if output is not None:
            self.events.resolved("memory")
        return output

    async def resolve(self, variant: Variant, client: str | None = None) -> Resolved:
        """The variant's output. ``client`` (an address) is charged for a miss it leads."""
        record = self.records.get(variant.image_id)
        if record is None and (stale := self.peek(variant)) is not None:
            self.events.resolved("memory")  # out of view, but a hit: no wait for the registry
            return Resolved(stale, "memory")
        version = record_version(record) if record else await self.version(variant.image_id)
        key = self.key(variant, version)
        hit = self.cache.peek(key)
        if hit is not None:
            self.events.resolved("memory")
            return Resolved(hit, "memory")
        resolved = await self._lead_or_join(variant, key, client)
        self.events.resolved(resolved.tier)
        return resolved

    async def _lead_or_join(self, variant: Variant, key: str, client: str | None) -> Resolved:
        """Lead the miss or join the one in flight; a refused miss falls back to a cached size."""
        attempt = 0
        while True:
            attempt += 1
            joined = self.flight.joined(key)
            if joined:
                self.events.waiting(1)
            try:
                resolved = await self.flight.run(
                    key, lambda: self._miss(variant, key, client), wait=self.settings.coalesce_wait
                )
            except MissRefusedError as refused:
                # The request this one joined was over *its* client's rate: lead anew.
                if joined and refused.client != client and attempt < _JOIN_ATTEMPTS:
                    continue
                return await self._fallback(variant, key, refused)
            finally:
                if joined:
                    self.events.waiting(-1)
            if not joined:
                return resolved
            if resolved.tier == "miss" and self.guards is not None:
                await self.guards.coalesced(resolved.credits)
            return dataclasses.replace(resolved, tier="coalesced")

    async def _fallback(self, variant: Variant, key: str, refused: MissRefusedError) -> Resolved:
        """The nearest cached size in place of a refused miss, else the refusal (429)."""
        found = None
        if self.guards is not None:
            found = await self.guards.fallback(variant, key, self.cache, refused)
        if found is None:
            raise refused
        served, output = found
        return Resolved(output, "fallback", reason=refused.reason, served=served)

    async def _miss(self, variant: Variant, key: str, client: str | None = None) -> Resolved:
        # Announced before the checks below, so a batch of this image knows one more may come.
        ticket = self.batcher.expect(variant.image_id) if self.batcher else None
        with ticket or contextlib.nullcontext():
            return await self._checked_miss(variant, key, client, ticket)

    async def _checked_miss(
        self, variant: Variant, key: str, client: str | None, ticket: Ticket | None
    ) -> Resolved:
        output, tier = await self.cache.get(key)
        if output is not None:
            return Resolved(output, tier)
        record = await self.registry.get(variant.image_id)
        if record is None:
            raise NotFoundError(f"unknown image {variant.image_id!r}", code="unknown_image")
        minted = False

        async def lead() -> CachedOutput:
            nonlocal minted
            minted = True
            self.events.rendering(1)
            try:
                fresh = await self._mint(record, variant, client, ticket)
            finally:
                self.events.rendering(-1)
            await self.cache.set(key, fresh)
            if self.guards is not None:
                await self.guards.remember(variant, key, fresh)
            return fresh

        output = await lead_or_follow(
            self.lease,
            key,
            ttl=self.settings.lease_ttl,
            wait=self.settings.coalesce_wait,
            lead=lead,
            check=lambda: self.cache.shared.get(key),
            following=ticket.leave if ticket is not None else None,
        )
        self.cache.memory.set(key, output)
        credits = 0.0 if self.guards is None else self.guards.estimate(variant, record)
        if minted:
            return Resolved(output, "miss", credits=credits)
        if self.guards is not None:  # another worker minted it while this one waited
            await self.guards.coalesced(credits)
        return Resolved(output, "shared")

    async def _mint(
        self, record: ImageRecord, variant: Variant, client: str | None, ticket: Ticket | None
    ) -> CachedOutput:
        """Mint a miss this process leads: admitted by the guards (the client's rate, the
        budget at its price), batched with its image's others. Bare without guards."""
        guards = self.guards
        if guards is None or self.batcher is None:
            return await self.render(variant, record)

        async def admit(credits: float) -> Reservation:
            return await guards.admit(client, credits)

        return await self.batcher.render(record, variant, admit, self._render_paid, ticket)

    async def _render_paid(
        self, record: ImageRecord, variants: list[Variant], reservations: list[Reservation]
    ) -> dict[Variant, CachedOutput]:
        """:meth:`render_many` drawing on the batch's reservations; what no token drew is
        given back as it returns, before any member of the batch is answered."""
        async with self.minter.paying(reservations) as account:
            return await self.render_many(record, variants, account)

    async def render(self, variant: Variant, record: ImageRecord) -> CachedOutput:
        """One token for exactly this variant, then processing with the token alone."""
        return (await self.render_many(record, [variant]))[variant]

    async def render_many(
        self, record: ImageRecord, variants: list[Variant], account: Account | None = None
    ) -> dict[Variant, CachedOutput]:
        """One token for all ``variants`` of one image (extra variants cost 0.25 credit each).

        Callers own caching; this only spends the mint and reads the answer. A size off the
        ladder is refused here too, whoever asks (400). The mint draws on ``account`` (the
        admitted misses' reservations), or reserves its price itself.
        """
        self.minter.check(variants)
        specs = [output_variant(v, self.settings, record.original_size) for v in variants]
        result = await self.uploads.process(record, specs, account)
        now = self.clock()
        outputs: dict[Variant, CachedOutput] = {}
        for variant, spec in zip(variants, specs, strict=True):
            url = result.output_urls.get(spec["variant_name"])
            if url is None:
                raise UpstreamError(f"upstream answer has no output for {spec['variant_name']!r}")
            outputs[variant] = output_for(
                url,
                now,
                self.settings.output_ttl,
                self.settings.ttl_margin,
                on_short=self.events.short_lived_output,
            )
        log.info("minted %d variant(s) of %s", len(variants), record.image_id)
        return outputs
