"""Placeholders for apps and pages: a ThumbHash and the dominant colour of an image.

    {"thumbhash": "<base64>", "color": "#rrggbb", "aspect": width / height}

- ``thumbhash``: `ThumbHash <https://evanw.github.io/thumbhash/>`_, ~25 bytes that the
  client decodes (official decoders for JavaScript, Swift, Kotlin...) into a blurred image
  of the variant, alpha included. Its own aspect ratio is coarse (steps of 1/5 or 1/7), so
  size the box by ``aspect`` and stretch the decoded placeholder into it.
- ``color``: the most common colour (:func:`dominant_colour`), for a flat fill before
  anything is decoded. With ``background`` given (the variant's ``rrggbb``), pixels of
  that colour do not count, so the product's colour wins over its backdrop however thin
  the product; ``None`` only when nothing is visible.
- transparent variants: the hash keeps the alpha, so the decoded placeholder is transparent
  where the variant is and shows over the page like the image will; ``color`` is then the
  subject's colour (transparent pixels do not count).

Computed from a decoded master laid out as the variant (:func:`variant_placeholder`: no
variant needed, the same cost for every format) or from an encoded image
(:func:`placeholder`: an upstream's output, a stored variant; libvips shrinks JPEG and WebP
while decoding, PNG and AVIF decode whole): pure, synchronous and CPU-bound like
:mod:`proxy.variants.derive` (call it from a worker thread). Every input is
first shrunk to at most :data:`SIDE` pixels a side: ThumbHash keeps at most 7 frequencies
per axis, and 32 pixels give the same hash as the spec's 100 within a step or two of its
4-bit coefficients at a tenth of the pure-Python encoder's time (measured in
tests/bench/bench_placeholder.py; docs/marketplace.md has the numbers).

ThumbHash through ``thash``: a typed, maintained port of the reference encoder with no
dependencies; its pure-Python encoder is used explicitly, so the hash is the same bytes on
every install (with numpy, ``thash`` would switch to a float32 encoder whose ties round
differently).
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from dataclasses import dataclass
from statistics import median_low
from typing import Any

import pyvips
from thash import rgba_to_thumb_hash_pure

from proxy.errors import UpstreamError
from proxy.variants.derive import TRANSPARENT, Fit, Framing, Master, placement, render

#: The longest side ThumbHash is computed from (the format allows up to 100).
SIDE = 32
#: Colours are counted in buckets of 16 levels per channel, then the winning bucket and its
#: neighbours are averaged: JPEG noise straddling a bucket edge still counts as one colour.
_STEP = 16
#: A pixel at most this far (per channel) from ``background`` is the backdrop.
BACKGROUND_TOLERANCE = 12
_HEX = re.compile(r"[0-9a-fA-F]{6}")


class PlaceholderError(UpstreamError):
    """The image (an upstream's or a stored variant) does not decode: no placeholder."""

    code = "bad_image"


@dataclass(frozen=True, slots=True)
class Placeholder:
    thumbhash: bytes
    color: str | None  # "#rrggbb", or None when nothing is visible
    aspect: float  # the image's width / height, exactly

    def as_json(self) -> dict[str, Any]:
        return {
            "thumbhash": base64.b64encode(self.thumbhash).decode("ascii"),
            "color": self.color,
            "aspect": round(self.aspect, 4),
        }


def placeholder(data: bytes, *, background: str | None = None) -> Placeholder:
    """The placeholder of an encoded image (jpg, png, webp, avif): a variant's bytes."""
    try:
        header = pyvips.Image.new_from_buffer(data, "")
        small = pyvips.Image.thumbnail_buffer(data, SIDE, height=SIDE, size="down")
    except pyvips.Error:
        raise PlaceholderError("the image could not be decoded for its placeholder") from None
    return _placeholder(small, header.width / header.height, background)


def variant_placeholder(
    master: Master,
    width: int,
    height: int,
    fit: Fit,
    bg: str,
    *,
    framing: Framing | None = None,
) -> Placeholder:
    """The placeholder of a variant, from its master, without deriving or decoding it.

    The variant's picture is laid out as :func:`~proxy.variants.derive.derive` would, at
    :data:`SIDE` pixels: the same frame, margins and background, and the exact aspect
    ratio of the full-size frame. So a JSON answer can carry the placeholder of a variant
    nobody has asked for yet, for the cost of shrinking the master once.
    """
    frame = placement(master, width, height, fit, framing).frame
    small = render(master, width, height, fit, bg, framing=framing, max_side=SIDE)
    return _placeholder(small, frame[0] / frame[1], bg)


def master_placeholder(master: Master) -> Placeholder:
    """The placeholder of the master itself: its cut-out, transparent around it."""
    return variant_placeholder(master, master.width, master.height, "contain", TRANSPARENT)


def _placeholder(small: Any, aspect: float, background: str | None) -> Placeholder:
    rgba = _rgba(small)
    pixels = bytes(rgba.write_to_memory())
    thumbhash = bytes(rgba_to_thumb_hash_pure(rgba.width, rgba.height, list(pixels)))
    return Placeholder(thumbhash, dominant_colour(pixels, background), aspect)


def _rgba(image: Any) -> Any:
    """8-bit sRGB with an alpha band, however the image came."""
    if image.bands < 3 or image.interpretation != "srgb":  # grey, 16-bit, CMYK...
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    if not image.hasalpha():
        image = image.bandjoin(255)
    return image


def dominant_colour(rgba: bytes, background: str | None = None) -> str | None:
    """The most common colour of ``rgba`` pixels (8-bit RGBA), as ``#rrggbb``.

    The colours are counted (alpha-weighted) in buckets of 16 levels a channel; the answer
    is the median of the pixels in the winning bucket and its neighbours: a solid colour
    comes out exact although shrinking rings a little at its edges. Pixels of the
    ``background`` colour (``rrggbb``) count only when nothing else is visible; fully
    opaque pixels only, when there are any (a shrunk soft edge is unpremultiplied from few
    bits). None when no pixel is visible.
    """
    pixels = [p for p in zip(rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4], strict=True) if p[3]]
    if not pixels:
        return None
    backdrop = _parse(background)
    if backdrop is not None:
        subject = [p for p in pixels if not _near(p, backdrop)]
        if not subject:
            return _median(pixels)  # nothing but the backdrop is visible
        pixels = subject
    pixels = [p for p in pixels if p[3] == 255] or pixels
    weights: Counter[tuple[int, int, int]] = Counter()
    for r, g, b, a in pixels:
        weights[r // _STEP, g // _STEP, b // _STEP] += a
    wr, wg, wb = max(weights, key=lambda key: (weights[key], key))
    return _median(
        [
            p
            for p in pixels
            if abs(p[0] // _STEP - wr) <= 1
            and abs(p[1] // _STEP - wg) <= 1
            and abs(p[2] // _STEP - wb) <= 1
        ]
    )


def _median(pixels: list[tuple[int, int, int, int]]) -> str:
    """Each channel's median, as ``#rrggbb``."""
    return "#" + "".join(f"{median_low(p[c] for p in pixels):02x}" for c in range(3))


def _parse(background: str | None) -> tuple[int, int, int] | None:
    if background is None or not _HEX.fullmatch(background):
        return None  # "transparent", or no colour: nothing is the backdrop
    return int(background[0:2], 16), int(background[2:4], 16), int(background[4:6], 16)


def _near(pixel: tuple[int, int, int, int], colour: tuple[int, int, int]) -> bool:
    return all(abs(pixel[c] - colour[c]) <= BACKGROUND_TOLERANCE for c in range(3))
