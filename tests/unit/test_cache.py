"""TTL arithmetic and the two tiers, with an injected clock (no sleeping)."""

from __future__ import annotations

from pathlib import Path

from proxy.stores.cache import (
    CachedOutput,
    DiskTier,
    MemoryTier,
    TwoTierCache,
    output_for,
    url_expiry,
)
from tests.clock import Clock


def test_lifetime_is_the_configured_one_minus_the_margin() -> None:
    out = output_for("https://x/a.jpg", now=1000.0, lifetime=7200, margin=300)
    assert out.expires_at == 1000 + 7200 - 300


def test_a_url_that_expires_sooner_wins() -> None:
    out = output_for("https://x/a.jpg?Expires=2000&Signature=s", 1000.0, 7200, 300)
    assert out.expires_at == 2000 - 300


def test_a_url_that_expires_later_does_not_extend_the_life() -> None:
    out = output_for("https://x/a.jpg?Expires=99999999", 1000.0, 7200, 300)
    assert out.expires_at == 1000 + 7200 - 300


def test_s3_and_gcs_signed_urls_are_understood() -> None:
    s3 = "https://b.s3.amazonaws.com/k?X-Amz-Date=20260101T000000Z&X-Amz-Expires=600&X-Amz-Signature=a"
    assert url_expiry(s3) == 1767225600 + 600
    gcs = "https://storage.googleapis.com/b/k?X-Goog-Date=20260101T000000Z&X-Goog-Expires=60"
    assert url_expiry(gcs) == 1767225600 + 60
    assert url_expiry("https://x/a.jpg?exp=1234") == 1234
    assert url_expiry("https://x/a.jpg?X-Amz-Expires=600") is None


def test_memory_tier_never_serves_an_expired_entry() -> None:
    clock = Clock()
    tier = MemoryTier(10, clock)
    tier.set("k", CachedOutput("https://x/a", clock.now + 60, clock.now))
    assert tier.get("k") is not None
    clock.now += 60
    assert tier.get("k") is None


def test_memory_tier_is_bounded() -> None:
    clock = Clock()
    tier = MemoryTier(2, clock)
    for i in range(5):
        tier.set(f"k{i}", CachedOutput(f"https://x/{i}", clock.now + 60, clock.now))
    assert sum(tier.get(f"k{i}") is not None for i in range(5)) == 2


async def test_disk_tier_survives_reopening_and_respects_expiry(tmp_path: Path) -> None:
    clock = Clock(now=__import__("time").time())
    first = DiskTier(tmp_path, 16, clock)
    await first.set("k", CachedOutput("https://x/a", clock.now + 600, clock.now))
    await first.close()
    second = DiskTier(tmp_path, 16, clock)
    assert (await second.get("k")) == CachedOutput("https://x/a", clock.now + 600, clock.now)
    clock.now += 601
    assert await second.get("k") is None
    await second.close()


async def test_two_tiers_promote_and_purge_by_prefix(tmp_path: Path) -> None:
    clock = Clock(now=__import__("time").time())
    shared = DiskTier(tmp_path, 16, clock)
    cache = TwoTierCache(MemoryTier(10, clock), shared)
    out = CachedOutput("https://x/a", clock.now + 600, clock.now)
    await shared.set("/img/a/1x1/ffffff.jpg#p", out)
    assert cache.peek("/img/a/1x1/ffffff.jpg#p") is None
    assert await cache.get("/img/a/1x1/ffffff.jpg#p") == (out, "shared")
    assert cache.peek("/img/a/1x1/ffffff.jpg#p") == out
    await cache.set("/img/ab/1x1/ffffff.jpg#p", out)
    assert await cache.delete_prefix("/img/a/") == 1
    assert cache.peek("/img/a/1x1/ffffff.jpg#p") is None
    assert cache.peek("/img/ab/1x1/ffffff.jpg#p") == out
    await cache.close()
