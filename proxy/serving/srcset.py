"""``srcset`` markup the proxy will serve as written: widths on the ladder, URLs signed.

A hand-written ``srcset`` tends to ask for sizes the proxy then redirects or refuses (off the
size ladder), or leaves URLs unsigned. These helpers build the attribute from the same rules
the proxy enforces:

- each width is snapped with :func:`proxy.ladder.snap_width` (the smallest ladder width at
  least as large, or the largest one), and the height follows the ratio as the ladder's
  rungs do; a ratio the ladder does not offer is an error while a ladder policy is on;
- background, format and fit are spelled canonically (``FFF`` → ``ffffff``, ``jpeg`` →
  ``jpg``, the default fit left out, another one as a suffix: ``640x640-cover``), so no
  candidate costs a 308;
- with a :class:`~proxy.signing.Signer`, every URL is signed (optionally with an expiry);
- ``ext="auto"``: one URL per width that answers AVIF, WebP or JPEG (PNG) by ``Accept``,
  so one ``srcset`` serves every browser its best format (no ``<picture>`` needed).

The renderer fits the image inside each box without upscaling, so with the original's size
(``original=``) the ``w`` descriptors are the widths actually delivered and boxes that would
deliver the same pixels are merged; without it they are the box widths. In store mode pad
and cover deliver exactly the box, so their descriptors are the box widths.

    >>> srcset("shoe", [300, 600], "1:1", "fff", "jpg")
    '/img/shoe/320x320/ffffff.jpg 320w, /img/shoe/640x640/ffffff.jpg 640w'
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.errors import ProxyError
from proxy.serving.negotiation import OutputSize, output_size
from proxy.settings import Settings
from proxy.url.decision import Decider, plain
from proxy.url.ladder import Ladder, snap_width
from proxy.url.signing import Signer
from proxy.url.variant import Variant

DEFAULT_WIDTHS = (320, 640, 1280)
MAX_CANDIDATES = 16
_RATIO = re.compile(r"\s*([1-9][0-9]{0,3})\s*[:/x]\s*([1-9][0-9]{0,3})\s*")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ``srcset`` entry: the URL and the width it is described with."""

    url: str
    width: int  # the w descriptor: the delivered width when the original is known
    height: int
    variant: Variant

    @property
    def descriptor(self) -> str:
        return f"{self.url} {self.width}w"


def parse_ratio(ratio: str | tuple[int, int]) -> tuple[int, int]:
    """``"4:3"`` (or ``4/3``, ``4x3``, ``(4, 3)``) as a reduced ``(4, 3)``."""
    if isinstance(ratio, tuple):
        width, height = ratio
    else:
        match = _RATIO.fullmatch(ratio)
        if match is None:
            raise ValueError(f"ratio must look like 1:1 or 4:3, got {ratio[:20]!r}")
        width, height = int(match[1]), int(match[2])
    if width < 1 or height < 1:
        raise ValueError("ratio parts must be at least 1")
    divisor = math.gcd(width, height)
    return width // divisor, height // divisor


def parse_widths(widths: str | Iterable[int]) -> list[int]:
    """``"320,640"`` or ``[320, 640]`` as a list of positive widths (1 to 16 of them)."""
    if isinstance(widths, str):
        parts = [p.strip() for p in widths.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"widths must be comma-separated numbers, got {widths[:40]!r}")
        values = [int(p) for p in parts]
    else:
        values = [int(w) for w in widths]
    if not 1 <= len(values) <= MAX_CANDIDATES:
        raise ValueError(f"give 1 to {MAX_CANDIDATES} widths")
    if any(w < 1 for w in values):
        raise ValueError("widths must be at least 1")
    return values


def candidates(
    image_id: str,
    widths: str | Iterable[int],
    ratio: str | tuple[int, int] = "1:1",
    bg: str = "ffffff",
    ext: str = "jpg",
    signer: Signer | None = None,
    *,
    settings: Settings | None = None,
    original: tuple[int, int] | None = None,
    base_url: str = "",
    ttl: float | None = None,
    now: float | None = None,
    decider: Decider[Any] | None = None,
    fit: str | None = None,
) -> list[Candidate]:
    """The candidates, smallest first. Raises ValueError when the proxy would not serve them.

    ``decider``: the proxy's decision on variant URLs (by default, the settings' own);
    ``fit``: contain, pad or cover (None: the default fit; pad and cover need store mode).
    """
    settings = settings or Settings()
    decider = decider or Decider.from_settings(settings, plain)
    rw, rh = parse_ratio(ratio)
    ladder = Ladder.from_settings(settings)
    variants: dict[tuple[int, int], Variant] = {}
    for asked in sorted(set(parse_widths(widths))):
        width = snap_width(ladder, asked) if ladder is not None else asked
        height = max(1, round(width * rh / rw))  # as the ladder makes its rungs
        if ladder is not None and settings.ladder_policy != "off":
            if not ladder.allowed(width, height):
                offered = ", ".join(f"{a}:{b}" for (a, b), _ in ladder.classes)
                raise ValueError(
                    f"{width}x{height} ({rw}:{rh}) is not on the size ladder "
                    f"(PROXY_LADDER_POLICY={settings.ladder_policy}); ratios offered: {offered}"
                )
        variant = _variant(decider, image_id, width, height, bg, ext, fit)
        variants.setdefault((variant.width, variant.height), variant)
    by_width: dict[int, Candidate] = {}
    for variant in sorted(variants.values(), key=lambda v: v.width):
        size = delivered_size(variant, original, settings)
        if size.width in by_width:
            continue  # a larger box that delivers the same pixels: the smaller one is enough
        url = base_url.rstrip("/") + variant.path
        if signer is not None:
            url = signer.sign_url(url, ttl=ttl, now=now)
        by_width[size.width] = Candidate(url, size.width, size.height, variant)
    return list(by_width.values())


def _variant(
    decider: Decider[Any],
    image_id: str,
    width: int,
    height: int,
    bg: str,
    ext: str,
    fit: str | None = None,
) -> Variant:
    """The variant the proxy serves for this candidate's URL, canonically spelled."""
    size = f"{width}x{height}" if not fit else f"{width}x{height}-{fit}"
    try:
        return decider.variant(image_id, size, f"{bg}.{ext}")
    except ProxyError as exc:
        raise ValueError(exc.message) from None


def delivered_size(
    variant: Variant, original: tuple[int, int] | None, settings: Settings
) -> OutputSize:
    """The pixel size the proxy delivers for ``variant``: the upstream's fit in redirect
    mode; in store mode the derivation's (exactly the box for pad and cover)."""
    if not settings.store_mode:
        return output_size(variant, original, autocrop=settings.autocrop)
    from proxy.variants.store_specs import variant_size  # imports pyvips: store mode only

    size = variant_size(variant, original, settings.master_max_pixels)
    if size is None:
        return OutputSize(variant.width, variant.height, exact=False)
    return OutputSize(*size, exact=True)


def srcset(
    image_id: str,
    widths: str | Iterable[int],
    ratio: str | tuple[int, int] = "1:1",
    bg: str = "ffffff",
    ext: str = "jpg",
    signer: Signer | None = None,
    *,
    settings: Settings | None = None,
    original: tuple[int, int] | None = None,
    base_url: str = "",
    ttl: float | None = None,
    fit: str | None = None,
) -> str:
    """The ``srcset`` attribute's value, e.g. ``/img/a/320x320/ffffff.jpg 320w, ...``."""
    found = candidates(
        image_id,
        widths,
        ratio,
        bg,
        ext,
        signer,
        settings=settings,
        original=original,
        base_url=base_url,
        ttl=ttl,
        fit=fit,
    )
    return ", ".join(c.descriptor for c in found)


def fallback(found: Sequence[Candidate], width: int = 1024) -> Candidate:
    """The ``src`` for browsers without ``srcset``: the largest candidate up to ``width``."""
    small = [c for c in found if c.width <= width]
    return small[-1] if small else found[0]


def img_tag(
    found: Sequence[Candidate],
    *,
    sizes: str = "100vw",
    alt: str = "",
    loading: str = "lazy",
    placeholder: Mapping[str, Any] | None = None,
) -> str:
    """``<img>`` markup for ``found``: ``srcset``, ``sizes``, a ``src`` and its box size.

    ``width``/``height`` are the fallback's, so the browser reserves the right aspect ratio
    before any byte arrives. ``placeholder`` (``{"thumbhash", "color"}``, store mode): the
    box is filled with the dominant colour until the image paints, and the ThumbHash is in
    ``data-thumbhash`` for a script to draw a blurred preview from.
    """
    if not found:
        raise ValueError("no candidates")
    src = fallback(found)
    extra: dict[str, str] = {}
    if placeholder is not None:
        if placeholder.get("color"):
            extra["style"] = f"background-color:{placeholder['color']}"
        extra["data-thumbhash"] = str(placeholder["thumbhash"])
    attrs = {
        "src": src.url,
        "srcset": ", ".join(c.descriptor for c in found),
        "sizes": sizes,
        "width": str(src.width),
        "height": str(src.height),
        "alt": alt,
        "loading": loading,
        "decoding": "async",
        **extra,
    }
    body = " ".join(f'{name}="{html.escape(value, quote=True)}"' for name, value in attrs.items())
    return f"<img {body}>"
