"""The engine app factory: assembles the parts, routes and error handlers. It decides nothing.

Both of BackgroundCut's hosts are served by this one app. Routes are relative to its root;
stats, health and faults also answer under ``/_engine/...``, the URLs they have in the proxy.

The proxy calls the whole app in process and mounts only :func:`public_engine_app` under
``/_engine`` on its port: output files, stats and health, and fault control behind the
proxy's admin token. Minting and processing never face strangers there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.engine.cutout import BorderCutout, Cutout
from proxy.engine.errors import EngineError
from proxy.engine.faults import Faults, FaultState, quiet_dropped_connections
from proxy.engine.handlers import EngineAPI, check_bearer
from proxy.engine.keys import with_api_key
from proxy.engine.ratelimit import ApiRateLimit
from proxy.engine.settings import EngineSettings
from proxy.engine.store import Store
from proxy.engine.tokens import TokenSigner

TOKEN_PATH = "/api/v3/remove-bg/token/"
PROCESS_PATH = "/v3/remove-bg/"


def create_engine_app(
    settings: EngineSettings,
    *,
    cutout: Cutout | None = None,
    clock: Callable[[], float] = time.time,
    chance: Callable[[], float] | None = None,
    reset_faults: bool = True,
) -> Starlette:
    """The local engine as an ASGI app.

    ``cutout`` replaces the built-in border-estimation remover; ``clock`` (wall-clock
    seconds) and ``chance`` (a uniform number in [0, 1) for ``error_rate``) are injectable for
    tests. ``reset_faults=False`` keeps the fault state found in the data dir (the CLI's
    worker processes use it, after the parent has reset it once).
    With no API key configured, the data dir's own (see :mod:`proxy.engine.keys`) is used.
    """
    settings = with_api_key(settings)
    store = Store(settings.data_dir, retention=settings.retention, clock=clock)
    faults = Faults(store, chance=chance)
    if reset_faults:
        faults.reset(FaultState.from_settings(settings))
    store.reset_balance(settings.starting_balance)
    rate_limit = None
    if settings.rate_limit_per_minute is not None:
        rate_limit = ApiRateLimit(settings.rate_limit_per_minute, store.cache, clock)
    api = EngineAPI(
        settings,
        store=store,
        signer=TokenSigner(
            store.signing_secret(settings.secret), ttl=settings.token_ttl, clock=clock
        ),
        cutout=cutout or BorderCutout(),
        faults=faults,
        rate_limit=rate_limit,
        render_limiter=anyio.CapacityLimiter(settings.render_threads or os.cpu_count() or 1),
    )
    quiet_dropped_connections()

    routes = [
        Route(TOKEN_PATH, api.mint, methods=["POST"]),
        Route(PROCESS_PATH, api.process, methods=["POST"]),
        Route("/files/{name}", api.serve_file, methods=["GET", "HEAD"]),
    ]
    for prefix in ("", "/_engine"):
        routes += [
            Route(f"{prefix}/stats", api.stats, methods=["GET"]),
            Route(f"{prefix}/health", api.health, methods=["GET", "HEAD"]),
            Route(f"{prefix}/faults", api.faults_endpoint, methods=["GET", "PUT"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    app = Starlette(
        routes=routes,
        exception_handlers={EngineError: api.engine_error, HTTPException: api.http_error},
        lifespan=lifespan,
    )
    # Starlette's trailing-slash redirect takes its host from the request: none here.
    app.router.redirect_slashes = False
    app.state.engine = api
    return app


def public_engine_app(engine: Starlette, *, faults_key: str | None) -> Starlette:
    """What the proxy's port shows of its embedded ``engine`` (the proxy mounts it).

    The output files its redirects point at, and the read-only stats and health. Fault
    control answers only to ``Bearer <faults_key>`` (the proxy's admin token), and is not
    routed at all without one. The token and processing endpoints are not here: the proxy
    reaches them in process.
    """
    api: EngineAPI = engine.state.engine
    routes = [
        Route("/files/{name}", api.serve_file, methods=["GET", "HEAD"]),
        Route("/stats", api.stats, methods=["GET"]),
        Route("/health", api.health, methods=["GET", "HEAD"]),
    ]
    if faults_key:
        key = faults_key

        async def faults(request: Request) -> Response:
            check_bearer(request.headers.get("authorization"), key, "admin token")
            return await api.fault_control(request)

        routes.append(Route("/faults", faults, methods=["GET", "PUT"]))
    app = Starlette(
        routes=routes,
        exception_handlers={EngineError: api.engine_error, HTTPException: api.http_error},
    )
    app.router.redirect_slashes = False
    return app
