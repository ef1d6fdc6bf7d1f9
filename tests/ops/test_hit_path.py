"""Memory hits are answered before routing: what a client and an operator see must not change."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from proxy.serving import hitpath
from proxy.url.decision import Decider
from proxy.url.signing import Signer
from tests.ops.conftest import Clock, JsonLines, running, scrape, settings

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


async def test_an_auto_urls_hit_redirects_to_the_format_its_accept_gets(
    tmp_path: Path, clock: Clock
) -> None:
    url = "/img/demo/320x240/ffffff.auto"
    webp, plain = {"Accept": "image/webp,*/*"}, {"Accept": "*/*"}
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        miss = await client.get(url, headers=webp)
        hit = await client.get(url, headers=webp)
        other = await client.get(url, headers=plain)  # jpg: not minted yet
        metrics = await scrape(client)

    assert miss.status_code == hit.status_code == other.status_code == 302
    assert hit.headers["location"] == miss.headers["location"]
    assert hit.headers["location"].endswith(".webp") and other.headers["location"].endswith(".jpg")
    assert hit.headers["vary"] == "Accept"
    assert metrics.value("cutproxy_hit_path_answers_total") == 1
    assert metrics.value("cutproxy_cache_results_total", tier="memory") == 1


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


async def test_the_hit_path_and_the_route_answer_from_the_one_decision(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory hit is decided by the hit path's one call; anything else by that call and the
    route's. The decision here answers URL as another variant: a second parse anywhere, and
    that path would answer URL itself (a miss, another mint)."""
    other = "/img/demo/200x200/00ff00.png"
    decide = Decider.decide
    asked: list[str] = []

    def decided(self: Decider[object], path: str, *args: object, **kwargs: object) -> object:
        asked.append(path)
        return decide(self, other if path == URL else path, *args, **kwargs)

    monkeypatch.setattr(Decider, "decide", decided)
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        miss = await client.get(other)
        assert asked == [other, other]  # the hit path's call, then the route's
        asked.clear()
        hit = await client.get(URL)
        assert asked == [URL]  # answered by the hit path alone
        asked.clear()
        as_json = await client.get(URL, headers={"Accept": "application/json"})
        assert asked == [URL, URL]
        asked.clear()
        spelled = await client.get("/img/demo/200x200/0F0.png")
        assert asked == ["/img/demo/200x200/0F0.png"] * 2
        metrics = await scrape(client)

    assert miss.status_code == hit.status_code == 302
    assert hit.headers["location"] == miss.headers["location"]
    assert as_json.json()["url"] == miss.headers["location"]
    assert spelled.status_code == 308 and spelled.headers["location"] == other
    assert metrics.value("cutproxy_cache_results_total", tier="miss") == 1


KEY = "943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881"
SALT = "520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5"


async def test_a_signed_hit_is_checked_before_it_is_served(tmp_path: Path, clock: Clock) -> None:
    signer = Signer.from_hex((KEY,), (SALT,))
    async with running(
        settings(tmp_path, demo=True, signing_key=(KEY,), signing_salt=(SALT,)), clock
    ) as (_app, client):
        signed = signer.sign_url(URL)
        miss = await client.get(signed)
        hit = await client.get(signed)
        unsigned = await client.get(URL)
        forged = await client.get(URL + "?s=" + "A" * 43)

    assert miss.status_code == hit.status_code == 302
    assert hit.headers["location"] == miss.headers["location"]
    assert unsigned.status_code == forged.status_code == 403
    assert unsigned.json()["error"] == "signature_missing"
    assert forged.json()["error"] == "signature_invalid"


async def test_behind_a_path_prefix_the_router_answers_hits_the_same(
    tmp_path: Path, clock: Clock
) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (app, _client):
        transport = httpx.ASGITransport(app=app, root_path="/cdn")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.get("/cdn" + URL)
            second = await client.get("/cdn" + URL)

    assert first.status_code == second.status_code == 302
    assert second.headers["location"] == first.headers["location"]


async def test_a_failure_in_the_hit_path_gets_the_full_stacks_json_500(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (app, client):
        await client.get(URL)  # in the memory tier now

        def broken(variant: object) -> None:
            raise RuntimeError("a bug in the lookup")

        monkeypatch.setattr(app.services.variants, "peek", broken)  # both paths use it
        # As a server would: the app re-raises after answering, for the server's own log.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as raw:
            answer = await raw.get(URL)

    assert answer.status_code == 500
    assert answer.json()["error"] == "internal_error"
    assert answer.headers["cache-control"] == "no-store"


async def test_a_bug_in_the_hit_path_is_counted_and_logged_and_the_full_stack_answers(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, log_lines: JsonLines
) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        miss = await client.get(URL)

        def broken(self: hitpath.HitPath, scope: object) -> None:
            raise RuntimeError("a bug in the hit path")

        monkeypatch.setattr(hitpath.HitPath, "_answer", broken)  # the hit path's alone
        answers = [await client.get(URL) for _ in range(3)]
        clock.advance(60)  # a minute later
        answers.append(await client.get(URL))
        metrics = await scrape(client)

    # The full stack answered each one, as it would have anyway: the same redirect.
    assert {a.headers["location"] for a in answers} == {miss.headers["location"]}
    assert metrics.value("cutproxy_hit_path_errors_total") == 4
    reports = [
        line for line in map(json.loads, log_lines.lines) if line["logger"] == "cutproxy.hitpath"
    ]
    # Logged with the traceback, then at most once a minute with a count.
    assert [r["level"] for r in reports] == ["error", "error"]
    assert "(1 time(s)" in reports[0]["msg"] and "a bug in the hit path" in reports[0]["exc"]
    assert "(3 time(s)" in reports[1]["msg"]
