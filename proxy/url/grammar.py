"""The URL grammar: ``/img/<image_id>/<w>x<h>[@<d>x]/<bg>.<ext>`` to a canonical Variant.

A request either parses to a canonical :class:`Variant`, or to a :class:`Canonical` path the
client should be sent to with a 308 (``FFF`` → ``ffffff``, ``jpeg`` → ``jpg``, ``@2x`` → the
pixel size), or raises :class:`BadRequestError` saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from proxy.errors import BadRequestError
from proxy.upstream.contract import MAX_RESOLUTION
from proxy.url.variant import EXTENSIONS, TRANSPARENT, Variant

IMAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SIZE = re.compile(r"(\d{1,9})x(\d{1,9})(?:@([1-9])x)?")
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
    max_width: int
    max_height: int
    max_pixels: int = MAX_RESOLUTION  # PROXY_MAX_PIXELS


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
    width, height, density = _parse_size(size)
    bg, ext = _parse_filename(filename)
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
    variant = Variant(image_id, width, height, bg, ext)
    if variant.path != f"/img/{image_id}/{size}/{filename}":
        return Canonical(variant.path, variant)
    return variant


def _parse_size(size: str) -> tuple[int, int, int]:
    match = _SIZE.fullmatch(size)
    if not match:
        raise BadRequestError(
            f"size must look like 640x480 (optionally @2x), got {size[:40]!r}",
            code="bad_size",
        )
    width, height = int(match[1]), int(match[2])
    density = int(match[3] or 1)
    if width < 1 or height < 1:
        raise BadRequestError("width and height must be at least 1", code="bad_size")
    if density > MAX_DENSITY:
        raise BadRequestError(
            f"density must be 1x to {MAX_DENSITY}x, got {density}x", code="bad_size"
        )
    return width, height, density


def _parse_filename(filename: str) -> tuple[str, str]:
    bg, dot, ext = filename.rpartition(".")
    if not dot or not bg:
        raise BadRequestError(
            "the last segment must be <background>.<ext>, e.g. ffffff.jpg or transparent.png",
            code="bad_filename",
        )
    ext = ext.lower()
    ext = _EXT_ALIASES.get(ext, ext)
    if ext not in EXTENSIONS:
        raise BadRequestError(
            f"format must be one of {', '.join(EXTENSIONS)} (or jpeg), got {ext[:10]!r}",
            code="bad_format",
        )
    if bg.lower() == TRANSPARENT:
        if ext == "jpg":
            raise BadRequestError(
                "jpg has no transparency: use png or webp, or give a colour like ffffff",
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
