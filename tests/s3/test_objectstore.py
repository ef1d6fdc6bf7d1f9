"""proxy.objectstore against a real SeaweedFS S3 gateway (signed requests, loopback)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from proxy.errors import ServiceUnavailableError
from proxy.stores.objects import (
    ObjectStore,
    ObjectStoreDeniedError,
    ObjectStoreUnavailableError,
)
from tests.s3.conftest import config_for, new_bucket
from tests.s3.server import (
    ACCESS_KEY,
    READ_ONLY_ACCESS_KEY,
    READ_ONLY_SECRET_KEY,
    SeaweedServer,
)

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(15 * 1024)


async def test_round_trip(store: ObjectStore) -> None:
    assert await store.put("masters/img1.png", PNG, "image/png") is True

    assert await store.get("masters/img1.png") == PNG
    info = await store.head("masters/img1.png")
    assert info is not None
    assert info.size == len(PNG)
    assert info.etag
    await store.delete("masters/img1.png")
    assert await store.get("masters/img1.png") is None
    assert await store.head("masters/img1.png") is None


async def test_missing_key_is_none(store: ObjectStore) -> None:
    assert await store.get("variants/nothing/here.webp") is None
    assert await store.head("variants/nothing/here.webp") is None
    await store.delete("variants/nothing/here.webp")  # deleting nothing is fine


async def test_overwrite_replaces_and_write_once_keeps_the_first(store: ObjectStore) -> None:
    assert await store.put("v/a.jpg", b"first", "image/jpeg", write_once=True) is True
    assert await store.put("v/a.jpg", b"second", "image/jpeg", write_once=True) is False
    assert await store.get("v/a.jpg") == b"first"

    assert await store.put("v/a.jpg", b"third", "image/jpeg") is True
    assert await store.get("v/a.jpg") == b"third"


async def test_ensure_bucket_creates_a_missing_bucket_once(s3: SeaweedServer) -> None:
    bucket = new_bucket()
    async with ObjectStore(config_for(s3, bucket)) as client:
        assert await client.ensure_bucket() is True
        assert await client.ensure_bucket() is False  # there now: nothing to do
        await client.put("k", b"v", "text/plain")
    async with ObjectStore(config_for(s3, bucket)) as other:
        assert await other.get("k") == b"v"


async def test_ensure_bucket_names_the_fix_when_the_keys_may_not_create(
    s3: SeaweedServer,
) -> None:
    config = config_for(
        s3, new_bucket(), access_key=READ_ONLY_ACCESS_KEY, secret_key=READ_ONLY_SECRET_KEY
    )
    async with ObjectStore(config) as client:
        with pytest.raises(ObjectStoreDeniedError) as caught:
            await client.ensure_bucket()
    assert "may not create it" in caught.value.message
    assert caught.value.status_code == 503
    assert READ_ONLY_SECRET_KEY not in caught.value.message + caught.value.detail


async def test_list_and_delete_prefix_cover_whole_folders(s3: SeaweedServer) -> None:
    bucket = new_bucket()
    async with ObjectStore(config_for(s3, bucket, "tenant"), page_size=2) as client:
        await client.ensure_bucket()
        keys = ["img1/a.png", "img1/b/c.webp", "img1/d.jpg", "img10/a.png", "img2/a.png"]
        for key in keys:
            await client.put(key, key.encode(), "application/octet-stream")

        assert sorted([k async for k in client.list("img1")]) == keys[:3]
        assert sorted([k async for k in client.list()]) == keys

        assert await client.delete_prefix("img1") == 3  # two pages of two and one

        assert sorted([k async for k in client.list()]) == ["img10/a.png", "img2/a.png"]
        assert await client.get("img10/a.png") == b"img10/a.png"
        assert await client.delete_prefix("img1") == 0


async def test_prefixes_keep_stores_apart(s3: SeaweedServer) -> None:
    bucket = new_bucket()
    async with (
        ObjectStore(config_for(s3, bucket, "a")) as one,
        ObjectStore(config_for(s3, bucket, "b/c")) as two,
        ObjectStore(config_for(s3, bucket)) as whole,
    ):
        await one.ensure_bucket()
        await one.put("k", b"1", "text/plain")
        await two.put("k", b"2", "text/plain")
        assert (await one.get("k"), await two.get("k")) == (b"1", b"2")
        assert sorted([k async for k in whole.list()]) == ["a/k", "b/c/k"]


async def test_wrong_credentials_give_a_clear_error_without_the_keys(
    s3: SeaweedServer, store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_secret = "definitely-not-the-secret-4242"
    bucket = store.config.bucket
    async with ObjectStore(config_for(s3, bucket, secret_key=wrong_secret)) as client:
        with pytest.raises(ObjectStoreDeniedError) as on_get:
            await client.get("anything")
        with pytest.raises(ObjectStoreDeniedError) as on_put:
            await client.put("anything", b"x", "text/plain")
        with pytest.raises(ObjectStoreDeniedError) as on_bucket:
            await client.ensure_bucket()
        shown = [repr(client), str(client.config)]
    assert on_get.value.as_json() == {
        "error": "object_store_denied",
        "message": "the object store refused the proxy's credentials",
    }
    assert "PROXY_STORE_SECRET_KEY" in on_bucket.value.message
    for error in (on_get.value, on_put.value, on_bucket.value):
        shown += [error.message, str(error), repr(error), error.detail]
        # no foreign exception (whose text can quote the server) in what a traceback shows
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__
    shown.append(caplog.text)
    assert "PROXY_STORE_SECRET_KEY" in caplog.text
    for text in shown:
        assert wrong_secret not in text
        assert ACCESS_KEY not in text


async def test_a_stalled_store_answers_503_within_the_call_deadline_then_recovers(
    s3: SeaweedServer, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = new_bucket()
    async with ObjectStore(config_for(s3, bucket, timeout=0.5)) as client:
        await client.ensure_bucket()
        await client.put("k", PNG, "image/png")
        s3.pause()  # the port stays open, nothing answers
        try:
            with pytest.raises(ObjectStoreUnavailableError) as on_get:
                await client.get("k")
            with pytest.raises(ObjectStoreUnavailableError):
                await client.put("k2", PNG, "image/png")
        finally:
            s3.resume()
        assert not client.reachable
        assert await client.get("k") == PNG  # the same client, no restart
        assert client.reachable
    error = on_get.value
    assert isinstance(error, ServiceUnavailableError) and error.status_code == 503
    assert error.retry_after is not None and error.retry_after > 0
    assert error.as_json() == {
        "error": "object_store_unavailable",
        "message": "the object store did not answer within 0.5 s; retry later",
    }
    assert "object store unavailable on get" in caplog.text
    assert "object store reachable again" in caplog.text


async def test_a_stopped_store_answers_503_and_the_same_client_recovers_after_restart(
    s3: SeaweedServer,
) -> None:
    bucket = new_bucket()
    async with ObjectStore(config_for(s3, bucket, timeout=2.0)) as client:
        await client.ensure_bucket()
        await client.put("masters/m.png", PNG, "image/png")
        s3.stop()  # connections refused
        try:
            with pytest.raises(ObjectStoreUnavailableError) as caught:
                await client.get("masters/m.png")
            with pytest.raises(ObjectStoreUnavailableError):
                [k async for k in client.list()]
        finally:
            s3.start()
        assert caught.value.message == "the object store failed; retry later"
        assert await client.get("masters/m.png") == PNG  # written before the stop: kept
        await client.put("after", b"ok", "text/plain")
        assert [k async for k in client.list()] == ["after", "masters/m.png"]


async def test_readers_see_the_old_or_the_new_object_never_a_part(store: ObjectStore) -> None:
    size = 8 * 1024 * 1024
    versions = [bytes([i]) * size for i in range(1, 4)]
    seen: list[bytes | None] = []
    writing = True

    async def writer() -> None:
        nonlocal writing
        for data in versions:
            await store.put("big.png", data, "image/png")
        writing = False

    async def reader() -> None:
        while writing:
            seen.append(await store.get("big.png"))

    await asyncio.gather(writer(), *(reader() for _ in range(4)))

    assert seen, "no read overlapped the writes"
    whole = {None, *versions}
    assert all(data in whole for data in seen), [
        None if d is None else (len(d), d[:1], d[-1:]) for d in seen if d not in whole
    ]


async def test_keys_are_checked_before_anything_is_sent(store: ObjectStore) -> None:
    for key in ("", "/abs", "a//b", "a/../b", "a/./b", "trailing/"):
        with pytest.raises(ValueError, match="object key"):
            await store.get(key)
    with pytest.raises(ValueError):
        await store.delete_prefix("")  # would empty the store


async def test_a_closed_store_refuses_calls(s3: SeaweedServer) -> None:
    client = ObjectStore(config_for(s3, new_bucket()))
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("k")


async def test_ensure_bucket_names_a_region_other_than_us_east_1(s3: SeaweedServer) -> None:
    # CreateBucket then carries a LocationConstraint, as AWS requires outside us-east-1.
    bucket = new_bucket()
    async with ObjectStore(config_for(s3, bucket, region="eu-west-1")) as client:
        assert await client.ensure_bucket() is True
        await client.put("k", b"v", "text/plain")
        assert await client.get("k") == b"v"
