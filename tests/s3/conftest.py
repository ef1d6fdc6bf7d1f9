"""Fixtures: one real SeaweedFS S3 gateway for the whole session, and a fresh bucket per test."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from proxy.stores.objects import ObjectStore
from proxy.stores.objects_config import ObjectStoreConfig
from tests.components import require
from tests.s3.server import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    SeaweedServer,
    start_seaweed,
)

_buckets = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    require("weed")
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(seaweed: SeaweedServer) -> SeaweedServer:
    """The shared server, started again if a fault test left it down."""
    if not seaweed.running:
        seaweed.start()
    return seaweed


def config_for(
    server: SeaweedServer, bucket: str, prefix: str = "", **overrides: object
) -> ObjectStoreConfig:
    values: dict[str, object] = {
        "endpoint": server.endpoint,
        "region": REGION,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "timeout": 5.0,
        **overrides,
    }
    url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return ObjectStoreConfig.from_url(url, **values)  # type: ignore[arg-type]


def new_bucket() -> str:
    return f"test-{next(_buckets)}"


@pytest.fixture
async def store(s3: SeaweedServer) -> AsyncIterator[ObjectStore]:
    """A client on a bucket of its own (created here), under a prefix."""
    async with ObjectStore(config_for(s3, new_bucket(), "cutproxy")) as client:
        await client.ensure_bucket()
        yield client


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until ``condition`` holds (what background work does is awaited, not timed:
    the deadline only stops a test that would hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)
