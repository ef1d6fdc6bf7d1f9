"""Uploads the upstream forgot: the kept original uploaded again, once, with the wanted variants.

The upstream keeps an upload for 2 hours. A variant of an older image is minted on a fresh
upload of the original the proxy kept (:class:`proxy.stores.blobs.BlobStore`): before the
mint once the upload is ``PROXY_REUPLOAD_AFTER`` old, so no visitor waits for the upstream's
404, or after the upstream answered 404 all the same. The re-upload carries the wanted
variants (one token, one processing call) and is shared by every request (and worker) that
needs it: one flight per image in a process, the image's lease across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.errors import NotFoundError, UpstreamError, UpstreamGoneError
from proxy.guards.minter import Account, Minter
from proxy.settings import Settings
from proxy.stores.blobs import BlobStore
from proxy.stores.leases import Lease
from proxy.stores.registry import ImageRecord, Registry
from proxy.upstream.client import ProcessResult
from proxy.variants.coalesce import KeyedLock, SingleFlight, lead_or_follow

log = logging.getLogger("cutproxy.service")


@dataclass
class Reuploads:
    """Mints and processes a variant service's specs, uploading the original again if needed."""

    settings: Settings
    registry: Registry
    lease: Lease
    minter: Minter
    locks: KeyedLock  # the image's lock, shared with the image service
    blobs: BlobStore | None  # the kept originals; None: nothing can be uploaded again
    clock: Callable[[], float]
    on_reupload: Callable[[], None]  # a kept original was uploaded again (a metric)
    flight: SingleFlight

    async def process(
        self, record: ImageRecord, specs: list[dict[str, Any]], account: Account | None
    ) -> ProcessResult:
        """Mint and process ``specs`` for the image, uploading its original again if needed.

        An upload older than ``PROXY_REUPLOAD_AFTER`` is re-uploaded before the mint (so no
        visitor waits for the upstream's 404); a 404 from either call is healed the same way.
        Every token draws on ``account``.
        """
        if self._expired(record):
            record, result = await self._heal(record, specs, account)
            if result is not None:
                return result
        try:
            return await self._mint_and_process(record, specs, account)
        except UpstreamGoneError:
            if record.sha256 is None:
                raise _not_kept(record) from None
            log.info("upstream forgot the upload of %s; uploading it again", record.image_id)
        record, result = await self._heal(record, specs, account)
        if result is not None:
            return result
        return await self._mint_and_process(record, specs, account)

    async def _mint_and_process(
        self, record: ImageRecord, specs: list[dict[str, Any]], account: Account | None
    ) -> ProcessResult:
        return await self.minter.render(
            specs, unique_filename=record.unique_filename, account=account
        )

    def _expired(self, record: ImageRecord) -> bool:
        return (
            record.sha256 is not None
            and self.blobs is not None
            and record.uploaded_at is not None
            and self.clock() - record.uploaded_at >= self.settings.reupload_after
        )

    async def _heal(
        self, stale: ImageRecord, specs: list[dict[str, Any]], account: Account | None
    ) -> tuple[ImageRecord, ProcessResult | None]:
        """The image with a live upload, plus the outputs for ``specs`` if they came with it.

        One re-upload per image at a time: tasks of this worker join one flight, workers meet
        at the lease, and whoever arrives after it finished finds the fresh record instead.
        The re-upload's token draws on the ``account`` of the request that leads it.
        """
        if stale.sha256 is None or self.blobs is None:
            raise _not_kept(stale)
        key = f"reupload:{stale.image_id}"

        async def fresher() -> tuple[ImageRecord, ProcessResult | None] | None:
            current = await self.registry.get(stale.image_id)
            if current is None:
                raise NotFoundError(f"unknown image {stale.image_id!r}", code="unknown_image")
            if current.unique_filename != stale.unique_filename:
                return current, None
            return None

        async def shared() -> tuple[ImageRecord, ProcessResult | None]:
            return await lead_or_follow(
                self.lease,
                key,
                ttl=self.settings.lease_ttl,
                wait=self.settings.coalesce_wait,
                lead=lambda: self._reupload(stale, specs, account),
                check=fresher,
            )

        record, result = await self.flight.run(key, shared, wait=self.settings.coalesce_wait)
        wanted = {spec["variant_name"] for spec in specs}
        if result is not None and wanted <= result.output_urls.keys():
            return record, result
        return record, None

    async def _reupload(
        self, stale: ImageRecord, specs: list[dict[str, Any]], account: Account | None
    ) -> tuple[ImageRecord, ProcessResult]:
        assert stale.sha256 is not None and self.blobs is not None
        data = await self.blobs.get(stale.sha256)
        if data is None:
            raise UpstreamError(
                f"the upstream forgot image {stale.image_id!r} and its kept original is "
                "missing from the blob store (PROXY_BLOB_DIR): upload the image again",
                code="original_missing",
            )
        result = await self.minter.upload_original(
            specs,
            data,
            image_id=stale.image_id,
            content_type=stale.content_type,
            account=account,
        )
        uploaded_at = self.clock()
        fresh = stale.evolve(unique_filename=result.unique_filename, uploaded_at=uploaded_at)
        # Read, check and write under the image's lock: a delete, a replacement or a purge
        # (a new variants generation) that lands meanwhile is neither revived nor undone.
        async with self.locks.held(f"image:{stale.image_id}"):
            current = await self.registry.get(stale.image_id)
            if current is not None and current.sha256 == stale.sha256:
                # The same bytes (perhaps a new generation): they get the new upload.
                fresh = current.evolve(
                    unique_filename=result.unique_filename, uploaded_at=uploaded_at
                )
                await self.registry.put(fresh)
            else:
                log.info("image %s changed during its re-upload; left as it is", stale.image_id)
        self.on_reupload()
        log.info("re-uploaded the kept original of %s", stale.image_id)
        return fresh, result


def _not_kept(record: ImageRecord) -> UpstreamError:
    return UpstreamError(
        f"the upstream no longer has image {record.image_id!r} and the proxy keeps no original "
        "of it (it was registered by unique_filename alone): upload the image file again "
        f"(PUT /images/{record.image_id})",
        code="original_not_kept",
    )
