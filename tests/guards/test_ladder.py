"""The size ladder over HTTP: canonical 308s under snap, 400s under strict, hard size caps."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

from tests.guards.conftest import KEY, SALT, RigFactory

LADDER = {
    "ladder_widths": "320,640,1280",
    "ladder_ratios": "1:1,4:3",
    "ladder_presets": "1200x630",
}


async def test_snap_redirects_to_the_next_rung_up_and_caches_the_canonical_url(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(ladder_policy="snap", **LADDER)
    await rig.upload("shoe")
    cases = {
        "/img/shoe/500x400/ffffff.jpg": "/img/shoe/640x480/ffffff.jpg",  # nearest ratio 4:3
        "/img/shoe/1000x500/ffffff.jpg": "/img/shoe/1200x630/ffffff.jpg",  # the preset's
        "/img/shoe/100x100/ffffff.jpg": "/img/shoe/320x320/ffffff.jpg",
        # A non-canonical spelling off the ladder goes to its rung in one hop.
        "/img/shoe/250x200@2x/FFF.jpeg": "/img/shoe/640x480/ffffff.jpg",
    }
    before = await rig.stats()
    for asked, rung in cases.items():
        answer = await rig.get(asked)
        assert answer.status_code == 308, asked
        assert answer.headers["location"] == rung
        assert answer.headers["cache-control"].startswith("public, max-age=")
    assert (await rig.stats())["tokens_minted"] == before["tokens_minted"], "308s mint nothing"

    # 100 random sizes of one ratio class end up as a handful of mints.
    asked = [f"/img/shoe/{w}x{w}/ffffff.jpg" for w in range(200, 300)]
    redirects = await asyncio.gather(*(rig.get(path) for path in asked))
    rungs = {r.headers["location"] for r in redirects}
    assert rungs == {"/img/shoe/320x320/ffffff.jpg"}
    served = await asyncio.gather(*(rig.get(rung) for rung in rungs))
    assert [s.status_code for s in served] == [302]
    on_ladder = await rig.get("/img/shoe/640x480/ffffff.jpg")
    assert on_ladder.status_code == 302


async def test_snap_refuses_sizes_above_the_top_rung(make_rig: RigFactory) -> None:
    rig = await make_rig(ladder_policy="snap", **LADDER)
    answer = await rig.get("/img/shoe/2000x2000/ffffff.jpg")
    assert answer.status_code == 400
    assert answer.json()["error"] == "size_not_offered"


async def test_strict_refuses_off_ladder_sizes_and_lists_the_offered_ones(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(ladder_policy="strict", **LADDER)
    await rig.upload("shoe")
    answer = await rig.get("/img/shoe/500x400/ffffff.jpg")
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "size_not_offered"
    assert (
        "1:1: 320x320, 640x640, 1280x1280; 4:3: 320x240, 640x480, 1280x960; 40:21: 1200x630"
        in body["message"]
    )
    assert (await rig.get("/img/shoe/640x480/ffffff.jpg")).status_code == 302
    assert (await rig.get("/img/shoe/1200x630/ffffff.jpg")).status_code == 302


async def test_without_a_policy_any_size_is_served(make_rig: RigFactory) -> None:
    rig = await make_rig(**LADDER)  # PROXY_LADDER_POLICY=off (the default)
    await rig.upload("shoe")
    assert (await rig.get("/img/shoe/501x377/ffffff.jpg")).status_code == 302


async def test_hard_caps_on_side_and_pixel_count(make_rig: RigFactory) -> None:
    rig = await make_rig(max_pixels=999_999, max_width=2000, max_height=2000)
    await rig.upload("shoe")
    over_pixels = await rig.get("/img/shoe/1000x1000/ffffff.jpg")
    assert over_pixels.status_code == 400
    assert "999,999 pixels" in over_pixels.json()["message"]
    over_side = await rig.get("/img/shoe/2001x10/ffffff.jpg")
    assert over_side.status_code == 400 and over_side.json()["error"] == "bad_size"
    assert (await rig.get("/img/shoe/999x999/ffffff.jpg")).status_code == 302


async def test_a_signed_off_ladder_url_snaps_to_a_signed_rung(make_rig: RigFactory) -> None:
    rig = await make_rig(ladder_policy="snap", signing_key=(KEY,), signing_salt=(SALT,), **LADDER)
    await rig.upload("shoe")
    url = rig.signer().sign_url("/img/shoe/500x400/ffffff.jpg", ttl=600, now=rig.clock())
    answer = await rig.get(url)
    assert answer.status_code == 308
    target = urlsplit(answer.headers["location"])
    assert target.path == "/img/shoe/640x480/ffffff.jpg"
    assert parse_qs(target.query)["exp"] == parse_qs(urlsplit(url).query)["exp"]
    assert (await rig.get(answer.headers["location"])).status_code == 302
    # A signature for one size does not open the rung it would snap to without a redirect.
    forged = url.replace("500x400", "640x480")
    assert (await rig.get(forged)).status_code == 403


async def test_the_demo_page_shows_the_rung_a_picked_size_is_served_at(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(ladder_policy="snap", demo=True, **LADDER)
    await rig.upload("shoe")

    async def picked() -> dict[str, object]:
        body = (await rig.get("/demo/images?w=500&ratio=4:3")).json()
        entry: dict[str, object] = next(i for i in body["images"] if i["image_id"] == "shoe")
        return entry

    entry = await picked()
    assert entry["url"] == "/img/shoe/500x375/ffffff.jpg"
    assert entry["canonical"] == "/img/shoe/640x480/ffffff.jpg"  # where that URL goes
    assert entry["cached"] is False
    redirect = await rig.get("/img/shoe/500x375/ffffff.jpg")
    assert redirect.headers["location"] == entry["canonical"]
    assert (await rig.get(redirect.headers["location"])).status_code == 302
    assert (await picked())["cached"] is True  # the page sees what visitors now get
