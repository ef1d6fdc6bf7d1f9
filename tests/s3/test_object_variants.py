"""Derived variants in a real SeaweedFS: found by other replicas, content-addressed, and faults.

A replica here is a ``TieredVariants(memory, disk, object)`` with a memory and a disk of its
own, on the bucket every replica shares.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import pytest

from proxy.stores.derived import DiskBytes, MemoryBytes, StoredVariant, TieredVariants
from proxy.stores.object_variants import (
    IMMUTABLE,
    ObjectVariantTier,
    VariantObject,
    index_key,
    public_url,
)
from proxy.stores.objects import Breaker, ObjectStore, ObjectStoreUnavailableError
from tests.clock import Clock
from tests.s3.conftest import config_for, new_bucket, until
from tests.s3.server import SeaweedServer

pytestmark = pytest.mark.slow

KEY = "/img/shoe/640x640/pad/ffffff.jpg#1a2b3c4d~v1.0-medium"
OTHER = "/img/shoe/320x320/pad/ffffff.jpg#1a2b3c4d~v1.0-medium"


def variant(data: bytes | None = None, content_type: str = "image/jpeg") -> StoredVariant:
    return StoredVariant.of(data or os.urandom(30_000), content_type, 640, 640, 1_700_000_000.0)


class Replicas:
    def __init__(self, store: ObjectStore, root: Path) -> None:
        self.store = store
        self.root = root
        self.clock = Clock(1000.0)
        self.made: list[TieredVariants] = []

    async def replica(self, name: str, **options: float) -> TieredVariants:
        disk = await DiskBytes.open(self.root / name, 10_000_000)
        tier = ObjectVariantTier(
            self.store,
            breaker=Breaker(cooldown=5.0, clock=self.clock),
            **options,  # type: ignore[arg-type]
        )
        tiers = TieredVariants(MemoryBytes(10_000_000), disk, tier)
        self.made.append(tiers)
        return tiers

    async def close(self) -> None:
        for tiers in self.made:
            await tiers.close()


def object_tier(tiers: TieredVariants) -> ObjectVariantTier:
    tier = tiers.lower[-1]
    assert isinstance(tier, ObjectVariantTier)
    return tier


@pytest.fixture
async def replicas(store: ObjectStore, tmp_path: Path) -> AsyncIterator[Replicas]:
    group = Replicas(store, tmp_path)
    yield group
    await group.close()


@pytest.fixture
async def fragile(s3: SeaweedServer, tmp_path: Path) -> AsyncIterator[Replicas]:
    async with ObjectStore(config_for(s3, new_bucket(), "cutproxy", timeout=1.0)) as client:
        await client.ensure_bucket()
        group = Replicas(client, tmp_path)
        yield group
        await group.close()


async def test_a_variant_derived_on_one_replica_is_found_by_another(replicas: Replicas) -> None:
    first, second = await replicas.replica("a"), await replicas.replica("b")
    kept = variant()
    await first.put(KEY, kept)
    await object_tier(first).flush()
    hit = await second.find(KEY)
    assert hit is not None and hit.tier == "object"
    assert hit.variant == kept  # bytes, type, ETag, size, time
    # Copied up on the way: the next lookup on that host is a disk hit, then memory.
    third = TieredVariants(MemoryBytes(10_000_000), *second.lower)
    assert (await third.find(KEY)).tier == "disk"  # type: ignore[union-attr]
    assert (await third.find(KEY)).tier == "memory"  # type: ignore[union-attr]


async def test_the_bytes_are_content_addressed_and_immutable(replicas: Replicas) -> None:
    tier = object_tier(await replicas.replica("a"))
    data = os.urandom(40_000)
    entry = await tier.write(KEY, variant(data))
    digest = hashlib.sha256(data).hexdigest()
    assert entry.object_key == f"variants/shoe/{digest}.jpg"
    assert entry.etag == f'"{digest[:32]}"' == variant(data).etag
    assert await replicas.store.get(entry.object_key) == data
    assert await tier.locate(KEY) == entry
    assert public_url("https://cdn.example.com/media/", entry.object_key) == (
        f"https://cdn.example.com/media/variants/shoe/{digest}.jpg"
    )
    # The same bytes under another key (a re-derivation after a purge): one object.
    await tier.write(OTHER, variant(data))
    keys = [k async for k in replicas.store.list("variants/shoe")]
    assert keys.count(entry.object_key) == 1 and len(keys) == 3  # the bytes + two indexes
    # The store sends the bytes with a year-long, immutable Cache-Control.
    import obstore

    got = await obstore.get_async(replicas.store._store, entry.object_key)
    assert got.attributes.get("Cache-Control") == IMMUTABLE


async def test_bytes_that_do_not_match_their_index_are_a_miss(replicas: Replicas) -> None:
    tier = object_tier(await replicas.replica("a"))
    entry = await tier.write(KEY, variant())
    await replicas.store.put(entry.object_key, b"damaged", "image/jpeg")
    assert await tier.get(KEY) is None
    await replicas.store.put(index_key(KEY), b"{not json", "application/json")
    assert await tier.get(KEY) is None
    # An index entry for another key (what a hash collision would be): not this variant.
    await tier.write(KEY, variant())
    other = VariantObject(**{**asdict(entry), "key": OTHER})
    await replicas.store.put(index_key(KEY), other.to_json(), "application/json")
    assert await tier.get(KEY) is None


async def test_puts_are_queued_and_served_from_the_queue_until_sent(replicas: Replicas) -> None:
    tier = object_tier(await replicas.replica("a"))
    kept = variant()
    await tier.put(KEY, kept)
    assert tier.queued == 1
    assert await tier.get(KEY) == kept  # not in the store yet, found all the same
    await tier.flush()
    assert tier.queued == 0 and tier.written == 1
    fresh = ObjectVariantTier(replicas.store)
    assert await fresh.get(KEY) == kept


async def test_the_write_queue_is_bounded_by_bytes(replicas: Replicas) -> None:
    tier = ObjectVariantTier(replicas.store, max_queued_bytes=70_000)
    for i in range(3):
        await tier.put(f"/img/shoe/{i}x{i}/pad/ffffff.jpg#p~v-medium", variant())
    assert tier.queued == 2 and tier.dropped == 1
    await tier.close()
    assert tier.written == 2


async def test_deleting_an_image_removes_its_objects_and_only_its(replicas: Replicas) -> None:
    tier = object_tier(await replicas.replica("a"))
    bag = "/img/bag/640x640/pad/ffffff.jpg#1a2b3c4d~v1.0-medium"
    for key in (KEY, OTHER, bag):
        await tier.write(key, variant())
    await tier.put("/img/shoe/100x100/pad/ffffff.jpg#p~v-medium", variant())  # still queued
    assert await tier.delete_prefix("/img/shoe/") == 2
    assert tier.queued == 0
    assert [k async for k in replicas.store.list("variants/shoe")] == []
    assert await tier.get(bag) is not None
    assert await tier.delete_prefix("/img/nothing/") == 0


async def test_a_longer_prefix_removes_the_matching_variants_and_bytes_no_other_needs(
    replicas: Replicas,
) -> None:
    tier = object_tier(await replicas.replica("a"))
    shared = os.urandom(10_000)
    big = "/img/shoe/1280x1280/pad/ffffff.jpg#1a2b3c4d~v1.0-medium"
    await tier.write(KEY, variant(shared))
    await tier.write(OTHER, variant(shared))  # the same bytes
    own = await tier.write(big, variant())
    assert await tier.delete_prefix("/img/shoe/640x640/") == 1
    assert await tier.get(KEY) is None
    assert await tier.get(OTHER) is not None  # its bytes were shared: kept
    assert await tier.delete_prefix("/img/shoe/1280") == 1
    assert await replicas.store.get(own.object_key) is None
    assert await tier.delete_prefix("/img/sh") == 1  # every image starting so: shoe
    assert [k async for k in replicas.store.list("variants")] == []


async def test_a_store_that_is_down_is_a_quick_miss_and_writes_are_retried(
    fragile: Replicas, s3: SeaweedServer
) -> None:
    first = await fragile.replica("a", read_timeout=0.5, retry_first=0.05, retry_max=0.2)
    tier = object_tier(first)
    second = await fragile.replica("b")
    kept = variant()
    s3.pause()
    try:
        assert await first.find(OTHER) is None  # the store's read failed: a miss
        assert first.failures == 1 and tier.breaker.open
        assert await first.find(OTHER) is None  # the breaker: not even tried
        assert first.failures == 1 and tier.breaker.skipped >= 1
        await first.put(KEY, kept)  # derived meanwhile: served from memory and disk
        assert (await first.find(KEY)).tier == "memory"  # type: ignore[union-attr]
        await until(lambda: tier.write_failures >= 1)
        assert tier.queued == 1
    finally:
        s3.resume()
    await until(lambda: tier.queued == 0)  # the writers came back by themselves
    assert tier.written == 1
    fragile.clock.advance(6)
    hit = await second.find(KEY)
    assert hit is not None and hit.tier == "object" and hit.variant == kept


async def test_a_delete_during_a_failing_write_is_not_undone_by_its_retry(
    fragile: Replicas, s3: SeaweedServer
) -> None:
    tier = object_tier(await fragile.replica("a"))
    s3.pause()
    try:
        await tier.put(KEY, variant())
        await until(lambda: tier.in_flight == 1)
        with pytest.raises(ObjectStoreUnavailableError):
            await tier.delete_prefix("/img/shoe/")  # waits for the write, then fails itself
        assert tier.queued == 0  # the failed write, queued again, was dropped
    finally:
        s3.resume()
    fragile.clock.advance(6)
    await tier.flush()
    assert await tier.delete_prefix("/img/shoe/") == 0
    assert [k async for k in fragile.store.list("variants")] == []
