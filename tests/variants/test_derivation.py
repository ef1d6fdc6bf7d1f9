"""Deriver against the real engine: variants made locally from one master, kept in tiers."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
import pyvips

from proxy.errors import BadRequestError, UpstreamError
from proxy.stores.derived import ENTRY_OVERHEAD, StoredVariant
from proxy.stores.masters import DiskMasterStore
from proxy.stores.registry import VARIANTS_GENERATION
from proxy.url.variant import image_prefix
from proxy.variants.derivation import DeriveSpec
from proxy.variants.derive import Master, derive
from tests.variants.conftest import Rig

pytestmark = pytest.mark.slow

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def spec(
    width: int, height: int, fit: Any = "pad", bg: str = "ffffff", fmt: Any = "jpg"
) -> DeriveSpec:
    return DeriveSpec(width, height, fit, bg, fmt, 85)


def pixels(variant: StoredVariant) -> tuple[int, int, int]:
    """What the bytes really are: width, height, bands (decoded, not the stored claims)."""
    image = pyvips.Image.new_from_buffer(variant.data, "")
    return image.width, image.height, image.bands


async def test_many_different_variants_at_once_cost_one_mint(rig: Rig) -> None:
    record = await rig.image(size=(800, 600))
    deriver = await rig.deriver()
    before = await rig.minted()
    specs = [
        spec(100 + 40 * n, 100 + 20 * n, fit)
        for n in range(4)
        for fit in ("contain", "pad", "cover")
    ]
    specs += [
        spec(300, 300, "contain", "transparent", "png"),
        spec(300, 300, "pad", "transparent", "webp"),
    ]

    # 14 different variants, each asked for three times at once
    found = await asyncio.gather(*(deriver.variant_bytes(record, s) for s in specs * 3))

    assert await rig.minted() == before + 1
    assert rig.events.counts["master:minted"] == 1
    assert rig.events.counts["derived"] == len(specs)  # identical requests shared one derivation
    for s, variant in zip(specs * 3, found, strict=True):
        width, height, bands = pixels(variant)
        assert (width, height) == (variant.width, variant.height)
        if s.fit == "contain":
            assert (
                width <= s.width
                and height <= s.height
                and max(width / s.width, height / s.height) > 0.99
            )
        else:
            assert (width, height) == (s.width, s.height)
        assert bands == (4 if s.bg == "transparent" else 3)
        assert variant.content_type == CONTENT_TYPES[s.fmt]


async def test_a_mastered_image_derives_new_sizes_with_the_upstream_down(own_rig: Rig) -> None:
    rig = own_rig
    mastered = await rig.image("mug", size=(800, 600))
    never = await rig.image("vase", size=(800, 600))  # uploaded, but no variant asked yet
    first = await rig.deriver()
    await first.variant_bytes(mastered, spec(200, 200))

    await anyio.to_thread.run_sync(rig.engine.server.stop)
    # a restarted worker: nothing in memory, the master and a variant on disk
    deriver = await rig.deriver()
    for s in [
        spec(320, 240),
        spec(64, 64, "cover", "transparent", "png"),
        spec(500, 100, "contain"),
    ]:
        variant = await deriver.variant_bytes(mastered, s)
        assert pixels(variant)[:2] == (variant.width, variant.height)
    assert (await deriver.variant_bytes(mastered, spec(200, 200))).etag
    assert rig.events.counts["found:disk"] == 1
    assert rig.events.counts["master:disk"] == 1

    # the upstream really is gone: an image without a master cannot be served
    with pytest.raises(UpstreamError):
        await deriver.variant_bytes(never, spec(200, 200))


async def test_an_evicted_variant_is_derived_again_without_a_mint(rig: Rig) -> None:
    record = await rig.image(size=(800, 600))
    masters = rig.masters()
    a, b = spec(400, 400, "pad", "ffffff"), spec(400, 400, "pad", "000000")
    sizing = await rig.deriver(masters)
    first = await sizing.variant_bytes(record, a)
    minted = await rig.minted()

    # tiers with room for about one variant, in memory and on disk: b pushes a out of both
    room = len(first.data) * 3 // 2
    small = await rig.deriver(masters, memory_bytes=room + ENTRY_OVERHEAD, disk_bytes=room)
    await small.variant_bytes(record, a)
    await small.variant_bytes(record, b)
    key = small.key(record, a)
    assert key not in small.tiers.memory
    assert key not in await rig.disk_keys(image_prefix(record.image_id))
    derived = rig.events.counts["derived"]

    again = await small.variant_bytes(record, a)

    assert rig.events.counts["derived"] == derived + 1
    assert again.etag == first.etag  # the same bytes as the first time
    assert await rig.minted() == minted


async def test_a_purge_derives_again_from_the_same_master(rig: Rig) -> None:
    record = await rig.image(size=(640, 480))
    deriver = await rig.deriver()
    await deriver.variant_bytes(record, spec(200, 200))
    minted, derived = await rig.minted(), rig.events.counts["derived"]

    purged = record.evolve(extra={VARIANTS_GENERATION: 1})
    assert deriver.key(purged, spec(200, 200)) != deriver.key(record, spec(200, 200))
    await deriver.variant_bytes(purged, spec(200, 200))

    assert rig.events.counts["derived"] == derived + 1
    assert await rig.minted() == minted


async def test_deleting_an_image_removes_its_master_and_variants(rig: Rig) -> None:
    doomed = await rig.image("mug", size=(640, 480))
    kept = await rig.image("mugs", size=(640, 480))  # an id that starts like the other's
    deriver = await rig.deriver()
    specs = [spec(100, 100), spec(200, 150, "cover")]
    for record in (doomed, kept):
        for s in specs:
            await deriver.variant_bytes(record, s)
    store = DiskMasterStore.under(rig.data)
    master_file = store.path(deriver.masters.key(doomed, "medium"))
    assert master_file.is_file()

    assert await deriver.masters.delete_image("mug") == 1
    assert await deriver.delete_image("mug") == 4  # two variants, in memory and on disk

    assert not master_file.exists()
    assert await store.versions("mug") == []
    assert deriver.masters.peek(doomed, "medium") is None
    assert await rig.disk_keys(image_prefix("mug")) == []
    assert not any(deriver.key(doomed, s) in deriver.tiers.memory for s in specs)
    # the other image keeps everything
    assert len(await rig.disk_keys(image_prefix("mugs"))) == 2
    assert all(deriver.key(kept, s) in deriver.tiers.memory for s in specs)
    assert await store.versions("mugs") == [deriver.masters.key(kept, "medium")]


async def test_the_limiter_bounds_parallel_derivations(rig: Rig) -> None:
    record = await rig.image(size=(800, 600))
    lock = threading.Lock()
    running, peak = 0, 0
    # Two derivations must be inside at once to pass (the limit is reached, not just kept):
    # a limiter of 1 would break the barrier, an unbounded one would raise the peak.
    pair = threading.Barrier(2, timeout=30)

    def counted(master: Master, *args: Any) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            pair.wait()
            return derive(master, *args)
        finally:
            with lock:
                running -= 1

    limiter = anyio.CapacityLimiter(2)
    deriver = await rig.deriver(limiter=limiter, derive=counted)
    specs = [spec(100 + 10 * n, 100) for n in range(8)]
    await asyncio.gather(*(deriver.variant_bytes(record, s) for s in specs))

    assert peak == 2
    assert rig.events.counts["derived"] == 8


async def test_the_decoded_master_cache_stays_within_its_bytes(rig: Rig) -> None:
    records = [await rig.image(f"img{n}", size=(400, 300)) for n in range(4)]
    one = 400 * 300 * 4  # a decoded master: 4 bytes a pixel
    masters = rig.masters(cache_bytes=2 * one + one // 2)  # room for two
    deriver = await rig.deriver(masters)
    for record in records:
        await deriver.variant_bytes(record, spec(100, 100))
        assert masters.cache.nbytes <= masters.cache.max_bytes
    assert len(masters.cache) == 2
    assert masters.peek(records[0], "medium") is None  # evicted first
    minted = await rig.minted()

    await deriver.variant_bytes(records[0], spec(120, 120))  # its master comes from disk

    assert await rig.minted() == minted
    assert rig.events.counts["master:disk"] == 1
    assert masters.cache.nbytes <= masters.cache.max_bytes and len(masters.cache) == 2


async def test_a_bad_variant_is_refused_before_anything_is_minted(rig: Rig) -> None:
    record = await rig.image(size=(640, 480))
    deriver = await rig.deriver()
    before = await rig.minted()
    for bad in [
        spec(0, 100),
        spec(100, 100, fit="stretch"),
        spec(100, 100, bg="transparent", fmt="jpg"),
        spec(100, 100, bg="red"),
        spec(100, 100, fmt="gif"),
        DeriveSpec(100, 100, "pad", "ffffff", "jpg", 0),
        spec(5000, 5000),
    ]:
        with pytest.raises(BadRequestError):
            await deriver.variant_bytes(record, bad)
    assert await rig.minted() == before
    assert rig.events.counts["master:minted"] == 0
