"""The variant tiers: memory bounded by bytes, disk bounded by size with LRU, both together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.stores.derived import (
    ENTRY_OVERHEAD,
    DiskBytes,
    MemoryBytes,
    StoredVariant,
    TieredVariants,
    Usage,
    etag_of,
    prefix_end,
)
from tests.clock import Clock


def variant(size: int, fill: int = 1) -> StoredVariant:
    return StoredVariant.of(bytes([fill]) * size, "image/webp", 64, 48, 1_700_000_000.0)


async def open_disk(path: Path, max_bytes: int, clock: Clock, **options: object) -> DiskBytes:
    return await DiskBytes.open(path, max_bytes, clock=clock, **options)


# --- the value -------------------------------------------------------------------------------


def test_etag_is_strong_and_follows_the_bytes() -> None:
    a, b = variant(10, 1), variant(10, 2)
    assert a.etag.startswith('"') and a.etag.endswith('"') and not a.etag.startswith("W/")
    assert a.etag == variant(10, 1).etag != b.etag
    assert a.nbytes == 10


# --- memory --------------------------------------------------------------------------------


def test_memory_is_bounded_by_total_bytes_not_entries() -> None:
    unit = 1000 + ENTRY_OVERHEAD
    memory = MemoryBytes(max_bytes=4 * unit)
    for name in "abcd":
        memory.keep(name, variant(1000))
    assert memory.usage() == Usage(4, 4 * unit)
    assert memory.peek("a") is not None  # a is now the most recently used
    # One value the size of two small ones pushes out the two least recently used.
    memory.keep("big", variant(2 * 1000 + ENTRY_OVERHEAD))
    assert sorted(k for k in "abcd" if k in memory) == ["a", "d"]
    assert "big" in memory
    assert memory.usage().nbytes <= memory.max_bytes


def test_memory_does_not_keep_a_value_larger_than_the_limit() -> None:
    memory = MemoryBytes(max_bytes=5000)
    memory.keep("k", variant(100))
    memory.keep("k", variant(5000))  # a newer version too big to keep: the old one goes too
    assert memory.peek("k") is None
    assert memory.usage() == Usage(0, 0)


def test_memory_deletes_by_prefix() -> None:
    memory = MemoryBytes(max_bytes=10**6)
    for key in ("/img/a/1#p", "/img/a/2#p", "/img/ab/1#p", "/img/b/1#p"):
        memory.keep(key, variant(10))
    assert memory.drop_prefix("/img/a/") == 2
    assert sorted(
        k for k in ("/img/a/1#p", "/img/a/2#p", "/img/ab/1#p", "/img/b/1#p") if k in memory
    ) == [
        "/img/ab/1#p",
        "/img/b/1#p",
    ]


# --- disk ----------------------------------------------------------------------------------


async def test_disk_round_trip_keeps_every_field(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 10**6, clock)
    stored = StoredVariant.of(b"\x89PNG-ish", "image/png", 640, 480, 1_699_999_999.5)
    await disk.put("/img/a/640x480.png#p~v1", stored)
    assert await disk.get("/img/a/640x480.png#p~v1") == stored
    assert await disk.get("/img/a/other") is None
    await disk.close()


async def test_disk_size_limit_evicts_least_recently_used(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 3000, clock, touch_after=0.0)
    for key in ("a", "b", "c"):
        clock.advance(1)
        await disk.put(key, variant(1000))
    clock.advance(1)
    assert await disk.get("a") is not None  # a read makes a the most recently used
    clock.advance(1)
    await disk.put("d", variant(1000))
    assert await disk.keys() == ["a", "c", "d"]  # b, the least recently used, went
    clock.advance(1)
    await disk.put("e", variant(2000))
    assert await disk.keys() == ["d", "e"]
    assert await disk.usage() == Usage(2, 3000)
    files = [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) == 3000  # evicted files are gone, not orphaned
    await disk.close()


async def test_disk_reads_bump_last_use_only_after_touch_after(
    tmp_path: Path, clock: Clock
) -> None:
    disk = await open_disk(tmp_path, 2000, clock, touch_after=60.0)
    await disk.put("a", variant(1000))
    clock.advance(1)
    await disk.put("b", variant(1000))
    clock.advance(30)
    assert await disk.get("a") is not None  # 31 s since a was used: not worth a write yet
    await disk.put("c", variant(1000))
    assert await disk.keys() == ["b", "c"]
    clock.advance(61)
    assert await disk.get("b") is not None  # a minute later a read does count
    clock.advance(1)
    await disk.put("d", variant(1000))
    assert await disk.keys() == ["b", "d"]
    await disk.close()


async def test_disk_refuses_a_value_over_the_whole_limit(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 1000, clock)
    await disk.put("k", variant(500))
    await disk.put("k", variant(1001))
    assert await disk.get("k") is None  # neither kept nor left stale
    assert await disk.usage() == Usage(0, 0)
    await disk.close()


async def test_disk_replacing_a_key_keeps_one_file(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 10**6, clock)
    await disk.put("k", variant(100, 1))
    await disk.put("k", variant(200, 2))
    assert (await disk.get("k")) == variant(200, 2)
    assert await disk.usage() == Usage(1, 200)
    assert len([p for p in (tmp_path / "files").rglob("*") if p.is_file()]) == 1
    await disk.close()


async def test_disk_deletes_by_prefix(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 10**6, clock)
    keys = ["/img/a/1#p", "/img/a/2#p", "/img/a\U0010ffff#p", "/img/ab/1#p", "/img/b/1#p", "/img/a"]
    for key in keys:
        await disk.put(key, variant(10))
    assert await disk.delete_prefix("/img/a/") == 2
    assert await disk.keys() == sorted(
        ["/img/a\U0010ffff#p", "/img/ab/1#p", "/img/b/1#p", "/img/a"]
    )
    assert await disk.delete_prefix("/img/a") == 3
    assert await disk.keys() == ["/img/b/1#p"]
    assert await disk.usage() == Usage(1, 10)
    assert len([p for p in (tmp_path / "files").rglob("*") if p.is_file()]) == 1
    await disk.close()


@given(st.text(max_size=4), st.lists(st.text(max_size=6), max_size=20))
def test_prefix_range_is_exactly_startswith(prefix: str, keys: list[str]) -> None:
    end = prefix_end(prefix)
    for key in keys + [prefix + k for k in keys]:
        # SQLite orders TEXT by its UTF-8 bytes.
        inside = key.encode() >= prefix.encode() and (end is None or key.encode() < end.encode())
        assert inside == key.startswith(prefix), (prefix, key, end)


async def test_a_damaged_file_is_a_miss_never_served(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 10**6, clock)
    await disk.put("whole", variant(1000, 1))
    await disk.put("cut", variant(1000, 2))
    await disk.put("flipped", variant(1000, 3))
    files = {p.read_bytes()[0]: p for p in (tmp_path / "files").rglob("*") if p.is_file()}
    files[2].write_bytes(bytes([2]) * 400)  # truncated behind the store's back
    files[3].write_bytes(bytes([4]) * 1000)  # same size, other bytes
    assert await disk.check() == ["cut", "flipped"]
    assert await disk.get("cut") is None
    assert await disk.get("flipped") is None
    assert await disk.get("whole") == variant(1000, 1)
    assert await disk.keys() == ["whole"]  # a damaged entry is dropped at once
    await disk.close()


async def test_sweep_removes_only_old_orphans(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 10**6, clock)
    await disk.put("k", variant(10))
    orphan = tmp_path / "files" / "zz" / "zz0123"
    orphan.parent.mkdir()
    orphan.write_bytes(b"left by a crash between rename and commit")
    temp = tmp_path / "tmp" / "abc.tmp"
    temp.write_bytes(b"left by a crash mid-write")
    assert await disk.sweep(grace=600) == 0  # could be a live writer's: left alone
    assert await disk.sweep(grace=0) == 2
    assert not orphan.exists() and not temp.exists()
    assert await disk.get("k") == variant(10)
    await disk.close()


def _worker(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.store.worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


async def test_two_processes_share_one_directory(tmp_path: Path, clock: Clock) -> None:
    store = tmp_path / "store"
    disk = await open_disk(store, 10**6, clock)
    mine = variant(30_000, 7)
    await disk.put("/img/a/from-parent#p", mine)
    # Another process finds what this one put...
    assert _worker("get", str(store), "1000000", "/img/a/from-parent#p") == mine.etag
    # ...and this one finds what the other put, and both agree on the total.
    theirs = tmp_path / "theirs.bin"
    theirs.write_bytes(b"x" * 20_000)
    _worker("put", str(store), "1000000", "/img/b/from-child#p", str(theirs))
    found = await disk.get("/img/b/from-child#p")
    assert found is not None and found.data == theirs.read_bytes()
    assert found.etag == etag_of(theirs.read_bytes())
    assert await disk.usage() == Usage(2, 50_000)
    # A delete here is seen there.
    assert await disk.delete_prefix("/img/a/") == 1
    assert _worker("get", str(store), "1000000", "/img/a/from-parent#p") == "miss"
    await disk.close()


# --- tiers ---------------------------------------------------------------------------------


async def test_a_disk_hit_is_promoted_into_memory(tmp_path: Path, clock: Clock) -> None:
    disk = await open_disk(tmp_path, 10**6, clock)
    await TieredVariants(MemoryBytes(10**6), disk).put("k", variant(100))
    # Another worker: its own memory, the same disk.
    tiers = TieredVariants(MemoryBytes(10**6), disk)
    assert tiers.peek("k") is None
    hit = await tiers.find("k")
    assert hit is not None and hit.tier == "disk" and hit.variant == variant(100)
    assert tiers.peek("k") == variant(100)
    hit = await tiers.find("k")
    assert hit is not None and hit.tier == "memory"
    await tiers.close()


async def test_a_third_tier_fills_the_tiers_above_it(tmp_path: Path, clock: Clock) -> None:
    near = await open_disk(tmp_path / "near", 10**6, clock)
    far = await open_disk(tmp_path / "far", 10**6, clock)
    far.name = "far"
    await far.put("k", variant(100))
    tiers = TieredVariants(MemoryBytes(10**6), near, far)
    hit = await tiers.find("k")
    assert hit is not None and hit.tier == "far"
    assert await near.get("k") == variant(100)
    assert tiers.peek("k") == variant(100)
    assert await tiers.delete_prefix("k") == 3  # one in each tier
    assert await tiers.find("k") is None
    await tiers.close()


async def test_a_failing_lower_tier_is_a_miss_not_an_error(tmp_path: Path, clock: Clock) -> None:
    broken = await open_disk(tmp_path / "broken", 10**6, clock)
    await broken.close()  # every call now raises
    good = await open_disk(tmp_path / "good", 10**6, clock)
    await good.put("k", variant(100))
    tiers = TieredVariants(MemoryBytes(10**6), broken, good)
    hit = await tiers.find("k")
    assert hit is not None and hit.tier == "disk" and hit.variant == variant(100)
    await tiers.put("j", variant(50))
    assert tiers.failures == 3  # the get, the promotion, the put
    assert await good.get("j") == variant(50)
    with pytest.raises(RuntimeError):
        await tiers.delete_prefix("k")  # never quietly: the image's variants must go
    await good.close()
