"""What a stranger reaching the port of ``cutproxy serve`` can do, on the wire.

The embedded engine shows only its output files and read-only counters; no redirect takes
its host from the request; a client's address is the proxy's to decide, not uvicorn's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, cutproxy, free_port, start

pytestmark = pytest.mark.slow

ADMIN = "admin-token-for-surface-tests-0123"
DEV_KEY = "engine-dev-key"  # the key the source used to carry
EVIL = {"Host": "evil.example"}


def serve(tmp_path: Path, name: str, **env: str) -> Server:
    return start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--demo"),
        port=free_port(),
        log_path=tmp_path / f"{name}.log",
        env={"PROXY_DATA_DIR": str(tmp_path / name), "PROXY_ADMIN_TOKEN": ADMIN, **env},
        ready_path="/health/live",
    )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = serve(tmp_path_factory.mktemp("surface"), "data")
    try:
        yield server
    finally:
        server.stop()


def minted(server: Server) -> int:
    return int(httpx.get(f"{server.url}/_engine/stats", timeout=5).json()["tokens_minted"])


def test_strangers_reach_only_the_engines_files_and_counters(proxy: Server) -> None:
    key_file = Path(proxy.log_path).parent / "data" / "engine" / "api-key"
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    url = proxy.url

    # What the proxy's redirects point at, and the counters, answer anyone.
    answer = httpx.get(f"{url}/img/demo/320x240/ffffff.png", timeout=30)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(f"{url}/_engine/files/")
    image = httpx.get(location, timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    stats = httpx.get(f"{url}/_engine/stats", timeout=5)
    assert stats.status_code == 200 and stats.json()["tokens_minted"] >= 2

    # Minting and processing are not on the port at all, whatever key is offered.
    before = minted(proxy)
    body = {"output_variants": [{"variant_name": "x", "max_resolution": 12_000_000}]}
    for given in (DEV_KEY, key):
        auth = {"Authorization": f"Bearer {given}"}
        token = httpx.post(
            f"{url}/_engine/api/v3/remove-bg/token/", json=body, headers=auth, timeout=5
        )
        assert token.status_code == 404, token.text
        process = httpx.post(f"{url}/_engine/v3/remove-bg/", data={"token": "t"}, timeout=5)
        assert process.status_code == 404
    assert minted(proxy) == before
    assert httpx.get(f"{url}/_engine/_engine/stats", timeout=5).status_code == 404

    # Fault control answers to the admin token only: not the old key, not the engine's own.
    down = {"mode": "down"}
    for given in (None, DEV_KEY, key):
        headers = {} if given is None else {"Authorization": f"Bearer {given}"}
        refused = httpx.put(f"{url}/_engine/faults", json=down, headers=headers, timeout=5)
        assert refused.status_code == 401, refused.text
        assert key not in refused.text
    admin = {"Authorization": f"Bearer {ADMIN}"}
    state = httpx.get(f"{url}/_engine/faults", headers=admin, timeout=5)
    assert state.status_code == 200 and state.json()["mode"] == "ok"
    assert httpx.get(f"{url}/img/demo/330x240/ffffff.png", timeout=30).status_code == 302

    assert key not in proxy.log()
    assert "not a loopback address" not in proxy.log()


@pytest.mark.parametrize(
    "path",
    [
        "/img/demo/400x300/ff5733.jpg/",
        "/srcset/demo/",
        "/_engine",
        "/_engine/",
        "/_engine/stats/",
        "/_engine/files/0123456789abcdef0123456789abcdef.png/",
        "/health/ready/",
        "/images/",
    ],
)
def test_no_redirect_takes_its_host_from_the_request(proxy: Server, path: str) -> None:
    answer = httpx.get(proxy.url + path, headers=EVIL, timeout=10)
    assert "evil.example" not in answer.headers.get("location", "")
    assert answer.status_code == 404, answer.headers
    assert "error" in answer.json()  # the proxy's JSON 404, or under /_engine the engine's


@pytest.mark.parametrize(("trusted", "mints"), [(None, 3), ("127.0.0.1/32", 8)])
def test_forwarded_for_counts_only_from_proxies_the_proxy_trusts(
    tmp_path: Path, trusted: str | None, mints: int
) -> None:
    env = {"PROXY_CLIENT_MISS_RATE": "3/minute", "PROXY_BATCH_WINDOW_MS": "0"}
    if trusted is not None:
        env["PROXY_TRUSTED_PROXIES"] = trusted
    server = serve(tmp_path, "xff", **env)
    try:
        before = minted(server)
        statuses = []
        for i in range(8):
            spoofed = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
            answer = httpx.get(
                f"{server.url}/img/demo/{200 + i}x200/ffffff.png", headers=spoofed, timeout=30
            )
            statuses.append(answer.status_code)
        assert minted(server) - before == mints, statuses
    finally:
        server.stop()


def test_a_non_loopback_address_with_the_embedded_engine_is_warned_about(
    tmp_path: Path,
) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the bind fails after the warning.
    done = subprocess.run(
        cutproxy("serve", "--host", "192.0.2.1", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PROXY_DATA_DIR": str(tmp_path / "data")},
    )
    assert "not a loopback address" in done.stdout + done.stderr
