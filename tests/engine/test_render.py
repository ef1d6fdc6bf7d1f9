"""What comes out: real cut-outs of a generated product photo, checked pixel by pixel."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from proxy.engine.app import create_engine_app
from proxy.engine.settings import EngineSettings
from tests.engine.conftest import API_KEY, ASGI_BASE, Engine
from tests.engine.photos import BACKGROUND, BOX, SIZE, SUBJECT, encode, label_box, photo_jpeg

FORMATS = ("png", "webp", "jpg")
BUDGET = 200_000
BLUE = (0x33, 0x66, 0xCC)
SUBJECT_WIDTH, SUBJECT_HEIGHT = BOX[2] - BOX[0], BOX[3] - BOX[1]


def variants_for(fmt: str) -> list[dict[str, Any]]:
    return [
        {"variant_name": f"{fmt}_full", "format": fmt},
        {"variant_name": f"{fmt}_budget", "format": fmt, "max_resolution": BUDGET},
        {"variant_name": f"{fmt}_crop", "format": fmt, "autocrop": True},
        {"variant_name": f"{fmt}_blue", "format": fmt, "background_color": "#3366cc"},
    ]


async def _render_all(data_dir: Path) -> dict[str, Image.Image]:
    settings = EngineSettings.from_env({}, data_dir=data_dir, public_url=ASGI_BASE, api_key=API_KEY)
    app = create_engine_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ASGI_BASE) as client:
        engine = Engine(client, settings, asyncio.sleep, "asgi")
        variants = [v for fmt in FORMATS for v in variants_for(fmt)]
        body = await engine.render(variants, photo_jpeg())
        images = {}
        for name, url in body["output_urls"].items():
            answer = await client.get(url)
            image = Image.open(io.BytesIO(answer.content))
            fmt = name.split("_")[0]
            assert image.format == {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[fmt]
            assert answer.headers["content-type"] == f"image/{'jpeg' if fmt == 'jpg' else fmt}"
            image.load()
            images[name] = image
        return images


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image.Image]:
    """Every variant of the product photo, rendered once for the module."""
    return asyncio.run(_render_all(tmp_path_factory.mktemp("render")))


def corners(image: Image.Image) -> list[Any]:
    w, h = image.size
    return [image.getpixel(p) for p in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))]


def close(pixel: Any, color: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=False))


def is_red(pixel: Any) -> bool:
    """The subject's colour, with room for lossy encoders at its edges."""
    return bool(pixel[0] - pixel[1] > 80 and pixel[0] - pixel[2] > 80)


def subject_points(scale: float = 1.0, offset: tuple[int, int] = (0, 0)) -> list[tuple[int, int]]:
    """Points well inside the subject, including the background-coloured label's centre."""
    left, top, right, bottom = BOX
    label = label_box(BOX)
    points = [
        (left + 15, (top + bottom) // 2),
        (right - 16, (top + bottom) // 2),
        ((left + right) // 2, top + 15),
        ((left + right) // 2, bottom - 16),
        ((label[0] + label[2]) // 2, (label[1] + label[3]) // 2),
    ]
    return [(int((x - offset[0]) * scale), int((y - offset[1]) * scale)) for x, y in points]


@pytest.mark.parametrize("fmt", FORMATS)
def test_pixel_budget_and_aspect_ratio(outputs: dict[str, Image.Image], fmt: str) -> None:
    width, height = outputs[f"{fmt}_budget"].size
    assert width * height <= BUDGET
    assert width * height >= 0.99 * BUDGET  # as large as the budget allows
    assert abs(width / height - SIZE[0] / SIZE[1]) < 2 / height


@pytest.mark.parametrize("fmt", FORMATS)
def test_never_upscaled(outputs: dict[str, Image.Image], fmt: str) -> None:
    assert outputs[f"{fmt}_full"].size == SIZE  # 12 MP allowed, the photo has 1.08 MP


@pytest.mark.parametrize("fmt", FORMATS)
def test_background_colour_fills_the_corners(outputs: dict[str, Image.Image], fmt: str) -> None:
    image = outputs[f"{fmt}_blue"]
    assert image.mode == "RGB"
    assert all(close(p, BLUE) for p in corners(image)), corners(image)
    for point in subject_points():
        assert close(image.getpixel(point), SUBJECT, 24) or close(
            image.getpixel(point), BACKGROUND, 24
        ), point  # the subject, label included, is never replaced by blue


def test_jpg_without_colour_is_on_white(outputs: dict[str, Image.Image]) -> None:
    image = outputs["jpg_full"]
    assert all(close(p, (255, 255, 255)) for p in corners(image)), corners(image)
    assert close(image.getpixel(subject_points()[0]), SUBJECT, 24)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_around_an_opaque_subject(outputs: dict[str, Image.Image], fmt: str) -> None:
    image = outputs[f"{fmt}_full"]
    assert image.mode == "RGBA"
    assert [p[3] for p in corners(image)] == [0, 0, 0, 0]
    alpha = image.getchannel("A")
    for point in subject_points():
        assert alpha.getpixel(point) == 255, point
    # Opaque exactly where the subject is: its box, give or take the soft edge.
    opaque = alpha.point(lambda v: 255 if v > 127 else 0).getbbox()
    assert opaque is not None
    assert all(abs(a - b) <= 2 for a, b in zip(opaque, BOX, strict=True)), opaque
    background_share = alpha.histogram()[0] / (SIZE[0] * SIZE[1])
    subject_share = 1 - SUBJECT_WIDTH * SUBJECT_HEIGHT / (SIZE[0] * SIZE[1])
    assert background_share > subject_share - 0.01


@pytest.mark.parametrize("fmt", FORMATS)
def test_autocrop_is_tight_around_the_subject(outputs: dict[str, Image.Image], fmt: str) -> None:
    image = outputs[f"{fmt}_crop"]
    width, height = image.size
    assert abs(width - SUBJECT_WIDTH) <= 4 and abs(height - SUBJECT_HEIGHT) <= 4, image.size
    # The subject reaches every edge of the crop: solid subject within 3 px of each side.
    mid_x, mid_y = width // 2, height // 2
    edges = {
        "top": [(mid_x, y) for y in range(3)],
        "bottom": [(mid_x, height - 1 - y) for y in range(3)],
        "left": [(x, mid_y) for x in range(3)],
        "right": [(width - 1 - x, mid_y) for x in range(3)],
    }
    for edge, points in edges.items():
        pixels = [image.getpixel(p) for p in points]
        solid = [p for p in pixels if fmt == "jpg" or p[3] == 255]
        assert any(is_red(p) for p in solid), (edge, pixels)


def _single(
    asgi_engine_factory: Callable[..., Engine], image: bytes, variant: dict[str, Any]
) -> Image.Image:
    async def go() -> Image.Image:
        engine = asgi_engine_factory()
        body = await engine.render([{"variant_name": "v", **variant}], image)
        answer = await engine.client.get(body["output_urls"]["v"])
        return Image.open(io.BytesIO(answer.content))

    return asyncio.run(go())


def test_exif_orientation_is_applied(asgi_engine_factory: Callable[..., Engine]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    photo = Image.new("RGB", (400, 300), BACKGROUND)
    photo.paste(SUBJECT, (100, 100, 300, 200))
    data = encode(photo, "JPEG", quality=92, exif=exif.tobytes())
    out = _single(asgi_engine_factory, data, {"format": "png"})
    assert out.size == (300, 400)


def test_an_input_alpha_channel_is_the_cut_out(asgi_engine_factory: Callable[..., Engine]) -> None:
    # Colourful "background" pixels the border method would keep; the alpha says they go.
    photo = Image.effect_noise((300, 200), 80).convert("RGB")
    alpha = Image.new("L", photo.size, 0)
    alpha.paste(255, (50, 40, 250, 160))
    alpha.paste(128, (50, 40, 70, 160))
    photo.putalpha(alpha)
    out = _single(asgi_engine_factory, encode(photo, "PNG"), {"format": "png"})
    assert out.getchannel("A").tobytes() == alpha.tobytes()


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
def test_every_quality_keeps_the_label_and_drops_the_background(
    asgi_engine_factory: Callable[..., Engine], quality: str
) -> None:
    data = photo_jpeg(size=(800, 600), box=(200, 150, 601, 451))
    out = _single(asgi_engine_factory, data, {"format": "png", "quality": quality})
    alpha = out.getchannel("A")
    assert [alpha.getpixel(p) for p in ((0, 0), (799, 0), (0, 599), (799, 599))] == [0] * 4
    assert alpha.getpixel((400, 300)) == 255  # the label, background-coloured, stays
    assert alpha.getpixel((215, 300)) == 255
