"""BackgroundCut v3's published contract: prices, limits, retention and the pixel-budget fit.

The one copy of the upstream's public facts (``shared/upstream/backgroundcut-v3.md``) that
the proxy and the local engine both import, so the stand-in upstream and its client follow
the same rules. Constants and pure functions only: it imports nothing from the proxy.

Prices, in credits:

- the request's first variant is charged the standard rate for its resolution: 0.5 credit
  under 1 MP, 1.1 credit up to 12 MP;
- every further variant in the same request costs 0.25 credit;
- autocrop adds 0.5 credit to each variant that asks for it;
- reusing an uploaded image costs nothing extra.

"First" is read as "priciest": the largest variant pays the standard rate. When the listed
first variant is the largest this is the published rule exactly; otherwise it is an upper
bound, so budgets built on :func:`estimate_credits` never under-count.

The fit: an output keeps its input's aspect ratio, has at most ``max_resolution`` pixels
(w*h) and is never upscaled (:func:`fit`); :func:`pixel_budget` is the ``max_resolution``
that makes an output fit inside a box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

# --- limits -----------------------------------------------------------------------------------
MAX_RESOLUTION: Final = 12_000_000
"""Most output pixels (w*h) a variant may ask for; also the default ``max_resolution``."""
MAX_UPLOAD_MB: Final = 12
"""Largest input file (413 above it). "12 MB" is not said to be MiB or MB: read as MiB."""
INPUT_FORMATS: Final = ("png", "jpg", "webp")
OUTPUT_FORMATS: Final = ("png", "webp", "jpg")
DEFAULT_FORMAT: Final = "png"
QUALITIES: Final = ("low", "medium", "high")
DEFAULT_QUALITY: Final = "medium"  # the docs disagree: some say high
DEFAULT_OUTPUT_COMPRESSION: Final = 85

# --- lifetimes --------------------------------------------------------------------------------
RETENTION_SECONDS: Final = 2 * 60 * 60
"""Uploads and outputs are hard-deleted after 2 hours: an older ``unique_filename`` is gone."""

# --- prices -----------------------------------------------------------------------------------
LOW_RATE_BELOW_PIXELS: Final = 1_000_000
LOW_RATE: Final = 0.5
STANDARD_RATE: Final = 1.1
EXTRA_VARIANT: Final = 0.25
AUTOCROP: Final = 0.5


def estimate_credits(output_variants: Sequence[Mapping[str, Any]]) -> float:
    """Credits charged for minting one token with these ``output_variants``."""
    if not output_variants:
        return 0.0
    largest = max(int(v.get("max_resolution") or MAX_RESOLUTION) for v in output_variants)
    total = LOW_RATE if largest < LOW_RATE_BELOW_PIXELS else STANDARD_RATE
    total += EXTRA_VARIANT * (len(output_variants) - 1)
    total += AUTOCROP * sum(1 for v in output_variants if v.get("autocrop") is True)
    return round(total, 2)


def batching_saving(output_variants: Sequence[Mapping[str, Any]]) -> float:
    """Credits saved by minting these variants in one token rather than one token each."""
    separately = sum(estimate_credits([v]) for v in output_variants)
    return round(separately - estimate_credits(output_variants), 2)


def to_hundredths(credits: float) -> int:
    """Credits as whole hundredths (every price above is one), so shared counters can use
    atomic integer increments and sums stay exact."""
    return round(credits * 100)


# --- the fit ----------------------------------------------------------------------------------


def fit(size: tuple[int, int], max_resolution: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``max_resolution`` pixels.

    Never larger than ``size``: upscaling costs the same and only blurs.
    """
    width, height = size
    if width * height <= max_resolution:
        return size
    scale = math.sqrt(max_resolution / (width * height))
    new_width = max(1, math.floor(width * scale))
    new_height = max(1, math.floor(height * scale))
    if new_width == 1:
        new_height = min(new_height, max_resolution)
    if new_height == 1:
        new_width = min(new_width, max_resolution)
    while new_width * new_height > max_resolution:  # float rounding only: a step or two
        if new_width >= new_height:
            new_width -= 1
        else:
            new_height -= 1
    return new_width, new_height


def pixel_budget(box: tuple[int, int], original: tuple[int, int] | None) -> int:
    """The ``max_resolution`` whose output fits inside ``box`` (width, height).

    For a known original: the pixels of the original scaled to fit the box, never more than
    the original itself (upscaling costs the same and looks worse), so :func:`fit` of the
    original to this budget is within the box both ways. Unknown original: the box's area.
    Always between 1 and :data:`MAX_RESOLUTION`.
    """
    width, height = box
    if original is None or original[0] < 1 or original[1] < 1:
        return max(1, min(width * height, MAX_RESOLUTION))
    original_width, original_height = original
    scale = min(width / original_width, height / original_height, 1.0)
    pixels = math.floor(original_width * scale) * math.floor(original_height * scale)
    return max(1, min(pixels, MAX_RESOLUTION))
