"""One way to drive the engine in tests, whether in-process or a real server on loopback.

``make_engine(**settings)`` gives an :class:`Engine`: an httpx client plus the contract's
calls. Contract tests take the ``transport`` parameter and run twice: through
``httpx.ASGITransport`` with a fake clock, and against ``cutproxy engine`` under uvicorn,
where time passes for real (hence the short TTLs there).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.engine.app import PROCESS_PATH, TOKEN_PATH, create_engine_app
from proxy.engine.faults import FaultState
from proxy.engine.settings import EngineSettings, env_name
from tests.servers import Server, cutproxy, free_port, start

ASGI_BASE = "http://engine.test"
#: The key these engines are given (unset, each data dir would make its own: test_parts.py).
API_KEY = "engine-test-key-" + "0" * 16
#: Real time passes on loopback: tokens and files expire quickly there.
LOOPBACK_SETTINGS: dict[str, Any] = {"api_key": API_KEY, "token_ttl": 2.0, "retention": 2.0}


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Engine:
    """A running engine and the calls of the v3 contract."""

    client: httpx.AsyncClient
    settings: EngineSettings
    advance: Callable[[float], Awaitable[None]]
    transport: str

    async def mint(
        self,
        variants: list[dict[str, Any]] | None = None,
        *,
        unique_filename: str | None = None,
        key: str | None = API_KEY,
        body: Any = None,
    ) -> httpx.Response:
        if body is None:
            body = {"output_variants": variants or [{"variant_name": "v"}]}
            if unique_filename is not None:
                body["unique_filename"] = unique_filename
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return await self.client.post(TOKEN_PATH, json=body, headers=headers)

    async def token(self, variants: list[dict[str, Any]] | None = None, **kwargs: Any) -> str:
        answer = await self.mint(variants, **kwargs)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    async def process(
        self, token: str, image: bytes | None = None, *, filename: str = "photo.jpg"
    ) -> httpx.Response:
        files = None if image is None else {"image": (filename, image, "image/jpeg")}
        return await self.client.post(PROCESS_PATH, data={"token": token}, files=files)

    async def render(self, variants: list[dict[str, Any]], image: bytes) -> dict[str, Any]:
        answer = await self.process(await self.token(variants), image)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def stats(self) -> dict[str, Any]:
        answer = await self.client.get("/_engine/stats")
        assert answer.status_code == 200
        return dict(answer.json())

    async def faults(self, key: str | None = API_KEY, **changes: Any) -> httpx.Response:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return await self.client.put("/_engine/faults", json=changes, headers=headers)


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    env = {}
    for name, value in settings.items():
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["asgi", "uvicorn"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeEngine = Callable[..., Awaitable[Engine]]


def start_engine(settings: dict[str, Any], log_path: Path, *args: str) -> Server:
    """``cutproxy engine`` on a free loopback port, its settings in the environment."""
    return start(
        cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}", *args),
        port=free_port(),
        log_path=log_path,
        env=settings_env(settings),
        ready_path="/_engine/health",
    )


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One engine with the loopback defaults, for every test of a module that changes none.

    Tests on it compare counters before and after, and ``make_engine`` resets its faults.
    """
    tmp = tmp_path_factory.mktemp("shared-engine")
    server = start_engine({**LOOPBACK_SETTINGS, "data_dir": tmp / "data"}, tmp / "engine.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def make_engine(
    transport: str, tmp_path: Path, clock: Clock, request: pytest.FixtureRequest
) -> AsyncIterator[MakeEngine]:
    """Start engines with the given settings over the test's transport; stop them after."""
    servers: list[Server] = []
    clients: list[httpx.AsyncClient] = []

    async def make(**overrides: Any) -> Engine:
        data_dir = tmp_path / f"engine-{len(clients)}"
        if transport == "uvicorn" and not overrides:
            server: Server = request.getfixturevalue("shared_server")
            client = httpx.AsyncClient(base_url=server.url, timeout=30)
            clients.append(client)
            engine = Engine(
                client,
                EngineSettings.from_env({}, public_url=server.url, **LOOPBACK_SETTINGS),
                anyio.sleep,
                transport,
            )
            defaults = FaultState.from_settings(engine.settings).as_json()
            assert (await engine.faults(**defaults)).status_code == 200
            return engine
        if transport == "asgi":
            settings = EngineSettings.from_env(
                {}, data_dir=data_dir, public_url=ASGI_BASE, **{"api_key": API_KEY, **overrides}
            )
            app = create_engine_app(settings, clock=clock)
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ASGI_BASE)

            async def advance(seconds: float) -> None:
                clock.now += seconds

        else:
            values = {**LOOPBACK_SETTINGS, "data_dir": data_dir, **overrides}
            log_path = tmp_path / f"engine-{len(clients)}.log"
            server = await anyio.to_thread.run_sync(start_engine, values, log_path)
            servers.append(server)
            settings = EngineSettings.from_env({}, public_url=server.url, **values)
            client = httpx.AsyncClient(base_url=server.url, timeout=30)

            async def advance(seconds: float) -> None:
                await anyio.sleep(seconds)

        clients.append(client)
        return Engine(client, settings, advance, transport)

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()
        for server in servers:
            server.stop()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> Engine:
    return await make_engine()


@pytest.fixture
def asgi_engine_factory(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Engine]]:
    """In-process engines only: for tests about pixels or in-process behaviour."""
    clients: list[httpx.AsyncClient] = []

    def make(**overrides: Any) -> Engine:
        settings = EngineSettings.from_env(
            {},
            data_dir=tmp_path / f"engine-{len(clients)}",
            public_url=ASGI_BASE,
            **{"api_key": API_KEY, **overrides},
        )
        app = create_engine_app(settings, clock=clock)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ASGI_BASE)
        clients.append(client)

        async def advance(seconds: float) -> None:
            clock.now += seconds

        return Engine(client, settings, advance, "asgi")

    yield make


def elapsed(since: float) -> float:
    return time.perf_counter() - since
