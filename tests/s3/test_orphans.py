"""Orphans in a real SeaweedFS: objects of images the registry does not know, found and removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from proxy.stores.derived import StoredVariant
from proxy.stores.masters import DiskMasterStore, MasterKey
from proxy.stores.object_masters import ObjectMasterStore
from proxy.stores.object_variants import ObjectVariantTier
from proxy.stores.objects import ObjectStore
from proxy.stores.orphans import clean_local_masters, clean_orphans, find_orphans, orphan_report

pytestmark = pytest.mark.slow

LATER = 2 * 3600.0  # past the default grace


class Registry:
    """The registry's answer, as the admin command will give it: a set of image ids."""

    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)
        self.asked: list[str] = []

    async def __call__(self, image_id: str) -> bool:
        self.asked.append(image_id)
        return image_id in self.ids


def later() -> float:
    return time.time() + LATER


async def keep(
    store: ObjectStore, image_id: str, *, master: bool = True, variants: int = 1
) -> None:
    if master:
        await ObjectMasterStore(store).put(MasterKey(image_id, "v1", "medium"), b"master")
    tier = ObjectVariantTier(store)
    for i in range(variants):
        data = os.urandom(1000)
        await tier.write(
            f"/img/{image_id}/{i}x{i}/pad/ffffff.jpg#p~v1-medium",
            StoredVariant.of(data, "image/jpeg", i, i, 0.0),
        )


async def test_unregistered_images_are_orphans_registered_ones_are_not(store: ObjectStore) -> None:
    await keep(store, "live", variants=2)
    await keep(store, "gone", variants=2)
    await keep(store, "master-only", variants=0)
    await keep(store, "variants-only", master=False)
    registry = Registry("live")
    assert await find_orphans(store, registry, clock=later) == [
        "gone",
        "master-only",
        "variants-only",
    ]
    report = {o.image_id: o for o in await orphan_report(store, registry, clock=later)}
    assert report["gone"].objects == 5  # a master, two variants' bytes and their indexes
    assert report["master-only"].objects == 1 and report["master-only"].nbytes == len(b"master")


async def test_young_objects_are_spared_an_upload_registers_after_its_master(
    store: ObjectStore,
) -> None:
    await keep(store, "uploading", variants=0)
    assert await find_orphans(store, Registry()) == []  # written just now: within the grace
    assert await find_orphans(store, Registry(), clock=later) == ["uploading"]
    assert await find_orphans(store, Registry(), grace=0) == ["uploading"]


async def test_cleaning_removes_the_orphans_objects_and_nothing_else(store: ObjectStore) -> None:
    await keep(store, "live", variants=2)
    await keep(store, "gone", variants=3)
    before = [k async for k in store.list("masters/live")] + [
        k async for k in store.list("variants/live")
    ]
    removed = await clean_orphans(store, Registry("live"), clock=later)
    assert [o.image_id for o in removed] == ["gone"]
    assert [k async for k in store.list("masters/gone")] == []
    assert [k async for k in store.list("variants/gone")] == []
    after = [k async for k in store.list("masters/live")] + [
        k async for k in store.list("variants/live")
    ]
    assert after == before
    # Emptied folders (SeaweedFS keeps listing them) are no orphans: nothing is in them.
    assert await find_orphans(store, Registry("live"), clock=later) == []


async def test_an_image_registered_meanwhile_is_not_removed(store: ObjectStore) -> None:
    await keep(store, "racing", variants=1)

    class RegisteredOnSecondAsk(Registry):
        async def __call__(self, image_id: str) -> bool:
            await super().__call__(image_id)
            return len(self.asked) > 1

    registry = RegisteredOnSecondAsk()
    assert await clean_orphans(store, registry, clock=later) == []
    assert registry.asked == ["racing", "racing"]
    assert [k async for k in store.list("masters/racing")] != []


async def test_a_hosts_local_masters_of_unregistered_images_are_removed(tmp_path: Path) -> None:
    local = DiskMasterStore(tmp_path / "masters")
    for image_id in ("live", "gone"):
        await local.put(MasterKey(image_id, "v1", "medium"), b"master")
    assert await clean_local_masters(local, Registry("live")) == []  # young: spared
    assert await clean_local_masters(local, Registry("live"), clock=later) == ["gone"]
    assert await local.images() == ["live"]


def test_the_admin_endpoint_defaults_to_the_same_grace() -> None:
    # proxy.serving.store_admin keeps its own copy, so redirect mode never imports obstore
    from proxy.serving import store_admin
    from proxy.stores import orphans

    assert store_admin.GRACE == orphans.GRACE
