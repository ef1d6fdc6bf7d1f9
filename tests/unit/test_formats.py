"""``.auto``: the format each Accept gets, in each mode."""

from __future__ import annotations

import pytest

from proxy.serving import formats
from proxy.serving.formats import best_format
from proxy.url.variant import Variant

CHROME = b"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "transparent", "store", "expected"),
    [
        (CHROME, False, True, "avif"),
        (CHROME, True, True, "avif"),
        (CHROME, False, False, "webp"),  # the upstream makes no avif
        (b"image/webp,*/*", False, True, "webp"),
        (b"image/avif;q=0,image/webp", False, True, "webp"),  # q=0: not acceptable
        (b"IMAGE/AVIF", False, True, "avif"),
        (b"image/*,*/*", False, True, "jpg"),  # promises neither
        (b"image/*,*/*", True, True, "png"),
        (None, False, True, "jpg"),
        (b"application/json", True, False, "png"),
        (b"image/webp;q=bad", False, True, "jpg"),
    ],
)
def test_the_best_format_the_accept_names(
    accept: bytes | None, transparent: bool, store: bool, expected: str
) -> None:
    assert best_format(accept, transparent=transparent, store=store) == expected


def test_an_auto_variant_becomes_the_same_object_for_every_request_of_a_format() -> None:
    # Memos keyed by the variant object (the store's tier keys on the hit path) hold for
    # .auto URLs only if every request of one format gets the one object.
    auto = Variant("mug", 320, 320, "ffffff", "auto")
    webp = b"image/webp,*/*"
    first = formats.concrete(auto, webp, store=True)
    assert first.ext == "webp"
    assert formats.concrete(auto, webp, store=True) is first
    assert formats.concrete(auto, b"*/*", store=True).ext == "jpg"
