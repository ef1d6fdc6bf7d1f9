"""The best format: what ``.auto`` in a variant URL becomes for one request's ``Accept``.

    /img/shoe/640x640/ffffff.auto        AVIF, else WebP, else JPEG
    /img/shoe/640x640/transparent.auto   AVIF, else WebP (both keep the alpha), else PNG

- AVIF only in store mode (the upstream makes none): redirect mode picks WebP, JPEG or PNG;
- a format counts as accepted when ``Accept`` names it with a q above 0 (``image/avif``,
  ``image/webp``): browsers that decode them say so, and ``image/*`` or ``*/*`` do not
  promise either (every CDN's image negotiation reads them the same way);
- the answer says ``Vary: Accept`` (every variant answer does); each format has its own
  bytes, so its own ``ETag``. The shipped Varnish VCL and nginx config fold ``Accept`` for
  ``.auto`` URLs to the formats it names, so a CDN keeps at most one copy per format.
"""

from __future__ import annotations

import dataclasses
import functools

from proxy.url.decision import media_range_of
from proxy.url.variant import AUTO, TRANSPARENT, Variant

__all__ = ["AUTO", "best_format", "concrete"]

MAX_KEPT_ACCEPT = 256  # bytes: longer Accept values are read each time, never kept


def best_format(accept: bytes | None, *, transparent: bool, store: bool) -> str:
    """The extension ``auto`` means for this ``Accept`` (raw header bytes, None: absent)."""
    if not accept:
        return "png" if transparent else "jpg"
    if len(accept) > MAX_KEPT_ACCEPT:
        return _best(accept, transparent, store)
    return _kept_best(accept, transparent, store)


def concrete(variant: Variant, accept: bytes | None, *, store: bool) -> Variant:
    """``variant`` with ``auto`` replaced by the format this request gets (others as they are)."""
    if variant.ext != AUTO:
        return variant
    fmt = best_format(accept, transparent=variant.bg == TRANSPARENT, store=store)
    return _with_format(variant, fmt)


@functools.lru_cache(maxsize=1024)
def _with_format(variant: Variant, fmt: str) -> Variant:
    # The same object for every request of a variant in a format: the memos keyed by a
    # variant (the store's tier keys on the hit path) keep working for .auto URLs.
    return dataclasses.replace(variant, ext=fmt)


def formats(*, transparent: bool, store: bool) -> tuple[str, ...]:
    """Every format ``auto`` may become, best first (what a warm-up of ``auto`` derives)."""
    best = ("avif", "webp") if store else ("webp",)
    return (*best, "png" if transparent else "jpg")


@functools.lru_cache(maxsize=256)  # browsers send a handful of Accept values
def _kept_best(accept: bytes, transparent: bool, store: bool) -> str:
    return _best(accept, transparent, store)


def _best(accept: bytes, transparent: bool, store: bool) -> str:
    accepted = _accepted(accept.decode("latin-1"))
    if store and "image/avif" in accepted:
        return "avif"
    if "image/webp" in accepted:
        return "webp"
    return "png" if transparent else "jpg"


def _accepted(accept: str) -> set[str]:
    """The media types ``accept`` names with a q above 0."""
    ranges = (media_range_of(media_range) for media_range in accept.split(","))
    return {kind for kind, q in ranges if q > 0}
