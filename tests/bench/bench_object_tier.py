"""Store mode's object-store tier: a hit fetched from the store against a disk hit, and
fetching a variant against deriving it again from a master already decoded in memory.

Against one real SeaweedFS on loopback (so the network is the cheapest it will ever be; a
store across a network adds its round trips twice: the index, then the bytes). Per case, in
one process, one call at a time, interleaved so a busy machine slows every side alike:

- disk hit: ``DiskBytes.get`` (SQLite row, file read, SHA-256 check);
- object hit: ``ObjectVariantTier.get`` (index GET, bytes GET, SHA-256 check);
- object hit, bytes only: one GET of the content object (what a layout without the index
  would cost: the index's price);
- object hit through the tiers: ``TieredVariants.find`` with memory and disk empty, which
  also copies the hit to disk (what the first hit on a host costs);
- derive: ``proxy.variants.derive.derive`` in a worker thread from the decoded master.

Each with wall p50/p95 and this process's CPU per call (all its threads: obstore's and
libvips'), then throughput: object hits 8 at a time, derivations on 2 threads (the CPUs).
``python -m tests.bench bench_object_tier``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from proxy.stores.derived import DiskBytes, MemoryBytes, StoredVariant, TieredVariants
from proxy.stores.object_variants import ObjectVariantTier
from proxy.stores.objects import ObjectStore
from proxy.stores.objects_config import ObjectStoreConfig
from proxy.variants import derive
from tests.bench.bench_derive import master_png
from tests.s3.server import ACCESS_KEY, REGION, SECRET_KEY, start_seaweed

SAMPLES = 41  # per case and side; p95 is then the 3rd slowest
THROUGHPUT_OPS = 96
CONCURRENCY = 8


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    fit: derive.Fit
    bg: str
    fmt: derive.Format
    quality: int

    @property
    def key(self) -> str:
        return f"/img/bench/{self.width}x{self.height}/{self.fit}/{self.bg}.{self.fmt}#p~v1-medium"


CASES = (
    Case("pad 640x640 jpg", 640, 640, "pad", "ffffff", "jpg", 85),
    Case("pad 1600x1600 png transparent", 1600, 1600, "pad", "transparent", "png", 85),
)
SIDES = ("disk hit", "object hit", "object hit, bytes only", "object hit via tiers", "derive")


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def p(self, q: int) -> float:
        return statistics.quantiles(self.wall, n=100, method="inclusive")[q - 1] * 1000

    @property
    def cpu_ms(self) -> float:
        return statistics.mean(self.cpu) * 1000


async def _timed(samples: Samples, call: Callable[[], Awaitable[object]]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    await call()
    samples.cpu.append(time.process_time() - cpu)
    samples.wall.append(time.perf_counter() - wall)


async def _throughput(call: Callable[[], Awaitable[object]], workers: int) -> float:
    queue = iter(range(THROUGHPUT_OPS))

    async def worker() -> None:
        for _ in queue:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return THROUGHPUT_OPS / (time.perf_counter() - started)


async def _measure(endpoint: str, tmp: Path) -> list[tuple[str, str, str]]:
    config = ObjectStoreConfig.from_url(
        "s3://bench-tier/cutproxy",
        endpoint=endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    store = ObjectStore(config)
    await store.ensure_bucket()
    tier = ObjectVariantTier(store)
    disk = await DiskBytes.open(tmp / "disk", 512 * 1024 * 1024)
    promoted = await DiskBytes.open(tmp / "promoted", 512 * 1024 * 1024)
    tiers = TieredVariants(MemoryBytes(0), promoted, tier)  # memory keeps nothing
    master = derive.decode_master(master_png())
    sizes: dict[str, int] = {}
    object_keys: dict[str, str] = {}
    for case in CASES:
        data = derive.derive(master, *_args(case))
        variant = StoredVariant.of(data, derive.CONTENT_TYPES[case.fmt], 1, 1, time.time())
        await disk.put(case.key, variant)
        object_keys[case.name] = (await tier.write(case.key, variant)).object_key
        sizes[case.name] = len(data)

    def deriving(case: Case) -> Callable[[], Awaitable[Any]]:
        return lambda: anyio.to_thread.run_sync(lambda: derive.derive(master, *_args(case)))

    async def via_tiers(case: Case) -> None:
        await promoted.delete_prefix(case.key)  # a host that never had it
        hit = await tiers.find(case.key)
        assert hit is not None and hit.tier == "object"

    calls: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {}
    for case in CASES:
        calls[case.name, "disk hit"] = lambda c=case: disk.get(c.key)  # type: ignore[misc]
        calls[case.name, "object hit"] = lambda c=case: tier.get(c.key)  # type: ignore[misc]
        calls[case.name, "object hit, bytes only"] = lambda c=case: store.get(  # type: ignore[misc]
            object_keys[c.name]
        )
        calls[case.name, "object hit via tiers"] = lambda c=case: via_tiers(c)  # type: ignore[misc]
        calls[case.name, "derive"] = deriving(case)
    for call in calls.values():  # warm up: connections, codecs, thread pools
        await call()
    samples = {key: Samples() for key in calls}
    for i in range(SAMPLES):
        order = list(calls) if i % 2 == 0 else list(reversed(calls))
        for key in order:
            await _timed(samples[key], calls[key])

    load = os.getloadavg()[0]
    rows = [
        (
            f"object-store tier vs disk tier vs deriving (SeaweedFS on loopback, load {load:.1f})",
            "p50/p95 ms wall, CPU ms per call in the proxy's process",
            "",
        )
    ]
    for case in CASES:
        cells = []
        for side in SIDES:
            s = samples[case.name, side]
            cells.append(f"{side} {s.p(50):.1f}/{s.p(95):.1f} ({s.cpu_ms:.1f} CPU)")
        disk_p50 = samples[case.name, "disk hit"].p(50)
        object_p50 = samples[case.name, "object hit"].p(50)
        derive_p50 = samples[case.name, "derive"].p(50)
        rows.append(
            (
                f"{case.name} ({sizes[case.name] / 1024:.0f} KB)",
                " · ".join(cells),
                f"object/disk = {object_p50 / disk_p50:.0f}x; "
                f"{'fetch' if object_p50 < derive_p50 else 'derive'} is faster "
                f"({derive_p50 / object_p50:.1f}x derive/object)",
            )
        )
        fetch_rate = await _throughput(calls[case.name, "object hit"], CONCURRENCY)
        derive_rate = await _throughput(calls[case.name, "derive"], 2)
        rows.append(
            (
                f"{case.name}: throughput",
                f"object hits {CONCURRENCY} at a time {fetch_rate:.0f}/s · "
                f"derivations on 2 threads {derive_rate:.0f}/s",
                "",
            )
        )
    await tiers.close()
    await disk.close()
    await store.close()
    return rows


def _args(case: Case) -> tuple[int, int, derive.Fit, str, derive.Format, int]:
    return case.width, case.height, case.fit, case.bg, case.fmt, case.quality


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-object-tier-") as tmp:
        server = start_seaweed(Path(tmp) / "seaweedfs")
        try:
            return await _measure(server.endpoint, Path(tmp))
        finally:
            server.stop()


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(" | ".join(row))
