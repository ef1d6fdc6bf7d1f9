"""Memory hits are answered before routing: what a client and an operator see must not change."""

from __future__ import annotations

from pathlib import Path

from tests.ops.conftest import Clock, running, scrape, settings

IMG = "/img/{image_id}/{size}/{filename}"
URL = "/img/demo/320x240/ffffff.png"


async def test_a_memory_hit_answers_exactly_as_the_miss_before_it(
    tmp_path: Path, clock: Clock
) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        miss = await client.get(URL)
        hit = await client.get(URL)
        head = await client.head(URL)
        metrics = await scrape(client)

    assert miss.status_code == hit.status_code == head.status_code == 302

    def without_id(headers: dict[str, str]) -> dict[str, str]:
        return {name: value for name, value in headers.items() if name != "x-request-id"}

    assert without_id(dict(hit.headers)) == without_id(dict(miss.headers))
    assert without_id(dict(head.headers)) == without_id(dict(miss.headers))
    assert hit.headers["x-request-id"] != miss.headers["x-request-id"]
    assert metrics.value("cutproxy_cache_results_total", tier="memory") == 2
    assert metrics.value("cutproxy_cache_results_total", tier="miss") == 1
    assert metrics.value("cutproxy_http_requests_total", route=IMG, status="302") == 3


async def test_hits_that_need_more_than_a_redirect_are_answered_in_full(
    tmp_path: Path, clock: Clock
) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        await client.get(URL)  # now in the memory tier
        as_json = await client.get(URL, headers={"Accept": "application/json"})
        spelled = await client.get("/img/demo/320x240@1x/ffffff.png")
        wrong_method = await client.post(URL)

    assert as_json.status_code == 200
    assert as_json.json()["format"] == "png"
    assert as_json.headers["vary"] == "Accept"
    assert as_json.headers["surrogate-key"] == "img-demo img-demo.ffffff"
    assert spelled.status_code == 308
    assert spelled.headers["location"] == URL
    assert "surrogate-key" not in spelled.headers
    assert wrong_method.status_code == 405
