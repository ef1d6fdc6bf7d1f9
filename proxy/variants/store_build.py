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
from proxy.stores.masters import DiskMasterStore, MasterStore
from proxy.stores.object_tiers import ObjectTiers
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
    disk tier under ``variants/``, the memory tiers per the ``PROXY_*_MB`` settings, and
    with ``PROXY_STORE_URL`` the object store behind them (masters durable there); the
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
    # PROXY_STORE_URL: masters in the bucket (local disk their cache), variants a third tier.
    objects = ObjectTiers.from_settings(settings, settings.data_dir, service.lease)
    master_store: MasterStore = (
        DiskMasterStore.under(settings.data_dir) if objects is None else objects.masters
    )
    lower = (disk,) if objects is None else (disk, objects.variants)
    store: StoreVariants

    async def render(record: ImageRecord, specs: list[dict[str, Any]]) -> ProcessResult:
        return await store.mint_master(record, specs, None)  # a caller with no client

    masters = MasterService(
        store=master_store,
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
        tiers=TieredVariants(MemoryBytes(settings.variant_memory_mb * mib), *lower),
        master_quality=settings.quality,
        clock=service.clock,
        wait=settings.coalesce_wait,
        events=events,
        **options,
    )
    if limiter is None:
        masters.limiter = deriver.limiter  # decodes count against the derivations' bound
    store = StoreVariants(service, deriver, settings, disk=disk, events=events, objects=objects)
    return store
