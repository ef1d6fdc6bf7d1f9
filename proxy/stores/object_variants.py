"""Derived variants in the object store: the tier below memory and disk, shared by the fleet.

    ObjectVariantTier   VariantTier on an ObjectStore; ``put`` queues, background writers send
    VariantObject       a kept variant's index entry: its content-addressed object and metadata
    public_url          the URL of an object under PROXY_STORE_PUBLIC_URL

Layout in the store, per image (so deleting an image is one folder)::

    variants/<image_id>/<sha256 of the bytes>.<ext>          the bytes: write-once, immutable
    variants/<image_id>/keys/<sha256 of the variant key>.json the index: variant key → bytes

- **Found by variant key.** A replica that misses a variant in memory and on disk reads the
  index object named by the hash of the variant key (the key itself holds ``#`` and ``~``),
  then the bytes it names: two GETs. ``TieredVariants`` copies the hit up to disk and
  memory, so a host fetches a variant from the store once.
- **Content-addressed bytes.** The bytes' object is named by their SHA-256 and never changes,
  so its URL may be cached for a year (it is stored with ``Cache-Control: public,
  max-age=31536000, immutable``): that is the URL a redirect to the durable copy gives
  (:meth:`ObjectVariantTier.locate`, :func:`public_url`). The bytes go up before their index,
  so an index never names bytes that are not there (except while an image is being deleted:
  then a read is a miss). A read checks the bytes against their name.
- **Writes never hold up an answer.** ``put`` (what ``TieredVariants.put`` calls after a
  derivation) queues the variant, bounded by bytes (``max_queued_bytes``; past it new writes
  are dropped and counted: a variant can always be derived again) and ``writers`` background
  tasks send it; a store that fails makes them back off (1 s doubling to 8 s) and retry.
  Until it is sent a variant is served from the queue by ``get``.
- **A store that is down is a miss, quickly.** A read that fails raises
  :class:`~proxy.stores.objects.ObjectStoreUnavailableError` (``TieredVariants`` logs it and
  derives instead) within ``read_timeout`` (2 s: deriving a variant takes tens of
  milliseconds); then the shared :class:`~proxy.stores.objects.Breaker` makes reads a plain
  miss for its cooldown without touching the store. Nothing needs a restart afterwards.
- **Deleting.** ``delete_prefix("/img/<id>/")`` drops the image's queued writes, waits for
  the ones in flight, then removes the image's folder: a write in flight never brings a
  deleted variant back. A longer prefix removes the matching index objects and the bytes no
  other index names. A failure raises.

Why over 400 lines: the object tier and its background writers keep one promise together
(an index never names bytes that are not there).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from urllib.parse import quote

import anyio.to_thread

from proxy.stores.derived import StoredVariant
from proxy.stores.objects import Breaker, ObjectStore, ObjectStoreUnavailableError

log = logging.getLogger("cutproxy.variant_store")

VARIANTS = "variants"  # the folder of every variant in the store
INDEX = "keys"  # an image's index folder, beside its bytes
IMMUTABLE = "public, max-age=31536000, immutable"
READ_TIMEOUT = 2.0
WRITERS = 4
MAX_QUEUED_BYTES = 64 * 1024 * 1024
RETRY_FIRST = 1.0
RETRY_MAX = 8.0  # a queued write is retried at least this often: a back store is found soon
CLOSE_FLUSH = 5.0  # seconds ``close`` spends sending what is still queued
KNOWN = 100_000  # objects remembered as in the store (for redirects to them), newest kept
_HASH_IN_THREAD = 256 * 1024  # bytes past which a SHA-256 leaves the event loop
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/avif": "avif"}
_IMAGE_KEY = re.compile(r"/img/([A-Za-z0-9_-]{1,128})/")
_OBJECT = re.compile(r"[0-9a-f]{64}\.[a-z]{3,4}")


@dataclass(frozen=True, slots=True)
class VariantObject:
    """A variant kept in the store: its index entry."""

    key: str  # the variant key (``/img/<id>/...``)
    object_key: str  # its bytes: ``variants/<id>/<sha256>.<ext>``, relative to the prefix
    etag: str
    content_type: str
    width: int
    height: int
    created_at: float
    size: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VariantObject:
        """The entry in ``raw``; ValueError when it is not one."""
        try:
            fields = json.loads(raw)
            entry = cls(**fields)
        except (TypeError, ValueError) as exc:
            raise ValueError("not a variant index entry") from exc
        if not (
            isinstance(entry.key, str)
            and isinstance(entry.object_key, str)
            and isinstance(entry.etag, str)
            and isinstance(entry.content_type, str)
            and _OBJECT.fullmatch(entry.object_key.rpartition("/")[2])
        ):
            raise ValueError("not a variant index entry")
        return entry

    @property
    def digest(self) -> str:
        """The SHA-256 of the bytes, as the object's name spells it."""
        return self.object_key.rpartition("/")[2].partition(".")[0]


def public_url(base: str, object_key: str) -> str:
    """The object's URL under ``base`` (PROXY_STORE_PUBLIC_URL: where the store's prefix is
    readable by anyone, e.g. a CDN in front of the bucket)."""
    return f"{base.rstrip('/')}/{quote(object_key)}"


def image_of(key: str) -> str:
    """The image id a variant key starts with (``/img/<id>/``); ValueError for other keys."""
    match = _IMAGE_KEY.match(key)
    if match is None:
        raise ValueError("the object tier keeps variant keys only: /img/<image_id>/...")
    return match[1]


def index_key(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{VARIANTS}/{image_of(key)}/{INDEX}/{digest}.json"


def bytes_key(image_id: str, digest: str, content_type: str) -> str:
    return f"{VARIANTS}/{image_id}/{digest}.{_EXTENSIONS.get(content_type, 'bin')}"


@dataclass
class _Sending:
    variant: StoredVariant
    done: asyncio.Event


class ObjectVariantTier:
    """Variants in the object store (the module docstring has the promises and the layout)."""

    name = "object"

    def __init__(
        self,
        store: ObjectStore,
        *,
        breaker: Breaker | None = None,
        read_timeout: float = READ_TIMEOUT,
        writers: int = WRITERS,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        if writers < 1:
            raise ValueError("writers must be >= 1")
        self.store = store
        self.breaker = breaker or Breaker()
        self.read_timeout = read_timeout
        self.writers = writers
        self.max_queued_bytes = max_queued_bytes
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.written = 0  # variants sent to the store
        self.write_failures = 0  # sends that failed (each is retried)
        self.dropped = 0  # variants not queued: the queue was full
        self._queue: dict[str, StoredVariant] = {}  # oldest first
        self._queued_bytes = 0
        self._sending: dict[str, _Sending] = {}
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resume_at = 0.0  # the loop's time: writers wait until then after a failure
        self._delay = retry_first
        self._failing = False
        self._full = False
        self._known: OrderedDict[str, str] = OrderedDict()  # ETag -> its object's key

    @property
    def queued(self) -> int:
        """Variants waiting for, or in, a write to the store."""
        return len(self._queue) + len(self._sending)

    @property
    def in_flight(self) -> int:
        """Variants being written to the store now."""
        return len(self._sending)

    # --- VariantTier ----------------------------------------------------------------------

    async def get(self, key: str) -> StoredVariant | None:
        waiting = self._waiting(key)
        if waiting is not None:
            return waiting
        entry = await self.locate(key)
        if entry is None:
            return None
        data = await self._read(entry.object_key)
        if data is None:
            return None  # the image is being deleted
        digest = await _sha256(data)
        if digest != entry.digest or len(data) != entry.size or entry.etag != _etag(digest):
            log.warning("object %s does not match its name: treated as a miss", entry.object_key)
            return None
        self._remember(entry)
        return StoredVariant(
            data, entry.content_type, entry.etag, entry.width, entry.height, entry.created_at
        )

    async def put(self, key: str, variant: StoredVariant) -> None:
        """Queue the variant for the background writers (the answer never waits on them)."""
        image_of(key)
        old = self._queue.pop(key, None)
        if old is not None:
            self._queued_bytes -= old.nbytes
        if self._queued_bytes + variant.nbytes > self.max_queued_bytes:
            if not self._full:
                self._full = True
                log.warning("object tier: write queue full: new variants are not sent")
            self.dropped += 1
            return
        self._full = False
        self._queue[key] = variant
        self._queued_bytes += variant.nbytes
        self._start()

    async def delete_prefix(self, prefix: str) -> int:
        """Remove the variants whose key starts with ``prefix``: how many were in the store."""
        match = _IMAGE_KEY.match(prefix)
        if match is not None:
            images, whole = [match[1]], prefix == match[0]
        else:  # shorter than one image's prefix ("" is every variant)
            folders = await self.breaker.call(lambda: self.store.folders(VARIANTS))
            images, whole = [i for i in folders if f"/img/{i}/".startswith(prefix)], True
        await self._settle(prefix)
        removed = 0
        for image_id in images:
            self._forget_image(image_id)  # no redirect to what is being deleted
            if whole:
                removed += await self._delete_image(image_id)
            else:
                removed += await self._delete_matching(image_id, prefix)
        return removed

    async def close(self, flush_timeout: float = CLOSE_FLUSH) -> None:
        """Send what is queued (for at most ``flush_timeout`` seconds), then stop the
        writers; what is left is dropped (derived again when asked for)."""
        with contextlib.suppress(TimeoutError, ObjectStoreUnavailableError):
            async with asyncio.timeout(flush_timeout):
                await self.flush()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue:
            log.warning("object tier: %d variant(s) not sent to the store", len(self._queue))

    # --- beyond the protocol --------------------------------------------------------------

    async def locate(self, key: str) -> VariantObject | None:
        """The variant's index entry (where its bytes are), or None: for a redirect to its
        durable object, with no need for the bytes. Raises while the store fails."""
        raw = await self._read(index_key(key))
        if raw is None:
            return None
        try:
            entry = VariantObject.from_json(raw)
        except ValueError:
            log.warning("object tier: malformed index entry for %s: treated as a miss", key)
            return None
        return entry if entry.key == key else None

    async def write(self, key: str, variant: StoredVariant) -> VariantObject:
        """Send the variant to the store now (bytes, then index); raises when it cannot."""
        image_id = image_of(key)
        digest = await _sha256(variant.data)
        entry = VariantObject(
            key=key,
            object_key=bytes_key(image_id, digest, variant.content_type),
            etag=_etag(digest),
            content_type=variant.content_type,
            width=variant.width,
            height=variant.height,
            created_at=variant.created_at,
            size=variant.nbytes,
        )
        # Write-once: the same bytes under the same name, whoever derived them.
        await self.breaker.call(
            lambda: self.store.put(
                entry.object_key,
                variant.data,
                variant.content_type,
                write_once=True,
                cache_control=IMMUTABLE,
            ),
            probe=True,
        )
        await self.breaker.call(
            lambda: self.store.put(index_key(key), entry.to_json(), "application/json"),
            probe=True,
        )
        self._remember(entry)
        return entry

    def stored_as(self, etag: str) -> str | None:
        """The key of the object holding the bytes with ``etag``, if this process wrote or
        read it in the store (no I/O): a redirect may then send clients there."""
        key = self._known.get(etag)
        if key is not None:
            self._known.move_to_end(etag)
        return key

    def _remember(self, entry: VariantObject) -> None:
        self._known[entry.etag] = entry.object_key
        self._known.move_to_end(entry.etag)
        while len(self._known) > KNOWN:
            self._known.popitem(last=False)

    def _forget_image(self, image_id: str) -> None:
        folder = f"{VARIANTS}/{image_id}/"
        for etag in [e for e, key in self._known.items() if key.startswith(folder)]:
            del self._known[etag]

    async def flush(self) -> None:
        """Send everything queued now and wait for the sends in flight; raises (keeping the
        variant queued) when the store fails."""
        while self._queue or self._sending:
            if self._queue:
                key = next(iter(self._queue))
                await self._send(key, self._take(key), raise_errors=True)
            else:
                await asyncio.gather(*(s.done.wait() for s in list(self._sending.values())))

    # --- the writers ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < self.writers:
            self._tasks.append(asyncio.get_running_loop().create_task(self._writer()))

    async def _writer(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            pause = self._resume_at - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            key = next(iter(self._queue))
            await self._send(key, self._take(key), raise_errors=False)

    def _take(self, key: str) -> StoredVariant:
        variant = self._queue.pop(key)
        self._queued_bytes -= variant.nbytes
        return variant

    async def _send(self, key: str, variant: StoredVariant, *, raise_errors: bool) -> None:
        sending = self._sending[key] = _Sending(variant, asyncio.Event())
        try:
            await self.write(key, variant)
        except ObjectStoreUnavailableError:
            self.write_failures += 1
            self._back_off()
            if key not in self._queue:
                self._queue[key] = variant  # to the back: retried after the others
                self._queued_bytes += variant.nbytes
            if raise_errors:
                raise
        except Exception as exc:  # not the store's fault (a bad key): never retried
            log.error("object tier: could not send %s (%s)", key, type(exc).__name__)
            if raise_errors:
                raise
        else:
            self.written += 1
            self._delay = self.retry_first
            if self._failing:
                self._failing = False
                log.warning("object tier: writes reach the store again")
        finally:
            del self._sending[key]
            sending.done.set()

    def _back_off(self) -> None:
        loop = asyncio.get_running_loop()
        self._resume_at = loop.time() + self._delay
        self._delay = min(self._delay * 2, self.retry_max)
        if not self._failing:
            self._failing = True
            log.warning("object tier: writes failing; %d queued, retrying", len(self._queue) + 1)

    def _waiting(self, key: str) -> StoredVariant | None:
        variant = self._queue.get(key)
        if variant is None and key in self._sending:
            variant = self._sending[key].variant
        return variant

    async def _settle(self, prefix: str) -> None:
        """Drop queued writes under ``prefix`` and wait out the ones in flight (a failed one
        queues itself again: dropped on the next round)."""
        while True:
            self._drop_queued(prefix)
            sending = [s for k, s in self._sending.items() if k.startswith(prefix)]
            if not sending:
                return
            for item in sending:
                await item.done.wait()

    def _drop_queued(self, prefix: str) -> None:
        for key in [k for k in self._queue if k.startswith(prefix)]:
            self._queued_bytes -= self._queue.pop(key).nbytes

    # --- deleting -------------------------------------------------------------------------

    async def _delete_image(self, image_id: str) -> int:
        folder = f"{VARIANTS}/{image_id}"
        marker = f"{folder}/{INDEX}/"
        keys = await self.breaker.call(lambda: _collect(self.store, folder))
        await self.breaker.call(lambda: self.store.delete_prefix(folder))
        return sum(1 for key in keys if key.startswith(marker))

    async def _delete_matching(self, image_id: str, prefix: str) -> int:
        folder = f"{VARIANTS}/{image_id}/{INDEX}"
        kept: set[str] = set()
        doomed: set[str] = set()
        removed = 0
        for name in await self.breaker.call(lambda: _collect(self.store, folder)):
            raw = await self.breaker.call(lambda: self.store.get(name))  # noqa: B023
            try:
                entry = None if raw is None else VariantObject.from_json(raw)
            except ValueError:
                entry = None
            if entry is None:
                continue
            if entry.key.startswith(prefix):
                await self.breaker.call(lambda: self.store.delete(name))  # noqa: B023
                doomed.add(entry.object_key)
                removed += 1
            else:
                kept.add(entry.object_key)
        for object_key in doomed - kept:
            await self.breaker.call(lambda: self.store.delete(object_key))  # noqa: B023
        return removed

    # --- the store, through the breaker ---------------------------------------------------

    async def _read(self, object_key: str) -> bytes | None:
        if self.breaker.skip():
            return None  # a miss: the caller derives
        return await self.breaker.call(
            lambda: self.store.get(object_key, timeout=self.read_timeout), probe=True
        )


async def _collect(store: ObjectStore, folder: str) -> list[str]:
    return [key async for key in store.list(folder)]


def _etag(digest: str) -> str:
    """The ETag every tier gives these bytes (:func:`proxy.stores.derived.etag_of`)."""
    return f'"{digest[:32]}"'


async def _sha256(data: bytes) -> str:
    if len(data) > _HASH_IN_THREAD:
        return await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()
