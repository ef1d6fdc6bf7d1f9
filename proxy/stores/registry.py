"""The registry: ``image_id`` → what the upstream knows of it (``unique_filename``) and what
we know of the original (size, type, content hash).

Persisted under ``PROXY_DATA_DIR`` in SQLite (via diskcache, never evicted), shared by the
worker processes of one host and surviving restarts. A Redis implementation serves several
machines behind the same :class:`Registry` protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import diskcache


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image_id: str
    unique_filename: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    sha256: str | None = None  # of the original kept in the blob store; None = not kept
    size: int | None = None
    uploaded_at: float | None = None  # when unique_filename was last (re-)uploaded
    registered_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def original_size(self) -> tuple[int, int] | None:
        if self.width and self.height:
            return (self.width, self.height)
        return None

    def evolve(self, **changes: Any) -> ImageRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class Registry(Protocol):
    async def get(self, image_id: str) -> ImageRecord | None: ...

    async def put(self, record: ImageRecord) -> None: ...

    async def delete(self, image_id: str) -> bool: ...

    async def list(self, after: str | None = None, limit: int = 100) -> list[ImageRecord]:
        """Records ordered by image id, starting after ``after``."""
        ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


class DiskRegistry:
    """SQLite-backed registry (diskcache with eviction off: nothing is ever dropped)."""

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), eviction_policy="none")

    def _get(self, image_id: str) -> ImageRecord | None:
        raw = self._cache.get(f"image:{image_id}")
        return None if raw is None else ImageRecord.from_dict(raw)

    def _put(self, record: ImageRecord) -> None:
        self._cache.set(f"image:{record.image_id}", record.to_dict())

    def _delete(self, image_id: str) -> bool:
        return bool(self._cache.delete(f"image:{image_id}"))

    def _list(self, after: str | None, limit: int) -> list[ImageRecord]:
        keys = sorted(
            k[len("image:") :]
            for k in self._cache.iterkeys()
            if isinstance(k, str) and k.startswith("image:")
        )
        if after is not None:
            keys = [k for k in keys if k > after]
        records = (self._get(k) for k in keys[:limit])
        return [r for r in records if r is not None]

    def _count(self) -> int:
        return sum(
            1 for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith("image:")
        )

    async def get(self, image_id: str) -> ImageRecord | None:
        return await anyio.to_thread.run_sync(self._get, image_id)

    async def put(self, record: ImageRecord) -> None:
        await anyio.to_thread.run_sync(self._put, record)

    async def delete(self, image_id: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete, image_id)

    async def list(self, after: str | None = None, limit: int = 100) -> list[ImageRecord]:
        return await anyio.to_thread.run_sync(self._list, after, limit)

    async def count(self) -> int:
        return await anyio.to_thread.run_sync(self._count)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._cache.close)
