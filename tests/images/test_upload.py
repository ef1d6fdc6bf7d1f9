"""Uploading through the admin API: stored once, served as variants, replaced, removed."""

from __future__ import annotations

import asyncio
import hashlib
import io

from PIL import Image

from tests.images.conftest import AUTH, Rig, photo


async def test_upload_then_a_variant_is_served(rig: Rig) -> None:
    data = photo(1)
    created = await rig.upload("mug", data)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "created"
    assert (body["width"], body["height"], body["content_type"]) == (640, 480, "image/png")
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["original_kept"]
    assert created.headers["location"] == "/images/mug"
    assert [p.name for p in rig.originals()] == [body["sha256"]]
    assert rig.originals()[0].read_bytes() == data

    answer = await rig.client.get("/img/mug/320x320/ffffff.jpg")
    assert answer.status_code == 302
    image = await rig.client.get(answer.headers["location"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"


async def test_same_bytes_again_cost_nothing(rig: Rig) -> None:
    data = photo(2)
    assert (await rig.upload("mug", data)).status_code == 201
    before = await rig.stats()
    again = await rig.upload("mug", data)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    after = await rig.stats()
    assert (after["uploads"], after["tokens_minted"]) == (
        before["uploads"],
        before["tokens_minted"],
    )


async def test_multipart_put_and_post_with_and_without_an_id(rig: Rig) -> None:
    files = {"image": ("a.jpg", photo(3, fmt="JPEG"), "image/jpeg")}
    put = await rig.client.put("/images/cup", files=files, headers=AUTH)
    assert put.status_code == 201 and put.json()["content_type"] == "image/jpeg"

    named = await rig.client.post(
        "/images",
        files={"image": ("b.png", photo(4), "image/png")},
        data={"image_id": "bowl"},
        headers=AUTH,
    )
    assert named.status_code == 201 and named.json()["image_id"] == "bowl"

    data = photo(5, fmt="WEBP")
    derived = await rig.client.post(
        "/images", files={"image": ("c.webp", data, "image/webp")}, headers=AUTH
    )
    assert derived.status_code == 201, derived.text
    image_id = derived.json()["image_id"]
    assert image_id == hashlib.sha256(data).hexdigest()[:20]
    same = await rig.client.post(
        "/images", files={"image": ("c.webp", data, "image/webp")}, headers=AUTH
    )
    assert same.status_code == 200 and same.json()["status"] == "unchanged"


async def test_equal_files_are_stored_once_and_deleted_with_their_last_owner(rig: Rig) -> None:
    data = photo(6)
    assert (await rig.upload("left", data)).status_code == 201
    uploads = (await rig.stats())["uploads"]
    right = await rig.upload("right", data)
    assert right.status_code == 201
    assert len(rig.originals()) == 1
    # the upstream still has these bytes: the second id shares that upload
    assert (await rig.stats())["uploads"] == uploads
    left = (await rig.client.get("/images/left", headers=AUTH)).json()
    assert right.json()["unique_filename"] == left["unique_filename"]

    gone = await rig.client.delete("/images/left", headers=AUTH)
    assert gone.status_code == 200 and gone.json()["original_deleted"] is False
    assert len(rig.originals()) == 1
    assert (await rig.client.get("/img/left/100x100/ffffff.jpg")).status_code == 404
    assert (await rig.client.get("/img/right/100x100/ffffff.jpg")).status_code == 302

    last = await rig.client.delete("/images/right", headers=AUTH)
    assert last.json() == {"deleted": "right", "variants_dropped": 1, "original_deleted": True}
    assert rig.originals() == []
    assert (await rig.client.delete("/images/right", headers=AUTH)).status_code == 404


async def test_replacing_the_bytes_invalidates_the_cached_variants(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(7))).status_code == 201
    old = (await rig.client.get("/img/mug/200x200/ffffff.png")).headers["location"]
    assert (await rig.client.get("/img/mug/200x200/ffffff.png")).headers["location"] == old

    replaced = await rig.upload("mug", photo(8, size=(500, 500)))
    assert replaced.status_code == 200 and replaced.json()["status"] == "replaced"
    assert replaced.json()["width"] == 500
    assert len(rig.originals()) == 1  # the old original had no other owner
    new = (await rig.client.get("/img/mug/200x200/ffffff.png")).headers["location"]
    assert new != old


async def test_reading_one_image_and_the_paginated_list(rig: Rig) -> None:
    for n in range(5):
        assert (await rig.upload(f"item-{n}", photo(10 + n))).status_code == 201
    assert (await rig.client.get("/img/item-0/300x300/ffffff.jpg")).status_code == 302

    shown = (await rig.client.get("/images/item-0", headers=AUTH)).json()
    assert shown["image_id"] == "item-0" and shown["original_kept"] is True
    assert [v["path"] for v in shown["variants"]] == ["/img/item-0/300x300/ffffff.jpg"]
    assert shown["variants"][0]["expires_in"] > 0

    first = (await rig.client.get("/images?limit=2", headers=AUTH)).json()
    assert [i["image_id"] for i in first["images"]] == ["item-0", "item-1"]
    assert first["total"] == 5 and first["next"] == "item-1"
    rest = (await rig.client.get(f"/images?limit=10&after={first['next']}", headers=AUTH)).json()
    assert [i["image_id"] for i in rest["images"]] == ["item-2", "item-3", "item-4"]
    assert rest["next"] is None
    assert (await rig.client.get("/images?limit=0", headers=AUTH)).status_code == 400
    assert (await rig.client.get("/images/nope", headers=AUTH)).status_code == 404


async def test_the_admin_api_is_guarded(rig: Rig) -> None:
    assert (await rig.client.put("/images/x", content=photo(1))).status_code == 401
    assert (await rig.client.get("/images")).status_code == 401
    assert (await rig.client.delete("/images/x")).status_code == 401
    warm = await rig.client.post("/images/x/warm", json={"sizes": ["10x10"]})
    assert warm.status_code == 401
    assert rig.originals() == []


async def test_json_registration_still_registers_and_releases_a_kept_original(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(9))).status_code == 201
    unique = (await rig.client.get("/images/mug", headers=AUTH)).json()["unique_filename"]
    registered = await rig.client.put(
        "/images/mug",
        json={"unique_filename": unique, "width": 640, "height": 480},
        headers=AUTH,
    )
    assert registered.status_code == 200 and registered.json()["original_kept"] is False
    assert rig.originals() == []
    assert (await rig.client.get("/img/mug/64x64/ffffff.jpg")).status_code == 302


async def test_a_rotated_jpeg_is_registered_and_described_upright(rig: Rig) -> None:
    # Stored 400x200 with EXIF orientation 6 (a quarter turn): it displays 200 wide, 400 tall.
    image = Image.open(io.BytesIO(photo(size=(400, 200), fmt="JPEG")))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    stored = await rig.upload("turned", out.getvalue(), content_type="image/jpeg")
    assert (stored.json()["width"], stored.json()["height"]) == (200, 400)

    answer = await rig.client.get(
        "/img/turned/100x100/ffffff.png", headers={"Accept": "application/json"}
    )
    body = answer.json()
    rendered = Image.open(io.BytesIO((await rig.client.get(body["url"])).content))
    assert (body["width"], body["height"]) == rendered.size == (50, 100)


async def test_the_same_new_bytes_sent_at_once_are_uploaded_once(rig: Rig) -> None:
    data = photo(21)
    before = await rig.stats()
    same_id = await asyncio.gather(*(rig.upload("twin", data) for _ in range(4)))
    other_ids = await asyncio.gather(*(rig.upload(f"twin-{i}", data) for i in range(3)))
    assert sorted(a.status_code for a in same_id) == [200, 200, 200, 201]
    assert {a.status_code for a in other_ids} == {201}
    after = await rig.stats()
    assert after["uploads"] == before["uploads"] + 1  # one upload, shared by all four ids
    names = {a.json()["unique_filename"] for a in [*same_id, *other_ids]}
    assert len(names) == 1
