"""The proxy app in-process, with the embedded local engine as its upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.settings import Settings
from tests.clock import Clock

ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def app(tmp_path: Path, clock: Clock) -> AsyncIterator[Starlette]:
    settings = Settings(data_dir=tmp_path, admin_token=ADMIN, demo=True)
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as c:
        yield c


async def minted(client: httpx.AsyncClient) -> int:
    return int((await client.get("/_engine/stats")).json()["tokens_minted"])


async def test_demo_variant_redirects_to_a_real_image(client: httpx.AsyncClient) -> None:
    before = await minted(client)
    answer = await client.get("/img/demo/400x300/ff5733.jpg")
    assert answer.status_code == 302
    assert answer.headers["cache-control"].startswith("public, max-age=")
    location = answer.headers["location"]
    assert location.startswith("http://127.0.0.1:8080/_engine/")
    image = await client.get(location)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert await minted(client) == before + 1
    again = await client.get("/img/demo/400x300/ff5733.jpg")
    assert again.headers["location"] == location
    assert await minted(client) == before + 1


async def test_head_works_like_get(client: httpx.AsyncClient) -> None:
    answer = await client.head("/img/demo/64x64/ffffff.png")
    assert answer.status_code == 302 and answer.headers["location"]


async def test_concurrent_misses_in_one_process_mint_once(client: httpx.AsyncClient) -> None:
    before = await minted(client)
    answers = await asyncio.gather(
        *(client.get("/img/demo/200x200/00ff00.webp") for _ in range(50))
    )
    assert {a.status_code for a in answers} == {302}
    assert len({a.headers["location"] for a in answers}) == 1
    assert await minted(client) == before + 1


async def test_an_expired_entry_is_never_served(client: httpx.AsyncClient, clock: Clock) -> None:
    first = await client.get("/img/demo/100x100/ffffff.jpg")
    max_age = int(first.headers["cache-control"].split("max-age=")[1])
    clock.now += max_age - 10
    assert (await client.get("/img/demo/100x100/ffffff.jpg")).headers["location"] == (
        first.headers["location"]
    )
    before = await minted(client)
    clock.now += 11
    second = await client.get("/img/demo/100x100/ffffff.jpg")
    assert second.status_code == 302
    assert second.headers["location"] != first.headers["location"]
    assert await minted(client) == before + 1


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/img/demo/400x300/FFF.jpg", "/img/demo/400x300/ffffff.jpg"),
        ("/img/demo/400x300/ffffff.jpeg", "/img/demo/400x300/ffffff.jpg"),
        ("/img/demo/200x150@2x/ffffff.jpg?s=abc", "/img/demo/400x300/ffffff.jpg?s=abc"),
    ],
)
async def test_non_canonical_urls_get_308(
    client: httpx.AsyncClient, path: str, location: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == 308
    assert answer.headers["location"] == location


async def test_a_query_that_is_not_utf8_keeps_its_bytes_in_the_308(app: Starlette) -> None:
    # uvicorn's httptools refuses such a request line, but h11 and other ASGI servers pass it
    # on (and no client library sends it): the 308 must still be answered, bytes kept.
    answer = await raw_get(app, "/img/demo/400x300/FFF.jpg", b"a=\xff&b=%20c")
    assert answer["status"] == 308
    assert answer["headers"][b"location"] == b"/img/demo/400x300/ffffff.jpg?a=%FF&b=%20c"


async def raw_get(app: Starlette, path: str, query: bytes) -> dict[str, Any]:
    """``GET path?query`` straight through ASGI: the query's bytes exactly as given."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return {"status": sent[0]["status"], "headers": dict(sent[0]["headers"])}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/img/demo/400/ffffff.jpg", 400, "bad_size"),
        ("/img/demo/400x300/red.jpg", 400, "bad_background"),
        ("/img/demo/400x300/transparent.jpg", 400, "bad_background"),
        ("/img/nope/400x300/ffffff.jpg", 404, "unknown_image"),
        ("/img/demo/400x300", 404, "not_found"),
        ("/nothing", 404, "not_found"),
    ],
)
async def test_bad_requests_get_clear_json(
    client: httpx.AsyncClient, path: str, status: int, code: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == status
    assert answer.json()["error"] == code
    assert answer.json()["message"]
    assert answer.headers["cache-control"] == "public, max-age=60"


async def test_wrong_method_is_405_json(client: httpx.AsyncClient) -> None:
    answer = await client.post("/img/demo/400x300/ffffff.jpg")
    assert answer.status_code == 405 and answer.json()["error"] == "method_not_allowed"


async def test_admin_registration_is_guarded(client: httpx.AsyncClient) -> None:
    body = {"unique_filename": "abc", "width": 10, "height": 10}
    assert (await client.put("/images/x", json=body)).status_code == 401
    wrong = await client.put("/images/x", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "admin_token_wrong"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    created = await client.put("/images/x", json=body, headers=auth)
    assert created.status_code == 201 and created.json()["unique_filename"] == "abc"
    replaced = await client.put("/images/x", json={**body, "unique_filename": "d"}, headers=auth)
    assert replaced.status_code == 200
    bad = await client.put("/images/x", json={"width": "big"}, headers=auth)
    assert bad.status_code == 400 and "unique_filename" in bad.json()["message"]
    garbage = await client.put("/images/x", content=b"{nope", headers=auth)
    assert garbage.status_code == 400 and garbage.json()["error"] == "bad_json"


async def test_admin_api_is_off_without_a_token(tmp_path: Path) -> None:
    application = create_app(Settings(data_dir=tmp_path))
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        answer = await c.put("/images/x", json={"unique_filename": "a"})
    assert answer.status_code == 403 and "PROXY_ADMIN_TOKEN" in answer.json()["message"]


# any text at all, percent-encoded so it reaches the app as one path segment
path_part = st.text(min_size=1, max_size=30).map(lambda s: quote(s, safe=""))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path_part, path_part, path_part)
async def test_no_url_produces_a_500(
    client: httpx.AsyncClient, image_id: str, size: str, filename: str
) -> None:
    answer = await client.get(f"/img/{image_id}/{size}/{filename}")
    assert answer.status_code < 500 or answer.status_code in (502, 503, 504)
    if answer.status_code >= 400:
        assert set(answer.json()) == {"error", "message"}


async def test_without_an_admin_token_the_engines_faults_are_not_on_the_port(
    tmp_path: Path, clock: Clock
) -> None:
    application = create_app(Settings(data_dir=tmp_path), clock=clock)
    key = (tmp_path / "engine" / "api-key").read_text().strip()
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as c:
            for given in ("engine-dev-key", key):
                auth = {"Authorization": f"Bearer {given}"}
                answer = await c.put("/_engine/faults", json={"mode": "down"}, headers=auth)
                assert answer.status_code == 404
            assert (await c.get("/_engine/stats")).json()["faults"]["mode"] == "ok"
