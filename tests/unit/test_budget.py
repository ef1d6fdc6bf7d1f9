from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import limits.aio.storage.memory
import pytest
from starlette.datastructures import Headers

from proxy.guards.budget import CostLedger, CreditBudget, batching_saving, estimate_credits
from proxy.guards.clients import (
    ClientLimiter,
    DiskClientLimiter,
    MissLimiter,
    client_address,
)
from proxy.setting_values import parse_networks
from proxy.settings import Settings, SettingsError
from proxy.stores.counters import DiskCounters, Window

HOUR_START = 1_700_002_800.0  # 23:00:00 UTC: a day boundary is one hour away
assert HOUR_START % 3600 == 0


class FakeClock:
    """A clock tests move by hand; also usable where a module calls ``time.time()``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskCounters]:
    disk = DiskCounters.open(tmp_path / "guards")
    yield disk
    disk.close()


# --- prices -------------------------------------------------------------------------------


def test_prices_follow_the_upstream_rules() -> None:
    small = {"max_resolution": 640 * 480}
    large = {"max_resolution": 2000 * 2000}
    assert estimate_credits([]) == 0
    assert estimate_credits([small]) == 0.5
    assert estimate_credits([large]) == 1.1
    assert estimate_credits([small, large, small]) == 1.6
    assert estimate_credits([{**small, "autocrop": True}]) == 1.0


def test_batching_saves_the_difference_to_separate_mints() -> None:
    variants = [{"max_resolution": 2_000_000}, {"max_resolution": 500_000}]
    assert batching_saving(variants) == pytest.approx((1.1 + 0.5) - (1.1 + 0.25))
    assert batching_saving(variants[:1]) == 0


# --- the credit budget --------------------------------------------------------------------


async def test_hourly_budget_refuses_then_resets_with_the_hour(store: DiskCounters) -> None:
    budget = CreditBudget(store, per_hour=2.5)
    now = HOUR_START + 10
    assert await budget.try_spend(1.1, now)
    assert await budget.try_spend(1.1, now + 60)
    assert not await budget.try_spend(1.1, now + 120)
    assert await budget.try_spend(0.25, now + 120)  # a cheaper mint still fits: 2.45
    assert await budget.retry_after(1.1, now + 120) == pytest.approx(3600 - 130)
    assert await budget.try_spend(1.1, HOUR_START + 3600)  # the next hour


async def test_daily_budget_spans_hours_and_neither_window_is_charged_on_refusal(
    store: DiskCounters,
) -> None:
    budget = CreditBudget(store, per_hour=2.0, per_day=3.0)
    day_start = HOUR_START - 23 * 3600
    assert await budget.try_spend(2.0, day_start + 100)
    assert await budget.try_spend(1.0, day_start + 3700)
    assert not await budget.try_spend(0.5, day_start + 7300)  # the day is spent
    left = await budget.remaining(day_start + 7300)
    assert left["hour"]["spent"] == 0 and left["day"]["spent"] == 3.0
    assert left["day"]["remaining"] == 0 and left["day"]["resets_in"] == 86400 - 7300
    assert await budget.retry_after(0.5, day_start + 7300) == 86400 - 7300
    assert await budget.try_spend(0.5, day_start + 86400)  # a new UTC day


async def test_refund_gives_credits_back_to_the_windows_they_came_from(store: DiskCounters) -> None:
    budget = CreditBudget(store, per_hour=1.0)
    assert await budget.try_spend(1.0, HOUR_START)
    assert not await budget.try_spend(0.5, HOUR_START + 1)
    await budget.refund(1.0, spent_at=HOUR_START)
    assert await budget.try_spend(0.5, HOUR_START + 2)
    assert (await budget.remaining(HOUR_START + 2))["hour"]["remaining"] == 0.5


async def test_no_limits_spend_freely_and_report_nothing(store: DiskCounters) -> None:
    budget = CreditBudget(store)
    assert not budget.limited
    assert all([await budget.try_spend(100.0, HOUR_START) for _ in range(3)])
    assert await budget.remaining(HOUR_START) == {}
    assert await budget.retry_after(1.0, HOUR_START) is None
    with pytest.raises(ValueError):
        CreditBudget(store, per_day=0)


async def test_concurrent_spends_never_overshoot(store: DiskCounters) -> None:
    budget = CreditBudget(store, per_hour=10.0)
    results = await asyncio.gather(*(budget.try_spend(1.0, HOUR_START) for _ in range(30)))
    assert results.count(True) == 10


def _spend_many(directory: str, count: int) -> int:
    async def run() -> int:
        disk = DiskCounters.open(directory)
        window = Window("shared:hour", 40.0, 3600)
        try:
            return sum([await disk.spend([window], 1.0) for _ in range(count)])
        finally:
            disk.close()

    return asyncio.run(run())


def test_worker_processes_share_one_budget(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        granted = list(pool.map(_spend_many, [str(tmp_path)] * 4, [25] * 4))
    assert sum(granted) == 40


# --- per-client miss limits ---------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(HOUR_START)
    # limits reads wall-clock time itself; its memory storage is driven by the same clock.
    monkeypatch.setattr(limits.aio.storage.memory, "time", fake)
    return fake


@pytest.fixture(params=["memory", "disk"])
def limiter_of(
    request: pytest.FixtureRequest, clock: FakeClock, store: DiskCounters
) -> Callable[[str], MissLimiter]:
    """Both miss limiters: limits' moving window in memory, and the one in the disk store."""
    if request.param == "memory":
        return lambda rate: ClientLimiter(rate, clock=clock)
    return lambda rate: DiskClientLimiter(rate, store, clock=clock)


async def test_a_client_over_its_miss_rate_is_told_how_long_to_wait(
    clock: FakeClock, limiter_of: Callable[[str], MissLimiter]
) -> None:
    limiter = limiter_of("3/minute")
    for _ in range(3):
        assert await limiter.hit("198.51.100.7") is None
        clock.now += 10
    wait = await limiter.hit("198.51.100.7")
    assert wait == pytest.approx(30)  # the first miss leaves the window at +60 s
    assert await limiter.hit("203.0.113.9") is None  # other clients are not affected
    clock.now += 29
    assert await limiter.hit("198.51.100.7") == pytest.approx(1)
    clock.now += 1.5  # waited as told (Retry-After rounds up)
    assert await limiter.hit("198.51.100.7") is None


def _miss_many(directory: str, count: int) -> int:
    async def run() -> int:
        disk = DiskCounters.open(directory)
        limiter = DiskClientLimiter("40/hour", disk)
        try:
            return sum([await limiter.hit("198.51.100.7") is None for _ in range(count)])
        finally:
            disk.close()

    return asyncio.run(run())


def test_worker_processes_share_one_miss_count_without_redis(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        allowed = list(pool.map(_miss_many, [str(tmp_path)] * 4, [25] * 4))
    assert sum(allowed) == 40  # not 4 x 25: every process counted into the same window


async def test_fixed_window_limits_reset_at_the_window_edge(clock: FakeClock) -> None:
    limiter = ClientLimiter("2/minute", strategy="fixed-window", clock=clock)
    assert await limiter.hit("a") is None and await limiter.hit("a") is None
    clock.now += 45
    assert await limiter.hit("a") == pytest.approx(15)
    clock.now += 15
    assert await limiter.hit("a") is None


def test_bad_rates_and_storages_are_refused() -> None:
    with pytest.raises(SettingsError, match="PROXY_CLIENT_MISS_RATE"):
        ClientLimiter("often")
    with pytest.raises(SettingsError, match="PROXY_CLIENT_MISS_RATE"):
        Settings.from_env({"PROXY_CLIENT_MISS_RATE": "1/second;60/minute"})
    with pytest.raises(ValueError):
        ClientLimiter("1/second", storage="memory")
    assert ClientLimiter("60 per minute").rate == "60 per 1 minute"


# --- the client's address -----------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


def test_an_untrusted_peer_cannot_spoof_its_address() -> None:
    spoof = {"X-Forwarded-For": "1.2.3.4", "Forwarded": "for=5.6.7.8"}
    assert client_address("198.51.100.7", spoof, PROXIES) == "198.51.100.7"
    assert client_address("198.51.100.7", spoof, ()) == "198.51.100.7"


def test_behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() -> None:
    # The client wrote "1.2.3.4"; the proxies appended what they saw.
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.7, 10.1.1.1"}
    assert client_address("10.0.0.2", headers, PROXIES) == "198.51.100.7"


def test_repeated_forwarding_headers_are_read_as_one_list() -> None:
    headers = Headers(
        raw=[
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-for", b"198.51.100.7"),
        ]
    )
    assert client_address("10.0.0.2", headers, PROXIES) == "198.51.100.7"


def test_forwarded_header_with_ports_and_ipv6() -> None:
    headers = {"Forwarded": 'for=1.2.3.4;proto=https, for="[2001:db8::17]:4711";by=10.0.0.2'}
    assert client_address("10.0.0.2", headers, PROXIES) == "2001:db8::17"
    headers = {"X-Forwarded-For": "198.51.100.7:5555"}
    assert client_address("fd00::1", headers, PROXIES) == "198.51.100.7"


def test_without_headers_or_with_only_proxies_the_peer_chain_is_used() -> None:
    assert client_address("10.0.0.2", {}, PROXIES) == "10.0.0.2"
    assert client_address("10.0.0.2", {"X-Forwarded-For": "10.9.9.9"}, PROXIES) == "10.9.9.9"
    # An unreadable hop: fall back to the last address a trusted proxy vouched for.
    headers = {"X-Forwarded-For": "unknown, 10.9.9.9"}
    assert client_address("10.0.0.2", headers, PROXIES) == "10.9.9.9"
    assert client_address("::ffff:198.51.100.7", {}, PROXIES) == "198.51.100.7"


def test_trusted_proxies_setting_is_validated() -> None:
    settings = Settings.from_env({"PROXY_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert parse_networks(settings.trusted_proxies) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(SettingsError, match="PROXY_TRUSTED_PROXIES"):
        Settings.from_env({"PROXY_TRUSTED_PROXIES": "10.0.0.0/40"})


# --- the ledger ---------------------------------------------------------------------------


async def test_the_ledger_totals_are_shared_by_every_worker(tmp_path: Path) -> None:
    first, second = DiskCounters.open(tmp_path), DiskCounters.open(tmp_path)
    try:
        await CostLedger(first).record(spent=1.1, saved_by_coalescing=1.1)
        await CostLedger(second).record(spent=0.25, saved_by_batching=0.85)
        assert await CostLedger(first).snapshot() == {
            "spent": 1.35,
            "saved_by_coalescing": 1.1,
            "saved_by_batching": 0.85,
            "possibly_spent": 0.0,
            "ambiguous_mints": 0,
        }
        with pytest.raises(ValueError):
            await CostLedger(first).record(spent=-1)
    finally:
        first.close()
        second.close()


def test_budget_settings_are_optional_and_positive() -> None:
    settings = Settings.from_env({"PROXY_BUDGET_CREDITS_PER_DAY": "250"})
    assert settings.budget_credits_per_day == 250 and settings.budget_credits_per_hour is None
    with pytest.raises(SettingsError, match="PROXY_BUDGET_CREDITS_PER_HOUR"):
        Settings.from_env({"PROXY_BUDGET_CREDITS_PER_HOUR": "-1"})
    with pytest.raises(SettingsError, match="PROXY_BATCH_WINDOW_MS"):
        Settings.from_env({"PROXY_BATCH_WINDOW_MS": "-5"})
