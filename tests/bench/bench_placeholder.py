"""Marketplace parts: what a placeholder, a subject box and framing cost, in CPU per call.

From the 2000x2000 product master of ``bench_derive`` (soft-edged cut-out): the placeholder
of the example presets' variants (``proxy.variants.placeholder``) from their bytes and from
the master laid out as each (no variant needed), and
ThumbHash's pure-Python encoder alone at 32 and 100 pixels a side (why ``SIDE`` is 32);
``subject_box`` on a fresh master; a framed 1600x1600 jpg against the same frame unframed.
Process CPU time per call, median of a few runs. ``python -m tests.bench bench_placeholder``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pyvips
from thash import rgba_to_thumb_hash_pure

from proxy.variants import derive, placeholder
from proxy.variants.derive import Framing
from tests.bench.bench_derive import MASTER_SIDE, master_png

ROUNDS = 15


def _cpu_ms(work: Callable[[], Any], rounds: int = ROUNDS) -> float:
    work()  # warm: first calls load codecs
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        work()
        samples.append((time.process_time() - started) * 1000)
    return statistics.median(samples)


def run() -> list[tuple[str, str, str]]:
    png = master_png()
    master = derive.decode_master(png)
    variants = {
        "1600x1600 jpg (main)": derive.derive(
            master, 1600, 1600, "pad", "ffffff", "jpg", 90, framing=Framing(0.85)
        ),
        "1200 png transparent (cutout)": derive.derive(
            master, 1200, 1200, "contain", "transparent", "png", 80, framing=Framing(1.0)
        ),
        "400x400 webp (grid)": derive.derive(
            master, 400, 400, "pad", "f5f5f5", "webp", 75, framing=Framing(0.9)
        ),
        "400x400 avif (grid)": derive.derive(
            master, 400, 400, "pad", "f5f5f5", "avif", 60, framing=Framing(0.9)
        ),
    }
    rows = [
        (
            f"marketplace: {MASTER_SIDE}x{MASTER_SIDE} master, CPU ms per call (median)",
            f"pyvips {pyvips.__version__} / libvips {pyvips.version(0)}.{pyvips.version(1)}",
            "",
        )
    ]
    for name, data in variants.items():
        ms = _cpu_ms(lambda data=data: placeholder.placeholder(data, background="ffffff"))
        rows.append((f"placeholder of a {name}", f"{ms:.1f} ms", "(no mint)"))
    layouts = {
        "1600x1600 jpg (main)": (1600, 1600, "pad", "ffffff", Framing(0.85)),
        "1200 png transparent (cutout)": (1200, 1200, "contain", "transparent", Framing(1.0)),
        "400x400 (grid)": (400, 400, "pad", "f5f5f5", Framing(0.9)),
    }
    for name, (width, height, fit, bg, framing) in layouts.items():
        ms = _cpu_ms(
            lambda w=width, h=height, f=fit, b=bg, fr=framing: placeholder.variant_placeholder(
                master, w, h, f, b, framing=fr
            )
        )
        rows.append(
            (
                f"placeholder from the master, laid out as {name}",
                f"{ms:.1f} ms",
                "(no mint, no variant)",
            )
        )
    for side in (placeholder.SIDE, 100):
        small = pyvips.Image.thumbnail_buffer(png, side, height=side)
        rgba = list(bytes(small.write_to_memory()))
        ms = _cpu_ms(lambda s=small, p=rgba: rgba_to_thumb_hash_pure(s.width, s.height, p), 5)
        rows.append((f"ThumbHash alone (thash, pure Python), {side} px a side", f"{ms:.1f} ms", ""))
    firsts = []
    for _ in range(5):
        fresh = derive.decode_master(png)
        started = time.process_time()
        derive.subject_box(fresh)
        firsts.append((time.process_time() - started) * 1000)
    ms = statistics.median(firsts)
    rows.append(("subject_box, first call on a master (then cached)", f"{ms:.1f} ms", ""))
    framed = _cpu_ms(
        lambda: derive.derive(master, 1600, 1600, "pad", "ffffff", "jpg", 90, framing=Framing(0.85))
    )
    plain = _cpu_ms(lambda: derive.derive(master, 1600, 1600, "pad", "ffffff", "jpg", 90))
    rows.append(
        (
            "1600x1600 jpg: framed (box cached) / plain pad",
            f"{framed:.1f} / {plain:.1f} ms",
            "framed <= plain + a few ms",
        )
    )
    return rows
