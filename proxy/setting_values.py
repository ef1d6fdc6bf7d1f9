"""Settings whose value is more than a type: parsed here, on the ground floor.

:mod:`proxy.settings` validates every value at start-up by parsing it with these functions,
and the packages that use a value (the size ladder, URL signing, the client guards, CDN
purges) build on what they return; so settings imports none of those packages. Each error is
a :class:`SettingsError` naming the variable, never echoing a secret.

- :func:`ladder_classes`: ``PROXY_LADDER_WIDTHS``/``_RATIOS``/``_PRESETS`` to sizes by ratio;
- :func:`signing_pairs`: ``PROXY_SIGNING_KEY``/``_SALT`` hex to (key, salt) bytes;
- :func:`parse_rate`: ``PROXY_CLIENT_MISS_RATE`` and ``PROXY_CLIENT_DERIVE_RATE`` to a
  ``limits`` rate (:func:`rate_or_none`: ``none`` turns the second off);
- :func:`parse_networks`: ``PROXY_TRUSTED_PROXIES`` to networks;
- :data:`LADDER_POLICIES`, :data:`PURGE_STYLES`, :data:`MODES` and :data:`FITS`: the names
  four settings may take.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from typing import Final

import limits

from proxy.envconfig import SettingsError

# --- the size ladder ------------------------------------------------------------------------

LADDER_POLICIES: Final = ("off", "snap", "strict")
"""The values of ``PROXY_LADDER_POLICY``."""

Size = tuple[int, int]
Ratio = tuple[int, int]
#: The ladder's sizes: per aspect-ratio class, its rungs smallest first.
LadderClasses = tuple[tuple[Ratio, tuple[Size, ...]], ...]

_WIDTH = re.compile(r"[1-9][0-9]{0,5}")
_RATIO = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")
_PRESET = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")
_NONE = {"", "none"}
_LIMITS = "(PROXY_MAX_WIDTH, PROXY_MAX_HEIGHT, PROXY_MAX_PIXELS)"


def ladder_classes(
    widths: str,
    ratios: str,
    presets: str,
    *,
    max_width: int | None,
    max_height: int | None,
    max_pixels: int,
) -> LadderClasses | None:
    """The ladder's sizes from comma-separated specs; None when it has no size at all.

    ``widths`` like ``320,640``, ``ratios`` like ``1:1,16:9``, ``presets`` like
    ``1200x630``; ``none`` (or empty) for none. Widths ``none`` turns the width grid off.
    Every width is offered in every ratio (its height rounded), classed by that ratio; a
    preset is classed by its reduced ratio. Width-grid rungs beyond the bounds are dropped;
    a preset beyond them is an error. Classes are sorted by ratio, rungs by area then width.
    """
    width_list = [w for (w,) in _split(widths, "PROXY_LADDER_WIDTHS", _WIDTH, "widths like 640")]
    ratio_list = [
        _reduce(a, b) for a, b in _split(ratios, "PROXY_LADDER_RATIOS", _RATIO, "W:H like 4:3")
    ]
    preset_list = [
        (w, h) for w, h in _split(presets, "PROXY_LADDER_PRESETS", _PRESET, "WxH like 1200x630")
    ]
    if not width_list:
        ratio_list = []  # no width grid: the ratios have nothing to shape
    elif not ratio_list:
        raise SettingsError(
            "PROXY_LADDER_RATIOS: the ladder widths need at least one ratio like 1:1 "
            "(or set PROXY_LADDER_WIDTHS to `none` for presets only)"
        )
    if not (width_list or preset_list):
        return None

    def fits(size: Size) -> bool:
        w, h = size
        return (
            (max_width is None or w <= max_width)
            and (max_height is None or h <= max_height)
            and w * h <= max_pixels
        )

    groups: dict[Ratio, set[Size]] = {}
    for ratio in ratio_list:
        rw, rh = ratio
        rungs = {(w, max(1, round(w * rh / rw))) for w in width_list}
        groups.setdefault(ratio, set()).update(s for s in rungs if fits(s))
    for preset in preset_list:
        if not fits(preset):
            raise SettingsError(
                f"PROXY_LADDER_PRESETS: {preset[0]}x{preset[1]} is over the size limits {_LIMITS}"
            )
        groups.setdefault(_reduce(*preset), set()).add(preset)
    classes = tuple(
        (ratio, tuple(sorted(sizes, key=_area_then_width)))
        for ratio, sizes in sorted(groups.items(), key=lambda item: item[0][0] / item[0][1])
        if sizes
    )
    if not classes:
        raise SettingsError(
            f"PROXY_LADDER_WIDTHS: every ladder size is over the size limits {_LIMITS}"
        )
    return classes


def _area_then_width(size: Size) -> tuple[int, int]:
    return size[0] * size[1], size[0]


def _reduce(a: int, b: int) -> Ratio:
    g = math.gcd(a, b)
    return a // g, b // g


def _split(spec: str, env: str, pattern: re.Pattern[str], shape: str) -> list[tuple[int, ...]]:
    if spec.strip().lower() in _NONE:
        return []
    out: list[tuple[int, ...]] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        match = pattern.fullmatch(item)
        if match is None:
            raise SettingsError(f"{env}: expected {shape}, got {item[:20]!r}")
        value = tuple(int(group) for group in (match.groups() or (match[0],)))
        if value not in out:
            out.append(value)
    return out


# --- URL signing ----------------------------------------------------------------------------

MAX_SIGNATURE_SIZE: Final = 32  # bytes of an HMAC-SHA256
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_KEY_ENV = "PROXY_SIGNING_KEY"
_SALT_ENV = "PROXY_SIGNING_SALT"
_SIZE_ENV = "PROXY_SIGNATURE_SIZE"


def signing_pairs(
    keys: Sequence[str], salts: Sequence[str], size: int = MAX_SIGNATURE_SIZE
) -> tuple[tuple[bytes, bytes], ...]:
    """Hex keys and salts (one salt per key, in order) as (key, salt) bytes.

    Raises :class:`SettingsError` naming ``PROXY_SIGNING_KEY``, ``PROXY_SIGNING_SALT`` or
    ``PROXY_SIGNATURE_SIZE`` when they are empty, not hex, or of different counts.
    """
    if isinstance(keys, str) or isinstance(salts, str):
        raise TypeError("keys and salts are sequences of hex strings")
    if not keys:
        raise SettingsError(f"{_KEY_ENV}: at least one hex key is needed")
    if not salts:
        raise SettingsError(f"{_SALT_ENV}: at least one hex salt is needed")
    if len(keys) != len(salts):
        raise SettingsError(
            f"{_KEY_ENV} has {len(keys)} key(s) but {_SALT_ENV} has {len(salts)} "
            "salt(s): give one salt per key, in the same order"
        )
    if not 1 <= size <= MAX_SIGNATURE_SIZE:
        raise SettingsError(f"{_SIZE_ENV}: must be between 1 and {MAX_SIGNATURE_SIZE}")
    return tuple(
        (_unhex(key, _KEY_ENV, n), _unhex(salt, _SALT_ENV, n))
        for n, (key, salt) in enumerate(zip(keys, salts, strict=True), start=1)
    )


def _unhex(value: str, env: str, position: int) -> bytes:
    text = value.strip()
    if not _HEX.fullmatch(text):
        # Name the position, never the value: it is a secret.
        raise SettingsError(
            f"{env}: entry {position} must be a non-empty hex string (an even number of 0-9a-f)"
        )
    return bytes.fromhex(text)


# --- client guards --------------------------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_rate(text: str, env: str = "PROXY_CLIENT_MISS_RATE") -> limits.RateLimitItem:
    """One ``limits`` rate such as ``60/minute`` or ``10 per second``.

    Raises :class:`SettingsError` naming ``env`` (``PROXY_CLIENT_MISS_RATE`` or
    ``PROXY_CLIENT_DERIVE_RATE``).
    """
    try:
        items = limits.parse_many(text)
    except ValueError:
        items = []
    if len(items) != 1:
        raise SettingsError(f"{env}: expected one rate like 60/minute, got {text[:40]!r}")
    return items[0]


def rate_or_none(text: str | None) -> str | None:
    """A rate setting that ``none`` (or empty) turns off: the rate, or None."""
    if text is None or text.strip().lower() in _NONE:
        return None
    return text


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (``10.0.0.0/8``, ``::1``) as networks; SettingsError names PROXY_TRUSTED_PROXIES."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise SettingsError(
                f"PROXY_TRUSTED_PROXIES: expected CIDRs like 10.0.0.0/8, got {cidr[:50]!r}"
            ) from None
    return tuple(out)


# --- CDN purges -----------------------------------------------------------------------------

PURGE_STYLES: Final = ("varnish", "fastly", "cloudflare")
"""The values of ``PROXY_CDN_PURGE_STYLE``."""

# --- store mode -----------------------------------------------------------------------------

MODES: Final = ("redirect", "store")
"""The values of ``PROXY_MODE``: redirect to the upstream's outputs, or keep one master per
image and serve variants derived from it."""
FITS: Final = ("contain", "pad", "cover")
"""The values of ``PROXY_FIT`` and of a URL's fit suffix (``640x640-cover``)."""
