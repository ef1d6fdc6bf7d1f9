"""A worker killed with SIGKILL mid-upload and mid-mint: the next request on the same host
takes its lock or lease over at once, though they would live ten minutes (PROXY_LEASE_TTL)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import diskcache
import httpx
import pytest

from tests.integration.conftest import ADMIN, Engine, product_png, start_proxy

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {ADMIN}"}
# Longer than any request of this test may take: waiting for a lapse would fail it.
BOUNDED = 20.0


def holders(data_dir: Path, prefix: str) -> list[str]:
    """Tokens (``host:pid:random``) of the live leases whose name starts with ``prefix``."""
    with diskcache.Cache(str(data_dir / "leases")) as leases:
        found = (leases.get(name) for name in leases.iterkeys() if str(name).startswith(prefix))
        return [str(token) for token in found if token is not None]


async def kill_the_holder(data_dir: Path, prefix: str) -> int:
    """Wait until a worker holds a lease named ``prefix...``, then SIGKILL that worker."""
    deadline = time.monotonic() + BOUNDED
    while not (found := await asyncio.to_thread(holders, data_dir, prefix)):
        assert time.monotonic() < deadline, f"no worker took a {prefix} lease"
        await asyncio.sleep(0.05)
    pid = int(found[0].split(":")[1])
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_a_killed_worker_leaves_no_lock_or_lease_behind(
    engine: Engine, tmp_path: Path
) -> None:
    proxy = start_proxy(engine, tmp_path, workers=2, PROXY_LEASE_TTL="600")
    data_dir = tmp_path / "proxy-data"
    photo = product_png()
    put = {**AUTH, "Content-Type": "image/png"}
    async with httpx.AsyncClient(base_url=proxy.url, timeout=BOUNDED) as client:
        try:
            # An upload hangs at the engine; its worker is killed holding the bytes' lock.
            engine.faults(process_latency=5)
            stuck = asyncio.ensure_future(client.put("/images/mug", content=photo, headers=put))
            killed = await kill_the_holder(data_dir, "lock:bytes:")
            with pytest.raises(httpx.TransportError):
                await stuck
            engine.faults(process_latency=0)
            again = await client.put("/images/mug", content=photo, headers=put)
            assert again.status_code == 201, again.text

            # A visitor's mint hangs; its worker is killed holding the variant's lease.
            engine.faults(process_latency=5)
            path = "/img/mug/300x300/ffffff.jpg"
            stuck = asyncio.ensure_future(client.get(path))
            second = await kill_the_holder(data_dir, "lease:/img/mug/300x300/")
            assert second != killed
            with pytest.raises(httpx.TransportError):
                await stuck
            engine.faults(process_latency=0)
            answer = await client.get(path)
            assert answer.status_code == 302, answer.text
        finally:
            proxy.stop()
    log = proxy.log()
    assert "took over the lease on lock:bytes:" in log
    assert "took over the lease on lease:/img/mug/300x300/" in log
