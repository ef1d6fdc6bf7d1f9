"""Store mode's masters: the one paid-for cut-out per image, fetched at once and kept durably.

    MasterKey              image id, image version, cut-out quality: one master each
    MasterStore            protocol: get / put / exists / delete / delete_image / images /
                           versions / close
    └── DiskMasterStore    <data_dir>/masters/<image_id>/<version>-<quality>.png

A master is the upstream's transparent PNG (RGBA) at the original's resolution. It is never
evicted while its image exists: every variant is derived from it, and losing it means paying
the upstream again. So it is written to a temp file, fsync'ed, renamed into place and its
folder fsync'ed: after a crash (or a power cut) the master is whole or absent, never half.
A replaced image gets a new master under its new version; a deleted image's masters go with
``delete_image``. Later an object store sits behind (or instead of) the disk: it implements
the same protocol. Getting a master from the upstream, and checking it, is
:mod:`proxy.variants.fetch`: this store only keeps bytes it is given.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.to_thread

#: Same as the URL grammar's image id (proxy/url/grammar.py), repeated so this module stands
#: alone: it is also what keeps a path component from being ``..`` or holding a ``/``.
_IMAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: A version names the image's content (see proxy/stores/registry.py ``record_version``): no ``-``,
#: which separates it from the quality, and no leading dot, which marks temp files.
_VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,63}")
QUALITIES = ("low", "medium", "high")


@dataclass(frozen=True, slots=True)
class MasterKey:
    """Which master: an image, the version of its content, and the cut-out quality paid for."""

    image_id: str
    version: str
    quality: str

    def __post_init__(self) -> None:
        if not _IMAGE_ID.fullmatch(self.image_id):
            raise ValueError("an image id is 1-128 of A-Z a-z 0-9 _ -")
        if not _VERSION.fullmatch(self.version):
            raise ValueError("a master version is 1-64 of A-Z a-z 0-9 _ . (no leading dot)")
        if self.quality not in QUALITIES:
            raise ValueError(f"a master quality is one of {', '.join(QUALITIES)}")

    @property
    def filename(self) -> str:
        return f"{self.version}-{self.quality}.png"

    @classmethod
    def parse(cls, image_id: str, filename: str) -> MasterKey | None:
        """The key whose :attr:`filename` is ``filename``, or None for any other name."""
        stem, dot, ext = filename.rpartition(".")
        version, dash, quality = stem.rpartition("-")
        if not (dot and dash and ext == "png" and quality in QUALITIES):
            return None
        if not (_IMAGE_ID.fullmatch(image_id) and _VERSION.fullmatch(version)):
            return None
        return cls(image_id, version, quality)


class MasterStore(Protocol):
    """Durable masters: nothing here is ever evicted; only deleting an image removes them."""

    async def get(self, key: MasterKey) -> bytes | None: ...

    async def put(self, key: MasterKey, data: bytes) -> None:
        """Keep ``data`` (already checked) under ``key``, whole or not at all."""
        ...

    async def exists(self, key: MasterKey) -> bool: ...

    async def delete(self, key: MasterKey) -> bool:
        """Remove one master (an image's old version); whether it was there."""
        ...

    async def delete_image(self, image_id: str) -> int:
        """Remove every master of the image; how many there were."""
        ...

    async def images(self) -> list[str]:
        """The ids of every image that has a master (to find orphans against the registry)."""
        ...

    async def versions(self, image_id: str) -> list[MasterKey]:
        """Every master kept for the image (to find old versions a replacement left)."""
        ...

    async def close(self) -> None: ...


class DiskMasterStore:
    """Masters as files ``<root>/<image_id>/<version>-<quality>.png`` on local disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def under(cls, data_dir: Path) -> DiskMasterStore:
        """The store's conventional place: ``<PROXY_DATA_DIR>/masters``."""
        return cls(Path(data_dir) / "masters")

    def path(self, key: MasterKey) -> Path:
        return self.root / key.image_id / key.filename

    # --- the async face: every file operation runs in a worker thread ---------------------

    async def get(self, key: MasterKey) -> bytes | None:
        return await anyio.to_thread.run_sync(self.get_sync, key)

    async def put(self, key: MasterKey, data: bytes) -> None:
        await anyio.to_thread.run_sync(self.put_sync, key, data)

    async def exists(self, key: MasterKey) -> bool:
        return await anyio.to_thread.run_sync(self.path(key).is_file)

    async def delete(self, key: MasterKey) -> bool:
        return await anyio.to_thread.run_sync(self.delete_sync, key)

    async def delete_image(self, image_id: str) -> int:
        return await anyio.to_thread.run_sync(self.delete_image_sync, image_id)

    async def images(self) -> list[str]:
        return await anyio.to_thread.run_sync(self.images_sync)

    async def versions(self, image_id: str) -> list[MasterKey]:
        return await anyio.to_thread.run_sync(self.versions_sync, image_id)

    async def close(self) -> None:
        return None

    # --- the work -----------------------------------------------------------------------

    def get_sync(self, key: MasterKey) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put_sync(self, key: MasterKey, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A leading dot: never listed as a master, and swept if a crash leaves it.
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{key.filename}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)  # the rename itself survives a power cut

    def delete_sync(self, key: MasterKey) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_image_sync(self, image_id: str) -> int:
        if not _IMAGE_ID.fullmatch(image_id):
            raise ValueError("an image id is 1-128 of A-Z a-z 0-9 _ -")
        folder = self.root / image_id
        # Renamed away first: the image's masters vanish at once, and a crash mid-removal
        # leaves a dot-folder that no listing shows (removed by the next delete_image).
        doomed = self.root / f".deleted-{image_id}-{uuid.uuid4().hex}"
        try:
            os.rename(folder, doomed)
        except FileNotFoundError:
            return 0
        count = sum(1 for p in doomed.iterdir() if not p.name.startswith("."))
        shutil.rmtree(doomed, ignore_errors=True)
        self._remove_leftovers()
        return count

    def images_sync(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if e.is_dir() and _IMAGE_ID.fullmatch(e.name))

    def versions_sync(self, image_id: str) -> list[MasterKey]:
        if not _IMAGE_ID.fullmatch(image_id):
            raise ValueError("an image id is 1-128 of A-Z a-z 0-9 _ -")
        try:
            names = sorted(os.listdir(self.root / image_id))
        except FileNotFoundError:
            return []
        keys = []
        for name in names:
            stem, dot, ext = name.rpartition(".")
            version, dash, quality = stem.rpartition("-")
            if dot and dash and ext == "png" and _VERSION.fullmatch(version):
                if quality in QUALITIES:
                    keys.append(MasterKey(image_id, version, quality))
        return keys

    def _remove_leftovers(self) -> None:
        for entry in os.scandir(self.root):
            if entry.name.startswith(".deleted-") and entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
