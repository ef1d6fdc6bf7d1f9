"""Store mode's object-store tiers, built from PROXY_STORE_*: what the app wires in.

    ObjectTiers.from_settings(settings, data_dir, lease)   None without PROXY_STORE_URL
    ObjectTiers.masters      LayeredMasterStore: local disk in front of the bucket
    ObjectTiers.variants     ObjectVariantTier: the third tier, below memory and disk
    ObjectTiers.start()      the bucket created when missing; unsent masters taken up
    ObjectTiers.close()      variants still queued flushed (briefly), retries stopped

Both tiers share one :class:`~proxy.stores.objects.ObjectStore` client and one
:class:`~proxy.stores.objects.Breaker`, so a store that is down is found once for both.

Start-up: a bucket the credentials may not read or create stops the process with a message
naming the settings to check (``ObjectStoreDeniedError``). A store that does not answer at
all does not: the replica serves what it keeps locally (misses that need the store answer
503) and a background task creates the bucket once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from proxy.settings import Settings
from proxy.stores.leases import Lease
from proxy.stores.masters import DiskMasterStore
from proxy.stores.object_masters import LayeredMasterStore, ObjectMasterStore
from proxy.stores.object_variants import ObjectVariantTier
from proxy.stores.objects import (
    RETRY_AFTER,
    Breaker,
    ObjectStore,
    ObjectStoreDeniedError,
    ObjectStoreUnavailableError,
)
from proxy.stores.objects_config import ObjectStoreConfig

log = logging.getLogger("cutproxy.objectstore")

BUCKET_RETRY_MAX = 30.0  # seconds: the ceiling of the bucket check's backoff at start-up


@dataclass
class ObjectTiers:
    store: ObjectStore
    masters: LayeredMasterStore
    variants: ObjectVariantTier
    breaker: Breaker
    _bucket_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, data_dir: Path, lease: Lease | None
    ) -> ObjectTiers | None:
        """The tiers on PROXY_STORE_*; None when PROXY_STORE_URL is unset. ``lease`` guards
        unsent masters across the fleet (Redis's lease with several replicas)."""
        config = ObjectStoreConfig.from_settings(settings)
        if config is None:
            return None
        store = ObjectStore(config)
        breaker = Breaker()
        masters = LayeredMasterStore(
            DiskMasterStore.under(data_dir),
            ObjectMasterStore(store),
            breaker=breaker,
            unsent_lease=lease,
        )
        return cls(store, masters, ObjectVariantTier(store, breaker=breaker), breaker)

    async def start(self) -> None:
        """Make sure the bucket is there, then take up the masters an earlier process left
        unsent. Raises only when the store refuses the credentials or the bucket."""
        try:
            await self.store.ensure_bucket()
        except ObjectStoreDeniedError:
            raise
        except ObjectStoreUnavailableError:
            log.error(
                "object store %s unreachable at start: serving what is kept locally; "
                "checking the bucket again in the background",
                self.store.config.url,
            )
            self.breaker.failed()
            self._bucket_task = asyncio.get_running_loop().create_task(self._ensure_later())
        await self.masters.start()

    async def _ensure_later(self) -> None:
        delay = RETRY_AFTER
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.ensure_bucket()
            except ObjectStoreDeniedError:
                return  # logged by the store, naming the settings to check
            except ObjectStoreUnavailableError:
                delay = min(delay * 2, BUCKET_RETRY_MAX)
                continue
            log.warning("object store %s reachable: bucket checked", self.store.config.url)
            return

    async def close(self) -> None:
        """Stop the background work (the tiers' own ``close`` is called by their owners:
        the variant tiers and the master service)."""
        task, self._bucket_task = self._bucket_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()
