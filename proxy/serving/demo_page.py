"""The demo page at ``/`` (on with ``PROXY_DEMO``, so with ``make serve``).

Plain HTML, CSS and JavaScript from ``proxy/serving/static/``, no build step. The page shows every
registered image through ``srcset`` (markup from ``GET /srcset/{id}``), a picker for size,
density, background and format that shows the URL and markup it would use, and for each
image what the picked size costs and whether it is cached. Its data comes from
``GET /demo/images``, which only reads the caches: it never renders anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from proxy.errors import BadRequestError
from proxy.files import WholeFile, WholeStaticFiles
from proxy.serving.cdn import no_store
from proxy.serving.images_api import cached_variants
from proxy.serving.negotiation import output_size
from proxy.serving.srcset import parse_ratio
from proxy.settings import Settings
from proxy.stores.registry import ImageRecord, Registry, record_version
from proxy.upstream.contract import estimate_credits
from proxy.url import grammar
from proxy.url.decision import Decider
from proxy.url.variant import Variant, output_variant
from proxy.variants.service import VariantService

if TYPE_CHECKING:  # imports pyvips: built in store mode only
    from proxy.variants.store_mode import StoreVariants

STATIC = Path(__file__).resolve().parent / "static"
MAX_IMAGES = 48


class DemoPage:
    """The page, its static files and ``GET /demo/images``: the registry's images, and what
    the variant decision and the caches say about the picked variant of each."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry,
        variants: VariantService,
        decider: Decider[Any],
        clock: Callable[[], float],
        store: StoreVariants | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.variants = variants
        self.decider = decider
        self.clock = clock
        self.store = store

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", index, methods=["GET", "HEAD"]),
            Route("/demo/images", self.images, methods=["GET"]),
            Mount("/static", app=WholeStaticFiles(directory=STATIC), name="static"),
        ]

    async def images(self, request: Request) -> Response:
        settings = self.settings
        pick = _pick(request)
        records = await self.registry.list(limit=MAX_IMAGES)
        ladder = self.decider.ladder  # listed whatever the policy
        body: dict[str, Any] = {
            "pick": {"size": pick.size, "bg": pick.bg, "ext": pick.ext},
            "widths": sorted({w for w, _ in ladder.sizes}) if ladder else [],
            "ratios": [f"{rw}:{rh}" for (rw, rh), _ in ladder.classes] if ladder else ["1:1"],
            "ladder_policy": settings.ladder_policy,
            "signing": self.decider.signer is not None,
            "embedded_engine": settings.embedded_engine,
            "mode": settings.mode,
            "images": [await self._image(record, pick) for record in records],
        }
        return JSONResponse(body, headers=no_store())

    async def _image(self, record: ImageRecord, pick: Pick) -> dict[str, Any]:
        image_id = record.image_id
        asked = f"/img/{image_id}/{pick.size}/{pick.bg}.{pick.ext}"
        entry: dict[str, Any] = {
            "image_id": image_id,
            "original": {"width": record.width, "height": record.height},
            "url": asked,
        }
        try:  # what a visitor's URL of this pick is served
            variant = self.decider.variant(image_id, pick.size, f"{pick.bg}.{pick.ext}")
        except BadRequestError as exc:
            return {**entry, "error": exc.message}
        if self.store is not None:
            return {**entry, **await self._stored(self.store, record, variant)}
        output, _tier = await self.variants.cache.get(
            self.variants.key(variant, record_version(record))
        )
        now = self.clock()
        cached = output is not None and output.remaining(now) > 0
        autocrop = self.settings.autocrop
        size = output_size(variant, record.original_size, autocrop=autocrop)
        listed = await cached_variants(self.variants.cache.shared, record, now)
        return {
            **entry,
            "canonical": variant.path,
            "output": {"width": size.width, "height": size.height, "exact": size.exact},
            "cached": cached,
            "expires_in": round(output.remaining(now)) if output is not None and cached else None,
            "credits": 0.0
            if cached
            else estimate_credits([output_variant(variant, self.settings, record.original_size)]),
            "variants_cached": None if listed is None else len(listed),
        }

    async def _stored(
        self, store: StoreVariants, record: ImageRecord, variant: Variant
    ) -> dict[str, Any]:
        """Store mode: whether the variant is kept (memory or disk), and what it costs: 0
        once the image's master is kept, else the master's mint."""
        from proxy.variants.store_specs import variant_size  # store mode only: pyvips

        kept = await store.deriver.tiers.get(store.deriver.key(record, store.spec(variant)))
        mastered = await store.masters.store.exists(store.masters.key(record, store.quality))
        size = variant_size(variant, record.original_size, self.settings.master_max_pixels)
        width, height = size or (variant.width, variant.height)
        master = store.masters.spec(record, store.quality)
        return {
            "canonical": variant.path,
            "output": {"width": width, "height": height, "exact": size is not None},
            "cached": kept is not None,
            "expires_in": None,
            "credits": 0.0 if mastered else estimate_credits([master]),
            "variants_cached": None,
        }


async def index(request: Request) -> Response:
    return WholeFile(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@dataclasses.dataclass(frozen=True, slots=True)
class Pick:
    """What the picker chose: a CSS box, a density, a background and a format."""

    width: int
    ratio: tuple[int, int]
    density: int
    bg: str
    ext: str

    @property
    def height(self) -> int:
        rw, rh = self.ratio
        return max(1, round(self.width * rh / rw))

    @property
    def size(self) -> str:
        suffix = f"@{self.density}x" if self.density > 1 else ""
        return f"{self.width}x{self.height}{suffix}"


def _pick(request: Request) -> Pick:
    query = request.query_params
    try:
        width = int(query.get("w", "320"))
        density = int(query.get("density", "1"))
        ratio = parse_ratio(query.get("ratio", "1:1"))
    except ValueError as exc:
        raise BadRequestError(f"bad picker value: {exc}", code="bad_pick") from None
    if not 1 <= width <= 4000 or not 1 <= density <= grammar.MAX_DENSITY:
        raise BadRequestError("w must be 1..4000 and density 1..4", code="bad_pick")
    return Pick(width, ratio, density, query.get("bg", "ffffff"), query.get("ext", "jpg"))
