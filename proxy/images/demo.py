"""The demo product photo: generated, so ``make serve`` needs no files and no network."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

DEMO_ID = "demo"


def product_photo(width: int = 1200, height: int = 900, seed: int = 7) -> bytes:
    """A mug-like product on a plain, slightly noisy studio background, as a JPEG."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (236, 236, 232))
    noise = Image.effect_noise((width, height), 6).convert("RGB")
    image = Image.blend(image, noise, 0.04)
    draw = ImageDraw.Draw(image)
    cx, cy = width // 2, height // 2
    body = (cx - width // 6, cy - height // 4, cx + width // 6, cy + height // 3)
    draw.rounded_rectangle(body, radius=width // 30, fill=(200, 40, 48))
    # the handle: a ring whose hole shows the background, as real product shots do
    hx0, hy0 = body[2] - width // 60, cy - height // 8
    draw.ellipse((hx0, hy0, hx0 + width // 7, hy0 + height // 4), fill=(200, 40, 48))
    inset = width // 40
    draw.ellipse(
        (hx0 + inset, hy0 + inset, hx0 + width // 7 - inset, hy0 + height // 4 - inset),
        fill=(236, 236, 232),
    )
    draw.rectangle((body[0] + 30, cy - 20, body[2] - 30, cy + 30), fill=(250, 250, 250))
    for _ in range(6):
        x = rng.randint(body[0] + 40, body[2] - 60)
        draw.ellipse((x, cy - 8, x + 16, cy + 8), fill=(30, 30, 30))
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()
