"""The size ladder: a fixed set of sizes, so random sizes cannot each cost a mint.

Every distinct ``<w>x<h>`` is a cache miss and a paid mint. A ladder offers a known set of
sizes ("rungs"): every configured width in every configured aspect ratio, plus explicit
``WxH`` presets. Off the ladder, the policy decides:

- ``off``: any size (within the grammar's limits) is served;
- ``snap``: a 308 to the nearest rung at or above the request in the same aspect-ratio class
  (the output fits inside its box, so asking for more never cuts the subject);
- ``strict``: a 400 listing the sizes offered.

Default widths ``160,320,480,640,768,1024,1280,1536,1920,2560``: 640/768/1024/1280/1536
are the common CSS breakpoints (Tailwind's sm..2xl, Bootstrap's md/lg), 1920 and 2560 full-HD
and QHD screens, 160..480 thumbnails and 1x phone layouts; 320, 480, 640, 768 and 1280 have
their 2x on the ladder too, so a ``srcset`` with 1x/2x candidates stays on it. Default ratios
``1:1,4:5,3:4,2:3,4:3,3:2,16:9``: square and portrait product shots, landscape and banner
crops; ``9:16`` is left out because at 2560 wide it is taller than the default 4000 limit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from proxy.errors import BadRequestError
from proxy.setting_values import LADDER_POLICIES, Ratio, Size, ladder_classes
from proxy.settings import Settings
from proxy.upstream.contract import MAX_RESOLUTION
from proxy.url.grammar import Canonical
from proxy.url.variant import Variant


@dataclass(frozen=True, slots=True)
class Ladder:
    """The sizes offered, grouped by aspect-ratio class, each group sorted smallest first.

    A class is a configured ``W:H`` ratio (a width-grid rung's height is rounded, so its
    class is the ratio it was made from) or the reduced ratio of a preset.
    """

    classes: tuple[tuple[Ratio, tuple[Size, ...]], ...]

    @classmethod
    def parse(
        cls,
        widths: str,
        ratios: str,
        presets: str,
        *,
        max_width: int | None = None,
        max_height: int | None = None,
        max_pixels: int = MAX_RESOLUTION,
    ) -> Ladder | None:
        """Build a ladder from comma-separated specs; None when it has no size at all.

        ``widths`` like ``320,640``, ``ratios`` like ``1:1,16:9``, ``presets`` like
        ``1200x630``; ``none`` (or empty) for none. Widths ``none`` turns the width grid off.
        Width-grid rungs beyond the bounds are dropped; a preset beyond them is an error.
        Raises :class:`SettingsError` naming ``PROXY_LADDER_*`` (the parsing is
        :func:`proxy.setting_values.ladder_classes`, which the settings validate with).
        """
        classes = ladder_classes(
            widths,
            ratios,
            presets,
            max_width=max_width,
            max_height=max_height,
            max_pixels=max_pixels,
        )
        return None if classes is None else cls(classes)

    @classmethod
    def from_settings(cls, settings: Settings) -> Ladder | None:
        """The ladder of ``PROXY_LADDER_*``, bounded by the size limits; None when unset."""
        return cls.parse(
            settings.ladder_widths,
            settings.ladder_ratios,
            settings.ladder_presets,
            max_width=settings.max_width,
            max_height=settings.max_height,
            max_pixels=settings.max_pixels,
        )

    @property
    def sizes(self) -> frozenset[Size]:
        return frozenset(size for _, sizes in self.classes for size in sizes)

    def allowed(self, width: int, height: int) -> bool:
        """Whether ``width`` x ``height`` is a rung."""
        return any((width, height) in sizes for _, sizes in self.classes)

    def snap(self, width: int, height: int) -> Size | None:
        """The smallest rung of the request's aspect-ratio class at least as large both ways.

        The class is the one whose ratio is nearest to ``width / height`` (on a log scale, so
        2:1 and 1:2 are equally far from 1:1). None when no rung of that class is large enough.
        """
        target = math.log(width / height)
        _, sizes = min(
            self.classes, key=lambda item: abs(math.log(item[0][0] / item[0][1]) - target)
        )
        for w, h in sizes:
            if w >= width and h >= height:
                return w, h
        return None

    def describe(self) -> str:
        """The sizes offered, by ratio, e.g. ``1:1: 160x160, 320x320; 16:9: 160x90, ...``."""
        return "; ".join(
            f"{rw}:{rh}: " + ", ".join(f"{w}x{h}" for w, h in sizes)
            for (rw, rh), sizes in self.classes
        )


def apply(ladder: Ladder | None, policy: str, variant: Variant) -> Variant | Canonical:
    """Hold ``variant`` to the ladder under ``policy`` (``off``, ``snap`` or ``strict``).

    Returns ``variant`` when it is on the ladder (or the policy is off); under ``snap``, a
    :class:`Canonical` path of the rung to redirect to. Raises :class:`BadRequestError` under
    ``strict`` off the ladder, and under ``snap`` when the request is larger than every rung
    of its class. With signed URLs, the caller signs the redirect target (keeping ``exp``).
    """
    if policy not in LADDER_POLICIES:
        raise ValueError(f"unknown ladder policy {policy!r}; expected one of {LADDER_POLICIES}")
    if ladder is None or policy == "off" or ladder.allowed(variant.width, variant.height):
        return variant
    asked = f"{variant.width}x{variant.height}"
    if policy == "strict":
        raise BadRequestError(
            f"size {asked} is not offered; sizes offered: {ladder.describe()}",
            code="size_not_offered",
        )
    snapped = ladder.snap(variant.width, variant.height)
    if snapped is None:
        raise BadRequestError(
            f"size {asked} is larger than every size offered in its aspect ratio; "
            f"sizes offered: {ladder.describe()}",
            code="size_not_offered",
        )
    width, height = snapped
    rung = dataclasses.replace(variant, width=width, height=height)
    return Canonical(rung.path, rung)


def snap_width(ladder: Ladder, width: int) -> int:
    """The smallest ladder width at least ``width``, or the largest one (for ``srcset``)."""
    widths = sorted({w for w, _ in ladder.sizes})
    for candidate in widths:
        if candidate >= width:
            return candidate
    return widths[-1]
