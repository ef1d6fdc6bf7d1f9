"""Placeholders: a ThumbHash that decodes to the variant's shape, and its dominant colour."""

from __future__ import annotations

import base64
import io

import pytest
import pyvips
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from thash import (
    thumb_hash_to_approximate_aspect_ratio,
    thumb_hash_to_average_rgba,
    thumb_hash_to_rgba,
)

from proxy.errors import BadRequestError
from proxy.variants import derive
from proxy.variants.derive import Framing, Master, Placement, decode_master
from proxy.variants.placeholder import (
    Placeholder,
    PlaceholderError,
    dominant_colour,
    master_placeholder,
    placeholder,
    variant_placeholder,
)
from tests.engine.photos import encode

RED = (200, 30, 40)
RED_HEX = "#c81e28"


def product(size: tuple[int, int], box: tuple[int, int, int, int]) -> Master:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), (*RED, 255))
    return decode_master(encode(image, "PNG"))


@pytest.fixture(scope="module")
def shoe() -> Master:
    return product((1200, 900), (200, 150, 1000, 750))


def _decoded(found: Placeholder) -> tuple[int, int, bytes]:
    raw = base64.b64decode(found.as_json()["thumbhash"])
    assert raw == found.thumbhash and len(raw) <= 32  # tiny: a few dozen bytes at most
    return thumb_hash_to_rgba(list(raw), base_size=64)


@pytest.mark.parametrize(
    ("box", "bg", "fmt"),
    [
        ((400, 400), "ffffff", "jpg"),
        ((640, 480), "ffffff", "jpg"),
        ((480, 640), "ffffff", "jpg"),
        ((1600, 900), "ffffff", "jpg"),
        ((900, 1600), "ffffff", "webp"),
        ((400, 400), "transparent", "png"),
        ((640, 480), "transparent", "png"),
        ((480, 640), "transparent", "webp"),
    ],
)
def test_the_hash_decodes_to_the_variants_aspect_ratio(
    shoe: Master, box: tuple[int, int], bg: str, fmt: str
) -> None:
    data = derive.derive(shoe, *box, "pad", bg, fmt, 85, framing=Framing(0.85))  # type: ignore[arg-type]
    found = placeholder(data)
    aspect = box[0] / box[1]
    assert found.as_json()["aspect"] == round(aspect, 4)  # exact, to size the box by
    width, height, _ = _decoded(found)
    assert abs(width / height - aspect) / aspect <= 0.07  # ThumbHash's steps: see below


@pytest.mark.parametrize(
    "box", [(800, 400), (400, 800), (900, 300), (1000, 200), (640, 480), (1000, 999)]
)
@pytest.mark.parametrize(("bg", "fmt"), [("ffffff", "jpg"), ("transparent", "png")])
def test_the_hashs_own_aspect_ratio_is_the_nearest_step(
    shoe: Master, box: tuple[int, int], bg: str, fmt: str
) -> None:
    """ThumbHash keeps the aspect ratio as a ratio of frequency counts: 7 (5 with alpha) on
    the long side, the short side rounded, at least 1. So 2:1 with alpha is 5:2 or 5:3,
    and the JSON's exact ``aspect`` is what sizes a box."""
    found = placeholder(derive.derive(shoe, *box, "pad", bg, fmt, 85))  # type: ignore[arg-type]
    most = 5 if bg == "transparent" else 7
    ratio = thumb_hash_to_approximate_aspect_ratio(list(found.thumbhash))
    assert ratio is not None
    short = most / ratio if ratio >= 1 else most * ratio  # the short side's count
    exact = most * min(box) / max(box)
    assert short == round(short) and abs(short - max(1.0, exact)) <= 0.5
    assert (ratio >= 1) == (box[0] >= box[1])


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif"])
def test_a_solid_products_colour_is_that_colour(shoe: Master, fmt: str) -> None:
    data = derive.derive(shoe, 600, 600, "pad", "ffffff", fmt, 90, framing=Framing(0.85))  # type: ignore[arg-type]
    colour = placeholder(data, background="ffffff").color
    assert colour is not None
    found = bytes.fromhex(colour[1:])
    tolerance = 0 if fmt == "png" else 3  # the lossy encoders shift a solid colour a little
    assert all(abs(a - b) <= tolerance for a, b in zip(found, RED, strict=True)), colour


def test_the_backdrop_does_not_win_over_a_narrow_product() -> None:
    pen = product((1000, 1000), (440, 100, 560, 900))  # 12% of the frame's width
    data = derive.derive(pen, 500, 500, "pad", "ffffff", "png", 90)
    assert placeholder(data).color == "#ffffff"  # by pixels, the white wins...
    colour = placeholder(data, background="ffffff").color  # ...not as the backdrop
    assert colour is not None  # (a few pixels wide: the shrink's ringing moves it a little)
    assert all(abs(a - b) <= 8 for a, b in zip(bytes.fromhex(colour[1:]), RED, strict=True))


def test_a_product_thinner_than_a_placeholder_pixel_comes_out_lighter() -> None:
    # 4% of the frame is ~1.3 of the 32 pixels the colour is counted on: blended with the
    # backdrop (documented), but still the product's hue, not the backdrop.
    pen = product((1000, 1000), (480, 100, 520, 900))
    data = derive.derive(pen, 500, 500, "pad", "ffffff", "png", 90)
    colour = placeholder(data, background="ffffff").color
    assert colour is not None and colour != "#ffffff"
    red, green, blue = bytes.fromhex(colour[1:])
    assert red > green + 60 and red > blue + 60


def test_only_the_backdrop_visible_gives_the_backdrop() -> None:
    empty = decode_master(encode(Image.new("RGBA", (300, 200), (0, 0, 0, 0)), "PNG"))
    data = derive.derive(empty, 300, 200, "pad", "3366cc", "png", 90)
    assert placeholder(data, background="3366cc").color == "#3366cc"


def test_a_transparent_variant_has_a_transparent_placeholder(shoe: Master) -> None:
    data = derive.derive(shoe, 600, 600, "pad", "transparent", "png", 90, framing=Framing(0.6))
    found = placeholder(data)
    assert found.color == RED_HEX  # the product's colour: transparent pixels do not count
    width, height, rgba = _decoded(found)
    alpha = rgba[3::4]
    corner, centre = alpha[0], alpha[(height // 2) * width + width // 2]
    assert corner < 64 and centre > 192  # see-through where the variant is
    assert thumb_hash_to_average_rgba(list(found.thumbhash))[3] < 0.9  # type: ignore[index]


def test_a_wholly_transparent_image_has_no_colour() -> None:
    empty = decode_master(encode(Image.new("RGBA", (300, 200), (0, 0, 0, 0)), "PNG"))
    data = derive.derive(empty, 300, 200, "contain", "transparent", "png", 90)
    found = placeholder(data)
    assert found.color is None and found.as_json()["color"] is None
    _, _, rgba = _decoded(found)
    assert max(rgba[3::4]) < 32


def test_a_master_gives_the_same_placeholder_as_its_full_size_variant(shoe: Master) -> None:
    from_master = master_placeholder(shoe)
    variant = derive.derive(shoe, 1200, 900, "contain", "transparent", "png", 90)
    from_variant = placeholder(variant)
    assert from_master.color == from_variant.color == RED_HEX
    assert from_master.aspect == from_variant.aspect == 1200 / 900
    master_rgba = _decoded(from_master)[2]
    variant_rgba = _decoded(from_variant)[2]
    assert max(abs(a - b) for a, b in zip(master_rgba, variant_rgba, strict=True)) <= 40


def test_images_of_other_kinds_get_a_placeholder() -> None:
    grey = pyvips.Image.black(300, 100).linear(1, 90).cast("uchar")
    assert placeholder(grey.pngsave_buffer()).color == "#5a5a5a"
    deep = pyvips.Image.black(120, 80, bands=3).linear(1, [257 * 200, 257 * 30, 257 * 40])
    deep = deep.cast("ushort").copy(interpretation="rgb16")
    found = placeholder(deep.pngsave_buffer(bitdepth=16))
    assert found.color == RED_HEX and found.aspect == 1.5
    tiny = placeholder(encode(Image.new("RGB", (3, 2), RED), "PNG"))  # never upscaled
    assert tiny.color == RED_HEX and _decoded(tiny)[0] > _decoded(tiny)[1]


def test_the_hash_is_the_same_for_the_same_bytes(shoe: Master) -> None:
    data = derive.derive(shoe, 300, 300, "pad", "ffffff", "jpg", 85)
    assert placeholder(data) == placeholder(data)


def test_bytes_that_do_not_decode_are_an_upstream_error() -> None:
    with pytest.raises(PlaceholderError, match="could not be decoded") as caught:
        placeholder(b"not an image")
    assert caught.value.status_code == 502 and caught.value.code == "bad_image"


def test_dominant_colour_counts_opaque_pixels_and_rings_do_not_move_it() -> None:
    def pixels(*runs: tuple[tuple[int, int, int, int], int]) -> bytes:
        return b"".join(bytes(colour) * count for colour, count in runs)

    # ringing at a shrunk edge: a few overshooting pixels next to the solid colour
    ringing = pixels(((*RED, 255), 60), ((215, 25, 35, 255), 10), ((230, 20, 30, 200), 10))
    assert dominant_colour(ringing) == RED_HEX
    # a soft edge unpremultiplied from few bits does not count when opaque pixels exist
    assert dominant_colour(pixels(((*RED, 255), 5), ((0, 0, 255, 40), 50))) == RED_HEX
    assert dominant_colour(pixels(((0, 0, 255, 40), 50))) == "#0000ff"
    assert dominant_colour(pixels(((1, 2, 3, 0), 50))) is None
    assert dominant_colour(b"") is None
    # "transparent" or no background: nothing is the backdrop
    white = pixels(((255, 255, 255, 255), 50), ((*RED, 255), 10))
    assert dominant_colour(white, "transparent") == dominant_colour(white) == "#ffffff"
    assert dominant_colour(white, "ffffff") == RED_HEX
    assert dominant_colour(pixels(((250, 250, 250, 255), 50), ((*RED, 255), 1)), "ffffff") == (
        RED_HEX
    )  # within the tolerance of the backdrop


def test_as_json_is_small_and_plain(shoe: Master) -> None:
    found = placeholder(derive.derive(shoe, 300, 200, "pad", "ffffff", "jpg", 85))
    shown = found.as_json()
    assert set(shown) == {"thumbhash", "color", "aspect"}
    assert isinstance(shown["thumbhash"], str) and len(shown["thumbhash"]) <= 44
    assert shown["aspect"] == 1.5
    image = Image.open(io.BytesIO(derive.derive(shoe, 300, 200, "pad", "ffffff", "jpg", 85)))
    assert image.size == (300, 200)


# --- from the master, without the variant -------------------------------------------------


def _close(a: Placeholder, b: Placeholder) -> bool:
    """Two placeholders that decode to the same picture, within the hash's own steps (a
    sub-pixel shift at 32 pixels moves a few 4-bit coefficients by one)."""
    first, second = _decoded(a), _decoded(b)
    differences = [abs(x - y) for x, y in zip(first[2], second[2], strict=True)]
    return first[:2] == second[:2] and sum(differences) / len(differences) <= 16


@pytest.mark.parametrize(
    ("box", "fit", "bg", "framing"),
    [
        ((600, 600), "pad", "ffffff", Framing(0.85)),
        ((1600, 1600), "pad", "ffffff", Framing(0.85)),  # the subject kept 1:1: small in it
        ((1200, 900), "pad", "f3efe8", Framing(0.8, "bottom")),
        ((400, 300), "cover", "ffffff", None),
        ((2000, 2000), "contain", "transparent", Framing(1.0)),
        ((640, 640), "pad", "transparent", None),
        ((300, 900), "contain", "3366cc", None),
    ],
)
def test_a_variants_placeholder_from_its_master_is_the_variants(
    shoe: Master, box: tuple[int, int], fit: str, bg: str, framing: Framing | None
) -> None:
    fmt = "png"
    variant = derive.derive(shoe, *box, fit, bg, fmt, 90, framing=framing)  # type: ignore[arg-type]
    from_bytes = placeholder(variant, background=bg)
    from_master = variant_placeholder(shoe, *box, fit, bg, framing=framing)  # type: ignore[arg-type]
    width, height = Image.open(io.BytesIO(variant)).size
    assert from_master.aspect == from_bytes.aspect == width / height
    assert from_master.color == from_bytes.color
    assert _close(from_master, from_bytes)


def test_the_master_layout_keeps_a_small_subject_small() -> None:
    small = product((300, 200), (100, 50, 201, 131))  # 101x81 in a 1600 frame: 6%
    found = variant_placeholder(small, 1600, 1600, "pad", "ffffff", framing=Framing(0.85))
    _, _, rgba = _decoded(found)
    assert min(rgba[:3]) >= 240  # the corner is the background, not the product
    average = thumb_hash_to_average_rgba(list(found.thumbhash))
    assert average is not None and min(average[:3]) > 0.9  # a speck of red on white
    assert found.color == RED_HEX  # yet the product's colour, not the backdrop's


def test_a_master_placeholder_is_the_cut_out(shoe: Master) -> None:
    found = master_placeholder(shoe)
    assert found.aspect == 1200 / 900 and found.color == RED_HEX
    assert _decoded(found)[2][3] < 64  # transparent around the product


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((100, 100, "pad", "fff"), "background must be rrggbb hex or transparent"),
        ((100, 100, "stretch", "ffffff"), "fit must be"),
        ((0, 100, "pad", "ffffff"), "at least 1x1"),
    ],
)
def test_a_bad_variant_is_a_bad_request(shoe: Master, args: tuple, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        variant_placeholder(shoe, *args)
    with pytest.raises(BadRequestError, match="fill must be"):
        variant_placeholder(shoe, 100, 100, "pad", "ffffff", framing=Framing(0))


@given(
    frame=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    scaled=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    side=st.integers(1, 100),
)
def test_a_shrunk_placement_keeps_its_proportions(
    frame: tuple[int, int], scaled: tuple[int, int], side: int
) -> None:
    offset = ((frame[0] - scaled[0]) // 2, (frame[1] - scaled[1]) // 2)
    small = Placement(frame, scaled, offset).shrunk(side)
    assert max(small.frame) <= max(side, 1) or small.frame == frame
    assert min(small.frame) >= 1 and min(small.scaled) >= 1
    if max(frame) <= side:
        assert small == Placement(frame, scaled, offset)
