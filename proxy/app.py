"""The app factory: assembles routes, error handlers and a lifespan. It decides nothing.

Why a little over 400 lines: it assembles both modes (redirect and store, each with or
without Redis and an object store) and registers the demo image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from proxy.embedded import EngineSettings, LocalEngine
from proxy.errors import ProxyError
from proxy.guards.misses import MissGuard
from proxy.images import demo
from proxy.images.service import ImageService
from proxy.ops import health
from proxy.ops.accesslog import AccessLog, note_upstream
from proxy.ops.metrics import Metrics
from proxy.serving import handlers, responses
from proxy.serving.cdn import CachePolicy, Purger, tagged
from proxy.serving.costs_api import CostsAPI
from proxy.serving.demo_page import DemoPage
from proxy.serving.hitpath import HitPath
from proxy.serving.images_api import ImagesAPI
from proxy.serving.negotiation import Negotiation
from proxy.serving.presets_api import PresetsAPI
from proxy.serving.purge import Purge
from proxy.serving.srcset_api import SrcsetAPI
from proxy.serving.store_admin import StoreAdmin
from proxy.serving.variant_route import VariantEndpoint, describe
from proxy.setting_values import parse_networks
from proxy.settings import Settings
from proxy.stores.blobs import DirectoryBlobStore
from proxy.stores.cache import DiskTier, MemoryTier, SharedTier, TwoTierCache
from proxy.stores.leases import DiskLease, Lease
from proxy.stores.redis import RedisStore
from proxy.stores.registry import DiskRegistry, Registry
from proxy.upstream.client import UpstreamClient, UpstreamConfig
from proxy.url.decision import PRESET_ROUTE, ROUTE, Decider
from proxy.variants.service import VariantService

if TYPE_CHECKING:  # imports pyvips: loaded in store mode only (see _store_mode)
    from proxy.variants.store_mode import StoreVariants

log = logging.getLogger("cutproxy")


def create_app(
    settings: Settings,
    *,
    engine_settings: EngineSettings | None = None,
    clock: Callable[[], float] = time.time,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    metrics_dir: Path | None = None,
) -> ProxyApp:
    engine = LocalEngine.start(settings, engine_settings) if settings.embedded_engine else None
    metrics = Metrics(multiprocess_path=metrics_dir, store_mode=settings.store_mode)
    calls = health.UpstreamCalls(
        settings.ready_upstream_failures, settings.ready_failure_window, clock
    )
    services = build_state(
        settings,
        clock,
        engine,
        upstream_transport,
        metrics=metrics,
        on_call=calls.note,
    )
    variants, registry, store = services.variants, services.registry, services.store
    readiness = health.Readiness(
        data_dir=settings.data_dir,
        shared=variants.cache.shared,
        probe_upstream=health.upstream_probe(
            services.upstream,
            engine.health_url if engine is not None else settings.token_url,
            embedded=engine is not None,
        ),
        timeout=settings.ready_timeout,
        cache_seconds=settings.ready_cache,
        requires_upstream=settings.ready_requires_upstream,
        clock=clock,
        calls=calls,
    )

    # One decision per variant URL, asked by the hit path, the route, warm-up, srcset, demo.
    decider = Decider.from_settings(settings, describe)
    policy = CachePolicy.from_settings(settings)
    variant_endpoint = VariantEndpoint(
        decider,
        variants,
        Negotiation(
            policy,
            variants.viewed,
            registry,
            clock,
            autocrop=settings.autocrop,
            public_url=settings.public_url,
        ),
        trusted=parse_networks(settings.trusted_proxies),
        fallback_max_age=settings.fallback_max_age,
        error_max_age=settings.error_max_age,
        clock=clock,
        store=store,
    )
    images_api = ImagesAPI(
        settings,
        images=services.images,
        registry=registry,
        variants=variants,
        decider=decider,
        clock=clock,
        store=store,
    )
    presets_api = PresetsAPI(settings, decider=decider)
    srcset_api = SrcsetAPI(settings, registry=registry, decider=decider, clock=clock, store=store)
    purge = Purge(
        settings.admin_token, services.images, registry, variants, services.purger, store=store
    )
    costs = CostsAPI(settings.admin_token, variants.guards, store=store)
    store_admin = StoreAdmin(
        settings.admin_token, registry, store.objects if store is not None else None
    )
    routes: list[Route | Mount] = [
        Route(ROUTE, variant_endpoint, methods=["GET", "HEAD"]),
        Route(PRESET_ROUTE, variant_endpoint, methods=["GET", "HEAD"]),
        Route("/presets", presets_api.listing, methods=["GET", "HEAD"]),
        *images_api.routes(),
        Route("/images/{image_id}/variants", purge.delete_variants, methods=["DELETE"]),
        Route("/srcset/{image_id}", tagged(srcset_api.markup), methods=["GET", "HEAD"]),
        Route("/health", handlers.health, methods=["GET", "HEAD"]),
        Route("/health/live", health.live, methods=["GET", "HEAD"]),
        Route("/health/ready", health.ready_endpoint(readiness), methods=["GET", "HEAD"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/admin/costs", costs.costs, methods=["GET"]),
        Route("/admin/store/orphans", store_admin.orphans, methods=["GET", "DELETE"]),
    ]
    if engine is not None:
        routes.append(Mount("/_engine", app=engine.public_app(faults_key=settings.admin_token)))
    if settings.demo:
        demo_page = DemoPage(
            settings,
            registry=registry,
            variants=variants,
            decider=decider,
            clock=clock,
            store=store,
        )
        routes += demo_page.routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if engine is not None:
                await stack.enter_async_context(engine.lifespan())
            if services.redis is not None:
                memory, forget = variants.cache.memory, variants.forget
                await stack.enter_async_context(services.redis.invalidations(memory, forget))
            if store is not None:
                await store.start()  # PROXY_STORE_URL: the bucket, unsent masters
            if settings.demo:
                await stack.enter_async_context(demo_registered(services.images, registry))
            try:
                yield
            finally:
                await services.aclose()
                metrics.process_exited()

    def hit_path(app: ASGIApp) -> ASGIApp:
        return HitPath(
            app,
            decider=decider,
            # Memory hits: redirect mode's 302s, or store mode's bytes (and 304s).
            hit_output=variants.hit_output if store is None else None,
            hit_bytes=store.hit_bytes if store is not None else None,
            policy=policy,
            clock=clock,
            metrics=metrics,
        )

    app = ProxyApp(
        services,
        hit_path,
        routes=routes,
        middleware=[
            Middleware(AccessLog, metrics=metrics),
        ],
        exception_handlers=responses.error_handlers(settings.error_max_age),
        lifespan=lifespan,
    )
    # A path off by a trailing slash is a 404, not Starlette's redirect: that one is
    # absolute, built from the request's Host header, so it could send clients anywhere.
    app.router.redirect_slashes = False
    return app


class ProxyApp(Starlette):
    """Starlette, with the hit path (:mod:`proxy.serving.hitpath`) in front of its whole
    stack. ``services`` are what the factory built (for its lifespan, and for tests that look
    inside); no handler reaches them through the app."""

    def __init__(
        self, services: Services, hit_path: Callable[[ASGIApp], ASGIApp], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.services = services
        self._hit_path = hit_path

    def build_middleware_stack(self) -> ASGIApp:
        return self._hit_path(super().build_middleware_stack())


@dataclass
class Services:
    """The long-lived services the app factory built; the lifespan closes them."""

    settings: Settings
    clock: Callable[[], float]
    registry: Registry
    upstream: UpstreamClient
    variants: VariantService
    images: ImageService
    redis: RedisStore | None = None  # PROXY_REDIS_URL: the client the shared stores use
    purger: Purger | None = None  # PROXY_CDN_PURGE_URL: purges the CDN by surrogate key
    store: StoreVariants | None = None  # PROXY_MODE=store: masters, derived variants

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()
        await self.variants.flight.drain(timeout=self.settings.token_timeout)
        await self.upstream.aclose()
        await self.variants.cache.close()
        await self.variants.lease.close()
        await self.registry.close()
        if self.variants.guards is not None:
            await self.variants.guards.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self.purger is not None:
            await self.purger.aclose()


def build_state(
    settings: Settings,
    clock: Callable[[], float],
    engine: LocalEngine | None,
    transport: httpx.AsyncBaseTransport | None,
    *,
    metrics: Metrics | None = None,
    on_call: Callable[[str, str, float], None] | None = None,
) -> Services:
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
    store = _store_mode(settings, variants, engine, metrics) if settings.store_mode else None
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
        store=store,
    )
    return Services(
        settings,
        clock,
        registry,
        upstream,
        variants,
        images,
        redis=redis,
        purger=purger,
        store=store,
    )


def _store_mode(
    settings: Settings, variants: VariantService, engine: LocalEngine | None, metrics: Metrics
) -> StoreVariants:
    """Store mode's services; imported here only, so redirect mode never loads libvips."""
    from proxy.variants import store_build

    # Masters are downloaded from the upstream's output host (the embedded engine's files
    # are answered in this process); redirects are not followed past the host checked.
    transport = engine.output_transport() if engine is not None else None
    http = httpx.AsyncClient(transport=transport, follow_redirects=False)
    return store_build.build(variants, settings, http=http, events=metrics)


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
    images: ImageService, registry: Registry, retry_every: float = DEMO_RETRY_SECONDS
) -> AsyncIterator[None]:
    """Register the demo before serving. With the store (Redis) or the upstream down, serve
    anyway, not ready (``/health/ready`` says why), and keep trying in the background."""
    retrying = None
    try:
        await register_demo(images, registry)
    except ProxyError as exc:
        log.warning(
            "could not register the demo image yet (%s); serving without it, retrying every %gs",
            exc.message,
            retry_every,
        )
        retrying = asyncio.ensure_future(_register_demo_later(images, registry, retry_every))
    try:
        yield
    finally:
        if retrying is not None:
            retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retrying


async def _register_demo_later(images: ImageService, registry: Registry, every: float) -> None:
    while True:
        await anyio.sleep(every)
        try:
            await register_demo(images, registry)
            return
        except ProxyError:
            continue  # still down: the store's and the upstream's own logs say so


async def register_demo(images: ImageService, registry: Registry) -> None:
    """Upload the generated demo photo once; later starts (and other workers) find it there.

    The lock makes the workers starting together take turns, so only the first uploads.
    """
    async with images.locks.held(f"demo:{demo.DEMO_ID}"):
        if await registry.get(demo.DEMO_ID) is not None:
            return
        data = await anyio.to_thread.run_sync(demo.product_photo)
        await images.store(demo.DEMO_ID, data)
    log.info("registered the demo image as %r", demo.DEMO_ID)
