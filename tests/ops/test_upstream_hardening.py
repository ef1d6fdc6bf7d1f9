"""The upstream's oddities as a client of the proxy sees them: short-lived output URLs,
output URLs that parsers read differently, error bodies that echo secrets, and an embedded
engine that never answers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from proxy.stores import cache
from tests.clock import Clock
from tests.ops.conftest import (
    AUTH,
    register,
    running,
    scrape,
    settings,
    upstream_settings,
)
from tests.unit.test_upstream_hardening import forms, leaked

JSON = {"Accept": "application/json"}
API_KEY = "sk-fake-upstream-key-0001"  # upstream_settings' key
ACCESS_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ2IjpbImEiXX0.bm90LWEtcmVhbC1zaWduYXR1cmUtYXQtYWxs"


class BackgroundCut:
    """Answers like BackgroundCut v3 (a token, then output URLs) for httpx.MockTransport.

    ``output_url(name)`` makes each output URL; ``token_error`` / ``process_error``, when
    set, answer the next mint / processing call instead.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.mints = 0
        self.names: list[str] = []
        self.token_error: httpx.Response | None = None
        self.process_error: httpx.Response | None = None
        self.output_url = lambda name: f"https://cdn.example/{name}.jpg"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token/"):
            if self.token_error is not None:
                answer, self.token_error = self.token_error, None
                return answer
            self.mints += 1
            self.names = [v["variant_name"] for v in json.loads(request.content)["output_variants"]]
            return httpx.Response(200, json={"access_token": ACCESS_TOKEN})
        if self.process_error is not None:
            answer, self.process_error = self.process_error, None
            return answer
        urls = {name: self.output_url(name) for name in self.names}
        return httpx.Response(200, json={"unique_filename": "u-1", "output_urls": urls})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def amz_url(name: str, now: float, seconds: int) -> str:
    date = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return (
        f"https://cdn.example/{name}.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Date={date}&X-Amz-Expires={seconds}&X-Amz-Signature=0a1b2c"
    )


# --- 3. a short-lived output URL is still cached for what it is worth ---------------------


async def test_output_urls_shorter_lived_than_the_margin_are_minted_once(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "_short_lived_warning", cache._Once())
    clock.now = float(int(clock.now))  # X-Amz-Date has whole seconds
    upstream = BackgroundCut(clock)
    # 240 s of life, under the default 300 s PROXY_TTL_MARGIN.
    upstream.output_url = lambda name: amz_url(name, clock.now, 240)
    async with running(
        upstream_settings(tmp_path), clock, upstream_transport=upstream.transport()
    ) as (_app, client):
        await register(client)
        answers = [await client.get("/img/sku/100x100/ffffff.jpg") for _ in range(20)]
        clock.advance(119)
        later = await client.get("/img/sku/100x100/ffffff.jpg")
        m = await scrape(client)

    assert {a.status_code for a in [*answers, later]} == {302}
    assert len({a.headers["location"] for a in answers}) == 1
    assert upstream.mints == 1
    assert m.value("cutproxy_short_lived_outputs_total") == 1
    warnings = [r for r in caplog.records if "PROXY_TTL_MARGIN" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    # Kept for half its life, and never past it: the redirects' lifetimes say so too.
    assert answers[0].headers["cache-control"] == "public, max-age=120"
    assert later.headers["cache-control"] == "public, max-age=1"


# --- 8. output URLs are plain or refused, and always normalised ---------------------------


async def test_an_output_url_parsers_disagree_on_is_refused(tmp_path: Path, clock: Clock) -> None:
    upstream = BackgroundCut(clock)
    upstream.output_url = lambda name: "http://evil.example\\@127.0.0.1/x.jpg"
    async with running(
        settings(tmp_path, api_key=API_KEY, allowed_output_hosts=("127.0.0.1",)),
        clock,
        upstream_transport=upstream.transport(),
    ) as (_app, client):
        await register(client)
        for headers in ({}, JSON):
            answer = await client.get("/img/sku/100x100/ffffff.jpg", headers=headers)
            assert answer.status_code == 502
            assert answer.json()["error"] == "output_host_not_allowed"
            assert "location" not in answer.headers
            assert "evil.example" not in answer.text


async def test_the_normalised_output_url_is_what_is_served(tmp_path: Path, clock: Clock) -> None:
    upstream = BackgroundCut(clock)
    upstream.output_url = lambda name: f"HTTPS://CDN.Example:443/{name}.jpg"
    async with running(
        upstream_settings(tmp_path), clock, upstream_transport=upstream.transport()
    ) as (_app, client):
        await register(client)
        redirect = await client.get("/img/sku/100x100/ffffff.jpg")
        answer = await client.get("/img/sku/100x100/ffffff.jpg", headers=JSON)
    assert redirect.status_code == 302 and answer.status_code == 200
    location = redirect.headers["location"]
    assert location.startswith("https://cdn.example/") and ":443" not in location
    assert answer.json()["url"] == location


# --- 9. the upstream's error text never reaches a public body -----------------------------


async def test_upstream_error_bodies_reach_only_the_log_with_secrets_masked(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = BackgroundCut(clock)
    cases = [("token", name, form) for name, form in forms(API_KEY).items()]
    cases += [("process", name, form) for name, form in forms(ACCESS_TOKEN).items()]
    bodies = []
    async with running(
        upstream_settings(tmp_path), clock, upstream_transport=upstream.transport()
    ) as (_app, client):
        await register(client)
        for n, (call, _name, form) in enumerate(cases):
            echo = httpx.Response(
                400, json={"error": f"bad value {form} (worker api-int-7.backgroundcut.lan)"}
            )
            if call == "token":
                upstream.token_error = echo
            else:
                upstream.process_error = echo
            answer = await client.get(f"/img/sku/{100 + n}x100/ffffff.jpg", headers=JSON)
            assert answer.status_code == 502
            assert answer.json()["error"] in ("upstream_refused", "upstream_error")
            bodies.append(answer.text)
        costs = (await client.get("/admin/costs", headers=AUTH)).text

    public = "\n".join(bodies)
    assert "backgroundcut.lan" not in public and "bad value" not in public
    for call, name, _form in cases:
        secret = API_KEY if call == "token" else ACCESS_TOKEN
        assert name not in leaked(public + costs, secret), f"{name} of the {call} secret: body"
        assert name not in leaked(caplog.text, secret), f"{name} of the {call} secret: log"
    assert caplog.text.count("bad value ") == len(cases)  # the log has the upstream's words


# --- 16. the embedded engine is held to the upstream timeouts -----------------------------


async def test_a_hanging_embedded_engine_gives_504_within_the_token_timeout(
    tmp_path: Path, clock: Clock
) -> None:
    # Were the timeout ignored, the miss would wait PROXY_COALESCE_WAIT and answer 503.
    config = settings(tmp_path, demo=True, token_timeout=0.2, coalesce_wait=10)
    async with running(config, clock) as (_app, client):
        hang = await client.put("/_engine/faults", json={"mode": "hang"}, headers=AUTH)
        assert hang.status_code == 200, hang.text
        answer = await client.get("/img/demo/64x64/ffffff.png", headers=JSON)
        m = await scrape(client)
    assert answer.status_code == 504
    assert answer.json()["error"] == "upstream_timeout"
    assert m.value("cutproxy_upstream_calls_total", endpoint="token", outcome="timeout") == 1
    assert m.value("cutproxy_ambiguous_mints_total") == 1
