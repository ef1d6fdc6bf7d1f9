"""Store mode's services assembled on ``PROXY_DATA_DIR``: the master service, the deriver
and its tiers, and :class:`~proxy.variants.store_mode.StoreVariants` on top (the app factory
calls :func:`build` in store mode only).

pyvips is imported with this module (through the services): store mode only.
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio
import httpx

from proxy.settings import Settings
from proxy.stores.derived import DiskBytes, MemoryBytes, TieredVariants
from proxy.stores.masters import DiskMasterStore
from proxy.stores.registry import ImageRecord
from proxy.upstream.client import ProcessResult
from proxy.variants.derivation import DeriveEvents, Deriver
from proxy.variants.derive import MasterCache
from proxy.variants.masters import MasterEvents, MasterService
from proxy.variants.service import VariantService
from proxy.variants.store_mode import StoreEvents, StoreVariants


class Events(MasterEvents, DeriveEvents, StoreEvents, Protocol):
    """Everything store mode reports (:class:`proxy.ops.metrics.Metrics` listens)."""


def build(
    service: VariantService,
    settings: Settings,
    *,
    http: httpx.AsyncClient,
    events: Events,
    limiter: anyio.CapacityLimiter | None = None,
) -> StoreVariants:
    """Store mode's services on ``PROXY_DATA_DIR``: masters under ``masters/``, variants'
    disk tier under ``variants/``, the memory tiers per the ``PROXY_*_MB`` settings; the
    master minted through ``service``'s guarded, re-uploading mint. ``events`` listens to
    all of them (the app's metrics). ``limiter`` bounds derivations and decodes together."""
    mib = 1024 * 1024
    if limiter is None:
        limiter = (
            anyio.CapacityLimiter(settings.derive_concurrency)
            if settings.derive_concurrency
            else None
        )
    disk = DiskBytes(settings.data_dir / "variants", settings.variant_disk_mb * mib)
    disk.create()
    store: StoreVariants

    async def render(record: ImageRecord, specs: list[dict[str, Any]]) -> ProcessResult:
        return await store.mint_master(record, specs, None)  # a caller with no client

    masters = MasterService(
        store=DiskMasterStore.under(settings.data_dir),
        cache=MasterCache(settings.master_cache_mb * mib),
        lease=service.lease,
        http=http,
        render=render,
        max_pixels=settings.master_max_pixels,
        lease_ttl=settings.lease_ttl,
        wait=settings.coalesce_wait,
        limiter=limiter,
        events=events,
    )
    options: dict[str, Any] = {} if limiter is None else {"limiter": limiter}
    deriver = Deriver(
        masters=masters,
        tiers=TieredVariants(MemoryBytes(settings.variant_memory_mb * mib), disk),
        master_quality=settings.quality,
        clock=service.clock,
        wait=settings.coalesce_wait,
        events=events,
        **options,
    )
    if limiter is None:
        masters.limiter = deriver.limiter  # decodes count against the derivations' bound
    store = StoreVariants(service, deriver, settings, disk=disk, events=events)
    return store
