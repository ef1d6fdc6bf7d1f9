"""Purging: the proxy's cache by admin call, the CDN's by surrogate key on every change."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from proxy.app import Services
from proxy.serving.cdn import Purger
from tests.cdn.conftest import AUTH, AppFactory, minted, photo
from tests.cdn.recorder import Recorder, start_recorder
from tests.servers import free_port


@pytest.fixture
def cdn() -> Iterator[Recorder]:
    recorder = start_recorder()
    try:
        yield recorder
    finally:
        recorder.close()


async def test_dropping_variants_needs_the_admin_token(client: httpx.AsyncClient) -> None:
    answer = await client.delete("/images/demo/variants")
    assert answer.status_code == 401
    assert answer.json()["error"] == "admin_token_missing"


async def test_dropping_variants_makes_the_next_request_render_again(
    make_app: AppFactory, cdn: Recorder
) -> None:
    async with make_app(cdn_purge_url=cdn.url, image_view_ttl=0.05) as (app, client):
        first = await client.get("/img/demo/320x320/ffffff.jpg")
        await client.get("/img/demo/480x480/ffffff.png")
        before = await minted(client)
        assert (await client.get("/img/demo/320x320/ffffff.jpg")).headers["location"] == (
            first.headers["location"]
        )

        dropped = await client.delete("/images/demo/variants", headers=AUTH)
        assert dropped.status_code == 200, dropped.text
        body = dropped.json()
        assert body["variants_dropped"] == 2 and body["known"] is True
        assert body["cdn"] == {
            "configured": True,
            "ok": True,
            "keys": ["img-demo"],
            "status": 200,
            "error": None,
        }
        assert dropped.headers["cache-control"] == "no-store"
        assert [(c.method, c.headers["surrogate-key"]) for c in cdn.calls] == [("BAN", "img-demo")]

        again = await client.get("/img/demo/320x320/ffffff.jpg")
        assert again.status_code == 302
        assert again.headers["location"] != first.headers["location"]
        assert await minted(client) == before + 1

        state: Services = app.services
        assert state.purger is not None
        await state.purger.settle()  # the repeat after PROXY_IMAGE_VIEW_TTL
        assert cdn.keys() == ["img-demo", "img-demo"]


async def test_a_failed_cdn_purge_is_reported_logged_and_counted(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    async with make_app(cdn_purge_url=nowhere) as (_, client):
        await client.get("/img/demo/320x320/ffffff.jpg")
        answer = await client.delete("/images/demo/variants", headers=AUTH)
        assert answer.status_code == 502
        body = answer.json()
        assert body["error"] == "cdn_purge_failed"
        assert body["variants_dropped"] == 1  # the proxy's own part was done
        assert body["cdn"]["ok"] is False and "no answer from the CDN" in body["cdn"]["error"]
        assert "calling this again is safe" in body["message"]
        assert "cdn purge of img-demo failed" in caplog.text
        metrics = (await client.get("/metrics")).text
        assert 'cutproxy_cdn_purges_total{outcome="failed"} 1.0' in metrics


async def test_a_cdn_error_status_is_a_failure_too(make_app: AppFactory, cdn: Recorder) -> None:
    cdn.status = 403
    async with make_app(cdn_purge_url=cdn.url) as (_, client):
        answer = await client.delete("/images/demo/variants", headers=AUTH)
        assert answer.status_code == 502
        assert answer.json()["cdn"]["status"] == 403


async def test_without_a_purge_url_the_report_says_so(client: httpx.AsyncClient) -> None:
    answer = await client.delete("/images/demo/variants", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json()["cdn"] == {"configured": False, "ok": None, "keys": []}


async def test_replacing_or_deleting_an_image_purges_its_key_now_and_once_more_later(
    make_app: AppFactory, cdn: Recorder
) -> None:
    async with make_app(cdn_purge_url=cdn.url, image_view_ttl=0.05) as (app, client):
        state: Services = app.services
        assert state.purger is not None
        png = {**AUTH, "Content-Type": "image/png"}
        assert (await client.put("/images/sku-1", content=photo(), headers=png)).status_code == 201
        await state.purger.settle()
        assert cdn.calls == []  # a new image has nothing cached anywhere yet

        replaced = await client.put(
            "/images/sku-1", content=photo(colour=(200, 20, 20)), headers=png
        )
        assert replaced.json()["status"] == "replaced"
        await state.purger.settle()
        assert cdn.keys() == ["img-sku-1", "img-sku-1"]

        assert (await client.delete("/images/sku-1", headers=AUTH)).status_code == 200
        await state.purger.settle()
        assert cdn.keys() == ["img-sku-1"] * 4


@pytest.mark.parametrize(
    ("style", "method", "expected_headers", "expected_body"),
    [
        ("varnish", "BAN", {"surrogate-key": "img-a img-a.ffffff"}, None),
        (
            "fastly",
            "POST",
            {"surrogate-key": "img-a img-a.ffffff", "fastly-key": "tok-123"},
            None,
        ),
        (
            "cloudflare",
            "POST",
            {"authorization": "Bearer tok-123", "content-type": "application/json"},
            {"tags": ["img-a", "img-a.ffffff"]},
        ),
    ],
)
async def test_each_purge_style_speaks_its_cdns_api(
    style: str,
    method: str,
    expected_headers: dict[str, str],
    expected_body: dict[str, list[str]] | None,
) -> None:
    seen: list[httpx.Request] = []

    def cdn_api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True})

    purger = Purger(
        url="https://cdn.example/purge",
        style=style,
        token="tok-123",
        transport=httpx.MockTransport(cdn_api),
    )
    result = await purger.purge(["img-a", "img-a.ffffff"])
    await purger.aclose()
    assert result.ok and purger.succeeded == 1
    (request,) = seen
    assert request.method == method
    for name, value in expected_headers.items():
        assert request.headers[name] == value
    if expected_body is not None:
        assert json.loads(request.content) == expected_body
    assert "tok-123" not in repr(purger)


async def test_a_purge_error_never_shows_the_token_or_the_url() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}")

    purger = Purger(
        url="https://api.example/zones/secret-zone/purge_cache",
        style="cloudflare",
        token="tok-secret",
        transport=httpx.MockTransport(broken),
    )
    result = await purger.purge(["img-a"])
    await purger.aclose()
    assert not result.ok and purger.failed == 1
    text = json.dumps(result.as_json())
    assert "tok-secret" not in text and "secret-zone" not in text
