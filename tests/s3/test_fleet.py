"""Issue 16's Done-when over real servers: store-mode replicas sharing one Redis and one bucket.

Each replica is a `cutproxy serve` (one worker, a data directory of its own) with
``PROXY_MODE=store`` and ``PROXY_STORE_*`` naming a bucket of the session's SeaweedFS; they
mint at one standalone engine, whose token count (``/_engine/stats``) is what was paid. What
each replica did is read from its ``/metrics``; what the fleet kept is listed in the bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from proxy.stores.objects import ObjectStore
from proxy.stores.objects_config import ObjectStoreConfig
from tests.integration.conftest import (
    ADMIN,
    Engine,
    product_png,
    register,
    start_engine,
)
from tests.redis.replicas import start_replica
from tests.redis.server import RedisServer, start_redis
from tests.s3.conftest import new_bucket
from tests.s3.server import ACCESS_KEY, PUBLIC_BUCKET, REGION, SECRET_KEY, SeaweedServer
from tests.servers import Server, cutproxy
from tests.store_mode.conftest import served_image

pytestmark = pytest.mark.slow

# 20 variants of one image: 5 frames (pad, the store-mode default: exactly w×h) × 4 formats
SIZES = [(200, 200), (320, 240), (400, 300), (240, 320), (480, 480)]
LOOKS = [("ffffff", "jpg"), ("transparent", "png"), ("000000", "webp"), ("transparent", "avif")]


def variant_paths(image_id: str, sizes: Sequence[tuple[int, int]] = SIZES) -> list[str]:
    return [f"/img/{image_id}/{w}x{h}/{bg}.{ext}" for w, h in sizes for bg, ext in LOOKS]


def frame(path: str) -> tuple[int, int]:
    w, h = path.split("/")[3].split("x")
    return int(w), int(h)


@dataclass
class Fleet:
    engine: Engine
    redis: RedisServer
    s3: SeaweedServer
    bucket: str
    directory: Path
    replicas: dict[str, Server] = field(default_factory=dict)

    def start(self, name: str, bucket: str | None = None, **extra: str) -> Server:
        replica = start_replica(
            name,
            self.engine.url,
            self.redis.url,
            self.directory,
            PROXY_MODE="store",
            PROXY_STORE_URL=f"s3://{bucket or self.bucket}/fleet",
            PROXY_STORE_ENDPOINT=self.s3.endpoint,
            PROXY_STORE_REGION=REGION,
            PROXY_STORE_ACCESS_KEY=ACCESS_KEY,
            PROXY_STORE_SECRET_KEY=SECRET_KEY,
            PROXY_STORE_TIMEOUT="2",
            # 500 connections opened at once on a shared 2-core machine hold a replica's
            # event loop for longer than the default 0.5 s a Redis call may take
            PROXY_REDIS_TIMEOUT="5",
            **extra,
        )
        self.replicas[name] = replica
        return replica

    def url(self, name: str) -> str:
        return self.replicas[name].url

    def new_image(self, image_id: str, fill: tuple[int, int, int]) -> None:
        """Registered by an upload made straight at the engine: no master yet."""
        unique = self.engine.upload(product_png(fill=fill))
        register(self.url("a"), image_id, unique, (800, 600))

    def stop(self) -> None:
        for replica in self.replicas.values():
            replica.stop()


@pytest.fixture(scope="module")
def fleet(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Replicas a and b on a new bucket (created by them), one Redis, one engine."""
    if not seaweed.running:
        seaweed.start()
    directory = tmp_path_factory.mktemp("fleet")
    engine = start_engine(directory / "engine")
    redis = start_redis(directory / "redis.log")
    group = Fleet(engine, redis, seaweed, new_bucket(), directory)
    try:
        group.start("a")
        group.start("b")
        yield group
    finally:
        group.stop()
        redis.stop()
        engine.server.stop()
        if not seaweed.running:
            seaweed.start()


async def _spread(
    urls: Sequence[str], paths: Sequence[str], n: int
) -> list[tuple[str, httpx.Response]]:
    """``n`` concurrent GETs, request i for ``paths[i % len]`` at ``urls[i % len]``."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(i: int) -> tuple[str, httpx.Response]:
            path = paths[i % len(paths)]
            return path, await client.get(f"{urls[(i // len(paths)) % len(urls)]}{path}")

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def spread(urls: Sequence[str], paths: Sequence[str], n: int) -> list[tuple[str, httpx.Response]]:
    return asyncio.run(_spread(urls, paths, n))


def check_served(answers: Sequence[tuple[str, httpx.Response]]) -> dict[str, str]:
    """Every answer a whole image of its format and exact frame; the bytes' hash per path
    (one per path: every replica serves the same bytes)."""
    hashes: dict[str, set[str]] = {}
    for path, answer in answers:
        image = served_image(answer, path.rsplit(".", 1)[1])
        assert image.size == frame(path), (path, image.size)
        hashes.setdefault(path, set()).add(hashlib.sha256(answer.content).hexdigest())
    assert all(len(found) == 1 for found in hashes.values()), hashes
    return {path: found.pop() for path, found in hashes.items()}


def metric(base: str, name: str, labels: str = "") -> float:
    """A counter's value in a replica's /metrics (0 when not exported yet)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def bucket(fleet: Fleet, name: str | None = None) -> ObjectStore:
    """A client of this test's own on the fleet's bucket (or ``name``) and prefix."""
    config = ObjectStoreConfig.from_url(
        f"s3://{name or fleet.bucket}/fleet",
        endpoint=fleet.s3.endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    return ObjectStore(config)


def bucket_keys(fleet: Fleet, folder: str, name: str | None = None) -> list[str]:
    """The keys under ``fleet/<folder>`` in the fleet's bucket (or ``name``)."""

    async def keys() -> list[str]:
        async with bucket(fleet, name) as store:
            return [key async for key in store.list(folder)]

    return asyncio.run(keys())


def wait_until(condition: object, timeout: float = 60.0) -> None:
    """Poll (background writes are awaited, not timed: the deadline only stops a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.1)


def indexed(fleet: Fleet, image_id: str) -> int:
    """Variants of the image whose index object is in the bucket."""
    return len(bucket_keys(fleet, f"variants/{image_id}/keys"))


def test_two_replicas_mint_one_master_and_a_third_finds_every_variant(fleet: Fleet) -> None:
    fleet.new_image("sneaker", (20, 90, 200))
    paths = variant_paths("sneaker")
    before = fleet.engine.minted()

    answers = spread([fleet.url("a"), fleet.url("b")], paths, 500)
    hashes = check_served(answers)
    assert len(answers) == 500 and len(hashes) == 20
    assert fleet.engine.minted() - before == 1  # one master for the fleet
    assert bucket_keys(fleet, "masters/sneaker") != []

    # Derived variants go to the bucket in the background; once all 20 are there a new
    # replica finds them instead of deriving them (and mints nothing).
    wait_until(lambda: indexed(fleet, "sneaker") == 20)
    third = fleet.start("c")
    late = spread([third.url], paths, 20)
    assert check_served(late) == hashes
    assert fleet.engine.minted() - before == 1
    assert metric(third.url, "cutproxy_variants_derived_total") == 0
    assert metric(third.url, "cutproxy_cache_results_total", 'tier="object"') == 20


def test_a_store_outage_keeps_local_hits_and_answers_503_for_the_rest(fleet: Fleet) -> None:
    a, b = fleet.url("a"), fleet.url("b")
    fleet.new_image("kept", (200, 30, 40))
    warm = variant_paths("kept", SIZES[:2])
    hashes = check_served(spread([a, b], warm, 2 * len(warm)))  # on both, in memory and disk
    wait_until(lambda: indexed(fleet, "kept") == len(warm))
    fleet.new_image("unmastered", (30, 160, 60))  # registered (Redis), no master anywhere
    derived_meanwhile = variant_paths("kept", SIZES[2:3])
    before = fleet.engine.minted()

    fleet.s3.stop()
    try:
        began = time.monotonic()
        rounds = 0
        while time.monotonic() - began < 10:  # traffic through ~10 s of outage
            rounds += 1
            served = spread([a, b], warm + derived_meanwhile, 2 * (len(warm) + 4))
            now = check_served(served)  # hits: the same bytes; new frames: derived
            assert {p: now[p] for p in warm} == hashes
            for _path, answer in spread([a, b], variant_paths("unmastered")[:4], 8):
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/json"
                assert answer.json()["error"] in ("object_store_unavailable", "master_unsent")
                assert int(answer.headers["retry-after"]) >= 1
                assert answer.headers["cache-control"] == "no-store"
            time.sleep(0.5)
        assert rounds >= 2
        assert fleet.engine.minted() == before  # nothing minted while the store was away
    finally:
        fleet.s3.start()

    # Back without a restart: the image the outage held up gets its one master, and the
    # variants derived meanwhile reach the bucket.
    def serves_unmastered() -> bool:
        return httpx.get(f"{a}{variant_paths('unmastered')[0]}", timeout=30).status_code == 200

    wait_until(serves_unmastered)
    check_served(spread([a, b], variant_paths("unmastered"), 40))
    assert fleet.engine.minted() - before == 1
    wait_until(lambda: indexed(fleet, "kept") == len(warm) + len(derived_meanwhile), 90)
    assert len(bucket_keys(fleet, "masters/unmastered")) == 1


def test_deleting_or_replacing_an_image_removes_its_objects(fleet: Fleet) -> None:
    a, b = fleet.url("a"), fleet.url("b")
    fleet.new_image("gone", (90, 90, 90))
    fleet.new_image("changed", (10, 120, 220))
    for image_id in ("gone", "changed"):
        check_served(spread([a], variant_paths(image_id, SIZES[:1]), 8))  # one writer
        wait_until(lambda image_id=image_id: indexed(fleet, image_id) == len(LOOKS))
    old_master = bucket_keys(fleet, "masters/changed")
    assert len(old_master) == 1

    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.delete(f"{b}/images/gone", headers=auth, timeout=30).status_code == 200
    assert bucket_keys(fleet, "masters/gone") == bucket_keys(fleet, "variants/gone") == []

    # replaced (another upload under the same id): the old master and variants go, the next
    # request mints the new version's master
    fleet.new_image("changed", (230, 120, 10))
    assert bucket_keys(fleet, "masters/changed") == bucket_keys(fleet, "variants/changed") == []
    check_served(spread([a, b], variant_paths("changed", SIZES[:1]), 8))
    new_master = bucket_keys(fleet, "masters/changed")
    assert len(new_master) == 1 and new_master != old_master


def test_orphans_are_reported_and_cleaned_by_the_cli(fleet: Fleet) -> None:
    fleet.new_image("owned", (60, 60, 160))
    check_served(spread([fleet.url("a")], variant_paths("owned", SIZES[:1]), 4))

    async def leave_orphans() -> None:  # what a delete during an outage leaves behind
        async with bucket(fleet) as store:
            await store.put("masters/stray/0ld-medium.png", b"a master", "image/png")
            await store.put("variants/stray/keys/0.json", b"{}", "application/json")

    asyncio.run(leave_orphans())
    env = {"CUTPROXY_URL": fleet.url("b"), "PROXY_ADMIN_TOKEN": ADMIN}

    def store_orphans(*flags: str) -> str:
        done = subprocess.run(
            cutproxy("store", "orphans", "--grace", "0", *flags),
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    report = store_orphans()
    assert "1 orphan image(s) found" in report and "stray" in report and "owned" not in report
    assert bucket_keys(fleet, "masters/stray") != []  # a report removes nothing
    assert "1 orphan image(s) removed" in store_orphans("--clean")
    assert bucket_keys(fleet, "masters/stray") == bucket_keys(fleet, "variants/stray") == []
    assert bucket_keys(fleet, "masters/owned") != []

    # the default grace (an hour) protects objects just written, like an upload's master
    asyncio.run(leave_orphans())
    young = httpx.get(
        f"{fleet.url('a')}/admin/store/orphans",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert young.status_code == 200 and young.json() == {"grace_seconds": 3600.0, "orphans": []}
    bad = httpx.get(
        f"{fleet.url('a')}/admin/store/orphans?grace=-1",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grace"
    assert httpx.delete(f"{fleet.url('a')}/admin/store/orphans", timeout=30).status_code == 401


def test_a_store_that_refuses_the_keys_stops_the_start_naming_the_settings(
    s3: SeaweedServer, tmp_path: Path
) -> None:
    wrong = "not-the-secret-key-0123456789abcdef"
    env = {
        **os.environ,
        "PROXY_MODE": "store",
        "PROXY_DATA_DIR": str(tmp_path / "data"),
        "PROXY_STORE_URL": f"s3://{new_bucket()}",
        "PROXY_STORE_ENDPOINT": s3.endpoint,
        "PROXY_STORE_ACCESS_KEY": ACCESS_KEY,
        "PROXY_STORE_SECRET_KEY": wrong,
    }
    done = subprocess.run(
        cutproxy("serve", "--port", "0"), env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "PROXY_STORE_SECRET_KEY" in output and "Application startup failed" in output
    assert wrong not in output and ACCESS_KEY not in output


def test_a_public_store_url_answers_302_to_the_durable_object(fleet: Fleet) -> None:
    base = f"{fleet.s3.endpoint}/{PUBLIC_BUCKET}/fleet"
    public = fleet.start("public", bucket=PUBLIC_BUCKET, PROXY_STORE_PUBLIC_URL=base).url
    fleet.new_image("durable", (150, 40, 90))
    path = "/img/durable/320x240/ffffff.jpg"
    first = httpx.get(f"{public}{path}", timeout=60)
    served_image(first, "jpg")  # derived now, not in the store yet: the bytes

    wait_until(lambda: len(bucket_keys(fleet, "variants/durable/keys", PUBLIC_BUCKET)) == 1)
    moved = httpx.get(f"{public}{path}", timeout=30)
    assert moved.status_code == 302 and moved.content == b""
    location = moved.headers["location"]
    digest = hashlib.sha256(first.content).hexdigest()
    assert location == f"{base}/variants/durable/{digest}.jpg"  # content-addressed
    assert "max-age=300" in moved.headers["cache-control"]
    assert moved.headers["vary"] == "Accept" and "durable" in moved.headers["surrogate-key"]

    fetched = httpx.get(location, timeout=30)  # anyone may: no credentials
    assert fetched.status_code == 200 and fetched.content == first.content
    assert fetched.headers["content-type"] == "image/jpeg"
    about = httpx.get(f"{public}{path}", headers={"Accept": "application/json"}, timeout=30)
    assert about.status_code == 200 and about.json()["url"] == location

    # only that bucket is public: the fleet's own objects need the keys
    async def keep_private() -> None:
        async with bucket(fleet) as store:
            await store.put("private/kept.jpg", first.content, "image/jpeg")

    asyncio.run(keep_private())
    private = f"{fleet.s3.endpoint}/{fleet.bucket}/fleet/private/kept.jpg"
    assert httpx.get(private, timeout=30).status_code == 403
