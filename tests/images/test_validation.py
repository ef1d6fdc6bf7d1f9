"""Refused uploads: the right status, and nothing stored or spent."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from tests.images.conftest import AUTH, Rig, photo

MIB = 1024 * 1024


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image whose data is a few bytes: a classic bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def real_bomb() -> bytes:
    """9000 x 9000 pixels (81 MP) of one colour: 20 KB on the wire, 243 MB decoded."""
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, "PNG", optimize=True)
    return out.getvalue()


def noisy_jpeg() -> bytes:
    """A JPEG of random pixels: big for its size, so truncating it loses real data."""
    out = io.BytesIO()
    Image.effect_noise((800, 600), 80).convert("RGB").save(out, "JPEG", quality=95)
    return out.getvalue()


CASES = [
    ("text", b"hello, I am a text file\n" * 10, "text/plain", 415, "unsupported_image_type"),
    ("gif", b"GIF89a" + b"\x00" * 64, "image/gif", 415, "unsupported_image_type"),
    ("truncated", noisy_jpeg()[:20_000], "image/jpeg", 400, "undecodable_image"),
    ("png-bad-crc", photo(1)[:-20] + b"\x00" * 20, "image/png", 400, "undecodable_image"),
    ("header-bomb", png_claiming(60_000, 60_000), "image/png", 400, "image_too_many_pixels"),
    ("real-bomb", real_bomb(), "image/png", 400, "image_too_many_pixels"),
    ("oversized", b"\xff\xd8\xff" + b"\x00" * (12 * MIB), "image/jpeg", 413, "image_too_large"),
]


async def assert_nothing_behind(rig: Rig, before: dict[str, object]) -> None:
    assert rig.originals() == []
    listed = (await rig.client.get("/images", headers=AUTH)).json()
    assert listed["total"] == 0 and listed["images"] == []
    after = await rig.stats()
    assert (after["uploads"], after["tokens_minted"]) == (
        before["uploads"],
        before["tokens_minted"],
    )


@pytest.mark.parametrize(("name", "data", "content_type", "status", "code"), CASES)
async def test_refused_uploads_leave_nothing_behind(
    rig: Rig, name: str, data: bytes, content_type: str, status: int, code: str
) -> None:
    before = await rig.stats()
    answer = await rig.upload("thing", data, content_type=content_type)
    assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
    multipart = await rig.client.post(
        "/images", files={"image": (f"{name}.bin", data, content_type)}, headers=AUTH
    )
    assert (multipart.status_code, multipart.json()["error"]) == (status, code)
    await assert_nothing_behind(rig, before)


async def test_a_rejected_replacement_keeps_the_image_as_it_was(rig: Rig) -> None:
    good = photo(3)
    assert (await rig.upload("mug", good)).status_code == 201
    kept = (await rig.client.get("/images/mug", headers=AUTH)).json()
    refused = await rig.upload("mug", noisy_jpeg()[:20_000], content_type="image/jpeg")
    assert refused.status_code == 400
    assert (await rig.client.get("/images/mug", headers=AUTH)).json() == kept
    assert [p.read_bytes() for p in rig.originals()] == [good]


async def test_a_body_without_length_is_cut_off_at_the_limit(rig: Rig) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"\xff\xd8\xff"
        for _ in range(64):  # would be 64 MiB: the proxy must stop reading long before
            sent += MIB
            yield b"\x00" * MIB

    before = await rig.stats()
    answer = await rig.client.put(
        "/images/big", content=endless(), headers={**AUTH, "Content-Type": "image/jpeg"}
    )
    assert answer.status_code == 413 and answer.json()["error"] == "image_too_large"
    assert sent <= 13 * MIB
    await assert_nothing_behind(rig, before)


async def test_content_length_over_the_limit_is_refused_before_reading(rig: Rig) -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    answer = await rig.client.put(
        "/images/big",
        content=never(),
        headers={**AUTH, "Content-Type": "image/jpeg", "Content-Length": str(13 * MIB)},
    )
    assert answer.status_code == 413


async def test_bad_ids_and_multipart_without_an_image(rig: Rig) -> None:
    bad = await rig.upload("no/slash", photo(1))
    assert bad.status_code in (400, 404)
    dotted = await rig.upload("a.b", photo(1))
    assert dotted.status_code == 400 and dotted.json()["error"] == "bad_image_id"
    empty = await rig.client.post("/images", files={"other": ("x", b"1")}, headers=AUTH)
    assert empty.status_code == 400 and empty.json()["error"] == "missing_image"
    assert rig.originals() == []
