"""What a lone cache miss costs over the upstream itself, at the default batch window and at 0.

A miss nobody else is asking for should not wait for companions: the proxy's overhead on it
is its own work (cache, registry, lease, the redirect), a few ms, whatever the window.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.harness import registered_image, start_engine
from tests.integration.conftest import ENGINE_KEY, Engine, start_proxy

SAMPLES = 25


def lone_miss_overhead(tmp: Path) -> list[tuple[str, str, str]]:
    engine = start_engine(tmp)
    rows = []
    try:
        for window in ("30", "0"):
            place = tmp / f"window-{window}"
            place.mkdir()
            proxy = start_proxy(
                engine, place, workers=1, PROXY_LOG_LEVEL="warning", PROXY_BATCH_WINDOW_MS=window
            )
            try:
                overhead = _overhead(engine, proxy.url, registered_image(engine, proxy.url))
            finally:
                proxy.stop()
            rows.append(
                (
                    f"lone miss over the upstream, PROXY_BATCH_WINDOW_MS={window}",
                    f"{overhead:.1f} ms (median of {SAMPLES}, vs the same mint at the engine)",
                    "<= 5 ms",
                )
            )
    finally:
        engine.server.stop()
    return rows


def _overhead(engine: Engine, proxy_url: str, image_id: str) -> float:
    """Median proxy miss minus median direct mint, interleaved, each size new."""
    unique = httpx.get(
        f"{proxy_url}/images/{image_id}",
        headers={"Authorization": "Bearer admin-token-for-tests-0123456789"},
    ).json()["unique_filename"]
    through, direct = [], []
    with httpx.Client(timeout=60) as client:
        for n in range(SAMPLES + 3):
            side = 200 + n
            started = time.perf_counter()
            answer = client.get(f"{proxy_url}/img/{image_id}/{side}x{side}/ffffff.jpg")
            proxied = time.perf_counter() - started
            assert answer.status_code == 302, answer.text
            started = time.perf_counter()
            _mint_at_the_engine(client, engine.url, unique, side + 1000)
            alone = time.perf_counter() - started
            if n >= 3:  # the first ones warm connections and caches up
                through.append(proxied)
                direct.append(alone)
    return (statistics.median(through) - statistics.median(direct)) * 1000


def _mint_at_the_engine(client: httpx.Client, url: str, unique: str, side: int) -> None:
    variant = {"variant_name": "v", "max_resolution": side * side, "format": "jpg"}
    variant["background_color"] = "#FFFFFF"
    token = client.post(
        f"{url}/api/v3/remove-bg/token/",
        headers={"Authorization": f"Bearer {ENGINE_KEY}"},
        json={"output_variants": [variant], "unique_filename": unique},
    ).json()["access_token"]
    client.post(f"{url}/v3/remove-bg/", data={"token": token}).raise_for_status()


def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        return lone_miss_overhead(Path(tmp))
