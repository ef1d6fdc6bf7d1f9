"""Every token passes one guarded minter: uploads, warm-ups and re-uploads are on the books
and within the budget, as visitors' misses are."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.images.conftest import AUTH, Rig, photo
from tests.images.test_heal import expire_upstream_uploads


async def costs(rig: Rig) -> dict[str, Any]:
    answer = await rig.client.get("/admin/costs", headers=AUTH)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


async def warm(rig: Rig, image_id: str, sizes: list[str]) -> dict[str, Any]:
    answer = await rig.client.post(f"/images/{image_id}/warm", json={"sizes": sizes}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


@pytest.mark.parametrize("rig_settings", [{"reupload_after": 3600.0}])
async def test_the_ledger_is_the_engines_bill_for_every_kind_of_mint(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(1))).status_code == 201  # the upload's token
    assert (await warm(rig, "mug", ["320x320", "200x200"]))["tokens"] == 1
    visits = [f"/img/mug/{n}x{n}/ffffff.jpg" for n in (100, 150, 250)]
    assert {a.status_code for a in await asyncio.gather(*map(rig.client.get, visits))} == {302}

    await expire_upstream_uploads(rig)  # the engine forgot: a visitor's miss uploads again
    assert (await rig.client.get("/img/mug/400x400/ffffff.jpg")).status_code == 302
    await expire_upstream_uploads(rig)  # and again: this time a warm-up uploads again
    assert (await warm(rig, "mug", ["480x480"]))["rendered"] == ["/img/mug/480x480/ffffff.jpg"]
    rig.clock.advance(3600)  # the proxy renews an old upload before the engine says 404
    assert (await rig.client.get("/img/mug/500x500/ffffff.jpg")).status_code == 302

    stats = await rig.stats()
    assert stats["uploads"] == 4 and stats["rejections"].get("404", 0) == 2
    books = await costs(rig)
    assert books["spent"] == round(stats["credits_charged"], 2) > 0


@pytest.mark.parametrize("rig_settings", [{"budget_credits_per_hour": 1.0}])
async def test_a_budget_limits_warm_ups_and_uploads_too(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(1))).status_code == 201  # 0.5 of the hour's 1.0
    before = await rig.stats()

    refused = await rig.client.post(
        "/images/mug/warm", json={"sizes": ["320x320", "640x640", "200x200"]}, headers=AUTH
    )
    assert refused.status_code == 429, refused.text  # 1.0 more would not fit
    assert refused.json()["error"] == "credit_budget_spent"
    assert int(refused.headers["retry-after"]) >= 1
    assert (await warm(rig, "mug", ["320x320"]))["tokens"] == 1  # 0.5 fits exactly

    upload = await rig.upload("bag", photo(2))  # other bytes: a token of its own
    assert upload.status_code == 429, upload.text
    assert upload.json()["error"] == "credit_budget_spent"
    assert (await rig.client.get("/images/bag", headers=AUTH)).status_code == 404

    after = await rig.stats()
    assert after["tokens_minted"] == before["tokens_minted"] + 1
    books = await costs(rig)
    assert books["spent"] == round(after["credits_charged"], 2) == 1.0
    assert books["budget"]["hour"]["remaining"] == 0


@pytest.mark.parametrize(
    "rig_settings", [{"budget_credits_per_hour": 0.5, "reupload_after": 3600.0}]
)
async def test_a_miss_that_renews_an_old_upload_pays_for_it_with_its_own_admission(
    rig: Rig,
) -> None:
    assert (await rig.upload("mug", photo(1))).status_code == 201  # the hour's 0.5, spent
    rig.clock.advance(3600)  # a new hour, and the upload is old enough to be renewed first
    before = await rig.stats()

    # The miss is admitted at its price, 0.5: all the hour has. Its one token is the
    # re-upload's, which draws on that admission instead of asking the budget again.
    answer = await rig.client.get("/img/mug/320x320/ffffff.jpg")
    assert answer.status_code == 302, answer.text

    after = await rig.stats()
    assert after["uploads"] == before["uploads"] + 1
    assert after["tokens_minted"] == before["tokens_minted"] + 1
    books = await costs(rig)
    assert books["spent"] == round(after["credits_charged"], 2) == 1.0
    assert books["budget"]["hour"]["remaining"] == 0


LADDER = {"ladder_widths": "320,640", "ladder_ratios": "1:1,4:3"}


@pytest.mark.parametrize("rig_settings", [{**LADDER, "ladder_policy": "snap"}])
async def test_warm_up_sizes_snap_to_the_ladder_as_visitors_urls_do(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(1))).status_code == 201
    body = await warm(rig, "mug", ["500x400", "640x480", "300x300"])
    assert sorted(body["rendered"]) == [
        "/img/mug/320x320/ffffff.jpg",
        "/img/mug/640x480/ffffff.jpg",
    ]
    visitor = await rig.client.get("/img/mug/500x400/ffffff.jpg")
    assert visitor.status_code == 308  # where a visitor is sent, the warm-up rendered
    assert visitor.headers["location"] == "/img/mug/640x480/ffffff.jpg"


@pytest.mark.parametrize("rig_settings", [{**LADDER, "ladder_policy": "strict"}])
async def test_warm_up_sizes_off_a_strict_ladder_are_refused(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(1))).status_code == 201
    before = await rig.stats()
    refused = await rig.client.post(
        "/images/mug/warm", json={"sizes": ["640x480", "500x400"]}, headers=AUTH
    )
    assert refused.status_code == 400 and refused.json()["error"] == "size_not_offered"
    assert (await rig.stats())["tokens_minted"] == before["tokens_minted"]
