"""srcset helpers: the function, the CLI and GET /srcset/{id} make markup the proxy serves."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from proxy.serving.srcset import candidates, img_tag, srcset
from proxy.settings import Settings
from proxy.url.signing import Signer
from tests.cdn.conftest import AUTH, JSON, AppFactory, image_size
from tests.servers import REPO

KEY, SALT = "736563726574", "68656c6c6f"  # imgproxy's documented example pair


class ImgAttrs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.attrs = dict(attrs)


def parse_img(markup: str) -> dict[str, str | None]:
    parser = ImgAttrs()
    parser.feed(markup)
    return parser.attrs


def test_widths_snap_to_the_ladder_and_spellings_are_canonical() -> None:
    value = srcset("shoe", [300, 600, 5000, 610], "1:1", "FFF", "jpeg")
    assert value == (
        "/img/shoe/320x320/ffffff.jpg 320w, "
        "/img/shoe/640x640/ffffff.jpg 640w, "
        "/img/shoe/2560x2560/ffffff.jpg 2560w"
    )


def test_heights_follow_the_ratio_as_the_ladder_rungs_do() -> None:
    value = srcset("shoe", "480,1024", "3:2", "transparent", "webp")
    assert value == (
        "/img/shoe/480x320/transparent.webp 480w, /img/shoe/1024x683/transparent.webp 1024w"
    )


def test_with_the_originals_size_descriptors_are_the_delivered_widths() -> None:
    # A portrait original in square boxes: each output is narrower than its box, and the
    # 1280 box would deliver the 900x1200 original itself, the same pixels as nothing else.
    found = candidates("shoe", [320, 640, 1280, 2560], "1:1", original=(900, 1200))
    assert [(c.width, c.height, c.variant.width) for c in found] == [
        (240, 320, 320),
        (480, 640, 640),
        (900, 1200, 1280),  # 2560 delivers the same 900x1200: left out
    ]
    markup = parse_img(img_tag(found, sizes="(max-width: 600px) 100vw, 50vw", alt='A "mug"'))
    # src: the largest candidate delivering at most 1024 px (for browsers without srcset)
    assert markup["src"] == "/img/shoe/1280x1280/ffffff.jpg"
    assert (markup["width"], markup["height"]) == ("900", "1200")
    assert markup["alt"] == 'A "mug"' and markup["sizes"] == "(max-width: 600px) 100vw, 50vw"


def test_urls_are_signed_when_keys_are_set_and_verify() -> None:
    signer = Signer.from_hex([KEY], [SALT])
    value = srcset("shoe", [320, 640], "4:3", signer=signer, base_url="https://img.example.com")
    for candidate in value.split(", "):
        url, descriptor = candidate.split(" ")
        parts = urlsplit(url)
        assert parts.netloc == "img.example.com" and descriptor.endswith("w")
        signer.verify(parts.path, dict(parse_qsl(parts.query)), now=0)  # raises if wrong


def test_under_a_strict_ladder_an_offered_ratio_is_required() -> None:
    strict = Settings(ladder_policy="strict")
    with pytest.raises(ValueError, match=r"not on the size ladder.*ratios offered: 2:3"):
        srcset("shoe", [320], "5:4", settings=strict)
    assert srcset("shoe", [320], "5:4") == "/img/shoe/320x256/ffffff.jpg 320w"  # policy off


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"ratio": "square"}, "ratio must look like"),
        ({"widths": "320,abc"}, "comma-separated numbers"),
        ({"bg": "red"}, "background must be a hex colour"),
        ({"bg": "transparent", "ext": "jpg"}, "jpg has no transparency"),
        ({"ext": "gif"}, "format must be one of"),
    ],
)
def test_mistakes_are_refused_with_the_proxys_own_words(args: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        srcset("shoe", **{"widths": "320", **args})


def test_a_size_over_the_pixel_limit_is_refused_as_the_proxy_refuses_it() -> None:
    # Every ladder width at most 768 fits under this limit in some ratio, but not 768x768.
    low = Settings(max_pixels=500_000)
    with pytest.raises(ValueError, match="size 768x768 is over 500,000 pixels"):
        srcset("shoe", [768], "1:1", settings=low)


def test_the_cli_prints_the_attribute_and_signs_with_the_environments_keys() -> None:
    env = {
        **os.environ,
        "PROXY_SIGNING_KEY": KEY,
        "PROXY_SIGNING_SALT": SALT,
        "PROXY_PUBLIC_URL": "https://img.example.com",
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "srcset", "demo", "--widths", "300,700", "--ratio", "4:3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().split(", ")
    assert first.startswith("https://img.example.com/img/demo/320x240/ffffff.jpg?s=")
    assert second.startswith("https://img.example.com/img/demo/768x576/ffffff.jpg?s=")
    signer = Signer.from_hex([KEY], [SALT])
    url = urlsplit(first.split(" ")[0])
    signer.verify(url.path, dict(parse_qsl(url.query)), now=0)

    html = subprocess.run(
        [sys.executable, "-m", "proxy", "srcset", "demo", "--html", "--alt", "Mug"],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if not k.startswith("PROXY_SIGNING")},
        cwd=REPO,
        timeout=60,
    )
    assert html.returncode == 0, html.stderr
    assert parse_img(html.stdout)["alt"] == "Mug"

    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "srcset", "demo", "--ratio", "nope"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert bad.returncode == 2 and "ratio must look like" in bad.stderr


async def test_the_endpoint_answers_markup_whose_every_candidate_the_proxy_serves(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/srcset/demo?widths=300,600,1300&ratio=1:1&bg=fff&alt=Red+mug")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["surrogate-key"] == "img-demo"
    assert answer.headers["vary"] == "Accept"
    img = parse_img(answer.text)
    assert img["alt"] == "Red mug" and img["sizes"] == "100vw"
    assert img["srcset"] is not None
    for candidate in img["srcset"].split(", "):
        url, descriptor = candidate.split(" ")
        assert url.startswith("http://127.0.0.1:8080/img/demo/")
        served = await client.get(url)
        assert served.status_code == 302  # no 308, no 400: already canonical, on the ladder
        image = await client.get(served.headers["location"])
        assert f"{image_size(image.content)[0]}w" == descriptor  # the width really delivered


async def test_the_endpoint_speaks_json_too(client: httpx.AsyncClient) -> None:
    body = (await client.get("/srcset/demo?widths=320,640&ratio=4:3", headers=JSON)).json()
    assert body["srcset"].count("w, ") == 1
    assert [c["box"] for c in body["candidates"]] == ["320x240", "640x480"]
    assert (body["width"], body["height"]) == (640, 480)
    assert parse_img(body["html"])["src"] == body["src"]


async def test_the_endpoint_refuses_unknown_images_and_bad_input(client: httpx.AsyncClient) -> None:
    missing = await client.get("/srcset/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_image"
    bad = await client.get("/srcset/demo?ratio=wide")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_srcset"


async def test_with_signing_on_only_an_admin_gets_signed_markup(make_app: AppFactory) -> None:
    async with make_app(signing_key=(KEY,), signing_salt=(SALT,)) as (_, client):
        anonymous = await client.get("/srcset/demo")
        assert anonymous.status_code == 401
        signed = await client.get("/srcset/demo?widths=320", headers=AUTH)
        assert signed.status_code == 200
        assert signed.headers["cache-control"] == "no-store"
        url = parse_img(signed.text)["src"]
        assert url is not None and "?s=" in url
        assert (await client.get(url)).status_code == 302
