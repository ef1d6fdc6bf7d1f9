"""Store mode's derivations: frames, backgrounds, formats, metadata, colour and the cache."""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
import pyvips
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from proxy.errors import BadRequestError
from proxy.variants import derive
from proxy.variants.derive import (
    Master,
    MasterCache,
    MasterError,
    decode_master,
    output_size,
    place,
)
from tests.engine.photos import SUBJECT, encode, png_claiming_size, product_photo

SIZE = (400, 300)
#: The subject's box in the test masters (left, top, right, bottom; exclusive).
DISC = (100, 50, 300, 250)


def cutout(
    size: tuple[int, int] = SIZE,
    colour: tuple[int, int, int] = (255, 255, 255),
    under: tuple[int, int, int] = (0, 0, 0),
    soft: float = 0,
) -> Image.Image:
    """A ``colour`` disc on transparency whose hidden colour is ``under``."""
    image = Image.new("RGBA", size, (*under, 0))
    ImageDraw.Draw(image).ellipse((DISC[0], DISC[1], DISC[2] - 1, DISC[3] - 1), (*colour, 255))
    if soft:
        image.putalpha(image.getchannel("A").filter(ImageFilter.GaussianBlur(soft)))
    return image


def product_master(size: tuple[int, int] = (600, 450)) -> Master:
    """The generated product photo, its rounded box cut out with soft edges."""
    box = (150, 100, 451, 351)
    photo = product_photo(size, box).convert("RGBA")
    alpha = Image.new("L", size, 0)
    ImageDraw.Draw(alpha).rounded_rectangle((box[0], box[1], box[2] - 1, box[3] - 1), 30, 255)
    photo.putalpha(alpha.filter(ImageFilter.GaussianBlur(2)))
    return decode_master(encode(photo, "PNG"))


@pytest.fixture(scope="module")
def master() -> Master:
    return decode_master(encode(cutout(soft=2), "PNG"))


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "cover"])
@pytest.mark.parametrize("box", [(200, 200), (640, 100), (90, 500), (1000, 800), (400, 300)])
def test_pad_and_cover_are_exactly_the_box(master: Master, fit: str, box: tuple[int, int]) -> None:
    out = opened(derive.derive(master, *box, fit, "ffffff", "png", 80))  # type: ignore[arg-type]
    assert out.size == box == output_size(master.size, *box, fit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("box", "expected"),
    [((200, 200), (200, 150)), ((100, 300), (100, 75)), ((400, 100), (133, 100))],
)
def test_contain_fits_inside_and_keeps_the_aspect_ratio(
    master: Master, box: tuple[int, int], expected: tuple[int, int]
) -> None:
    out = opened(derive.derive(master, *box, "contain", "ffffff", "jpg", 80))
    assert out.size == expected == output_size(master.size, *box, "contain")


@given(
    master_size=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
    box=st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
)
def test_frame_arithmetic(master_size: tuple[int, int], box: tuple[int, int]) -> None:
    assert output_size(master_size, *box, "pad") == box
    assert output_size(master_size, *box, "cover") == box
    width, height = output_size(master_size, *box, "contain")
    assert 1 <= width <= min(box[0], master_size[0])
    assert 1 <= height <= min(box[1], master_size[1])
    if width > 1 and height > 1:  # aspect kept within a pixel of rounding on either side
        assert abs(width / height - master_size[0] / master_size[1]) <= (
            (width + 1) / (height - 1) - (width - 1) / (height + 1)
        )
    assert width == box[0] or height == box[1] or (width, height) == master_size
    covered = place(master_size, *box, "cover")
    assert covered.scaled[0] <= max(box[0], master_size[0])  # scaled to fill, never above 1
    assert covered.scaled[0] >= min(box[0], master_size[0])
    assert covered.scaled[1] >= min(box[1], master_size[1])


@pytest.mark.parametrize(
    ("master_size", "box", "fit"),
    [
        ((997, 13), (100, 100), "contain"),
        ((1, 1000), (50, 50), "pad"),
        ((3001, 2003), (37, 29), "cover"),  # a large ratio: libvips shrinks, then reduces
        ((3001, 2003), (37, 29), "contain"),
        ((640, 480), (641, 479), "cover"),
        ((640, 480), (639, 481), "contain"),
    ],
)
def test_derived_size_is_the_computed_size(
    master_size: tuple[int, int], box: tuple[int, int], fit: str
) -> None:
    blank = pyvips.Image.black(*master_size, bands=4).cast("uchar").pngsave_buffer()
    out = opened(derive.derive(decode_master(blank), *box, fit, "ffffff", "png", 80))  # type: ignore[arg-type]
    assert out.size == output_size(master_size, *box, fit)  # type: ignore[arg-type]


def test_cover_fills_the_frame_and_crops_the_centre(master: Master) -> None:
    # A 4:1 box on a 4:3 disc master: scaled to 400 wide, the middle 100 rows kept.
    out = opened(derive.derive(master, 400, 100, "cover", "transparent", "png", 80))
    alpha = out.getchannel("A")
    assert out.size == (400, 100)
    assert alpha.getpixel((200, 0)) == 255 and alpha.getpixel((200, 99)) == 255  # cut through
    assert alpha.getpixel((0, 50)) == 0  # beside the disc


# --- never upscaled ----------------------------------------------------------------------


def test_contain_never_upscales(master: Master) -> None:
    out = opened(derive.derive(master, 1600, 1200, "contain", "ffffff", "jpg", 80))
    assert out.size == SIZE


@pytest.mark.parametrize("fit", ["pad", "cover"])
def test_pad_and_cover_keep_the_subject_at_its_size_in_a_larger_frame(
    master: Master, fit: str
) -> None:
    out = opened(derive.derive(master, 1000, 900, fit, "transparent", "png", 80))  # type: ignore[arg-type]
    assert out.size == (1000, 900)
    left, top, right, bottom = out.getchannel("A").getbbox()  # type: ignore[misc]
    master_box = derive.alpha_box(master)
    assert master_box is not None
    assert (right - left, bottom - top) == (
        master_box[2] - master_box[0],
        master_box[3] - master_box[1],
    )
    assert (left + right) // 2 == 500 and (top + bottom) // 2 == 450  # centred


def test_cover_larger_than_the_master_on_one_side_crops_the_other(master: Master) -> None:
    out = opened(derive.derive(master, 600, 100, "cover", "ff0000", "png", 80))
    assert out.size == (600, 100)
    assert out.getpixel((0, 50)) == (255, 0, 0)  # padded at the sides: not scaled up
    assert out.getpixel((300, 50)) == (255, 255, 255)  # the disc's middle rows


# --- backgrounds -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif"])
def test_pad_corner_is_the_background_colour(master: Master, fmt: str) -> None:
    out = opened(derive.derive(master, 300, 100, "pad", "3366cc", fmt, 90))  # type: ignore[arg-type]
    assert out.mode == "RGB"
    tolerance = 0 if fmt == "png" else 3  # lossy formats
    for corner in ((0, 0), (299, 0), (0, 99), (299, 99)):
        pixel = out.getpixel(corner)
        assert isinstance(pixel, tuple)
        assert all(abs(a - b) <= tolerance for a, b in zip(pixel, (0x33, 0x66, 0xCC), strict=True))


@pytest.mark.parametrize("fmt", ["png", "webp", "avif"])
@pytest.mark.parametrize("fit", ["pad", "contain", "cover"])
def test_transparent_keeps_alpha(master: Master, fmt: str, fit: str) -> None:
    out = opened(derive.derive(master, 300, 280, fit, "transparent", fmt, 90))  # type: ignore[arg-type]
    assert out.mode == "RGBA"
    alpha = out.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0
    assert alpha.getpixel((out.width // 2, out.height // 2)) == 255


def test_jpg_needs_a_colour(master: Master) -> None:
    with pytest.raises(BadRequestError, match="jpg has no transparency"):
        derive.derive(master, 100, 100, "pad", "transparent", "jpg", 80)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((100, 100, "stretch", "ffffff", "jpg", 80), "fit must be"),
        ((100, 100, "pad", "fff", "jpg", 80), "rrggbb"),
        ((100, 100, "pad", "ffffff", "gif", 80), "format must be"),
        ((100, 100, "pad", "ffffff", "jpg", 0), "quality"),
        ((0, 100, "pad", "ffffff", "jpg", 80), "at least 1x1"),
        ((5000, 5000, "pad", "ffffff", "jpg", 80), "over"),
    ],
)
def test_bad_arguments_are_bad_requests(master: Master, args: tuple, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as caught:
        derive.derive(master, *args)
    assert caught.value.status_code == 400


# --- formats and what they carry ---------------------------------------------------------

MAGIC = {
    "jpg": lambda b: b[:3] == b"\xff\xd8\xff",
    "png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
    "webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "avif": lambda b: b[4:12] in (b"ftypavif", b"ftypavis"),
}
PILLOW_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif"])
def test_formats_are_what_they_say(fmt: str) -> None:
    out = derive.derive(product_master(), 320, 320, "pad", "ffffff", fmt, 80)  # type: ignore[arg-type]
    assert MAGIC[fmt](out)
    assert opened(out).format == PILLOW_FORMATS[fmt]
    assert derive.CONTENT_TYPES[fmt].startswith("image/")


def _tagged_master() -> bytes:
    """A master carrying EXIF, XMP, a text chunk and an (sRGB) ICC profile."""
    from PIL import ImageCms, PngImagePlugin

    image = cutout(soft=2)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8298] = "(c) someone"  # Copyright
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "private note")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>private</x:xmpmeta>")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(image, "PNG", exif=exif.tobytes(), pnginfo=info, icc_profile=icc)


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append(kind)
        at += 12 + length
    return chunks


def _jpeg_markers(data: bytes) -> list[int]:
    markers, at = [], 2
    while data[at] == 0xFF and data[at + 1] != 0xDA:  # up to start of scan
        markers.append(data[at + 1])
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return markers


def _riff_chunks(data: bytes) -> list[bytes]:
    chunks, at = [], 12
    while at < len(data):
        kind, length = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        chunks.append(kind)
        at += 8 + length + (length & 1)
    return chunks


@pytest.mark.parametrize("bg", ["ffffff", "transparent"])
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif"])
def test_no_metadata_survives(fmt: str, bg: str) -> None:
    if fmt == "jpg" and bg == "transparent":
        return
    tagged = decode_master(_tagged_master())
    out = derive.derive(tagged, 200, 200, "pad", bg, fmt, 80)  # type: ignore[arg-type]
    info = opened(out).info
    assert not {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "Comment"} & set(info)
    assert b"SecretCam" not in out and b"private" not in out
    if fmt == "png":
        assert set(_png_chunks(out)) <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"pHYs"}
    elif fmt == "jpg":
        assert not {0xE1, 0xE2, 0xED, 0xFE} & set(_jpeg_markers(out))  # EXIF/XMP, ICC, IPTC, COM
    elif fmt == "webp":
        assert not {b"EXIF", b"ICCP", b"XMP "} & set(_riff_chunks(out))


def test_the_test_metadata_is_really_in_the_master() -> None:
    """The metadata test would prove nothing if the master carried none."""
    info = opened(_tagged_master()).info
    assert {"exif", "icc_profile", "Comment", "XML:com.adobe.xmp"} <= set(info)


def test_a_non_srgb_master_is_converted_to_srgb() -> None:
    # sRGB red, converted to Display P3 with that profile embedded: (234, 51, 34) in P3.
    red = pyvips.Image.black(400, 300, bands=3).linear(1, [255, 0, 0]).cast("uchar")
    p3 = red.copy(interpretation="srgb").icc_transform("p3", input_profile="srgb")
    p3_pixel = p3.getpoint(0, 0)
    assert p3_pixel[0] < 240 and p3_pixel[1] > 40  # really different numbers
    master = decode_master(p3.bandjoin(255).cast("uchar").pngsave_buffer())
    out = opened(derive.derive(master, 100, 100, "pad", "ffffff", "png", 80))
    pixel = out.getpixel((50, 50))
    assert isinstance(pixel, tuple)
    assert abs(pixel[0] - 255) <= 2 and pixel[1] <= 3 and pixel[2] <= 3


# --- resizing ----------------------------------------------------------------------------


def test_resize_is_premultiplied_no_dark_halo() -> None:
    # White subject; its transparent surround hides black. Straight-alpha resizing would
    # blend that black into the soft edge: grey on white, and grey in a transparent PNG.
    master = decode_master(encode(cutout(colour=(255, 255, 255), under=(0, 0, 0)), "PNG"))
    on_white = opened(derive.derive(master, 133, 100, "pad", "ffffff", "png", 80))
    assert min(on_white.convert("L").tobytes()) >= 253
    alone = opened(derive.derive(master, 133, 100, "pad", "transparent", "png", 80))
    pixels = alone.tobytes()
    edge = [pixels[i : i + 3] for i in range(0, len(pixels), 4) if 16 <= pixels[i + 3] < 255]
    assert edge, "no soft edge: the resize did not filter"
    assert min(min(rgb) for rgb in edge) >= 240


def test_lanczos_keeps_the_subject_sharp_and_its_colour() -> None:
    master = product_master()
    out = opened(derive.derive(master, 300, 300, "contain", "ffffff", "png", 80))
    assert out.size == (300, 225)
    pixel = out.getpixel((100, 75))  # inside the red box, off the label
    assert isinstance(pixel, tuple)
    assert all(abs(a - b) <= 12 for a, b in zip(pixel, SUBJECT, strict=True))


# --- decoding masters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(cutout(), "PNG"),
        lambda: encode(cutout().convert("LA"), "PNG"),
        lambda: encode(cutout().quantize(8, method=Image.Quantize.FASTOCTREE), "PNG"),  # tRNS
        lambda: (
            pyvips.Image.new_from_buffer(encode(cutout(), "PNG"), "")
            .cast("ushort")
            .linear(257, 0)
            .cast("ushort")
            .copy(interpretation="rgb16")
            .pngsave_buffer(bitdepth=16)
        ),
    ],
    ids=["rgba", "grey-alpha", "palette-trns", "rgba16"],
)
def test_masters_of_every_png_kind_decode_to_rgba(make: object) -> None:
    master = decode_master(make())  # type: ignore[operator]
    assert master.size == SIZE and master.nbytes == 400 * 300 * 4
    assert master.image.bands == 4 and master.image.format == "uchar"
    out = opened(derive.derive(master, 200, 150, "contain", "transparent", "png", 80))
    assert out.getpixel((100, 75)) == (255, 255, 255, 255)
    assert out.getpixel((0, 0))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image", "is not a PNG"),
        (lambda: encode(cutout().convert("RGB"), "PNG"), "no alpha"),
        (lambda: encode(cutout(), "WEBP", lossless=True), "is not a PNG"),
        (lambda: encode(product_photo().convert("RGBA"), "PNG")[:50_000], "corrupt or truncated"),
        (lambda: png_claiming_size(50_000, 50_000), "over the 12,000,000 pixel limit"),
    ],
    ids=["garbage", "rgb", "webp", "truncated", "bomb"],
)
def test_unusable_masters_are_refused(data: object, message: str) -> None:
    raw = data() if callable(data) else data
    with pytest.raises(MasterError, match=message) as caught:
        decode_master(raw)  # type: ignore[arg-type]
    assert caught.value.status_code == 502 and caught.value.code == "bad_master"


def test_alpha_box_is_the_subjects_box() -> None:
    image = cutout(soft=2)
    master = decode_master(encode(image, "PNG"))
    assert derive.alpha_box(master) == image.getchannel("A").getbbox()
    empty = decode_master(encode(Image.new("RGBA", (20, 10)), "PNG"))
    assert derive.alpha_box(empty) is None


def test_derivations_from_one_master_in_threads_agree(master: Master) -> None:
    def one(_: int) -> bytes:
        return derive.derive(master, 200, 200, "pad", "ffffff", "jpg", 80)

    with ThreadPoolExecutor(4) as pool:
        outputs = set(pool.map(one, range(16)))
    assert len(outputs) == 1


def test_derive_matches_an_independent_straight_alpha_composite() -> None:
    """At scale 1 nothing is resized: the composite must equal Pillow's, within rounding."""
    image = cutout(colour=(200, 40, 60), under=(0, 255, 0), soft=3)
    master = decode_master(encode(image, "PNG"))
    out = opened(derive.derive(master, *SIZE, "pad", "102030", "png", 80))
    expected = Image.new("RGB", SIZE, (0x10, 0x20, 0x30))
    expected.paste(image, (0, 0), image)
    diff = ImageChops.difference(out, expected).getextrema()
    assert max(high for _, high in diff) <= 2  # type: ignore[misc]


# --- the cache -------------------------------------------------------------------------


def _master(width: int, height: int) -> Master:
    return decode_master(encode(Image.new("RGBA", (width, height), (1, 2, 3, 128)), "PNG"))


def test_cache_evicts_by_bytes_least_recently_used_first() -> None:
    a, b, c = _master(100, 100), _master(100, 100), _master(50, 100)  # 40k, 40k, 20k bytes
    cache = MasterCache(max_bytes=100_000)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.nbytes == 80_000
    assert cache.get("a") is a  # a is now the most recently used
    cache.put("c", c)  # 100k: fits exactly
    assert len(cache) == 3
    cache.put("d", _master(50, 100))  # over by 20k: b, the least recently used, goes
    assert "b" not in cache and "a" in cache and "c" in cache and "d" in cache
    assert cache.nbytes == 80_000 <= cache.max_bytes


def test_cache_does_not_keep_a_master_over_the_whole_budget() -> None:
    cache = MasterCache(max_bytes=30_000)
    cache.put("big", _master(100, 100))
    assert "big" not in cache and cache.nbytes == 0


def test_cache_decodes_once_then_serves_from_memory() -> None:
    loads = []
    png = encode(cutout(), "PNG")

    def load() -> bytes:
        loads.append(1)
        return png

    cache = MasterCache(max_bytes=10_000_000)
    first = cache.get_or_decode("disc", load)
    assert cache.get_or_decode("disc", load) is first
    assert len(loads) == 1
    cache.discard("disc")
    assert cache.get_or_decode("disc", load) is not first and len(loads) == 2


def test_cache_stays_within_its_budget_under_threads() -> None:
    masters = [_master(10 * (i % 7 + 1), 10) for i in range(28)]
    cache = MasterCache(max_bytes=6_000)

    def churn(i: int) -> None:
        for j, master in enumerate(masters):
            cache.put(f"{(i + j) % 11}", master)
            cache.get(f"{j % 11}")
            assert cache.nbytes <= 6_000

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(8)))
    assert cache.nbytes == sum(m.nbytes for m in (cache.get(str(k)) for k in range(11)) if m)
