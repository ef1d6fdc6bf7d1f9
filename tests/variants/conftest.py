"""Store mode's master service and deriver against the real standalone engine on loopback.

The engine counts the tokens it mints (``engine.minted()``): that is how every test here
counts what the proxy paid for, as a difference, since one engine serves the whole package
(``shared_engine``; a test that stops its engine takes its own, ``engine``). Each test has
its own data directory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.guards.minter import Minter
from proxy.stores.derived import DiskBytes, MemoryBytes, TieredVariants
from proxy.stores.leases import DiskLease, Lease
from proxy.stores.masters import DiskMasterStore
from proxy.stores.registry import ImageRecord
from proxy.upstream.client import UpstreamClient, UpstreamConfig
from proxy.variants.derivation import DeriveFunction, Deriver
from proxy.variants.derive import MasterCache
from proxy.variants.masters import MasterService, render_with
from tests.integration.conftest import (  # noqa: F401  (the standalone engine fixture)
    ENGINE_KEY,
    Engine,
    engine,
    product_png,
)
from tests.servers import cutproxy, free_port, start

QUALITY = "medium"
MIB = 1024 * 1024


def upstream_config(engine_url: str) -> UpstreamConfig:
    """The proxy's upstream client pointed at the engine (one attempt: a down engine fails
    at once)."""
    return UpstreamConfig(
        api_key=ENGINE_KEY,
        token_url=f"{engine_url}/api/v3/remove-bg/token/",
        process_url=f"{engine_url}/v3/remove-bg/",
        attempts=1,
        output_hosts=("127.0.0.1",),
    )


class Recorded:
    """Counts what the services report: master sources, adoptions, hits, derivations."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def master_found(self, source: str) -> None:
        self.counts[f"master:{source}"] += 1

    def master_adopted(self) -> None:
        self.counts["adopted"] += 1

    def variant_found(self, tier: str) -> None:
        self.counts[f"found:{tier}"] += 1

    def variant_derived(self, seconds: float) -> None:
        self.counts["derived"] += 1


@dataclass
class Rig:
    engine: Engine
    data: Path
    upstream: UpstreamClient
    http: httpx.AsyncClient
    minter: Minter
    events: Recorded = field(default_factory=Recorded)

    def masters(
        self,
        *,
        cache_bytes: int = 256 * MIB,
        lease: Lease | None = None,
        limiter: anyio.CapacityLimiter | None = None,
        **options: Any,
    ) -> MasterService:
        """A master service on the rig's data directory (its own memory, the shared disk)."""
        return MasterService(
            store=DiskMasterStore.under(self.data),
            cache=MasterCache(cache_bytes),
            lease=lease or DiskLease(self.data / "leases"),
            http=self.http,
            render=render_with(self.minter),
            limiter=limiter,
            events=self.events,
            **options,
        )

    async def deriver(
        self,
        masters: MasterService | None = None,
        *,
        memory_bytes: int = 64 * MIB,
        disk_bytes: int = 256 * MIB,
        limiter: anyio.CapacityLimiter | None = None,
        derive: DeriveFunction | None = None,
    ) -> Deriver:
        """A deriver with a fresh memory tier over the rig's disk tier."""
        disk = await DiskBytes.open(self.data / "variants", disk_bytes)
        options: dict[str, Any] = {}
        if limiter is not None:
            options["limiter"] = limiter
        if derive is not None:
            options["derive"] = derive
        return Deriver(
            masters=masters or self.masters(limiter=limiter),
            tiers=TieredVariants(MemoryBytes(memory_bytes), disk),
            master_quality=QUALITY,
            events=self.events,
            **options,
        )

    async def image(self, image_id: str = "mug", size: tuple[int, int] = (800, 600)) -> ImageRecord:
        """An image uploaded to the engine (one token) and its record, as the registry has it."""
        unique = await anyio.to_thread.run_sync(self.engine.upload, product_png(*size))
        return ImageRecord(image_id, unique, width=size[0], height=size[1])

    async def disk_keys(self, prefix: str) -> list[str]:
        """The keys the host's disk tier holds under ``prefix`` (read as another worker)."""
        disk = await DiskBytes.open(self.data / "variants", 0)
        try:
            return await disk.keys(prefix)
        finally:
            await disk.close()

    async def minted(self) -> int:
        return await anyio.to_thread.run_sync(self.engine.minted)


@pytest.fixture(scope="package")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One standalone engine for the package (as ``engine``, but started once)."""
    tmp = tmp_path_factory.mktemp("engine")
    server = start(
        cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}"),
        port=free_port(),
        log_path=tmp / "engine.log",
        env={"PROXY_ENGINE_DATA_DIR": str(tmp / "data"), "PROXY_ENGINE_API_KEY": ENGINE_KEY},
        ready_path="/_engine/health",
    )
    try:
        yield Engine(server)
    finally:
        server.stop()


async def make_rig(server: Engine, tmp_path: Path) -> AsyncIterator[Rig]:
    upstream = UpstreamClient(upstream_config(server.url))
    async with httpx.AsyncClient() as http:
        try:
            yield Rig(server, tmp_path / "proxy-data", upstream, http, Minter(upstream))
        finally:
            await upstream.aclose()


@pytest.fixture
async def rig(shared_engine: Engine, tmp_path: Path) -> AsyncIterator[Rig]:
    async for made in make_rig(shared_engine, tmp_path):
        yield made


@pytest.fixture
async def own_rig(engine: Engine, tmp_path: Path) -> AsyncIterator[Rig]:  # noqa: F811
    """A rig on an engine of its own, which the test may stop."""
    async for made in make_rig(engine, tmp_path):
        yield made
