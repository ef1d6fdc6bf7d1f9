"""Leases and locks between processes: renewed while held, taken over from a dead holder."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from proxy.errors import LeaseLostError
from proxy.stores.leases import DiskLease, holder_gone, holder_token
from proxy.variants.coalesce import KeyedLock, lead_or_follow
from tests.lease_holder import lease_holder

KEY = "lock:bytes:0123abcd"


async def test_a_lease_whose_holder_was_killed_is_taken_over_at_once(tmp_path: Path) -> None:
    lease = DiskLease(tmp_path / "leases")
    try:
        with lease_holder("disk", str(tmp_path / "leases"), KEY) as holder:
            assert f":{holder.proc.pid}:" in holder.token  # the lease names its holder
            assert await lease.acquire(KEY, 600) is None, "a live holder keeps its lease"
            holder.kill()  # mid-work, no release: the lease would live 600 s more
            taken = await lease.acquire(KEY, 600)
            assert taken is not None and f":{os.getpid()}:" in taken
            holder.reap()
            assert await lease.acquire(KEY, 600) is None, "and now it is this process's"
            assert await lease.extend(KEY, taken, 600)
    finally:
        await lease.close()


def test_only_a_holder_on_this_host_can_be_found_dead() -> None:
    assert not holder_gone("another-host:4242:0123456789abcdef")  # waits for its TTL
    assert not holder_gone("0123456789abcdef")  # a token of another shape
    assert not holder_gone(holder_token())  # this very process


async def test_a_lock_held_past_its_ttl_keeps_another_worker_out(tmp_path: Path) -> None:
    # Two workers of one host: their own in-process locks, one lease directory.
    first = KeyedLock(DiskLease(tmp_path / "leases"), ttl=0.3)
    second = KeyedLock(DiskLease(tmp_path / "leases"), ttl=0.3, wait=30)
    events: list[str] = []
    inside = asyncio.Event()

    async def long_upload() -> None:
        async with first.held("bytes:abc"):
            events.append("first in")
            inside.set()
            await asyncio.sleep(1.2)  # four TTLs: only renewal keeps the lock
            events.append("first out")

    async def same_bytes_again() -> None:
        await inside.wait()
        async with second.held("bytes:abc"):
            events.append("second in")

    await asyncio.wait_for(asyncio.gather(long_upload(), same_bytes_again()), 30)
    assert events == ["first in", "first out", "second in"]


async def test_a_lock_lost_to_another_worker_stops_the_work(tmp_path: Path) -> None:
    lock = KeyedLock(DiskLease(tmp_path / "leases"), ttl=0.3)
    other = DiskLease(tmp_path / "leases")
    finished = False
    taken: str | None = None

    async def change() -> None:
        nonlocal finished, taken
        async with lock.held("image:mug"):
            # This worker stalls past the TTL (its event loop blocked), and another takes over.
            time.sleep(0.5)  # noqa: ASYNC251
            taken = await other.acquire("lock:image:mug", 60)
            await asyncio.sleep(10)
            finished = True

    with pytest.raises(LeaseLostError):
        await asyncio.wait_for(change(), 30)
    assert not finished, "the work stopped instead of running on unguarded"
    assert taken is not None and await other.extend("lock:image:mug", taken, 60), (
        "the other worker keeps its lock"
    )


class _FailingRenewals(DiskLease):
    """A lease store whose renewals fail with an error that is not the proxy's own."""

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        raise OSError("disk I/O error")


async def test_a_failing_heartbeat_never_fails_a_finished_mint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lease = _FailingRenewals(tmp_path / "leases")

    async def lead() -> str:
        await asyncio.sleep(0.3)  # several heartbeats, each failing
        return "minted"

    async def nothing_yet() -> str | None:
        return None

    with caplog.at_level(logging.WARNING, logger="cutproxy.coalesce"):
        result = await lead_or_follow(
            lease, "v", ttl=0.15, wait=5, lead=lead, check=nothing_yet, poll=0.01
        )
    assert result == "minted"
    assert "could not extend the lease on lease:v" in caplog.text
    assert "disk I/O error" in caplog.text
    await lease.close()
