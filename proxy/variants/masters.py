"""Store mode's masters as the variants need them: found, or minted exactly once.

    MasterService.get(record, quality)             the decoded master: memory → disk → mint
    MasterService.adopt(record, quality, data)     an upload that carried its master
    MasterService.adopt_output(record, quality, result)   the same, downloading it first
    MasterService.prune(record)                    a replaced image's old masters
    MasterService.delete_image(image_id)           a deleted image's masters

Finding a master, in order:

1. the decoded-master cache (:class:`proxy.variants.derive.MasterCache`, bounded by decoded
   bytes): no I/O, no await;
2. this process's flight for that master: however many requests and sizes arrive at once,
   one task loads (or mints) it and the others await that task;
3. the master store (disk): read, then decoded in a worker thread under ``limiter``;
4. the lease across processes (:func:`proxy.variants.coalesce.lead_or_follow`): its holder
   mints ONE token with ONE variant, the master (a transparent PNG at the original's
   resolution, capped at ``max_pixels``), downloads it at once (the upstream deletes its
   outputs after 2 hours), checks it (a PNG, alpha, the size asked for) and writes it to the
   store atomically; the other workers poll the store until the file is there.

A master is keyed by the image id, its *content* version and the cut-out quality
(:class:`proxy.stores.masters.MasterKey`). The content version is the image's
``record_version`` without the variants generation: purging an image's variants derives
them again from the same master, it never pays for a new one. Replacing the image changes
the content version: the next request mints the new master, :meth:`MasterService.prune`
removes the old one.

The token is minted through ``render``, a callable ``(record, specs) -> ProcessResult``:
the variant service's mint-and-process, which re-uploads a kept original the upstream has
forgotten (the 404 path) and spends through the one guarded minter (budget, ledger).
:func:`render_with` builds the bare one (the minter alone, no re-upload) for tools and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.to_thread
import httpx

from proxy.errors import UpstreamError
from proxy.guards.minter import Minter
from proxy.stores.leases import Lease
from proxy.stores.masters import MasterKey, MasterStore
from proxy.stores.registry import VARIANTS_GENERATION, ImageRecord, record_version
from proxy.upstream import contract
from proxy.upstream.client import ProcessResult
from proxy.variants.coalesce import SingleFlight, lead_or_follow
from proxy.variants.derive import MAX_MASTER_PIXELS, Master, MasterCache
from proxy.variants.fetch import check_master, fetch_master

log = logging.getLogger("cutproxy.masters")

#: The master's ``variant_name`` in the token and in the upstream's ``output_urls``.
MASTER_VARIANT = "master"
#: Largest master download accepted: a 12 MP RGBA PNG is 48 MB raw, and zlib never grows
#: data by more than a fraction of a percent; past this it is not a master.
MASTER_MAX_BYTES = 64 * 1024 * 1024
DOWNLOAD_TIMEOUT = 120.0  # seconds for the whole download of one master

Render = Callable[[ImageRecord, list[dict[str, Any]]], Awaitable[ProcessResult]]


class MasterEvents(Protocol):
    """What the master service reports; metrics listen (masters minted, found, adopted)."""

    def master_found(self, source: str) -> None:
        """A master was needed and came from ``source``: memory (every request), or, once
        per load, disk, shared (another worker minted it) or minted (this worker paid)."""

    def master_adopted(self) -> None:
        """An upload carried its master: kept without a mint of its own."""


class NoMasterEvents:
    def master_found(self, source: str) -> None:
        pass

    def master_adopted(self) -> None:
        pass


def render_with(minter: Minter) -> Render:
    """The bare ``render``: mint and process through ``minter`` on the record's upload."""

    async def render(record: ImageRecord, specs: list[dict[str, Any]]) -> ProcessResult:
        return await minter.render(specs, unique_filename=record.unique_filename)

    return render


def content_version(record: ImageRecord) -> str:
    """The version of the image's content: ``record_version`` without the variants
    generation (a purge derives variants again; it does not buy a new master)."""
    extra = {k: v for k, v in record.extra.items() if k != VARIANTS_GENERATION}
    return record_version(record.evolve(extra=extra))


def master_size(original: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """The size of the master the upstream returns for a ``max_pixels`` budget: the largest
    with the original's aspect ratio and at most ``max_pixels`` pixels, never above the
    original (the contract's pixel-budget rule, :func:`proxy.upstream.contract.fit`); the
    check allows :data:`proxy.variants.fetch.SIZE_SLACK` for the upstream's own rounding."""
    return contract.fit(original, max_pixels)


def master_spec(
    original: tuple[int, int] | None, quality: str, max_pixels: int = MAX_MASTER_PIXELS
) -> dict[str, Any]:
    """The token's one output variant: a transparent PNG at the original's resolution,
    capped at ``max_pixels`` (no background colour, no autocrop)."""
    pixels = max_pixels if original is None else min(original[0] * original[1], max_pixels)
    return {
        "variant_name": MASTER_VARIANT,
        "format": "png",
        "quality": quality,
        "max_resolution": max(1, pixels),
    }


@dataclass
class MasterService:
    """The decoded master of an image version, minted at most once across the workers.

    ``max_pixels`` caps new masters (``PROXY_MASTER_MAX_PIXELS``); masters kept under an
    earlier cap are used as they are. ``limiter`` bounds the decodes running at once (share
    the derivations' limiter: both are CPU and memory). ``wait`` is how long a request waits
    for a master another task or worker is minting before a 503 (the work goes on).
    """

    store: MasterStore
    cache: MasterCache
    lease: Lease
    http: httpx.AsyncClient  # downloads the master from the upstream's output host
    render: Render
    max_pixels: int = MAX_MASTER_PIXELS
    max_bytes: int = MASTER_MAX_BYTES
    download_timeout: float = DOWNLOAD_TIMEOUT
    lease_ttl: float = 15.0
    wait: float = 60.0
    limiter: anyio.CapacityLimiter | None = None
    events: MasterEvents = field(default_factory=NoMasterEvents)
    flight: SingleFlight = field(default_factory=SingleFlight)

    def __post_init__(self) -> None:
        if not 1 <= self.max_pixels <= MAX_MASTER_PIXELS:
            raise ValueError(f"max_pixels must be 1..{MAX_MASTER_PIXELS}")

    def key(self, record: ImageRecord, quality: str) -> MasterKey:
        return MasterKey(record.image_id, content_version(record), quality)

    def spec(self, record: ImageRecord, quality: str) -> dict[str, Any]:
        """The output variant an upload carries to be mastered by its own token."""
        return master_spec(record.original_size, quality, self.max_pixels)

    def expected_size(self, record: ImageRecord) -> tuple[int, int] | None:
        original = record.original_size
        return None if original is None else master_size(original, self.max_pixels)

    def peek(self, record: ImageRecord, quality: str) -> Master | None:
        """The master if it is decoded in this process's memory (no I/O)."""
        return self.cache.get(_name(self.key(record, quality)))

    async def get(
        self, record: ImageRecord, quality: str, *, render: Render | None = None
    ) -> Master:
        """The image's master: from memory, else the store, else minted (once) and kept.

        ``render``: how this request would mint it, in place of the service's own (the
        variant service passes one that admits the request's client first); used only when
        this request leads the flight and wins the lease.
        """
        key = self.key(record, quality)
        name = _name(key)
        master = self.cache.get(name)
        if master is not None:
            self.events.master_found("memory")
            return master
        return await self.flight.run(
            name, lambda: self._find(record, key, render or self.render), wait=self.wait
        )

    async def adopt(self, record: ImageRecord, quality: str, data: bytes) -> Master:
        """Keep ``data``, the master an upload's own token made, as the image's master.

        Checked as a minted one is (a PNG with alpha, the expected size). Call it before the
        record is registered, so no request can start a mint of its own meanwhile.
        """
        key = self.key(record, quality)
        expected = self.expected_size(record)
        master = await anyio.to_thread.run_sync(
            lambda: check_master(data, expected_size=expected), limiter=self.limiter
        )
        await self.store.put(key, data)
        self.cache.put(_name(key), master)
        self.events.master_adopted()
        return master

    async def adopt_output(
        self, record: ImageRecord, quality: str, result: ProcessResult
    ) -> Master:
        """:meth:`adopt` the ``master`` output of an upload's processing answer."""
        data = await self._download(record, result)
        return await self.adopt(record, quality, data)

    async def prune(self, record: ImageRecord) -> int:
        """Remove the masters of the image's other content versions (after a replacement);
        how many there were."""
        current = content_version(record)
        removed = 0
        for key in await self.store.versions(record.image_id):
            if key.version != current:
                self.cache.discard(_name(key))
                removed += await self.store.delete(key)
        return removed

    async def delete_image(self, image_id: str) -> int:
        """Remove every master of a deleted image, kept and decoded; how many were kept.

        Other workers' decoded copies are unreachable (a request needs the image's record)
        and leave their caches as they are evicted.
        """
        keys = await self.store.versions(image_id)
        removed = await self.store.delete_image(image_id)
        for key in keys:
            self.cache.discard(_name(key))
        return removed

    # --- the work ---------------------------------------------------------------------------

    async def _find(self, record: ImageRecord, key: MasterKey, render: Render) -> Master:
        name = _name(key)
        master = self.cache.get(name)  # a flight that finished just before this one began
        if master is not None:
            self.events.master_found("memory")
            return master
        data = await self.store.get(key)
        source = "disk"
        if data is None:
            data, source = await self._mint_once(record, key, render)
        master = await self._decode(name, data)
        self.events.master_found(source)
        return master

    async def _mint_once(
        self, record: ImageRecord, key: MasterKey, render: Render
    ) -> tuple[bytes, str]:
        """Mint under the lease, or wait for the worker that holds it to store the master."""
        minted = False

        async def lead() -> bytes:
            nonlocal minted
            data = await self._mint(record, key, render)
            minted = True
            return data

        data = await lead_or_follow(
            self.lease,
            f"master:{_name(key)}",
            ttl=self.lease_ttl,
            wait=self.wait,
            lead=lead,
            check=lambda: self.store.get(key),
        )
        return data, "minted" if minted else "shared"

    async def _mint(self, record: ImageRecord, key: MasterKey, render: Render) -> bytes:
        result = await render(record, [self.spec(record, key.quality)])
        data = await self._download(record, result)
        await self.store.put(key, data)
        log.info("minted the master of %s (%s, %s)", key.image_id, key.version, key.quality)
        return data

    async def _download(self, record: ImageRecord, result: ProcessResult) -> bytes:
        url = result.output_urls.get(MASTER_VARIANT)
        if url is None:
            raise UpstreamError(f"upstream answer has no output for {MASTER_VARIANT!r}")
        return await fetch_master(
            self.http,
            url,
            expected_size=self.expected_size(record),
            max_bytes=self.max_bytes,
            timeout=self.download_timeout,
        )

    async def _decode(self, name: str, data: bytes) -> Master:
        # Stored masters are decoded under the upstream's own cap, not max_pixels: lowering
        # the setting must not make a master already paid for unusable.
        return await anyio.to_thread.run_sync(
            lambda: self.cache.get_or_decode(name, lambda: data), limiter=self.limiter
        )


def _name(key: MasterKey) -> str:
    """The master's name in the decoded-master cache, the flight and the lease."""
    return f"{key.image_id}/{key.filename}"
