"""Store mode's local work: every variant derived from one paid-for master, with libvips.

A master is the upstream's transparent PNG cut-out (RGBA) at the original's resolution.
:func:`decode_master` turns its bytes into a :class:`Master` (sRGB, 8-bit, premultiplied
RGBA in memory); :func:`derive` turns a master into one encoded variant:

    subject: the master, or with framing its subject box (:func:`subject_box`)
      → placement: scale (never above 1) and where it sits in the frame    (:func:`place`)
      → resize, Lanczos3 on premultiplied pixels (no dark fringes)
      → frame: the scaled subject on a transparent canvas, centre-cropped or padded
      → background: composite on the colour, or keep alpha (png, webp, avif)
      → encode: sRGB, no metadata (no EXIF, XMP, ICC or text chunks)

Everything is synchronous and CPU-bound: call it from a worker thread with a bounded limiter
(libvips releases the GIL and runs each pipeline on its own small thread pool). libvips was
chosen over Pillow by measurement: docs/derivation.md has the numbers.

Framing by the product (:class:`Framing`: trim to the alpha box, a fill ratio, an anchor) is
a crop to :func:`subject_box` before :func:`place`, and the rules :func:`place` then follows.
Without it every fit behaves exactly as it always has.

Why over 400 lines: the steps above are one chain whose order matters (premultiply before
resizing, frame before the background, strip before encoding); split up, the chain would
be read in parts.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pyvips
from cachetools import LRUCache

from proxy.errors import BadRequestError, UpstreamError
from proxy.upstream.contract import MAX_RESOLUTION

Fit = Literal["contain", "pad", "cover"]
Format = Literal["jpg", "png", "webp", "avif"]
Anchor = Literal["center", "bottom", "top", "left", "right"]
FITS: tuple[str, ...] = get_args(Fit)
FORMATS: tuple[str, ...] = get_args(Format)
ANCHORS: tuple[str, ...] = get_args(Anchor)
TRANSPARENT = "transparent"
#: Formats that can keep the master's alpha; jpg always needs a background colour.
ALPHA_FORMATS = ("png", "webp", "avif")
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
}
#: The upstream caps its output at 12 MP; a master over it is refused before decoding.
MAX_MASTER_PIXELS = MAX_RESOLUTION
#: A frame (pad, cover) can be larger than the master; it still has to fit in memory.
MAX_FRAME_PIXELS = 12_000_000
BYTES_PER_PIXEL = 4  # a decoded master is 8-bit RGBA
#: Trimming keeps the pixels whose alpha is over this (of 255, about 3%): fainter matting
#: haze would otherwise widen the subject's box and shrink the product in its frame.
TRIM_ALPHA = 8

PNG_COMPRESSION = 6  # zlib level; lossless either way, 6 is libvips' and zlib's default
WEBP_EFFORT = 4  # libwebp "method" 4, as cwebp and Pillow default to
#: AV1 effort 3 is libaom speed 6 (libvips sets speed = 9 - effort). libvips' default, 4,
#: took 4.7x the CPU for an 11% smaller 640x640 variant: too slow to encode on request.
AVIF_EFFORT = 3

_HEX = re.compile(r"[0-9a-fA-F]{6}")

# The proxy caches what it derives; libvips' own operation cache would hold decoded pixels
# outside any byte limit, and never hits for a different variant anyway.
pyvips.cache_set_max(0)


class MasterError(UpstreamError):
    """The master is not something variants can be derived from (not a PNG, no alpha, ...)."""

    code = "bad_master"


Box = tuple[int, int, int, int]  # left, top, right, bottom; right and bottom exclusive


@dataclass(frozen=True, slots=True, eq=False)
class Master:
    """A decoded master: sRGB, 8-bit, *premultiplied* RGBA pixels held in memory.

    Premultiplied once at decode, so each derivation resizes 8-bit pixels directly (the
    float premultiply of a 4 MP master costs more than the whole derivation).
    """

    image: Any  # pyvips.Image (untyped library): 4 bands, uchar, premultiplied, in memory
    width: int
    height: int
    #: :func:`subject_box` by threshold: finding it reads every pixel (~20 ms for 4 MP), so
    #: each decoded master finds it once. Two threads may both compute it: same value.
    _boxes: dict[int, Box] = field(default_factory=dict, init=False, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def nbytes(self) -> int:
        """What the decoded pixels take in memory: the cache's unit."""
        return self.width * self.height * BYTES_PER_PIXEL


def decode_master(
    data: bytes, *, max_pixels: int = MAX_MASTER_PIXELS, what: str = "the master"
) -> Master:
    """Decode a master PNG: it must decode, have alpha and be at most ``max_pixels``.

    Colour is converted to sRGB (an embedded ICC profile is applied, then dropped), 16-bit
    is reduced to 8, grey becomes RGB. ``what`` names the master in error messages.
    """
    try:
        # pngload only: the master is a PNG, and no other loader should see these bytes.
        image = pyvips.Image.pngload_buffer(data, fail_on="error")
    except pyvips.Error:
        raise MasterError(f"{what} is not a PNG") from None
    width, height = image.width, image.height
    # Only the header is read so far: refuse a bomb before allocating its pixels.
    if width * height > max_pixels:
        raise MasterError(f"{what} is {width}x{height}, over the {max_pixels:,} pixel limit")
    if not image.hasalpha():
        raise MasterError(f"{what} has no alpha channel: it is not a cut-out")
    try:
        if image.get_typeof("icc-profile-data"):
            image = image.icc_transform("srgb", embedded=True, intent="perceptual")
        image = image.colourspace("srgb")
        if image.format != "uchar":
            image = image.cast("uchar")
        # +0.5 then cast: round, not truncate, the premultiplied values (alpha is unchanged).
        image = (image.premultiply() + 0.5).cast("uchar").copy_memory()
    except pyvips.Error:
        raise MasterError(f"{what} is corrupt or truncated") from None
    return Master(image, width, height)


@dataclass(frozen=True, slots=True)
class Framing:
    """Frame the product: trim to its alpha box, scale the box to ``fill`` of the frame.

    - ``fill`` (0 < fill <= 1): the subject's box, scaled, fits inside ``fill`` x width by
      ``fill`` x height of the frame and touches it on one side (its larger relative side):
      0.85 leaves a margin of at least 7.5% of the frame on every side. Never upscaled: a
      subject with fewer pixels than that keeps its own size and takes less of the frame
      (:attr:`Placement.fill` says how much).
    - ``anchor``: where the subject sits. ``center``; ``bottom``: its bottom edge on the
      bottom margin, (1 - fill) / 2 of the frame's height above the frame's edge, so
      products of any height stand on one line; ``top``, ``left``, ``right`` likewise.
    """

    fill: float = 1.0
    anchor: Anchor = "center"

    def check(self) -> None:
        """A 400 unless ``fill`` is in (0, 1] and ``anchor`` is one of :data:`ANCHORS`."""
        if isinstance(self.fill, bool) or not isinstance(self.fill, int | float):
            raise BadRequestError(f"fill must be a number, got {self.fill!r}", code="bad_fill")
        if not 0 < self.fill <= 1:  # also refuses nan
            raise BadRequestError(
                f"fill must be above 0 and at most 1, got {self.fill}", code="bad_fill"
            )
        if self.anchor not in ANCHORS:
            raise BadRequestError(
                f"anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}",
                code="bad_anchor",
            )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the scaled subject sits: the frame's size and the subject's box in it.

    ``offset`` may be negative (cover crops what sticks out of the frame).
    """

    frame: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]

    @property
    def fill(self) -> float:
        """How much of the frame the scaled subject takes: its larger relative side."""
        return max(self.scaled[0] / self.frame[0], self.scaled[1] / self.frame[1])

    def shrunk(self, max_side: int) -> Placement:
        """The same layout with the frame's longer side at most ``max_side`` pixels."""
        k = max_side / max(self.frame)
        if k >= 1:
            return self
        frame, scaled = self.frame, self.scaled
        return Placement(
            (max(1, round(frame[0] * k)), max(1, round(frame[1] * k))),
            (max(1, round(scaled[0] * k)), max(1, round(scaled[1] * k))),
            (round(self.offset[0] * k), round(self.offset[1] * k)),
        )


def place(
    subject: tuple[int, int],
    width: int,
    height: int,
    fit: Fit,
    framing: Framing | None = None,
) -> Placement:
    """Scale and position a ``subject``-sized image for a ``width`` x ``height`` box.

    - contain: fits inside the box, aspect kept; the frame *is* the scaled subject.
    - pad: the frame is exactly the box; the subject fitted inside it, centred.
    - cover: the frame is exactly the box; the subject scaled to fill it, centre-cropped.

    The subject is never scaled above 1: when the box is larger than the master, contain
    returns the master's size, and pad and cover fill the rest of the frame with background.

    With ``framing``, ``subject`` is the size of the subject's box (the trimmed master) and
    the fits read "the fill area" (``fill`` x the box) for "the box": pad fits the subject
    inside it, cover makes it cover it (cropping what leaves the frame), contain fits it
    inside and returns a frame of the scaled subject plus its margins (the scaled subject
    divided by ``fill``, within the box); pad and cover frames are exactly the box. The
    subject sits at ``framing.anchor``.
    """
    _check_box(width, height, fit)
    if framing is not None:
        framing.check()
        return _frame(subject, width, height, fit, framing)
    sub_w, sub_h = subject
    fits_inside = min(width / sub_w, height / sub_h)
    scale = min(1.0, max(width / sub_w, height / sub_h) if fit == "cover" else fits_inside)
    if scale >= 1.0:
        scaled = subject
    elif fit == "cover":
        # At least the box on both sides, so the crop never leaves a background strip.
        scaled = (max(width, round(sub_w * scale)), max(height, round(sub_h * scale)))
    else:
        # At most the box on both sides (the long side lands on it exactly).
        scaled = (
            max(1, min(width, round(sub_w * scale))),
            max(1, min(height, round(sub_h * scale))),
        )
    if fit == "contain":
        return Placement(scaled, scaled, (0, 0))
    offset = ((width - scaled[0]) // 2, (height - scaled[1]) // 2)
    return Placement((width, height), scaled, offset)


def _frame(
    subject: tuple[int, int], width: int, height: int, fit: Fit, framing: Framing
) -> Placement:
    """:func:`place` with framing: the subject's box scaled to ``fill`` of the frame."""
    sub_w, sub_h = subject
    fill = framing.fill
    area = (max(1, round(width * fill)), max(1, round(height * fill)))  # the fill area
    ratios = (area[0] / sub_w, area[1] / sub_h)
    scale = min(1.0, max(ratios) if fit == "cover" else min(ratios))
    if scale >= 1.0:
        scaled = subject
    elif fit == "cover":
        # At least the fill area on both sides, as cover without framing.
        scaled = (max(area[0], round(sub_w * scale)), max(area[1], round(sub_h * scale)))
    else:
        scaled = (
            max(1, min(area[0], round(sub_w * scale))),
            max(1, min(area[1], round(sub_h * scale))),
        )
    if fit == "contain":
        # The scaled subject and its margins: the subject takes ``fill`` of this frame.
        frame = (
            min(width, max(scaled[0], round(scaled[0] / fill))),
            min(height, max(scaled[1], round(scaled[1] / fill))),
        )
    else:
        frame = (width, height)
    offset = (
        _anchored(frame[0], scaled[0], fill, {"left": -1, "right": 1}.get(framing.anchor, 0)),
        _anchored(frame[1], scaled[1], fill, {"top": -1, "bottom": 1}.get(framing.anchor, 0)),
    )
    return Placement(frame, scaled, offset)


def _anchored(frame: int, scaled: int, fill: float, side: int) -> int:
    """Where a ``scaled`` span starts in a ``frame``: centred (0), or its start (-1) or
    end (1) on the margin of (1 - fill) / 2 of the frame; never leaving a strip a cover
    would otherwise fill, never pushing a smaller subject out of the frame."""
    if side == 0:
        at = (frame - scaled) // 2
    else:
        margin = round(frame * (1 - fill) / 2)
        at = margin if side < 0 else frame - margin - scaled
    return min(max(at, min(0, frame - scaled)), max(0, frame - scaled))


def output_size(
    master_size: tuple[int, int],
    width: int,
    height: int,
    fit: Fit,
    framing: Framing | None = None,
) -> tuple[int, int]:
    """The size :func:`derive` will return, by arithmetic alone (no decoding).

    With ``framing`` pass the subject box's size (:func:`subject_box`) as ``master_size``:
    only contain's frame depends on it (pad and cover give exactly the box).
    """
    return place(master_size, width, height, fit, framing).frame


def derive(
    master: Master,
    width: int,
    height: int,
    fit: Fit,
    bg: str,
    fmt: Format,
    quality: int,
    *,
    framing: Framing | None = None,
) -> bytes:
    """One variant of ``master``, encoded.

    ``bg`` is ``rrggbb`` or ``transparent`` (png, webp, avif only); ``quality`` (1..100) is
    the jpg, webp and avif quality; png is lossless. The output is sRGB with no metadata.
    With ``framing`` the master is first trimmed to :func:`subject_box`, then placed by
    the framing's fill and anchor (:func:`place`).
    """
    _check_output(bg, fmt, quality)
    return _encode(render(master, width, height, fit, bg, framing=framing), fmt, quality)


def placement(
    master: Master, width: int, height: int, fit: Fit, framing: Framing | None = None
) -> Placement:
    """:func:`place` for this master: its whole size, or with ``framing`` its subject box.
    ``.frame`` is the variant's size; ``.fill``, how much of it the subject takes."""
    left, top, right, bottom = _placed_box(master, width, height, fit, framing)
    return place((right - left, bottom - top), width, height, fit, framing)


def render(
    master: Master,
    width: int,
    height: int,
    fit: Fit,
    bg: str,
    *,
    framing: Framing | None = None,
    max_side: int | None = None,
) -> Any:
    """The variant's pixels before encoding: a pyvips image, 8-bit sRGB, flattened on the
    ``rrggbb`` colour or with its alpha (``transparent``).

    ``max_side``: the same picture laid out as at full size, shrunk so that its longer
    side is at most that many pixels (what a placeholder is computed from).
    """
    colour = _check_background(bg)
    left, top, right, bottom = _placed_box(master, width, height, fit, framing)
    size = (right - left, bottom - top)
    image = master.image if size == master.size else master.image.crop(left, top, *size)
    where = place(size, width, height, fit, framing)
    if max_side is not None:
        where = where.shrunk(max_side)
    if where.scaled != size:
        image = image.resize(
            where.scaled[0] / size[0],
            vscale=where.scaled[1] / size[1],
            kernel="lanczos3",
        )
    frame_w, frame_h = where.frame
    if (frame_w, frame_h) != where.scaled:
        # Premultiplied black is transparent: the padding takes the background below.
        image = image.embed(*where.offset, frame_w, frame_h, extend="black")
    # Back to straight alpha at the output size only; +0.5 because cast truncates.
    image = image.unpremultiply()
    if colour is not None:
        image = image.flatten(background=list(colour))
    image = (image + 0.5).cast("uchar")
    return image.copy(interpretation="srgb")


def _placed_box(master: Master, width: int, height: int, fit: Fit, framing: Framing | None) -> Box:
    """The part of the master a variant places: all of it, or with framing its subject."""
    if framing is None:
        return 0, 0, master.width, master.height
    _check_box(width, height, fit)
    framing.check()  # before the box is looked for: a bad request costs no pixel work
    return subject_box(master)


def alpha_box(master: Master, *, threshold: int = 0) -> Box | None:
    """The subject's bounding box: pixels with alpha over ``threshold``; None if none are.

    One pass over the alpha band: its column and row sums (``project``), whose first and
    last non-zero entries are the box's edges (~3x faster than libvips' ``profile``).
    """
    columns, rows = (master.image[3] > threshold).project()
    # Sums of 255s: any non-zero sum casts (clipped) to a non-zero byte.
    xs = bytes(columns.cast("uchar").write_to_memory())
    ys = bytes(rows.cast("uchar").write_to_memory())
    left = len(xs) - len(xs.lstrip(b"\0"))
    if left == len(xs):
        return None
    top = len(ys) - len(ys.lstrip(b"\0"))
    return left, top, len(xs.rstrip(b"\0")), len(ys.rstrip(b"\0"))


def subject_box(master: Master, *, threshold: int = TRIM_ALPHA) -> Box:
    """What framing trims the master to: its :func:`alpha_box` over ``threshold``, or the
    whole master when nothing is over it (an empty cut-out is framed as it is, not refused).
    Found once per decoded master and threshold."""
    box = master._boxes.get(threshold)
    if box is None:
        box = alpha_box(master, threshold=threshold) or (0, 0, master.width, master.height)
        master._boxes[threshold] = box
    return box


class MasterCache:
    """Decoded masters, least recently used first out, bounded by their decoded bytes.

    Thread-safe: derivations run in worker threads. A master larger than the whole budget
    is returned but not kept. Two threads missing the same key at once both decode it (the
    work is bounded by the caller's limiter; the second put just refreshes the entry).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._lock = threading.Lock()
        self._masters: LRUCache[str, Master] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda master: master.nbytes
        )

    def get(self, key: str) -> Master | None:
        with self._lock:
            return self._masters.get(key)

    def put(self, key: str, master: Master) -> None:
        with self._lock:
            if master.nbytes > self._masters.maxsize:
                self._masters.pop(key, None)  # never keep a stale copy of a too-large one
                return
            self._masters[key] = master

    def get_or_decode(
        self, key: str, load: Callable[[], bytes], *, max_pixels: int = MAX_MASTER_PIXELS
    ) -> Master:
        """The cached master for ``key``, or ``load()`` decoded (outside the lock) and kept."""
        master = self.get(key)
        if master is None:
            master = decode_master(load(), max_pixels=max_pixels)
            self.put(key, master)
        return master

    def discard(self, key: str) -> None:
        with self._lock:
            self._masters.pop(key, None)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._masters.currsize)

    @property
    def max_bytes(self) -> int:
        return int(self._masters.maxsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._masters)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._masters


def _check_box(width: int, height: int, fit: str) -> None:
    if fit not in FITS:
        raise BadRequestError(f"fit must be one of {', '.join(FITS)}, got {fit!r}", code="bad_fit")
    if width < 1 or height < 1:
        raise BadRequestError(f"size {width}x{height} must be at least 1x1", code="bad_size")
    if width * height > MAX_FRAME_PIXELS:
        raise BadRequestError(
            f"size {width}x{height} is over {MAX_FRAME_PIXELS:,} pixels", code="bad_size"
        )


def _check_output(bg: str, fmt: str, quality: int) -> tuple[int, int, int] | None:
    """The background colour (None: transparent), once ``bg``, ``fmt`` and quality are valid."""
    if fmt not in FORMATS:
        raise BadRequestError(
            f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", code="bad_format"
        )
    if not 1 <= quality <= 100:
        raise BadRequestError(f"quality must be 1..100, got {quality}", code="bad_quality")
    if bg == TRANSPARENT and fmt not in ALPHA_FORMATS:
        raise BadRequestError(
            f"{fmt} has no transparency: use png, webp or avif, or give a colour like ffffff",
            code="bad_background",
        )
    return _check_background(bg)


def _check_background(bg: str) -> tuple[int, int, int] | None:
    """The background colour of ``rrggbb``; None for ``transparent``."""
    if bg == TRANSPARENT:
        return None
    if not _HEX.fullmatch(bg):
        raise BadRequestError(
            f"background must be rrggbb hex or transparent, got {bg!r}", code="bad_background"
        )
    return int(bg[0:2], 16), int(bg[2:4], 16), int(bg[4:6], 16)


def _encode(image: Any, fmt: str, quality: int) -> bytes:
    """Encode with every metadata field dropped (keep="none"): untagged output is sRGB."""
    data: bytes
    if fmt == "jpg":
        data = image.jpegsave_buffer(Q=quality, keep="none")
    elif fmt == "png":
        data = image.pngsave_buffer(compression=PNG_COMPRESSION, keep="none")
    elif fmt == "webp":
        data = image.webpsave_buffer(Q=quality, effort=WEBP_EFFORT, keep="none")
    else:
        data = image.heifsave_buffer(
            Q=quality, compression="av1", effort=AVIF_EFFORT, bitdepth=8, keep="none"
        )
    return data
