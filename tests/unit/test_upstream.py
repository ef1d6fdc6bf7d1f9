"""The upstream client against a faked upstream (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from proxy.errors import (
    UpstreamError,
    UpstreamGoneError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
)
from proxy.upstream.client import UpstreamClient, UpstreamConfig
from proxy.upstream.replies import error_message, parse_retry_after

KEY = "sk-secret-key-123"
CONFIG = UpstreamConfig(
    api_key=KEY,
    token_url="https://backgroundcut.co/api/v3/remove-bg/token/",
    process_url="https://api.backgroundcut.co/v3/remove-bg/",
    attempts=3,
    backoff=0.5,
    deadline=30,
    output_hosts=("api.backgroundcut.co", "*.cdn.example"),
)


class Recorder:
    def __init__(self, answers: list[httpx.Response | Exception]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(
    handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float]
) -> UpstreamClient:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return UpstreamClient(CONFIG, transport=httpx.MockTransport(handler), sleep=fake_sleep)


async def test_mint_sends_key_and_variants() -> None:
    rec = Recorder([httpx.Response(200, json={"access_token": "tok"})])
    up = client(rec, [])
    assert await up.mint([{"variant_name": "v"}], unique_filename="u-1") == "tok"
    sent = rec.requests[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.url == CONFIG.token_url
    assert b'"unique_filename":"u-1"' in sent.content.replace(b" ", b"")


async def test_process_sends_the_token_alone_and_checks_hosts() -> None:
    rec = Recorder(
        [
            httpx.Response(
                200,
                json={
                    "unique_filename": "u-1",
                    "output_urls": {"v": "https://api.backgroundcut.co/o/1.jpg"},
                },
            )
        ]
    )
    result = await client(rec, []).process("tok")
    assert result.output_urls == {"v": "https://api.backgroundcut.co/o/1.jpg"}
    # as the provider's own example does: a plain form with the token, no file
    assert rec.requests[0].content == b"token=tok"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/x.jpg",
        "javascript:alert(1)",
        "https://api.backgroundcut.co.evil.example/x.jpg",
        "ftp://api.backgroundcut.co/x.jpg",
    ],
)
async def test_output_url_on_a_foreign_host_is_refused(url: str) -> None:
    rec = Recorder([httpx.Response(200, json={"unique_filename": "u", "output_urls": {"v": url}})])
    with pytest.raises(UpstreamError) as info:
        await client(rec, []).process("tok")
    assert info.value.code == "output_host_not_allowed"
    assert info.value.status_code == 502


async def test_wildcard_hosts_are_allowed() -> None:
    url = "https://eu1.cdn.example/x.jpg"
    rec = Recorder([httpx.Response(200, json={"unique_filename": "u", "output_urls": {"v": url}})])
    assert (await client(rec, []).process("tok")).output_urls["v"] == url


@pytest.mark.parametrize(
    ("status", "error_type", "client_status", "code"),
    [
        (401, UpstreamError, 502, "upstream_auth"),
        (403, UpstreamError, 502, "upstream_auth"),
        (402, UpstreamError, 502, "upstream_out_of_credits"),
        (400, UpstreamError, 502, "upstream_refused"),
        (404, UpstreamGoneError, 502, "upstream_upload_gone"),
    ],
)
async def test_4xx_maps_without_retry_or_secrets(
    status: int, error_type: type[UpstreamError], client_status: int, code: str
) -> None:
    rec = Recorder([httpx.Response(status, json={"error": f"bad key {KEY}"})])
    sleeps: list[float] = []
    with pytest.raises(error_type) as info:
        await client(rec, sleeps).mint([{"variant_name": "v"}])
    assert len(rec.requests) == 1 and sleeps == []
    assert info.value.status_code == client_status
    assert info.value.code == code
    assert KEY not in info.value.message


async def test_429_retries_honouring_retry_after_then_gives_503() -> None:
    rec = Recorder(
        [httpx.Response(429, headers={"Retry-After": "7"}, text="API rate limit crossed")]
    )
    sleeps: list[float] = []
    with pytest.raises(UpstreamRateLimitedError) as info:
        await client(rec, sleeps).mint([{"variant_name": "v"}])
    assert len(rec.requests) == 3
    assert sleeps == [7, 7]
    assert info.value.status_code == 503 and info.value.retry_after == 7
    assert "rate limit" in info.value.message


async def test_5xx_then_success_retries_processing_with_backoff() -> None:
    ok = httpx.Response(
        200, json={"unique_filename": "u", "output_urls": {"v": "https://api.backgroundcut.co/a"}}
    )
    rec = Recorder([httpx.Response(503), httpx.Response(500, text="boom"), ok])
    sleeps: list[float] = []
    assert (await client(rec, sleeps).process("tok")).unique_filename == "u"
    assert sleeps == [0.5, 1.0]


async def test_persistent_5xx_is_502() -> None:
    rec = Recorder([httpx.Response(500, json={"detail": "internal"})])
    with pytest.raises(UpstreamError) as info:
        await client(rec, []).process("tok")
    assert len(rec.requests) == 3
    assert info.value.status_code == 502 and info.value.upstream_status == 500
    assert "internal" not in info.value.message  # the upstream's words go to the log only


async def test_connection_errors_retry_then_502() -> None:
    rec = Recorder([httpx.ConnectError("refused")])
    with pytest.raises(UpstreamError) as info:
        await client(rec, []).mint([{"variant_name": "v"}])
    assert len(rec.requests) == 3
    assert info.value.status_code == 502 and info.value.code == "upstream_unreachable"


async def test_read_timeout_on_mint_is_504_and_not_retried() -> None:
    rec = Recorder([httpx.ReadTimeout("slow")])
    with pytest.raises(UpstreamTimeoutError) as info:
        await client(rec, []).mint([{"variant_name": "v"}])
    assert len(rec.requests) == 1  # the upstream may have charged for it
    assert info.value.status_code == 504


async def test_read_timeout_on_processing_is_retried() -> None:
    ok = httpx.Response(
        200, json={"unique_filename": "u", "output_urls": {"v": "https://api.backgroundcut.co/a"}}
    )
    rec = Recorder([httpx.ReadTimeout("slow"), ok])
    assert (await client(rec, []).process("tok")).unique_filename == "u"


async def test_a_crashing_transport_becomes_502() -> None:
    rec = Recorder([RuntimeError("engine switched off")])
    with pytest.raises(UpstreamError) as info:
        await client(rec, []).mint([{"variant_name": "v"}])
    assert info.value.status_code == 502


@pytest.mark.parametrize(
    "body",
    [
        httpx.Response(400, json={"error": "bad max_resolution"}),
        httpx.Response(400, json={"error": {"message": "bad max_resolution"}}),
        httpx.Response(400, json={"detail": "bad max_resolution"}),
        httpx.Response(400, json={"errors": [{"title": "bad max_resolution", "code": "x"}]}),
        httpx.Response(400, text="bad max_resolution"),
    ],
)
def test_error_bodies_of_every_shape_are_read(body: httpx.Response) -> None:
    assert "bad max_resolution" in error_message(body)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json=[1]), "not a JSON object"),
        (httpx.Response(200, json={"token": "x"}), "no access_token"),
    ],
)
async def test_malformed_answers_are_502(
    answer: httpx.Response, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(UpstreamError) as info:
        await client(Recorder([answer]), []).mint([{"variant_name": "v"}])
    assert info.value.status_code == 502 and info.value.code == "upstream_error"
    assert message in caplog.text  # what was wrong is in the log


def test_retry_after_parsing() -> None:
    assert parse_retry_after("12") == 12
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
