"""Masters on disk: one file per image version and quality, written whole, deleted by image."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.stores.masters import DiskMasterStore, MasterKey


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_put_get_exists(tmp_path: Path) -> None:
    masters = DiskMasterStore.under(tmp_path)
    key = MasterKey("shoe-1", "a1b2c3d4e5f60718", "medium")
    assert await masters.get(key) is None and not await masters.exists(key)
    await masters.put(key, b"png bytes")
    assert await masters.get(key) == b"png bytes" and await masters.exists(key)
    assert files(tmp_path) == ["masters/shoe-1/a1b2c3d4e5f60718-medium.png"]
    # Written again (a retry after a crash): replaced whole, and no temp file stays behind.
    await masters.put(key, b"other png bytes")
    assert await masters.get(key) == b"other png bytes"
    assert files(tmp_path) == ["masters/shoe-1/a1b2c3d4e5f60718-medium.png"]


async def test_delete_image_removes_every_master_of_that_image_only(tmp_path: Path) -> None:
    masters = DiskMasterStore.under(tmp_path)
    kept = MasterKey("bag", "v1", "medium")
    doomed = [
        MasterKey("shoe", "v1", "medium"),
        MasterKey("shoe", "v2.3", "medium"),  # a replacement's new version
        MasterKey("shoe", "v2.3", "high"),
    ]
    for key in [kept, *doomed]:
        await masters.put(key, key.filename.encode())
    assert await masters.images() == ["bag", "shoe"]
    assert await masters.versions("shoe") == sorted(doomed, key=lambda k: k.filename)
    assert await masters.delete_image("shoe") == 3
    assert await masters.images() == ["bag"]
    assert await masters.versions("shoe") == []
    assert [await masters.get(key) for key in doomed] == [None, None, None]
    assert await masters.get(kept) == kept.filename.encode()
    assert files(tmp_path) == ["masters/bag/v1-medium.png"]  # no leftover folder of any kind
    assert await masters.delete_image("shoe") == 0


async def test_one_old_version_can_go(tmp_path: Path) -> None:
    masters = DiskMasterStore.under(tmp_path)
    old, new = MasterKey("shoe", "v1", "medium"), MasterKey("shoe", "v2", "medium")
    await masters.put(old, b"old")
    await masters.put(new, b"new")
    assert await masters.delete(old) and not await masters.delete(old)
    assert await masters.versions("shoe") == [new]


async def test_an_empty_store_lists_nothing(tmp_path: Path) -> None:
    masters = DiskMasterStore.under(tmp_path / "nowhere")
    assert await masters.images() == []
    assert await masters.versions("shoe") == []
    assert await masters.delete_image("shoe") == 0


@pytest.mark.parametrize(
    ("image_id", "version", "quality"),
    [
        ("..", "v1", "medium"),
        ("a/b", "v1", "medium"),
        ("", "v1", "medium"),
        ("shoe", "../v1", "medium"),
        ("shoe", ".hidden", "medium"),
        ("shoe", "v-1", "medium"),  # the dash separates version from quality
        ("shoe", "v1", "ultra"),
    ],
)
def test_a_key_cannot_leave_its_folder(image_id: str, version: str, quality: str) -> None:
    with pytest.raises(ValueError):
        MasterKey(image_id, version, quality)


async def test_delete_image_refuses_a_path(tmp_path: Path) -> None:
    masters = DiskMasterStore.under(tmp_path)
    await masters.put(MasterKey("shoe", "v1", "low"), b"x")
    with pytest.raises(ValueError):
        await masters.delete_image("..")
    assert files(tmp_path) == ["masters/shoe/v1-low.png"]
