"""The app factory: assembles routes, error handlers and a lifespan. It decides nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from proxy.embedded import EngineSettings, LocalEngine
from proxy.errors import ProxyError
from proxy.guards import misses as guards
from proxy.guards.misses import Guards, MissGuard
from proxy.images import demo
from proxy.images.service import ImageService
from proxy.ops import health
from proxy.ops.accesslog import AccessLog, note_upstream
from proxy.ops.metrics import Metrics
from proxy.serving import demo_page, handlers, images_api, purge, responses, srcset_api
from proxy.serving.cdn import Purger, add_tags, tagged
from proxy.serving.hitpath import HitPath
from proxy.settings import Settings
from proxy.state import AppState
from proxy.stores.blobs import DirectoryBlobStore
from proxy.stores.cache import DiskTier, MemoryTier, SharedTier, TwoTierCache
from proxy.stores.leases import DiskLease, Lease
from proxy.stores.redis import RedisStore
from proxy.stores.registry import DiskRegistry, Registry
from proxy.upstream.client import UpstreamClient, UpstreamConfig
from proxy.variants.service import VariantService

log = logging.getLogger("cutproxy")


def create_app(
    settings: Settings,
    *,
    engine_settings: EngineSettings | None = None,
    clock: Callable[[], float] = time.time,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    metrics_dir: Path | None = None,
) -> Starlette:
    engine = LocalEngine.start(settings, engine_settings) if settings.embedded_engine else None
    metrics = Metrics(multiprocess_path=metrics_dir)
    calls = health.UpstreamCalls(
        settings.ready_upstream_failures, settings.ready_failure_window, clock
    )
    state = build_state(
        settings,
        clock,
        engine,
        upstream_transport,
        metrics=metrics,
        on_call=calls.note,
    )
    readiness = health.Readiness(
        data_dir=settings.data_dir,
        shared=state.variants.cache.shared,
        probe_upstream=health.upstream_probe(
            state.upstream,
            engine.health_url if engine is not None else settings.token_url,
            embedded=engine is not None,
        ),
        timeout=settings.ready_timeout,
        cache_seconds=settings.ready_cache,
        requires_upstream=settings.ready_requires_upstream,
        clock=clock,
        calls=calls,
    )

    variant_route = Route(
        "/img/{image_id}/{size}/{filename}",
        handlers.Endpoint(handlers.variant),
        methods=["GET", "HEAD"],
    )
    routes: list[Route | Mount] = [
        variant_route,
        Route("/images", images_api.list_images, methods=["GET"]),
        Route("/images", images_api.post_image, methods=["POST"]),
        Route("/images/{image_id}", images_api.put_image, methods=["PUT"]),
        Route("/images/{image_id}", images_api.get_image, methods=["GET"]),
        Route("/images/{image_id}", images_api.delete_image, methods=["DELETE"]),
        Route("/images/{image_id}/warm", images_api.warm_image, methods=["POST"]),
        Route("/images/{image_id}/variants", purge.delete_variants, methods=["DELETE"]),
        Route("/srcset/{image_id}", tagged(srcset_api.srcset_markup), methods=["GET", "HEAD"]),
        Route("/health", handlers.health, methods=["GET", "HEAD"]),
        Route("/health/live", health.live, methods=["GET", "HEAD"]),
        Route("/health/ready", health.ready_endpoint(readiness), methods=["GET", "HEAD"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/admin/costs", guards.costs_endpoint, methods=["GET"]),
    ]
    if engine is not None:
        routes.append(Mount("/_engine", app=engine.public_app(faults_key=settings.admin_token)))
    if settings.demo:
        routes += demo_page.routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if engine is not None:
                await stack.enter_async_context(engine.lifespan())
            if state.redis is not None:
                memory, forget = state.variants.cache.memory, state.variants.forget
                await stack.enter_async_context(state.redis.invalidations(memory, forget))
            if settings.demo:
                await stack.enter_async_context(demo_registered(state))
            try:
                yield
            finally:
                await state.aclose()
                metrics.process_exited()

    app = ProxyApp(
        state,
        metrics,
        routes=routes,
        middleware=[
            Middleware(AccessLog, metrics=metrics),
        ],
        exception_handlers={
            ProxyError: _proxy_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    # A path off by a trailing slash is a 404, not Starlette's redirect: that one is
    # absolute, built from the request's Host header, so it could send clients anywhere.
    app.router.redirect_slashes = False
    app.state.proxy = state
    return app


class ProxyApp(Starlette):
    """Starlette, with the hit path (:mod:`proxy.hitpath`) in front of its whole stack."""

    def __init__(self, state: AppState, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hit_path = (state, metrics)

    def build_middleware_stack(self) -> ASGIApp:
        return HitPath(super().build_middleware_stack(), *self._hit_path)


def build_state(
    settings: Settings,
    clock: Callable[[], float],
    engine: LocalEngine | None,
    transport: httpx.AsyncBaseTransport | None,
    *,
    metrics: Metrics | None = None,
    on_call: Callable[[str, str, float], None] | None = None,
) -> AppState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if engine is not None:
        config = engine.upstream_config(settings)
        transport = transport or engine.transport()
    else:
        config = UpstreamConfig.from_settings(settings)
    metrics = metrics or Metrics()

    watcher = on_call

    def call_done(endpoint: str, outcome: str, seconds: float) -> None:
        metrics.upstream_call(endpoint, outcome, seconds)
        note_upstream(seconds)
        if watcher is not None:
            watcher(endpoint, outcome, seconds)

    upstream = UpstreamClient(
        config,
        transport=transport,
        on_call=call_done,
        on_mint=metrics.minted,
        on_ambiguous_mint=metrics.ambiguous_mint,
    )
    # PROXY_REDIS_URL: every replica shares Redis; else this host's workers share the disk.
    redis = RedisStore.from_settings(settings, clock) if settings.redis_url else None
    if redis is not None:
        redis.health.on_unavailable.append(metrics.shared_store_failed)
    registry: Registry
    shared: SharedTier
    lease: Lease
    if redis is not None:
        registry, shared, lease = redis.registry, redis.tier, redis.lease
    else:
        registry = DiskRegistry(settings.data_dir / "registry")
        shared = DiskTier(settings.data_dir / "cache", settings.disk_cache_size_mb, clock)
        lease = DiskLease(settings.data_dir / "leases")
    cache = TwoTierCache(MemoryTier(settings.memory_cache_size, clock), shared)
    metrics.name_shared_tier(shared)
    blobs = DirectoryBlobStore(settings.originals_dir)
    purger = Purger.from_settings(settings, registry=metrics.registry)
    variants = VariantService(
        settings=settings,
        cache=cache,
        registry=registry,
        lease=lease,
        upstream=upstream,
        clock=clock,
        blobs=blobs,
        events=metrics,
        guards=MissGuard.from_settings(
            settings, upstream=upstream, clock=clock, redis=redis, events=metrics
        ),
    )
    images = ImageService(
        settings=settings,
        registry=registry,
        upstream=upstream,
        blobs=blobs,
        cache=cache,
        lease=lease,
        clock=clock,
        on_change=_on_change(variants.forget, purger),
        minter=variants.minter,
        locks=variants.locks,
    )
    return AppState(
        settings,
        clock,
        registry,
        upstream,
        variants,
        images,
        redis=redis,
        guards=Guards.from_settings(settings),
        purger=purger,
    )


def _on_change(forget: Callable[[str], None], purger: Purger | None) -> Callable[[str], None]:
    """A replaced or deleted image: forget its version here, and purge the CDN's copies."""
    if purger is None:
        return forget

    def changed(image_id: str) -> None:
        forget(image_id)
        purger.notice(image_id)

    return changed


DEMO_RETRY_SECONDS = 2.0


@contextlib.asynccontextmanager
async def demo_registered(
    state: AppState, retry_every: float = DEMO_RETRY_SECONDS
) -> AsyncIterator[None]:
    """Register the demo before serving. With the store (Redis) or the upstream down, serve
    anyway, not ready (``/health/ready`` says why), and keep trying in the background."""
    retrying = None
    try:
        await register_demo(state)
    except ProxyError as exc:
        log.warning(
            "could not register the demo image yet (%s); serving without it, retrying every %gs",
            exc.message,
            retry_every,
        )
        retrying = asyncio.ensure_future(_register_demo_later(state, retry_every))
    try:
        yield
    finally:
        if retrying is not None:
            retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retrying


async def _register_demo_later(state: AppState, every: float) -> None:
    while True:
        await anyio.sleep(every)
        try:
            await register_demo(state)
            return
        except ProxyError:
            continue  # still down: the store's and the upstream's own logs say so


async def register_demo(state: AppState) -> None:
    """Upload the generated demo photo once; later starts (and other workers) find it there.

    The lock makes the workers starting together take turns, so only the first uploads.
    """
    async with state.images.locks.held(f"demo:{demo.DEMO_ID}"):
        if await state.registry.get(demo.DEMO_ID) is not None:
            return
        data = await anyio.to_thread.run_sync(demo.product_photo)
        await state.images.store(demo.DEMO_ID, data)
    log.info("registered the demo image as %r", demo.DEMO_ID)


def _max_age(request: Request) -> int:
    state: AppState = request.app.state.proxy
    return state.settings.error_max_age


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    # An error about an image (a 404 for a gone one, say) is purged with it too.
    return add_tags(request.scope, responses.error(exc, _max_age(request)))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    messages = {
        404: "no such route: variants live at /img/<image_id>/<w>x<h>/<bg>.<ext>",
        405: f"{request.method} is not allowed here",
    }
    body = {
        "error": codes.get(exc.status_code, "http_error"),
        "message": messages.get(exc.status_code, str(exc.detail)),
    }
    response = responses.json_error(exc.status_code, body, _max_age(request))
    if exc.headers:
        response.headers.update(exc.headers)
    return add_tags(request.scope, response)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
    body = {"error": "internal_error", "message": "the proxy failed unexpectedly; see its log"}
    return responses.json_error(500, body, 0)
