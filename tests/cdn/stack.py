"""A real cache (Varnish, nginx) in front of a real ``cutproxy serve``: what both tests share.

The proxy's access log (one JSON line per request it answers) counts what reached it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.cdn.conftest import ADMIN
from tests.servers import Server, cutproxy, free_port, start


@dataclass
class Stack:
    proxy: Server
    cache: subprocess.Popen[bytes]
    front: str

    def reached(self, path: str) -> int:
        """How many requests for ``path`` the proxy answered (from its access log).

        A line is written just after its response is sent: wait until the count settles.
        """
        count, since = self._count(path), time.monotonic()
        deadline = since + 3.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._count(path)
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since >= 0.3:
                break
        return count

    def _count(self, path: str) -> int:
        count = 0
        for line in self.proxy.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "request" and entry.get("path") == path:
                count += 1
        return count


def wait_for(front: str, cache: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the cache at ``front`` passes ``/health`` through; fail with its log."""
    name = Path(str(cache.args[0] if isinstance(cache.args, list) else cache.args)).name
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if cache.poll() is not None:
            raise RuntimeError(f"{name} exited {cache.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{front}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer: {log.read_text()[-2000:]}")


def stop(cache: subprocess.Popen[bytes]) -> None:
    """SIGTERM the cache's process group, then SIGKILL it if it does not exit in time."""
    try:
        os.killpg(cache.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        cache.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(cache.pid, signal.SIGKILL)
        cache.wait(10)


async def get_many(url: str, n: int, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
        return list(await asyncio.gather(*(client.get(url, headers=headers) for _ in range(n))))


# The embedded engine's fault control answers to the proxy's admin token.
ENGINE_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def start_demo_proxy(tmp_path: Path, **env: str) -> Server:
    """``cutproxy serve --demo`` for a cache to stand in front of (one try per upstream call)."""
    return start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--demo"),
        port=free_port(),
        log_path=tmp_path / "proxy.log",
        env={
            "PROXY_DATA_DIR": str(tmp_path / "data"),
            "PROXY_ADMIN_TOKEN": ADMIN,
            "PROXY_RETRY_ATTEMPTS": "1",
            **env,
        },
        ready_path="/health",
    )


def check_no_5xx_is_kept(stack: Stack) -> None:
    """With the engine down, every request reaches the proxy; once it is up, a 302 again."""
    path = "/img/demo/300x300/ffffff.png"
    down = httpx.put(
        f"{stack.proxy.url}/_engine/faults", json={"mode": "down"}, headers=ENGINE_AUTH, timeout=5
    )
    assert down.status_code == 200, down.text
    failures = [httpx.get(stack.front + path, timeout=30) for _ in range(3)]
    assert all(f.status_code >= 500 for f in failures), [f.status_code for f in failures]
    assert stack.reached(path) == 3  # every one went to the proxy: nothing was cached

    up = httpx.put(
        f"{stack.proxy.url}/_engine/faults", json={"mode": "ok"}, headers=ENGINE_AUTH, timeout=5
    )
    assert up.status_code == 200
    healed = httpx.get(stack.front + path, timeout=30)
    assert healed.status_code == 302
    assert stack.reached(path) == 4


# What browsers send for images (the AVIF / WebP classes the caches fold Accept into).
BROWSER_ACCEPTS = {
    "image/avif": [  # Chrome, Edge, Firefox, Safari 16+: AVIF and WebP
        "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
        "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
        "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,"
        "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    ],
    "image/webp": [  # older Safari and Firefox: WebP only
        "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",
        "image/webp,*/*",
    ],
    "image/jpeg": [  # neither: curl, old browsers, no Accept at all
        "*/*",
        "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
        "",
    ],
}


def check_one_copy_per_format(stack: Stack) -> None:
    """A store-mode ``.auto`` URL behind the cache: every browser gets its format, and the
    cache asks the proxy once per format (AVIF, WebP, JPEG), whatever the Accept strings."""
    path = "/img/demo/320x320/ffffff.auto"
    etags: dict[str, set[str]] = {}
    for _round in range(2):
        for kind, accepts in BROWSER_ACCEPTS.items():
            for accept in accepts:
                headers = {"Accept": accept} if accept else {}
                answer = httpx.get(stack.front + path, headers=headers, timeout=60)
                assert answer.status_code == 200, answer.text
                assert answer.headers["content-type"] == kind, accept
                assert answer.headers["vary"] == "Accept"
                etags.setdefault(kind, set()).add(answer.headers["etag"])
    assert all(len(tags) == 1 for tags in etags.values()), etags  # one copy each
    assert len({next(iter(tags)) for tags in etags.values()}) == 3  # distinct per format
    assert stack.reached(path) == 3  # one request per format reached the proxy
    as_json = [
        httpx.get(stack.front + path, headers={"Accept": "application/json"}, timeout=30)
        for _ in range(2)
    ]
    assert [a.json()["format"] for a in as_json] == ["jpg", "jpg"]
    assert stack.reached(path) == 4  # apps have their own copy
