"""Request heads are bounded at the server, and nothing a client sends piles up in a worker.

Against a real ``cutproxy serve --workers 2``: uvicorn's own httptools protocol reads heads
of any size, so the bound (``PROXY_MAX_HEADER_BYTES``) and what the workers keep per request
are checked on the wire and in the workers' resident memory.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, cutproxy, free_port, start, wait_for

pytestmark = pytest.mark.slow

VARIANT = "/img/demo/320x240/ffffff.png"
LIMIT = 32768  # the default PROXY_MAX_HEADER_BYTES
# Each request of the memory test sends ~30 KB that a cache keyed by whole values would keep:
# 1500 of them are ~45 MB per kind, against a bound on growth well below that.
VALUE_BYTES = 30_000
REQUESTS = 1500
GROWTH_BOUND_MB = 12


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "2", "--demo"),
        port=free_port(),
        log_path=tmp_path / "serve.log",
        env={"PROXY_DATA_DIR": str(tmp_path / "data"), "PROXY_LOG_LEVEL": "warning"},
        ready_path="/health/live",
    )
    try:
        wait_for(lambda: len(workers(started)) == 2, 20)
        yield started
    finally:
        started.stop()


def workers(server: Server) -> list[int]:
    """The worker processes uvicorn spawned (not multiprocessing's resource tracker)."""
    found = []
    for tasks in Path(f"/proc/{server.proc.pid}/task").glob("*/children"):
        for child in tasks.read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def raw_request(server: Server, head: bytes) -> bytes:
    """Send ``head`` on a fresh connection; whatever the server answered before closing."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except OSError:  # refused mid-send: the answer may still be there to read
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def get(path: str, **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_head_over_the_bound_gets_a_json_431_and_one_under_it_is_served(
    server: Server,
) -> None:
    under = raw_request(server, get(VARIANT, Accept="a" * (LIMIT - 200)))
    assert under.startswith(b"HTTP/1.1 302 ")
    # The bound is per request, on its head alone: kept-alive connections and bodies pass.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(5):
            assert client.get(VARIANT, headers={"Accept": "a" * 20_000}).status_code == 302
        assert client.post("/health", content=b"x" * 500_000).status_code == 405

    over = raw_request(server, get(VARIANT, Accept="a" * (LIMIT + 1)))
    assert over.startswith(b"HTTP/1.1 431 ")
    head, _, body = over.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head and b"connection: close" in head
    assert body.startswith(b'{"error": "headers_too_large", "message": "')

    # Spread over many headers, or in the URL, it is the same head.
    many = {f"X-Pad-{n}": "p" * 1000 for n in range(40)}
    assert raw_request(server, get(VARIANT, **many)).startswith(b"HTTP/1.1 431 ")
    long_url = raw_request(server, get(VARIANT + "?" + "q" * (LIMIT + 1)))
    assert long_url.startswith(b"HTTP/1.1 431 ")

    # 4 MB in one header: refused after at most a read past the bound, nothing kept.
    before = sum(rss_mb(pid) for pid in workers(server))
    for _ in range(5):
        huge = raw_request(server, get(VARIANT, Accept="a" * 4_000_000))
        assert huge == b"" or huge.startswith(b"HTTP/1.1 431 ")
    assert sum(rss_mb(pid) for pid in workers(server)) - before < GROWTH_BOUND_MB
    assert httpx.get(server.url + VARIANT, timeout=10).status_code == 302


def test_distinct_large_headers_and_paths_do_not_pile_up_in_the_workers(server: Server) -> None:
    url = server.url + VARIANT
    # Warm both workers' memory tiers and their allocators with one value, sent again and
    # again: whatever a request allocates for a while is counted in the baseline.
    same = "image/webp," + "a" * VALUE_BYTES
    asyncio.run(_get_all([(url, same)] * 200))
    before = {pid: rss_mb(pid) for pid in workers(server)}

    accepts = [(url, f"image/webp,x/{n}-" + "a" * VALUE_BYTES) for n in range(REQUESTS)]
    paths = [
        (f"{server.url}/img/{n}{'p' * VALUE_BYTES}/320x240/ffffff.png", "*/*")
        for n in range(REQUESTS)
    ]
    statuses = asyncio.run(_get_all(accepts + paths))
    assert statuses.count(302) == REQUESTS  # served: under the bound
    assert statuses.count(400) == REQUESTS  # a bad image id, answered by the full stack

    growth = {pid: rss_mb(pid) - before[pid] for pid in before}
    assert max(growth.values()) < GROWTH_BOUND_MB, growth


async def _get_all(requests: list[tuple[str, str]], concurrency: int = 8) -> list[int]:
    """GET every (url, accept), ``concurrency`` at a time over fresh connections."""
    limits = httpx.Limits(max_keepalive_connections=0)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(url: str, accept: str) -> int:
            async with semaphore:
                return (await client.get(url, headers={"Accept": accept})).status_code

        return list(await asyncio.gather(*(one(u, a) for u, a in requests)))
