"""Issue 17 over HTTP: named presets with product framing, ``.auto`` by Accept, placeholders.

The app in process with its embedded engine (``store_rig``), a presets file written per test;
what is served is decoded with Pillow, what is paid is the engine's own token count.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from thash import thumb_hash_to_approximate_aspect_ratio, thumb_hash_to_rgba

from proxy.url.signing import Signer
from tests.ops.conftest import JsonLines, scrape
from tests.serving.conftest import AUTH, MakeRig, Rig, photo

PRESETS = """
[presets.main]
size = "400x400"
bg = "ffffff"
fill = 0.85
format = "jpg"
quality = 90

[presets.shelf]
size = "600x400"
bg = "f3efe8"
fill = 0.8
anchor = "bottom"

[presets.cutout]
size = "300x300"
fit = "contain"
bg = "transparent"
fill = 1.0
format = "png"

[presets.plain]
size = "333x333"
fit = "contain"
bg = "ffffff"
"""

AVIF, WEBP, JPEG = "image/avif,image/webp,*/*", "image/webp,*/*", "image/png,image/*,*/*"


def product(
    size: tuple[int, int] = (1600, 1200), box: tuple[int, int, int, int] | None = None
) -> bytes:
    """A product shot: a blue box on a light studio background (nothing else on it)."""
    image = Image.new("RGB", size, (238, 238, 236))
    w, h = size
    left, top, right, bottom = box or (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    ImageDraw.Draw(image).rectangle((left, top, right - 1, bottom - 1), fill=(30, 90, 200))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def decoded(answer: httpx.Response) -> Image.Image:
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    return image


def subject_bbox(image: Image.Image) -> tuple[int, int, int, int]:
    """The box of the pixels that are clearly not the background (the blue product)."""
    grey = image.convert("RGB").point(lambda v: 255 if v < 160 else 0).convert("L")
    box = grey.getbbox()
    assert box is not None
    return box


@pytest.fixture
def presets_file(tmp_path: Path) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(PRESETS)
    return path


# --- presets ------------------------------------------------------------------------------


async def test_a_marketplace_preset_is_its_size_on_pure_white_filled_to_its_ratio(
    store_rig: MakeRig, presets_file: Path
) -> None:
    async with store_rig(presets_file=presets_file) as rig:
        await rig.upload("shoe", product())
        before = await rig.minted()
        answer = await rig.client.get("/img/shoe/main.jpg")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg"
        image = decoded(answer).convert("RGB")
        assert image.size == (400, 400)
        # The subject's box takes 85% of the frame on its larger side (800x600 -> 340x255).
        left, top, right, bottom = subject_bbox(image)
        assert abs(max(right - left, bottom - top) - 0.85 * 400) <= 2
        assert abs((right - left) - 340) <= 2 and abs((bottom - top) - 255) <= 2
        # A border region, a band of the margin clear of the subject, is pure white.
        margin = round(400 * 0.15 / 2) - 8  # 22 px, away from the product's edge
        band = [
            image.getpixel((x, y))
            for x in range(400)
            for y in range(400)
            if min(x, y, 399 - x, 399 - y) < margin
        ]
        assert set(band) == {(255, 255, 255)}
        assert await rig.minted() == before  # the upload carried the master: derived


async def test_anchor_bottom_stands_the_product_on_the_margin_line(
    store_rig: MakeRig, presets_file: Path
) -> None:
    async with store_rig(presets_file=presets_file) as rig:
        await rig.upload("tall", product((1200, 1600), (500, 200, 700, 1400)))
        await rig.upload("short", product((1200, 1600), (300, 900, 900, 1300)))
        bottoms = []
        for image_id in ("tall", "short"):
            answer = await rig.client.get(f"/img/{image_id}/shelf.png")
            assert answer.status_code == 200, answer.text
            image = decoded(answer)
            assert image.size == (600, 400)
            bottoms.append(subject_bbox(image)[3])
        margin = round(400 * 0.2 / 2)
        assert all(abs(bottom - (400 - margin)) <= 2 for bottom in bottoms)


async def test_preset_urls_have_one_spelling_and_clear_errors(
    store_rig: MakeRig, presets_file: Path
) -> None:
    async with store_rig(presets_file=presets_file) as rig:
        await rig.upload("shoe", product((800, 600)))
        moved = await rig.client.get("/img/shoe/main.JPEG")
        assert moved.status_code == 308 and moved.headers["location"] == "/img/shoe/main.jpg"
        wrong = await rig.client.get("/img/shoe/main.png")
        assert wrong.status_code == 400
        assert wrong.json()["error"] == "bad_format" and "main.jpg" in wrong.json()["message"]
        unknown = await rig.client.get("/img/shoe/nope.jpg")
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_preset"
        alpha = await rig.client.get("/img/shoe/cutout.png")
        assert alpha.status_code == 200 and decoded(alpha).mode == "RGBA"
        # A transparent trimmed cut-out: the product touches the frame (fill 1.0, contain).
        assert decoded(alpha).getchannel("A").getbbox() == (0, 0, *decoded(alpha).size)
        # A size still means a size: two segments are a preset, three a size.
        assert (await rig.client.get("/img/shoe/400x400/ffffff.jpg")).status_code == 200


async def test_presets_are_listed_and_json_describes_them(
    store_rig: MakeRig, presets_file: Path
) -> None:
    async with store_rig(presets_file=presets_file) as rig:
        listing = (await rig.client.get("/presets")).json()
        assert [p["name"] for p in listing["presets"]] == ["main", "shelf", "cutout", "plain"]
        main = listing["presets"][0]
        assert main["size"] == "400x400" and main["fill"] == 0.85 and main["available"]
        assert main["path"] == "/img/<image_id>/main.jpg"
        await rig.upload("shoe", product((800, 600)))
        body = (
            await rig.client.get("/img/shoe/main.jpg", headers={"Accept": "application/json"})
        ).json()
        assert body["url"].endswith("/img/shoe/main.jpg") and body["format"] == "jpg"
        assert (body["width"], body["height"]) == (400, 400)


async def test_a_preset_warms_up_and_is_signed_like_any_url(
    store_rig: MakeRig, presets_file: Path
) -> None:
    key = "ab" * 16
    async with store_rig(
        presets_file=presets_file, signing_key=(key,), signing_salt=("cd" * 16,)
    ) as rig:
        await rig.upload("shoe", product((800, 600)))
        warmed = await rig.client.post(
            "/images/shoe/warm", json={"presets": ["main", "shelf"], "ext": "auto"}, headers=AUTH
        )
        assert warmed.status_code == 400  # main is jpg only: auto is refused with its URL
        warmed = await rig.client.post(
            "/images/shoe/warm", json={"presets": ["main", "shelf"]}, headers=AUTH
        )
        assert warmed.status_code == 200, warmed.text
        assert sorted(warmed.json()["rendered"]) == ["/img/shoe/main.jpg", "/img/shoe/shelf.jpg"]
        assert (await rig.client.get("/img/shoe/main.jpg")).status_code == 403
        signer = Signer.from_settings(rig.app.services.settings)  # type: ignore[attr-defined]
        assert signer is not None
        signed = await rig.client.get(signer.sign_url("/img/shoe/main.jpg"))
        assert signed.status_code == 200 and signed.headers["content-type"] == "image/jpeg"


async def test_redirect_mode_serves_what_the_upstream_can_and_refuses_the_rest(
    store_rig: MakeRig, presets_file: Path
) -> None:
    # A strict ladder: the preset's 333x333 is off it, and served all the same (the
    # operator chose it); sizes off it are still refused.
    async with store_rig(mode="redirect", presets_file=presets_file, ladder_policy="strict") as rig:
        await rig.upload("shoe", product((800, 600)))
        framed = await rig.client.get("/img/shoe/main.jpg")
        assert framed.status_code == 400
        assert framed.json()["error"] == "preset_needs_store_mode"
        plain = await rig.client.get("/img/shoe/plain.webp")
        assert plain.status_code == 302, plain.text  # contain, no framing: the upstream can
        off = await rig.client.get("/img/shoe/333x333/ffffff.webp")
        assert off.status_code == 400
        # A warm-up of the preset and a size in one token: two names, two outputs.
        warmed = await rig.client.post(
            "/images/shoe/warm",
            json={"presets": ["plain"], "sizes": ["320x320"], "ext": "jpg"},
            headers=AUTH,
        )
        assert warmed.status_code == 200, warmed.text
        assert warmed.json()["tokens"] == 1 and len(warmed.json()["rendered"]) == 2
        listing = (await rig.client.get("/presets")).json()["presets"]
        assert {p["name"]: p["available"] for p in listing} == {
            "main": False,
            "shelf": False,
            "cutout": False,
            "plain": True,
        }


# --- auto ---------------------------------------------------------------------------------


async def test_auto_answers_avif_webp_or_jpeg_by_accept(rig: Rig) -> None:
    await rig.upload("shoe", product((800, 600)))
    url = "/img/shoe/320x320/ffffff.auto"
    answers = {
        accept: await rig.client.get(url, headers={"Accept": accept})
        for accept in (AVIF, WEBP, JPEG)
    }
    kinds = {accept: a.headers["content-type"] for accept, a in answers.items()}
    assert kinds == {AVIF: "image/avif", WEBP: "image/webp", JPEG: "image/jpeg"}
    assert {a.headers["vary"] for a in answers.values()} == {"Accept"}
    assert len({a.headers["etag"] for a in answers.values()}) == 3
    formats = {accept: decoded(a).format for accept, a in answers.items()}
    assert formats == {AVIF: "AVIF", WEBP: "WEBP", JPEG: "JPEG"}
    # The same bytes as the format's own URL: one derivation, one ETag per format.
    webp = await rig.client.get("/img/shoe/320x320/ffffff.webp")
    assert webp.headers["etag"] == answers[WEBP].headers["etag"]
    # A 304 by the format's ETag, for the Accept that chose it.
    again = await rig.client.get(
        url, headers={"Accept": WEBP, "If-None-Match": answers[WEBP].headers["etag"]}
    )
    assert again.status_code == 304
    # An app names the formats it decodes beside JSON: the JSON of that format.
    described = await rig.client.get(url, headers={"Accept": "application/json, image/webp"})
    body = described.json()
    assert body["format"] == "webp" and body["etag"] == answers[WEBP].headers["etag"]
    assert body["url"].endswith("/img/shoe/320x320/ffffff.webp")


async def test_transparent_auto_keeps_alpha_where_accepted_else_png(rig: Rig) -> None:
    await rig.upload("shoe", product((800, 600)))
    url = "/img/shoe/320x320/transparent.auto"
    for accept, kind in ((AVIF, "image/avif"), (WEBP, "image/webp"), (JPEG, "image/png")):
        answer = await rig.client.get(url, headers={"Accept": accept})
        assert answer.headers["content-type"] == kind
        assert decoded(answer).mode == "RGBA"
    body = (
        await rig.client.get(url, headers={"Accept": "application/json"})
    ).json()  # JSON names no image type: what a browser with none would get
    assert body["format"] == "png" and body["url"].endswith("/transparent.png")


async def test_redirect_mode_auto_picks_webp_or_jpg(store_rig: MakeRig) -> None:
    async with store_rig(mode="redirect") as rig:
        await rig.upload("shoe", product((800, 600)))
        url = "/img/shoe/320x320/ffffff.auto"
        webp = await rig.client.get(url, headers={"Accept": AVIF})  # no avif upstream
        jpg = await rig.client.get(url, headers={"Accept": JPEG})
        assert webp.status_code == jpg.status_code == 302
        assert webp.headers["location"] != jpg.headers["location"]
        assert webp.headers["vary"] == "Accept"
        kinds = [
            (await rig.client.get(a.headers["location"])).headers["content-type"]
            for a in (webp, jpg)
        ]
        assert kinds == ["image/webp", "image/jpeg"]


# --- placeholders -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "bg"), [("800x400", "ffffff"), ("300x600", "transparent")])
async def test_the_json_placeholder_decodes_to_the_variants_aspect_ratio(
    rig: Rig, size: str, bg: str
) -> None:
    await rig.upload("shoe", product((800, 600)))
    before = await rig.minted()
    ext = "jpg" if bg != "transparent" else "png"
    body = (
        await rig.client.get(f"/img/shoe/{size}/{bg}.{ext}", headers={"Accept": "application/json"})
    ).json()
    shown = body["placeholder"]
    aspect = body["width"] / body["height"]
    assert shown["aspect"] == round(aspect, 4)  # exact: what an app sizes the box by
    # The hash decodes to the variant's orientation and its nearest ThumbHash step: 7
    # frequencies on the long side (5 with alpha), the short side rounded.
    hashed = list(base64.b64decode(shown["thumbhash"]))
    width, height, _rgba = thumb_hash_to_rgba(hashed)
    assert (width >= height) == (aspect >= 1)
    ratio = thumb_hash_to_approximate_aspect_ratio(hashed)
    most = 5 if bg == "transparent" else 7
    short = most / ratio if ratio >= 1 else most * ratio
    assert abs(short - most * min(aspect, 1 / aspect)) <= 0.5
    colour = bytes.fromhex(shown["color"][1:])  # the product's blue, not the background
    assert all(abs(a - b) <= 4 for a, b in zip(colour, (30, 90, 200), strict=True)), colour
    assert await rig.minted() == before  # no mint for a placeholder


# --- srcset ---------------------------------------------------------------------------------


async def test_srcset_knows_auto_and_emits_placeholders_without_a_mint(rig: Rig) -> None:
    await rig.upload("shoe", product((800, 600)))
    before = await rig.minted()
    answer = await rig.client.get(
        "/srcset/shoe",
        params={"widths": "320,640", "ext": "auto", "placeholder": "1"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [c["url"].rsplit("/", 2)[1:] for c in body["candidates"]] == [
        ["320x320", "ffffff.auto"],
        ["640x640", "ffffff.auto"],
    ]
    shown = body["placeholder"]
    assert shown["aspect"] == 1.0 and shown["color"].startswith("#")
    assert f'data-thumbhash="{shown["thumbhash"]}"' in body["html"]
    assert f"background-color:{shown['color']}" in body["html"]
    # Each candidate answers the browser's best format.
    path = body["candidates"][0]["url"].removeprefix("http://127.0.0.1:8080")
    webp = await rig.client.get(path, headers={"Accept": WEBP})
    assert webp.headers["content-type"] == "image/webp"
    assert await rig.minted() == before


async def test_srcset_placeholders_never_mint_a_master(store_rig: MakeRig) -> None:
    async with store_rig() as rig:
        uploaded = await rig.upload("shoe", product((800, 600)))
        await rig.register("twin", uploaded)  # no original kept here: no master either
        before = await rig.minted()
        body = (
            await rig.client.get(
                "/srcset/twin",
                params={"widths": "320", "placeholder": "1"},
                headers={"Accept": "application/json"},
            )
        ).json()
        assert body["placeholder"] is None and "data-thumbhash" not in body["html"]
        assert await rig.minted() == before


# --- framing from URLs ----------------------------------------------------------------------


async def test_framing_from_a_url_is_the_presets_framing_spelled_once(
    store_rig: MakeRig, presets_file: Path
) -> None:
    async with store_rig(presets_file=presets_file) as rig:
        await rig.upload("shoe", product())
        url = "/img/shoe/600x400-f80-bottom/f3efe8.png"
        framed = await rig.client.get(url)
        preset = await rig.client.get("/img/shoe/shelf.png")
        assert framed.status_code == preset.status_code == 200, framed.text
        assert framed.headers["etag"] == preset.headers["etag"]  # the same derivation
        for other in (
            "/img/shoe/600x400-F80-bottom/f3efe8.png",
            "/img/shoe/600x400-f080-BOTTOM/f3efe8.png",
        ):
            moved = await rig.client.get(other)
            assert moved.status_code == 308 and moved.headers["location"] == url
        centred = await rig.client.get("/img/shoe/400x400-f85-center/ffffff.png")
        assert centred.status_code == 308
        assert centred.headers["location"] == "/img/shoe/400x400-f85/ffffff.png"
        image = decoded(await rig.client.get("/img/shoe/400x400-f85/ffffff.png"))
        left, top, right, bottom = subject_bbox(image)
        assert abs(max(right - left, bottom - top) - 340) <= 2
        for bad, code in (
            ("/img/shoe/400x400-f0/ffffff.png", "bad_fill"),
            ("/img/shoe/400x400-f101/ffffff.png", "bad_fill"),
            ("/img/shoe/400x400-f85-middle/ffffff.png", "bad_anchor"),
        ):
            refused = await rig.client.get(bad)
            assert (refused.status_code, refused.json()["error"]) == (400, code), bad


async def test_redirect_mode_refuses_framing_urls(store_rig: MakeRig) -> None:
    async with store_rig(mode="redirect") as rig:
        refused = await rig.client.get("/img/shoe/400x400-f85/ffffff.jpg")
        assert refused.status_code == 400
        assert refused.json()["error"] == "framing_needs_store_mode"


async def test_a_preset_and_its_size_share_a_token_under_their_own_names(
    store_rig: MakeRig, presets_file: Path
) -> None:
    async with store_rig(mode="redirect", presets_file=presets_file) as rig:
        await rig.upload("shoe", product((800, 600)))
        warmed = await rig.client.post(
            "/images/shoe/warm",
            json={"presets": ["plain"], "sizes": ["333x333"], "ext": "jpg"},
            headers=AUTH,
        )
        assert warmed.status_code == 200, warmed.text
        assert sorted(warmed.json()["rendered"]) == [
            "/img/shoe/333x333/ffffff.jpg",
            "/img/shoe/plain.jpg",
        ]
        for path in warmed.json()["rendered"]:
            answer = await rig.client.get(path)
            assert answer.status_code == 302
            assert (await rig.client.get(answer.headers["location"])).status_code == 200


async def test_a_warm_up_frames_its_sizes_with_the_fit_in_its_place(rig: Rig) -> None:
    await rig.upload("shoe", product((800, 600)))
    warmed = await rig.client.post(
        "/images/shoe/warm",
        json={"sizes": ["400x400-f85", "200x200-f90-bottom@2x"], "fit": "cover", "ext": "png"},
        headers=AUTH,
    )
    assert warmed.status_code == 200, warmed.text
    assert sorted(warmed.json()["rendered"]) == [
        "/img/shoe/400x400-cover-f85/ffffff.png",
        "/img/shoe/400x400-cover-f90-bottom/ffffff.png",
    ]


async def test_a_presets_memory_hit_is_logged_and_counted_under_the_preset_route(
    store_rig: MakeRig, presets_file: Path, log_lines: JsonLines
) -> None:
    async with store_rig(presets_file=presets_file) as rig:
        await rig.upload("mug", photo())
        assert (await rig.client.get("/img/mug/main.jpg")).status_code == 200  # derived
        log_lines.lines.clear()
        assert (await rig.client.get("/img/mug/main.jpg")).status_code == 200  # the hit path
        lines = [json.loads(line) for line in log_lines.lines]
        hits = [line for line in lines if line["msg"] == "request"]
        assert [(h["route"], h["cache_tier"]) for h in hits] == [
            ("/img/{image_id}/{filename}", "memory")
        ]
        metrics = await scrape(rig.client)
        route = "/img/{image_id}/{filename}"
        assert metrics.value("cutproxy_http_requests_total", route=route, status="200") == 2
