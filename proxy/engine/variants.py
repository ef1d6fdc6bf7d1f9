"""The ``output_variants`` of a mint: checked field by field into :class:`OutputVariant`.

Only the fields of the v3 contract exist; anything else is refused with a 400 that names the
field, so a client that misspells one finds out at once instead of getting a default.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from proxy.engine.errors import InvalidRequestError
from proxy.upstream.contract import (
    DEFAULT_FORMAT,
    DEFAULT_OUTPUT_COMPRESSION,
    DEFAULT_QUALITY,
    MAX_RESOLUTION,
    OUTPUT_FORMATS,
    QUALITIES,
)

CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
MAX_NAME_LENGTH = 200
_HEX = re.compile(r"#([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})")


@dataclass(frozen=True, slots=True)
class OutputVariant:
    """One requested output. ``background_color`` is ``#RRGGBB`` or None (transparent)."""

    variant_name: str
    max_resolution: int = MAX_RESOLUTION
    format: str = DEFAULT_FORMAT
    quality: str = DEFAULT_QUALITY
    background_color: str | None = None
    output_compression: int = DEFAULT_OUTPUT_COMPRESSION
    autocrop: bool = False

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def rgb(self) -> tuple[int, int, int] | None:
        """The background as RGB; a jpg asked without one gets white (JPEG has no alpha)."""
        if self.background_color is None:
            return (255, 255, 255) if self.format == "jpg" else None
        value = int(self.background_color[1:], 16)
        return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputVariant:
        """Rebuild from :meth:`as_json` (a signed token's payload: already checked)."""
        return cls(**data)


_FIELDS = frozenset(OutputVariant.__dataclass_fields__)


def parse_output_variants(raw: Any, *, max_variants: int) -> list[OutputVariant]:
    """Check a mint's ``output_variants`` and fill in the defaults."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("output_variants: must be a non-empty array of objects")
    if len(raw) > max_variants:
        raise InvalidRequestError(
            f"output_variants: at most {max_variants} variants per token, got {len(raw)}"
        )
    variants = [_parse_one(item, f"output_variants[{i}]") for i, item in enumerate(raw)]
    seen: set[str] = set()
    for i, variant in enumerate(variants):
        if variant.variant_name in seen:
            raise InvalidRequestError(
                f"output_variants[{i}].variant_name: {variant.variant_name!r} is used twice"
            )
        seen.add(variant.variant_name)
    return variants


def _parse_one(item: Any, where: str) -> OutputVariant:
    if not isinstance(item, dict):
        raise InvalidRequestError(f"{where}: must be an object")
    for key in item:
        if key not in _FIELDS:
            raise InvalidRequestError(f"{where}.{key}: unknown field")

    def bad(field: str, why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{where}.{field}: {why}")

    name = item.get("variant_name")
    if not isinstance(name, str) or not name.strip():
        raise bad("variant_name", "required, a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise bad("variant_name", f"at most {MAX_NAME_LENGTH} characters")

    resolution = item.get("max_resolution", MAX_RESOLUTION)
    if not _is_int(resolution) or not 1 <= resolution <= MAX_RESOLUTION:
        raise bad("max_resolution", f"must be a whole number from 1 to {MAX_RESOLUTION:,}")

    fmt = item.get("format", DEFAULT_FORMAT)
    if fmt not in OUTPUT_FORMATS:
        raise bad("format", f"must be one of {', '.join(OUTPUT_FORMATS)}")

    quality = item.get("quality", DEFAULT_QUALITY)
    if quality not in QUALITIES:
        raise bad("quality", f"must be one of {', '.join(QUALITIES)}")

    color = item.get("background_color")
    if color is not None:
        if not isinstance(color, str) or not _HEX.fullmatch(color):
            raise bad("background_color", "must be a hex colour like #FF5733 (or null)")
        digits = color[1:]
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        color = "#" + digits.upper()

    compression = item.get("output_compression", DEFAULT_OUTPUT_COMPRESSION)
    if not _is_int(compression) or not 1 <= compression <= 100:
        raise bad("output_compression", "must be a whole number from 1 to 100")

    autocrop = item.get("autocrop", False)
    if not isinstance(autocrop, bool):
        raise bad("autocrop", "must be true or false")

    return OutputVariant(
        variant_name=name,
        max_resolution=resolution,
        format=fmt,
        quality=quality,
        background_color=color,
        output_compression=compression,
        autocrop=autocrop,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
