"""Images: checking an upload, getting it to the upstream once, and keeping its original.

An upload is checked before anything is stored or spent (:mod:`proxy.images.checks`: type
sniffed from the bytes, size, decodable, not a decompression bomb), then sent to the upstream
with the seed's first request (a token for one small, cheap variant, then the processing
call with the image). The registry
keeps the ``unique_filename`` and the original's facts; the blob store keeps the bytes, by
SHA-256, so the variant service can upload them again when the upstream forgets them.

Changes to one image (and to one blob's owners) are serialised by
:class:`proxy.variants.coalesce.KeyedLock`: an in-process lock in front of the shared lease,
so the workers of a host (or, with Redis, the replicas) agree on who changes what.

In store mode (``store``) the seed's first request carries the image's master instead of the
small variant, so an upload and its master cost one mint; it is kept before the image is
registered. Replacing an image removes its old masters and kept variants; deleting it
removes all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio.to_thread

from proxy.guards.minter import Minter
from proxy.images.checks import Probe, check_size, inspect, sha256_hex
from proxy.settings import Settings
from proxy.stores.blobs import BlobStore
from proxy.stores.cache import TwoTierCache
from proxy.stores.leases import Lease
from proxy.stores.registry import ImageRecord, Registry, record_version
from proxy.upstream.client import UpstreamClient
from proxy.url.variant import image_prefix
from proxy.variants.coalesce import KeyedLock

if TYPE_CHECKING:  # imports pyvips: the app builds it in store mode only
    from proxy.variants.store_mode import StoreVariants

log = logging.getLogger("cutproxy.images")

# The seed's first request: one small, cheap variant whose only purpose is the upload.
UPLOAD_VARIANT = {
    "variant_name": "initial",
    "quality": "low",
    "max_resolution": 65_536,
    "format": "webp",
}


Outcome = Literal["created", "replaced", "unchanged"]


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    record: ImageRecord
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Removed:
    record: ImageRecord
    variants_dropped: int
    original_deleted: bool


class ImageService:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        upstream: UpstreamClient,
        blobs: BlobStore,
        cache: TwoTierCache,
        lease: Lease,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str], None] | None = None,
        minter: Minter | None = None,
        locks: KeyedLock | None = None,
        store: StoreVariants | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.upstream = upstream
        self.blobs = blobs
        self.cache = cache
        self.clock = clock
        # The variant service's lock and minter, so both services agree on who changes
        # an image and every upload's token is within the budget and on the books.
        self.locks = locks or KeyedLock(lease, ttl=settings.lease_ttl)
        self.minter = minter or Minter(upstream, clock=clock)
        # Told the id of every image whose bytes or mapping changed (the variant view).
        self._on_change = on_change
        self.store_mode = store  # store mode: masters and derived variants follow the image

    async def check(self, data: bytes) -> Probe:
        """Size, then type and decodability, off the event loop."""
        check_size(len(data), self.settings.max_upload_bytes)
        return await anyio.to_thread.run_sync(inspect, data, self.settings.max_input_pixels)

    async def store(
        self, image_id: str, data: bytes, *, checked: Probe | None = None, sha: str | None = None
    ) -> Stored:
        """Check ``data``, upload it unless these bytes are already ``image_id``, keep it.

        ``checked`` and ``sha`` let a caller that already checked and hashed skip the work.
        """
        checked = checked or await self.check(data)
        if sha is None:
            sha = await anyio.to_thread.run_sync(sha256_hex, data)
        unchanged = await self._unchanged(image_id, sha, data)
        if unchanged is not None:
            return unchanged
        # One upload of these bytes at a time: a concurrent store of the same bytes (this id
        # or another) waits here, then finds them registered, or live under a twin.
        async with self.locks.held(f"bytes:{sha}"):
            return await self._store_new(image_id, data, checked, sha)

    async def _unchanged(self, image_id: str, sha: str, data: bytes) -> Stored | None:
        existing = await self.registry.get(image_id)
        if existing is None or existing.sha256 != sha:
            return None
        await self._keep(sha, image_id, data)  # repairs a blob lost from the store
        return Stored(existing, "unchanged")

    async def _store_new(self, image_id: str, data: bytes, checked: Probe, sha: str) -> Stored:
        unchanged = await self._unchanged(image_id, sha, data)
        if unchanged is not None:
            return unchanged
        now = self.clock()
        twin = await self._live_twin(sha)
        if twin is not None:
            # The same bytes are live upstream under another id: share that upload, for free.
            unique_filename, uploaded_at = twin.unique_filename, twin.uploaded_at
        else:
            # Store mode: the upload's token orders the master, not a throwaway variant.
            first = (
                UPLOAD_VARIANT
                if self.store_mode is None
                else self.store_mode.upload_spec((checked.width, checked.height))
            )
            result = await self.minter.upload_original(
                [first],
                data,
                image_id=image_id,
                content_type=checked.content_type,
            )
            unique_filename, uploaded_at = result.unique_filename, self.clock()
        record = ImageRecord(
            image_id=image_id,
            unique_filename=unique_filename,
            width=checked.width,
            height=checked.height,
            content_type=checked.content_type,
            sha256=sha,
            size=len(data),
            uploaded_at=uploaded_at,
            registered_at=now,
        )
        if self.store_mode is not None:
            # Kept before the record is registered: no request can start a mint meanwhile.
            if twin is None:
                await self.store_mode.adopt_upload(record, result)
            else:
                await self.store_mode.adopt_twin(record, twin)
        async with self.locks.held(f"image:{image_id}"):
            current = await self.registry.get(image_id)
            if current is not None and current.sha256 == sha:
                return Stored(current, "unchanged")  # a concurrent upload of the same bytes
            await self._keep(sha, image_id, data)
            try:
                await self.registry.put(record)
            except BaseException:
                await self._release(sha, image_id)
                raise
            await self._retire(current, record)
        log.info("stored image %s (%s, %d bytes)", image_id, checked.content_type, len(data))
        return Stored(record, "replaced" if current is not None else "created")

    async def register(self, record: ImageRecord) -> Stored:
        """Map ``image_id`` to an upload made elsewhere (no original is kept)."""
        async with self.locks.held(f"image:{record.image_id}"):
            current = await self.registry.get(record.image_id)
            await self.registry.put(record)
            # A kept original has a content version, so this always retires it.
            if current is not None and record_version(current) != record_version(record):
                await self._retire(current, record)
        return Stored(record, "replaced" if current is not None else "created")

    async def upload(
        self,
        image_id: str,
        data: bytes,
        content_type: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> ImageRecord:
        """Store ``data`` under ``image_id`` (type and size come from the bytes themselves)."""
        return (await self.store(image_id, data)).record

    async def remove(self, image_id: str) -> Removed | None:
        """Forget an image: its mapping, its cached variants and, if unshared, its original."""
        async with self.locks.held(f"image:{image_id}"):
            record = await self.registry.get(image_id)
            if record is None:
                return None
            await self.registry.delete(image_id)
            dropped = await self.cache.delete_prefix(image_prefix(image_id))
            if self.store_mode is not None:
                dropped += await self.store_mode.remove(image_id)
            deleted = False
            if record.sha256:
                deleted = await self._release(record.sha256, image_id)
            self._changed(image_id)
        log.info("removed image %s", image_id)
        return Removed(record, dropped, deleted)

    async def original(self, record: ImageRecord) -> bytes | None:
        return None if record.sha256 is None else await self.blobs.get(record.sha256)

    # -- plumbing --------------------------------------------------------------------------
    async def _live_twin(self, sha: str) -> ImageRecord | None:
        """Another image with these bytes whose upload the upstream should still have."""
        for owner in await self.blobs.owners(sha):
            record = await self.registry.get(owner)
            if (
                record is not None
                and record.sha256 == sha
                and record.uploaded_at is not None
                and self.clock() - record.uploaded_at < self.settings.reupload_after
            ):
                return record
        return None

    async def _retire(self, previous: ImageRecord | None, current: ImageRecord) -> None:
        """After a replacement: drop the old variants (store mode: and the old masters)
        and, if unshared, the old original."""
        if previous is None:
            return
        await self.cache.delete_prefix(image_prefix(previous.image_id))
        if self.store_mode is not None:
            await self.store_mode.retire(current)
        if previous.sha256:
            await self._release(previous.sha256, previous.image_id)
        self._changed(previous.image_id)

    async def _keep(self, sha: str, owner: str, data: bytes) -> None:
        async with self.locks.held(f"blob:{sha}"):
            await self.blobs.link(sha, owner)
            await self.blobs.put(sha, data)

    async def _release(self, sha: str, owner: str) -> bool:
        """Drop ``owner``'s claim; delete the blob when nobody else has one."""
        async with self.locks.held(f"blob:{sha}"):
            if await self.blobs.unlink(sha, owner) == 0:
                return await self.blobs.delete(sha)
        return False

    def _changed(self, image_id: str) -> None:
        if self._on_change is not None:
            self._on_change(image_id)
