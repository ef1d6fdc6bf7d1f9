"""Named presets: the TOML file, its checks at start, and how a URL picks a preset."""

from __future__ import annotations

import ast
import dataclasses
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from proxy.envconfig import SettingsError
from proxy.errors import BadRequestError, NotFoundError
from proxy.settings import Settings
from proxy.upstream.contract import MAX_RESOLUTION
from proxy.url import presets
from proxy.url.presets import Preset, load_presets, parse_presets, resolve
from proxy.variants import derive
from proxy.variants.derive import Framing, decode_master
from tests.engine.photos import encode

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "presets.example.toml"
RED = (200, 30, 40)


# --- the shipped example -----------------------------------------------------------------


def test_the_shipped_example_loads() -> None:
    loaded = load_presets(EXAMPLE)
    assert list(loaded) == ["main", "cutout", "grid", "shelf"]
    main = loaded["main"]
    assert (main.width, main.height, main.bg, main.fill, main.format) == (
        1600,
        1600,
        "ffffff",
        0.85,
        "jpg",
    )
    assert loaded["cutout"].bg == "transparent" and loaded["cutout"].formats == ("png",)
    assert loaded["grid"].format is None and "avif" in loaded["grid"].formats
    assert loaded["shelf"].anchor == "bottom"


def test_the_example_says_it_is_an_example() -> None:
    head = EXAMPLE.read_text().split("\n[presets.", 1)[0]
    assert "EXAMPLES, NOT ANY MARKETPLACE'S RULES" in head
    assert "check the\n# current rules of each marketplace" in head


def _framing(preset: Preset) -> Framing | None:
    return None if preset.fill is None else Framing(preset.fill, preset.anchor)  # type: ignore[arg-type]


def _product_master() -> derive.Master:
    """A 1900x1400 solid product, off-centre in a 2600x2000 cut-out."""
    image = Image.new("RGBA", (2600, 2000), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((300, 400, 2199, 1799), (*RED, 255))
    return decode_master(encode(image, "PNG"))


def test_a_marketplace_preset_gives_its_size_a_white_border_and_its_fill() -> None:
    main = load_presets(EXAMPLE)["main"]
    data = derive.derive(
        _product_master(),
        main.width,
        main.height,
        main.fit,  # type: ignore[arg-type]
        main.bg,
        main.output_format("jpg"),  # type: ignore[arg-type]
        main.quality or 85,
        framing=_framing(main),
    )
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.size == (1600, 1600)
    # the product: the pixels far from white (the JPEG edge rings by a few levels only)
    grey = out.convert("L")
    product = grey.point(lambda v: 255 if v < 160 else 0).getbbox()
    assert product is not None
    left, top, right, bottom = product
    assert abs((right - left) - 0.85 * 1600) <= 2  # the wider side takes 85%
    assert abs((bottom - top) - 1360 * 1400 / 1900) <= 2  # the aspect ratio kept
    # a pure white border: every 16x16 block wholly outside the product is (255,255,255)
    rgb = out.convert("RGB")
    for region in ((0, 0, 1600, 112), (0, 1488, 1600, 1600), (0, 0, 112, 1600)):
        assert rgb.crop(region).getextrema() == ((255, 255), (255, 255), (255, 255))


def test_the_transparent_example_keeps_alpha_trimmed_to_the_product() -> None:
    cutout = load_presets(EXAMPLE)["cutout"]
    data = derive.derive(
        _product_master(),
        cutout.width,
        cutout.height,
        cutout.fit,  # type: ignore[arg-type]
        cutout.bg,
        cutout.output_format("png"),  # type: ignore[arg-type]
        80,
        framing=_framing(cutout),
    )
    out = Image.open(io.BytesIO(data))
    assert out.mode == "RGBA" and out.size == (1200, round(1400 * 1200 / 1900))
    assert out.getchannel("A").getbbox() == (0, 0, *out.size)


# --- what the file may say -------------------------------------------------------------


def test_defaults_and_spellings_are_normalised() -> None:
    loaded = parse_presets(
        """
        [presets.plain]
        size = "640x480"

        [presets.spelled]
        size = "100x100"
        bg = "#FFF"
        fill = 1
        format = "jpeg"

        [presets.clear]
        size = "100x100"
        bg = "Transparent"
        """
    )
    assert loaded["plain"] == Preset("plain", 640, 480, "pad", "ffffff", None, "center", None, None)
    spelled = loaded["spelled"]
    assert (spelled.bg, spelled.fill, spelled.format) == ("ffffff", 1.0, "jpg")
    assert isinstance(spelled.fill, float)
    assert loaded["clear"].bg == "transparent"
    with pytest.raises(TypeError):
        loaded["new"] = loaded["plain"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded["plain"].width = 1  # type: ignore[misc]


def _message(toml: str) -> str:
    with pytest.raises(SettingsError) as caught:
        parse_presets(toml)
    return str(caught.value)


NUMBER = "must be a number above 0 and at most 1, got"
SIZE = 'must be a string like "1000x1000", got'
COLOUR = "must be a colour like ffffff, or transparent, got"
QUALITY = "must be a whole number from 1 to 100, got"
KEYS = "unknown key (a preset has size, fit, bg, fill, anchor, format, quality)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("fill = 1.5", f"fill: {NUMBER} 1.5"),
        ("fill = 0", f"fill: {NUMBER} 0"),
        ("fill = -0.5", f"fill: {NUMBER} -0.5"),
        ("fill = nan", f"fill: {NUMBER} nan"),
        ("fill = inf", f"fill: {NUMBER} inf"),
        ('fill = "0.85"', f'fill: {NUMBER} "0.85"'),
        ("fill = true", f"fill: {NUMBER} true"),
        ('fit = "pad"  # and no size', 'size: missing (e.g. size = "1000x1000")'),
        ('size = "1000"', f'size: {SIZE} "1000"'),
        ("size = 1000", f"size: {SIZE} 1000"),
        ('size = "1000 x 1000"', f'size: {SIZE} "1000 x 1000"'),
        ('size = "0x100"', 'size: width and height must be at least 1, got "0x100"'),
        (
            'size = "5000x100"',
            'size: must be at most 4000x4000 (PROXY_MAX_WIDTH/HEIGHT), got "5000x100"',
        ),
        (
            'size = "4000x4000"',
            'size: must be at most 12,000,000 pixels (PROXY_MAX_PIXELS), got "4000x4000"',
        ),
        ('fit = "stretch"', 'fit: must be one of contain, pad, cover, got "stretch"'),
        ('bg = "white"', f'bg: {COLOUR} "white"'),
        ('bg = "#12345"', f'bg: {COLOUR} "#12345"'),
        ("bg = 255", f"bg: {COLOUR} 255"),
        (
            'anchor = "bottom"',
            "anchor: needs fill (the anchor places the trimmed product; "
            "fill = 1.0 trims without a margin)",
        ),
        (
            'fill = 0.8\nanchor = "middle"',
            'anchor: must be one of center, bottom, top, left, right, got "middle"',
        ),
        ('format = "gif"', 'format: must be one of jpg, png, webp, avif, got "gif"'),
        ("format = 1", "format: must be one of jpg, png, webp, avif, got 1"),
        (
            'bg = "transparent"\nformat = "jpg"',
            "format: jpg has no transparency: use png, webp or avif, "
            "or give bg a colour like ffffff",
        ),
        ("quality = 0", f"quality: {QUALITY} 0"),
        ("quality = 101", f"quality: {QUALITY} 101"),
        ("quality = 90.5", f"quality: {QUALITY} 90.5"),
        ('quality = "90"', f'quality: {QUALITY} "90"'),
        ("quality = false", f"quality: {QUALITY} false"),
        ('format = "png"\nquality = 90', "quality: png is lossless: remove quality"),
        ('colour = "ffffff"', f"colour: {KEYS}"),
        ("[presets.amazon-main.extra]\nx = 1", f"extra: {KEYS}"),
        ("dates = 2024-01-01", f"dates: {KEYS}"),
    ],
)
def test_every_bad_field_is_named_with_its_preset(body: str, message: str) -> None:
    size = "" if "size" in body else 'size = "10x10"\n'  # a valid size unless the case has one
    toml = f"[presets.amazon-main]\n{size}{body}\n"
    assert _message(toml) == f"PROXY_PRESETS_FILE: [presets.amazon-main] {message}"


NAME_RULE = (
    "the name must be 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit: "
    "it is the URL's last segment, /img/<image_id>/<name>.<ext>"
)
ONE_SIZE = '\nsize = "1x1"'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (f"[presets.Main]{ONE_SIZE}", f"[presets.Main]: {NAME_RULE}"),
        (f'[presets."main.jpg"]{ONE_SIZE}', f'[presets."main.jpg"]: {NAME_RULE}'),
        (f'[presets."a b"]{ONE_SIZE}', f'[presets."a b"]: {NAME_RULE}'),
        (f"[presets._x]{ONE_SIZE}", f"[presets._x]: {NAME_RULE}"),
        (f"[presets.{'a' * 65}]{ONE_SIZE}", f'[presets."{"a" * 64}"...]: {NAME_RULE}'),
        (
            f"[presets.640x480]{ONE_SIZE}",
            "[presets.640x480]: the name looks like a size: sizes have their own URLs "
            "(/img/<image_id>/<w>x<h>/<bg>.<ext>); pick a word",
        ),
        (f'[presets."640x480@2x"]{ONE_SIZE}', f'[presets."640x480@2x"]: {NAME_RULE}'),
        (
            "[presets]\nmain = 3",
            "[presets.main]: must be a table of size, fit, bg, fill, anchor, format, quality",
        ),
        (
            f'title = "mine"\n[presets.main]{ONE_SIZE}',
            "unknown table or key 'title': the file has only [presets.<name>] tables",
        ),
        ("", "no [presets.<name>] table: define at least one preset"),
        ("presets = 3", "no [presets.<name>] table: define at least one preset"),
        ("[presets.main\nsize = 1", "not valid TOML: "),
        (f"[presets.main]{ONE_SIZE}\n[presets.main]{ONE_SIZE}", "not valid TOML: "),
    ],
)
def test_every_bad_file_is_named(toml: str, message: str) -> None:
    found = _message(toml)
    assert found.startswith(f"PROXY_PRESETS_FILE: {message}")
    assert message.endswith(": ") or found == f"PROXY_PRESETS_FILE: {message}"


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match=rf"^PROXY_PRESETS_FILE: {missing}: cannot be read \("):
        load_presets(missing)
    binary = tmp_path / "presets.toml"
    binary.write_bytes(b"\xff\xfe[presets.main]")
    with pytest.raises(SettingsError, match=rf"^PROXY_PRESETS_FILE: {binary}: is not UTF-8 text$"):
        load_presets(binary)
    broken = tmp_path / "broken.toml"
    broken.write_text("[presets.main\n")
    with pytest.raises(SettingsError, match=rf"^PROXY_PRESETS_FILE: {broken}: not valid TOML: "):
        load_presets(broken)


def test_the_limits_are_the_callers(tmp_path: Path) -> None:
    toml = '[presets.big]\nsize = "3000x3000"\n'
    with pytest.raises(SettingsError, match=r"at most 2000x2000"):
        parse_presets(toml, max_width=2000, max_height=2000)
    with pytest.raises(SettingsError, match=r"at most 1,000,000 pixels"):
        parse_presets(toml, max_pixels=1_000_000)
    assert parse_presets(toml)["big"].size == "3000x3000"


def test_the_defaults_are_the_proxys() -> None:
    defaults = Settings()
    assert presets.MAX_WIDTH == defaults.max_width
    assert presets.MAX_HEIGHT == defaults.max_height
    assert presets.MAX_PIXELS == defaults.max_pixels == MAX_RESOLUTION


def test_the_vocabulary_is_derives() -> None:
    assert presets.FITS == derive.FITS
    assert presets.FORMATS == derive.FORMATS
    assert presets.ANCHORS == derive.ANCHORS
    assert presets.ALPHA_FORMATS == derive.ALPHA_FORMATS
    assert presets.TRANSPARENT == derive.TRANSPARENT


def test_presets_import_only_the_ground_floor() -> None:
    tree = ast.parse(Path(presets.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    ours = {name for name in imported if name and name.startswith("proxy")}
    assert ours == {"proxy.envconfig", "proxy.errors", "proxy.settings"}


# --- URLs --------------------------------------------------------------------------------

LOADED = parse_presets(
    """
    [presets.main]
    size = "1000x1000"
    fill = 0.85
    format = "jpg"

    [presets.cut]
    size = "800x800"
    bg = "transparent"

    [presets.any]
    size = "300x300"
    """
)


@pytest.mark.parametrize(
    ("filename", "preset", "fmt", "canonical"),
    [
        ("main.jpg", "main", "jpg", "main.jpg"),
        ("main.JPEG", "main", "jpg", "main.jpg"),
        ("cut.png", "cut", "png", "cut.png"),
        ("cut.avif", "cut", "avif", "cut.avif"),
        ("any.webp", "any", "webp", "any.webp"),
        ("any.jpg", "any", "jpg", "any.jpg"),
    ],
)
def test_a_url_picks_its_preset_and_format(
    filename: str, preset: str, fmt: str, canonical: str
) -> None:
    found = resolve(LOADED, filename)
    assert (found.preset.name, found.fmt, found.filename) == (preset, fmt, canonical)


@pytest.mark.parametrize(
    ("filename", "error", "code", "message"),
    [
        ("main.png", BadRequestError, "bad_format", "preset main is jpg: ask for main.jpg"),
        ("main.gif", BadRequestError, "bad_format", "format must be one of jpg, png, webp, avif"),
        (
            "cut.jpg",
            BadRequestError,
            "bad_background",
            "preset cut is transparent and jpg has no transparency: "
            "ask for cut.png, cut.webp or cut.avif",
        ),
        ("main", BadRequestError, "bad_filename", "the last segment must be <preset>.<ext>"),
        (".jpg", BadRequestError, "bad_filename", "the last segment must be <preset>.<ext>"),
        ("nope.jpg", NotFoundError, "unknown_preset", "no preset named 'nope'"),
        ("Main.jpg", NotFoundError, "unknown_preset", "no preset named 'Main'"),
    ],
)
def test_a_url_a_preset_cannot_serve_says_why(
    filename: str, error: type[Exception], code: str, message: str
) -> None:
    with pytest.raises(error) as caught:
        resolve(LOADED, filename)
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert caught.value.message.startswith(message)  # type: ignore[attr-defined]


def test_the_listing_shows_each_preset() -> None:
    assert LOADED["main"].as_json() == {
        "name": "main",
        "size": "1000x1000",
        "width": 1000,
        "height": 1000,
        "fit": "pad",
        "bg": "ffffff",
        "fill": 0.85,
        "anchor": "center",
        "format": "jpg",
        "quality": None,
        "formats": ["jpg"],
        "path": "/img/<image_id>/main.jpg",
    }
    assert LOADED["cut"].as_json()["anchor"] is None  # no framing: no anchor
    assert LOADED["cut"].path("shoe") == "/img/shoe/cut.png"
    assert LOADED["any"].path("shoe", "avif") == "/img/shoe/any.avif"
