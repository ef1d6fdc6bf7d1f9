"""Store mode's placeholders for JSON answers: a variant's ThumbHash and dominant colour.

A variant's JSON answer computes it from the variant's own bytes
(:func:`proxy.variants.placeholder.placeholder`), which it has at hand anyway, in a worker
thread: no mint, no second derivation; kept per ETag (the bytes' hash), so each variant is
hashed once per worker. ``srcset`` markup computes it from the kept master
(:func:`from_master`), laid out as the variant, and never mints one for it. Imported in
store mode only (it loads libvips).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from cachetools import LRUCache

from proxy.stores.derived import StoredVariant
from proxy.stores.registry import ImageRecord
from proxy.upstream.client import ProcessResult
from proxy.url.variant import TRANSPARENT, Variant
from proxy.variants.placeholder import placeholder

if TYPE_CHECKING:
    from proxy.variants.store_mode import StoreVariants

ENTRIES = 4096  # ~100 bytes each


class Placeholders:
    """The JSON of a variant's placeholder, by its ETag."""

    def __init__(
        self, entries: int = ENTRIES, *, limiter: anyio.CapacityLimiter | None = None
    ) -> None:
        self._kept: LRUCache[str, dict[str, Any]] = LRUCache(maxsize=entries)
        self._limiter = limiter

    async def of(self, stored: StoredVariant, bg: str) -> dict[str, Any]:
        """``{"thumbhash", "color", "aspect"}`` of ``stored`` (its background ``bg``: its
        colour does not count as the dominant one)."""
        key = f"{stored.etag}|{bg}"
        kept = self._kept.get(key)
        if kept is None:
            background = None if bg == TRANSPARENT else bg
            work = functools.partial(placeholder, stored.data, background=background)
            made = await anyio.to_thread.run_sync(work, limiter=self._limiter)
            kept = self._kept[key] = made.as_json()
        return kept


async def from_master(
    store: StoreVariants, record: ImageRecord, variant: Variant
) -> dict[str, Any] | None:
    """The placeholder of ``variant`` laid out from the image's kept master, without deriving
    it; None when no master is kept (this never mints one: a placeholder is not worth a
    credit, and the first variant request mints the master anyway)."""
    from proxy.variants.placeholder import variant_placeholder

    async def no_mint(record: ImageRecord, specs: list[dict[str, Any]]) -> ProcessResult:
        raise _NoMaster

    try:
        master = await store.masters.get(record, store.quality, render=no_mint)
    except _NoMaster:
        return None
    spec = store.spec(variant)
    work = functools.partial(
        variant_placeholder,
        master,
        spec.width,
        spec.height,
        spec.fit,
        variant.bg,
        framing=spec.framing,
    )
    made = await anyio.to_thread.run_sync(work, limiter=store.deriver.limiter)
    return made.as_json()


class _NoMaster(Exception):
    """Raised instead of minting a master for a placeholder."""
