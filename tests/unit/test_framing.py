"""Product framing: trim to the subject's alpha box, scale it to a fill ratio, anchor it."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from proxy.errors import BadRequestError
from proxy.variants import derive
from proxy.variants.derive import (
    TRIM_ALPHA,
    Framing,
    Master,
    decode_master,
    output_size,
    place,
    subject_box,
)
from tests.engine.photos import encode

RED = (200, 30, 40)
WHITE = (255, 255, 255)


def cutout(
    size: tuple[int, int], box: tuple[int, int, int, int], *, soft: float = 0
) -> Image.Image:
    """A solid red product filling ``box`` (exclusive) on transparency."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), (*RED, 255))
    if soft:
        image.putalpha(image.getchannel("A").filter(ImageFilter.GaussianBlur(soft)))
    return image


def master_of(image: Image.Image) -> Master:
    return decode_master(encode(image, "PNG"))


@pytest.fixture(scope="module")
def wide() -> Master:
    """A 1202x802 product (wider than tall) off-centre in a 2000x1500 master."""
    return master_of(cutout((2000, 1500), (300, 500, 1502, 1302)))


@pytest.fixture(scope="module")
def tall() -> Master:
    """A 201x601 product (a bottle) in a 900x900 master."""
    return master_of(cutout((900, 900), (500, 100, 701, 701)))


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def bbox(image: Image.Image) -> tuple[int, int, int, int]:
    box = image.getchannel("A").getbbox()
    assert box is not None
    return box


def framed(master: Master, *args: object, **kwargs: object) -> Image.Image:
    return opened(derive.derive(master, *args, framing=Framing(**kwargs)))  # type: ignore[arg-type]


# --- size and fill ---------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "cover"])
@pytest.mark.parametrize("box", [(1000, 1000), (400, 400), (640, 480), (300, 900), (1600, 1600)])
def test_framed_pad_and_cover_are_exactly_the_box(
    wide: Master, fit: str, box: tuple[int, int]
) -> None:
    out = framed(wide, *box, fit, "ffffff", "png", 80, fill=0.85)
    assert out.size == box


@pytest.mark.parametrize("fill", [0.85, 0.5, 0.95, 1.0])
@pytest.mark.parametrize(("box", "binding"), [((400, 400), 0), ((500, 300), 1)])
def test_the_subjects_box_takes_the_fill_ratio(
    wide: Master, fill: float, box: tuple[int, int], binding: int
) -> None:
    # 1202x802 into 400x400: the width binds; into 500x300, the height does.
    out = framed(wide, *box, "pad", "transparent", "png", 80, fill=fill)
    left, top, right, bottom = bbox(out)
    size = (right - left, bottom - top)
    assert abs(size[binding] - fill * box[binding]) <= 2
    other = 1 - binding
    assert size[other] <= fill * box[other] + 2
    assert abs(size[other] - size[binding] * (802, 1202)[binding] / (1202, 802)[binding]) <= 2
    # centred: equal margins on both axes, within a pixel of rounding
    assert abs(left - (box[0] - right)) <= 2 and abs(top - (box[1] - bottom)) <= 2


def test_a_marketplace_frame_has_a_pure_white_border_png(wide: Master) -> None:
    out = framed(wide, 1000, 1000, "pad", "ffffff", "png", 80, fill=0.85)
    assert out.size == (1000, 1000)
    # The fill area is 850x850; the 1202x802 product scales to 850x567: 75 px left and right.
    border = _band_pixels(out, inset=75)
    assert set(border) == {WHITE}
    assert out.getpixel((500, 500)) == RED


def test_a_marketplace_frame_has_a_pure_white_border_jpg(wide: Master) -> None:
    # JPEG is lossy: the 8x8 (16x16 in chroma) blocks that touch the product ring a little;
    # the blocks of the border that are all background decode to exact white.
    out = framed(wide, 1000, 1000, "pad", "ffffff", "jpg", 90, fill=0.85)
    assert out.size == (1000, 1000) and out.mode == "RGB"
    # The product starts at 75: the band 0..63 is whole 16x16 blocks of background.
    assert set(_band_pixels(out, inset=64)) == {WHITE}
    pixel = out.getpixel((500, 500))
    assert isinstance(pixel, tuple)
    assert all(abs(a - b) <= 4 for a, b in zip(pixel, RED, strict=True))


def _band_pixels(image: Image.Image, inset: int) -> list[tuple[int, int, int]]:
    """The pixels within ``inset`` of the image's edges (the left, right, top and bottom
    bands), as RGB."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    pixels = []
    for region in (
        (0, 0, inset, height),
        (width - inset, 0, width, height),
        (0, 0, width, inset),
        (0, height - inset, width, height),
    ):
        data = rgb.crop(region).tobytes()
        pixels.extend(zip(data[0::3], data[1::3], data[2::3], strict=True))
    return pixels


def test_the_subject_is_never_upscaled_and_says_how_much_it_fills() -> None:
    small = master_of(cutout((300, 200), (100, 50, 201, 131)))  # a 101x81 product
    out = framed(small, 1000, 1000, "pad", "transparent", "png", 80, fill=0.85)
    left, top, right, bottom = bbox(out)
    assert (right - left, bottom - top) == (101, 81)  # at 1:1
    placement = place((101, 81), 1000, 1000, "pad", Framing(0.85))
    assert placement.scaled == (101, 81) and placement.fill == pytest.approx(0.101)


# --- anchors ---------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0.85, 0.7])
def test_bottom_anchor_stands_products_on_the_margin_line(
    wide: Master, tall: Master, fill: float
) -> None:
    margin = (1 - fill) / 2 * 1000
    for master in (wide, tall):
        out = framed(
            master, 1000, 1000, "pad", "transparent", "png", 80, fill=fill, anchor="bottom"
        )
        left, _, right, bottom = bbox(out)
        assert abs(bottom - (1000 - margin)) <= 2  # on the line, whatever its height
        assert abs(left - (1000 - right)) <= 2  # centred across
    # the wide product is shorter: centred, its bottom would sit higher
    centred = bbox(framed(wide, 1000, 1000, "pad", "transparent", "png", 80, fill=fill))
    assert centred[3] < 1000 - margin - 50


def test_a_small_subject_still_stands_on_the_line() -> None:
    small = master_of(cutout((300, 200), (100, 50, 201, 131)))
    out = framed(small, 1000, 1000, "pad", "transparent", "png", 80, fill=0.8, anchor="bottom")
    assert abs(bbox(out)[3] - 900) <= 2


@pytest.mark.parametrize(
    ("anchor", "edge", "expected"),
    [("top", 1, 75), ("left", 0, 75), ("right", 2, 925), ("center", 1, (1000 - 567) // 2)],
)
def test_other_anchors_put_their_edge_on_the_margin(
    wide: Master, anchor: str, edge: int, expected: int
) -> None:
    # 1202x802 scaled to 850x567 in a 1000x1000 frame; the margin is 75 px.
    out = framed(wide, 1000, 1000, "pad", "transparent", "png", 80, fill=0.85, anchor=anchor)
    assert abs(bbox(out)[edge] - expected) <= 2


# --- trimming --------------------------------------------------------------------------


def test_trimming_ignores_faint_haze_but_not_a_visible_shadow() -> None:
    image = cutout((800, 600), (300, 200, 501, 401))
    image.putpixel((10, 10), (0, 0, 0, 8))  # 3%: haze, not the product
    assert TRIM_ALPHA == 8 and subject_box(master_of(image)) == (300, 200, 501, 401)
    image.putpixel((10, 10), (0, 0, 0, 9))  # over it: kept (a soft shadow is the product's)
    assert subject_box(master_of(image)) == (10, 10, 501, 401)


def test_the_subject_box_is_found_once_per_master(wide: Master) -> None:
    first = subject_box(wide)
    assert subject_box(wide) is first
    assert first == (300, 500, 1502, 1302)


def test_an_empty_cut_out_is_framed_whole_not_refused() -> None:
    empty = master_of(Image.new("RGBA", (300, 200), (0, 0, 0, 0)))
    assert subject_box(empty) == (0, 0, 300, 200)
    out = framed(empty, 400, 400, "pad", "ffffff", "png", 80, fill=0.85)
    assert out.size == (400, 400) and out.getextrema() == ((255, 255),) * 3


def test_a_soft_edge_is_kept_not_cut() -> None:
    soft = master_of(cutout((800, 600), (300, 200, 501, 401), soft=3))
    left, top, right, bottom = subject_box(soft)
    assert (
        left < 300 and top < 200 and right > 501 and bottom > 401
    )  # the blurred edge belongs to the product
    out = framed(soft, 100, 100, "pad", "transparent", "png", 80, fill=1.0)
    alpha = out.getchannel("A")
    assert alpha.getbbox() == (0, 0, 100, 100)  # touches every edge at fill 1
    assert 0 < alpha.getpixel((0, 50)) < 128  # the soft edge survives, scaled


# --- the other fits, alpha, arguments ---------------------------------------------------


def test_contain_with_framing_is_the_trimmed_subject_and_its_margins(wide: Master) -> None:
    # fill 1: the tight crop the upstream's autocrop would make, at no credit
    tight = framed(wide, 2000, 2000, "contain", "transparent", "png", 80, fill=1.0)
    assert tight.size == (1202, 802) and bbox(tight) == (0, 0, 1202, 802)
    assert output_size((1202, 802), 2000, 2000, "contain", Framing(1.0)) == (1202, 802)
    # fill 0.8 in a 500x500 box: 1202x802 → 400x267, in a frame of 500x334
    out = framed(wide, 500, 500, "contain", "ffffff", "png", 80, fill=0.8)
    assert out.size == (500, 334) == output_size((1202, 802), 500, 500, "contain", Framing(0.8))
    assert out.getpixel((20, 167)) == WHITE and out.getpixel((250, 167)) == RED


def test_cover_with_framing_covers_the_fill_area(tall: Master) -> None:
    # 201x601 covering an 850x850 area would be scaled up: kept 1:1, centred.
    out = framed(tall, 1000, 1000, "cover", "transparent", "png", 80, fill=0.85)
    assert out.size == (1000, 1000)
    assert bbox(out) == (399, 199, 600, 800)
    # smaller than the subject: the width covers 85% and the height is cropped
    out = framed(tall, 100, 100, "cover", "transparent", "png", 80, fill=0.85)
    left, top, right, bottom = bbox(out)
    assert abs(right - left - 85) <= 1 and (top, bottom) == (0, 100)


@pytest.mark.parametrize("fmt", ["png", "webp", "avif"])
def test_framing_keeps_alpha(wide: Master, fmt: str) -> None:
    out = framed(wide, 300, 300, "pad", "transparent", fmt, 90, fill=0.85)
    assert out.mode == "RGBA" and out.size == (300, 300)
    alpha = out.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((5, 150)) == 0  # the margin
    assert alpha.getpixel((150, 150)) == 255


@pytest.mark.parametrize(
    ("framing", "message"),
    [
        (Framing(0), "fill must be above 0 and at most 1, got 0"),
        (Framing(1.5), "fill must be above 0 and at most 1, got 1.5"),
        (Framing(math.nan), "fill must be above 0"),
        (Framing("0.8"), "fill must be a number"),  # type: ignore[arg-type]
        (Framing(0.8, "middle"), "anchor must be one of center, bottom, top, left, right"),  # type: ignore[arg-type]
    ],
)
def test_bad_framing_is_a_bad_request(wide: Master, framing: Framing, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as caught:
        derive.derive(wide, 100, 100, "pad", "ffffff", "jpg", 80, framing=framing)
    assert caught.value.status_code == 400
    with pytest.raises(BadRequestError):
        place((100, 100), 100, 100, "pad", framing)


def test_a_bad_framing_costs_no_pixel_work() -> None:
    master = master_of(cutout((200, 200), (50, 50, 150, 150)))
    with pytest.raises(BadRequestError):
        derive.derive(master, 100, 100, "pad", "ffffff", "jpg", 80, framing=Framing(2))
    assert master._boxes == {}  # refused before the box was looked for


@given(
    subject=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
    box=st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
    fill=st.floats(0.05, 1.0),
    anchor=st.sampled_from(["center", "bottom", "top", "left", "right"]),
    fit=st.sampled_from(["pad", "contain", "cover"]),
)
def test_framing_arithmetic(
    subject: tuple[int, int], box: tuple[int, int], fill: float, anchor: str, fit: str
) -> None:
    placement = place(subject, *box, fit, Framing(fill, anchor))  # type: ignore[arg-type]
    (frame_w, frame_h), (sw, sh), (x, y) = placement.frame, placement.scaled, placement.offset
    if fit == "contain":
        assert 1 <= frame_w <= box[0] and 1 <= frame_h <= box[1]
    else:
        assert (frame_w, frame_h) == box
    assert sw <= subject[0] and sh <= subject[1]  # never upscaled
    area = (max(1, round(box[0] * fill)), max(1, round(box[1] * fill)))
    if fit != "cover":
        assert sw <= area[0] and sh <= area[1]  # inside the fill area...
        assert 0 <= x <= frame_w - sw and 0 <= y <= frame_h - sh  # ...and the frame
        # ...touching it on one side, unless kept at 1:1
        assert sw == area[0] or sh == area[1] or (sw, sh) == subject or 1 in (sw, sh)
    else:
        assert (sw >= area[0] and sh >= area[1]) or sw == subject[0] or sh == subject[1]
        assert min(0, frame_w - sw) <= x <= max(0, frame_w - sw)
        assert min(0, frame_h - sh) <= y <= max(0, frame_h - sh)
