"""The variant service: from a canonical Variant to a cached output URL, minting at most once.

Order on every request: memory tier (no I/O) → in-process single flight → shared tier →
registry → cross-process lease → mint + process → store in both tiers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.cache import CachedOutput, TwoTierCache, output_for
from proxy.coalesce import Lease, SingleFlight, lead_or_follow
from proxy.errors import NotFoundError, UpstreamError
from proxy.registry import ImageRecord, Registry
from proxy.settings import Settings
from proxy.upstream import UpstreamClient
from proxy.variant import Variant, cache_key, output_variant

log = logging.getLogger("cutproxy.service")


@dataclass(frozen=True, slots=True)
class Resolved:
    """The answer for one request and where it came from (for logs, metrics, headers)."""

    output: CachedOutput
    tier: str  # memory | shared | miss | coalesced


@dataclass
class VariantService:
    settings: Settings
    cache: TwoTierCache
    registry: Registry
    lease: Lease
    upstream: UpstreamClient
    clock: Callable[[], float] = time.time
    flight: SingleFlight = field(default_factory=SingleFlight)

    def key(self, variant: Variant) -> str:
        return cache_key(variant, self.settings)

    def peek(self, variant: Variant) -> CachedOutput | None:
        """The hit path: memory only, no I/O, no await."""
        return self.cache.peek(self.key(variant))

    async def resolve(self, variant: Variant) -> Resolved:
        key = self.key(variant)
        hit = self.cache.peek(key)
        if hit is not None:
            return Resolved(hit, "memory")
        joined = self.flight.joined(key)
        resolved = await self.flight.run(
            key, lambda: self._miss(variant, key), wait=self.settings.coalesce_wait
        )
        return Resolved(resolved.output, "coalesced") if joined else resolved

    async def _miss(self, variant: Variant, key: str) -> Resolved:
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
            fresh = await self.render(variant, record)
            await self.cache.set(key, fresh)
            return fresh

        output = await lead_or_follow(
            self.lease,
            key,
            ttl=self.settings.lease_ttl,
            wait=self.settings.coalesce_wait,
            lead=lead,
            check=lambda: self.cache.shared.get(key),
        )
        self.cache.memory.set(key, output)
        return Resolved(output, "miss" if minted else "shared")

    async def render(self, variant: Variant, record: ImageRecord) -> CachedOutput:
        """One token for exactly this variant, then processing with the token alone."""
        return (await self.render_many(record, [variant]))[variant]

    async def render_many(
        self, record: ImageRecord, variants: list[Variant]
    ) -> dict[Variant, CachedOutput]:
        """One token for all ``variants`` of one image (extra variants cost 0.25 credit each).

        Callers own caching; this only spends the mint and reads the answer.
        """
        specs = [output_variant(v, self.settings, record.original_size) for v in variants]
        token = await self.upstream.mint(specs, unique_filename=record.unique_filename)
        result = await self.upstream.process(token)
        now = self.clock()
        outputs: dict[Variant, CachedOutput] = {}
        for variant, spec in zip(variants, specs, strict=True):
            url = result.output_urls.get(spec["variant_name"])
            if url is None:
                raise UpstreamError(f"upstream answer has no output for {spec['variant_name']!r}")
            outputs[variant] = output_for(
                url, now, self.settings.output_ttl, self.settings.ttl_margin
            )
        log.info("minted %d variant(s) of %s", len(variants), record.image_id)
        return outputs
