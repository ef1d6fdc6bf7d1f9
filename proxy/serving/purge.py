"""Dropping an image's cached answers: in the proxy's own cache and at the CDN.

    DELETE /images/{id}/variants   (admin) drop the cached variants, purge the CDN by key

The next request for any variant renders it again (one mint per variant; in store mode a
derivation from the kept master, no mint). The image keeps its upload and its original.

:func:`purge_image` is the one call that replacing or deleting an image makes too (the
image service's change hook), so a CDN never keeps a redirect to an image that changed.
A CDN purge that fails is logged and counted, and this route answers 502 with the details:
the proxy's part is done, and calling it again is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.images.service import ImageService
from proxy.serving.admin import require_admin
from proxy.serving.cdn import NOT_CONFIGURED, Purger, no_store
from proxy.stores.registry import VARIANTS_GENERATION, Registry
from proxy.url import grammar
from proxy.url.variant import image_prefix
from proxy.variants.service import VariantService

if TYPE_CHECKING:  # imports pyvips: built in store mode only
    from proxy.variants.store_mode import StoreVariants


async def purge_image(purger: Purger | None, image_id: str) -> dict[str, Any]:
    """Purge the CDN's answers about ``image_id`` (if a purge URL is set); the report."""
    if purger is None:
        return dict(NOT_CONFIGURED)
    return (await purger.purge_image(image_id)).as_json()


@dataclass(frozen=True)
class Purge:
    """``DELETE /images/{id}/variants``: a new variants generation in the registry (under the
    image's lock), the cached variants dropped, the CDN purged."""

    admin_token: str | None
    images: ImageService
    registry: Registry
    variants: VariantService
    purger: Purger | None = None
    store: StoreVariants | None = None  # store mode: the derived variants go too

    async def _next_generation(self, image_id: str) -> bool:
        """Give the image a new variants generation; False if the image is unknown.

        The generation is part of every cache key (:func:`proxy.stores.registry.record_version`), so
        every worker stops finding the old entries in its memory within
        ``PROXY_IMAGE_VIEW_TTL``, with or without Redis to tell it.
        """
        async with self.images.locks.held(f"image:{image_id}"):
            record = await self.registry.get(image_id)
            if record is None:
                return False
            generation = int(record.extra.get(VARIANTS_GENERATION) or 0) + 1
            extra = {**record.extra, VARIANTS_GENERATION: generation}
            await self.registry.put(record.evolve(extra=extra))
        return True

    async def delete_variants(self, request: Request) -> Response:
        require_admin(request, self.admin_token)
        image_id = grammar.check_image_id(request.path_params["image_id"])
        known = await self._next_generation(image_id)
        dropped = await self.variants.cache.delete_prefix(image_prefix(image_id))
        if self.store is not None:  # derived again from the kept master: no mint
            dropped += await self.store.drop_variants(image_id)
        self.variants.forget(image_id)
        report = await purge_image(self.purger, image_id)
        body: dict[str, Any] = {
            "image_id": image_id,
            "known": known,
            "variants_dropped": dropped,
            "cdn": report,
        }
        status = 200
        if report.get("ok") is False:
            status = 502
            body = {
                "error": "cdn_purge_failed",
                "message": f"the cached variants were dropped but the CDN purge failed: "
                f"{report.get('error')}; calling this again is safe",
                **body,
            }
        return JSONResponse(body, status_code=status, headers=no_store())
