"""Cutting the subject out: the :class:`Cutout` seam and the built-in border-estimation remover.

A remover turns an opaque RGB image into an alpha mask (mode ``L``, 255 = subject). The
render pipeline calls it only for inputs without a usable alpha channel, once per quality.
A model-based remover plugs in by implementing :class:`Cutout` and being passed to
``create_engine_app(settings, cutout=...)``.

:class:`BorderCutout` is made for product shots on plain backgrounds:

1. work on a downscaled copy (``quality`` picks its size);
2. take the background colour as the median of a thin frame along the border, and the noise
   level from how far that frame strays from it;
3. mark pixels close to that colour as background candidates, and keep as background only
   those connected to the border — so regions of the background colour *inside* the subject
   (a white label on a red box) stay opaque;
4. drop specks of "subject" too small to be one, scale the mask back to full size, and in
   a band along its edge let each pixel's own colour distance set its opacity (soft edges,
   no background-coloured halo).

It cannot separate a subject from a busy or gradient background, a subject of the
background's colour touching the border, holes through the subject (the inside of a mug
handle stays filled), nor hair; cast shadows darker than the noise are kept as subject.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, ImageChops, ImageFilter, ImageStat

_RUN = re.compile(rb"\xff+")


class Cutout(Protocol):
    """Something that finds the subject of an opaque image."""

    def mask(self, image: Image.Image, quality: str) -> Image.Image:
        """An ``L`` mask the size of ``image``: 255 subject, 0 background, soft in between.

        ``image`` is RGB; ``quality`` is ``low``, ``medium`` or ``high``. Called in a worker
        thread, possibly several at once: keep no mutable state.
        """
        ...


@dataclass(frozen=True, slots=True)
class BorderCutout:
    """Background estimated from the image border; see the module docstring."""

    #: Pixels of the working copy, by quality: more is slower and keeps finer detail.
    working_pixels: tuple[tuple[str, int], ...] = (
        ("low", 250_000),
        ("medium", 1_000_000),
        ("high", 4_000_000),
    )
    #: Frame width as a share of the shorter side.
    border_share: float = 0.02
    #: Subject specks smaller than this share of the image are treated as noise.
    min_subject_share: float = 0.0005

    def mask(self, image: Image.Image, quality: str) -> Image.Image:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        work = _downscale(rgb, dict(self.working_pixels).get(quality, 1_000_000))
        # Averaging 3x3 blocks first keeps sensor noise from reading as edges.
        smooth = work.filter(ImageFilter.BoxBlur(1))
        frame = _frame_mask(work.size, self.border_share)
        background = tuple(int(c) for c in ImageStat.Stat(smooth, frame).median[:3])
        distance = _distance(smooth, background)
        threshold = _threshold(distance, frame)

        candidates = distance.point(lambda v: 255 if v <= threshold else 0)
        outside = _connected_to_border(candidates)
        subject = ImageChops.invert(outside)
        subject = _drop_small(subject, max(4, int(self.min_subject_share * _area(work))))
        return _soft_edge(rgb, subject, background, threshold)


def _soft_edge(
    rgb: Image.Image, subject: Image.Image, background: tuple[int, ...], threshold: int
) -> Image.Image:
    """The full-size alpha: opaque inside, and along the rim opacity that follows colour.

    The working copy's mask is smoothed and scaled up, so its edge is only known to within
    ``reach`` pixels; in that band each pixel's own distance from the background decides, so a pixel
    that is half background (anti-aliasing, JPEG blur) comes out half transparent.
    """
    scale = rgb.width / subject.width
    if subject.size != rgb.size:
        subject = subject.resize(rgb.size, Image.Resampling.BILINEAR)
        subject = subject.point(lambda v: 255 if v >= 128 else 0)
    # The 3x3 smoothing grew the working mask by a working pixel; the upscale adds another.
    reach = math.ceil(2 * scale) + 1
    core = _erode(subject, reach)
    rim = _dilate(subject, reach)
    # Unblurred, so the edge stays where it is; from twice the noise threshold, so JPEG
    # ringing just outside the subject (lighter than the background) does not show as a halo.
    distance = _distance(rgb, background)
    start, span = 2 * threshold, max(3 * threshold, 48)
    ramp = distance.point(lambda v: max(0, min(255, (v - start) * 255 // span)))
    return ImageChops.lighter(core, ImageChops.darker(ramp, rim))


def _area(image: Image.Image) -> int:
    return image.width * image.height


def _downscale(image: Image.Image, pixels: int) -> Image.Image:
    if _area(image) <= pixels:
        return image
    scale = (pixels / _area(image)) ** 0.5
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def _frame_mask(size: tuple[int, int], share: float) -> Image.Image:
    width, height = size
    band = max(1, int(min(width, height) * share))
    frame = Image.new("L", size, 255)
    if width > 2 * band and height > 2 * band:
        frame.paste(0, (band, band, width - band, height - band))
    return frame


# Erosion and dilation through a box blur: Pillow's rank filters (MinFilter/MaxFilter)
# hold the GIL for their whole run, the box blur does not.
def _erode(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.BoxBlur(radius)).point(lambda v: 255 if v >= 254 else 0)


def _dilate(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.BoxBlur(radius)).point(lambda v: 255 if v >= 1 else 0)


def _distance(image: Image.Image, color: tuple[int, ...]) -> Image.Image:
    """Per pixel, the largest channel difference from ``color`` (0..255)."""
    diff = ImageChops.difference(image, Image.new("RGB", image.size, color))
    red, green, blue = diff.split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def _threshold(distance: Image.Image, frame: Image.Image) -> int:
    """A distance above the frame's own spread: 90th percentile, doubled, within bounds."""
    histogram = distance.histogram(mask=frame)
    total = sum(histogram)
    seen = 0
    p90 = 0
    for value, count in enumerate(histogram):
        seen += count
        if seen >= 0.9 * total:
            p90 = value
            break
    return max(12, min(80, 2 * p90 + 8))


def _runs(mask: Image.Image) -> list[list[tuple[int, int]]]:
    """Per row, the [start, end) columns of each run of 255."""
    width = mask.width
    data = mask.tobytes()
    rows = []
    for y in range(mask.height):
        row_start = y * width
        rows.append(
            [
                (m.start() - row_start, m.end() - row_start)
                for m in _RUN.finditer(data, row_start, row_start + width)
            ]
        )
    return rows


def _components(rows: list[list[tuple[int, int]]]) -> tuple[list[int], list[int]]:
    """Label 4-connected components of runs; returns (root per run, run offset per row)."""
    parent: list[int] = []
    offsets: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[tuple[int, int]] = []
    previous_offset = 0
    for runs in rows:
        offset = len(parent)
        offsets.append(offset)
        parent.extend(range(offset, offset + len(runs)))
        j = 0
        for i, (start, end) in enumerate(runs):
            while j < len(previous) and previous[j][1] <= start:
                j += 1
            k = j
            while k < len(previous) and previous[k][0] < end:
                a, b = find(offset + i), find(previous_offset + k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
        previous, previous_offset = runs, offset
    return [find(i) for i in range(len(parent))], offsets


def _paint(
    size: tuple[int, int], rows: list[list[tuple[int, int]]], keep: list[bool]
) -> Image.Image:
    """An ``L`` image with the kept runs at 255."""
    width = size[0]
    out = bytearray(width * size[1])
    index = 0
    for y, runs in enumerate(rows):
        for start, end in runs:
            if keep[index]:
                out[y * width + start : y * width + end] = b"\xff" * (end - start)
            index += 1
    return Image.frombytes("L", size, bytes(out))


def _connected_to_border(candidates: Image.Image) -> Image.Image:
    """The candidate pixels connected to the image border."""
    width, height = candidates.size
    rows = _runs(candidates)
    roots, offsets = _components(rows)
    touching: set[int] = set()
    for y, runs in enumerate(rows):
        for i, (start, end) in enumerate(runs):
            if y in (0, height - 1) or start == 0 or end == width:
                touching.add(roots[offsets[y] + i])
    return _paint(candidates.size, rows, [root in touching for root in roots])


def _drop_small(subject: Image.Image, min_area: int) -> Image.Image:
    """Remove subject components smaller than ``min_area`` pixels."""
    rows = _runs(subject)
    roots, _ = _components(rows)
    area: dict[int, int] = {}
    index = 0
    for runs in rows:
        for start, end in runs:
            area[roots[index]] = area.get(roots[index], 0) + end - start
            index += 1
    return _paint(subject.size, rows, [area[root] >= min_area for root in roots])
