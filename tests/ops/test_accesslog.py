"""Access logs: one JSON line per request, with the request id the client sees."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.ops.accesslog import (
    AccessLog,
    FixedLine,
    access_log,
    json_string,
    log_request,
    new_request_id,
)
from proxy.ops.logs import JsonFormatter, JsonLinesHandler
from proxy.ops.metrics import Metrics
from tests.ops.conftest import Clock, JsonLines, running, scrape, settings
from tests.servers import REPO

FIELDS = {
    "ts",
    "level",
    "logger",
    "msg",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "cache_tier",
    "upstream_seconds",
    "duration_seconds",
    "client",
    "pid",
}


def access_lines(lines: JsonLines) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines.lines]
    return [p for p in parsed if p["logger"] == "cutproxy.access"]


async def test_one_json_line_per_request_with_tier_and_times(
    tmp_path: Path, clock: Clock, log_lines: JsonLines
) -> None:
    async with running(settings(tmp_path, demo=True), clock) as (_app, client):
        log_lines.lines.clear()
        miss = await client.get("/img/demo/320x240/ffffff.png?s=secret-ish&x=1")
        hit = await client.get("/img/demo/320x240/ffffff.png", headers={"X-Request-ID": "abc-1"})
        missing = await client.get("/img/nope/320x240/ffffff.png")

    lines = access_lines(log_lines)
    assert len(lines) == 3
    first, second, third = lines
    assert set(first) == FIELDS
    assert first["request_id"] == miss.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"])
    assert first["method"] == "GET" and first["status"] == 302
    assert first["path"] == "/img/demo/320x240/ffffff.png"  # never the query string
    assert first["route"] == "/img/{image_id}/{size}/{filename}"
    assert first["cache_tier"] == "miss"
    assert 0 < first["upstream_seconds"] <= first["duration_seconds"]

    assert hit.headers["x-request-id"] == "abc-1" and second["request_id"] == "abc-1"
    assert second["cache_tier"] == "memory" and second["upstream_seconds"] == 0

    assert third["status"] == 404 and missing.status_code == 404
    assert third["cache_tier"] is None
    # Lines logged while serving a request carry its id too (the service's "minted" line).
    minted = [json.loads(line) for line in log_lines.lines if "minted" in line]
    assert minted and minted[0]["request_id"] == first["request_id"]


async def test_unusable_request_ids_are_replaced(
    tmp_path: Path, clock: Clock, log_lines: JsonLines
) -> None:
    async with running(settings(tmp_path), clock) as (_app, client):
        long = await client.get("/health", headers={"X-Request-ID": "x" * 200})
        odd = await client.get("/health", headers={"X-Request-ID": 'a" b'})
    for answer in (long, odd):
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    assert [line["request_id"] for line in access_lines(log_lines)] == [
        long.headers["x-request-id"],
        odd.headers["x-request-id"],
    ]


async def test_a_crash_is_logged_and_counted_as_500(log_lines: JsonLines) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("kaput")

    metrics = Metrics()
    app = Starlette(routes=[Route("/boom", boom)])
    app.add_middleware(AccessLog, metrics=metrics)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.get("/boom")
    assert answer.status_code == 500
    (line,) = access_lines(log_lines)
    assert line["status"] == 500 and line["route"] == "/boom"
    text = metrics.exposition().decode()
    assert 'cutproxy_http_requests_total{method="GET",route="/boom",status="500"} 1.0' in text


async def test_unmatched_paths_share_one_route_label(tmp_path: Path, clock: Clock) -> None:
    async with running(settings(tmp_path), clock) as (_app, client):
        for n in range(3):
            assert (await client.get(f"/random-{n}")).status_code == 404
        m = await scrape(client)
    assert m.value("cutproxy_http_requests_total", route="unmatched", status="404") == 3
    assert not [s for s in m.samples if "random" in str(s[1])]


def test_the_log_level_setting_filters_json_lines_on_stderr() -> None:
    script = (
        "import logging, logging.config\n"
        "from proxy.ops.logs import logging_config\n"
        "logging.config.dictConfig(logging_config({level!r}))\n"
        "logging.getLogger('cutproxy.access').info('request')\n"
        "logging.getLogger('cutproxy.upstream').warning('slow upstream')\n"
        "logging.getLogger('httpx').info('HTTP Request: POST ...')\n"
        # libvips (store mode) says this at INFO after every derivation's pipeline.
        "logging.getLogger('pyvips').info('VIPS: threadpool completed with 2 workers')\n"
    )
    printed = {}
    for level in ("info", "warning", "debug"):
        result = subprocess.run(
            [sys.executable, "-c", script.format(level=level)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert result.returncode == 0 and result.stdout == ""
        printed[level] = [json.loads(line)["msg"] for line in result.stderr.splitlines()]
    assert printed["info"] == ["request", "slow upstream"]
    assert printed["warning"] == ["slow upstream"]
    assert printed["debug"] == [
        "request",
        "slow upstream",
        "HTTP Request: POST ...",
        "VIPS: threadpool completed with 2 workers",
    ]


def test_request_ids_are_unique_and_a_forked_worker_makes_its_own() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id, then gone without running any cleanup
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 64).decode()
    assert child[:16] != ids[0][:16]  # a prefix of its own


def test_timestamps_are_iso_8601_utc_to_the_millisecond() -> None:
    formatter = JsonFormatter()
    for created in (1795501082.27153, 1795501082.0, 1795501083.5004, 0.9991, 1e9 + 0.25):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert formatter.timestamp(created) == expected


def test_the_direct_access_line_is_the_line_a_log_record_would_make() -> None:
    scope = {"method": "GET", "path": '/img/a"b\\c/é\x01\u2028/x.png', "client": ("::1", 5)}
    direct, recorded = io.StringIO(), JsonLines()
    fast = JsonLinesHandler(direct)
    saved = access_log.handlers[:], access_log.propagate, access_log.level
    access_log.setLevel(logging.INFO)
    try:
        for handler in ([fast], [recorded]):  # the writer alone: the direct path
            access_log.handlers[:] = handler
            access_log.propagate = False
            for tier in ("memory", None):
                log_request(scope, "unmatched", 404, tier, 0.00123456, 1.5, request_id="r-1")
            hits = FixedLine("/img/{image_id}/{size}/{filename}", 302, "memory")
            hits.log(scope, 2e-5, "r-2")
            hits.log(scope, 0.00123456, "r-3", json_string(scope["path"]))
        fast.flush()
    finally:
        access_log.handlers[:], access_log.propagate, access_log.level = saved
        fast.close()
    # "\n" alone ends a line (str.splitlines would split at U+2028 too)
    lines = [json.loads(line) for line in direct.getvalue().split("\n") if line]
    expected = [json.loads(line) for line in recorded.lines]
    assert len(lines) == len(expected) == 4
    for line, want in zip(lines, expected, strict=True):
        assert list(line) == list(want)  # the same fields in the same order
        assert {**line, "ts": ""} == {**want, "ts": ""}
    assert lines[0]["path"] == scope["path"] and lines[0]["cache_tier"] == "memory"
    assert lines[1]["cache_tier"] is None and lines[0]["duration_seconds"] == 0.0012


def test_hits_neither_make_log_records_nor_wait_for_stderr_and_no_line_is_lost() -> None:
    """The process's stderr is a pipe nobody reads until the hits are done: they must not
    wait for it (a full pipe blocks a write), and at exit every line is written."""
    hits = 1000  # ~370 KB of access lines: the pipe holds 64 KB
    script = (
        "import asyncio, logging, logging.config, tempfile\n"
        "from pathlib import Path\n"
        "import httpx\n"
        "from proxy.ops.logs import logging_config\n"
        "from proxy.app import create_app\n"
        "from proxy.settings import Settings\n"
        "logging.config.dictConfig(logging_config('info'))\n"
        "made = []\n"
        "factory = logging.getLogRecordFactory()\n"
        "def counting(*args, **kwargs):\n"
        "    record = factory(*args, **kwargs)\n"
        "    if record.name == 'cutproxy.access':\n"
        "        made.append(record)\n"
        "    return record\n"
        "logging.setLogRecordFactory(counting)\n"
        "async def main():\n"
        "    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp()), demo=True))\n"
        "    async with app.router.lifespan_context(app):\n"
        "        transport = httpx.ASGITransport(app=app)\n"
        "        async with httpx.AsyncClient(transport=transport, base_url='http://t') as c:\n"
        f"            for _ in range({hits}):\n"
        "                assert (await c.get('/img/demo/320x240/ffffff.png')).status_code == 302\n"
        "    print(len(made), flush=True)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    try:
        done = select.select([child.stdout], [], [], 60)[0]
        assert done, "the hits waited for stderr"
        assert child.stdout is not None and child.stdout.readline() == "0\n"  # no LogRecord
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines()]
    access = [line for line in lines if line["logger"] == "cutproxy.access"]
    assert len(access) == hits
    assert [line["cache_tier"] for line in access].count("memory") == hits - 1
