"""The registry: ``image_id`` → what the upstream knows of it (``unique_filename``) and what
we know of the original (size, type, content hash).

Persisted under ``PROXY_DATA_DIR`` in SQLite (via diskcache, never evicted), shared by the
worker processes of one host and surviving restarts (:class:`DiskRegistry`); in Redis
(:class:`RedisRegistry`) it serves several machines behind the same :class:`Registry` protocol.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
import diskcache

if TYPE_CHECKING:
    import redis.asyncio

    from proxy.stores.redis_health import RedisHealth


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


VARIANTS_GENERATION = "variants_generation"  # in ImageRecord.extra: see record_version


def record_version(record: ImageRecord) -> str:
    """What the rendered variants of this record depend on: its bytes (or its upload).

    Part of every cache key, so a replaced image is never served from a stale entry by any
    worker; a re-upload of the same bytes (self-heal) keeps the version and the cache.
    """
    # DELETE /images/{id}/variants bumps the generation: every worker's keys change with it.
    generation = record.extra.get(VARIANTS_GENERATION)
    suffix = f".{generation}" if generation else ""
    if record.sha256:
        return record.sha256[:16] + suffix
    raw = f"{record.unique_filename}|{record.width}|{record.height}"
    return "u" + hashlib.sha256(raw.encode()).hexdigest()[:15] + suffix


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


# --- every replica: Redis --------------------------------------------------------------------


class RedisRegistry:
    """:class:`Registry` in Redis: ``image:<id>`` JSON and an ``images`` zset.

    All ids score 0 in the sorted set, so ``ZRANGEBYLEX`` pages through them in id order.
    Nothing expires: like the disk registry, records stay until deleted.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str, health: RedisHealth) -> None:
        self._client = client
        self._prefix = prefix
        self._health = health
        self._ids = f"{prefix}images"

    def _key(self, image_id: str) -> str:
        return f"{self._prefix}image:{image_id}"

    async def get(self, image_id: str) -> ImageRecord | None:
        with self._health.guard("registry read"):
            raw = await self._client.get(self._key(image_id))
        return None if raw is None else ImageRecord.from_dict(json.loads(raw))

    async def put(self, record: ImageRecord) -> None:
        with self._health.guard("registry write"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.image_id), json.dumps(record.to_dict()))
                pipe.zadd(self._ids, {record.image_id: 0})
                await pipe.execute()

    async def delete(self, image_id: str) -> bool:
        with self._health.guard("registry write"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(image_id))
                pipe.zrem(self._ids, image_id)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list(self, after: str | None = None, limit: int = 100) -> list[ImageRecord]:
        if limit <= 0:
            return []
        start = f"({after}" if after is not None else "-"
        with self._health.guard("registry read"):
            ids = await self._client.zrangebylex(self._ids, start, "+", start=0, num=limit)
            if not ids:
                return []
            raws = await self._client.mget([self._key(_text(i)) for i in ids])
        return [ImageRecord.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    async def count(self) -> int:
        with self._health.guard("registry read"):
            return int(await self._client.zcard(self._ids))

    async def close(self) -> None:
        """The client belongs to :class:`RedisStore`, which closes it."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
