"""Warm-up: every missing variant of an image in one token; cached ones are skipped."""

from __future__ import annotations

import asyncio

from tests.images.conftest import AUTH, Rig, photo

SIZES = ["320x320", "640x640", "1280x1280", "160x160"]


async def test_four_sizes_cost_one_token_and_are_then_served_from_cache(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(1, size=(1600, 1200)))).status_code == 201
    before = await rig.stats()
    warmed = await rig.client.post(
        "/images/mug/warm", json={"sizes": SIZES, "bg": "ffffff", "ext": "jpg"}, headers=AUTH
    )
    assert warmed.status_code == 200, warmed.text
    body = warmed.json()
    assert sorted(body["rendered"]) == sorted(f"/img/mug/{s}/ffffff.jpg" for s in SIZES)
    assert body["skipped"] == [] and body["tokens"] == 1
    after = await rig.stats()
    assert after["tokens_minted"] == before["tokens_minted"] + 1
    assert after["last_token_variants"] == 4
    # 1.1 for the largest (over 1 MP) + 3 x 0.25, as the engine charged it
    assert body["estimated_credits"] == 1.85
    assert after["credits_charged"] - before["credits_charged"] == 1.85

    for size in SIZES:
        answer = await rig.client.get(f"/img/mug/{size}/ffffff.jpg")
        assert answer.status_code == 302
    assert (await rig.stats())["tokens_minted"] == after["tokens_minted"]


async def test_cached_variants_are_skipped(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(2))).status_code == 201
    assert (await rig.client.get("/img/mug/320x320/ffffff.jpg")).status_code == 302
    before = await rig.stats()
    warmed = await rig.client.post(
        "/images/mug/warm", json={"sizes": ["320x320", "640x640", "640x640"]}, headers=AUTH
    )
    body = warmed.json()
    assert body["skipped"] == ["/img/mug/320x320/ffffff.jpg"]
    assert body["rendered"] == ["/img/mug/640x640/ffffff.jpg"]
    assert (await rig.stats())["last_token_variants"] == 1

    again = (
        await rig.client.post(
            "/images/mug/warm", json={"sizes": ["320x320", "640x640"]}, headers=AUTH
        )
    ).json()
    assert again["rendered"] == [] and again["tokens"] == 0 and again["estimated_credits"] == 0
    assert (await rig.stats())["tokens_minted"] == before["tokens_minted"] + 1


async def test_warm_requests_go_through_the_url_grammar(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(3))).status_code == 201
    canonical = await rig.client.post(
        "/images/mug/warm",
        json={"sizes": ["100x100@2x"], "bg": "FFF", "ext": "jpeg"},
        headers=AUTH,
    )
    assert canonical.json()["rendered"] == ["/img/mug/200x200/ffffff.jpg"]
    too_big = await rig.client.post("/images/mug/warm", json={"sizes": ["9000x9000"]}, headers=AUTH)
    assert too_big.status_code == 400 and too_big.json()["error"] == "bad_size"
    no_sizes = await rig.client.post("/images/mug/warm", json={"sizes": []}, headers=AUTH)
    assert no_sizes.status_code == 400 and no_sizes.json()["error"] == "bad_sizes"
    jpg_clear = await rig.client.post(
        "/images/mug/warm", json={"sizes": ["10x10"], "bg": "transparent"}, headers=AUTH
    )
    assert jpg_clear.status_code == 400 and jpg_clear.json()["error"] == "bad_background"
    unknown = await rig.client.post("/images/nope/warm", json={"sizes": ["10x10"]}, headers=AUTH)
    assert unknown.status_code == 404


SMALL, LARGE = "/img/mug/320x320/ffffff.jpg", "/img/mug/640x640/ffffff.jpg"


async def _slow_engine(rig: Rig, seconds: float) -> None:
    # Fault control through the proxy's port, with its admin token.
    answer = await rig.client.put(
        "/_engine/faults", json={"process_latency": seconds}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text


async def _minted(rig: Rig, tokens: int) -> None:
    """Wait until the engine has minted ``tokens`` in all: that mint's lease is held now."""
    for _ in range(1000):
        if (await rig.stats())["tokens_minted"] >= tokens:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine never reached {tokens} tokens")


async def test_a_warm_up_leaves_out_a_variant_a_visitor_is_minting(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(3))).status_code == 201
    await _slow_engine(rig, 0.5)
    before = await rig.stats()
    visitor = asyncio.create_task(rig.client.get(SMALL))
    await _minted(rig, before["tokens_minted"] + 1)  # the visitor's miss is at the engine
    warmed = await rig.client.post(
        "/images/mug/warm", json={"sizes": ["320x320", "640x640"]}, headers=AUTH
    )
    body = warmed.json()
    assert (await visitor).status_code == 302
    assert body["pending"] == [SMALL] and body["rendered"] == [LARGE]
    after = await rig.stats()
    assert after["variants_minted"] - before["variants_minted"] == 2  # each size once
    assert after["tokens_minted"] - before["tokens_minted"] == 2


async def test_a_visitor_during_a_warm_up_waits_for_its_token(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(4))).status_code == 201
    await _slow_engine(rig, 0.5)
    before = await rig.stats()
    warm = asyncio.create_task(
        rig.client.post("/images/mug/warm", json={"sizes": ["320x320", "640x640"]}, headers=AUTH)
    )
    await _minted(rig, before["tokens_minted"] + 1)  # the warm-up's token is at the engine
    visitor = await rig.client.get(SMALL)
    body = (await warm).json()
    assert sorted(body["rendered"]) == [SMALL, LARGE] and body["pending"] == []
    assert visitor.status_code == 302
    assert (await rig.client.get(SMALL)).headers["location"] == visitor.headers["location"]
    after = await rig.stats()
    assert after["variants_minted"] - before["variants_minted"] == 2
    assert after["tokens_minted"] - before["tokens_minted"] == 1
