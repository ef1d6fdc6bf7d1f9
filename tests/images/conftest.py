"""The proxy in-process with a local engine whose clock the test moves (upload retention)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.engine.app import create_engine_app
from proxy.engine.settings import EngineSettings
from proxy.settings import Settings
from tests.clock import Clock

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BASE = "http://127.0.0.1:8080"


def photo(
    seed: int = 0, size: tuple[int, int] = (640, 480), fmt: str = "PNG", colour: int = 0
) -> bytes:
    """A small product shot: a coloured disc on a light background; ``seed`` varies it."""
    image = Image.new("RGB", size, (238, 238, 236))
    draw = ImageDraw.Draw(image)
    w, h = size
    shade = (seed * 37 + colour) % 200
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(20 + shade, 90, 200))
    draw.text((10, 10), f"#{seed}", fill=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@dataclass
class Rig:
    """The proxy app, a client for it, and the engine behind it (with its own clock)."""

    app: Starlette
    client: httpx.AsyncClient
    engine: httpx.AsyncClient
    clock: Clock
    engine_clock: Clock
    data_dir: Path

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.engine.get("/_engine/stats")).json()
        return data

    def originals(self) -> list[Path]:
        """Every file kept as an original (``<aa>/<sha>``, and any half-written one)."""
        return sorted(p for p in (self.data_dir / "originals").glob("*/*") if p.is_file())

    async def upload(self, image_id: str, data: bytes, **kw: Any) -> httpx.Response:
        headers = {**AUTH, "Content-Type": kw.pop("content_type", "image/png")}
        return await self.client.put(f"/images/{image_id}", content=data, headers=headers, **kw)


@pytest.fixture
def rig_settings(tmp_path: Path) -> dict[str, Any]:
    """Overrides a test may change before ``rig`` is built."""
    return {}


@pytest.fixture
async def rig(tmp_path: Path, rig_settings: dict[str, Any]) -> AsyncIterator[Rig]:
    data_dir = tmp_path / "data"
    clock, engine_clock = Clock(), Clock()
    engine_settings = EngineSettings.from_env(
        {}, public_url=f"{BASE}/_engine", data_dir=data_dir / "engine"
    )
    # The engine the proxy talks to runs on the test's clock, so uploads can expire at will;
    # the one create_app mounts shares its data dir and serves the output files.
    engine = create_engine_app(engine_settings, clock=engine_clock)
    settings = Settings(data_dir=data_dir, admin_token=ADMIN, **rig_settings)
    app = create_app(
        settings,
        engine_settings=engine_settings,
        clock=clock,
        upstream_transport=httpx.ASGITransport(app=engine),
    )
    async with (
        engine.router.lifespan_context(engine),
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=engine), base_url=BASE) as direct,
    ):
        yield Rig(app, client, direct, clock, engine_clock, data_dir)
