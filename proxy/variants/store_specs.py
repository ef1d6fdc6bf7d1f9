"""What a variant URL asks of store mode: the derivation's spec (box, fit, background,
format and encoder quality) and the pixel size it is served at. Pure functions, kept apart
from the service (:mod:`proxy.variants.store_mode`) so srcset and the demo page can size a
store-mode variant without it.

pyvips is imported with this module (through :mod:`proxy.variants.derive`): store mode only.
"""

from __future__ import annotations

import functools

from proxy.settings import Settings
from proxy.url.variant import Variant
from proxy.variants.derivation import DeriveSpec
from proxy.variants.derive import Anchor, Fit, Format, output_size
from proxy.variants.masters import master_size


def variant_spec(variant: Variant, settings: Settings) -> DeriveSpec:
    """What to derive for ``variant``: its box, fit, background and format, and the
    encoder quality (``PROXY_AVIF_QUALITY`` for avif, else ``PROXY_OUTPUT_COMPRESSION``)."""
    quality = settings.avif_quality if variant.ext == "avif" else settings.output_compression
    if variant.quality is not None:  # a preset's own
        quality = variant.quality
    return _spec(
        variant.width,
        variant.height,
        variant.fit,
        variant.bg,
        variant.ext,
        quality,
        variant.fill,
        variant.anchor,
    )


@functools.lru_cache(maxsize=4096)
def _spec(
    width: int,
    height: int,
    fit: str,
    bg: str,
    ext: str,
    quality: int,
    fill: float | None = None,
    anchor: str = "center",
) -> DeriveSpec:
    # One spec per variant URL, made once: the hit path asks for it on every request.
    fit_: Fit = fit  # type: ignore[assignment]  # the grammar allows only Fit's values
    fmt: Format = ext  # type: ignore[assignment]  # and only Format's
    anchor_: Anchor = anchor  # type: ignore[assignment]  # presets allow only Anchor's
    return DeriveSpec(width, height, fit_, bg, fmt, quality, fill, anchor_)


def variant_size(
    variant: Variant, original: tuple[int, int] | None, max_pixels: int
) -> tuple[int, int] | None:
    """The pixel size store mode serves for ``variant`` of an original of ``original``
    (None when the original's size is unknown and the fit is contain): pad and cover are
    exactly the box; contain fits the master (the original capped at ``max_pixels``) inside
    it, never upscaled."""
    if variant.fit != "contain":
        return variant.width, variant.height
    if original is None or variant.framed:  # framed: contain's frame depends on the subject
        return None
    fit: Fit = "contain"
    return output_size(master_size(original, max_pixels), variant.width, variant.height, fit)
