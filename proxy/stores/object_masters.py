"""Masters in the object store: one durable copy for the whole fleet, local disk as its cache.

    ObjectMasterStore    MasterStore on an ObjectStore:
                         ``masters/<image_id>/<version>-<quality>.png``
    LayeredMasterStore   MasterStore: a DiskMasterStore in front of an ObjectMasterStore

With an object store configured, a master lives there (every replica finds it, so the fleet
mints one master per image version) and in each host's ``DiskMasterStore``, filled on first
use, so a host derives from local bytes and keeps deriving while the store is down.

What the layering promises (tests/s3/test_object_masters.py):

- **A paid master is never lost to a failed write.** ``put`` keeps the master on local disk
  first (fsync'ed), then writes it to the store (write-once). When the store is down the
  master stays local, is recorded as *unsent* (a file under ``<masters>/.unsent/``, written
  before the store is tried, so a kill -9 mid-write is covered too) and a background task
  retries with backoff (1 s doubling to 60 s) until the store has it; ``start()`` picks up
  what an earlier process left unsent. ``written_later`` and ``write_failures`` count them.
- **Nothing is minted twice because a write failed.** A master missing locally and in the
  store is a miss (the caller mints) only when the store *answered*: a store that fails
  raises :class:`~proxy.stores.objects.ObjectStoreUnavailableError` (503, Retry-After),
  at once while the shared :class:`~proxy.stores.objects.Breaker` is open. And while one
  replica holds an unsent master, it holds a lease (``unsent_lease``, Redis in a fleet)
  named after it: another replica that finds the store without the master answers 503
  ``master_unsent`` instead of minting it again.
- **Write-once.** Two replicas that both minted (a lapsed lease) keep the first master in the
  store; the second replaces its local copy with it, so the fleet derives from one master.
- **Deleting is never quiet.** ``delete``/``delete_image`` remove the store's copy first and
  raise when they cannot (the local copy is then kept, so nothing is half-deleted); unsent
  records of a deleted image go with it, so a retry never brings a deleted master back.

Why a little over 400 lines: a master's durability rule (local disk first, then the store,
write-once, retried and leased while unsent) is read in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

import anyio.to_thread

from proxy.errors import ProxyError, ServiceUnavailableError
from proxy.stores.leases import Lease, holder_gone
from proxy.stores.masters import DiskMasterStore, MasterKey
from proxy.stores.objects import Breaker, ObjectStore, ObjectStoreUnavailableError

log = logging.getLogger("cutproxy.masters")

MASTERS = "masters"  # the folder of every master in the store
UNSENT = ".unsent"  # under the local masters' root: masters the store does not have yet
RETRY_FIRST = 1.0  # seconds before the first retry of an unsent master
RETRY_MAX = 60.0  # the backoff's ceiling
MARKER_TTL = 600.0  # an unsent master's lease; renewed at every retry, so it outlives them
_MARK_ATTEMPTS = 5  # another replica's marker may be on its way out


def object_key(key: MasterKey) -> str:
    """The master's key in the store: ``masters/<image_id>/<version>-<quality>.png``."""
    return f"{MASTERS}/{key.image_id}/{key.filename}"


class ObjectMasterStore:
    """:class:`~proxy.stores.masters.MasterStore` on an object store (no local copy).

    Writes are write-once (``If-None-Match: *``): a master already in the store is kept.
    The store belongs to whoever made it; ``close`` leaves it open.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def get(self, key: MasterKey) -> bytes | None:
        return await self.store.get(object_key(key))

    async def put(self, key: MasterKey, data: bytes) -> None:
        await self.create(key, data)

    async def create(self, key: MasterKey, data: bytes) -> bool:
        """Write the master unless the store has one under ``key``: whether it was written."""
        return await self.store.put(object_key(key), data, "image/png", write_once=True)

    async def exists(self, key: MasterKey) -> bool:
        return await self.store.head(object_key(key)) is not None

    async def delete(self, key: MasterKey) -> bool:
        there = await self.exists(key)
        await self.store.delete(object_key(key))
        return there

    async def delete_image(self, image_id: str) -> int:
        MasterKey(image_id, "v", "low")  # checks the id: it becomes a folder name
        return await self.store.delete_prefix(f"{MASTERS}/{image_id}")

    async def images(self) -> list[str]:
        # Every master, not a delimited listing: some stores (SeaweedFS) keep listing a
        # folder after its last object went. An image has a master or two.
        ids = {key.split("/")[1] async for key in self.store.list(MASTERS)}
        return sorted(ids)

    async def versions(self, image_id: str) -> list[MasterKey]:
        MasterKey(image_id, "v", "low")
        folder = f"{MASTERS}/{image_id}"
        names = [key.rpartition("/")[2] async for key in self.store.list(folder)]
        keys = [MasterKey.parse(image_id, name) for name in names]
        return sorted((k for k in keys if k is not None), key=lambda k: k.filename)

    async def close(self) -> None:
        return None


class LayeredMasterStore:
    """Local disk in front of the object store (the module docstring has the promises).

    ``breaker`` is shared with the other tiers on the same store; ``unsent_lease`` is the
    fleet's :class:`~proxy.stores.leases.Lease` (none: one replica, nothing to guard).
    """

    def __init__(
        self,
        local: DiskMasterStore,
        remote: ObjectMasterStore,
        *,
        breaker: Breaker | None = None,
        unsent_lease: Lease | None = None,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        marker_ttl: float = MARKER_TTL,
    ) -> None:
        self.local = local
        self.remote = remote
        self.breaker = breaker or Breaker()
        self.unsent_lease = unsent_lease
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.marker_ttl = marker_ttl
        self.write_failures = 0  # masters the store did not take when they were put
        self.written_later = 0  # of those, written by a retry since
        self._unsent: dict[MasterKey, str | None] = {}  # the key → its marker lease's token
        self._lock = asyncio.Lock()  # a retry's write against a delete of the same master
        self._task: asyncio.Task[None] | None = None

    @property
    def unsent(self) -> list[MasterKey]:
        """Masters kept locally that the store does not have yet (in this process)."""
        return sorted(self._unsent, key=lambda k: (k.image_id, k.filename))

    async def start(self) -> int:
        """Take up the unsent masters an earlier process left (its records on disk) and retry
        them in the background; how many there were."""
        keys = await anyio.to_thread.run_sync(self._recorded)
        for key in keys:
            if key not in self._unsent:
                self._unsent[key] = await self._take_marker(key)
        if self._unsent:
            log.warning("%d master(s) not yet in the object store: retrying", len(self._unsent))
            self._kick()
        return len(keys)

    # --- MasterStore ----------------------------------------------------------------------

    async def get(self, key: MasterKey) -> bytes | None:
        data = await self.local.get(key)
        if data is not None:
            return data
        data = await self.breaker.call(lambda: self.remote.get(key))
        if data is not None:
            await self._keep_locally(key, data)
            return data
        await self._refuse_if_unsent_elsewhere(key)
        return None

    async def put(self, key: MasterKey, data: bytes) -> None:
        await self._record(key)  # before anything: a crash from here on leaves the record
        try:
            await self.local.put(key, data)
        except OSError as exc:  # a full or failing disk: the store alone must have it
            log.error("could not keep master %s locally (%s)", _name(key), type(exc).__name__)
            await self._unrecord(key)
            await self.breaker.call(lambda: self._send(key, data))
            return
        try:
            await self.breaker.call(lambda: self._send(key, data))
        except ObjectStoreUnavailableError:
            self.write_failures += 1
            self._unsent[key] = await self._take_marker(key)
            log.warning(
                "master %s kept locally; the object store did not take it: retrying",
                _name(key),
            )
            self._kick()
            return
        await self._unrecord(key)

    async def exists(self, key: MasterKey) -> bool:
        if await self.local.exists(key):
            return True
        return await self.breaker.call(lambda: self.remote.exists(key))

    async def delete(self, key: MasterKey) -> bool:
        async with self._lock:
            there = await self.breaker.call(lambda: self.remote.delete(key))
            await self._forget(key)
            return await self.local.delete(key) or there

    async def delete_image(self, image_id: str) -> int:
        async with self._lock:
            removed = await self.breaker.call(lambda: self.remote.delete_image(image_id))
            for key in [k for k in self._unsent if k.image_id == image_id]:
                await self._forget(key)
            await anyio.to_thread.run_sync(self._unrecord_image, image_id)
            return max(removed, await self.local.delete_image(image_id))

    async def images(self) -> list[str]:
        remote = await self.breaker.call(self.remote.images)
        return sorted(set(remote) | set(await self.local.images()))

    async def versions(self, image_id: str) -> list[MasterKey]:
        remote = await self.breaker.call(lambda: self.remote.versions(image_id))
        keys = set(remote) | set(await self.local.versions(image_id))
        return sorted(keys, key=lambda k: k.filename)

    async def close(self) -> None:
        """Stop retrying (what is unsent stays recorded for the next ``start``)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.unsent_lease is not None:
            for key, token in list(self._unsent.items()):
                if token is not None:
                    with contextlib.suppress(ProxyError):
                        await self.unsent_lease.release(_marker(key), token)
                    self._unsent[key] = None

    # --- retrying -------------------------------------------------------------------------

    async def send_unsent(self) -> bool:
        """Try each unsent master once, now: whether the store has them all."""
        for key in list(self._unsent):
            async with self._lock:
                if key not in self._unsent:
                    continue  # deleted meanwhile
                data = await self.local.get(key)
                if data is None:
                    log.warning("unsent master %s is gone from local disk", _name(key))
                    await self._forget(key)
                    continue
                try:
                    await self.breaker.call(lambda: self._send(key, data), probe=True)  # noqa: B023
                except ObjectStoreUnavailableError:
                    await self._renew_marker(key)
                    return False
                self.written_later += 1  # before ``unsent`` empties: they agree at every await
                await self._forget(key)
            log.info("master %s is in the object store now", _name(key))
        return True

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        delay = self.retry_first
        while self._unsent:
            await asyncio.sleep(delay)
            try:
                sent = await self.send_unsent()
            except Exception as exc:  # a local disk failure: keep trying, never die quietly
                log.error("retrying unsent masters failed (%s)", type(exc).__name__)
                sent = False
            delay = self.retry_first if sent else min(delay * 2, self.retry_max)

    # --- the store's side -----------------------------------------------------------------

    async def _send(self, key: MasterKey, data: bytes) -> None:
        if await self.remote.create(key, data):
            return
        # Another replica's master got there first (both minted: a lapsed lease). One master
        # for the fleet: keep its bytes here too, so every host derives the same variants.
        theirs = await self.remote.get(key)
        if theirs is not None and theirs != data:
            log.warning("master %s was in the object store already: using that one", _name(key))
            await self._keep_locally(key, theirs)

    async def _keep_locally(self, key: MasterKey, data: bytes) -> None:
        try:
            await self.local.put(key, data)
        except OSError as exc:
            log.warning("could not keep master %s locally (%s)", _name(key), type(exc).__name__)

    async def _refuse_if_unsent_elsewhere(self, key: MasterKey) -> None:
        """A 503 instead of a miss when another replica holds this master unsent."""
        if self.unsent_lease is None:
            return
        # A look, not an acquire: concurrent probes of the same miss (a burst of requests for
        # a new image) must not take each other for a replica holding the master unsent.
        holder = await self.unsent_lease.holder(_marker(key))
        if holder is not None and not holder_gone(holder):
            raise ServiceUnavailableError(
                "this image's master is kept by a replica that cannot reach the object store "
                "yet; retry shortly",
                code="master_unsent",
                retry_after=self.breaker.cooldown,
            )

    # --- markers (the fleet's) and records (this host's) ----------------------------------

    async def _take_marker(self, key: MasterKey) -> str | None:
        if self.unsent_lease is None:
            return None
        try:
            for _ in range(_MARK_ATTEMPTS):
                token = await self.unsent_lease.acquire(_marker(key), self.marker_ttl)
                if token is not None:
                    return token
                await asyncio.sleep(0.05)
        except ProxyError as exc:  # the shared store is down too: the local copy still counts
            log.warning("could not mark master %s as unsent (%s)", _name(key), exc.code)
        return None

    async def _renew_marker(self, key: MasterKey) -> None:
        if self.unsent_lease is None:
            return
        token = self._unsent.get(key)
        try:
            if token is None or not await self.unsent_lease.extend(
                _marker(key), token, self.marker_ttl
            ):
                self._unsent[key] = await self._take_marker(key)
        except ProxyError:
            pass

    async def _forget(self, key: MasterKey) -> None:
        """``key`` is in the store (or deleted): drop its record and its marker."""
        token = self._unsent.pop(key, None)
        await self._unrecord(key)
        if token is not None and self.unsent_lease is not None:
            with contextlib.suppress(ProxyError):
                await self.unsent_lease.release(_marker(key), token)

    def _record_path(self, key: MasterKey) -> Path:
        return self.local.root / UNSENT / key.image_id / key.filename

    async def _record(self, key: MasterKey) -> None:
        def write() -> None:
            path = self._record_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

        try:
            await anyio.to_thread.run_sync(write)
        except OSError as exc:
            log.warning("could not record master %s as unsent (%s)", _name(key), exc)

    async def _unrecord(self, key: MasterKey) -> None:
        def remove() -> None:
            path = self._record_path(key)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty

        try:
            await anyio.to_thread.run_sync(remove)
        except OSError as exc:  # a stale record costs one needless (write-once) send later
            log.warning("could not clear the unsent record of %s (%s)", _name(key), exc)

    def _unrecord_image(self, image_id: str) -> None:
        shutil.rmtree(self.local.root / UNSENT / image_id, ignore_errors=True)

    def _recorded(self) -> list[MasterKey]:
        root = self.local.root / UNSENT
        keys = []
        try:
            folders = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        for image_id in folders:
            try:
                names = sorted(os.listdir(root / image_id))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                key = MasterKey.parse(image_id, name)
                if key is not None and self.local.path(key).is_file():
                    keys.append(key)
                elif key is not None:  # the master never made it to disk: nothing to send
                    (root / image_id / name).unlink(missing_ok=True)
        return keys


def _name(key: MasterKey) -> str:
    return f"{key.image_id}/{key.filename}"


def _marker(key: MasterKey) -> str:
    return f"master-unsent:{_name(key)}"
