"""The proxy in-process with its embedded engine, a clock the test moves, and many clients.

Clients are told apart by their address (``httpx.ASGITransport(client=...)``), as the proxy
sees them on the wire; the engine's ``/_engine/stats`` says what was really minted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.embedded import embedded_engine_settings
from proxy.engine.settings import EngineSettings
from proxy.settings import Settings
from proxy.url.signing import Signer
from tests.clock import Clock
from tests.integration.conftest import product_png
from tests.redis.conftest import redis_server  # noqa: F401  (a real redis-server)

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BASE = "http://127.0.0.1:8080"
# The start of the next UTC hour: budget windows line up with it, and the proxy's clock stays
# within an hour of the wall clock that diskcache expires entries by.
HOUR_START = float((int(time.time()) // 3600 + 1) * 3600)
# imgproxy's documented example pair, and a second pair for rotation.
KEY, SALT = "736563726574", "68656C6C6F"
NEW_KEY, NEW_SALT = "6e65772d6b6579", "6e65772d73616c74"


def photo(size: tuple[int, int] = (800, 600)) -> bytes:
    """A product shot: a blue disc on a light background."""
    return product_png(*size)


@dataclass
class Rig:
    app: Starlette
    settings: Settings
    clock: Clock
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        """A client whose requests come from ``address``."""
        if address not in self._clients:
            transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
            self._clients[address] = await self._stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url=BASE)
            )
        return self._clients[address]

    async def get(self, path: str, address: str = "127.0.0.1", **kw: Any) -> httpx.Response:
        return await (await self.client(address)).get(path, **kw)

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.get("/_engine/stats")).json()
        return data

    async def costs(self) -> dict[str, Any]:
        answer = await self.get("/admin/costs", headers=AUTH)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    async def upload(self, image_id: str, size: tuple[int, int] = (800, 600)) -> None:
        answer = await (await self.client()).put(
            f"/images/{image_id}",
            content=photo(size),
            headers={**AUTH, "Content-Type": "image/png"},
        )
        assert answer.status_code in (200, 201), answer.text

    def signer(self) -> Signer:
        signer = Signer.from_settings(self.settings)
        assert signer is not None
        return signer


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    """Build a proxy: ``await make_rig(budget_credits_per_hour=2, ...)`` (Settings fields).

    ``engine=`` takes EngineSettings overrides; ``data_dir=`` lets two proxies share one
    directory, like two worker processes of one host.
    """
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make(
            *, engine: dict[str, Any] | None = None, data_dir: Path | None = None, **overrides: Any
        ) -> Rig:
            nonlocal count
            count += 1
            clock = Clock(overrides.pop("now", HOUR_START + 60))
            data = data_dir or tmp_path / f"proxy-{count}"
            settings = Settings(data_dir=data, admin_token=ADMIN, **overrides)
            base = embedded_engine_settings(settings)
            engine_settings = EngineSettings.from_env(
                {}, **{"public_url": base.public_url, "data_dir": base.data_dir, **(engine or {})}
            )
            app = create_app(settings, engine_settings=engine_settings, clock=clock)
            await stack.enter_async_context(app.router.lifespan_context(app))
            rig = Rig(app, settings, clock)
            await stack.enter_async_context(rig._stack)
            return rig

        yield make
