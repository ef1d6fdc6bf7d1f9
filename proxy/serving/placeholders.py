"""Store mode's placeholders for JSON answers: a variant's ThumbHash and dominant colour.

Computed from the variant's own bytes (:func:`proxy.variants.placeholder.placeholder`), which
the answer has at hand anyway, in a worker thread; so a placeholder never costs a mint nor a
second derivation. Kept per ETag (the bytes' hash), so each variant is hashed once per worker.
Imported in store mode only (it loads libvips).
"""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
from cachetools import LRUCache

from proxy.stores.derived import StoredVariant
from proxy.url.variant import TRANSPARENT
from proxy.variants.placeholder import placeholder

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
