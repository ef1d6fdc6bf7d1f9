"""A client looping over random sizes in store mode: the ladder and the per-client derive
rate bound what it makes the proxy derive, and other clients' hits are still served."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Engine, product_png
from tests.store_mode.conftest import AUTH, Stack, served_image, store_stack, upload

pytestmark = pytest.mark.slow

# 4 widths x 2 ratios: 8 rungs (160x160 ... 640x640, 160x120 ... 640x480)
LADDER = {
    "PROXY_LADDER_WIDTHS": "160,320,480,640",
    "PROXY_LADDER_RATIOS": "1:1,4:3",
    "PROXY_TRUSTED_PROXIES": "127.0.0.1/32",  # X-Forwarded-For names the client
}
RATE = 5  # derivations per client per minute
SHOPPER = {"X-Forwarded-For": "198.51.100.2"}
SCRAPERS = ({"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"})
SHOPPER_PATHS = ("/img/loop/320x320/ffffff.png", "/img/loop/640x480/ffffff.png")


def derivations(stack: Stack) -> tuple[float, float]:
    """Variants derived so far: the metric (summed over workers) and /admin/costs' count."""
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    metric = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cutproxy_variants_derived_total"
    )
    costs = httpx.get(f"{stack.url}/admin/costs", headers=AUTH, timeout=10).json()
    return metric, float(costs["variants_derived"])


RUNG_SIZES = [f"{w}x{w}" for w in (160, 320, 480, 640)] + [
    f"{w}x{w * 3 // 4}" for w in (160, 320, 480, 640)
]


def random_sizes(seed: int, count: int) -> list[str]:
    """``count`` random sizes up to 640x640, every rung among them (so all 8 are wanted)."""
    rng = random.Random(seed)
    sizes = [f"{rng.randint(40, 640)}x{rng.randint(40, 640)}" for _ in range(count)]
    sizes += RUNG_SIZES
    rng.shuffle(sizes)
    return sizes


def loop(client: httpx.Client, client_headers: dict[str, str], sizes: list[str]) -> Counter[int]:
    """Ask each size (following a snap's 308 once): how many answers had each status."""
    statuses: Counter[int] = Counter()
    for size in sizes:
        answer = client.get(f"/img/loop/{size}/ffffff.png", headers=client_headers)
        if answer.status_code == 308:
            target = urlsplit(answer.headers["location"]).path
            answer = client.get(target, headers=client_headers)
        statuses[answer.status_code] += 1
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) >= 1
            assert set(answer.json()) >= {"error", "message"}
            assert answer.headers["cache-control"] == "no-store"
        elif answer.status_code == 200:
            served_image(answer, "png")
    return statuses


def test_random_sizes_are_held_to_the_ladder_and_the_clients_derive_rate(
    shared_engine: Engine, tmp_path: Path
) -> None:
    stack = store_stack(
        shared_engine,
        tmp_path,
        {**LADDER, "PROXY_LADDER_POLICY": "snap", "PROXY_CLIENT_DERIVE_RATE": f"{RATE}/minute"},
    )
    try:
        upload(stack.url, "loop", product_png(fill=(60, 160, 90)))
        minted = shared_engine.minted()
        with httpx.Client(base_url=stack.url, timeout=60) as client:
            for path in SHOPPER_PATHS:
                served_image(client.get(path, headers=SHOPPER), "png")
            start = derivations(stack)

            # The first scraper wants all 8 rungs; 2 are kept already, it may derive 5 more.
            first = loop(client, SCRAPERS[0], random_sizes(1, 150))
            after_first = derivations(stack)
            assert set(first) <= {200, 429} and first[429] > 0, first
            assert all(0 < a - s <= RATE for a, s in zip(after_first, start, strict=True))
            for path in SHOPPER_PATHS:  # hits are never limited
                served_image(client.get(path, headers=SHOPPER), "png")

            # The second derives the one rung left; then nothing is left to derive.
            second = loop(client, SCRAPERS[1], random_sizes(2, 150))
            end = derivations(stack)
            assert set(second) == {200}, second
            grown = [e - s for e, s in zip(end, start, strict=True)]
            assert all(g <= len(RUNG_SIZES) - 2 for g in grown), (start, end)
            for path in SHOPPER_PATHS:
                served_image(client.get(path, headers=SHOPPER), "png")
        assert shared_engine.minted() == minted  # derivations are not paid for
    finally:
        stack.stop()


def test_a_strict_ladder_refuses_random_sizes_without_deriving(
    shared_engine: Engine, tmp_path: Path
) -> None:
    stack = store_stack(
        shared_engine, tmp_path, {**LADDER, "PROXY_LADDER_POLICY": "strict"}, workers=1
    )
    try:
        upload(stack.url, "loop", product_png(fill=(160, 60, 90)))
        start = derivations(stack)
        with httpx.Client(base_url=stack.url, timeout=60) as client:
            statuses = loop(client, SCRAPERS[0], random_sizes(3, 100))
        # off the ladder: 400, nothing derived; the 8 rungs (and any random hit): served
        assert set(statuses) <= {200, 400} and statuses[400] >= 95, statuses
        assert statuses[200] >= len(RUNG_SIZES)
        end = derivations(stack)
        assert all(0 < e - s <= statuses[200] for e, s in zip(end, start, strict=True))
    finally:
        stack.stop()
