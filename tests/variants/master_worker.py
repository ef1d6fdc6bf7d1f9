"""Another worker process for tests/variants/test_masters.py: masters one image on a shared
data directory, as a cutproxy worker would, and prints what it got and from where.

    python -m tests.variants.master_worker <engine_url> <data_dir> <unique_filename> <w> <h>

It prints ``ready`` once its imports are done, waits for a line on stdin (so two workers ask
at the same moment), asks for the master five times at once, then prints ``<w>x<h> <source>``:
``minted`` when this process paid for it, ``shared`` when another worker did.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from proxy.guards.minter import Minter
from proxy.stores.leases import DiskLease
from proxy.stores.masters import DiskMasterStore
from proxy.stores.registry import ImageRecord
from proxy.upstream.client import UpstreamClient
from proxy.variants.derive import MasterCache
from proxy.variants.masters import MasterService, render_with
from tests.variants.conftest import QUALITY, Recorded, upstream_config


async def main(engine_url: str, data: str, unique: str, width: str, height: str) -> None:
    upstream = UpstreamClient(upstream_config(engine_url))
    events = Recorded()
    async with httpx.AsyncClient() as http:
        masters = MasterService(
            store=DiskMasterStore.under(Path(data)),
            cache=MasterCache(64 * 1024 * 1024),
            lease=DiskLease(Path(data) / "leases"),
            http=http,
            render=render_with(Minter(upstream)),
            events=events,
        )
        record = ImageRecord("mug", unique, width=int(width), height=int(height))
        found = await asyncio.gather(*(masters.get(record, QUALITY) for _ in range(5)))
    await upstream.aclose()
    (source,) = [k.partition(":")[2] for k in events.counts if k != "master:memory"]
    print(f"{found[0].width}x{found[0].height} {source}", flush=True)


if __name__ == "__main__":
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(main(*sys.argv[1:]))
