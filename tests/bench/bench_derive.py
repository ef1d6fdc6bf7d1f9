"""Store mode's derivations: libvips (``proxy.derive``) against Pillow, side by side.

Both sides do the same work on the same 2000x2000 master (a product photo with a soft-edged
alpha cut-out): premultiplied once at decode, Lanczos3 with a reducing gap of 2 (libvips'
default; Pillow's ``reducing_gap=2.0`` is the same idea), the same frame arithmetic
(``proxy.derive.place``), a background composite or kept alpha, and the same encoder
settings (jpg/webp quality, PNG zlib level 6, WebP method 4, AVIF libaom speed 6).

Measured, interleaved so drift hits both alike: latency p50/p95 with the master decoded once
("cached") and decoded each time; process CPU time per derivation (all threads); peak memory
per derivation (VmHWM growth in a fresh process, libraries warmed up first); throughput with
two worker threads. ``python -m tests.bench bench_derive``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips
from PIL import Image, ImageChops, ImageDraw, ImageFilter, features

from proxy.variants import derive
from tests.engine.photos import product_photo

MASTER_SIDE = 2000
ROUNDS = 31  # latency samples per (library, case, mode); p95 is then the 2nd slowest
THREADED = 16  # derivations per library and round in the two-thread throughput run


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    fit: derive.Fit
    bg: str
    fmt: derive.Format
    quality: int

    def args(self) -> tuple[int, int, derive.Fit, str, derive.Format, int]:
        return self.width, self.height, self.fit, self.bg, self.fmt, self.quality


HEADLINE = Case("pad 640x640 jpg ffffff", 640, 640, "pad", "ffffff", "jpg", 85)
CASES = (
    HEADLINE,
    Case("cover 640x640 jpg ffffff", 640, 640, "cover", "ffffff", "jpg", 85),
    Case("contain 640x640 png transparent", 640, 640, "contain", "transparent", "png", 85),
    Case("pad 640x640 webp transparent", 640, 640, "pad", "transparent", "webp", 85),
    Case("pad 640x640 avif transparent", 640, 640, "pad", "transparent", "avif", 60),
)


def master_png(side: int = MASTER_SIDE) -> bytes:
    """A product cut-out: the generated product photo with its rounded box as soft alpha."""
    scale = side / 2000
    box = tuple(round(v * scale) for v in (400, 300, 1601, 1701))
    left, top, right, bottom = box
    photo = product_photo((side, side), box)  # type: ignore[arg-type]
    alpha = Image.new("L", (side, side), 0)
    radius = min(right - left, bottom - top) // 8  # the photo's own corner radius
    ImageDraw.Draw(alpha).rounded_rectangle((left, top, right - 1, bottom - 1), radius, 255)
    master = photo.convert("RGBA")
    master.putalpha(alpha.filter(ImageFilter.GaussianBlur(max(1.0, 3 * scale))))  # soft edges
    buffer = io.BytesIO()
    master.save(buffer, "PNG")
    return buffer.getvalue()


# --- the two sides ---------------------------------------------------------------------


class Vips:
    """The module under test."""

    name = "pyvips"

    @staticmethod
    def decode(png: bytes) -> Any:
        return derive.decode_master(png)

    @staticmethod
    def derive(master: Any, case: Case) -> bytes:
        return derive.derive(master, *case.args())


class Pillow:
    """The same derivation with Pillow, as well as Pillow does it."""

    name = "Pillow"

    @staticmethod
    def decode(png: bytes) -> Image.Image:
        with Image.open(io.BytesIO(png), formats=("PNG",)) as opened:
            opened.load()
            master = opened.convert("RGBA").convert("RGBa")  # premultiplied once, like derive
        master.info.clear()
        return master

    @staticmethod
    def derive(master: Image.Image, case: Case) -> bytes:
        placement = derive.place(master.size, case.width, case.height, case.fit)
        image = master
        if placement.scaled != master.size:
            image = image.resize(placement.scaled, Image.Resampling.LANCZOS, reducing_gap=2.0)
        image = image.convert("RGBA")  # unpremultiply, at the output size
        if case.bg == derive.TRANSPARENT:
            frame = Image.new("RGBA", placement.frame, (0, 0, 0, 0))
            frame.paste(image, placement.offset)
        else:
            colour = tuple(int(case.bg[i : i + 2], 16) for i in (0, 2, 4))
            frame = Image.new("RGB", placement.frame, colour)
            frame.paste(image, placement.offset, image)
        buffer = io.BytesIO()
        if case.fmt == "jpg":
            frame.save(buffer, "JPEG", quality=case.quality)
        elif case.fmt == "png":
            frame.save(buffer, "PNG", compress_level=derive.PNG_COMPRESSION)
        elif case.fmt == "webp":
            frame.save(buffer, "WEBP", quality=case.quality, method=derive.WEBP_EFFORT)
        else:
            frame.save(buffer, "AVIF", quality=case.quality, speed=9 - derive.AVIF_EFFORT)
        return buffer.getvalue()


SIDES: dict[str, Any] = {"pyvips": Vips, "Pillow": Pillow}


# --- measuring -------------------------------------------------------------------------


@dataclass
class Samples:
    wall: list[float]
    cpu: list[float]

    def p(self, q: int) -> float:
        return statistics.quantiles(self.wall, n=100, method="inclusive")[q - 1] * 1000

    @property
    def cpu_ms(self) -> float:
        return statistics.mean(self.cpu) * 1000


def _timed(samples: Samples, call: Callable[..., object], *args: object) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    call(*args)
    samples.cpu.append(time.process_time() - cpu)  # every thread: libvips and codecs spread
    samples.wall.append(time.perf_counter() - wall)


def _decode_and_derive(side: Any, png: bytes, case: Case) -> bytes:
    result: bytes = side.derive(side.decode(png), case)
    return result


def latencies(png: bytes) -> dict[tuple[str, str, str], Samples]:
    masters = {name: side.decode(png) for name, side in SIDES.items()}
    result = {
        (name, case.name, mode): Samples([], [])
        for name in SIDES
        for case in CASES
        for mode in ("cached", "decode")
    }
    decodes = {name: Samples([], []) for name in SIDES}
    for case in CASES:  # warm up codecs and thread pools
        for name, side in SIDES.items():
            side.derive(masters[name], case)
    for _ in range(ROUNDS):
        for case in CASES:
            for name, side in SIDES.items():
                _timed(result[name, case.name, "cached"], side.derive, masters[name], case)
                _timed(result[name, case.name, "decode"], _decode_and_derive, side, png, case)
        for name, side in SIDES.items():
            _timed(decodes[name], side.decode, png)
    for name in SIDES:
        result[name, "decode", "decode"] = decodes[name]
    return result


def throughput(png: bytes, case: Case) -> dict[str, float]:
    """Derivations per second with two worker threads sharing one cached master.

    The median of five interleaved rounds per library, so a burst of load elsewhere on the
    machine does not land on one side only.
    """
    masters = {name: side.decode(png) for name, side in SIDES.items()}
    rates: dict[str, list[float]] = {name: [] for name in SIDES}
    with ThreadPoolExecutor(2) as pool:
        for _ in range(5):
            for name, side in SIDES.items():
                master = masters[name]
                started = time.perf_counter()
                list(pool.map(lambda _, s=side, m=master: s.derive(m, case), range(THREADED)))
                rates[name].append(THREADED / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def agreement(png: bytes, case: Case) -> float:
    """Mean absolute difference per channel (0..255) between the two sides' outputs."""
    outputs = [
        Image.open(io.BytesIO(side.derive(side.decode(png), case))).convert("RGB")
        for side in SIDES.values()
    ]
    diff = ImageChops.difference(*outputs).convert("L")
    hist = diff.histogram()
    return sum(i * n for i, n in enumerate(hist)) / sum(hist)


def peak_memory(master_path: Path, side: str, case: Case, mode: str) -> int | None:
    """KiB the process grows by during one derivation, measured in a fresh process."""
    child = ["-m", "tests.bench.bench_derive", "peak", str(master_path), side, case.name, mode]
    out = subprocess.run(
        [sys.executable, *child],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    value: int | None = json.loads(out)["kib"]
    return value


def _peak_child(master_path: str, side_name: str, case_name: str, mode: str) -> None:
    side = SIDES[side_name]
    case = next(c for c in CASES if c.name == case_name)
    png = Path(master_path).read_bytes()
    side.derive(side.decode(master_png(200)), case)  # load codecs and start thread pools
    master = side.decode(png) if mode == "cached" else None
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        print(json.dumps({"kib": None}))
        return
    before = _status("VmRSS")
    side.derive(master if master is not None else side.decode(png), case)
    print(json.dumps({"kib": _status("VmHWM") - before}))


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text)[1])  # type: ignore[index]


# --- the table -------------------------------------------------------------------------


def versions() -> str:
    vips = ".".join(str(pyvips.version(i)) for i in range(3))
    return (
        f"pyvips {pyvips.__version__} / libvips {vips}; Pillow {Image.__version__} "
        f"(libavif {features.version('avif')}, libwebp {features.version('webp')}, "
        f"libjpeg-turbo {features.version_feature('libjpeg_turbo')})"
    )


def run() -> list[tuple[str, str, str]]:
    png = master_png()
    rows = [
        (
            f"derive: {MASTER_SIDE}x{MASTER_SIDE} RGBA master ({len(png) / 1e6:.1f} MB PNG), "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
            versions(),
            "",
        )
    ]
    samples = latencies(png)

    def pair(case: str, mode: str) -> str:
        v, p = samples["pyvips", case, mode], samples["Pillow", case, mode]
        return (
            f"pyvips {v.p(50):.1f}/{v.p(95):.1f} ms (cpu {v.cpu_ms:.0f}), "
            f"Pillow {p.p(50):.1f}/{p.p(95):.1f} ms (cpu {p.cpu_ms:.0f}): "
            f"{p.p(50) / v.p(50):.1f}x"
        )

    target = "pyvips <= Pillow (proxy.derive uses pyvips)"
    rows.append(("  decode master only, p50/p95", pair("decode", "decode"), target))
    for case in CASES:
        for mode, label in (("cached", "master cached"), ("decode", "decoded each time")):
            rows.append((f"  {case.name}, {label}, p50/p95", pair(case.name, mode), target))
    rates = throughput(png, HEADLINE)
    rows.append(
        (
            f"  {HEADLINE.name}, master cached, 2 threads",
            f"pyvips {rates['pyvips']:.0f}/s, Pillow {rates['Pillow']:.0f}/s",
            "",
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "master.png"
        path.write_bytes(png)
        memory = [(HEADLINE, "decode"), *((case, "cached") for case in CASES)]
        for case, mode in memory:
            kib = {name: peak_memory(path, name, case, mode) for name in SIDES}
            shown = ", ".join(
                f"{name} {'n/a' if k is None else f'{k / 1024:.0f} MiB'}" for name, k in kib.items()
            )
            label = "decoded each time" if mode == "decode" else "master cached"
            rows.append((f"  peak memory growth: {case.name}, {label}", shown, ""))
    rows.append(
        (
            f"  pyvips vs Pillow output, {HEADLINE.name}: mean abs difference per channel",
            f"{agreement(png, HEADLINE):.2f} / 255",
            "< 1: the same work",
        )
    )
    rows.append(
        (
            "  decoded master in memory (the cache's unit)",
            f"{4 * MASTER_SIDE**2 / 2**20:.0f} MiB",
            "",
        )
    )
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["peak"]:
        _peak_child(*sys.argv[2:6])
