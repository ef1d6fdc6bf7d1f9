"""Best format: the bytes AVIF and WebP save against JPEG on the demo images.

The demo product photo (``proxy.images.demo.product_photo``, the image ``--demo`` registers,
and two more seeds of it) is cut out by the local engine's remover into an RGBA master,
exactly what store mode keeps; each variant is then derived by store mode's own pipeline
(``proxy.variants.derive``) at product-grid sizes, pad on white, as jpg, webp and avif:

- at the same quality setting (``Q``) for all three: the encoders' scales are not the same
  visual quality, but it is the comparison the issue asks for;
- at the server's defaults (jpg and webp at ``PROXY_OUTPUT_COMPRESSION``, avif at
  ``PROXY_AVIF_QUALITY``): what ``.auto`` actually serves;
- transparent: png (lossless) against webp and avif with alpha.

Byte counts only, no timing: the numbers are the same on every run and machine (for the
same libvips). ``python -m tests.bench bench_formats``; docs/marketplace.md records them.
"""

from __future__ import annotations

import functools
import io

import pyvips
from PIL import Image

from proxy.engine.cutout import BorderCutout
from proxy.images.demo import product_photo
from proxy.settings import Settings
from proxy.variants import derive

SEEDS = (7, 3, 11)  # 7: the demo image itself
SIZES = (320, 640, 1280)
SAME_Q = 80


@functools.cache
def master(seed: int) -> derive.Master:
    """The demo photo of ``seed`` cut out as the upstream would: an RGBA PNG master."""
    photo = Image.open(io.BytesIO(product_photo(seed=seed))).convert("RGB")
    photo.putalpha(BorderCutout().mask(photo, "medium"))
    out = io.BytesIO()
    photo.save(out, "PNG")
    return derive.decode_master(out.getvalue())


def sizes(fmt_quality: dict[str, int], bg: str, sides: tuple[int, ...] = SIZES) -> dict[str, int]:
    """Total bytes per format over every demo image at each of ``sides``."""
    masters = [master(seed) for seed in SEEDS]
    totals = dict.fromkeys(fmt_quality, 0)
    for found in masters:
        for side in sides:
            for fmt, quality in fmt_quality.items():
                data = derive.derive(found, side, side, "pad", bg, fmt, quality)  # type: ignore[arg-type]
                totals[fmt] += len(data)
    return totals


def _row(label: str, totals: dict[str, int], base: str) -> tuple[str, str, str]:
    shown = ", ".join(
        f"{fmt} {total / 1024:.0f} KiB"
        + ("" if fmt == base else f" ({(total - totals[base]) / totals[base]:+.0%})")
        for fmt, total in totals.items()
    )
    return label, shown, f"avif and webp well below {base}"


def run() -> list[tuple[str, str, str]]:
    defaults = Settings()
    q, aq = defaults.output_compression, defaults.avif_quality
    images = f"{len(SEEDS)} demo images x {', '.join(map(str, SIZES))} px squares"
    return [
        (
            f"best format: bytes saved, {images}",
            f"libvips {pyvips.version(0)}.{pyvips.version(1)}",
            "",
        ),
        _row(
            f"  same Q={SAME_Q}, on ffffff",
            sizes({"jpg": SAME_Q, "webp": SAME_Q, "avif": SAME_Q}, "ffffff"),
            "jpg",
        ),
        _row(
            f"  server defaults (jpg/webp Q={q}, avif Q={aq}), on ffffff",
            sizes({"jpg": q, "webp": q, "avif": aq}, "ffffff"),
            "jpg",
        ),
        *(
            _row(
                f"  {side}x{side} alone, server defaults, on ffffff",
                sizes({"jpg": q, "webp": q, "avif": aq}, "ffffff", (side,)),
                "jpg",
            )
            for side in SIZES
        ),
        _row(
            f"  transparent (png lossless, webp Q={q}, avif Q={aq})",
            sizes({"png": q, "webp": q, "avif": aq}, "transparent"),  # png ignores q
            "png",
        ),
    ]
