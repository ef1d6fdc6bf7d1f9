"""Redirect or JSON: what a variant URL answers, by the request's ``Accept`` header.

Browsers (``<img>``, CSS, navigation) send ``image/*`` or ``*/*`` and get the 302. Apps that
send ``Accept: application/json`` get ``200`` with where the output is, its pixel size, its
format and until when it lives, so they can size a view before downloading and refresh the
URL before it dies. Both answers say ``Vary: Accept``.

The size is what the renderer will make: the original scaled to fit the box (aspect ratio
kept, never upscaled, floored), by the upstream contract's rules (``pixel_budget`` and
``fit`` in :mod:`proxy.upstream.contract`). When the original's size is not known (an
image registered by ``unique_filename`` alone), or autocrop makes it depend on the subject,
the box is reported instead and ``size_exact`` is false.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.serving import responses
from proxy.serving.cdn import CachePolicy, tag_raw
from proxy.state import AppState
from proxy.stores.cache import CachedOutput
from proxy.upstream.contract import fit
from proxy.url.variant import Variant, max_resolution

JSON = "application/json"


MAX_KEPT_ACCEPT = 256  # characters: longer Accept values are read each time, never kept


def wants_json(accept: str | None) -> bool:
    """True when ``application/json`` is acceptable and no image type is preferred to it."""
    if not accept:
        return False
    if len(accept) > MAX_KEPT_ACCEPT:  # kept, a client's long odd values would add up
        return _wants_json(accept)
    return _kept_wants_json(accept)


def _wants_json(accept: str) -> bool:
    json_q: float | None = None
    image_q = 0.0
    for media_range in accept.split(","):
        kind, q = _range(media_range)
        if kind == JSON:
            json_q = max(json_q or 0.0, q)
        elif kind.startswith("image/"):
            image_q = max(image_q, q)
    return json_q is not None and json_q > 0 and json_q >= image_q


# Browsers and apps send a handful of distinct values: at most 256 kept, 64 KiB in all.
_kept_wants_json = functools.lru_cache(maxsize=256)(_wants_json)


def _range(media_range: str) -> tuple[str, float]:
    kind, *params = (part.strip() for part in media_range.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return kind.lower(), q


@dataclass(frozen=True, slots=True)
class OutputSize:
    width: int
    height: int
    exact: bool  # False: the box the output fits in, not its size


def output_size(
    variant: Variant, original: tuple[int, int] | None, *, autocrop: bool = False
) -> OutputSize:
    """The pixel size the renderer makes for ``variant`` from an original of ``original``."""
    if original is None or autocrop:
        return OutputSize(variant.width, variant.height, exact=False)
    width, height = fit(original, max_resolution(variant, original))
    return OutputSize(width, height, exact=True)


def output_json(variant: Variant, output: CachedOutput, size: OutputSize) -> dict[str, Any]:
    """The JSON body for apps: the five promised fields, and whether the size is exact.

    ``expires_at`` is absolute on purpose: a CDN may hand this body out later, and a count
    of seconds would then be wrong by the time it spent in the cache.
    """
    expires = datetime.fromtimestamp(output.expires_at, UTC)
    return {
        "url": output.url,
        "width": size.width,
        "height": size.height,
        "format": variant.ext,
        "expires_at": expires.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "size_exact": size.exact,
    }


VARY_ACCEPT = ((b"vary", b"Accept"),)


def variant_headers(tags: tuple[str, ...]) -> tuple[tuple[bytes, bytes], ...]:
    """What every answer about a variant adds: ``Vary: Accept`` and its surrogate keys."""
    return VARY_ACCEPT + tag_raw(tags) if tags else VARY_ACCEPT


async def answer(
    request: Request,
    state: AppState,
    variant: Variant,
    output: CachedOutput,
    *,
    shared: bool = True,
    tags: tuple[str, ...] = (),
) -> Response:
    """The 302 for browsers, JSON for apps; ``shared=False`` for a per-request decision.

    ``tags``: the surrogate keys the answer carries (:func:`proxy.cdn.tag_raw`).
    """
    settings = state.settings
    now = state.clock()
    policy = CachePolicy.from_settings(settings)
    extra = variant_headers(tags)
    if wants_json(request.headers.get("accept")):
        # resolve() just put the record in view: reading it here costs no I/O on a hit
        record = state.variants.viewed(variant.image_id) or await state.registry.get(
            variant.image_id
        )
        original = record.original_size if record is not None else None
        size = output_size(variant, original, autocrop=settings.autocrop)
        body = output_json(variant, output, size)
        return responses.output_json(body, output, now, policy=policy, shared=shared, extra=extra)
    headers = responses.redirect_headers(output, now, extra, policy=policy, shared=shared)
    return responses.raw_response(302, headers)
