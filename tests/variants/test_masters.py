"""MasterService against the real engine: one mint per image version, however it is asked."""

from __future__ import annotations

import asyncio
import sys

import anyio
import pytest

from proxy.engine.render import fit
from proxy.stores.masters import DiskMasterStore
from proxy.stores.registry import VARIANTS_GENERATION, ImageRecord
from proxy.variants.masters import master_size
from tests.servers import REPO
from tests.variants.conftest import QUALITY, Rig, product_png

pytestmark = pytest.mark.slow


async def test_many_requests_for_one_image_mint_one_master(rig: Rig) -> None:
    record = await rig.image(size=(800, 600))
    masters = rig.masters()
    before = await rig.minted()

    found = await asyncio.gather(*(masters.get(record, QUALITY) for _ in range(20)))

    assert await rig.minted() == before + 1
    assert {m.size for m in found} == {(800, 600)}
    assert len({id(m) for m in found}) == 1  # one decode, shared
    assert rig.events.counts["master:minted"] == 1
    assert DiskMasterStore.under(rig.data).path(masters.key(record, QUALITY)).is_file()


async def test_two_workers_sharing_the_data_dir_mint_one_master(rig: Rig) -> None:
    """Two real processes, started together on one data directory: the lease decides."""
    record = await rig.image(size=(640, 480))
    # A slow mint: the second worker certainly asks while the first is still minting.
    await anyio.to_thread.run_sync(lambda: rig.engine.faults(token_latency=1.0))
    before = await rig.minted()
    args = [rig.engine.url, str(rig.data), record.unique_filename, "640", "480"]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.variants.master_worker",
            *args,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert (await worker.stdout.readline()).strip() == b"ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        with anyio.fail_after(60):  # a hang guard, not a timing
            outputs = [(await w.communicate())[0].decode() for w in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        await anyio.to_thread.run_sync(lambda: rig.engine.faults(token_latency=0.0))
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert await rig.minted() == before + 1
    # one worker minted it, the other found it in the store when the mint was done
    assert sorted(line.split()[1] for line in outputs) == ["minted", "shared"], outputs
    assert {line.split()[0] for line in outputs} == {"640x480"}


async def test_an_upload_that_carries_its_master_costs_one_mint(rig: Rig) -> None:
    masters = rig.masters()
    size = (900, 500)
    pending = ImageRecord("vase", "not-uploaded-yet", width=size[0], height=size[1])
    before = await rig.minted()

    result = await rig.minter.render(
        [masters.spec(pending, QUALITY)],
        image=product_png(*size),
        filename="vase.png",
        content_type="image/png",
    )
    record = pending.evolve(unique_filename=result.unique_filename)
    adopted = await masters.adopt_output(record, QUALITY, result)

    assert adopted.size == size
    # a fresh worker (nothing in memory) finds it on disk: no mint of its own
    again = await rig.masters().get(record, QUALITY)
    assert again.size == size
    assert await rig.minted() == before + 1
    assert rig.events.counts["adopted"] == 1
    assert rig.events.counts["master:disk"] == 1


async def test_the_master_is_capped_at_max_pixels(rig: Rig) -> None:
    record = await rig.image(size=(1000, 600))
    masters = rig.masters(max_pixels=150_000)
    master = await masters.get(record, QUALITY)
    assert master.size == master_size((1000, 600), 150_000) == (500, 300)


async def test_a_replaced_image_gets_a_new_master_and_a_purge_does_not(rig: Rig) -> None:
    masters = rig.masters()
    old = await rig.image(size=(600, 400))
    await masters.get(old, QUALITY)
    before = await rig.minted()

    purged = old.evolve(extra={VARIANTS_GENERATION: 1})
    assert masters.key(purged, QUALITY) == masters.key(old, QUALITY)
    await masters.get(purged, QUALITY)
    assert await rig.minted() == before

    new = (await rig.image(size=(500, 500))).evolve(image_id="mug")
    master = await masters.get(new, QUALITY)
    assert master.size == (500, 500)
    assert await rig.minted() == before + 2  # its upload, and its master
    store = DiskMasterStore.under(rig.data)
    assert len(await store.versions("mug")) == 2

    assert await masters.prune(new) == 1
    assert await store.versions("mug") == [masters.key(new, QUALITY)]
    assert masters.peek(old, QUALITY) is None


@pytest.mark.parametrize("budget", [1, 2, 7, 1_000, 99_999, 150_000, 480_000, 12_000_000])
def test_the_expected_master_size_is_the_pixel_budget_fit(budget: int) -> None:
    """The proxy's copy of the fit rule agrees with the engine's (which plays the upstream)."""
    for original in [(1, 1), (1, 5000), (5000, 1), (800, 600), (3, 7), (4000, 3000), (2999, 17)]:
        assert master_size(original, budget) == fit(original, budget), (original, budget)
