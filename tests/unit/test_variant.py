from __future__ import annotations

import math

from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.settings import Settings
from proxy.url.variant import Variant, cache_key, max_resolution, output_variant


def fitted(original: tuple[int, int], budget: int) -> tuple[int, int]:
    """What the upstream renders: aspect kept, w*h <= budget, never upscaled."""
    ow, oh = original
    scale = min(1.0, math.sqrt(budget / (ow * oh)))
    return math.floor(ow * scale), math.floor(oh * scale)


@given(st.integers(1, 4000), st.integers(1, 3000), st.integers(50, 5000), st.integers(50, 5000))
def test_budget_output_fits_the_box(w: int, h: int, ow: int, oh: int) -> None:
    variant = Variant("a", w, h, "ffffff", "jpg")
    scale = min(w / ow, h / oh)
    assume(ow * scale >= 1 and oh * scale >= 1)  # a box thinner than one pixel cannot fit
    out_w, out_h = fitted((ow, oh), max_resolution(variant, (ow, oh)))
    assert out_w <= w and out_h <= h
    assert out_w <= ow and out_h <= oh


def test_unknown_original_uses_the_box_area() -> None:
    assert max_resolution(Variant("a", 640, 480, "ffffff", "jpg"), None) == 640 * 480


def test_output_variant_carries_exactly_the_request() -> None:
    settings = Settings()
    spec = output_variant(Variant("a", 640, 640, "ff5733", "jpg"), settings, (1000, 500))
    assert spec == {
        "variant_name": "640x640_ff5733_jpg",
        "max_resolution": 640 * 320,
        "format": "jpg",
        "quality": "medium",
        "output_compression": 85,
        "autocrop": False,
        "background_color": "#FF5733",
    }
    transparent = output_variant(Variant("a", 64, 64, "transparent", "png"), settings, None)
    assert "background_color" not in transparent


def test_cache_key_changes_with_render_settings() -> None:
    variant = Variant("a", 64, 64, "ffffff", "png")
    assert cache_key(variant, Settings()) != cache_key(variant, Settings(quality="high"))
    assert cache_key(variant, Settings()).startswith("/img/a/")
