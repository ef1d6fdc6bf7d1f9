"""``cutproxy serve`` as operators run it: graceful SIGTERM, metrics across workers, JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cli.main import METRICS_DIR_PREFIX, sweep_metrics_dirs
from proxy.ops.metrics import FLUSH_SECONDS
from tests.ops.conftest import Scrape
from tests.servers import Server, cutproxy, free_port, start, wait_for

pytestmark = pytest.mark.slow

ADMIN = "admin-token-for-tests-0123456789"
VARIANT = "/img/demo/320x240/ffffff.png"


def serve(tmp_path: Path, name: str, *flags: str, port: int = 0, **env: str) -> Server:
    return start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", *flags),
        port=port or free_port(),
        log_path=tmp_path / f"{name}.log",
        env={"PROXY_DATA_DIR": str(tmp_path / "data"), **env},
        ready_path="/health/live",
    )


def json_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def access(server: Server, path: str) -> list[dict[str, Any]]:
    return [
        line
        for line in json_lines(server)
        if line["logger"] == "cutproxy.access" and line["path"] == path
    ]


def scrape(server: Server) -> Scrape:
    return Scrape(httpx.get(f"{server.url}/metrics", timeout=10).text)


def test_sigterm_lets_a_slow_miss_finish_and_keeps_it(tmp_path: Path) -> None:
    first = serve(tmp_path, "first", "--demo", PROXY_ADMIN_TOKEN=ADMIN)
    try:
        slow = httpx.put(
            f"{first.url}/_engine/faults",
            json={"process_latency": 1.5},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=5,
        )
        assert slow.status_code == 200
        answers: list[httpx.Response] = []
        client = threading.Thread(
            target=lambda: answers.append(httpx.get(first.url + VARIANT, timeout=30))
        )
        client.start()
        wait_for(lambda: scrape(first).value("cutproxy_misses_in_flight") == 1)
        terminated = time.monotonic()
        first.signal(signal.SIGTERM)
        code = first.proc.wait(30)
        took = time.monotonic() - terminated
        client.join(10)
    finally:
        first.stop()

    assert code == 0, first.log()[-2000:]
    assert took < 10
    (answer,) = answers
    assert answer.status_code == 302
    location = answer.headers["location"]
    (line,) = access(first, VARIANT)
    assert line["status"] == 302 and line["cache_tier"] == "miss"
    assert line["upstream_seconds"] >= 1.5
    messages = [line["msg"] for line in json_lines(first)]
    assert "Application shutdown complete." in messages

    # Same data dir and address, fresh process: the variant comes from the disk tier and
    # the file it points to is still served; no new mint.
    second = serve(tmp_path, "second", port=first.port)
    try:
        again = httpx.get(second.url + VARIANT, timeout=10)
        image = httpx.get(location, timeout=10)
        stats = httpx.get(f"{second.url}/_engine/stats", timeout=5).json()
        metrics = scrape(second)
    finally:
        second.stop()
    assert again.status_code == 302 and again.headers["location"] == location
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert metrics.value("cutproxy_tokens_minted_total") == 0
    assert metrics.value("cutproxy_cache_results_total", tier="disk") == 1
    assert access(second, VARIANT)[0]["cache_tier"] == "disk"
    assert stats["tokens_minted"] == 2  # the demo upload and the one miss, both before


async def _get_all(url: str, n: int) -> list[httpx.Response]:
    # A fresh connection per request, so the kernel spreads them over the workers.
    async def one() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.get(url, headers={"Connection": "close"})

    return await asyncio.gather(*(one() for _ in range(n)))


def test_sigterm_right_after_a_burst_loses_no_log_line(tmp_path: Path) -> None:
    # Lines wait in each worker's queue for its writer thread: a stop writes them out.
    server = serve(tmp_path, "burst", "--workers", "2", "--demo")
    try:
        wait_for(lambda: len(_started(server)) == 2, 20)
        answers = asyncio.run(_get_all(server.url + VARIANT, 300))
    finally:
        code = server.stop()
    assert code == 0
    assert [a.status_code for a in answers] == [302] * 300
    assert len(access(server, VARIANT)) == 300
    assert "Application shutdown complete." in [line["msg"] for line in json_lines(server)]


def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left over from an earlier run")
    server = serve(
        tmp_path,
        "workers",
        "--workers",
        "2",
        "--demo",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    try:
        # Both workers must be up before the count starts.
        wait_for(lambda: len(_started(server)) == 2, 20)
        # Rounds of fresh connections until both workers have served some (the kernel
        # hands connections to whichever worker accepts first).
        answers: list[httpx.Response] = []
        for _ in range(5):
            answers += asyncio.run(_get_all(server.url + VARIANT, 20))
            if len({line["pid"] for line in access(server, VARIANT)}) == 2:
                break
        # Each worker adds its tally to the shared files within FLUSH_SECONDS; a scrape
        # answered by either worker then reports the sum of both.
        total = len(answers)
        wait_for(
            lambda: scrape(server).value("cutproxy_cache_results_total") == total,
            FLUSH_SECONDS + 5,
        )
        scrapes = [scrape(server) for _ in range(6)]
    finally:
        server.stop()
    assert {a.status_code for a in answers} == {302}
    served_by = {line["pid"] for line in access(server, VARIANT)}
    assert len(served_by) == 2, "the requests all landed on one worker"
    for m in scrapes:
        assert m.value("cutproxy_http_requests_total", status="302") == len(answers)
        assert m.value("cutproxy_cache_results_total") == len(answers)
        assert m.value("cutproxy_misses_in_flight") == 0
    assert not (metrics_dir / "counter_999999.db").exists()


def _started(server: Server) -> set[int]:
    lines = json_lines(server)
    return {line["pid"] for line in lines if line["msg"] == "Application startup complete."}


def test_serve_removes_metrics_directories_left_by_a_killed_run(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{METRICS_DIR_PREFIX}{gone.pid}-k1ll3d"
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-running"
    other = tmp_path / f"{METRICS_DIR_PREFIX}notes"
    for directory in (dead, live, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"counts")
    assert sweep_metrics_dirs(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_ready_turns_503_while_upstream_calls_fail_and_back_once_they_work(
    tmp_path: Path,
) -> None:
    # Fault mode "down": the engine's API drops every call while its health route answers.
    server = serve(
        tmp_path,
        "ready",
        "--demo",
        PROXY_ADMIN_TOKEN=ADMIN,
        PROXY_READY_CACHE="0",
        PROXY_READY_UPSTREAM_FAILURES="3",
        PROXY_RETRY_ATTEMPTS="1",
        PROXY_BATCH_WINDOW_MS="0",
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
        down = httpx.put(f"{server.url}/_engine/faults", json={"mode": "down"}, headers=admin)
        assert down.status_code == 200
        for width in (100, 110, 120):
            failed = httpx.get(f"{server.url}/img/demo/{width}x100/ffffff.png", timeout=30)
            assert failed.status_code >= 500
        assert httpx.get(f"{server.url}/_engine/health", timeout=5).status_code == 200
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert ready.status_code == 503, ready.text
        assert "the last 3 upstream calls failed" in ready.json()["checks"]["upstream"]["error"]

        up = httpx.put(f"{server.url}/_engine/faults", json={"mode": "ok"}, headers=admin)
        assert up.status_code == 200
        served = httpx.get(f"{server.url}/img/demo/130x100/ffffff.png", timeout=30)
        assert served.status_code == 302
        assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
    finally:
        server.stop()
