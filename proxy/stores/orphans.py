"""Orphans: kept masters and variants of images the registry no longer knows.

    find_orphans(store, registered)          image ids with objects in the store and no record
    orphan_report(store, registered)         the same, with each one's objects, bytes and age
    clean_orphans(store, registered)         removes them; what was removed
    clean_local_masters(local, registered)   the same for one host's masters on disk

Deleting or replacing an image removes its objects as it happens; orphans are what that
missed (a delete while the store was down, a replica that died mid-delete, an upload whose
registration failed after its master was kept, another replica's local copies of a deleted
image). ``registered(image_id)`` answers whether the registry has the image.

An image's objects are only an orphan once the newest of them is older than ``grace``
(an hour): an upload keeps its master *before* it registers the image, so a young master
with no record yet is an upload in progress, not an orphan. ``clean_*`` asks ``registered``
again right before removing each image.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread

from proxy.stores.masters import DiskMasterStore
from proxy.stores.object_masters import MASTERS
from proxy.stores.object_variants import VARIANTS
from proxy.stores.objects import ObjectStore

GRACE = 3600.0  # seconds: younger objects may belong to an upload not registered yet

Registered = Callable[[str], Awaitable[bool]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Orphan:
    """One unregistered image's objects in the store."""

    image_id: str
    objects: int
    nbytes: int
    newest: float  # when the newest of them was written (Unix time)


async def orphan_report(
    store: ObjectStore,
    registered: Registered,
    *,
    grace: float = GRACE,
    clock: Clock = time.time,
) -> list[Orphan]:
    """Every image with masters or variants in the store and no record, sorted by id.

    One delimited listing per folder finds the images; only unregistered ones are listed
    object by object (for their size and age).
    """
    images = set(await store.folders(MASTERS)) | set(await store.folders(VARIANTS))
    orphans = []
    for image_id in sorted(images):
        if await registered(image_id):
            continue
        objects = nbytes = 0
        newest = 0.0
        for folder in (MASTERS, VARIANTS):
            async for info in store.list_info(f"{folder}/{image_id}"):
                objects += 1
                nbytes += info.size
                newest = max(newest, _timestamp(info.last_modified))
        if objects and clock() - newest >= grace:
            orphans.append(Orphan(image_id, objects, nbytes, newest))
    return orphans


async def find_orphans(
    store: ObjectStore,
    registered: Registered,
    *,
    grace: float = GRACE,
    clock: Clock = time.time,
) -> list[str]:
    """The ids of the images whose objects are orphans (see :func:`orphan_report`)."""
    return [o.image_id for o in await orphan_report(store, registered, grace=grace, clock=clock)]


async def clean_orphans(
    store: ObjectStore,
    registered: Registered,
    *,
    grace: float = GRACE,
    clock: Clock = time.time,
) -> list[Orphan]:
    """Remove every orphan's masters and variants from the store; the orphans removed."""
    removed = []
    for orphan in await orphan_report(store, registered, grace=grace, clock=clock):
        if await registered(orphan.image_id):  # registered since the report: keep it
            continue
        for folder in (MASTERS, VARIANTS):
            await store.delete_prefix(f"{folder}/{orphan.image_id}")
        removed.append(orphan)
    return removed


async def clean_local_masters(
    local: DiskMasterStore,
    registered: Registered,
    *,
    grace: float = GRACE,
    clock: Clock = time.time,
) -> list[str]:
    """Remove this host's masters of unregistered images (another replica deleted the image,
    or this one crashed mid-delete); the image ids removed."""
    removed = []
    for image_id in await local.images():
        if await registered(image_id):
            continue
        newest = await anyio.to_thread.run_sync(_newest_file, local, image_id)
        if clock() - newest < grace or await registered(image_id):
            continue
        await local.delete_image(image_id)
        removed.append(image_id)
    return removed


def _newest_file(local: DiskMasterStore, image_id: str) -> float:
    newest = 0.0
    try:
        entries = list(os.scandir(local.root / image_id))
    except FileNotFoundError:
        return 0.0
    for entry in entries:
        try:
            newest = max(newest, entry.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def _timestamp(when: datetime.datetime) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
