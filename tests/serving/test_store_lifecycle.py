"""Store mode's images over their life (replace, delete, purge, warm-up) and the guards on
what they cost (the derive rate, the miss rate and the budget on the master's mint)."""

from __future__ import annotations

import httpx

from tests.serving.conftest import AUTH, MakeRig, Rig, gather, photo

TRUSTED = {"trusted_proxies": ("127.0.0.1/32",)}


def by(client: str) -> dict[str, str]:
    return {"X-Forwarded-For": client}


async def test_a_replaced_image_gets_a_new_master_and_never_an_old_variant(rig: Rig) -> None:
    await rig.upload("mug", photo(seed=1))
    url = "/img/mug/200x200/ffffff.png"
    old = await rig.client.get(url)
    old_master = rig.masters("mug")
    before = await rig.minted()
    replaced = await rig.upload("mug", photo(seed=2, colour=120))
    assert replaced["status"] == "replaced"
    assert await rig.minted() == before + 1  # the new upload carried the new master
    new_master = rig.masters("mug")
    assert len(new_master) == 1 and new_master != old_master  # the old one is gone
    new = await rig.client.get(url)
    assert new.status_code == 200 and new.headers["etag"] != old.headers["etag"]
    again = await rig.client.get(url, headers={"If-None-Match": old.headers["etag"]})
    assert again.status_code == 200 and again.content == new.content
    assert await rig.minted() == before + 1
    kept = await rig.disk_keys("/img/mug/")
    assert len(kept) == 1 and old.headers["etag"] not in kept[0]


async def test_deleting_an_image_removes_its_master_and_variants(rig: Rig) -> None:
    await rig.upload("mug", photo())
    await rig.upload("other", photo(seed=5))
    for size in ("100x100", "200x200-cover", "300x300-contain"):
        assert (await rig.client.get(f"/img/mug/{size}/ffffff.jpg")).status_code == 200
    await rig.client.get("/img/other/100x100/ffffff.jpg")
    assert len(await rig.disk_keys("/img/mug/")) == 3
    deleted = await rig.client.delete("/images/mug", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["variants_dropped"] >= 3
    assert rig.masters("mug") == [] and not (rig.data_dir / "masters" / "mug").exists()
    assert await rig.disk_keys("/img/mug/") == []
    assert (await rig.client.get("/img/mug/100x100/ffffff.jpg")).status_code == 404
    # Nothing of another image went with it.
    assert rig.masters("other") != [] and len(await rig.disk_keys("/img/other/")) == 1


async def test_purging_variants_derives_them_again_without_a_mint(rig: Rig) -> None:
    await rig.upload("mug", photo())
    url = "/img/mug/200x200/ffffff.jpg"
    first = await rig.client.get(url)
    before, derived = await rig.minted(), (await rig.costs())["variants_derived"]
    purged = await rig.client.delete("/images/mug/variants", headers=AUTH)
    assert purged.status_code == 200 and purged.json()["variants_dropped"] >= 1
    again = await rig.client.get(url)
    assert again.status_code == 200 and again.content == first.content
    assert await rig.minted() == before
    assert (await rig.costs())["variants_derived"] == derived + 1


async def test_warm_up_mints_the_master_if_missing_and_derives_the_sizes(rig: Rig) -> None:
    uploaded = await rig.upload("mug", photo())
    await rig.register("alias", uploaded)  # no master yet
    before = await rig.minted()
    body = {"sizes": ["320x320", "160x160@2x", "640x480"], "ext": "webp", "fit": "cover"}
    warmed = (await rig.client.post("/images/alias/warm", json=body, headers=AUTH)).json()
    assert warmed["tokens"] == 1 and warmed["master"] == "minted"
    assert warmed["rendered"] == [
        "/img/alias/320x320-cover/ffffff.webp",
        "/img/alias/640x480-cover/ffffff.webp",
    ]
    assert warmed["estimated_credits"] == 0.5
    assert await rig.minted() == before + 1
    derived = (await rig.costs())["variants_derived"]
    assert (await rig.client.get("/img/alias/320x320-cover/ffffff.webp")).status_code == 200
    assert (await rig.costs())["variants_derived"] == derived  # warmed: no derivation
    again = (await rig.client.post("/images/alias/warm", json=body, headers=AUTH)).json()
    assert again["tokens"] == 0 and again["master"] == "kept" and again["rendered"] == []
    assert len(again["skipped"]) == 2
    assert await rig.minted() == before + 1


async def test_warm_up_refuses_a_fit_redirect_mode_cannot_make(store_rig: MakeRig) -> None:
    async with store_rig(mode="redirect") as rig:
        await rig.upload("mug", photo())
        body = {"sizes": ["320x320"], "fit": "cover"}
        answer = await rig.client.post("/images/mug/warm", json=body, headers=AUTH)
    assert answer.status_code == 400 and answer.json()["error"] == "fit_needs_store_mode"


async def test_a_client_over_its_derive_rate_gets_a_429_and_hits_still_work(
    store_rig: MakeRig,
) -> None:
    async with store_rig(client_derive_rate="2/minute", **TRUSTED) as rig:
        await rig.upload("mug", photo())
        for size in ("100x100", "200x200"):
            answer = await rig.client.get(f"/img/mug/{size}/ffffff.jpg", headers=by("10.0.0.1"))
            assert answer.status_code == 200
        over = await rig.client.get("/img/mug/300x300/ffffff.jpg", headers=by("10.0.0.1"))
        assert over.status_code == 429 and over.json()["error"] == "client_derive_rate"
        assert int(over.headers["retry-after"]) >= 1
        assert over.headers["cache-control"] == "no-store"
        hit = await rig.client.get("/img/mug/100x100/ffffff.jpg", headers=by("10.0.0.1"))
        assert hit.status_code == 200
        other = await rig.client.get("/img/mug/300x300/ffffff.jpg", headers=by("10.0.0.2"))
        assert other.status_code == 200
        # What another client derived is a hit for this one, not a derivation.
        again = await rig.client.get("/img/mug/300x300/ffffff.jpg", headers=by("10.0.0.1"))
        assert again.status_code == 200


async def test_a_burst_for_one_new_variant_charges_one_derivation(store_rig: MakeRig) -> None:
    # A page (or a CDN edge) asks for a new size many times at once: one derivation is made,
    # and it is the one the client is charged for.
    async with store_rig(client_derive_rate="2/minute", **TRUSTED) as rig:
        await rig.upload("mug", photo())

        def ask() -> object:
            return rig.client.get("/img/mug/300x300/ffffff.jpg", headers=by("10.0.0.1"))

        answers = await gather(*[ask] * 20)
        assert [a.status_code for a in answers] == [200] * 20
        second = await rig.client.get("/img/mug/400x400/ffffff.jpg", headers=by("10.0.0.1"))
        assert second.status_code == 200  # the burst cost one derivation of two


async def test_a_derivation_that_cannot_start_is_not_charged(store_rig: MakeRig) -> None:
    async with store_rig(client_derive_rate="2/minute", **TRUSTED) as rig:
        uploaded = await rig.upload("mug", photo())
        await rig.register("two", uploaded)  # no master yet: the first miss mints it
        await rig.engine_down()
        for _ in range(3):
            failed = await rig.client.get("/img/two/100x100/ffffff.jpg", headers=by("10.0.0.1"))
            assert failed.status_code in (502, 503, 504)
        await rig.engine_down(False)
        served = await rig.client.get("/img/two/100x100/ffffff.jpg", headers=by("10.0.0.1"))
        assert served.status_code == 200


async def test_the_client_miss_rate_counts_master_mints_not_derivations(
    store_rig: MakeRig,
) -> None:
    async with store_rig(client_miss_rate="1/minute", **TRUSTED) as rig:
        uploaded = await rig.upload("mug", photo())
        await rig.register("one", uploaded)
        await rig.register("two", uploaded)
        for size in ("100x100", "200x200", "300x300"):  # one mint, then derivations only
            answer = await rig.client.get(f"/img/one/{size}/ffffff.jpg", headers=by("10.0.0.1"))
            assert answer.status_code == 200
        refused = await rig.client.get("/img/two/100x100/ffffff.jpg", headers=by("10.0.0.1"))
        assert refused.status_code == 429 and refused.json()["error"] == "client_miss_rate"
        assert refused.headers["cache-control"] == "no-store"
        allowed = await rig.client.get("/img/two/100x100/ffffff.jpg", headers=by("10.0.0.2"))
        assert allowed.status_code == 200


async def test_a_request_waiting_on_another_clients_refused_mint_leads_its_own(
    store_rig: MakeRig,
) -> None:
    async with store_rig(client_miss_rate="1/minute", **TRUSTED) as rig:
        uploaded = await rig.upload("mug", photo())
        await rig.register("spent", uploaded)
        await rig.register("fresh", uploaded)
        # 10.0.0.1 spends its one mint; then it and 10.0.0.2 ask for a new image together.
        await rig.client.get("/img/spent/100x100/ffffff.jpg", headers=by("10.0.0.1"))

        def get(size: str, client: str) -> httpx.Response:
            return rig.client.get(f"/img/fresh/{size}/ffffff.jpg", headers=by(client))  # type: ignore[return-value]

        over, fine = await gather(
            lambda: get("100x100", "10.0.0.1"), lambda: get("200x200", "10.0.0.2")
        )
        assert fine.status_code == 200  # not refused for 10.0.0.1's rate
        assert over.status_code in (200, 429)


async def test_the_credit_budget_holds_the_master_mint(store_rig: MakeRig) -> None:
    # The upload (master included) costs 0.5 credit: the hour's budget is then spent.
    async with store_rig(budget_credits_per_hour=0.5) as rig:
        uploaded = await rig.upload("mug", photo())
        await rig.register("alias", uploaded)
        before = await rig.minted()
        assert (await rig.client.get("/img/mug/100x100/ffffff.jpg")).status_code == 200
        refused = await rig.client.get("/img/alias/100x100/ffffff.jpg")
        assert refused.status_code == 429 and refused.json()["error"] == "credit_budget_spent"
        assert await rig.minted() == before


async def test_a_forgotten_original_is_uploaded_again_with_the_master(store_rig: MakeRig) -> None:
    """An image uploaded in redirect mode, then served in store mode after the upstream
    forgot the upload: one token re-uploads the kept original and orders the master."""
    async with store_rig(mode="redirect") as rig:
        await rig.upload("mug", photo())
        data_dir = rig.data_dir
    async with store_rig(data_dir=data_dir) as rig:
        rig.clock.advance(3 * 3600)  # past PROXY_REUPLOAD_AFTER: re-uploaded first
        before = await rig.minted()
        answer = await rig.client.get("/img/mug/100x100/ffffff.jpg")
        assert answer.status_code == 200
        assert await rig.minted() == before + 1
        assert rig.masters("mug") != []
        assert "cutproxy_reuploads_total 1.0" in (await rig.client.get("/metrics")).text


async def test_a_worker_a_moment_behind_never_buys_a_replaced_images_master(
    store_rig: MakeRig,
) -> None:
    """Two workers on one host: one replaces the image while the other still trusts its
    view of the old version (PROXY_IMAGE_VIEW_TTL) and keeps no decoded master."""
    async with store_rig(master_cache_mb=0) as behind:
        async with store_rig(data_dir=behind.data_dir) as ahead:
            await behind.upload("mug", photo(seed=1))
            assert (await behind.client.get("/img/mug/100x100/ffffff.jpg")).status_code == 200
            await ahead.upload("mug", photo(seed=2, colour=120))
            before = await behind.minted()
            answer = await behind.client.get("/img/mug/200x200/ffffff.jpg")
            assert answer.status_code == 200
            assert await behind.minted() == before  # the old master was not bought again
            current = await ahead.client.get("/img/mug/200x200/ffffff.jpg")
            assert answer.headers["etag"] == current.headers["etag"]
            assert len(behind.masters("mug")) == 1
