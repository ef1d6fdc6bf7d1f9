"""The originals: uploaded image bytes, content-addressed by SHA-256, each stored once.

    BlobStore            protocol: put / get / delete / exists, plus the owners of a blob
    └── DirectoryBlobStore   files under PROXY_BLOB_DIR (default <data_dir>/originals)

The proxy keeps originals so it can upload them to the upstream again when the upstream
forgets an upload (it deletes stored files after 2 hours). Equal files uploaded under several
image ids are one blob with several owners; a blob goes only when its last owner does.
Owners are recorded beside the blob (one empty marker file per image id), so a store on a
volume shared by several machines needs nothing else to know them. Callers serialise a blob's
owner changes with a lock (see :mod:`proxy.images`): the store itself only makes each single
step atomic.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

import anyio.to_thread

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OWNER = re.compile(r"[A-Za-z0-9_-]{1,128}")


class BlobStore(Protocol):
    async def put(self, sha: str, data: bytes) -> None:
        """Store ``data`` under its SHA-256 (a no-op when it is already there)."""
        ...

    async def get(self, sha: str) -> bytes | None: ...

    async def delete(self, sha: str) -> bool: ...

    async def exists(self, sha: str) -> bool: ...

    async def link(self, sha: str, owner: str) -> None:
        """Record that image ``owner`` uses the blob."""
        ...

    async def unlink(self, sha: str, owner: str) -> int:
        """Forget that ``owner`` uses the blob; the number of owners left."""
        ...

    async def owners(self, sha: str) -> list[str]: ...


def check_sha(sha: str) -> str:
    """Only a lowercase hex SHA-256 names a blob: nothing else reaches the file system."""
    if not _SHA256.fullmatch(sha):
        raise ValueError("a blob is named by a lowercase hex SHA-256")
    return sha


class DirectoryBlobStore:
    """Blobs as files ``<root>/<sha[:2]>/<sha>``, written to a temp file and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha: str) -> Path:
        check_sha(sha)
        return self.root / sha[:2] / sha

    def _owners_dir(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{check_sha(sha)}.owners"

    def _put(self, sha: str, data: bytes) -> None:
        target = self.path(sha)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # A reader never sees a half-written original: write aside, then rename atomically.
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _get(self, sha: str) -> bytes | None:
        try:
            return self.path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def _delete(self, sha: str) -> bool:
        owners = self._owners_dir(sha)
        if owners.is_dir():
            for marker in owners.iterdir():
                marker.unlink(missing_ok=True)
            owners.rmdir()
        try:
            self.path(sha).unlink()
        except FileNotFoundError:
            return False
        return True

    def _link(self, sha: str, owner: str) -> None:
        if not _OWNER.fullmatch(owner):
            raise ValueError("an owner is an image id")
        owners = self._owners_dir(sha)
        owners.mkdir(parents=True, exist_ok=True)
        (owners / owner).touch()

    def _unlink(self, sha: str, owner: str) -> int:
        owners = self._owners_dir(sha)
        if _OWNER.fullmatch(owner):
            (owners / owner).unlink(missing_ok=True)
        return len(self._owners(sha))

    def _owners(self, sha: str) -> list[str]:
        try:
            return sorted(p.name for p in self._owners_dir(sha).iterdir())
        except FileNotFoundError:
            return []

    async def put(self, sha: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._put, sha, data)

    async def get(self, sha: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self._get, sha)

    async def delete(self, sha: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete, sha)

    async def exists(self, sha: str) -> bool:
        return await anyio.to_thread.run_sync(self.path(sha).is_file)

    async def link(self, sha: str, owner: str) -> None:
        await anyio.to_thread.run_sync(self._link, sha, owner)

    async def unlink(self, sha: str, owner: str) -> int:
        return await anyio.to_thread.run_sync(self._unlink, sha, owner)

    async def owners(self, sha: str) -> list[str]:
        return await anyio.to_thread.run_sync(self._owners, sha)
