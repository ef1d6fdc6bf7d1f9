"""``GET /srcset/{image_id}``: ``<img srcset>`` markup for a registered image.

    GET /srcset/demo?widths=320,640,1280&ratio=1:1&bg=ffffff&ext=jpg&fit=cover&sizes=100vw&alt=Mug

(``ext=auto``: each URL answers the browser's best format; ``placeholder=1``, store mode: the
``<img>`` carries the dominant colour as its background and ``data-thumbhash``, and JSON a
``placeholder``, computed from the kept master, never minting one.)

answers the ``<img>`` element as ``text/html``, or with ``Accept: application/json`` an
object with ``html``, ``srcset``, ``sizes``, ``src``, ``width``, ``height`` and the
``candidates``. Widths snap to the ladder and ``w`` descriptors are the widths actually
delivered (the original's size is in the registry). URLs start with ``PROXY_PUBLIC_URL``.

With signing keys set, the URLs are signed, so the route is for admins only: anyone else
could otherwise mint signed URLs for every background colour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from proxy.errors import BadRequestError, NotFoundError
from proxy.serving import cdn, srcset
from proxy.serving.admin import require_admin
from proxy.serving.cdn import no_store
from proxy.settings import Settings
from proxy.stores.registry import Registry
from proxy.url import grammar
from proxy.url.decision import Decider, wants_json

if TYPE_CHECKING:  # imports pyvips: built in store mode only
    from proxy.variants.store_mode import StoreVariants


class SrcsetAPI:
    """The route's handler (:meth:`markup`, wrapped in :func:`proxy.serving.cdn.tagged`): the
    registry for the original's size, the variant decision for the candidates (its signer
    signs them)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry,
        decider: Decider[Any],
        clock: Callable[[], float],
        store: StoreVariants | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.decider = decider
        self.clock = clock
        self.store = store

    async def markup(self, request: Request) -> Response:
        settings = self.settings
        image_id = grammar.check_image_id(request.path_params["image_id"])
        signer = self.decider.signer
        if signer is not None:
            require_admin(request, settings.admin_token)
        record = await self.registry.get(image_id)
        if record is None:
            raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
        cdn.tag(request.scope, cdn.surrogate_keys(image_id))
        query = request.query_params
        try:
            found = srcset.candidates(
                image_id,
                query.get("widths") or ",".join(map(str, srcset.DEFAULT_WIDTHS)),
                query.get("ratio") or "1:1",
                query.get("bg") or "ffffff",
                query.get("ext") or "jpg",
                signer,
                settings=settings,
                original=record.original_size,
                base_url=settings.public_url,
                now=self.clock(),
                decider=self.decider,
                fit=query.get("fit") or None,
            )
        except ValueError as exc:
            raise BadRequestError(str(exc), code="bad_srcset") from None
        sizes = query.get("sizes") or "100vw"
        shown = None
        asked = query.get("placeholder") in ("1", "true")
        if asked and self.store is not None:
            from proxy.serving.placeholders import from_master  # store mode only: pyvips

            shown = await from_master(self.store, record, srcset.fallback(found).variant)
        markup = srcset.img_tag(found, sizes=sizes, alt=query.get("alt", ""), placeholder=shown)
        # Signed markup is for the admin who asked; unsigned markup changes only with the
        # image (and is tagged with it), so it may be kept as briefly as a 4xx.
        if signer is not None:
            headers = no_store()
        else:
            headers = {"Cache-Control": f"public, max-age={settings.error_max_age}"}
        headers["Vary"] = "Accept"
        if not wants_json(request.headers.get("accept")):
            return HTMLResponse(markup + "\n", headers=headers)
        src = srcset.fallback(found)
        body: dict[str, Any] = {
            "image_id": image_id,
            "html": markup,
            "srcset": ", ".join(c.descriptor for c in found),
            "sizes": sizes,
            "src": src.url,
            "width": src.width,
            "height": src.height,
            "candidates": [
                {
                    "url": c.url,
                    "width": c.width,
                    "height": c.height,
                    "box": f"{c.variant.width}x{c.variant.height}",
                }
                for c in found
            ],
        }
        if asked:  # null: redirect mode, or no master kept yet
            body["placeholder"] = shown
        return JSONResponse(body, headers=headers)
