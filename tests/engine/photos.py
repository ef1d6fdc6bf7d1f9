"""Generated product photos: an object on a plain, slightly noisy background.

The subject is a rounded red box with a round label of the *background* colour inside it,
so a remover that keys out every background-coloured pixel would punch a hole in it.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageChops, ImageDraw

BACKGROUND = (236, 236, 236)
SUBJECT = (196, 38, 44)
SIZE = (1200, 900)
#: The subject's bounding box (left, top, right, bottom), right and bottom exclusive.
BOX = (300, 200, 901, 701)


def product_photo(
    size: tuple[int, int] = SIZE,
    box: tuple[int, int, int, int] = BOX,
    *,
    noise: float = 4.0,
) -> Image.Image:
    """RGB photo: the subject inside ``box`` (exclusive), the label at its centre."""
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    radius = min(right - left, bottom - top) // 8
    draw.rounded_rectangle((left, top, right - 1, bottom - 1), radius=radius, fill=SUBJECT)
    draw.ellipse(label_box(box), fill=BACKGROUND)
    if noise:
        grain = Image.effect_noise(size, noise).convert("L")
        image = ImageChops.add(image, Image.merge("RGB", [grain] * 3), offset=-128)
    return image


def label_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    return (left + width // 4, top + height // 4, right - width // 4, bottom - height // 4)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo_jpeg(**kwargs: object) -> bytes:
    return encode(product_photo(**kwargs), "JPEG", quality=92)  # type: ignore[arg-type]


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width`` x ``height``: a decompression bomb."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)
