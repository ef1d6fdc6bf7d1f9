"""Budgets over HTTP: a global credit budget and a per-client miss rate; hits never limited."""

from __future__ import annotations

import asyncio

import httpx

from proxy.serving.variant_route import FALLBACK_HEADER
from tests.guards.conftest import AUTH, HOUR_START, RigFactory

CACHED = "/img/shoe/640x480/ffffff.jpg"


def flood_paths(n: int, image_id: str = "shoe") -> list[str]:
    """``n`` distinct sizes, all under 1 MP (0.5 credit each when minted alone)."""
    return [f"/img/{image_id}/{100 + i}x{100 + i % 13}/ffffff.jpg" for i in range(n)]


def is_plain_hit(answer: httpx.Response, location: str) -> bool:
    return (
        answer.status_code == 302
        and answer.headers["location"] == location
        and answer.headers["cache-control"].startswith("public, max-age=")
        and FALLBACK_HEADER not in answer.headers
    )


async def test_a_flood_of_1000_sizes_spends_at_most_the_budget_and_hits_keep_working(
    make_rig: RigFactory,
) -> None:
    budget = 3.0
    rig = await make_rig(budget_credits_per_hour=budget)
    await rig.upload("shoe")
    start = await rig.stats()
    cached = await rig.get(CACHED, address="192.0.2.10")  # another client's page, cached
    assert cached.status_code == 302
    location = cached.headers["location"]

    flooder, other = "203.0.113.66", "192.0.2.10"
    statuses: dict[str, int] = {}
    paths = flood_paths(1000)
    for chunk in range(0, len(paths), 50):
        answers = await asyncio.gather(
            *(rig.get(path, address=flooder) for path in paths[chunk : chunk + 50]),
            *(rig.get(CACHED, address=other) for _ in range(3)),
        )
        flood, hits = answers[:-3], answers[-3:]
        assert all(is_plain_hit(hit, location) for hit in hits), "the other client's hits"
        for answer in flood:
            kind = "fallback" if FALLBACK_HEADER in answer.headers else str(answer.status_code)
            statuses[kind] = statuses.get(kind, 0) + 1

    end = await rig.stats()
    bill = round(end["credits_charged"], 2)  # the upload's token included
    assert bill <= budget, f"spent {bill} credits with a budget of {budget}"
    assert end["variants_minted"] - start["variants_minted"] <= 20
    assert set(statuses) <= {"302", "fallback", "429"}, statuses
    assert statuses.get("fallback", 0) > 900, statuses
    costs = await rig.costs()
    assert costs["spent"] == bill
    assert costs["budget"]["hour"]["spent"] <= budget
    print(f"flood: charged {bill} of {budget} credits; answers {statuses}")


async def test_a_spent_budget_serves_the_nearest_cached_size_or_429_until_the_hour_ends(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(budget_credits_per_hour=1.5, batch_window_ms=0)
    await rig.upload("shoe")
    await rig.upload("bag")  # the same photo: one upload token between them, 0.5
    small = await rig.get("/img/shoe/200x150/ffffff.jpg")
    large = await rig.get(CACHED)
    assert small.status_code == large.status_code == 302  # 0.5 + 0.5: the budget is spent

    near_large = await rig.get("/img/shoe/600x450/ffffff.jpg")
    assert near_large.status_code == 302
    assert near_large.headers["location"] == large.headers["location"]
    assert near_large.headers[FALLBACK_HEADER] == "budget"
    assert near_large.headers["cache-control"] == "private, max-age=60"
    # An app asking for JSON is told the size it is actually given, not the one it asked for.
    as_json = await rig.get("/img/shoe/600x450/ffffff.jpg", headers={"Accept": "application/json"})
    served = (await rig.get(CACHED, headers={"Accept": "application/json"})).json()
    assert as_json.json()["url"] == served["url"]
    assert (as_json.json()["width"], as_json.json()["height"]) == (
        served["width"],
        served["height"],
    )
    near_small = await rig.get("/img/shoe/180x120/ffffff.jpg")
    assert near_small.headers["location"] == small.headers["location"]
    # Another background or format is another picture: no fallback, a 429.
    for path in ("/img/shoe/600x450/000000.jpg", "/img/shoe/600x450/ffffff.png"):
        assert (await rig.get(path)).status_code == 429

    refused = await rig.get("/img/bag/640x480/ffffff.jpg")
    assert refused.status_code == 429
    assert refused.json()["error"] == "credit_budget_spent"
    assert refused.headers["retry-after"] == str(3600 - 60)
    assert refused.headers["cache-control"] == "no-store"

    # Hits are never limited: memory, and another worker's empty memory (the shared tier).
    assert is_plain_hit(await rig.get(CACHED), large.headers["location"])
    worker = await make_rig(budget_credits_per_hour=1.5, data_dir=rig.settings.data_dir)
    worker.clock.now = rig.clock.now
    assert is_plain_hit(await worker.get(CACHED), large.headers["location"])
    assert (await worker.get("/img/bag/640x480/ffffff.jpg")).status_code == 429, "one budget"

    rig.clock.now = HOUR_START + 3600 + 1  # the next UTC hour
    again = await rig.get("/img/bag/640x480/ffffff.jpg")
    assert again.status_code == 302 and FALLBACK_HEADER not in again.headers


async def test_the_daily_budget_outlasts_the_hour(make_rig: RigFactory) -> None:
    rig = await make_rig(
        budget_credits_per_hour=10.0, budget_credits_per_day=1.0, batch_window_ms=0
    )
    await rig.upload("shoe")  # 0.5 of the day's 1.0
    assert (await rig.get(CACHED)).status_code == 302
    rig.clock.advance(3600)
    refused = await rig.get("/img/shoe/100x100/000000.jpg")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 3600
    assert "day" in refused.json()["message"]


async def test_a_client_over_its_miss_rate_falls_back_while_others_still_mint(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(
        client_miss_rate="5/hour", trusted_proxies=("127.0.0.1/32",), batch_window_ms=0
    )
    await rig.upload("shoe")
    await rig.upload("bag")
    before = await rig.stats()

    def via_proxy(client: str) -> dict[str, str]:
        return {"X-Forwarded-For": f"{client}, 127.0.0.1"}

    flooder = via_proxy("203.0.113.7")
    answers = [await rig.get(path, headers=flooder) for path in flood_paths(40)]
    assert [a.status_code for a in answers] == [302] * 40
    minted = [a for a in answers if FALLBACK_HEADER not in a.headers]
    assert len(minted) == 5
    assert {a.headers[FALLBACK_HEADER] for a in answers[5:]} == {"client_rate"}
    assert (await rig.stats())["tokens_minted"] - before["tokens_minted"] == 5

    nothing_cached = await rig.get("/img/bag/320x240/ffffff.jpg", headers=flooder)
    assert nothing_cached.status_code == 429
    assert nothing_cached.json()["error"] == "client_miss_rate"
    assert 3500 < int(nothing_cached.headers["retry-after"]) <= 3600

    # Another client behind the same load balancer has its own rate.
    other = via_proxy("198.51.100.9")
    for path in ("/img/bag/320x240/ffffff.jpg", "/img/shoe/777x555/ffffff.jpg"):
        answer = await rig.get(path, headers=other)
        assert answer.status_code == 302 and FALLBACK_HEADER not in answer.headers
    # The flooder's hits (sizes it got minted) are still plain hits.
    first = answers[0]
    assert is_plain_hit(
        await rig.get(flood_paths(1)[0], headers=flooder), first.headers["location"]
    )


async def test_forwarded_headers_from_untrusted_peers_are_ignored(make_rig: RigFactory) -> None:
    rig = await make_rig(client_miss_rate="2/hour", batch_window_ms=0)  # no trusted proxies
    await rig.upload("shoe")
    answers = [
        await rig.get(path, headers={"X-Forwarded-For": f"198.51.100.{n}"})
        for n, path in enumerate(flood_paths(4))
    ]
    assert [FALLBACK_HEADER in a.headers for a in answers] == [False, False, True, True]


async def test_a_refused_mint_is_given_back_to_the_budget(make_rig: RigFactory) -> None:
    # The engine's balance covers the upload only: the next mint answers 402, uncharged.
    rig = await make_rig(
        budget_credits_per_hour=2.0, batch_window_ms=0, engine={"starting_balance": 0.5}
    )
    await rig.upload("shoe")
    failed = await rig.get(CACHED)
    assert failed.status_code >= 500
    costs = await rig.costs()
    assert costs["spent"] == 0.5 == (await rig.stats())["credits_charged"]  # the upload
    assert costs["budget"]["hour"]["spent"] == 0.5
    assert costs["budget"]["hour"]["remaining"] == 1.5


async def test_a_mint_that_may_have_been_charged_stays_counted(make_rig: RigFactory) -> None:
    rig = await make_rig(budget_credits_per_hour=2.0, batch_window_ms=0, retry_attempts=1)
    await rig.upload("shoe")
    client = await rig.client()
    fault = await client.put("/_engine/faults", json={"error_rate": 1.0}, headers=AUTH)
    assert fault.status_code == 200, fault.text
    assert (await rig.get(CACHED)).status_code >= 500
    assert (await rig.costs())["budget"]["hour"]["spent"] == 0.5 + 0.5  # the upload's, and it


async def test_the_cost_endpoint_is_for_admins_and_matches_the_metrics(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(budget_credits_per_hour=5.0, budget_credits_per_day=20.0)
    await rig.upload("shoe")
    assert (await rig.get("/admin/costs")).status_code == 401
    wrong = await rig.get("/admin/costs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    await rig.get(CACHED)
    await asyncio.gather(*(rig.get(CACHED) for _ in range(3)))  # hits: no cost

    answer = await rig.get("/admin/costs", headers=AUTH)
    assert answer.headers["cache-control"] == "no-store"
    costs = answer.json()
    assert costs["spent"] == 0.5 + 0.5  # the upload's token and the miss's
    assert costs["saved_by_coalescing"] == 0
    assert costs["saved_by_batching"] == 0
    assert costs["budget"]["hour"] == {
        "limit": 5.0,
        "spent": 1.0,
        "remaining": 4.0,
        "resets_in": 3600 - 60,
    }
    assert costs["budget"]["day"]["remaining"] == 19.0
    metrics = (await rig.get("/metrics")).text
    assert 'cutproxy_credits_budget_remaining{window="hour"} 4.0' in metrics
    assert 'cutproxy_credits_budget_remaining{window="day"} 19.0' in metrics
