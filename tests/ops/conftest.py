"""Shared pieces of the operations tests: a fake clock, in-process apps, a /metrics reader."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.ops.logs import JsonFormatter
from proxy.settings import Settings
from tests.clock import Clock

ADMIN = "admin-token-for-ops-tests-0123"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@asynccontextmanager
async def running(
    settings: Settings, clock: Clock, **kwargs: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client talking to it in-process."""
    app = create_app(settings, clock=clock, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as c:
            yield app, c


class Scrape:
    """One /metrics answer, parsed: ``scrape.value("name", label=value)``."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        found = [v for n, ls, v in self.samples if n == name and labels.items() <= ls.items()]
        return sum(found)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return Scrape(answer.text)


class JsonLines(logging.Handler):
    """Collects what the JSON formatter makes of every record, as the process would print it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("cutproxy")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", admin_token=ADMIN, **changes)


class FakeUpstream:
    """A BackgroundCut stand-in for httpx.MockTransport: answers a token, then its outputs.

    ``script`` holds answers (or exceptions) to hand out before the normal ones; ``gate``,
    when set, holds processing calls until it is opened.
    """

    def __init__(self) -> None:
        self.script: list[httpx.Response | Exception] = []
        self.names: list[str] = []
        self.calls: list[httpx.Request] = []
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if answer.status_code != 200 or not request.url.path.endswith("/token/"):
                return answer
        if request.url.path.endswith("/token/"):
            body = json.loads(request.content)
            self.names = [v["variant_name"] for v in body["output_variants"]]
            return httpx.Response(200, json={"access_token": "tok"})
        if request.method == "HEAD":
            return httpx.Response(404)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        urls = {name: f"https://cdn.example/{name}.jpg" for name in self.names}
        return httpx.Response(200, json={"unique_filename": "u-1", "output_urls": urls})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def upstream_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Real-upstream mode (an API key) against a FakeUpstream."""
    return settings(
        tmp_path,
        api_key="sk-fake-upstream-key-0001",
        allowed_output_hosts=("cdn.example",),
        retry_backoff=0,
        **changes,
    )


async def register(client: httpx.AsyncClient, image_id: str = "sku") -> None:
    body = {"unique_filename": "u-1", "width": 800, "height": 600}
    answer = await client.put(f"/images/{image_id}", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
