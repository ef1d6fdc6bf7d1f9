"""What a mint costs, by BackgroundCut's public price rules.

- the request's first variant is charged the standard rate for its resolution: 0.5 credit
  under 1 MP, 1.1 credit up to 12 MP;
- every further variant in the same request costs 0.25 credit;
- autocrop adds 0.5 credit to each variant that asks for it;
- reusing an uploaded image costs nothing extra.

"First" is read as "priciest": the largest variant pays the standard rate. When the listed
first variant is the largest this is the published rule exactly; otherwise it is an upper
bound, so budgets built on :func:`estimate_credits` never under-count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MAX_RESOLUTION = 12_000_000
LOW_RATE_BELOW_PIXELS = 1_000_000
LOW_RATE = 0.5
STANDARD_RATE = 1.1
EXTRA_VARIANT = 0.25
AUTOCROP = 0.5


def estimate_credits(output_variants: Sequence[Mapping[str, Any]]) -> float:
    """Credits charged for minting one token with these ``output_variants``."""
    if not output_variants:
        return 0.0
    largest = max(int(v.get("max_resolution") or MAX_RESOLUTION) for v in output_variants)
    total = LOW_RATE if largest < LOW_RATE_BELOW_PIXELS else STANDARD_RATE
    total += EXTRA_VARIANT * (len(output_variants) - 1)
    total += AUTOCROP * sum(1 for v in output_variants if v.get("autocrop") is True)
    return round(total, 2)


def to_hundredths(credits: float) -> int:
    """Credits as whole hundredths, so shared counters can use atomic integer increments."""
    return round(credits * 100)
