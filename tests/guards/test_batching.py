"""Misses for several sizes of one image, arriving together, share one token."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from proxy.guards.budget import batching_saving
from tests.guards.conftest import AUTH, Rig, RigFactory

SIZES = ["160x160", "320x240", "480x360", "640x480", "400x400", "200x150"]


def paths(image_id: str, sizes: list[str] = SIZES) -> list[str]:
    return [f"/img/{image_id}/{size}/ffffff.jpg" for size in sizes]


async def test_six_concurrent_sizes_of_one_image_are_one_token_with_six_variants(
    make_rig: RigFactory,
) -> None:
    # A generous window: six in-process requests reach the batcher within a few ms, but a
    # loaded CI machine must not split them. The default (30 ms) is exercised below.
    rig = await make_rig(batch_window_ms=300)
    await rig.upload("shoe")
    before = await rig.stats()

    answers = await asyncio.gather(*(rig.get(path) for path in paths("shoe")))

    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 6
    assert after["tokens_minted"] - before["tokens_minted"] == 1
    assert after["variants_minted"] - before["variants_minted"] == 6
    assert after["last_token_variants"] == 6
    locations = [a.headers["location"] for a in answers]
    assert len(set(locations)) == 6, "each request gets its own output"
    for size, location in zip(SIZES, locations, strict=True):
        image = await rig.get(location)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        width, height = Image.open(io.BytesIO(image.content)).size
        box_w, box_h = (int(n) for n in size.split("x"))
        assert width <= box_w and height <= box_h
        assert width == box_w or height == box_h, "the output fills its box one way"
    # The six are cached: asking again mints nothing.
    again = await asyncio.gather(*(rig.get(path) for path in paths("shoe")))
    assert [a.headers["location"] for a in again] == locations
    assert (await rig.stats())["tokens_minted"] == after["tokens_minted"]


async def test_the_ledger_reports_what_batching_saved_and_the_engine_agrees(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(batch_window_ms=300)
    await rig.upload("shoe")
    charged_before = (await rig.stats())["credits_charged"]

    await asyncio.gather(*(rig.get(path) for path in paths("shoe")))

    costs = await rig.costs()
    stats = await rig.stats()
    # Six sizes under 1 MP: 0.5 + 5 * 0.25 together, instead of 6 * 0.5 apart.
    assert round(stats["credits_charged"] - charged_before, 2) == 1.75
    # The upload's token (0.5) is on the books too: they match the engine's whole bill.
    assert costs["spent"] == round(stats["credits_charged"], 2) == 2.25
    assert costs["saved_by_batching"] == 1.25
    assert batching_saving([{"max_resolution": 100}] * 6) == 1.25
    metrics = (await rig.get("/metrics")).text
    assert 'cutproxy_credits_saved_total{by="batching"} 1.25' in metrics


async def test_the_default_window_batches_a_burst(make_rig: RigFactory) -> None:
    rig = await make_rig()  # PROXY_BATCH_WINDOW_MS=30
    await rig.upload("shoe")
    before = await rig.stats()
    answers = await asyncio.gather(*(rig.get(path) for path in paths("shoe")))
    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 6
    assert after["variants_minted"] - before["variants_minted"] == 6
    assert after["tokens_minted"] - before["tokens_minted"] < 6


async def test_window_zero_mints_each_miss_alone(make_rig: RigFactory) -> None:
    rig = await make_rig(batch_window_ms=0)
    await rig.upload("shoe")
    before = await rig.stats()
    answers = await asyncio.gather(*(rig.get(path) for path in paths("shoe")))
    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 6
    assert after["tokens_minted"] - before["tokens_minted"] == 6
    assert (await rig.costs())["saved_by_batching"] == 0


async def test_a_full_batch_is_minted_at_once_and_the_rest_start_another(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(batch_window_ms=300, batch_max_variants=4)
    await rig.upload("shoe")
    before = await rig.stats()
    answers = await asyncio.gather(*(rig.get(path) for path in paths("shoe")))
    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 6
    assert after["tokens_minted"] - before["tokens_minted"] == 2
    assert after["variants_minted"] - before["variants_minted"] == 6


async def test_sizes_of_different_images_are_not_mixed(make_rig: RigFactory) -> None:
    rig = await make_rig(batch_window_ms=300)
    await rig.upload("shoe")
    await rig.upload("bag", size=(600, 800))
    before = await rig.stats()
    answers = await asyncio.gather(
        *(rig.get(path) for path in paths("shoe", SIZES[:3]) + paths("bag", SIZES[:3]))
    )
    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 6
    assert after["tokens_minted"] - before["tokens_minted"] == 2
    assert after["variants_minted"] - before["variants_minted"] == 6


async def test_concurrent_requests_for_one_size_are_one_mint_and_count_as_saved(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    await rig.upload("shoe")
    before = await rig.stats()
    answers = await asyncio.gather(
        *(rig.get("/img/shoe/640x480/ffffff.jpg", address=f"198.51.100.{n}") for n in range(5))
    )
    after = await rig.stats()
    assert {a.headers["location"] for a in answers} == {answers[0].headers["location"]}
    assert after["tokens_minted"] - before["tokens_minted"] == 1
    # Four more mints of one 640x480 variant (under 1 MP: 0.5 credit each) were not made.
    assert (await rig.costs())["saved_by_coalescing"] == 2.0


async def test_two_workers_never_mint_the_same_variant_twice(make_rig: RigFactory) -> None:
    """Two proxies on one data directory: the worker processes of one host."""
    first = await make_rig(batch_window_ms=100)
    second = await make_rig(batch_window_ms=100, data_dir=first.settings.data_dir)
    await first.upload("shoe")
    before = await first.stats()

    answers = await asyncio.gather(
        *(rig.get(path) for path in paths("shoe") for rig in (first, second))
    )

    after = await first.stats()
    assert [a.status_code for a in answers] == [302] * 12
    assert after["variants_minted"] - before["variants_minted"] == 6
    by_path: dict[str, set[str]] = {}
    for n, answer in enumerate(answers):
        by_path.setdefault(paths("shoe")[n // 2], set()).add(answer.headers["location"])
    assert all(len(found) == 1 for found in by_path.values()), "both workers answer alike"


async def test_a_burst_that_fits_the_budget_as_one_token_is_minted_whole(
    make_rig: RigFactory,
) -> None:
    # Three sizes under 1 MP: 1.5 credits minted apart, 1.0 together; the budget is 1.0
    # after the upload's 0.5.
    rig = await make_rig(batch_window_ms=300, budget_credits_per_hour=1.5)
    await rig.upload("shoe")
    before = await rig.stats()
    answers = await asyncio.gather(*(rig.get(path) for path in paths("shoe", SIZES[:3])))
    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 3
    assert not any("x-cutproxy-fallback" in a.headers for a in answers)
    assert after["tokens_minted"] - before["tokens_minted"] == 1
    assert round(after["credits_charged"] - before["credits_charged"], 2) == 1.0
    assert (await rig.costs())["budget"]["hour"]["remaining"] == 0


# --- batching only when there is something to batch --------------------------------------------

# A window no test would sit through: a miss that waited for it would fail the bounded wait.
LONG_WINDOW_MS = 60_000


async def test_a_lone_miss_does_not_wait_for_the_batch_window(make_rig: RigFactory) -> None:
    rig = await make_rig(batch_window_ms=LONG_WINDOW_MS)
    await rig.upload("shoe")
    before = await rig.stats()
    answer = await asyncio.wait_for(rig.get(paths("shoe")[0]), 20)
    assert answer.status_code == 302, answer.text
    assert (await rig.stats())["tokens_minted"] == before["tokens_minted"] + 1


async def test_a_burst_is_minted_as_soon_as_every_miss_of_it_has_arrived(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(batch_window_ms=LONG_WINDOW_MS)
    await rig.upload("shoe")
    before = await rig.stats()
    answers = await asyncio.wait_for(asyncio.gather(*(rig.get(p) for p in paths("shoe"))), 20)
    after = await rig.stats()
    assert [a.status_code for a in answers] == [302] * 6
    assert after["tokens_minted"] - before["tokens_minted"] == 1
    assert after["last_token_variants"] == 6


async def test_misses_arriving_while_their_image_is_minted_are_batched(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(batch_window_ms=LONG_WINDOW_MS)
    await rig.upload("shoe")
    client = await rig.client()
    slow = await client.put("/_engine/faults", json={"process_latency": 1.0}, headers=AUTH)
    assert slow.status_code == 200, slow.text
    before = await rig.stats()
    first = asyncio.ensure_future(rig.get(paths("shoe")[0]))
    await _minted(rig, before["tokens_minted"] + 1)  # alone; its processing is slow
    # Two more sizes meanwhile: they wait for each other (and for the first to finish).
    later = asyncio.gather(*(rig.get(p) for p in paths("shoe")[1:3]))
    answers = await asyncio.wait_for(asyncio.gather(first, later), 20)
    assert [a.status_code for a in [answers[0], *answers[1]]] == [302] * 3
    after = await rig.stats()
    assert after["tokens_minted"] - before["tokens_minted"] == 2
    assert after["last_token_variants"] == 2


async def _minted(rig: Rig, tokens: int) -> None:
    """Wait until the engine has minted ``tokens`` in all."""
    for _ in range(1000):
        if (await rig.stats())["tokens_minted"] >= tokens:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine never reached {tokens} tokens")
