"""Uploads the upstream forgot heal themselves: one re-upload, no visitor sees an error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from proxy.stores.registry import VARIANTS_GENERATION, ImageRecord
from proxy.upstream.contract import RETENTION_SECONDS
from tests.images.conftest import AUTH, Rig, photo


async def expire_upstream_uploads(rig: Rig) -> None:
    """The engine forgets every upload (and output) it holds: its 2 hours went by."""
    rig.engine_clock.advance(RETENTION_SECONDS + 1)


async def test_a_forgotten_upload_is_uploaded_again_once(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(1))).status_code == 201
    first = (await rig.client.get("/images/mug", headers=AUTH)).json()["unique_filename"]
    await expire_upstream_uploads(rig)
    before = await rig.stats()

    answer = await rig.client.get("/img/mug/320x320/ffffff.jpg")
    assert answer.status_code == 302, answer.text
    assert (await rig.client.get(answer.headers["location"])).status_code == 200
    after = await rig.stats()
    assert after["uploads"] == before["uploads"] + 1
    # one token for the failed reuse is refused (404, not charged), one carries the upload
    assert after["tokens_minted"] == before["tokens_minted"] + 1
    record = (await rig.client.get("/images/mug", headers=AUTH)).json()
    assert record["unique_filename"] != first and record["uploaded_at"] == rig.clock()

    # the next variant reuses the new upload: no further upload
    assert (await rig.client.get("/img/mug/640x640/ffffff.jpg")).status_code == 302
    assert (await rig.stats())["uploads"] == after["uploads"]


async def test_fifty_concurrent_requests_share_one_reupload(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(2))).status_code == 201
    await expire_upstream_uploads(rig)
    before = await rig.stats()
    # ten different variants, five requests each: the variant flights do not merge them all
    paths = [f"/img/mug/{100 + 10 * n}x{100 + 10 * n}/ffffff.jpg" for n in range(10)]
    answers = await asyncio.gather(*(rig.client.get(p) for p in paths * 5))
    assert {a.status_code for a in answers} == {302}
    after = await rig.stats()
    assert after["uploads"] == before["uploads"] + 1
    assert after["rejections"].get("404", 0) >= 1, after


async def test_an_old_upload_is_renewed_before_the_upstream_says_404(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(3))).status_code == 201
    await expire_upstream_uploads(rig)
    rig.clock.advance(RETENTION_SECONDS)  # the proxy knows the upload is this old
    before = await rig.stats()
    assert (await rig.client.get("/img/mug/320x320/ffffff.png")).status_code == 302
    after = await rig.stats()
    assert after["uploads"] == before["uploads"] + 1
    assert after["tokens_minted"] == before["tokens_minted"] + 1
    assert after["rejections"] == before["rejections"]  # no 404 round trip was needed


async def test_warming_heals_too(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(4))).status_code == 201
    await expire_upstream_uploads(rig)
    before = await rig.stats()
    warmed = await rig.client.post(
        "/images/mug/warm", json={"sizes": ["100x100", "200x200"]}, headers=AUTH
    )
    assert warmed.status_code == 200, warmed.text
    after = await rig.stats()
    assert after["uploads"] == before["uploads"] + 1
    assert after["last_token_variants"] == 2


async def test_an_image_known_only_by_unique_filename_gets_a_clear_502(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(5))).status_code == 201
    unique = (await rig.client.get("/images/mug", headers=AUTH)).json()["unique_filename"]
    registered = await rig.client.put(
        "/images/bare",
        json={"unique_filename": unique, "width": 640, "height": 480},
        headers=AUTH,
    )
    assert registered.status_code == 201
    await expire_upstream_uploads(rig)
    answer = await rig.client.get("/img/bare/320x320/ffffff.jpg")
    assert answer.status_code == 502
    body: dict[str, Any] = answer.json()
    assert body["error"] == "original_not_kept"
    assert "registered by unique_filename alone" in body["message"]


@pytest.mark.parametrize("rig_settings", [{"reupload_after": 60.0}])
async def test_a_missing_original_is_named(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(6))).status_code == 201
    for path in rig.originals():
        path.unlink()
    rig.clock.advance(61)
    answer = await rig.client.get("/img/mug/320x320/ffffff.jpg")
    assert answer.status_code == 502 and answer.json()["error"] == "original_missing"
    # uploading the same bytes again puts the original back
    assert (await rig.upload("mug", photo(6))).json()["status"] == "unchanged"
    assert len(rig.originals()) == 1
    assert (await rig.client.get("/img/mug/320x320/ffffff.jpg")).status_code == 302


# --- a change to the image while it is uploaded again -------------------------------------------


async def _change_lands_at_the_reuploads_write(
    rig: Rig, image_id: str, change: Callable[[], Awaitable[httpx.Response]]
) -> list[asyncio.Task[httpx.Response]]:
    """Make ``change`` (an admin request, as from another worker) land the moment the
    re-upload writes the registry: before the write if nothing keeps it out (the image's lock
    is free), else left waiting for that lock. The tasks of the changes started."""
    state = rig.app.services
    registry = state.registry
    put = registry.put
    started: list[asyncio.Task[httpx.Response]] = []

    async def put_with_a_change_landing(record: ImageRecord) -> None:
        if record.image_id == image_id and not started:  # the re-upload's write
            started.append(asyncio.ensure_future(change()))
            token = await state.variants.lease.acquire(f"lock:image:{image_id}", 5.0)
            if token is not None:  # the lock is free: the change lands first
                await state.variants.lease.release(f"lock:image:{image_id}", token)
                await started[0]
        await put(record)

    registry.put = put_with_a_change_landing
    return started


async def test_a_delete_during_a_reupload_is_not_revived(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(7))).status_code == 201
    await expire_upstream_uploads(rig)
    changes = await _change_lands_at_the_reuploads_write(
        rig, "mug", lambda: rig.client.delete("/images/mug", headers=AUTH)
    )

    answer = await rig.client.get("/img/mug/320x320/ffffff.jpg")  # asked before the delete
    assert answer.status_code == 302, answer.text
    assert len(changes) == 1 and (await changes[0]).status_code == 200
    assert (await rig.client.get("/images/mug", headers=AUTH)).status_code == 404
    assert (await rig.client.get("/img/mug/320x320/ffffff.jpg")).status_code == 404


async def test_a_purge_during_a_reupload_is_not_undone(rig: Rig) -> None:
    assert (await rig.upload("mug", photo(8))).status_code == 201
    first = (await rig.client.get("/images/mug", headers=AUTH)).json()["unique_filename"]
    await expire_upstream_uploads(rig)
    changes = await _change_lands_at_the_reuploads_write(
        rig, "mug", lambda: rig.client.delete("/images/mug/variants", headers=AUTH)
    )

    assert (await rig.client.get("/img/mug/320x320/ffffff.jpg")).status_code == 302
    assert len(changes) == 1 and (await changes[0]).status_code == 200
    record = await rig.app.services.registry.get("mug")
    assert record is not None
    assert record.extra.get(VARIANTS_GENERATION) == 1, "the purge's new generation stands"
    assert record.unique_filename != first, "and so does the re-upload"
