"""An image's life in store mode: an upload carries its master, a replacement gets a new one
and never serves an old variant, a delete takes the master and the variants off the disk."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import product_png
from tests.servers import wait_for
from tests.store_mode.conftest import (
    AUTH,
    VIEW_TTL,
    Stack,
    close,
    decode,
    fetch_all,
    kept_hashes,
    master_files,
    served_image,
    sha,
    upload,
)

pytestmark = pytest.mark.slow

# Every image here has bytes of its own: an upload of bytes the proxy already holds under
# another id may legitimately skip the upstream.
BLUE = (20, 90, 200)
RED = (200, 30, 40)
GREEN = (30, 150, 60)
ORANGE = (230, 120, 20)
PURPLE = (110, 40, 160)


def centre(data: bytes) -> tuple[int, ...]:
    image = decode(data).convert("RGBA")
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return pixel


def test_an_upload_and_its_master_are_one_token(store: Stack) -> None:
    minted = store.engine.minted()
    assert upload(store.url, "uploaded", product_png(fill=GREEN)).status_code == 201
    assert store.engine.minted() == minted + 1
    # the master came with the upload: on disk already, the original's size, with alpha
    masters = master_files(store.data, "uploaded")
    assert len(masters) == 1, masters
    master = decode(masters[0].read_bytes())
    assert master.format == "PNG" and master.mode == "RGBA" and master.size == (800, 600)

    paths = [
        "/img/uploaded/320x320/ffffff.jpg",
        "/img/uploaded/640x360-cover/transparent.png",
        "/img/uploaded/300x300-contain/000000.webp",
        "/img/uploaded/160x160/transparent.avif",
    ]
    for path, answer in zip(paths * 3, fetch_all(store.url, paths * 3), strict=True):
        served_image(answer, path.rsplit(".", 1)[1])
    assert store.engine.minted() == minted + 1


def test_a_replaced_image_gets_a_new_master_and_no_old_variant_is_served(store: Stack) -> None:
    path = "/img/swap/200x200/ffffff.png"
    minted = store.engine.minted()
    upload(store.url, "swap", product_png(fill=BLUE))
    old = fetch_all(store.url, [path] * 20)  # fresh connections: both workers keep it
    assert {a.status_code for a in old} == {200}
    assert len({a.content for a in old}) == 1
    old_etag, old_bytes = old[0].headers["etag"], old[0].content
    assert close(centre(old_bytes), (*BLUE, 255), 40)
    [old_master] = master_files(store.data, "swap")

    replaced = upload(store.url, "swap", product_png(fill=RED))
    assert replaced.status_code == 200
    assert store.engine.minted() == minted + 2  # each upload carried its master
    time.sleep(VIEW_TTL + 0.2)  # every worker's view of the image is renewed

    new = fetch_all(store.url, [path] * 20)
    for answer in new:
        served_image(answer, "png")
        assert answer.headers["etag"] != old_etag
        assert answer.content != old_bytes
        assert close(centre(answer.content), (*RED, 255), 40)
    revalidated = fetch_all(store.url, [path] * 10, {"If-None-Match": old_etag})
    assert {a.status_code for a in revalidated} == {200}
    assert all(a.content == new[0].content for a in revalidated)
    assert store.engine.minted() == minted + 2

    def old_master_gone() -> bool:
        masters = master_files(store.data, "swap")
        return len(masters) == 1 and masters[0] != old_master

    wait_for(old_master_gone, timeout=10)
    assert close(centre(master_files(store.data, "swap")[0].read_bytes()), (*RED, 255), 40)


def test_a_deleted_image_leaves_no_master_or_variant_on_disk(store: Stack) -> None:
    upload(store.url, "doomed", product_png(fill=ORANGE))
    upload(store.url, "kept", product_png(fill=PURPLE))
    paths = [
        f"/img/{image}/{size}/{bg}.{ext}"
        for image in ("doomed", "kept")
        for size in ("120x120", "200x100-cover")
        for bg, ext in (("ffffff", "jpg"), ("transparent", "webp"))
    ]
    answers = list(zip(paths * 2, fetch_all(store.url, paths * 2), strict=True))
    for path, answer in answers:
        served_image(answer, path.rsplit(".", 1)[1])
    hashes = {path: sha(answer.content) for path, answer in answers}
    doomed = {h for p, h in hashes.items() if p.startswith("/img/doomed/")}
    kept = {h for p, h in hashes.items() if p.startswith("/img/kept/")}
    # the disk tier holds what was served (perhaps written just after answering)
    wait_for(lambda: doomed | kept <= kept_hashes(store.data), timeout=10)
    assert master_files(store.data, "doomed")

    deleted = httpx.delete(f"{store.url}/images/doomed", headers=AUTH, timeout=30)
    assert deleted.status_code in (200, 204), deleted.text
    wait_for(lambda: not master_files(store.data, "doomed"), timeout=10)
    wait_for(lambda: not doomed & kept_hashes(store.data), timeout=10)
    assert kept <= kept_hashes(store.data)  # another image's variants stay
    assert master_files(store.data, "kept")

    time.sleep(VIEW_TTL + 0.2)
    gone = fetch_all(store.url, [p for p in paths if p.startswith("/img/doomed/")] * 5)
    assert {a.status_code for a in gone} == {404}
    assert {a.headers["content-type"] for a in gone} == {"application/json"}
