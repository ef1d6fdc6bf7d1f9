"""The object-store issue's client choice: ``obstore`` against ``aiobotocore``, side by side
against one real SeaweedFS S3 gateway on loopback.

Per client: put and get of a 15 KB and a 2 MB object, 16 at a time (p50/p95 per operation
and throughput), the event loop's longest stall while 2 MB objects go through, the time to
import the library and build a client (a fresh interpreter each time), and the size installed
with the dependencies cutproxy does not already have. Rounds alternate the clients so a busy
machine slows both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.s3.server import ACCESS_KEY, REGION, SECRET_KEY, SeaweedServer, start_seaweed

BUCKET = "bench"
CONCURRENCY = 16
ROUNDS = 3
SIZES = {"15 KB": (15 * 1024, 320), "2 MB": (2 * 1024 * 1024, 48)}  # bytes, operations a round
CLIENTS = ("obstore", "aiobotocore")

Put = Callable[[str, bytes], Awaitable[None]]
Get = Callable[[str], Awaitable[bytes]]


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    operations: int = 0
    max_stall: float = 0.0

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds


@contextlib.asynccontextmanager
async def _obstore(endpoint: str) -> AsyncIterator[tuple[Put, Get]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    async def put(key: str, data: bytes) -> None:
        await obstore.put_async(store, key, data)

    async def get(key: str) -> bytes:
        result = await obstore.get_async(store, key)
        return bytes(await result.bytes_async())

    yield put, get


@contextlib.asynccontextmanager
async def _aiobotocore(endpoint: str) -> AsyncIterator[tuple[Put, Get]]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=2 * CONCURRENCY)
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=config,
    ) as client:

        async def put(key: str, data: bytes) -> None:
            await client.put_object(Bucket=BUCKET, Key=key, Body=data)

        async def get(key: str) -> bytes:
            response = await client.get_object(Bucket=BUCKET, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data

        yield put, get


_OPEN = {"obstore": _obstore, "aiobotocore": _aiobotocore}


async def _measure(operation: Callable[[int], Awaitable[object]], count: int) -> Sample:
    """``count`` operations, ``CONCURRENCY`` at a time, while a ticker watches the loop."""
    sample = Sample(operations=count)
    queue = iter(range(count))
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            sample.max_stall = max(sample.max_stall, time.perf_counter() - before - 0.001)

    async def worker() -> None:
        for i in queue:
            began = time.perf_counter()
            await operation(i)
            sample.latencies.append(time.perf_counter() - began)

    watch = asyncio.create_task(ticker())
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    sample.seconds = time.perf_counter() - began
    stop.set()
    await watch
    return sample


def _merge(samples: list[Sample]) -> Sample:
    return Sample(
        latencies=[x for s in samples for x in s.latencies],
        seconds=sum(s.seconds for s in samples),
        operations=sum(s.operations for s in samples),
        max_stall=max(s.max_stall for s in samples),
    )


async def _round(
    name: str, endpoint: str, results: dict[tuple[str, str, str], list[Sample]]
) -> None:
    async with _OPEN[name](endpoint) as (put, get):
        for label, (size, count) in SIZES.items():
            data = os.urandom(size)
            prefix = f"{name}/{label.replace(' ', '')}"

            async def put_one(i: int, data: bytes = data, prefix: str = prefix) -> None:
                await put(f"{prefix}/{i}", data)

            async def get_one(i: int, size: int = size, prefix: str = prefix) -> None:
                got = await get(f"{prefix}/{i}")
                assert len(got) == size

            await put_one(-1)  # one warm-up call opens a connection before timing
            results.setdefault((name, label, "put"), []).append(await _measure(put_one, count))
            results.setdefault((name, label, "get"), []).append(await _measure(get_one, count))


_STARTUP = {
    "obstore": """
import obstore
from obstore.store import S3Store
S3Store("b", endpoint="http://127.0.0.1:9", region="us-east-1", access_key_id="a",
        secret_access_key="s", virtual_hosted_style_request=False,
        client_options={"allow_http": True})
""",
    "aiobotocore": """
import asyncio
from aiobotocore.session import get_session
async def main():
    async with get_session().create_client("s3", endpoint_url="http://127.0.0.1:9",
            region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="s"):
        pass
asyncio.run(main())
""",
}


def _startup_seconds(name: str, runs: int = 5) -> float:
    """Median time for a fresh interpreter to import the library and build one S3 client."""
    code = (
        f"import time\n_t = time.perf_counter()\n{_STARTUP[name]}\nprint(time.perf_counter() - _t)"
    )
    times = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
        for _ in range(runs)
    ]
    return statistics.median(times)


def _closure(name: str) -> set[str]:
    """The distribution and everything it requires (no extras), by normalised name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = canonicalize_name(todo.pop())
        if dist in seen:
            continue
        seen.add(dist)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for text in importlib.metadata.requires(dist) or []:
                requirement = Requirement(text)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    todo.append(requirement.name)
    return seen


def _installed_mb(name: str) -> tuple[float, list[str]]:
    """MB on disk for ``name`` and the dependencies cutproxy's own would not bring."""
    ours = set().union(*(_closure(d) for d in _runtime_requirements()))
    extra = sorted(_closure(name) - ours)
    total = 0
    for dist in extra:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for file in importlib.metadata.distribution(dist).files or []:
                with contextlib.suppress(OSError):
                    total += os.stat(file.locate()).st_size
    return total / 1e6, extra


def _runtime_requirements() -> list[str]:
    from packaging.requirements import Requirement

    # What cutproxy needs at run time, less whichever candidate it has chosen.
    names = []
    for text in importlib.metadata.requires("cutproxy") or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return [n for n in names if n not in CLIENTS]


async def _compare(server: SeaweedServer) -> list[tuple[str, str, str]]:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as admin:
        await admin.create_bucket(Bucket=BUCKET)
    results: dict[tuple[str, str, str], list[Sample]] = {}
    for r in range(ROUNDS):
        for name in CLIENTS if r % 2 == 0 else reversed(CLIENTS):
            await _round(name, server.endpoint, results)
    merged = {key: _merge(samples) for key, samples in results.items()}

    rows: list[tuple[str, str, str]] = [
        ("SeaweedFS start (weed server -s3), until S3 can store", f"{server.started_in:.1f} s", "")
    ]
    for label, (size, _) in SIZES.items():
        for op in ("put", "get"):
            cells = []
            for name in CLIENTS:
                s = merged[(name, label, op)]
                mb_s = s.per_second * size / 1e6
                cells.append(
                    f"{name} {s.percentile(50):.1f}/{s.percentile(95):.1f} ms, "
                    f"{s.per_second:.0f}/s ({mb_s:.0f} MB/s)"
                )
            a, b = (merged[(n, label, op)].per_second for n in CLIENTS)
            rows.append(
                (
                    f"{op} {label}, {CONCURRENCY} at a time: p50/p95, throughput",
                    " · ".join(cells),
                    f"throughput obstore/aiobotocore = {a / b:.2f}",
                )
            )
    stalls = [
        f"{n} {max(merged[(n, '2 MB', op)].max_stall for op in ('put', 'get')) * 1000:.1f} ms"
        for n in CLIENTS
    ]
    rows.append(("longest event-loop stall during 2 MB puts/gets", " · ".join(stalls), "small"))
    startups = [f"{n} {_startup_seconds(n) * 1000:.0f} ms" for n in CLIENTS]
    rows.append(("import + build one S3 client (fresh interpreter)", " · ".join(startups), ""))
    sizes = []
    for name in CLIENTS:
        mb, extra = _installed_mb(name)
        sizes.append(f"{name} {mb:.0f} MB ({len(extra)} packages)")
    rows.append(("installed, with dependencies cutproxy lacks", " · ".join(sizes), ""))
    return rows


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_seaweed(Path(tmp))
        try:
            return await _compare(server)
        finally:
            server.stop()
