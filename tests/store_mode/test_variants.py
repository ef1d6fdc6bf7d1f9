"""One image, 72 variants through two workers: one token, and every answer the image it says.

8 sizes (3 pad, the default fit; 3 cover; 2 contain) × 3 backgrounds × 3 formats, all
requested at once, then again after a restart on the same data directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import product_png, register
from tests.store_mode.conftest import (
    PUBLIC_URL,
    Stack,
    close,
    corner,
    fetch_all,
    hex_rgb,
    served_image,
)

pytestmark = pytest.mark.slow

IMAGE = "sku"
SIZE = (800, 600)  # product_png's: an ellipse of BLUE, its box half the frame, centred
BLUE = (20, 90, 200)
# (URL size segment, width, height, fit)
SIZES = [
    ("64x64", 64, 64, "pad"),
    ("200x120", 200, 120, "pad"),
    ("150x300", 150, 300, "pad"),
    ("240x240-cover", 240, 240, "cover"),
    ("300x100-cover", 300, 100, "cover"),
    ("100x250-cover", 100, 250, "cover"),
    ("256x256-contain", 256, 256, "contain"),
    ("120x300-contain", 120, 300, "contain"),
]
BACKGROUNDS = {
    "jpg": ("ffffff", "cc3300", "2266aa"),
    "png": ("ffffff", "cc3300", "transparent"),
    "webp": ("ffffff", "cc3300", "transparent"),
}
AVIF = [("200x200", 200, 200, "pad", "transparent"), ("240x160-cover", 240, 160, "cover", "ffffff")]
AVIF += [("256x256-contain", 256, 256, "contain", "cc3300")]


@dataclass(frozen=True)
class Asked:
    path: str
    width: int
    height: int
    fit: str
    bg: str
    ext: str


ASKED = [
    Asked(f"/img/{IMAGE}/{segment}/{bg}.{ext}", w, h, fit, bg, ext)
    for segment, w, h, fit in SIZES
    for ext, backgrounds in BACKGROUNDS.items()
    for bg in backgrounds
]


@dataclass
class FirstRound:
    minted_before: int
    answers: list[httpx.Response]


@pytest.fixture(scope="module")
def first_round(store: Stack) -> FirstRound:
    """The image registered (its upload made at the engine), then all 72 asked at once."""
    unique = store.engine.upload(product_png(*SIZE))
    register(store.url, IMAGE, unique, SIZE)
    before = store.engine.minted()
    return FirstRound(before, fetch_all(store.url, [a.path for a in ASKED]))


def problems(asked: Asked, answer: httpx.Response) -> list[str]:
    """What is wrong with one answer (empty: it is the variant asked for)."""
    try:
        image = served_image(answer, asked.ext)
    except AssertionError as error:
        return [f"{asked.path}: {error}"]
    found: list[str] = []
    width, height = image.size
    if asked.fit in ("pad", "cover"):
        if image.size != (asked.width, asked.height):
            found.append(f"{asked.path}: {image.size}, not exactly {asked.width}x{asked.height}")
    else:  # contain: inside the box, the master's 4:3 kept, touching two sides of the box
        fits = width <= asked.width and height <= asked.height
        aspect = abs(width - height * SIZE[0] / SIZE[1]) <= 1
        touches = asked.width - width <= 1 or asked.height - height <= 1
        if not (fits and aspect and touches):
            found.append(f"{asked.path}: contain gave {image.size}")
    pixel = corner(image)
    lossy = asked.ext != "png"
    if asked.bg == "transparent":
        if "A" not in image.getbands() and "transparency" not in image.info:
            found.append(f"{asked.path}: no alpha channel ({image.mode})")
        elif pixel[3] != 0:
            found.append(f"{asked.path}: corner {pixel} is not transparent")
    elif not close(pixel, (*hex_rgb(asked.bg), 255), 16 if lossy else 2):
        found.append(f"{asked.path}: corner {pixel} is not #{asked.bg}")
    centre = image.convert("RGBA").getpixel((width // 2, height // 2))
    assert isinstance(centre, tuple)
    if not close(centre, (*BLUE, 255), 40):
        found.append(f"{asked.path}: centre {centre} is not the product's blue")
    return found


def test_72_variants_at_once_mint_one_token_even_across_a_restart(
    store: Stack, first_round: FirstRound
) -> None:
    statuses = [a.status_code for a in first_round.answers]
    assert statuses == [200] * len(ASKED), statuses
    assert store.engine.minted() == first_round.minted_before + 1

    store.restart()
    again = fetch_all(store.url, [a.path for a in ASKED])
    for asked, answer in zip(ASKED, again, strict=True):
        served_image(answer, asked.ext)
    assert store.engine.minted() == first_round.minted_before + 1


def test_every_answer_is_the_format_size_and_background_asked(first_round: FirstRound) -> None:
    found = [
        problem
        for asked, answer in zip(ASKED, first_round.answers, strict=True)
        for problem in problems(asked, answer)
    ]
    assert found == []


def test_avif_variants_decode_and_keep_alpha(store: Stack, first_round: FirstRound) -> None:
    minted = store.engine.minted()
    asked = [
        Asked(f"/img/{IMAGE}/{s}/{bg}.avif", w, h, fit, bg, "avif") for s, w, h, fit, bg in AVIF
    ]
    answers = fetch_all(store.url, [a.path for a in asked])
    found = [p for a, answer in zip(asked, answers, strict=True) for p in problems(a, answer)]
    assert found == []
    assert store.engine.minted() == minted  # derived from the master, not minted


def test_etag_answers_304_and_head_has_the_same_headers(
    store: Stack, first_round: FirstRound
) -> None:
    path = f"/img/{IMAGE}/200x120/ffffff.png"
    with httpx.Client(base_url=store.url, timeout=30) as client:
        got = client.get(path)
        served_image(got, "png")
        etag = got.headers["etag"]
        assert re.fullmatch(r'"[^"]+"', etag), etag  # strong: quoted, no W/
        assert got.headers["cache-control"] == (
            "public, max-age=86400, s-maxage=31536000, stale-if-error=86400"
        )
        assert "accept" in got.headers["vary"].lower()
        assert f"img-{IMAGE}" in got.headers["surrogate-key"].split()

        same = client.get(path, headers={"If-None-Match": etag})
        assert same.status_code == 304
        assert same.content == b""
        assert same.headers["etag"] == etag
        assert same.headers["cache-control"] == got.headers["cache-control"]
        other = client.get(path, headers={"If-None-Match": '"not-this-one"'})
        assert other.status_code == 200 and other.content == got.content

        head = client.head(path)
        assert head.status_code == 200
        assert head.content == b""
        assert without_date(head.headers) == without_date(got.headers)

    # every worker, fresh connections: the same bytes under the same ETag
    answers = fetch_all(store.url, [path] * 12)
    assert {(a.headers["etag"], a.content) for a in answers} == {(etag, got.content)}


def without_date(headers: httpx.Headers) -> dict[str, str]:
    """The headers that describe the answer (not the moment, nor the request's own id)."""
    return {k: v for k, v in headers.items() if k not in ("date", "x-request-id")}


@pytest.mark.parametrize(
    ("segment", "ext", "box"),
    [("200x120", "png", (200, 120)), ("256x256-contain", "webp", None)],
)
def test_json_answer_names_the_proxys_own_url_and_exact_size(
    store: Stack, first_round: FirstRound, segment: str, ext: str, box: tuple[int, int] | None
) -> None:
    path = f"/img/{IMAGE}/{segment}/ffffff.{ext}"
    with httpx.Client(base_url=store.url, timeout=30) as client:
        image = client.get(path)
        decoded: Image.Image = served_image(image, ext)
        answer = client.get(path, headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert "accept" in answer.headers["vary"].lower()
    body = answer.json()
    assert body["url"] == PUBLIC_URL + path
    assert (body["width"], body["height"]) == (box or decoded.size)
    assert (body["width"], body["height"]) == decoded.size
    assert body["format"] == ext
    assert body["size_exact"] is True
    assert body["bytes"] == len(image.content)
    assert body["etag"] == image.headers["etag"]
    assert "expires_at" not in body
