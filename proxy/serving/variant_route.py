"""The variant routes, ``GET /img/{image_id}/{size}/{filename}`` and a named preset's
``GET /img/{image_id}/{filename}``: the decision, then the answer.

The hit path (:mod:`proxy.serving.hitpath`) answers memory hits before this runs; everything
else comes here: misses, the 308s, JSON for apps, errors. Both ask the same
:class:`~proxy.url.decision.Decider`, so a URL never means two things. In store mode
(``store``) the answer is the variant's bytes from
:class:`~proxy.variants.store_mode.StoreVariants` instead of a redirect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.guards.clients import client_address
from proxy.ops.accesslog import json_string
from proxy.serving import cdn, formats, responses
from proxy.serving.negotiation import Negotiation, variant_headers
from proxy.serving.responses import RawHeaders
from proxy.setting_values import IPNetwork
from proxy.stores.cache import CachedOutput
from proxy.url.decision import PRESET_ROUTE, ROUTE, Decider, Redirect
from proxy.url.variant import Variant
from proxy.variants.service import VariantService

if TYPE_CHECKING:  # store mode's module imports pyvips: the app imports it in store mode only
    from proxy.serving.placeholders import Placeholders
    from proxy.variants.store_mode import StoreVariants

__all__ = ["PRESET_ROUTE", "ROUTE", "Described", "VariantEndpoint", "describe", "mark_fallback"]

FALLBACK_HEADER = "X-Cutproxy-Fallback"


@dataclass(frozen=True, slots=True)
class Described:
    """What every answer about a variant carries, worked out once per path (the decider's
    memo keeps it): its surrogate keys, those and ``Vary: Accept`` as raw headers, and its
    path as JSON for access lines."""

    tags: tuple[str, ...]
    headers: RawHeaders
    path_json: str


def describe(variant: Variant) -> Described:
    tags = cdn.surrogate_keys(variant.image_id, variant.bg)
    return Described(tags, variant_headers(tags), json_string(variant.path))


class VariantEndpoint:
    """The route's handler, served as a plain ASGI app.

    Starlette wraps a function endpoint in two more layers per request (one of them wrapping
    ``send``) only to render its exceptions; raised here, they reach the app's exception
    middleware instead, which renders them with the same handlers.
    """

    def __init__(
        self,
        decider: Decider[Described],
        variants: VariantService,
        negotiation: Negotiation,
        *,
        trusted: Sequence[IPNetwork] = (),
        fallback_max_age: int = 60,
        error_max_age: int = 60,
        clock: Callable[[], float],
        store: StoreVariants | None = None,
    ) -> None:
        self.decider = decider
        self.variants = variants
        self.store = store
        self.placeholders: Placeholders | None = None
        if store is not None:
            from proxy.serving.placeholders import Placeholders

            self.placeholders = Placeholders(limiter=store.deriver.limiter)
        self.negotiation = negotiation
        self.trusted = tuple(trusted)
        self.fallback_max_age = fallback_max_age
        self.error_max_age = error_max_age
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(Request(scope, receive, send))
        await response(scope, receive, send)

    async def answer(self, request: Request) -> Response:
        scope = request.scope
        path = signed = scope["path"]
        if scope.get("root_path"):  # the route's own path; the signature covers the whole
            params = request.path_params
            size = f"{params['size']}/" if "size" in params else ""  # not for a preset
            path = f"/img/{params['image_id']}/{size}{params['filename']}"
        accept = _first(scope["headers"], b"accept")
        decision = self.decider.decide(
            path, scope["query_string"], accept, self.clock(), signed=signed
        )
        assert decision is not None  # the router matched the route's shape
        if isinstance(decision, Redirect):
            return responses.canonical(decision.path, decision.query(), self.error_max_age)
        about = decision.about
        # .auto: the format this Accept gets (the answer varies on Accept, as every one does).
        variant = formats.concrete(decision.variant, accept, store=self.store is not None)
        # Every answer from here on (errors too) is about this image: CDNs can purge it by key.
        cdn.tag(scope, about.tags)
        if self.store is not None:
            return await self._stored(request, variant, about, json=decision.json)
        # Hits first: who the client is (forwarding headers, address parsing) matters to
        # misses only.
        resolved = self.variants.hit(variant) or await self.variants.resolve(
            variant, client=self.client(request)
        )
        scope.setdefault("state", {})["cache_tier"] = resolved.tier
        if resolved.tier == "fallback":  # a refused miss: the nearest cached size, for now
            served = resolved.served or variant  # JSON describes what is served
            response = await self.negotiation.answer(
                served, resolved.output, json=decision.json, shared=False, extra=about.headers
            )
            mark_fallback(
                response, resolved.reason, resolved.output, self.clock(), self.fallback_max_age
            )
            return response
        return await self.negotiation.answer(
            variant, resolved.output, json=decision.json, extra=about.headers
        )

    async def _stored(
        self, request: Request, variant: Variant, about: Described, *, json: bool
    ) -> Response:
        """Store mode: the variant's bytes (hits first, as above), a 304, or JSON."""
        assert self.store is not None
        scope = request.scope
        delivered = self.store.hit(variant) or await self.store.resolve(
            variant, client=self.client(request)
        )
        scope.setdefault("state", {})["cache_tier"] = delivered.tier
        placeholder = None
        if json and self.placeholders is not None:
            placeholder = await self.placeholders.of(delivered.variant, variant.bg)
        return self.negotiation.stored(
            variant,
            delivered.variant,
            json=json,
            if_none_match=_first(scope["headers"], b"if-none-match"),
            head=scope["method"] == "HEAD",
            extra=about.headers,
            placeholder=placeholder,
            durable=self.store.durable_url(delivered.variant),
        )

    def client(self, request: Request) -> str:
        """The address held responsible for the request's misses."""
        peer = request.client.host if request.client is not None else ""
        return client_address(peer, request.headers, self.trusted) or "unknown"


def mark_fallback(
    response: Response, reason: str | None, output: CachedOutput, now: float, max_age: int
) -> None:
    """Label a fallback answer; browsers may keep it briefly, shared caches never.

    The answer was built as a per-request decision (``no-store`` everywhere); this lets the
    browser reuse it for ``PROXY_FALLBACK_MAX_AGE`` seconds (``private``).
    """
    response.headers[FALLBACK_HEADER] = reason or "refused"
    age = max(0, min(max_age, math.floor(output.remaining(now))))
    response.headers["Cache-Control"] = f"private, max-age={age}" if age else "no-store"


def _first(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name``, as Starlette's ``Headers.get`` reads it."""
    for key, value in headers:
        if key == name:
            return value
    return None
