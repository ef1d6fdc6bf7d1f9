"""Store mode's answers over HTTP: the bytes, their headers, 304, HEAD, JSON, and the mints
behind them as the engine counts them."""

from __future__ import annotations

import hashlib
import io

import httpx
from PIL import Image

from tests.serving.conftest import MakeRig, Rig, gather, photo

CACHE_CONTROL = "public, max-age=86400, s-maxage=31536000, stale-if-error=86400"


def decoded(answer: httpx.Response) -> Image.Image:
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    return image


async def test_an_upload_carries_the_master_and_every_variant_is_derived(rig: Rig) -> None:
    before = await rig.minted()
    await rig.upload("mug", photo(size=(800, 600)))
    assert await rig.minted() == before + 1  # the upload's token ordered the master
    assert rig.masters("mug") != []
    urls = [
        f"/img/mug/{size}/{bg}.{ext}"
        for size in ("160x160", "320x240-cover", "640x640-contain", "300x500")
        for bg, ext in (("ffffff", "jpg"), ("transparent", "png"), ("ff0000", "webp"))
    ] + ["/img/mug/200x200/transparent.avif"]
    answers = await gather(*(lambda url=url: rig.client.get(url) for url in urls))
    assert [a.status_code for a in answers] == [200] * len(urls)
    assert await rig.minted() == before + 1
    costs = await rig.costs()
    assert costs["masters_minted"] == 1 and costs["variants_derived"] == len(urls)


async def test_pad_and_cover_fill_the_box_and_contain_fits_inside(rig: Rig) -> None:
    await rig.upload("mug", photo(size=(800, 600)))
    pad = decoded(await rig.client.get("/img/mug/300x300/ff0000.jpg"))
    assert pad.format == "JPEG" and pad.size == (300, 300)
    red, green, blue = pad.getpixel((0, 0))  # the band above the photo: the background
    assert red > 240 and green < 20 and blue < 20
    cover = decoded(await rig.client.get("/img/mug/300x100-cover/transparent.webp"))
    assert cover.format == "WEBP" and cover.size == (300, 100) and cover.mode == "RGBA"
    contain = decoded(await rig.client.get("/img/mug/300x300-contain/transparent.png"))
    assert contain.format == "PNG" and contain.size == (300, 225)
    assert contain.mode == "RGBA" and contain.getpixel((0, 0))[3] == 0  # the cut-out's alpha
    avif = decoded(await rig.client.get("/img/mug/120x120/transparent.avif"))
    assert avif.format == "AVIF" and avif.size == (120, 120) and avif.mode == "RGBA"


async def test_the_bytes_come_with_exact_headers(rig: Rig) -> None:
    await rig.upload("mug", photo())
    for ext, kind in (("jpg", "jpeg"), ("png", "png"), ("webp", "webp"), ("avif", "avif")):
        answer = await rig.client.get(f"/img/mug/200x200/ffffff.{ext}")
        assert answer.status_code == 200
        headers = answer.headers
        assert headers["content-type"] == f"image/{kind}"
        assert int(headers["content-length"]) == len(answer.content)
        assert headers["etag"] == f'"{hashlib.sha256(answer.content).hexdigest()[:32]}"'
        assert headers["cache-control"] == CACHE_CONTROL
        assert headers["cdn-cache-control"] == headers["surrogate-control"] == "max-age=31536000"
        assert headers["vary"] == "Accept"
        assert headers["surrogate-key"] == "img-mug img-mug.ffffff"
        assert headers["cache-tag"] == "img-mug,img-mug.ffffff"


async def test_the_lifetimes_follow_the_cdn_settings(store_rig: MakeRig) -> None:
    async with store_rig(browser_max_age=600, cdn_max_age=3600) as rig:
        await rig.upload("mug", photo())
        answer = await rig.client.get("/img/mug/64x64/ffffff.jpg")
    assert answer.headers["cache-control"] == (
        "public, max-age=600, s-maxage=3600, stale-if-error=86400"
    )
    assert answer.headers["cdn-cache-control"] == "max-age=3600"


async def test_if_none_match_with_the_etag_is_a_304(rig: Rig) -> None:
    await rig.upload("mug", photo())
    url = "/img/mug/200x200/ffffff.jpg"
    first = await rig.client.get(url)
    etag = first.headers["etag"]
    for given in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await rig.client.get(url, headers={"If-None-Match": given})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        for name in ("cache-control", "cdn-cache-control", "vary", "surrogate-key"):
            assert again.headers[name] == first.headers[name]
    stale = await rig.client.get(url, headers={"If-None-Match": '"not-it"'})
    assert stale.status_code == 200 and stale.content == first.content


async def test_head_has_the_headers_of_get_and_no_body(rig: Rig) -> None:
    await rig.upload("mug", photo())
    url = "/img/mug/200x200-cover/transparent.png"
    head = await rig.client.head(url)  # the first request: derived for a HEAD
    get = await rig.client.get(url)
    assert head.status_code == get.status_code == 200 and head.content == b""
    drop = {"x-request-id"}
    assert {k: v for k, v in head.headers.items() if k not in drop} == {
        k: v for k, v in get.headers.items() if k not in drop
    }


async def test_apps_get_json_about_the_bytes(rig: Rig) -> None:
    await rig.upload("mug", photo(size=(800, 600)))
    url = "/img/mug/400x400-contain/ffffff.webp"
    body = (await rig.client.get(url, headers={"Accept": "application/json"})).json()
    image = await rig.client.get(url)
    assert set(body.pop("placeholder")) == {"thumbhash", "color", "aspect"}
    assert body == {
        "url": f"http://127.0.0.1:8080{url}",
        "width": 400,
        "height": 300,
        "format": "webp",
        "size_exact": True,
        "bytes": len(image.content),
        "etag": image.headers["etag"],
    }


async def test_naming_the_default_fit_redirects_to_the_one_spelling(rig: Rig) -> None:
    await rig.upload("mug", photo())
    answer = await rig.client.get("/img/mug/320x240-pad@2x/FFF.jpeg?x=1")
    assert answer.status_code == 308
    assert answer.headers["location"] == "/img/mug/640x480/ffffff.jpg?x=1"


async def test_redirect_mode_names_store_mode_for_what_it_cannot_make(
    store_rig: MakeRig,
) -> None:
    async with store_rig(mode="redirect") as rig:
        cover = await rig.client.get("/img/x/64x64-cover/ffffff.jpg")
        avif = await rig.client.get("/img/x/64x64/ffffff.avif")
        metrics = (await rig.client.get("/metrics")).text
    assert cover.status_code == avif.status_code == 400
    assert cover.json()["error"] == "fit_needs_store_mode"
    assert avif.json()["error"] == "format_needs_store_mode"
    assert "cutproxy_masters_minted" not in metrics  # store mode's metrics are its own


async def test_a_mastered_image_is_served_with_the_upstream_down(rig: Rig) -> None:
    uploaded = await rig.upload("mug", photo())
    await rig.register("alias", uploaded)  # the same upload, but no master kept for it
    await rig.engine_down()
    fresh = await rig.client.get("/img/mug/123x77-cover/00ff00.png")
    assert fresh.status_code == 200 and decoded(fresh).size == (123, 77)
    unmastered = await rig.client.get("/img/alias/100x100/ffffff.jpg")
    assert unmastered.status_code in (502, 503, 504)
    assert unmastered.json()["error"] and unmastered.json()["message"]
    assert unmastered.headers["cache-control"] == "no-store"
    await rig.engine_down(False)
    assert (await rig.client.get("/img/alias/100x100/ffffff.jpg")).status_code == 200


async def test_one_mint_for_an_image_however_many_sizes_arrive_at_once(rig: Rig) -> None:
    uploaded = await rig.upload("mug", photo())
    await rig.register("alias", uploaded)
    before = await rig.minted()
    urls = [
        f"/img/alias/{w}x{w}/{bg}.jpg"
        for w in (100, 200, 300, 400, 500)
        for bg in ("ffffff", "000000")
    ]
    answers = await gather(*(lambda url=url: rig.client.get(url) for url in urls * 3))
    assert {a.status_code for a in answers} == {200}
    assert await rig.minted() == before + 1
    assert len(rig.masters("alias")) == 1


async def test_metrics_and_costs_count_masters_derivations_and_bytes(rig: Rig) -> None:
    await rig.upload("mug", photo())
    for size in ("100x100", "200x200", "300x300"):
        await rig.client.get(f"/img/mug/{size}/ffffff.jpg")
    await rig.client.get("/img/mug/100x100/ffffff.jpg")  # a hit: not a derivation
    costs = await rig.costs()
    assert costs["masters_minted"] == 1 and costs["variants_derived"] == 3
    tiers = costs["bytes_kept_by_tier"]
    assert tiers["memory"] > 0 and tiers["disk"] > 0
    assert costs["bytes_kept"] == tiers["memory"] + tiers["disk"]
    # Three redirect-mode mints of sub-megapixel variants: 0.5 credit each.
    assert costs["saved_by_store_mode"] == 1.5
    metrics = (await rig.client.get("/metrics")).text
    assert "cutproxy_masters_minted_total 1.0" in metrics
    assert "cutproxy_variants_derived_total 3.0" in metrics
    assert "cutproxy_derive_seconds_count 3.0" in metrics
    assert f'cutproxy_variant_bytes_kept{{tier="disk"}} {float(tiers["disk"])}' in metrics


async def test_srcset_takes_a_fit_and_describes_the_frames(rig: Rig) -> None:
    await rig.upload("mug", photo(size=(800, 600)))
    query = {"widths": "320,640", "ratio": "1:1", "fit": "cover"}
    answer = await rig.client.get(
        "/srcset/mug", params=query, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 200
    found = answer.json()["candidates"]
    assert [c["url"] for c in found] == [
        "http://127.0.0.1:8080/img/mug/320x320-cover/ffffff.jpg",
        "http://127.0.0.1:8080/img/mug/640x640-cover/ffffff.jpg",
    ]
    assert [(c["width"], c["height"]) for c in found] == [(320, 320), (640, 640)]
    contain = await rig.client.get(
        "/srcset/mug",
        params={**query, "fit": "contain", "widths": "1280"},
        headers={"Accept": "application/json"},
    )
    assert contain.json()["candidates"][0]["width"] == 800  # never upscaled


async def test_srcset_in_redirect_mode_refuses_a_frame(store_rig: MakeRig) -> None:
    async with store_rig(mode="redirect") as rig:
        await rig.upload("mug", photo())
        answer = await rig.client.get("/srcset/mug", params={"fit": "pad"})
    assert answer.status_code == 400 and "PROXY_MODE=store" in answer.json()["message"]


async def test_the_demo_page_tells_what_is_kept_and_what_it_costs(store_rig: MakeRig) -> None:
    async with store_rig(demo=True) as rig:
        pick = {"w": "320", "ratio": "1:1", "bg": "ffffff", "ext": "avif"}
        before = (await rig.client.get("/demo/images", params=pick)).json()
        await rig.client.get("/img/demo/320x320/ffffff.avif")
        after = (await rig.client.get("/demo/images", params=pick)).json()
    assert before["mode"] == "store"
    [first], [second] = before["images"], after["images"]
    assert first["canonical"] == "/img/demo/320x320/ffffff.avif"
    assert first["output"] == {"width": 320, "height": 320, "exact": True}
    assert (first["cached"], first["credits"]) == (False, 0.0)  # mastered: derived for free
    assert second["cached"] is True
