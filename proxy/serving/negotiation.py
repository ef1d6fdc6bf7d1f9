"""Redirect, bytes or JSON: what a variant URL answers, by the mode and the request's
``Accept`` header (read by the decision, :func:`proxy.url.decision.wants_json`).

Store mode (:meth:`Negotiation.stored`) answers the bytes themselves: ``200`` with their
exact type and length and a strong ``ETag`` (``304`` when ``If-None-Match`` names it),
or for apps JSON with the variant's URL, size, format, byte count, ETag and placeholder
(ThumbHash and dominant colour). An ``.auto`` URL is answered as the format
:mod:`proxy.serving.formats` picks for the request's ``Accept``.

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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from proxy.serving import responses
from proxy.serving.cdn import CachePolicy, tag_raw
from proxy.serving.responses import RawHeaders, StoredWire
from proxy.stores.cache import CachedOutput
from proxy.stores.derived import StoredVariant
from proxy.stores.registry import ImageRecord, Registry
from proxy.upstream.contract import fit
from proxy.url.variant import Variant, max_resolution


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


@dataclass(frozen=True)
class Negotiation:
    """How variant answers are made: their cache policy, the clock their lifetimes are
    counted on, and where the original's size is read for JSON (the view the hit just used,
    else the registry)."""

    policy: CachePolicy
    viewed: Callable[[str], ImageRecord | None]
    registry: Registry
    clock: Callable[[], float]
    autocrop: bool = False
    public_url: str = ""  # store mode's JSON names the variant's own URL: PROXY_PUBLIC_URL

    async def answer(
        self,
        variant: Variant,
        output: CachedOutput,
        *,
        json: bool,
        shared: bool = True,
        extra: RawHeaders = VARY_ACCEPT,
    ) -> Response:
        """The 302 for browsers, JSON for apps (``json``); ``shared=False`` for a
        per-request decision. ``extra``: the variant's headers (:func:`variant_headers`)."""
        now = self.clock()
        if json:
            # resolve() just put the record in view: reading it here costs no I/O on a hit
            record = self.viewed(variant.image_id) or await self.registry.get(variant.image_id)
            original = record.original_size if record is not None else None
            size = output_size(variant, original, autocrop=self.autocrop)
            body = output_json(variant, output, size)
            return responses.output_json(
                body, output, now, policy=self.policy, shared=shared, extra=extra
            )
        headers = responses.redirect_headers(output, now, extra, policy=self.policy, shared=shared)
        return responses.raw_response(302, headers)

    def stored(
        self,
        variant: Variant,
        stored: StoredVariant,
        *,
        json: bool,
        if_none_match: bytes | None = None,
        head: bool = False,
        extra: RawHeaders = VARY_ACCEPT,
        placeholder: dict[str, Any] | None = None,
        durable: str | None = None,
    ) -> Response:
        """Store mode's answer: the bytes (``head``: their headers only), a 304 when
        ``if_none_match`` names their ETag, or JSON about them for apps (``json``), with
        the variant's ``placeholder`` when given. ``durable`` (PROXY_STORE_PUBLIC_URL): the
        bytes' object URL, answered with a 302 instead of the bytes, and named by the JSON."""
        if json:
            body = stored_json(variant, stored, self.public_url)
            if placeholder is not None:
                body["placeholder"] = placeholder
            if durable is not None:
                body["url"] = durable
            return responses.stored_json(body, policy=self.policy, extra=extra)
        if durable is not None:
            return responses.raw_response(
                302, responses.durable_headers(durable, extra, policy=self.policy)
            )
        wire = responses.stored_wire(stored, extra, policy=self.policy)
        status, headers, data = stored_bytes(stored, wire, if_none_match=if_none_match, head=head)
        return responses.bytes_response(status, list(headers), data)


def stored_bytes(
    stored: StoredVariant, wire: StoredWire, *, if_none_match: bytes | None, head: bool
) -> tuple[int, RawHeaders, bytes]:
    """A store-mode answer that is not JSON: its status, headers and body. A 304 when
    ``if_none_match`` names the ETag, else a 200 with the bytes (``head``: none). The full
    stack and the hit path (:mod:`proxy.serving.hitpath`) both answer with this."""
    if if_none_match is not None and etag_matches(if_none_match, stored.etag):
        return 304, wire.not_modified, b""
    return 200, wire.ok, b"" if head else stored.data


def stored_json(variant: Variant, stored: StoredVariant, public_url: str) -> dict[str, Any]:
    """The JSON body for apps in store mode: where the bytes are, their size (exact: they
    are made), format, length and ETag. No expiry: the URL lives as long as its image."""
    return {
        "url": public_url.rstrip("/") + variant.path,
        "width": stored.width,
        "height": stored.height,
        "format": variant.ext,
        "size_exact": True,
        "bytes": len(stored.data),
        "etag": stored.etag,
    }


def etag_matches(if_none_match: bytes, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (RFC 9110's weak comparison, as a
    GET's If-None-Match uses; ``*`` names any)."""
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.decode("latin-1").split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False
