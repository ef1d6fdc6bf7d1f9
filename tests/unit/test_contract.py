"""The upstream contract against the published facts, as fixed numbers.

Every expected value here is written by hand from shared/upstream/backgroundcut-v3.md (prices,
limits, retention) or worked out on paper (the fits), never computed by the contract itself.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream import contract
from proxy.upstream.contract import (
    batching_saving,
    estimate_credits,
    fit,
    pixel_budget,
    to_hundredths,
)

# --- limits and lifetimes -----------------------------------------------------------------


def test_limits_are_the_published_ones() -> None:
    assert contract.MAX_RESOLUTION == 12_000_000  # "up to 12,000,000", also the default
    assert contract.MAX_UPLOAD_MB == 12  # "12 MB at most (413 above it)"
    assert set(contract.INPUT_FORMATS) == {"png", "jpg", "webp"}
    assert set(contract.OUTPUT_FORMATS) == {"png", "webp", "jpg"}
    assert contract.DEFAULT_FORMAT == "png"
    assert contract.QUALITIES == ("low", "medium", "high")
    assert contract.DEFAULT_QUALITY == "medium"
    assert contract.DEFAULT_OUTPUT_COMPRESSION == 85


def test_files_live_two_hours() -> None:
    assert contract.RETENTION_SECONDS == 7200


# --- prices -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "credits"),
    [
        ([], 0.0),
        # The first variant pays by resolution: 0.5 under 1 MP, 1.1 up to 12 MP.
        ([{"variant_name": "a", "max_resolution": 900_000}], 0.5),
        ([{"variant_name": "a", "max_resolution": 999_999}], 0.5),
        ([{"variant_name": "a", "max_resolution": 1_000_000}], 1.1),
        ([{"variant_name": "a", "max_resolution": 4_000_000}], 1.1),
        ([{"variant_name": "a"}], 1.1),  # no max_resolution: the 12 MP default
        # Each further variant in the same request: 0.25.
        ([{"max_resolution": 4_000_000}, {"max_resolution": 500_000}], 1.35),
        ([{"variant_name": "a"}, {"variant_name": "b"}, {"variant_name": "c"}], 1.6),
        # Autocrop: +0.5 on every variant that asks for it.
        ([{"max_resolution": 500_000, "autocrop": True}], 1.0),
        ([{"autocrop": True}, {"max_resolution": 100, "autocrop": True}], 2.35),
        ([{"autocrop": True}, {"autocrop": False}, {"autocrop": True}], 2.6),
        # The largest variant pays the standard rate wherever it is listed (an upper bound).
        ([{"max_resolution": 100}, {"max_resolution": 4_000_000}], 1.35),
        ([{"max_resolution": 100}, {"max_resolution": 200, "autocrop": True}], 1.25),
    ],
)
def test_prices_follow_the_published_rules(
    variants: list[dict[str, object]], credits: float
) -> None:
    assert estimate_credits(variants) == credits


def test_many_variants_in_one_mint_cost_far_less_than_separate_mints() -> None:
    four = [{"variant_name": f"v{n}"} for n in range(4)]
    assert estimate_credits(four) == 1.85  # 1.1 + 3 * 0.25, against 4 * 1.1 = 4.4 apart
    assert batching_saving(four) == 2.55


@pytest.mark.parametrize(
    ("variants", "saved"),
    [
        ([{"max_resolution": 2_000_000}], 0.0),
        ([{"max_resolution": 2_000_000}, {"max_resolution": 500_000}], 0.25),  # 1.6 - 1.35
        ([{"max_resolution": 100}] * 6, 1.25),  # 6 * 0.5 = 3.0 apart, 0.5 + 5 * 0.25 = 1.75
    ],
)
def test_batching_saves_the_difference_to_separate_mints(
    variants: list[dict[str, object]], saved: float
) -> None:
    assert batching_saving(variants) == saved


def test_credits_count_in_exact_hundredths() -> None:
    assert [to_hundredths(c) for c in (0.5, 1.1, 0.25, 1.35, 2.35, 0.0)] == [
        50,
        110,
        25,
        135,
        235,
        0,
    ]


# --- the fit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "budget", "fitted"),
    [
        # 4000x3000 into 1 MP: scale sqrt(1/12) = 0.288675; 1154.70 x 866.03, floored.
        ((4000, 3000), 1_000_000, (1154, 866)),
        # 6000x4000 (24 MP) into the 12 MP cap: scale sqrt(1/2) = 0.707107; 4242.64 x 2828.43.
        ((6000, 4000), 12_000_000, (4242, 2828)),
        # 1000x500 into 640*320 pixels: scale exactly 0.64.
        ((1000, 500), 204_800, (640, 320)),
        # Within budget: the size is kept, never upscaled.
        ((800, 600), 12_000_000, (800, 600)),
        ((800, 600), 480_000, (800, 600)),
        # A line one pixel thick stays one pixel thick and takes the whole budget.
        ((10_000, 1), 500, (500, 1)),
    ],
)
def test_fit_worked_examples(size: tuple[int, int], budget: int, fitted: tuple[int, int]) -> None:
    assert fit(size, budget) == fitted


@pytest.mark.parametrize(
    ("box", "original", "budget"),
    [
        # 640x640 box, 1000x500 original: scale min(0.64, 1.28) = 0.64, so 640x320 pixels.
        ((640, 640), (1000, 500), 204_800),
        # 300x300 box, 1200x900 original: scale 0.25, so 300x225.
        ((300, 300), (1200, 900), 67_500),
        # A box larger than the original: the original's own pixels (no upscaling).
        ((4000, 4000), (800, 600), 480_000),
        # Unknown original: the box's area, up to the 12 MP cap.
        ((640, 480), None, 307_200),
        ((5000, 4000), None, 12_000_000),
        # An original over 12 MP that fits its box: capped at 12 MP all the same.
        ((8000, 8000), (6000, 4000), 12_000_000),
    ],
)
def test_pixel_budget_worked_examples(
    box: tuple[int, int], original: tuple[int, int] | None, budget: int
) -> None:
    assert pixel_budget(box, original) == budget


def test_a_budget_renders_exactly_the_fitted_box() -> None:
    # 640x640 box, 1000x500 original: the budget above renders exactly 640x320.
    assert fit((1000, 500), pixel_budget((640, 640), (1000, 500))) == (640, 320)
    # 300x300 box, 1200x900 original: 300x225.
    assert fit((1200, 900), pixel_budget((300, 300), (1200, 900))) == (300, 225)


@given(
    st.integers(1, 20_000),
    st.integers(1, 20_000),
    st.integers(1, 12_000_000),
)
def test_fit_keeps_within_budget_and_shape(width: int, height: int, budget: int) -> None:
    out_width, out_height = fit((width, height), budget)
    assert out_width * out_height <= max(budget, 1)
    assert out_width <= width and out_height <= height
    if width * height <= budget:
        assert (out_width, out_height) == (width, height)
    else:
        assert out_width * out_height > 0.9 * budget or min(out_width, out_height) < 20
        if min(out_width, out_height) >= 20:  # rounding moves each side by under 3 px
            ratio = (out_width / out_height) / (width / height)
            assert abs(ratio - 1) <= 6 / min(out_width, out_height)
