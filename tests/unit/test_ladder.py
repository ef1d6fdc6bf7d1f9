from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BadRequestError
from proxy.settings import Settings, SettingsError
from proxy.url.grammar import Canonical
from proxy.url.ladder import Ladder, apply, snap_width
from proxy.url.variant import Variant

WIDTHS = "160,320,480,640,768,1024,1280,1536,1920,2560"
RATIOS = "1:1,4:5,3:4,2:3,4:3,3:2,16:9"


def ladder(widths: str = WIDTHS, ratios: str = RATIOS, presets: str = "none") -> Ladder:
    built = Ladder.parse(widths, ratios, presets, max_width=4000, max_height=4000)
    assert built is not None
    return built


def variant(width: int, height: int) -> Variant:
    return Variant("shoe", width, height, "ffffff", "jpg")


def test_every_width_is_offered_in_every_ratio() -> None:
    lad = ladder()
    assert lad.allowed(640, 640) and lad.allowed(640, 480) and lad.allowed(1920, 1080)
    assert lad.allowed(320, 400)  # 4:5
    assert not lad.allowed(641, 480) and not lad.allowed(640, 481)
    assert len(lad.sizes) == 70


def test_snap_goes_up_within_the_aspect_ratio_class() -> None:
    lad = ladder()
    assert lad.snap(500, 500) == (640, 640)
    assert lad.snap(1000, 560) == (1024, 576)  # near 16:9
    assert lad.snap(300, 200) == (320, 213)  # 3:2
    assert lad.snap(640, 480) == (640, 480)  # on the ladder already
    assert lad.snap(3000, 3000) is None  # bigger than the largest square


def test_presets_are_offered_as_they_are() -> None:
    lad = ladder("none", "none", "1200x630, 600x600")
    assert lad.sizes == {(1200, 630), (600, 600)}
    assert lad.snap(1000, 500) == (1200, 630)
    assert lad.snap(100, 100) == (600, 600)
    both = ladder("320", "1:1", "1200x630")
    assert both.sizes == {(320, 320), (1200, 630)}


def test_nothing_configured_means_no_ladder() -> None:
    assert Ladder.parse("none", "1:1", "none") is None
    assert Ladder.parse("", "", "") is None


def test_rungs_over_the_limits_are_dropped() -> None:
    lad = Ladder.parse("1000,3000", "1:1,2:3", "", max_width=4000, max_height=4000)
    assert lad is not None
    assert (3000, 3000) in lad.sizes and (3000, 4500) not in lad.sizes
    cheap = Ladder.parse(WIDTHS, RATIOS, "", max_pixels=999_999)
    assert cheap is not None and all(w * h < 1_000_000 for w, h in cheap.sizes)


@pytest.mark.parametrize(
    ("widths", "ratios", "presets", "variable"),
    [
        ("640,wide", "1:1", "", "PROXY_LADDER_WIDTHS"),
        ("640", "1/1", "", "PROXY_LADDER_RATIOS"),
        ("640", "none", "", "PROXY_LADDER_RATIOS"),
        ("none", "", "1200*630", "PROXY_LADDER_PRESETS"),
        ("none", "", "9000x100", "PROXY_LADDER_PRESETS"),
        ("0", "1:1", "", "PROXY_LADDER_WIDTHS"),
    ],
)
def test_bad_specs_name_their_variable(
    widths: str, ratios: str, presets: str, variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Ladder.parse(widths, ratios, presets, max_width=4000, max_height=4000)


def test_describe_lists_the_sizes_by_ratio() -> None:
    text = ladder("320,640", "1:1,16:9").describe()
    assert text == "1:1: 320x320, 640x640; 16:9: 320x180, 640x360"


def test_policy_off_and_on_ladder_requests_pass_through() -> None:
    lad = ladder()
    odd = variant(333, 333)
    assert apply(lad, "off", odd) is odd
    assert apply(None, "strict", odd) is odd
    on = variant(640, 640)
    assert apply(lad, "strict", on) is on and apply(lad, "snap", on) is on


def test_snap_redirects_to_the_rung() -> None:
    result = apply(ladder(), "snap", variant(500, 500))
    assert result == Canonical("/img/shoe/640x640/ffffff.jpg")


def test_strict_refuses_off_ladder_sizes_and_lists_the_offered_ones() -> None:
    with pytest.raises(BadRequestError) as info:
        apply(ladder("320,640", "1:1"), "strict", variant(500, 500))
    assert info.value.status_code == 400
    assert "500x500" in info.value.message and "320x320, 640x640" in info.value.message


def test_snap_refuses_a_request_above_the_top_rung() -> None:
    with pytest.raises(BadRequestError, match="larger than every size"):
        apply(ladder("320,640", "1:1"), "snap", variant(700, 700))


def test_an_unknown_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        apply(ladder(), "lenient", variant(1, 1))


def test_snap_width_for_srcset() -> None:
    lad = ladder()
    assert [snap_width(lad, w) for w in (1, 160, 161, 700, 2560, 5000)] == [
        160,
        160,
        320,
        768,
        2560,
        2560,
    ]


def test_settings_build_the_ladder_and_check_the_policy() -> None:
    settings = Settings.from_env({"PROXY_LADDER_POLICY": "snap"})
    lad = Ladder.from_settings(settings)
    assert lad is not None and lad.allowed(1920, 1080)
    with pytest.raises(SettingsError, match="PROXY_LADDER_POLICY"):
        Settings.from_env({"PROXY_LADDER_POLICY": "sometimes"})
    with pytest.raises(SettingsError, match="PROXY_LADDER_POLICY"):
        Settings.from_env({"PROXY_LADDER_POLICY": "strict", "PROXY_LADDER_WIDTHS": "none"})
    small = Ladder.from_settings(Settings.from_env({"PROXY_MAX_PIXELS": "1000000"}))
    assert small is not None and max(w * h for w, h in small.sizes) <= 1_000_000


sides = st.integers(min_value=1, max_value=2560)


@given(width=sides, height=sides)
def test_a_snapped_size_is_offered_and_never_smaller(width: int, height: int) -> None:
    lad = ladder()
    snapped = lad.snap(width, height)
    if snapped is not None:
        assert lad.allowed(*snapped)
        assert snapped[0] >= width and snapped[1] >= height


@given(width=sides, height=sides)
def test_apply_yields_only_offered_sizes(width: int, height: int) -> None:
    lad = ladder()
    try:
        result = apply(lad, "snap", variant(width, height))
    except BadRequestError:
        assert lad.snap(width, height) is None
        return
    if isinstance(result, Canonical):
        size = result.path.split("/")[3]
        w, h = (int(n) for n in size.split("x"))
        assert lad.allowed(w, h)
    else:
        assert lad.allowed(result.width, result.height)
