"""Issue 16's `make bench` row over HTTP: a store-mode hit served from the object store (not
in memory, not on disk) against one served from the local disk tier.

Two `cutproxy serve --workers 2` replicas in store mode on one SeaweedFS bucket and one
Redis, both with `PROXY_VARIANT_MEMORY_MB=0` (no memory tier: every request reads a lower
tier). The "disk" replica keeps variants on its disk; the "object" one has
`PROXY_VARIANT_DISK_MB=0` too, so each request fetches the variant from the bucket (its
index object, then its bytes). wrk alternates between them in rounds, so a busy machine
slows both alike; the ratio is the median of the rounds' ratios.
``python -m tests.bench bench_object_serve``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from proxy.stores.objects import ObjectStore
from proxy.stores.objects_config import ObjectStoreConfig
from tests.bench.harness import registered_image, start_engine, wrk
from tests.redis.replicas import start_replica
from tests.redis.server import start_redis
from tests.s3.server import ACCESS_KEY, REGION, SECRET_KEY, start_seaweed

ROUNDS = 3
SECONDS = 4
PATH = "/img/bench/640x640/ffffff.jpg"
BUCKET = "bench-serve"


async def _indexed(endpoint: str) -> int:
    config = ObjectStoreConfig.from_url(
        f"s3://{BUCKET}/fleet",
        endpoint=endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    async with ObjectStore(config) as store:
        return len([key async for key in store.list("variants/bench/keys")])


def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-object-serve-") as tmp:
        return _measure(Path(tmp))


def _measure(tmp: Path) -> list[tuple[str, str, str]]:
    seaweed = start_seaweed(tmp / "seaweedfs")
    redis = start_redis(tmp / "redis.log")
    engine = start_engine(tmp)
    replicas = []
    try:
        store = {
            "PROXY_MODE": "store",
            "PROXY_STORE_URL": f"s3://{BUCKET}/fleet",
            "PROXY_STORE_ENDPOINT": seaweed.endpoint,
            "PROXY_STORE_REGION": REGION,
            "PROXY_STORE_ACCESS_KEY": ACCESS_KEY,
            "PROXY_STORE_SECRET_KEY": SECRET_KEY,
            "PROXY_VARIANT_MEMORY_MB": "0",
            "PROXY_LOG_LEVEL": "warning",
        }
        disk = start_replica("disk", engine.url, redis.url, tmp, workers=2, **store)
        replicas.append(disk)
        objects = start_replica(
            "object", engine.url, redis.url, tmp, workers=2, PROXY_VARIANT_DISK_MB="0", **store
        )
        replicas.append(objects)
        registered_image(engine, disk.url)
        first = httpx.get(f"{disk.url}{PATH}", timeout=60)  # mints, derives, keeps, sends
        assert first.status_code == 200, first.text
        deadline = time.monotonic() + 60
        while asyncio.run(_indexed(seaweed.endpoint)) < 1:
            assert time.monotonic() < deadline, "the variant never reached the bucket"
            time.sleep(0.1)
        answer = httpx.get(f"{objects.url}{PATH}", timeout=60)
        assert answer.content == first.content, "the object replica served other bytes"
        ratios, disk_rps, object_rps, disk_p99, object_p99 = [], [], [], [], []
        for _ in range(ROUNDS):
            on_disk = wrk(f"{disk.url}{PATH}", SECONDS)
            in_store = wrk(f"{objects.url}{PATH}", SECONDS)
            ratios.append(in_store.rps / on_disk.rps)
            disk_rps.append(on_disk.rps)
            object_rps.append(in_store.rps)
            disk_p99.append(on_disk.p99_ms)
            object_p99.append(in_store.p99_ms)
        derived = httpx.get(f"{objects.url}/metrics", timeout=10).text
        assert "\ncutproxy_variants_derived_total 0.0" in derived, "the object replica derived"
        size = len(first.content) // 1024
        return [
            (
                f"store-mode hit over HTTP, 640x640 jpg ({size} KB), 2 workers, no memory tier: "
                "from the object store (SeaweedFS on loopback; disk tier off) vs from the "
                "local disk tier",
                f"{statistics.median(ratios):.2f} ({statistics.median(object_rps):,.0f} vs "
                f"{statistics.median(disk_rps):,.0f} req/s; p99 "
                f"{statistics.median(object_p99):.1f} vs {statistics.median(disk_p99):.1f} ms)",
                "(for reference: the disk tier stays in front of the store)",
            )
        ]
    finally:
        for replica in replicas:
            replica.stop()
        engine.server.stop()
        redis.stop()
        seaweed.stop()


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
