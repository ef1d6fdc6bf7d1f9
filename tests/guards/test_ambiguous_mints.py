"""Mints the upstream may have charged: never retried, kept in the books as possibly spent;
mints that never reached it: retried, and given back to the budget when they all fail."""

from __future__ import annotations

from tests.guards.conftest import AUTH, Rig, RigFactory
from tests.ops.conftest import Scrape

CACHED = "/img/shoe/640x480/ffffff.jpg"


async def faults(rig: Rig, **changes: object) -> None:
    answer = await (await rig.client()).put("/_engine/faults", json=changes, headers=AUTH)
    assert answer.status_code == 200, answer.text


async def metrics(rig: Rig) -> Scrape:
    return Scrape((await rig.get("/metrics")).text)


async def test_a_mint_answered_5xx_is_not_retried_and_is_booked_as_ambiguous(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(budget_credits_per_hour=2.0, batch_window_ms=0, retry_attempts=3)
    await rig.upload("shoe")  # its first token is booked too: 0.5
    await faults(rig, error_rate=1.0, error_status=503)

    failed = await rig.get(CACHED)
    assert failed.status_code == 502 and failed.json()["error"] == "upstream_error"
    m = await metrics(rig)
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="503") == 1
    assert m.value("cutproxy_ambiguous_mints_total", purpose="variants") == 1
    assert m.value("cutproxy_estimated_credits_possibly_spent_total") == 0.5
    costs = await rig.costs()
    assert costs["ambiguous_mints"] == 1 and costs["possibly_spent"] == 0.5
    assert costs["spent"] == 0.5  # the upload's token only
    assert costs["budget"]["hour"]["spent"] == 1.0  # it may have been charged: kept

    # The failure is not remembered: the next request asks the upstream afresh.
    await faults(rig, error_rate=0.0)
    again = await rig.get(CACHED)
    assert again.status_code == 302
    costs = await rig.costs()
    assert costs["spent"] == 1.0 and costs["ambiguous_mints"] == 1
    assert costs["budget"]["hour"]["spent"] == 1.5


async def test_a_mint_that_never_connected_is_retried_and_given_back(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(
        budget_credits_per_hour=2.0, batch_window_ms=0, retry_attempts=3, retry_backoff=0
    )
    await rig.upload("shoe")  # 0.5, booked and kept
    await faults(rig, mode="down")  # through ASGITransport: a ConnectError, nothing sent

    failed = await rig.get(CACHED)
    assert failed.status_code == 502 and failed.json()["error"] == "upstream_unreachable"
    m = await metrics(rig)
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="unreachable") == 3
    assert m.value("cutproxy_ambiguous_mints_total") == 0
    costs = await rig.costs()
    assert costs["ambiguous_mints"] == 0 and costs["possibly_spent"] == 0
    assert costs["budget"]["hour"]["spent"] == 0.5  # the mint, provably not charged: given back
