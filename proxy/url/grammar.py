"""The URL grammar: ``/img/<image_id>/<w>x<h>[-<fit>][@<d>x]/<bg>.<ext>`` to a canonical Variant.

A request either parses to a canonical :class:`Variant`, or to a :class:`Canonical` path the
client should be sent to with a 308 (``FFF`` → ``ffffff``, ``jpeg`` → ``jpg``, ``@2x`` → the
pixel size, ``-pad`` when pad is the default fit → no suffix), or raises
:class:`BadRequestError` saying what is wrong.

What a mode allows (:class:`Limits`): redirect mode serves what the upstream makes, so only
``contain`` and jpg/png/webp (``pad``, ``cover`` and ``avif`` are a 400 naming store mode);
store mode derives variants itself and takes every fit and avif too. ``auto`` (the best
format the client's ``Accept`` allows) is a format of both modes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.errors import BadRequestError, NotFoundError
from proxy.setting_values import FITS
from proxy.upstream.contract import MAX_RESOLUTION
from proxy.url.presets import Preset, resolve
from proxy.url.variant import (
    ALPHA_EXTENSIONS,
    AUTO,
    EXTENSIONS,
    STORE_EXTENSIONS,
    TRANSPARENT,
    Variant,
)

IMAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SIZE = re.compile(
    r"(\d{1,9})x(\d{1,9})(?:-([A-Za-z]{1,16}))?(?:-[fF](\d{1,3})(?:-([A-Za-z]{1,16}))?)?(?:@([1-9])x)?"
)
ANCHORS = ("center", "bottom", "top", "left", "right")
_HEX = re.compile(r"[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6}")
_EXT_ALIASES = {"jpeg": "jpg"}
MAX_DENSITY = 4


@dataclass(frozen=True, slots=True)
class Canonical:
    """The same request spelled canonically: answer 308 to ``path``."""

    path: str
    # What ``path`` parses to, so nobody parses it again (set by parse() and the ladder).
    variant: Variant | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a URL may ask for: its size, and what the mode can make (fits, formats)."""

    max_width: int
    max_height: int
    max_pixels: int = MAX_RESOLUTION  # PROXY_MAX_PIXELS
    store: bool = False  # PROXY_MODE=store: every fit, and avif
    default_fit: str = "contain"  # what a size without a suffix means (PROXY_FIT)


def check_image_id(image_id: str) -> str:
    if not IMAGE_ID.fullmatch(image_id):
        raise BadRequestError(
            "image id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'",
            code="bad_image_id",
        )
    return image_id


def parse(image_id: str, size: str, filename: str, limits: Limits) -> Variant | Canonical:
    """Parse the three path segments after ``/img/``."""
    check_image_id(image_id)
    width, height, fit, density, fill, anchor = _parse_size(size, limits)
    bg, ext = _parse_filename(filename, limits)
    width, height = width * density, height * density
    if width > limits.max_width or height > limits.max_height:
        raise BadRequestError(
            f"size {width}x{height} is larger than allowed "
            f"({limits.max_width}x{limits.max_height} at most)",
            code="bad_size",
        )
    if width * height > limits.max_pixels:
        raise BadRequestError(
            f"size {width}x{height} is over {limits.max_pixels:,} pixels", code="bad_size"
        )
    fit = fit or limits.default_fit
    variant = Variant(
        image_id, width, height, bg, ext, fit, fit != limits.default_fit, fill=fill, anchor=anchor
    )
    if variant.path != f"/img/{image_id}/{size}/{filename}":
        return Canonical(variant.path, variant)
    return variant


def parse_preset(
    image_id: str, filename: str, presets: Mapping[str, Preset], limits: Limits
) -> Variant | Canonical:
    """Parse the two path segments of ``/img/<image_id>/<preset>.<ext>``.

    404 for a name no preset has; 400 for a format the preset does not serve, or (redirect
    mode) a preset only store mode can make; a :class:`Canonical` for ``main.JPEG``.
    """
    check_image_id(image_id)
    if "." not in filename.strip("."):  # /img/<id>/640x480: not a preset, no route
        raise NotFoundError(
            "no such route: variants live at /img/<image_id>/<w>x<h>/<bg>.<ext>, "
            "presets at /img/<image_id>/<preset>.<ext>",
            code="not_found",
        )
    chosen = resolve(presets, filename)
    preset = chosen.preset
    if not limits.store:
        if chosen.fmt in STORE_EXTENSIONS and chosen.fmt not in EXTENSIONS:
            raise BadRequestError(
                f"the upstream makes no {chosen.fmt}: {chosen.fmt} variants need PROXY_MODE=store",
                code="format_needs_store_mode",
            )
        if preset.needs_store:
            raise BadRequestError(
                f"preset {preset.name} frames, pads, crops or sets a quality, which the "
                "upstream cannot do: presets like it need PROXY_MODE=store",
                code="preset_needs_store_mode",
            )
    variant = Variant(
        image_id,
        preset.width,
        preset.height,
        preset.bg,
        chosen.fmt,
        preset.fit,
        preset=preset.name,
        fill=preset.fill,
        anchor=preset.anchor,
        quality=preset.quality,
    )
    if chosen.filename != filename:
        return Canonical(variant.path, variant)
    return variant


def _parse_size(size: str, limits: Limits) -> tuple[int, int, str | None, int, float | None, str]:
    match = _SIZE.fullmatch(size)
    if not match:
        raise BadRequestError(
            f"size must look like 640x480 (optionally -cover, -f85, -f85-bottom, @2x), "
            f"got {size[:40]!r}",
            code="bad_size",
        )
    width, height = int(match[1]), int(match[2])
    fit = _parse_fit(match[3], limits)
    fill, anchor = _parse_framing(match[4], match[5], limits)
    density = int(match[6] or 1)
    if width < 1 or height < 1:
        raise BadRequestError("width and height must be at least 1", code="bad_size")
    if density > MAX_DENSITY:
        raise BadRequestError(
            f"density must be 1x to {MAX_DENSITY}x, got {density}x", code="bad_size"
        )
    return width, height, fit, density, fill, anchor


def _parse_framing(
    percent: str | None, anchor: str | None, limits: Limits
) -> tuple[float | None, str]:
    """``-f85`` (the subject's box takes 85% of the frame), ``-f85-bottom`` (and stands on
    the bottom margin): framing from the alpha channel, store mode only."""
    if percent is None:
        return None, "center"
    fill = int(percent)
    if not 1 <= fill <= 100:
        raise BadRequestError(
            f"framing fill must be -f1 to -f100 (percent of the frame), got -f{percent}",
            code="bad_fill",
        )
    where = (anchor or "center").lower()
    if where not in ANCHORS:
        raise BadRequestError(
            f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}", code="bad_anchor"
        )
    if not limits.store:
        raise BadRequestError(
            "the upstream cannot frame a product from its outline; framing (-f<fill>) needs "
            "PROXY_MODE=store",
            code="framing_needs_store_mode",
        )
    return fill / 100, where


def _parse_fit(given: str | None, limits: Limits) -> str | None:
    if given is None:
        return None
    fit = given.lower()
    if fit not in FITS:
        raise BadRequestError(
            f"fit must be one of {', '.join(FITS)}, got {given!r}", code="bad_fit"
        )
    if fit != "contain" and not limits.store:
        raise BadRequestError(
            "the upstream can only fit inside a box (contain); exact frames need PROXY_MODE=store",
            code="fit_needs_store_mode",
        )
    return fit


def _parse_filename(filename: str, limits: Limits) -> tuple[str, str]:
    bg, dot, ext = filename.rpartition(".")
    if not dot or not bg:
        raise BadRequestError(
            "the last segment must be <background>.<ext>, e.g. ffffff.jpg or transparent.png",
            code="bad_filename",
        )
    ext = ext.lower()
    ext = _EXT_ALIASES.get(ext, ext)
    formats = (*(STORE_EXTENSIONS if limits.store else EXTENSIONS), AUTO)
    if ext not in formats:
        if ext in STORE_EXTENSIONS:
            raise BadRequestError(
                f"the upstream makes no {ext}: {ext} variants need PROXY_MODE=store",
                code="format_needs_store_mode",
            )
        raise BadRequestError(
            f"format must be one of {', '.join(formats)} (or jpeg), got {ext[:10]!r}",
            code="bad_format",
        )
    if bg.lower() == TRANSPARENT:
        if ext not in (*ALPHA_EXTENSIONS, AUTO):
            alpha = [e for e in ALPHA_EXTENSIONS if e in formats]
            raise BadRequestError(
                f"{ext} has no transparency: use {', '.join(alpha[:-1])} or {alpha[-1]}, "
                "or give a colour like ffffff",
                code="bad_background",
            )
        return TRANSPARENT, ext
    if not _HEX.fullmatch(bg):
        raise BadRequestError(
            f"background must be a hex colour (fff or ffffff) or 'transparent', got {bg[:20]!r}",
            code="bad_background",
        )
    bg = bg.lower()
    if len(bg) == 3:
        bg = "".join(c * 2 for c in bg)
    return bg, ext
