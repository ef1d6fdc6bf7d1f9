"""What the handlers share: the services the app factory built, typed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.guards.misses import Guards
from proxy.images.service import ImageService
from proxy.settings import Settings
from proxy.stores.registry import Registry
from proxy.upstream.client import UpstreamClient
from proxy.url.grammar import Limits
from proxy.variants.service import VariantService

if TYPE_CHECKING:
    from proxy.serving.cdn import Purger
    from proxy.stores.redis import RedisStore


@dataclass
class AppState:
    settings: Settings
    clock: Callable[[], float]
    registry: Registry
    upstream: UpstreamClient
    variants: VariantService
    images: ImageService
    extras: dict[str, Any] = field(default_factory=dict)
    redis: RedisStore | None = None  # PROXY_REDIS_URL: the client the shared stores use
    guards: Guards = field(default_factory=Guards)  # signature, ladder, client address
    purger: Purger | None = None  # PROXY_CDN_PURGE_URL: purges the CDN by surrogate key

    @property
    def limits(self) -> Limits:
        return Limits(self.settings.max_width, self.settings.max_height, self.settings.max_pixels)

    async def aclose(self) -> None:
        await self.variants.flight.drain(timeout=self.settings.token_timeout)
        await self.upstream.aclose()
        await self.variants.cache.close()
        await self.variants.lease.close()
        await self.registry.close()
        if self.variants.guards is not None:
            await self.variants.guards.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.purger is not None:
            await self.purger.aclose()
