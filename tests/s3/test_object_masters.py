"""Masters in a real SeaweedFS: one copy for the fleet, local disk as its cache, and faults.

Two ``LayeredMasterStore`` on one bucket, each with a local directory of its own, are two
replicas; they share a lease store (diskcache, as the workers of one host would; Redis in a
fleet: the same protocol) for the unsent-master markers.

A put "while the store is down" is made with the replica's breaker open (it found the store
down a moment before), so no request reaches the paused server: a PUT that times out against
a paused server is still in its socket and lands when the server resumes, which would race
with what the test checks next. (That late write is real: the orphan cleaner removes what
it leaves of a deleted image.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.errors import ServiceUnavailableError
from proxy.stores.leases import DiskLease
from proxy.stores.masters import DiskMasterStore, MasterKey
from proxy.stores.object_masters import LayeredMasterStore, ObjectMasterStore, object_key
from proxy.stores.objects import Breaker, ObjectStore, ObjectStoreUnavailableError
from tests.clock import Clock
from tests.s3.conftest import config_for, new_bucket, until
from tests.s3.server import SeaweedServer

pytestmark = pytest.mark.slow

KEY = MasterKey("shoe", "c0ffee", "medium")
MASTER = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000)


class Fleet:
    """Replicas on one bucket: each its own local disk, one lease store between them."""

    def __init__(self, store: ObjectStore, root: Path) -> None:
        self.store = store
        self.root = root
        self.lease = DiskLease(root / "leases")
        self.clock = Clock(1000.0)
        self.replicas: list[LayeredMasterStore] = []

    def replica(self, name: str, *, lease: bool = True, **options: float) -> LayeredMasterStore:
        layered = LayeredMasterStore(
            DiskMasterStore(self.root / name),
            ObjectMasterStore(self.store),
            breaker=Breaker(cooldown=5.0, clock=self.clock),
            unsent_lease=self.lease if lease else None,
            **options,
        )
        self.replicas.append(layered)
        return layered

    async def close(self) -> None:
        for layered in self.replicas:
            await layered.close()
        await self.lease.close()


@pytest.fixture
async def fleet(store: ObjectStore, tmp_path: Path) -> AsyncIterator[Fleet]:
    group = Fleet(store, tmp_path)
    yield group
    await group.close()


@pytest.fixture
async def fragile(s3: SeaweedServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    """A fleet whose store calls give up after a second (for pausing the server)."""
    async with ObjectStore(config_for(s3, new_bucket(), "cutproxy", timeout=1.0)) as client:
        await client.ensure_bucket()
        group = Fleet(client, tmp_path)
        yield group
        await group.close()


async def test_the_object_store_keeps_masters_by_image_version_and_quality(
    store: ObjectStore,
) -> None:
    masters = ObjectMasterStore(store)
    others = [MasterKey("shoe", "d00d", "medium"), MasterKey("bag", "c0ffee", "high")]
    assert await masters.get(KEY) is None and not await masters.exists(KEY)
    await masters.put(KEY, MASTER)
    for key in others:
        await masters.put(key, key.filename.encode())
    assert [k async for k in store.list("masters/shoe")] == [
        "masters/shoe/c0ffee-medium.png",
        "masters/shoe/d00d-medium.png",
    ]
    assert await masters.get(KEY) == MASTER and await masters.exists(KEY)
    assert await masters.create(KEY, b"another mint") is False  # write-once
    assert await masters.get(KEY) == MASTER
    assert await masters.images() == ["bag", "shoe"]
    assert await masters.versions("shoe") == [KEY, others[0]]
    assert await masters.delete(others[0]) is True and await masters.delete(others[0]) is False
    assert await masters.delete_image("shoe") == 1
    assert await masters.images() == ["bag"]
    assert await masters.versions("shoe") == []


async def test_a_master_put_on_one_replica_is_found_by_another(fleet: Fleet) -> None:
    first, second = fleet.replica("a"), fleet.replica("b")
    await first.put(KEY, MASTER)
    assert await fleet.store.get(object_key(KEY)) == MASTER  # the durable copy
    assert await second.local.get(KEY) is None
    assert await second.get(KEY) == MASTER
    assert await second.local.get(KEY) == MASTER  # read through: kept locally now
    assert await second.exists(KEY)
    assert await second.images() == ["shoe"] and await second.versions("shoe") == [KEY]
    assert first.unsent == [] and first.write_failures == 0


async def test_two_mints_of_one_version_end_with_one_master_for_the_fleet(fleet: Fleet) -> None:
    first, second = fleet.replica("a"), fleet.replica("b")
    await first.put(KEY, MASTER)
    await second.put(KEY, b"a second mint of the same version")  # a lapsed lease, say
    assert await fleet.store.get(object_key(KEY)) == MASTER
    assert await second.get(KEY) == MASTER  # its local copy replaced by the fleet's


async def test_a_mint_while_the_store_is_down_is_kept_and_never_minted_again(
    fragile: Fleet, s3: SeaweedServer
) -> None:
    minter, other = fragile.replica("a"), fragile.replica("b")
    s3.pause()
    try:
        minter.breaker.failed()  # found down a moment ago: no PUT left in flight to land later
        await minter.put(KEY, MASTER)  # no error: the paid master is kept locally
        assert minter.unsent == [KEY] and minter.write_failures == 1
        assert await minter.get(KEY) == MASTER  # served from local disk meanwhile
        with pytest.raises(ObjectStoreUnavailableError):
            await other.get(KEY)  # not a miss: a miss would mint again
    finally:
        s3.resume()
    fragile.clock.advance(6)  # past the breaker's cooldown
    # The store answers but has no master yet: the marker says a replica holds it unsent.
    with pytest.raises(ServiceUnavailableError) as caught:
        await other.get(KEY)
    assert caught.value.code == "master_unsent" and caught.value.retry_after
    assert await minter.send_unsent() is True
    assert minter.unsent == [] and minter.written_later == 1
    assert await other.get(KEY) == MASTER
    assert not (minter.local.root / ".unsent" / "shoe").exists()


async def test_a_lost_marker_would_let_another_replica_mint_again(
    fragile: Fleet, s3: SeaweedServer
) -> None:
    """What the marker is for: without a fleet lease, the same outage is a plain miss."""
    minter, other = fragile.replica("a", lease=False), fragile.replica("b", lease=False)
    s3.pause()
    try:
        minter.breaker.failed()  # found down a moment ago: no PUT left in flight to land later
        await minter.put(KEY, MASTER)
    finally:
        s3.resume()
    fragile.clock.advance(6)
    assert await other.get(KEY) is None  # the caller would mint: the marker prevents this


async def test_unsent_masters_are_retried_in_the_background(
    fragile: Fleet, s3: SeaweedServer
) -> None:
    minter = fragile.replica("a", retry_first=0.05, retry_max=0.2)
    s3.pause()
    try:
        minter.breaker.failed()  # found down a moment ago: no PUT left in flight to land later
        await minter.put(KEY, MASTER)
        assert minter.unsent == [KEY]
    finally:
        s3.resume()
    await until(lambda: not minter.unsent)
    assert await fragile.store.get(object_key(KEY)) == MASTER
    assert minter.written_later == 1


async def test_unsent_masters_survive_a_restart(fragile: Fleet, s3: SeaweedServer) -> None:
    minter = fragile.replica("a")
    s3.pause()
    try:
        minter.breaker.failed()  # found down a moment ago: no PUT left in flight to land later
        await minter.put(KEY, MASTER)
    finally:
        s3.resume()
    await minter.close()  # the process ends before any retry (or is killed: the same files)
    restarted = fragile.replica("a", retry_first=0.05)
    assert await restarted.start() == 1
    await until(lambda: not restarted.unsent)
    assert await fragile.store.get(object_key(KEY)) == MASTER


async def test_a_put_records_the_master_before_trying_the_store(fleet: Fleet) -> None:
    """A kill -9 between the local write and the store's answer leaves the record: the
    next start sends it. (Here the record is left as that crash would leave it.)"""
    minter = fleet.replica("a")
    await minter.local.put(KEY, MASTER)
    record = minter.local.root / ".unsent" / KEY.image_id / KEY.filename
    record.parent.mkdir(parents=True)
    record.touch()
    orphan_record = record.parent / "d00d-medium.png"  # its master never reached the disk
    orphan_record.touch()
    restarted = fleet.replica("a")
    assert await restarted.start() == 1
    assert await restarted.send_unsent() is True
    assert await fleet.store.get(object_key(KEY)) == MASTER
    assert not record.exists() and not orphan_record.exists()


async def test_concurrent_misses_of_a_new_master_are_misses_not_master_unsent(
    fleet: Fleet,
) -> None:
    # A burst of first requests for a new image: every one looks for an unsent marker at once,
    # and none may take another's look for a replica holding the master unsent.
    replica = fleet.replica("b")
    assert await asyncio.gather(*(replica.get(KEY) for _ in range(40))) == [None] * 40


async def test_while_the_store_is_down_local_masters_serve_and_misses_fail_fast(
    fragile: Fleet, s3: SeaweedServer
) -> None:
    replica = fragile.replica("a")
    await replica.put(KEY, MASTER)
    elsewhere = MasterKey("bag", "c0ffee", "medium")
    await fragile.replica("b").put(elsewhere, b"bag master")
    s3.pause()
    try:
        assert await replica.get(KEY) == MASTER  # local: no store call at all
        with pytest.raises(ObjectStoreUnavailableError):
            await replica.get(elsewhere)  # waited for the store's deadline once
        skipped = replica.breaker.skipped
        with pytest.raises(ObjectStoreUnavailableError) as caught:
            await replica.get(elsewhere)  # the breaker is open: not tried
        assert replica.breaker.skipped == skipped + 1
        assert caught.value.status_code == 503 and caught.value.retry_after
    finally:
        s3.resume()
    fragile.clock.advance(6)
    assert await replica.get(elsewhere) == b"bag master"  # the same clients, no restart


async def test_deleting_an_image_removes_it_everywhere_and_no_retry_brings_it_back(
    fragile: Fleet, s3: SeaweedServer
) -> None:
    first, second = fragile.replica("a"), fragile.replica("b")
    old = MasterKey("shoe", "0ld", "medium")
    await first.put(old, b"old master")
    s3.pause()
    try:
        first.breaker.failed()  # found down a moment ago: no PUT left in flight to land later
        await first.put(KEY, MASTER)  # unsent
    finally:
        s3.resume()
    fragile.clock.advance(6)
    assert await first.delete_image("shoe") == 2
    assert first.unsent == []
    assert await first.send_unsent() is True  # nothing left to send
    assert [k async for k in fragile.store.list("masters")] == []
    assert await first.versions("shoe") == [] and await first.images() == []
    assert await second.get(KEY) is None  # no marker left behind either


async def test_a_delete_that_cannot_reach_the_store_raises_and_keeps_the_local_copy(
    fragile: Fleet, s3: SeaweedServer
) -> None:
    replica = fragile.replica("a")
    await replica.put(KEY, MASTER)
    s3.pause()
    try:
        with pytest.raises(ObjectStoreUnavailableError):
            await replica.delete_image("shoe")
        with pytest.raises(ObjectStoreUnavailableError):
            await replica.delete(KEY)
    finally:
        s3.resume()
    fragile.clock.advance(6)
    assert await replica.get(KEY) == MASTER
    assert await replica.delete(KEY) is True
    assert await fragile.store.get(object_key(KEY)) is None
    assert await replica.local.get(KEY) is None
