"""Variant → output URL cache: an in-process tier in front of a shared store.

    TwoTierCache
    ├── MemoryTier   cachetools TLRUCache, per-entry expiry, no I/O (the hit path)
    └── SharedTier   protocol
        ├── DiskTier   diskcache under PROXY_DATA_DIR: one host's worker processes
        └── RedisTier  one string per entry with PX expiry, a per-image index set: every replica

Every entry carries its absolute expiry (``expires_at``, wall-clock seconds). It is derived
once, when the upstream hands out the URL: the smaller of the configured lifetime and any
expiry the URL carries itself, minus a safety margin (at most half of what the URL's own
expiry leaves). Both tiers check it against the injected clock on every read, so an
expired entry is never served.

Why a little over 400 lines: as for every kind in ``proxy/stores``, the tiers of this one
(memory, disk, Redis) sit side by side, so the expiry rule above is read in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread
import diskcache
from cachetools import TLRUCache

from proxy.errors import SharedStoreUnavailableError

if TYPE_CHECKING:
    import redis.asyncio

    from proxy.stores.redis_health import RedisHealth

Clock = Callable[[], float]

log = logging.getLogger("cutproxy.cache")


@dataclass(frozen=True, slots=True)
class CachedOutput:
    """A rendered variant: where it is and until when it may be served."""

    url: str
    expires_at: float
    created_at: float

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CachedOutput:
        return cls(str(data["url"]), float(data["expires_at"]), float(data["created_at"]))


_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


def url_expiry(url: str) -> float | None:
    """The absolute expiry a signed URL carries in its query, if any.

    Understands ``Expires=<unix>`` (CloudFront, GCS v2), ``X-Amz-Date`` + ``X-Amz-Expires``
    (S3 SigV4), ``X-Goog-Date`` + ``X-Goog-Expires`` (GCS v4) and ``exp=<unix>``.
    """
    params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    for name in ("expires", "exp"):
        value = params.get(name, "")
        if value.isdigit():
            return float(value)
    for prefix in ("x-amz", "x-goog"):
        start, seconds = params.get(f"{prefix}-date", ""), params.get(f"{prefix}-expires", "")
        if _AMZ_DATE.fullmatch(start) and seconds.isdigit():
            begun = datetime.strptime(start, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return begun.timestamp() + int(seconds)
    return None


def output_for(
    url: str,
    now: float,
    lifetime: float,
    margin: float,
    *,
    on_short: Callable[[], None] | None = None,
) -> CachedOutput:
    """Wrap a fresh output URL with its expiry: min(lifetime, URL expiry) minus the margin.

    A URL whose own expiry leaves less than twice the margin is kept for half of its
    remaining life instead (rather than not at all, which would mint it again on every
    request): the first such URL is logged once per process, and each one is reported
    through ``on_short`` (a metric).
    """
    expires_at = now + lifetime - margin
    carried = url_expiry(url)
    if carried is not None and carried - margin < expires_at:
        life = carried - now
        if margin <= life / 2:
            expires_at = carried - margin
        else:
            expires_at = now + life / 2
            _warn_short_lived(url, life, margin)
            if on_short is not None:
                on_short()
    return CachedOutput(url=url, expires_at=expires_at, created_at=now)


class _Once:
    """True the first time only: a warning worth one log line per process."""

    def __init__(self) -> None:
        self.done = False

    def first(self) -> bool:
        first, self.done = not self.done, True
        return first


_short_lived_warning = _Once()


def _warn_short_lived(url: str, life: float, margin: float) -> None:
    if _short_lived_warning.first():
        log.warning(
            "output URLs from %s carry an expiry %.0fs away, less than twice "
            "PROXY_TTL_MARGIN (%gs): each is kept for half its life, so its variant is "
            "minted again that often; lower PROXY_TTL_MARGIN if the upstream's URLs are "
            "this short-lived (logged once; counted in cutproxy_short_lived_outputs_total)",
            urlsplit(url).hostname or "the upstream",
            life,
            margin,
        )


class SharedTier(Protocol):
    """The tier every worker (and, with Redis, every machine) sees."""

    async def get(self, key: str) -> CachedOutput | None: ...

    async def set(self, key: str, output: CachedOutput) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def close(self) -> None: ...


class MemoryTier:
    """Bounded in-process tier; reads do no I/O and never block."""

    def __init__(self, maxsize: int, clock: Clock) -> None:
        self._clock = clock
        self._data: TLRUCache[str, CachedOutput] = TLRUCache(
            maxsize=maxsize, ttu=lambda _k, v, _now: v.expires_at, timer=clock
        )

    def get(self, key: str) -> CachedOutput | None:
        try:
            output = self._data[key]  # one lookup (get() would look twice), expiry checked
        except KeyError:
            return None
        # The cache drops an entry once its time has passed; this also refuses the very
        # instant it expires.
        return output if output.expires_at > self._clock() else None

    def set(self, key: str, output: CachedOutput) -> None:
        if output.expires_at > self._clock():
            self._data[key] = output

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in list(self._data.keys()) if k.startswith(prefix)]:
            self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


class DiskTier:
    """diskcache under ``PROXY_DATA_DIR``: shared by one host's workers, survives restarts."""

    def __init__(self, directory: Path, size_limit_mb: int, clock: Clock) -> None:
        self._cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit_mb * 1024 * 1024,
            eviction_policy="least-recently-stored",
        )
        self._clock = clock

    def _get(self, key: str) -> CachedOutput | None:
        raw = self._cache.get(key)
        if raw is None:
            return None
        output = CachedOutput.from_dict(raw)
        return output if output.expires_at > self._clock() else None

    def _set(self, key: str, output: CachedOutput) -> None:
        # diskcache expires by its own wall clock too, so dead rows get culled.
        expire = max(1.0, output.expires_at - time.time())
        self._cache.set(key, output.to_dict(), expire=expire)

    def _delete_prefix(self, prefix: str) -> int:
        doomed = [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]
        return sum(1 for key in doomed if self._cache.delete(key))

    def _scan(self, prefix: str) -> dict[str, CachedOutput]:
        found = {}
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                output = self._get(key)
                if output is not None:
                    found[key] = output
        return found

    async def get(self, key: str) -> CachedOutput | None:
        return await anyio.to_thread.run_sync(self._get, key)

    async def set(self, key: str, output: CachedOutput) -> None:
        await anyio.to_thread.run_sync(self._set, key, output)

    async def scan(self, prefix: str) -> dict[str, CachedOutput]:
        """Live entries whose key starts with ``prefix`` (an image's variants), for admins."""
        return await anyio.to_thread.run_sync(self._scan, prefix)

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(self._cache.delete, key)

    async def delete_prefix(self, prefix: str) -> int:
        return await anyio.to_thread.run_sync(self._delete_prefix, prefix)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._cache.close)


class TwoTierCache:
    """Memory in front of a shared tier. ``peek`` is the hit path: memory only, no I/O."""

    def __init__(self, memory: MemoryTier, shared: SharedTier) -> None:
        self.memory = memory
        self.shared = shared

    def peek(self, key: str) -> CachedOutput | None:
        return self.memory.get(key)

    async def get(self, key: str) -> tuple[CachedOutput | None, str]:
        """The entry and the tier that had it: ``memory``, ``shared`` or ``miss``."""
        output = self.memory.get(key)
        if output is not None:
            return output, "memory"
        output = await self.shared.get(key)
        if output is not None:
            self.memory.set(key, output)
            return output, "shared"
        return None, "miss"

    async def set(self, key: str, output: CachedOutput) -> None:
        self.memory.set(key, output)
        await self.shared.set(key, output)

    async def delete_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix`` (an image's variants)."""
        self.memory.delete_prefix(prefix)
        return await self.shared.delete_prefix(prefix)

    async def close(self) -> None:
        await self.shared.close()


# An image's key prefix, ``/img/<id>/``: what its variants' keys start with.
IMAGE_PREFIX = re.compile(r"/img/([A-Za-z0-9_-]+)/")


# --- every replica: Redis --------------------------------------------------------------------

# KEYS: entry, image index. ARGV: value, px. The index lives as long as its longest entry.
_SET_ENTRY = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] ~= KEYS[1] then
  redis.call('SADD', KEYS[2], KEYS[1])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
end
return 1
"""

# KEYS: image index. ARGV: full-key prefix. Deletes indexed entries under the prefix.
_DELETE_INDEXED = """
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(key, 1, string.len(ARGV[1])) == ARGV[1] then
    n = n + redis.call('DEL', key)
    redis.call('SREM', KEYS[1], key)
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return n
"""


class RedisTier:
    """:class:`SharedTier` in Redis: one string per entry, expiring with it.

    Each entry is also listed in its image's index set, so dropping an image's variants
    (``delete_prefix("/img/<id>/")``) touches only those keys, never a SCAN of the keyspace.
    Every delete is published so other replicas drop the same entries from memory.
    """

    def __init__(
        self, client: redis.asyncio.Redis, *, prefix: str, clock: Clock, health: RedisHealth
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._health = health
        self.channel = f"{prefix}invalidate"
        self._set_entry = client.register_script(_SET_ENTRY)
        self._delete_indexed = client.register_script(_DELETE_INDEXED)

    def _key(self, key: str) -> str:
        return f"{self._prefix}cache:{key}"

    def _index(self, key: str) -> str:
        image = IMAGE_PREFIX.match(key)
        return f"{self._prefix}index:{image.group(0)}" if image else self._key(key)

    async def get(self, key: str) -> CachedOutput | None:
        with self._health.guard("cache read"):
            raw = await self._client.get(self._key(key))
        if raw is None:
            return None
        output = CachedOutput.from_dict(json.loads(raw))
        return output if output.expires_at > self._clock() else None

    async def set(self, key: str, output: CachedOutput) -> None:
        """Best effort: a lost write costs a re-mint later, never a wrong answer."""
        px = int((output.expires_at - self._clock()) * 1000)
        if px <= 0:
            return
        value = json.dumps(output.to_dict())
        with contextlib.suppress(SharedStoreUnavailableError), self._health.guard("cache write"):
            await self._set_entry(keys=[self._key(key), self._index(key)], args=[value, px])

    async def scan(self, prefix: str) -> dict[str, CachedOutput]:
        """Live entries of one image (``/img/<id>/...``), read through its index set."""
        if not IMAGE_PREFIX.fullmatch(prefix):
            raise ValueError(f"only an image's prefix can be listed, not {prefix!r}")
        full_prefix = self._key(prefix)
        with self._health.guard("cache read"):
            members = await self._client.smembers(self._index(prefix))
            keys = sorted(k for k in (_text(m) for m in members) if k.startswith(full_prefix))
            values = await self._client.mget(keys) if keys else []
        now = self._clock()
        found: dict[str, CachedOutput] = {}
        for key, raw in zip(keys, values, strict=True):
            if raw is not None:  # the index may outlive an expired entry by a moment
                output = CachedOutput.from_dict(json.loads(raw))
                if output.expires_at > now:
                    found[key.removeprefix(self._key(""))] = output
        return found

    async def delete(self, key: str) -> None:
        with self._health.guard("cache delete"):
            await self._client.delete(self._key(key))
            await self._client.publish(self.channel, key)

    async def delete_prefix(self, prefix: str) -> int:
        with self._health.guard("cache delete"):
            if IMAGE_PREFIX.match(prefix):
                deleted = await self._delete_indexed(
                    keys=[self._index(prefix)], args=[self._key(prefix)]
                )
            else:
                deleted = await self._scan_delete(self._key(prefix))
            await self._client.publish(self.channel, prefix)
        return int(deleted)

    async def _scan_delete(self, full_prefix: str) -> int:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", full_prefix) + "*"
        deleted = 0
        async for key in self._client.scan_iter(match=pattern, count=500):
            deleted += int(await self._client.delete(key))
        return deleted

    async def close(self) -> None:
        """The client belongs to :class:`RedisStore`, which closes it."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
