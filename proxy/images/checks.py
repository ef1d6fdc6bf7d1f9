"""Checking an upload before anything is stored or spent: the type sniffed from the bytes,
the size, the pixels (no decompression bomb), a whole decode (:mod:`proxy.images.decoding`),
and its SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from proxy.errors import (
    BadRequestError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from proxy.guards.minter import UPLOAD_EXTENSIONS
from proxy.images import decoding

# Magic numbers of the formats the upstream takes (UPLOAD_EXTENSIONS); nothing else is opened.
_PILLOW_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True, slots=True)
class Probe:
    """What the bytes say about themselves."""

    content_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return UPLOAD_EXTENSIONS[self.content_type]


def sniff(data: bytes) -> str | None:
    """The content type from the first bytes: PNG, JPEG or WebP, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect(data: bytes, max_pixels: int) -> Probe:
    """Check an upload completely (blocking: call it in a thread).

    415 for anything but PNG, JPEG or WebP; 400 when it does not decode to the end or
    declares more than ``max_pixels`` pixels (checked from the header, before decoding).
    Memory stays bounded (:mod:`proxy.images.decoding`): a PNG is checked row by row, never held
    whole; a JPEG is decoded at 1/8 scale; a WebP within ``max_pixels``.
    """
    content_type = sniff(data)
    if content_type is None:
        raise UnsupportedMediaError(
            "the file is not a PNG, JPEG or WebP image", code="unsupported_image_type"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if _PILLOW_FORMATS.get(image.format or "") != content_type:
                    raise BadRequestError(
                        "the file's contents do not match its type", code="undecodable_image"
                    )
                _check_pixels(width, height, max_pixels)
                if content_type == "image/png":
                    # Pillow's getexif() would decode it whole: the chunks tell it instead.
                    after = decoding.check_png(data)
                    turned = quarter_turned(_metadata_only(image.info, after))
                else:
                    if content_type == "image/jpeg":
                        # At 1/8 scale every entropy-coded byte is still read, 64x cheaper.
                        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
                    turned = quarter_turned(image)
                if turned:
                    width, height = height, width
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb(max_pixels) from None
    except (BadRequestError, UnsupportedMediaError):
        raise
    except Exception as exc:
        raise BadRequestError(
            "the image cannot be decoded (truncated or corrupt)", code="undecodable_image"
        ) from exc
    return Probe(content_type, width, height)


def _metadata_only(*infos: Mapping[Any, Any]) -> Image.Image:
    """A 1x1 image carrying ``infos``: Pillow's own getexif() reads the orientation from it."""
    image = Image.new("L", (1, 1))
    for info in infos:
        image.info.update(info)
    return image


# EXIF orientations 5..8 turn the picture a quarter: its upright width is the stored height.
_QUARTER_TURNS = {5, 6, 7, 8}


_ORIENTATION = 0x0112


def quarter_turned(image: Image.Image) -> bool:
    """Whether EXIF orientation turns the picture a quarter, so that it displays (and the
    renderer, which applies the orientation, sees it) with width and height swapped."""
    try:
        return image.getexif().get(_ORIENTATION) in _QUARTER_TURNS
    except Exception:  # a broken EXIF block is ignored by the renderer too
        return False


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise BadRequestError("the image has no pixels", code="undecodable_image")
    if width * height > max_pixels:
        raise _bomb(max_pixels)


def _bomb(max_pixels: int) -> BadRequestError:
    return BadRequestError(
        f"the image declares more than {max_pixels:,} pixels (decompression bomb guard, "
        "PROXY_MAX_INPUT_PIXELS)",
        code="image_too_many_pixels",
    )


def probe(data: bytes) -> tuple[str, tuple[int, int]]:
    """Content type and size of an image, from its bytes (no pixel limit)."""
    checked = inspect(data, max_pixels=2**62)
    return checked.content_type, (checked.width, checked.height)


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLargeError(
            f"the image is over {limit / 1024 / 1024:g} MiB (PROXY_MAX_UPLOAD_MB)",
            code="image_too_large",
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
