"""Store mode's variant service: every variant's bytes, derived from one master per image.

    StoreVariants.peek(variant)              the hit path: memory only, no I/O, no await
    StoreVariants.hit(variant)               the same, counted as a memory hit
    StoreVariants.hit_bytes(variant)         hit's bytes alone: the raw-ASGI hit path's
    StoreVariants.resolve(variant, client)   memory → disk → derived (→ the master: minted once)
    StoreVariants.warm(record, variants)     the master minted if missing, the variants derived
    StoreVariants.upload_spec / adopt_upload / adopt_twin / retire / remove
                                             the image service's side: an upload's token
                                             carries the master; a replacement or a delete
                                             takes the old masters and variants with it

It sits on the redirect-mode :class:`~proxy.variants.service.VariantService` for what both
modes share: the image view (records trusted for ``PROXY_IMAGE_VIEW_TTL``, the hit path's
source of versions), the guards and the one minter, and the re-upload of originals the
upstream forgot. The master is minted through that re-upload path
(:meth:`proxy.variants.reupload.Reuploads.process`), admitted like a redirect-mode miss: the
client's miss rate, then the credit budget at the master's price. Derivations cost CPU, not
credits: they are limited per client by ``PROXY_CLIENT_DERIVE_RATE`` (429), charged to the
request that leads one once its master is in hand; hits and waits for an identical
derivation in flight are free.

The order of a request::

    view (record) → memory tier (no I/O) → disk tier → single flight
      → master: memory → disk → lease → miss rate → budget → mint (+ re-upload) → download
      → the leader's derive rate → derive (worker thread, limiter) → tiers

What a URL asks for (its spec, the size served) is :mod:`proxy.variants.store_specs`; the
services' assembly on ``PROXY_DATA_DIR`` is :mod:`proxy.variants.store_build`. pyvips is
imported with these modules only: the app imports them in store mode alone.

Why a little over 400 lines: the order of a request above, with its retries when an image
changes or another client's mint is refused, is read in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import MissRefusedError, NotFoundError, ProxyError, ServiceUnavailableError
from proxy.guards.budget import estimate_credits
from proxy.settings import Settings
from proxy.stores.derived import DiskBytes, StoredVariant
from proxy.stores.masters import MasterKey
from proxy.stores.object_tiers import ObjectTiers
from proxy.stores.object_variants import public_url
from proxy.stores.registry import ImageRecord
from proxy.upstream.client import ProcessResult
from proxy.url.variant import Variant
from proxy.variants.derivation import Deriver, DeriveSpec
from proxy.variants.masters import (
    MasterService,
    Render,
    content_version,
    master_spec,
)
from proxy.variants.service import VariantService
from proxy.variants.store_specs import variant_spec

log = logging.getLogger("cutproxy.store")

# A request whose master mint was refused for another client leads anew; one whose view of
# the image was a replacement behind reads it again: a few times at most.
_JOIN_ATTEMPTS = 3
IMAGE_CHANGED = "image_changed"
#: Tier keys the hit path remembers per variant (and the image's record it was built for).
KEYS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Delivered:
    """A variant's bytes and where they came from (for logs, metrics, headers)."""

    variant: StoredVariant
    tier: str  # memory | disk | derived | coalesced


@dataclass(frozen=True, slots=True)
class Warmed:
    """What a warm-up did: the master (minted now or kept), the variants derived or kept."""

    minted: bool
    credits: float
    derived: list[str]
    kept: list[str]


class StoreEvents(Protocol):
    """What store mode reports besides the master's and the deriver's own events."""

    def resolved(self, tier: str) -> None:
        """A request got its bytes from ``tier`` (memory, disk, derived, coalesced)."""

    def master_minted(self) -> None:
        """A master was paid for: minted for a request or a warm-up, or by an upload."""

    def bytes_kept(self, tier: str, nbytes: int) -> None:
        """The variants' bytes now kept in ``tier`` (memory: this worker's; disk: the host's)."""


class NoStoreEvents:
    def resolved(self, tier: str) -> None:
        pass

    def master_minted(self) -> None:
        pass

    def bytes_kept(self, tier: str, nbytes: int) -> None:
        pass


@dataclass
class StoreVariants:
    """Variants' bytes in store mode (see the module's docstring for the order)."""

    service: VariantService
    deriver: Deriver
    settings: Settings
    disk: DiskBytes | None = None  # the disk tier, for the bytes kept (metrics, costs)
    events: StoreEvents = field(default_factory=NoStoreEvents)
    objects: ObjectTiers | None = None  # PROXY_STORE_URL: masters and variants in a bucket
    # id(variant) -> (variant, record, tier key): both held, so neither id is reused meanwhile
    _keys: dict[int, tuple[Variant, ImageRecord, str]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def masters(self) -> MasterService:
        return self.deriver.masters

    @property
    def quality(self) -> str:
        """The cut-out quality masters are minted at (``PROXY_QUALITY``)."""
        return self.deriver.master_quality

    def spec(self, variant: Variant) -> DeriveSpec:
        return variant_spec(variant, self.settings)

    # --- the hit path ---------------------------------------------------------------------

    def peek(self, variant: Variant) -> StoredVariant | None:
        """The variant's bytes if this worker keeps them in memory, for the image's current
        version (as this worker sees it); None otherwise. No I/O, no await, not counted."""
        record = self.service.view(variant.image_id)
        if record is None:
            return None
        # The decider hands the hit path one Variant per path, and the view one record per
        # image version: while both are the same objects, so is the key (a third of a hit).
        memo = self._keys.get(id(variant))
        if memo is not None and memo[0] is variant and memo[1] is record:
            key = memo[2]
        else:
            key = self.deriver.key(record, self.spec(variant))
            if len(self._keys) >= KEYS_KEPT:
                self._keys.clear()
            self._keys[id(variant)] = (variant, record, key)
        return self.deriver.tiers.peek(key)

    def hit(self, variant: Variant) -> Delivered | None:
        """:meth:`peek`, counted as a memory hit; None on a miss (nothing counted)."""
        stored = self.hit_bytes(variant)
        return None if stored is None else Delivered(stored, "memory")

    def hit_bytes(self, variant: Variant) -> StoredVariant | None:
        """:meth:`hit`'s bytes alone, for the hit path (:mod:`proxy.serving.hitpath`); None
        also when the answer is a redirect to the bytes' durable copy (the stack's)."""
        stored = self.peek(variant)
        if stored is None or (self.objects is not None and self.durable_url(stored)):
            return None
        self.events.resolved("memory")
        return stored

    # --- a request ------------------------------------------------------------------------

    async def resolve(self, variant: Variant, client: str | None = None) -> Delivered:
        """The variant's bytes. ``client`` (an address) is charged for the derivation it
        causes (derive rate) and for the master's mint if it leads one (miss rate, budget)."""
        spec = self.spec(variant)
        guards = self.service.guards

        async def admit() -> None:
            if guards is not None:
                await guards.admit_derivation(client)

        attempt = 0
        while True:
            attempt += 1
            record = await self.service.record(variant.image_id)
            kept = self.deriver.tiers.peek(self.deriver.key(record, spec))
            if kept is not None:
                self.events.resolved("memory")
                return Delivered(kept, "memory")
            try:
                stored, tier = await self.deriver.resolve(
                    record, spec, admit=admit, render=self._render_for(client)
                )
                break
            except MissRefusedError as refused:
                # The mint this request waited for was refused for *its* client: lead anew.
                if refused.client not in (None, client) and attempt < _JOIN_ATTEMPTS:
                    continue
                if guards is not None and refused.reason != "derive_rate":
                    guards.events.miss_refused(refused.reason, "429")
                raise
            except ServiceUnavailableError as busy:
                # The image was replaced after this worker last read it: read it again.
                if busy.code == IMAGE_CHANGED and attempt < _JOIN_ATTEMPTS:
                    continue
                raise
        if tier == "derived":
            await self._derived(record, variant)
        self.events.resolved(tier)
        return Delivered(stored, tier)

    def _render_for(self, client: str | None) -> Render:
        async def render(record: ImageRecord, specs: list[dict[str, Any]]) -> ProcessResult:
            return await self.mint_master(record, specs, client)

        return render

    async def mint_master(
        self, record: ImageRecord, specs: list[dict[str, Any]], client: str | None
    ) -> ProcessResult:
        """The master's token: admitted (the client's miss rate, the budget at its price),
        minted through the re-upload path, counted. Only for the image's current content:
        a worker whose view is a moment old must not buy a replaced image's master."""
        service = self.service
        current = await service.registry.get(record.image_id)
        if current is None:
            service.forget(record.image_id)
            raise NotFoundError(f"unknown image {record.image_id!r}", code="unknown_image")
        if content_version(current) != content_version(record):
            service.forget(record.image_id)  # the retry reads the new record
            raise ServiceUnavailableError(
                "the image was replaced a moment ago; retry", code=IMAGE_CHANGED, retry_after=1
            )
        guards = service.guards
        if guards is None:
            result = await service.uploads.process(current, specs, None)
        else:
            reservation = await guards.admit(client, estimate_credits(specs))
            async with service.minter.paying([reservation]) as account:
                result = await service.uploads.process(current, specs, account)
        await self._counted(masters_minted=1)
        self.events.master_minted()
        return result

    async def _derived(self, record: ImageRecord, variant: Variant) -> None:
        """A derivation this request caused: on the books with what redirect mode would
        have paid to mint the variant, and the bytes now kept."""
        guards = self.service.guards
        saved = guards.price(record, [variant]) if guards is not None else 0.0
        await self._counted(variants_derived=1, saved_by_store_mode=saved)
        await self._report_kept()

    async def _counted(self, **amounts: Any) -> None:
        guards = self.service.guards
        if guards is None or guards.minter.ledger is None:
            return
        try:
            await guards.minter.ledger.record_store(**amounts)
        except ProxyError as exc:  # the shared store is down: the books lose one entry
            log.warning("could not record store mode's totals: %s", exc.message)

    # --- warm-up --------------------------------------------------------------------------

    async def warm(self, record: ImageRecord, variants: Sequence[Variant]) -> Warmed:
        """Mint the image's master if no worker keeps it (within the budget; a warm-up has
        no client rate), then derive each variant not kept yet."""
        minted = False
        credits = 0.0

        async def render(current: ImageRecord, specs: list[dict[str, Any]]) -> ProcessResult:
            nonlocal minted, credits
            result = await self.mint_master(current, specs, None)
            minted, credits = True, estimate_credits(specs)
            return result

        await self.masters.get(record, self.quality, render=render)
        derived: list[str] = []
        kept: list[str] = []
        for variant in variants:
            _, tier = await self.deriver.resolve(record, self.spec(variant), render=render)
            if tier == "derived":
                await self._derived(record, variant)
            (kept if tier in ("memory", "disk") else derived).append(variant.path)
        return Warmed(minted, credits, derived, kept)

    # --- the image service's side ---------------------------------------------------------

    def upload_spec(self, original: tuple[int, int]) -> dict[str, Any]:
        """The output variant an upload's token carries: the master, so the upload and the
        master cost one mint."""
        return master_spec(original, self.quality, self.masters.max_pixels)

    async def adopt_upload(self, record: ImageRecord, result: ProcessResult) -> None:
        """Keep the master an upload's token made (call it before the record is registered).

        A master that fails to arrive is logged, not raised: the upload stands, and the
        image's first request mints the master instead.
        """
        await self._counted(masters_minted=1)
        self.events.master_minted()
        try:
            await self.masters.adopt_output(record, self.quality, result)
        except ProxyError as exc:
            log.warning(
                "the master of %s did not arrive with its upload (%s); the first request mints it",
                record.image_id,
                exc.message,
            )

    async def adopt_twin(self, record: ImageRecord, twin: ImageRecord) -> bool:
        """An upload of bytes another image already has: keep a copy of that image's master
        (the same content, so the same master); whether there was one."""
        key = MasterKey(twin.image_id, content_version(twin), self.quality)
        data = await self.masters.store.get(key)
        if data is None:
            return False
        try:
            await self.masters.adopt(record, self.quality, data)
        except ProxyError as exc:
            log.warning("could not copy the master of %s: %s", twin.image_id, exc.message)
            return False
        return True

    async def retire(self, record: ImageRecord) -> int:
        """After a replacement (``record`` is the new one): the old masters removed, every
        kept variant of the image dropped (new ones are derived from the new master); how
        many variants went."""
        await self.masters.prune(record)
        dropped = await self.deriver.delete_image(record.image_id)
        await self._report_kept()
        return dropped

    async def remove(self, image_id: str) -> int:
        """A deleted image: its masters and every kept variant removed; how many variants."""
        await self.masters.delete_image(image_id)
        dropped = await self.deriver.delete_image(image_id)
        await self._report_kept()
        return dropped

    async def drop_variants(self, image_id: str) -> int:
        """A purge (``DELETE /images/{id}/variants``): every kept variant dropped; the master
        stays, so they are derived again, never minted."""
        dropped = await self.deriver.delete_image(image_id)
        await self._report_kept()
        return dropped

    # --- what is kept ---------------------------------------------------------------------

    async def kept_bytes(self) -> dict[str, int]:
        """Variants' bytes kept: this worker's memory, and the host's disk."""
        kept = {"memory": self.deriver.tiers.memory.usage().nbytes}
        if self.disk is not None:
            kept["disk"] = (await self.disk.usage()).nbytes
        return kept

    async def _report_kept(self) -> None:
        try:
            kept = await self.kept_bytes()
        except Exception as exc:  # a metric only: never fail a request for it
            log.warning("could not read the variants' bytes kept: %s", type(exc).__name__)
            return
        for tier, nbytes in kept.items():
            self.events.bytes_kept(tier, nbytes)

    async def costs(self) -> dict[str, Any]:
        """Store mode's part of ``/admin/costs``."""
        guards = self.service.guards
        ledger = guards.minter.ledger if guards is not None else None
        totals: dict[str, Any] = (
            await ledger.store_snapshot()
            if ledger is not None
            else {"masters_minted": 0, "variants_derived": 0, "saved_by_store_mode": 0.0}
        )
        kept = await self.kept_bytes()
        return {
            **totals,
            "bytes_kept": sum(kept.values()),
            "bytes_kept_by_tier": kept,
            "mode": "store",
        }

    def durable_url(self, stored: StoredVariant) -> str | None:
        """With PROXY_STORE_PUBLIC_URL: where anyone can fetch these bytes from the object
        store, if they are known to be there; else None (the bytes are served)."""
        base = self.settings.store_public_url
        if base is None or self.objects is None:
            return None
        key = self.objects.variants.stored_as(stored.etag)
        return None if key is None else public_url(base, key)

    async def start(self) -> None:
        """The lifespan's start: the object store's bucket and background work, if any."""
        if self.objects is not None:
            await self.objects.start()

    async def aclose(self) -> None:
        await self.masters.flight.drain(timeout=self.settings.coalesce_wait)
        await self.deriver.flight.drain(timeout=self.settings.coalesce_wait)
        await self.deriver.tiers.close()
        await self.masters.store.close()
        await self.masters.http.aclose()
        if self.objects is not None:
            await self.objects.close()
