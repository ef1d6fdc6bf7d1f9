"""The fit suffix (``640x640-cover``), avif and the modes: the grammar, the one decision, the
ladder, signatures, cache keys and srcset, as a visitor's URL meets them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BadRequestError, ForbiddenError
from proxy.serving import srcset
from proxy.settings import Settings
from proxy.url import grammar
from proxy.url.decision import Decider, Redirect, Serve, plain
from proxy.url.signing import Signer
from proxy.url.variant import Variant, cache_key
from proxy.variants.derivation import variant_key
from proxy.variants.store_specs import variant_size, variant_spec

STORE = grammar.Limits(4000, 4000, store=True, default_fit="pad")
REDIRECT = grammar.Limits(4000, 4000)
KEY, SALT = "6b6579", "73616c74"


def test_a_fit_suffix_names_a_variant_in_store_mode() -> None:
    parsed = grammar.parse("mug", "640x480-cover", "ffffff.jpg", STORE)
    assert parsed == Variant("mug", 640, 480, "ffffff", "jpg", "cover", True)
    assert parsed.path == "/img/mug/640x480-cover/ffffff.jpg"
    plain_size = grammar.parse("mug", "640x480", "ffffff.jpg", STORE)
    assert isinstance(plain_size, Variant) and plain_size.fit == "pad"
    assert plain_size.path == "/img/mug/640x480/ffffff.jpg"


@pytest.mark.parametrize(
    ("limits", "size", "filename", "canonical"),
    [
        # The default fit is never spelled: one URL per variant.
        (STORE, "640x480-pad", "ffffff.jpg", "/img/a/640x480/ffffff.jpg"),
        (REDIRECT, "640x480-contain", "ffffff.jpg", "/img/a/640x480/ffffff.jpg"),
        (
            grammar.Limits(4000, 4000, store=True, default_fit="cover"),
            "640x480-cover",
            "fff.webp",
            "/img/a/640x480/ffffff.webp",
        ),
        # Case, density and the other spellings are canonicalised around the suffix.
        (STORE, "640x480-Cover", "ffffff.jpg", "/img/a/640x480-cover/ffffff.jpg"),
        (STORE, "320x240-cover@2x", "FFF.jpeg", "/img/a/640x480-cover/ffffff.jpg"),
        (STORE, "320x240-pad@2x", "transparent.avif", "/img/a/640x480/transparent.avif"),
    ],
)
def test_other_spellings_of_a_fit_redirect(
    limits: grammar.Limits, size: str, filename: str, canonical: str
) -> None:
    parsed = grammar.parse("a", size, filename, limits)
    assert isinstance(parsed, grammar.Canonical) and parsed.path == canonical
    assert parsed.variant is not None and parsed.variant.path == canonical


@pytest.mark.parametrize(
    ("limits", "size", "filename", "code"),
    [
        (REDIRECT, "640x480-pad", "ffffff.jpg", "fit_needs_store_mode"),
        (REDIRECT, "640x480-cover", "ffffff.jpg", "fit_needs_store_mode"),
        (REDIRECT, "640x480", "ffffff.avif", "format_needs_store_mode"),
        (REDIRECT, "640x480", "transparent.avif", "format_needs_store_mode"),
        (STORE, "640x480-zoom", "ffffff.jpg", "bad_fit"),
        (STORE, "640x480-", "ffffff.jpg", "bad_size"),
        (STORE, "640x480@2x-cover", "ffffff.jpg", "bad_size"),
        (STORE, "640x480", "transparent.jpg", "bad_background"),
        (STORE, "640x480", "ffffff.gif", "bad_format"),
    ],
)
def test_what_a_mode_cannot_make_is_a_400_naming_why(
    limits: grammar.Limits, size: str, filename: str, code: str
) -> None:
    with pytest.raises(BadRequestError) as refused:
        grammar.parse("a", size, filename, limits)
    assert refused.value.code == code
    if code == "fit_needs_store_mode":
        assert refused.value.message == (
            "the upstream can only fit inside a box (contain); exact frames need PROXY_MODE=store"
        )


def test_store_mode_serves_avif_with_or_without_alpha() -> None:
    for filename in ("transparent.avif", "ffffff.avif"):
        parsed = grammar.parse("a", "64x64-cover", filename, STORE)
        assert isinstance(parsed, Variant) and parsed.ext == "avif"


@given(
    width=st.integers(1, 4000),
    height=st.integers(1, 3000),
    fit=st.sampled_from(["contain", "pad", "cover", None]),
    ext=st.sampled_from(["jpg", "png", "webp", "avif"]),
)
def test_every_canonical_path_parses_back_to_itself(
    width: int, height: int, fit: str | None, ext: str
) -> None:
    size = f"{width}x{height}" + (f"-{fit}" if fit else "")
    parsed = grammar.parse("a", size, f"ffffff.{ext}", STORE)
    variant = parsed if isinstance(parsed, Variant) else parsed.variant
    assert variant is not None and variant.fit == (fit or "pad")
    _, _, size_part, filename = variant.path.strip("/").split("/")
    assert grammar.parse("a", size_part, filename, STORE) == variant


def test_the_decision_follows_the_modes_settings() -> None:
    store = Decider.from_settings(Settings(mode="store", fit="cover"), plain)
    served = store.decide("/img/a/640x480/ffffff.jpg")
    assert isinstance(served, Serve) and served.variant.fit == "cover"
    assert isinstance(store.decide("/img/a/640x480-cover/ffffff.jpg"), Redirect)
    redirect = Decider.from_settings(Settings(), plain)
    with pytest.raises(BadRequestError, match="PROXY_MODE=store"):
        redirect.decide("/img/a/640x480-cover/ffffff.jpg")


def test_the_ladder_snaps_the_size_and_keeps_the_fit() -> None:
    decider = Decider.from_settings(Settings(mode="store", ladder_policy="snap"), plain)
    answer = decider.decide("/img/a/600x600-cover/ffffff.jpg")
    assert isinstance(answer, Redirect) and answer.path == "/img/a/640x640-cover/ffffff.jpg"
    # Spelled with the default fit and off the ladder: one hop, to the rung without it.
    answer = decider.decide("/img/a/300x300-pad@2x/ffffff.jpg")
    assert isinstance(answer, Redirect) and answer.path == "/img/a/640x640/ffffff.jpg"
    assert decider.variant("a", "600x600-contain", "ffffff.png").path == (
        "/img/a/640x640-contain/ffffff.png"
    )


def test_a_signature_covers_the_fit_suffix() -> None:
    settings = Settings(mode="store", signing_key=(KEY,), signing_salt=(SALT,))
    decider = Decider.from_settings(settings, plain)
    signer = Signer.from_hex([KEY], [SALT])
    cover = "/img/a/640x480-cover/ffffff.jpg"
    signed = f"s={signer.sign_path(cover)}".encode()
    assert isinstance(decider.decide(cover, signed), Serve)
    for other in ("/img/a/640x480/ffffff.jpg", "/img/a/640x480-contain/ffffff.jpg"):
        with pytest.raises(ForbiddenError):
            decider.decide(other, signed)


def test_cache_keys_tell_fits_apart() -> None:
    settings = Settings(mode="store")
    keys = set()
    for fit in ("contain", "pad", "cover"):
        variant = Variant("a", 640, 480, "ffffff", "jpg", fit, fit != "pad")
        keys.add(variant_key("a", variant_spec(variant, settings), "v1", "medium"))
        keys.add(cache_key(variant, settings))
    assert len(keys) == 6


def test_avif_has_its_own_quality() -> None:
    settings = Settings(mode="store", avif_quality=41, output_compression=88)
    avif = variant_spec(Variant("a", 64, 64, "ffffff", "avif", "pad"), settings)
    jpg = variant_spec(Variant("a", 64, 64, "ffffff", "jpg", "pad"), settings)
    assert (avif.quality, jpg.quality) == (41, 88)


def test_store_mode_sizes_frame_exactly_or_fit_inside() -> None:
    pad = Variant("a", 640, 640, "ffffff", "jpg", "pad")
    contain = Variant("a", 640, 640, "ffffff", "jpg", "contain", True)
    assert variant_size(pad, (800, 600), 12_000_000) == (640, 640)
    assert variant_size(contain, (800, 600), 12_000_000) == (640, 480)
    assert variant_size(contain, (300, 200), 12_000_000) == (300, 200)  # never upscaled
    assert variant_size(contain, None, 12_000_000) is None


def test_srcset_spells_the_fit_and_describes_what_is_delivered() -> None:
    store = Settings(mode="store")
    found = srcset.candidates(
        "a", [320, 640], "4:3", fit="cover", settings=store, original=(800, 600)
    )
    assert [c.url for c in found] == [
        "/img/a/320x240-cover/ffffff.jpg",
        "/img/a/640x480-cover/ffffff.jpg",
    ]
    assert [c.width for c in found] == [320, 640]
    default = srcset.candidates("a", [320], "1:1", fit="pad", settings=store, original=(800, 600))
    assert default[0].url == "/img/a/320x320/ffffff.jpg" and default[0].height == 320
    contain = srcset.candidates(
        "a", [1280], "1:1", fit="contain", settings=store, original=(800, 600)
    )
    assert contain[0].url == "/img/a/1280x1280-contain/ffffff.jpg"
    assert (contain[0].width, contain[0].height) == (800, 600)  # never upscaled
    with pytest.raises(ValueError, match="PROXY_MODE=store"):
        srcset.candidates("a", [320], "1:1", fit="cover", settings=Settings())
