"""A variant: one rendering of one image (size, fit, background, format) and how to ask for it."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from proxy.settings import Settings
from proxy.upstream.contract import pixel_budget

TRANSPARENT = "transparent"
#: What the upstream renders, so what redirect mode serves.
EXTENSIONS = ("jpg", "png", "webp")
#: Store mode encodes variants itself: AVIF too.
STORE_EXTENSIONS = (*EXTENSIONS, "avif")
#: Formats that keep transparency (jpg always needs a background colour).
ALPHA_EXTENSIONS = ("png", "webp", "avif")
#: The best format the client's ``Accept`` allows (:mod:`proxy.serving.formats` picks it).
AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Variant:
    """A canonical variant request: ``/img/<image_id>/<width>x<height>[-<fit>]/<bg>.<ext>``
    (with framing ``...[-<fit>]-f<fill %>[-<anchor>]/...``), or a named preset's
    ``/img/<image_id>/<preset>.<ext>``.

        ``fit`` is how the subject fills the box (contain, pad, cover). The URL names it only
        when it is not the effective default (``fit_named``), so every variant has one spelling:
        ``640x640`` is the default fit, ``640x640-cover`` another one.
    """

    image_id: str
    width: int
    height: int
    bg: str  # six lowercase hex digits, or "transparent"
    ext: str  # jpg, png or webp (store mode: avif too), or auto (picked by Accept)
    fit: str = "contain"
    fit_named: bool = False  # the URL spells the fit: it is not the default one
    #: A named preset (``/img/<image_id>/<preset>.<ext>``): its recipe is in the fields
    #: above and below; None for a size URL.
    preset: str | None = None
    fill: float | None = None  # framing: the subject's box takes this share of the frame
    anchor: str = "center"  # framing: where the subject sits (with fill)
    quality: int | None = None  # the encoder's quality; None: the server's

    @property
    def framed(self) -> bool:
        """Whether the subject is trimmed from its alpha and placed by fill and anchor."""
        return self.fill is not None

    @property
    def size(self) -> str:
        """The size segment: ``640x480``, ``640x480-cover`` when the fit is named, and the
        framing after it: ``640x480-f85``, ``640x480-cover-f85-bottom``."""
        suffix = f"-{self.fit}" if self.fit_named else ""
        if self.fill is not None:
            suffix += f"-f{round(self.fill * 100)}"
            if self.anchor != "center":
                suffix += f"-{self.anchor}"
        return f"{self.width}x{self.height}{suffix}"

    @property
    def path(self) -> str:
        # Spelled out, not through ``size``: every redirect-mode hit builds its cache key here.
        if self.preset is not None:
            return f"/img/{self.image_id}/{self.preset}.{self.ext}"
        if self.fill is not None:  # framing from the URL (store mode only)
            return f"/img/{self.image_id}/{self.size}/{self.bg}.{self.ext}"
        if self.fit_named:
            return (
                f"/img/{self.image_id}/{self.width}x{self.height}-{self.fit}/{self.bg}.{self.ext}"
            )
        return f"/img/{self.image_id}/{self.width}x{self.height}/{self.bg}.{self.ext}"

    @property
    def name(self) -> str:
        """Deterministic upstream ``variant_name``: the same variant always has the same name
        (a preset's is its own, so a token may carry it beside the size it shares)."""
        if self.preset is not None:
            return f"{self.preset}_{self.ext}"
        return f"{self.width}x{self.height}_{self.bg}_{self.ext}"

    @property
    def background_color(self) -> str | None:
        return None if self.bg == TRANSPARENT else f"#{self.bg.upper()}"


def profile(settings: Settings) -> str:
    """A short digest of the settings that change the rendered output.

    It is part of every cache key, so changing the quality or compression never serves
    an output rendered under the old settings.
    """
    return _profile(settings.quality, settings.output_compression, settings.autocrop)


@functools.lru_cache(maxsize=64)
def _profile(quality: str, compression: int, autocrop: bool) -> str:
    # Every cache key carries it: hashing once per setting combination keeps hits cheap.
    raw = f"{quality}|{compression}|{int(autocrop)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:8]


def cache_key(variant: Variant, settings: Settings) -> str:
    """The variant's path first, so an image's entries share the prefix ``/img/<id>/``."""
    return f"{variant.path}#{profile(settings)}"


def image_prefix(image_id: str) -> str:
    return f"/img/{image_id}/"


def max_resolution(variant: Variant, original: tuple[int, int] | None) -> int:
    """Pixel budget so the output fits inside ``width`` x ``height``: the upstream contract's
    :func:`~proxy.upstream.contract.pixel_budget` for the variant's box."""
    return pixel_budget((variant.width, variant.height), original)


def output_variant(
    variant: Variant, settings: Settings, original: tuple[int, int] | None
) -> dict[str, Any]:
    """The upstream ``output_variants`` entry for this variant."""
    spec: dict[str, Any] = {
        "variant_name": variant.name,
        "max_resolution": max_resolution(variant, original),
        "format": variant.ext,
        "quality": settings.quality,
        "output_compression": settings.output_compression,
        "autocrop": settings.autocrop,
    }
    if variant.background_color is not None:
        spec["background_color"] = variant.background_color
    return spec
