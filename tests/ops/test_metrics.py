"""/metrics after known traffic: every count an operator's dashboard is built on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from proxy.ops.metrics import FLUSH_SECONDS, Metrics
from tests.ops.conftest import (
    Clock,
    FakeUpstream,
    Scrape,
    register,
    running,
    scrape,
    settings,
    upstream_settings,
)

IMG = "/img/{image_id}/{size}/{filename}"


async def test_counts_follow_known_traffic(tmp_path: Path, clock: Clock) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (app, client):
        assert (await client.get("/img/demo/320x240/ffffff.png")).status_code == 302  # miss
        for _ in range(2):
            assert (await client.get("/img/demo/320x240/ffffff.png")).status_code == 302  # memory
        together = await asyncio.gather(
            *(client.get("/img/demo/200x200/00ff00.webp") for _ in range(5))
        )  # one miss, four coalesced
        assert {a.status_code for a in together} == {302}
        app.services.variants.cache.memory.clear()
        assert (await client.get("/img/demo/320x240/ffffff.png")).status_code == 302  # disk
        assert (await client.get("/img/nope/320x240/ffffff.png")).status_code == 404
        assert (await client.get("/img/demo/400/ffffff.png")).status_code == 400
        engine = (await client.get("/_engine/stats")).json()

        m = await scrape(client)

    assert m.value("cutproxy_http_requests_total", route=IMG, status="302") == 9
    assert m.value("cutproxy_http_requests_total", route=IMG, status="404") == 1
    assert m.value("cutproxy_http_requests_total", route=IMG, status="400") == 1
    assert m.value("cutproxy_http_requests_total", route="/_engine/stats", status="200") == 1
    assert m.value("cutproxy_http_request_duration_seconds_count", route=IMG) == 11
    assert m.value("cutproxy_http_request_duration_seconds_bucket", route=IMG, le="+Inf") == 11

    assert m.value("cutproxy_cache_results_total", tier="memory") == 2
    assert m.value("cutproxy_cache_results_total", tier="disk") == 1
    assert m.value("cutproxy_cache_results_total", tier="miss") == 2
    assert m.value("cutproxy_cache_results_total", tier="coalesced") == 4
    assert m.value("cutproxy_coalesced_waiters") == 0
    assert m.value("cutproxy_misses_in_flight") == 0
    assert m.value("cutproxy_http_requests_in_flight") == 1  # the scrape itself

    # The demo upload at start-up, then one token per miss.
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="200") == 3
    assert m.value("cutproxy_upstream_calls_total", endpoint="process", outcome="200") == 3
    assert m.value("cutproxy_upstream_call_duration_seconds_count", endpoint="process") == 3
    assert m.value("cutproxy_tokens_minted_total", purpose="upload") == 1
    assert m.value("cutproxy_tokens_minted_total", purpose="variants") == 2
    assert m.value("cutproxy_variants_minted_total") == 3
    assert engine["tokens_minted"] == 3
    # The estimate agrees with what the engine actually charged: 3 tokens under 1 MP.
    assert m.value("cutproxy_estimated_credits_spent_total") == 1.5
    assert engine["credits_charged"] == 1.5
    assert m.value("cutproxy_reuploads_total") == 0


async def test_in_flight_gauges_show_a_miss_and_its_waiters(tmp_path: Path, clock: Clock) -> None:
    upstream = FakeUpstream()
    upstream.gate = asyncio.Event()
    async with running(
        upstream_settings(tmp_path), clock, upstream_transport=upstream.transport()
    ) as (_app, client):
        await register(client)
        waiting = [asyncio.create_task(client.get("/img/sku/300x300/ffffff.jpg")) for _ in range(3)]
        await asyncio.wait_for(upstream.entered.wait(), 10)
        await asyncio.sleep(0.05)  # let the other two join the flight
        during = await scrape(client)
        upstream.gate.set()
        answers = await asyncio.gather(*waiting)
        after = await scrape(client)

    assert [a.status_code for a in answers] == [302, 302, 302]
    assert during.value("cutproxy_misses_in_flight") == 1
    assert during.value("cutproxy_coalesced_waiters") == 2
    assert during.value("cutproxy_http_requests_in_flight") == 4
    assert after.value("cutproxy_misses_in_flight") == 0
    assert after.value("cutproxy_coalesced_waiters") == 0
    assert after.value("cutproxy_cache_results_total", tier="miss") == 1
    assert after.value("cutproxy_cache_results_total", tier="coalesced") == 2
    assert after.value("cutproxy_tokens_minted_total", purpose="variants") == 1
    assert after.value("cutproxy_estimated_credits_spent_total") == 0.5


async def test_upstream_failures_are_counted_by_outcome(tmp_path: Path, clock: Clock) -> None:
    upstream = FakeUpstream()
    async with running(
        upstream_settings(tmp_path, retry_attempts=3),
        clock,
        upstream_transport=upstream.transport(),
    ) as (_app, client):
        await register(client)
        # A 5xx to a mint may come after the charge: not retried, counted as ambiguous.
        upstream.script += [httpx.Response(503, json={"error": "busy"})]
        assert (await client.get("/img/sku/100x100/ffffff.jpg")).status_code == 502
        upstream.script += [httpx.Response(200), *[httpx.ReadTimeout("slow")] * 3]
        assert (await client.get("/img/sku/101x100/ffffff.jpg")).status_code == 504
        upstream.script += [httpx.ConnectError("refused")] * 3
        assert (await client.get("/img/sku/102x100/ffffff.jpg")).status_code == 502
        upstream.script += [httpx.Response(402, json={"error": "no credits"})]
        assert (await client.get("/img/sku/103x100/ffffff.jpg")).status_code == 502
        m = await scrape(client)

    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="503") == 1
    assert m.value("cutproxy_ambiguous_mints_total", purpose="variants") == 1
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="200") == 1
    assert m.value("cutproxy_upstream_calls_total", endpoint="process", outcome="timeout") == 3
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="unreachable") == 3
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="402") == 1
    assert m.value("cutproxy_upstream_call_duration_seconds_count", endpoint="token") == 6
    # Only the one token that was granted costs credits.
    assert m.value("cutproxy_tokens_minted_total") == 1
    assert m.value("cutproxy_estimated_credits_spent_total") == 0.5
    assert m.value("cutproxy_http_requests_total", route=IMG, status="502") == 3
    assert m.value("cutproxy_http_requests_total", route=IMG, status="504") == 1
    assert m.value("cutproxy_cache_results_total") == 0


async def test_a_reupload_is_counted(tmp_path: Path, clock: Clock) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        clock.now += app_reupload_after(client) + 1
        assert (await client.get("/img/demo/64x64/ffffff.png")).status_code == 302
        m = await scrape(client)
    assert m.value("cutproxy_reuploads_total") == 1
    assert m.value("cutproxy_tokens_minted_total", purpose="upload") == 2


def app_reupload_after(client: httpx.AsyncClient) -> float:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return float(transport.app.services.settings.reupload_after)  # type: ignore[attr-defined]


async def test_the_tally_adds_up_as_observing_each_request_would() -> None:
    durations = [0.0001, 0.0005, 0.0007, 0.003, 0.2, 45.0, 61.0, 0.0005, 0.0]
    tallied, observed = Metrics(), Metrics()
    for seconds in durations:
        tallied.request_done(IMG, "GET", 302, seconds)
        tallied.resolved("memory")
        observed.requests.labels(IMG, "GET", "302").inc()
        observed.request_seconds.labels(IMG).observe(seconds)
        observed.cache_results.labels("memory").inc()

    def samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
        text = metrics.exposition().decode()
        return [s for s in Scrape(text).samples if not s[0].endswith("_created")]

    assert samples(tallied) == samples(observed)
    assert (
        Scrape(tallied.exposition().decode()).value(
            "cutproxy_http_request_duration_seconds_bucket", le="0.0005"
        )
        == 4
    )  # 0.0, 0.0001 and both 0.0005: a bound counts what equals it


async def test_tallied_counts_reach_the_metrics_on_their_own() -> None:
    metrics = Metrics()
    metrics.request_done(IMG, "HEAD", 302, 0.001)
    metrics.resolved("shared")
    untouched = Scrape(metrics._collect().decode())  # what another worker would read
    assert untouched.value("cutproxy_http_requests_total", method="HEAD") == 0
    await asyncio.sleep(FLUSH_SECONDS + 0.2)
    later = Scrape(metrics._collect().decode())
    assert later.value("cutproxy_http_requests_total", method="HEAD") == 1
    assert later.value("cutproxy_http_request_duration_seconds_bucket", le="0.001") == 1
    assert later.value("cutproxy_cache_results_total", tier="disk") == 1


async def test_a_method_no_one_defined_is_counted_as_other() -> None:
    # h11 passes any token as a method: labelled as given, they would grow without bound.
    metrics = Metrics()
    for n in range(50):
        metrics.request_done(IMG, f"FUZZ{n}", 404, 0.001)
    metrics.request_done(IMG, "GET", 302, 0.001)
    scraped = Scrape(metrics.exposition().decode())
    methods = {
        labels["method"]
        for name, labels, _ in scraped.samples
        if name == "cutproxy_http_requests_total"
    }
    assert methods == {"GET", "other"}
    assert scraped.value("cutproxy_http_requests_total", method="other") == 50


def test_a_scrape_reads_past_a_workers_metrics_file_being_created(tmp_path: Path) -> None:
    # prometheus_client creates a worker's file before it sizes it (its issue #1199): a scrape
    # in that moment, or after a worker killed in it, must still add up everyone else's.
    other = MmapedDict(str(tmp_path / "counter_4242.db"))
    key = mmap_key("cutproxy_demo_total", "cutproxy_demo_total", [], [], "demo")
    other.write_value(key, 3.0, 0.0)
    other.close()
    (tmp_path / "counter_4243.db").touch()  # the worker that is being born (or died being)
    scraped = Scrape(Metrics(multiprocess_path=tmp_path).exposition().decode())
    assert scraped.value("cutproxy_demo_total") == 3
