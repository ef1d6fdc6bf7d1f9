"""The upstream client's hardening: what a mint may retry, which output URLs pass, what a
public message may say, how secrets are masked in the log, and timeouts on any transport."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import httpx
import pytest

from proxy.errors import UpstreamError, UpstreamTimeoutError
from proxy.masking import mask
from proxy.stores import cache
from proxy.stores.cache import output_for
from proxy.upstream.client import UpstreamClient, UpstreamConfig
from proxy.upstream.replies import normalise_output_url

KEY = "sk-live-4f9c2d7e8a1b3c5d6e7f8091a2b3c4d5"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ2IjpbInYiXX0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
CONFIG = UpstreamConfig(
    api_key=KEY,
    token_url="https://backgroundcut.co/api/v3/remove-bg/token/",
    process_url="https://api.backgroundcut.co/v3/remove-bg/",
    attempts=3,
    backoff=0.5,
    deadline=30,
    output_hosts=("api.backgroundcut.co", "127.0.0.1", "*.cdn.example"),
)
VARIANTS: list[dict[str, Any]] = [{"variant_name": "v", "max_resolution": 76800}]
Answer = httpx.Response | Exception


class Upstream:
    """A scripted BackgroundCut: the answers in turn (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(
    handler: Callable[[httpx.Request], Any],
    *,
    ambiguous: list[tuple[list[dict[str, Any]], str | None]] | None = None,
    **config: Any,
) -> UpstreamClient:
    async def no_sleep(_seconds: float) -> None:
        pass

    hook = None if ambiguous is None else lambda v, u: ambiguous.append((v, u))
    return UpstreamClient(
        dataclasses.replace(CONFIG, **config),
        transport=httpx.MockTransport(handler),
        sleep=no_sleep,
        on_ambiguous_mint=hook,
    )


def granted() -> httpx.Response:
    return httpx.Response(200, json={"access_token": TOKEN})


def processed(url: str) -> httpx.Response:
    return httpx.Response(200, json={"unique_filename": "u-1", "output_urls": {"v": url}})


# --- 1. a mint is retried only when it provably was not charged ----------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("no SYN-ACK"),
        httpx.PoolTimeout("no free connection"),
        httpx.Response(429, text="API rate limit crossed"),
    ],
    ids=["connect-error", "connect-timeout", "pool-timeout", "429"],
)
async def test_a_mint_that_never_reached_the_upstream_is_retried(failure: Answer) -> None:
    upstream = Upstream(failure, failure, granted())
    ambiguous: list[Any] = []
    assert await client(upstream, ambiguous=ambiguous).mint(VARIANTS, "u-1") == TOKEN
    assert len(upstream.requests) == 3
    assert ambiguous == []


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (httpx.ReadError("connection reset"), 502),
        (httpx.RemoteProtocolError("server disconnected"), 502),
        (httpx.WriteError("broken pipe"), 502),
        (httpx.ReadTimeout("no answer"), 504),
        (httpx.WriteTimeout("stalled"), 504),
        (httpx.Response(500, text="boom"), 502),
        (httpx.Response(503, text="busy"), 502),
        (httpx.Response(409, text="conflict"), 502),  # not a refusal the contract knows
        (httpx.Response(200, text="<html>"), 502),  # granted, but no token to use
        (RuntimeError("transport crashed"), 502),
    ],
    ids=[
        "read-error",
        "remote-protocol",
        "write-error",
        "read-timeout",
        "write-timeout",
        "500",
        "503",
        "409",
        "200-not-json",
        "crash",
    ],
)
async def test_an_ambiguous_mint_ends_the_attempt(failure: Answer, status: int) -> None:
    upstream = Upstream(failure, granted())
    ambiguous: list[Any] = []
    up = client(upstream, ambiguous=ambiguous)
    with pytest.raises(UpstreamError) as info:
        await up.mint(VARIANTS, "u-1")
    assert len(upstream.requests) == 1  # not retried: it may have been charged
    assert info.value.maybe_charged
    assert info.value.status_code == status
    assert ambiguous == [(VARIANTS, "u-1")]
    # Nothing remembers the failure: the next mint asks the upstream again.
    assert await up.mint(VARIANTS, "u-1") == TOKEN
    assert len(upstream.requests) == 2 and len(ambiguous) == 1


@pytest.mark.parametrize("status", [400, 401, 402])
async def test_a_refused_mint_took_no_credit(status: int) -> None:
    upstream = Upstream(httpx.Response(status, json={"error": "no"}))
    ambiguous: list[Any] = []
    with pytest.raises(UpstreamError) as info:
        await client(upstream, ambiguous=ambiguous).mint(VARIANTS)
    assert len(upstream.requests) == 1
    assert not info.value.maybe_charged and ambiguous == []


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadError("reset"), httpx.RemoteProtocolError("eof"), httpx.Response(502)],
)
async def test_processing_keeps_its_retries(failure: Answer) -> None:
    upstream = Upstream(failure, processed("https://api.backgroundcut.co/o/1.png"))
    result = await client(upstream).process(TOKEN)
    assert len(upstream.requests) == 2
    assert result.output_urls == {"v": "https://api.backgroundcut.co/o/1.png"}


# --- 3. output URLs with a short expiry of their own ---------------------------------------


def s3_url(now: float, seconds: int) -> str:
    date = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return (
        "https://bucket.s3.amazonaws.com/o/1.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Date={date}&X-Amz-Expires={seconds}&X-Amz-Signature=abc"
    )


def test_a_url_shorter_lived_than_the_margin_is_kept_for_half_its_life(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "_short_lived_warning", cache._Once())
    now = 1_767_225_600.0
    shorts: list[None] = []
    outputs = [
        output_for(s3_url(now, 240), now, 7200, 300, on_short=lambda: shorts.append(None))
        for _ in range(3)
    ]
    assert {o.expires_at for o in outputs} == {now + 120}  # half of its 240 s
    assert len(shorts) == 3  # each counted
    warnings = [r for r in caplog.records if r.name == "cutproxy.cache"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # logged once
    assert "bucket.s3.amazonaws.com" in warnings[0].getMessage()
    assert "abc" not in warnings[0].getMessage()  # the URL's signature stays out


def test_a_url_with_room_for_the_margin_keeps_the_margin() -> None:
    now = 1_767_225_600.0
    shorts: list[None] = []
    out = output_for(s3_url(now, 900), now, 7200, 300, on_short=lambda: shorts.append(None))
    assert out.expires_at == now + 600 and shorts == []


# --- 8. output URLs: plainly scheme://allowed-host/..., returned normalised ----------------


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\@127.0.0.1/x.jpg",
        "http://evil.example\\.127.0.0.1/x.jpg",
        "https://api.backgroundcut.co\\evil.example/x.jpg",
        "http://user@127.0.0.1/x.jpg",
        "http://user:pw@127.0.0.1/x.jpg",
        "http://evil.example@127.0.0.1/x.jpg",
        "http://127.0.0.1 /x.jpg",
        "http://127.0.0.1/x .jpg",
        "\thttp://127.0.0.1/x.jpg",
        "http://127.0.0.1/x.jpg\n",
        "http://127.0.0.1/x\x00.jpg",
        "http://127.0.0.1/ä.jpg",
        "http:///127.0.0.1/x.jpg",
        "http:/127.0.0.1/x.jpg",
        "//127.0.0.1/x.jpg",
        "http://:80/x.jpg",
        "http://127.0.0.1:http/x.jpg",
        "http://127.0.0.1:99999/x.jpg",
        "http://127.0.0.1./x.jpg",
        "javascript://127.0.0.1/%0aalert(1)",
        "data://127.0.0.1/x",
        "ftp://127.0.0.1/x.jpg",
        "https://api.backgroundcut.co.evil.example/x.jpg",
    ],
)
async def test_an_output_url_that_is_not_plain_is_refused(url: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await client(Upstream(processed(url))).process(TOKEN)
    assert info.value.code == "output_host_not_allowed"
    assert info.value.status_code == 502
    assert url.strip() not in info.value.message


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://API.BackgroundCut.CO/o/1.png", "https://api.backgroundcut.co/o/1.png"),
        ("https://api.backgroundcut.co:443/o/1.png", "https://api.backgroundcut.co/o/1.png"),
        ("http://127.0.0.1:8080/_engine/f/1.png", "http://127.0.0.1:8080/_engine/f/1.png"),
        ("https://eu1.cdn.example?sig=1", "https://eu1.cdn.example/?sig=1"),
        ("https://eu1.cdn.example/a%20b.png?x=1&y=@", "https://eu1.cdn.example/a%20b.png?x=1&y=@"),
    ],
)
async def test_output_urls_come_back_normalised(url: str, normal: str) -> None:
    result = await client(Upstream(processed(url))).process(TOKEN)
    assert result.output_urls == {"v": normal}
    assert normalise_output_url(normal) == normal  # normalising is idempotent


# --- 9. the upstream's words stay in the log, with every secret masked -------------------


def forms(secret: str) -> dict[str, str]:
    """Every spelling of ``secret`` an upstream might echo, by name."""
    raw = secret.encode()
    out = {
        "raw": secret,
        "quote": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "json": json.dumps(secret)[1:-1],
    }
    for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
        out[name] = encode(raw).decode()
        out[f"{name}-nopad"] = encode(raw).decode().rstrip("=")
        # Inside a longer encoded value, at each of the three byte alignments.
        for prefix in ("B", "Be", "Bearer "):
            out[f"{name}-after-{len(prefix)}"] = encode(f"{prefix}{secret}!".encode()).decode()
    return out


def leaked(text: str, secret: str) -> list[str]:
    """The names of the forms of ``secret`` found in ``text``; for an encoding embedded in
    a longer value, the part of it that depends on the secret alone is looked for."""
    found = []
    for name, form in forms(secret).items():
        if "-after-" in name:
            before = int(name.rsplit("-", 1)[1])
            form = form[-(-8 * before // 6) + 1 : -4]
        if form.lower() in text.lower():
            found.append(name)
    return found


@pytest.mark.parametrize("secret", [KEY, TOKEN, "k/+=" + KEY[4:]], ids=["key", "token", "odd"])
def test_mask_hides_every_form_of_a_secret(secret: str) -> None:
    for name, form in forms(secret).items():
        text = f'{{"error": "echo: {form} <- that", "host": "db-7.internal"}}'
        masked = mask(text, secret)
        assert leaked(masked, secret) == [], name
        assert "***" in masked and "db-7.internal" in masked and "that" in masked


@pytest.mark.parametrize("endpoint", ["token", "process"])
async def test_an_upstream_4xx_body_reaches_only_the_log_masked(
    endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [KEY, TOKEN] if endpoint == "process" else [KEY]
    for secret in secrets:
        for name, form in forms(secret).items():
            body = {"error": f"invalid parameter near {form} on api-int-3.backgroundcut.lan"}
            up = client(Upstream(httpx.Response(400, json=body)))
            caplog.clear()
            with pytest.raises(UpstreamError) as info:
                if endpoint == "token":
                    await up.mint(VARIANTS)
                else:
                    await up.process(TOKEN)
            public = json.dumps(info.value.as_json())
            assert leaked(public, secret) == [], f"{name} in the public message"
            assert "backgroundcut.lan" not in public and "invalid parameter" not in public
            assert leaked(caplog.text, secret) == [], f"{name} in the log"
            # The log keeps the upstream's words, the secret masked.
            assert "invalid parameter near " in caplog.text and "***" in caplog.text


# --- 16. every call is bounded by its timeout, whatever the transport ---------------------


async def test_a_hanging_transport_times_out_at_the_configured_timeout() -> None:
    calls: list[str] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        await asyncio.Event().wait()  # MockTransport, like ASGITransport, has no timeouts
        raise AssertionError("unreachable")

    up = client(hang, token_timeout=0.05, process_timeout=0.05, attempts=2)
    # The outer bound only keeps a regression from hanging the suite: it is not asserted on.
    with anyio.fail_after(10), pytest.raises(UpstreamTimeoutError) as info:
        await up.mint(VARIANTS)
    assert info.value.status_code == 504 and info.value.maybe_charged
    with anyio.fail_after(10), pytest.raises(UpstreamTimeoutError):
        await up.process(TOKEN)
    assert len(calls) == 3  # the mint once, the processing call twice
