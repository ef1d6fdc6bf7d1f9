from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import BadRequestError
from proxy.url import grammar
from proxy.url.variant import Variant

LIMITS = grammar.Limits(4000, 4000)


def test_canonical_url_parses_to_variant() -> None:
    parsed = grammar.parse("sku-123", "640x480", "ffffff.jpg", LIMITS)
    assert parsed == Variant("sku-123", 640, 480, "ffffff", "jpg")
    assert parsed.path == "/img/sku-123/640x480/ffffff.jpg"


@pytest.mark.parametrize(
    ("size", "filename", "canonical"),
    [
        ("640x480", "FFF.jpg", "/img/a/640x480/ffffff.jpg"),
        ("640x480", "FFFFFF.jpg", "/img/a/640x480/ffffff.jpg"),
        ("640x480", "abc.png", "/img/a/640x480/aabbcc.png"),
        ("640x480", "ffffff.jpeg", "/img/a/640x480/ffffff.jpg"),
        ("640x480", "ffffff.JPG", "/img/a/640x480/ffffff.jpg"),
        ("0640x480", "ffffff.jpg", "/img/a/640x480/ffffff.jpg"),
        ("320x240@2x", "ffffff.jpg", "/img/a/640x480/ffffff.jpg"),
        ("640x480", "Transparent.png", "/img/a/640x480/transparent.png"),
    ],
)
def test_non_canonical_spellings_redirect(size: str, filename: str, canonical: str) -> None:
    assert grammar.parse("a", size, filename, LIMITS) == grammar.Canonical(canonical)


@pytest.mark.parametrize(
    ("image_id", "size", "filename", "code"),
    [
        ("a" * 129, "10x10", "ffffff.jpg", "bad_image_id"),
        ("a.b", "10x10", "ffffff.jpg", "bad_image_id"),
        ("a", "10", "ffffff.jpg", "bad_size"),
        ("a", "0x10", "ffffff.jpg", "bad_size"),
        ("a", "10x0", "ffffff.jpg", "bad_size"),
        ("a", "-1x10", "ffffff.jpg", "bad_size"),
        ("a", "4001x10", "ffffff.jpg", "bad_size"),
        ("a", "4000x4000", "ffffff.jpg", "bad_size"),  # 16 MP > 12 MP
        ("a", "10x10@5x", "ffffff.jpg", "bad_size"),
        ("a", "10x10", "ffffff.gif", "bad_format"),
        ("a", "10x10", "ffffff", "bad_filename"),
        ("a", "10x10", "red.jpg", "bad_background"),
        ("a", "10x10", "ffff.jpg", "bad_background"),
        ("a", "10x10", "transparent.jpg", "bad_background"),
    ],
)
def test_bad_input_names_what_is_wrong(image_id: str, size: str, filename: str, code: str) -> None:
    with pytest.raises(BadRequestError) as info:
        grammar.parse(image_id, size, filename, LIMITS)
    assert info.value.code == code
    assert info.value.status_code == 400
    assert info.value.message


segment = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=40)


@settings(max_examples=400, deadline=None)
@given(segment, segment, segment)
def test_any_input_parses_or_says_400(image_id: str, size: str, filename: str) -> None:
    try:
        result = grammar.parse(image_id, size, filename, LIMITS)
    except BadRequestError as exc:
        assert exc.message
        return
    assert isinstance(result, Variant | grammar.Canonical)
    if isinstance(result, Variant):
        assert result.width * result.height <= 12_000_000


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4000),
    st.integers(1, 3000),
    st.sampled_from(["FFF", "a1B2c3", "000000", "transparent"]),
    st.sampled_from(["png", "webp", "PNG"]),
)
def test_canonical_form_is_a_fixed_point(w: int, h: int, bg: str, ext: str) -> None:
    result = grammar.parse("x", f"{w}x{h}", f"{bg}.{ext}", LIMITS)
    path = result.path
    _, _, image_id, size, filename = path.split("/")
    assert grammar.parse(image_id, size, filename, LIMITS) == Variant(
        "x", w, h, bg.lower() if len(bg) != 3 else "ffffff", "jpg" if ext == "jpeg" else ext.lower()
    )
