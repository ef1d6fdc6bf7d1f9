"""The proxy in-process (embedded local engine, demo image) with settings a test chooses."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.settings import Settings
from tests.clock import Clock

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BASE = "http://127.0.0.1:8080"
JSON = {"Accept": "application/json"}


def photo(
    size: tuple[int, int] = (900, 1200), colour: tuple[int, int, int] = (20, 90, 200)
) -> bytes:
    """A product shot: a coloured disc on a light studio background."""
    image = Image.new("RGB", size, (238, 238, 236))
    w, h = size
    ImageDraw.Draw(image).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=colour)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


AppFactory = Callable[
    ..., contextlib.AbstractAsyncContextManager[tuple[Starlette, httpx.AsyncClient]]
]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_app(tmp_path: Path, clock: Clock) -> AppFactory:
    """``async with make_app(**settings) as (app, client)``: started, stopped, cleaned up."""
    counter = iter(range(1000))

    @contextlib.asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
        values: dict[str, Any] = {
            "data_dir": tmp_path / f"data{next(counter)}",
            "admin_token": ADMIN,
            "demo": True,
            **overrides,
        }
        app = create_app(Settings(**values), clock=clock)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                yield app, client

    return build


@pytest.fixture
async def client(make_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_app() as (_, client):
        yield client


async def minted(client: httpx.AsyncClient) -> int:
    return int((await client.get("/_engine/stats")).json()["tokens_minted"])
