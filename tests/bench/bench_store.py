"""Store mode's measurements (issue 15), side by side in one run:

- a memory hit of a 640x640 JPEG (the hit path's bytes) against a bare Starlette app that
  returns the same bytes from memory, both ``--workers 2`` under the same uvicorn; the proxy
  at its default settings (an access line per hit), and at ``PROXY_LOG_LEVEL=warning``;
- a disk-tier hit (``PROXY_VARIANT_MEMORY_MB=0``: nothing is kept in memory, so every request
  reads the disk tier through the full stack) against nginx serving the same file;
- credits for one image in 72 variants (8 sizes x 3 backgrounds x 3 formats), store mode
  against redirect mode, as the engine counts them (``/_engine/stats``).

The derivation latency (Pillow against pyvips) is ``bench_derive``'s. ``python -m tests.bench
bench_store``.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.bench_core import _burst, _interleaved, _ratio
from tests.bench.harness import registered_image, start_engine, start_uvicorn
from tests.components import find
from tests.integration.conftest import Engine, start_proxy
from tests.servers import Server, free_port, start

WORKERS = 2
HIT = "/img/{image}/640x640/ffffff.jpg"  # pad, store mode's default fit: exactly 640x640
ROUTE = 'route="/img/{image_id}/{size}/{filename}"'


def _store_proxy(engine: Engine, tmp: Path, name: str, **env: str) -> Server:
    (tmp / name).mkdir()
    return start_proxy(engine, tmp / name, workers=WORKERS, PROXY_MODE="store", **env)


def _warm(url: str) -> bytes:
    """Ask until both workers keep the variant (the first derives it, the other reads it off
    the disk tier into its memory); its bytes."""
    asyncio.run(_burst([url] * 8))
    for _ in range(20):
        answer = httpx.get(url)
    assert answer.status_code == 200, answer.text
    return answer.content


def _counted(server: Server) -> tuple[float, float]:
    """(requests the hit path answered, requests on the variant route), all workers."""
    time.sleep(1.5)  # every worker's tally is flushed within a second
    text = httpx.get(f"{server.url}/metrics").text
    fast = sum(float(v) for v in re.findall(r"^cutproxy_hit_path_answers_total (\S+)", text, re.M))
    requests = re.findall(r"^cutproxy_http_requests_total\{(.*?)\} (\S+)", text, re.M)
    return fast, sum(float(value) for labels, value in requests if ROUTE in labels)


def memory_hits(tmp: Path) -> list[tuple[str, str, str]]:
    engine = start_engine(tmp)
    servers: dict[str, Server] = {}
    try:
        servers["info"] = _store_proxy(engine, tmp, "info")
        servers["warning"] = _store_proxy(engine, tmp, "warning", PROXY_LOG_LEVEL="warning")
        urls: dict[str, str] = {}
        data = b""
        for name in ("info", "warning"):
            image = registered_image(engine, servers[name].url)
            urls[name] = servers[name].url + HIT.format(image=image)
            data = _warm(urls[name])
        (tmp / "hit.jpg").write_bytes(data)
        env = {"BENCH_BYTES_FILE": str(tmp / "hit.jpg")}
        servers["bare"] = start_uvicorn("tests.bench.bare:bytes_app", tmp, WORKERS, env, "bare")
        urls["bare"] = servers["bare"].url + HIT.format(image="x")
        assert httpx.get(urls["bare"]).content == data
        before = {name: _counted(servers[name]) for name in ("info", "warning")}
        rps = _interleaved(urls, rounds=5, seconds=4)
        after = {name: _counted(servers[name]) for name in ("info", "warning")}
    finally:
        for server in servers.values():
            server.stop()
        engine.server.stop()
    median = {name: statistics.median(values) for name, values in rps.items()}
    share = {
        name: (after[name][0] - before[name][0]) / max(1.0, after[name][1] - before[name][1])
        for name in ("info", "warning")
    }
    return [
        (
            f"store-mode memory hit req/s (640x640 JPEG, {len(data):,} bytes) vs bare Starlette "
            "returning the same bytes from memory, default settings (an access line per hit)",
            f"{_ratio(rps['info'], rps['bare']):.2f} ({median['info']:,.0f} vs "
            f"{median['bare']:,.0f} req/s; {share['info']:.1%} answered by the hit path)",
            ">= 0.9",
        ),
        (
            "  the same at PROXY_LOG_LEVEL=warning (no access lines)",
            f"{_ratio(rps['warning'], rps['bare']):.2f} ({median['warning']:,.0f} req/s; "
            f"{share['warning']:.1%} by the hit path)",
            "(for reference)",
        ),
    ]


def _nginx(tmp: Path, root: Path) -> Server:
    """nginx serving ``root`` with as many workers as the proxy, an access line per request
    (its default, like the proxy's)."""
    nginx = find("nginx")
    if nginx is None:
        raise SystemExit("bench_store needs nginx: apt-get install -y nginx")
    here = tmp / "nginx"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (here / "temp" / name).mkdir(parents=True, exist_ok=True)
    temps = "".join(f"    {n}_temp_path {here}/temp/{n};\n" for n in ("client_body", "proxy"))
    temps += "".join(f"    {n}_temp_path {here}/temp/{n};\n" for n in ("fastcgi", "uwsgi", "scgi"))
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp
    port = free_port()
    conf = here / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nmaster_process on;\nworker_processes {WORKERS};\n"
        f"pid {here}/nginx.pid;\nerror_log {here}/error.log;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"{temps}"
        f"    access_log {here}/access.log;\n"
        "    types { image/jpeg jpg; }\n"
        "    sendfile on;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        f"        root {root};\n"
        "    }\n"
        "}\n"
    )
    args = [nginx, "-p", f"{here}/", "-e", str(here / "error.log"), "-c", str(conf)]
    return start(args, port=port, log_path=here / "nginx.log", ready_path="/")


def disk_hits(tmp: Path) -> list[tuple[str, str, str]]:
    engine = start_engine(tmp)
    servers: dict[str, Server] = {}
    try:
        servers["disk"] = _store_proxy(engine, tmp, "disk", PROXY_VARIANT_MEMORY_MB="0")
        image = registered_image(engine, servers["disk"].url)
        path = HIT.format(image=image)
        data = _warm(servers["disk"].url + path)
        root = tmp / "www"
        (root / Path(path).parent.relative_to("/")).mkdir(parents=True)
        (root / path.lstrip("/")).write_bytes(data)
        servers["nginx"] = _nginx(tmp, root)
        assert httpx.get(servers["nginx"].url + path).content == data
        urls = {name: server.url + path for name, server in servers.items()}
        before = _counted(servers["disk"])
        rps = _interleaved(urls, rounds=5, seconds=4)
        after = _counted(servers["disk"])
    finally:
        for server in servers.values():
            server.stop()
        engine.server.stop()
    median = {name: statistics.median(values) for name, values in rps.items()}
    fast = after[0] - before[0]
    return [
        (
            "store-mode disk-tier hit req/s (PROXY_VARIANT_MEMORY_MB=0: the full stack reads "
            "the disk tier) vs nginx serving the same file",
            f"{_ratio(rps['disk'], rps['nginx']):.2f} ({median['disk']:,.0f} vs "
            f"{median['nginx']:,.0f} req/s; hit path answered {fast:.0f})",
            "(reference)",
        )
    ]


# 8 sizes x 3 backgrounds x 3 formats: contain (the one fit redirect mode can make), so both
# modes are asked for the same 72 variants.
SIZES = (64, 120, 200, 256, 320, 400, 480, 640)
BACKGROUNDS = {
    "jpg": ("ffffff", "cc3300", "2266aa"),
    "png": ("ffffff", "cc3300", "transparent"),
    "webp": ("ffffff", "cc3300", "transparent"),
}


def credits(tmp: Path) -> list[tuple[str, str, str]]:
    engine = start_engine(tmp)
    spent: dict[str, tuple[int, int, float, int]] = {}
    try:
        for mode in ("store", "redirect"):
            (tmp / mode).mkdir()
            proxy = start_proxy(
                engine, tmp / mode, workers=WORKERS, PROXY_MODE=mode, PROXY_FIT="contain"
            )
            try:
                image = registered_image(engine, proxy.url, f"credits-{mode}")
                paths = [
                    f"{proxy.url}/img/{image}/{w}x{w}/{bg}.{ext}"
                    for w in SIZES
                    for ext, backgrounds in BACKGROUNDS.items()
                    for bg in backgrounds
                ]
                before = engine.stats()
                answers = asyncio.run(_burst(paths))
                after = engine.stats()
            finally:
                proxy.stop()
            ok = sum(a.status_code == (200 if mode == "store" else 302) for a in answers)
            spent[mode] = (
                _grown(before, after, "tokens_minted"),
                _grown(before, after, "variants_minted"),
                float(after["credits_charged"]) - float(before["credits_charged"]),  # type: ignore[arg-type]
                ok,
            )
    finally:
        engine.server.stop()
    store, redirect = spent["store"], spent["redirect"]
    count = len(SIZES) * 9
    return [
        (
            f"1 image x {count} variants ({len(SIZES)} sizes x 3 backgrounds x 3 formats, "
            "asked at once): tokens / credits at the engine, store mode vs redirect mode",
            f"store {store[0]} token / {store[1]} variant minted, {store[2]:g} credits "
            f"({store[3]} answered 200); redirect {redirect[0]} tokens / {redirect[1]} variants "
            f"minted, {redirect[2]:g} credits ({redirect[3]} redirected): "
            f"{redirect[2] / max(store[2], 0.01):.0f}x the credits",
            f"1 vs {count} minted",
        )
    ]


def _grown(before: dict[str, object], after: dict[str, object], name: str) -> int:
    return int(after[name]) - int(before[name])  # type: ignore[call-overload]


def run() -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = [
        (
            f"store: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
            "",
            "",
        )
    ]
    for bench in (memory_hits, disk_hits, credits):
        with tempfile.TemporaryDirectory() as tmp:
            rows += bench(Path(tmp))
    return rows
