"""Store mode's variants: kept in tiers, else derived locally from the image's master.

    Deriver.variant_bytes(record, spec)   the variant: tiers → (master → derive → tiers)
    Deriver.resolve(record, spec, ...)    the same, with where it came from; the caller's
                                          admission (derive rate) and mint (its client)
    Deriver.peek(record, spec)            the hit path: memory only, no I/O, no await
    Deriver.delete_image(image_id)        every kept variant of the image, in every tier

A miss is single-flighted in this process (identical derivations share one task), gets the
master from :class:`proxy.variants.masters.MasterService` (memory, disk, or one mint for the
whole image), and derives in a worker thread under a :class:`anyio.CapacityLimiter`
(default: one per CPU), so derivations never run on the event loop and never more at once
than the cores can take. Once an image's master is kept, nothing here calls the upstream:
every variant is served, or derived and served, while the upstream is down. An evicted
variant is derived again from the master: no mint.

Across worker processes there is no lease: two workers missing the same variant at once
both derive it (milliseconds of CPU, not credits) and store the same bytes under the same
ETag (the hash of the bytes).

Keys (one per variant, the shape :class:`proxy.stores.derived.TieredVariants` expects)::

    /img/<image_id>/<w>x<h>/<fit>/<bg>.<fmt>#<profile>~<version>-<master quality>

- ``/img/<image_id>/`` first, so one prefix delete drops every variant of an image;
- ``profile``: 8 hex digits of a digest of the encoder settings that shape the bytes (the
  pipeline's revision, the format, its quality, png's zlib level, webp's and avif's effort):
  a change of any of them never serves bytes made under the old ones;
- ``version``: the image's ``record_version`` (its content, plus the variants generation
  that a purge bumps), so other workers stop finding a replaced or purged image's variants
  in their memory at once;
- ``master quality``: the cut-out quality of the master the variant was derived from.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.to_thread

from proxy.errors import BadRequestError
from proxy.stores.derived import StoredVariant, TieredVariants
from proxy.stores.registry import ImageRecord, record_version
from proxy.url.variant import image_prefix
from proxy.variants.coalesce import SingleFlight
from proxy.variants.derive import (
    ALPHA_FORMATS,
    AVIF_EFFORT,
    CONTENT_TYPES,
    FORMATS,
    PNG_COMPRESSION,
    TRANSPARENT,
    WEBP_EFFORT,
    Anchor,
    Fit,
    Format,
    Framing,
    output_size,
    placement,
)
from proxy.variants.derive import derive as derive_variant
from proxy.variants.masters import MasterService, Render

#: Bump when the derivation pipeline changes its output for the same settings: every kept
#: variant is then derived again (its key changes with the profile).
PIPELINE = 1
_HEX = re.compile(r"[0-9a-fA-F]{6}")

DeriveFunction = Callable[..., bytes]  # derive's: master, w, h, fit, bg, fmt, quality[, framing]


@dataclass(frozen=True, slots=True)
class DeriveSpec:
    """One variant to derive: the box, how the subject fills it, background, format, quality.

    ``bg`` is ``rrggbb`` or ``transparent`` (png, webp, avif); ``quality`` (1..100) is the
    jpg, webp and avif encoder quality (png is lossless and ignores it).
    """

    width: int
    height: int
    fit: Fit
    bg: str
    fmt: Format
    quality: int
    #: Framing (a preset's ``fill`` and ``anchor``): trim to the subject, then place it.
    fill: float | None = None
    anchor: Anchor = "center"

    @property
    def framing(self) -> Framing | None:
        return None if self.fill is None else Framing(self.fill, self.anchor)

    @property
    def frame_part(self) -> str:
        """The key's fit part: ``pad``, or with framing ``pad~0.85-bottom``."""
        if self.fill is None:
            return self.fit
        return f"{self.fit}~{self.fill:g}-{self.anchor}"

    def check(self) -> None:
        """A 400 for anything :func:`proxy.variants.derive.derive` would refuse, checked
        before the master is looked up (a bad request never costs a mint)."""
        framing = self.framing
        if framing is not None:
            framing.check()
        output_size((self.width, self.height), self.width, self.height, self.fit)  # box, fit
        if self.fmt not in FORMATS:
            raise BadRequestError(
                f"format must be one of {', '.join(FORMATS)}, got {self.fmt!r}", code="bad_format"
            )
        if not 1 <= self.quality <= 100:
            raise BadRequestError(f"quality must be 1..100, got {self.quality}", code="bad_quality")
        if self.bg == TRANSPARENT:
            if self.fmt not in ALPHA_FORMATS:
                raise BadRequestError(
                    f"{self.fmt} has no transparency: use png, webp or avif, or give a colour",
                    code="bad_background",
                )
        elif not _HEX.fullmatch(self.bg):
            raise BadRequestError(
                f"background must be rrggbb hex or transparent, got {self.bg!r}",
                code="bad_background",
            )

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]


def encoder_profile(fmt: str, quality: int) -> str:
    """The digest of what shapes a variant's bytes besides its image, size and background."""
    return _profile(fmt, None if fmt == "png" else quality)


@functools.lru_cache(maxsize=256)
def _profile(fmt: str, quality: int | None) -> str:
    raw = f"{PIPELINE}|{fmt}|{quality}|{PNG_COMPRESSION}|{WEBP_EFFORT}|{AVIF_EFFORT}"
    return hashlib.sha256(raw.encode()).hexdigest()[:8]


def variant_key(image_id: str, spec: DeriveSpec, version: str, master_quality: str) -> str:
    """The variant's key in the tiers (the shape is in this module's docstring)."""
    return (
        f"{image_prefix(image_id)}{spec.width}x{spec.height}/{spec.frame_part}/{spec.bg.lower()}."
        f"{spec.fmt}#{encoder_profile(spec.fmt, spec.quality)}~{version}-{master_quality}"
    )


class DeriveEvents(Protocol):
    """What the deriver reports; metrics listen (variants derived, where hits came from)."""

    def variant_found(self, tier: str) -> None:
        """A request's variant was kept in ``tier`` (memory, disk, ...)."""

    def variant_derived(self, seconds: float) -> None:
        """A variant was derived, taking ``seconds`` of a worker thread (limiter wait not
        included)."""


class NoDeriveEvents:
    def variant_found(self, tier: str) -> None:
        pass

    def variant_derived(self, seconds: float) -> None:
        pass


def default_limiter() -> anyio.CapacityLimiter:
    """One derivation per CPU: each already uses libvips' own threads for its resize."""
    return anyio.CapacityLimiter(os.cpu_count() or 1)


@dataclass
class Deriver:
    """Variants from the tiers, else derived from the master and kept.

    ``master_quality`` is the cut-out quality masters are minted at (``PROXY_QUALITY``).
    ``limiter`` bounds the derivations running at once; give the master service the same
    one, so decoding a master counts against it too. ``wait`` is how long a request waits
    for an identical derivation (or its master's mint) before a 503; the work goes on.
    """

    masters: MasterService
    tiers: TieredVariants
    master_quality: str
    limiter: anyio.CapacityLimiter = field(default_factory=default_limiter)
    derive: DeriveFunction = derive_variant
    clock: Callable[[], float] = time.time
    wait: float = 60.0
    events: DeriveEvents = field(default_factory=NoDeriveEvents)
    flight: SingleFlight = field(default_factory=SingleFlight)

    def key(self, record: ImageRecord, spec: DeriveSpec) -> str:
        return variant_key(record.image_id, spec, record_version(record), self.master_quality)

    def peek(self, record: ImageRecord, spec: DeriveSpec) -> StoredVariant | None:
        """The hit path: the variant if it is in this process's memory tier, else None."""
        variant = self.tiers.peek(self.key(record, spec))
        if variant is not None:
            self.events.variant_found(self.tiers.memory.name)
        return variant

    async def variant_bytes(self, record: ImageRecord, spec: DeriveSpec) -> StoredVariant:
        """The variant, from a tier, or derived from the image's master (minted if need be,
        once) and kept in the tiers. A bad ``spec`` is a 400 before anything is looked up."""
        variant, _tier = await self.resolve(record, spec)
        return variant

    async def resolve(
        self,
        record: ImageRecord,
        spec: DeriveSpec,
        *,
        admit: Callable[[], Awaitable[None]] | None = None,
        render: Render | None = None,
    ) -> tuple[StoredVariant, str]:
        """:meth:`variant_bytes`, and where the variant came from: a tier's name (memory,
        disk), ``derived`` (this request's derivation) or ``coalesced`` (an identical one
        in flight).

        ``admit`` runs in the derivation this request leads, once its master is in hand
        (not for a tier hit, for joining one in flight, nor for a master that could not be
        had): the client's derive rate, raising to refuse. Requests that joined get the
        refusal too, naming the leader's client, so others lead anew.
        ``render`` mints the master if this request is the one that has to
        (:meth:`MasterService.get`).
        """
        spec.check()
        key = self.key(record, spec)
        hit = await self.tiers.find(key)
        if hit is not None:
            self.events.variant_found(hit.tier)
            return hit.variant, hit.tier
        joined = self.flight.joined(key)
        variant = await self.flight.run(
            key, lambda: self._derive(record, spec, key, render, admit), wait=self.wait
        )
        return variant, "coalesced" if joined else "derived"

    async def delete_image(self, image_id: str) -> int:
        """Drop every kept variant of the image from every tier; how many entries went.

        Other workers' memory keeps its copies until evicted: unreachable, since a deleted
        image has no record to look them up with, and a replaced one has a new version.
        """
        return await self.tiers.delete_prefix(image_prefix(image_id))

    async def _derive(
        self,
        record: ImageRecord,
        spec: DeriveSpec,
        key: str,
        render: Render | None = None,
        admit: Callable[[], Awaitable[None]] | None = None,
    ) -> StoredVariant:
        kept = self.tiers.peek(key)  # a flight that finished just before this one began
        if kept is not None:
            self.events.variant_found(self.tiers.memory.name)
            return kept
        master = await self.masters.get(record, self.master_quality, render=render)
        if admit is not None:  # charged only to the leader, and only for work it can do
            await admit()

        framing = spec.framing
        # Framing is passed only when asked for: a derive function without it still fits.
        options = {} if framing is None else {"framing": framing}

        def work() -> tuple[bytes, tuple[int, int], float]:
            started = time.perf_counter()
            data = self.derive(
                master,
                spec.width,
                spec.height,
                spec.fit,
                spec.bg.lower(),
                spec.fmt,
                spec.quality,
                **options,
            )
            if framing is None:
                size = output_size(master.size, spec.width, spec.height, spec.fit)
            else:  # contain's frame depends on the subject's box
                size = placement(master, spec.width, spec.height, spec.fit, framing).frame
            return data, size, time.perf_counter() - started

        data, (width, height), seconds = await anyio.to_thread.run_sync(work, limiter=self.limiter)
        variant = StoredVariant.of(data, spec.content_type, width, height, self.clock())
        await self.tiers.put(key, variant)
        self.events.variant_derived(seconds)
        return variant
