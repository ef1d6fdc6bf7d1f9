"""Store mode in-process: the app and its embedded local engine, driven over HTTP.

``store_rig(**settings)`` builds an app on a fresh data directory (store mode unless told
otherwise) and yields a :class:`Rig`; what the engine minted is read from its own stats
(``/_engine/stats``), so every count here is what the upstream would have billed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.settings import Settings
from proxy.stores.derived import DiskBytes
from tests.clock import Clock
from tests.images.conftest import photo
from tests.ops.conftest import log_lines  # noqa: F401  (the access log's lines, as JSON)

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BASE = "http://127.0.0.1:8080"

__all__ = ["ADMIN", "AUTH", "BASE", "Rig", "photo"]


@dataclass
class Rig:
    app: Starlette
    client: httpx.AsyncClient
    data_dir: Path
    clock: Clock

    async def minted(self) -> int:
        return int((await self.client.get("/_engine/stats")).json()["tokens_minted"])

    async def upload(self, image_id: str, data: bytes) -> dict[str, Any]:
        headers = {**AUTH, "Content-Type": "image/png"}
        answer = await self.client.put(f"/images/{image_id}", content=data, headers=headers)
        assert answer.status_code in (200, 201), answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def register(self, image_id: str, uploaded: dict[str, Any]) -> None:
        """Map ``image_id`` to another image's upload by ``unique_filename`` alone: an image
        the proxy keeps no original, and no master, of."""
        body = {k: uploaded[k] for k in ("unique_filename", "width", "height")}
        answer = await self.client.put(f"/images/{image_id}", json=body, headers=AUTH)
        assert answer.status_code in (200, 201), answer.text

    async def costs(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get("/admin/costs", headers=AUTH)).json()
        return body

    async def engine_down(self, down: bool = True) -> None:
        mode = {"mode": "down" if down else "ok"}
        answer = await self.client.put("/_engine/faults", json=mode, headers=AUTH)
        assert answer.status_code == 200, answer.text

    def masters(self, image_id: str) -> list[str]:
        """The master files kept for the image (names only)."""
        folder = self.data_dir / "masters" / image_id
        return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []

    async def disk_keys(self, prefix: str) -> list[str]:
        """The variants the host's disk tier keeps under ``prefix`` (read as another worker)."""
        disk = await DiskBytes.open(self.data_dir / "variants", 0)
        try:
            return await disk.keys(prefix)
        finally:
            await disk.close()


MakeRig = Callable[..., contextlib.AbstractAsyncContextManager[Rig]]


@pytest.fixture
def store_rig(tmp_path: Path) -> MakeRig:
    """Build a rig with these settings (``mode="store"`` unless given)."""
    count = 0

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Rig]:
        nonlocal count
        count += 1
        data_dir = overrides.pop("data_dir", tmp_path / f"data{count}")
        clock = Clock()
        values: dict[str, Any] = {"mode": "store", "admin_token": ADMIN, **overrides}
        app = create_app(Settings(data_dir=data_dir, **values), clock=clock)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
        ):
            yield Rig(app, client, data_dir, clock)

    return make


@pytest.fixture
async def rig(store_rig: MakeRig) -> AsyncIterator[Rig]:
    async with store_rig() as made:
        yield made


async def gather(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int, call: Callable[[], Any]) -> None:
        results[index] = await call()

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(one, index, call)
    return results
