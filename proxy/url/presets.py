"""Named presets: ``/img/<image_id>/<preset>.<ext>``, defined in a TOML file.

The file (``PROXY_PRESETS_FILE``) has one table per preset::

    [presets.main]
    size = "1600x1600"   # required: the output box, WxH
    fit = "pad"          # contain | pad | cover                   (default pad)
    bg = "ffffff"        # rrggbb, rgb, #rrggbb or transparent      (default ffffff)
    fill = 0.85          # framing: the product's box takes this share of the frame
    anchor = "bottom"    # framing: center | bottom | top | left | right  (needs fill)
    format = "jpg"       # jpg | png | webp | avif: then the URL must say .jpg
    quality = 90         # the encoder's 1..100 (jpg, webp, avif); default: the server's

:func:`load_presets` reads and checks it at start: every problem is a
:class:`~proxy.envconfig.SettingsError` naming the variable, the preset and the field. At
request time :func:`resolve` turns the URL's last segment into a :class:`PresetVariant`:

- a preset that names a ``format`` is served in that format only: another extension is a
  400 whose message gives the right URL (a marketplace that wants a JPEG gets one);
- a preset without one is served in the format the extension asks for (``jpg`` only with a
  colour background: a transparent preset needs ``png``, ``webp`` or ``avif``).

Pure: no I/O but reading the file, nothing imported but the ground floor.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from proxy.envconfig import SettingsError
from proxy.errors import BadRequestError, NotFoundError
from proxy.settings import Settings

ENV = "PROXY_PRESETS_FILE"
FITS = ("contain", "pad", "cover")
FORMATS = ("jpg", "png", "webp", "avif")
ALPHA_FORMATS = ("png", "webp", "avif")
ANCHORS = ("center", "bottom", "top", "left", "right")
TRANSPARENT = "transparent"
AUTO = "auto"
KEYS = ("size", "fit", "bg", "fill", "anchor", "format", "quality")
DEFAULT_FIT = "pad"
DEFAULT_BG = "ffffff"
DEFAULT_ANCHOR = "center"
#: The proxy's own defaults (PROXY_MAX_WIDTH, PROXY_MAX_HEIGHT, PROXY_MAX_PIXELS): the
#: wiring passes the configured ones.
MAX_WIDTH = 4000
MAX_HEIGHT = 4000
MAX_PIXELS = 12_000_000

#: A name is the URL's last segment before the extension: lower case, so one preset has
#: one URL; no dot, so the extension is unambiguous.
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: ``640x480`` or ``640x480@2x`` is a size in every other URL of the proxy: not a name.
_SIZE_LIKE = re.compile(r"\d+x\d+(?:@\d+x)?")
_SIZE = re.compile(r"(\d{1,9})x(\d{1,9})")
_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_FORMAT_ALIASES = {"jpeg": "jpg"}


@dataclass(frozen=True, slots=True)
class Preset:
    """One named variant recipe. ``fill`` None: no framing (the whole master is placed)."""

    name: str
    width: int
    height: int
    fit: str = DEFAULT_FIT
    bg: str = DEFAULT_BG  # six lowercase hex digits, or "transparent"
    fill: float | None = None
    anchor: str = DEFAULT_ANCHOR
    format: str | None = None  # None: the URL's extension decides
    quality: int | None = None  # None: the server's encoder quality

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def formats(self) -> tuple[str, ...]:
        """The extensions a URL may use for this preset."""
        if self.format is not None:
            return (self.format,)
        return ALPHA_FORMATS if self.bg == TRANSPARENT else FORMATS

    def path(self, image_id: str, fmt: str | None = None) -> str:
        """``/img/<image_id>/<name>.<fmt>``; ``fmt`` defaults to the preset's first format."""
        return f"/img/{image_id}/{self.name}.{fmt or self.formats[0]}"

    @property
    def needs_store(self) -> bool:
        """Whether only store mode can make it: the upstream fits inside a box (contain)
        at the server's quality, in jpg, png or webp, and knows nothing of framing."""
        return (
            self.fit != "contain"
            or self.fill is not None
            or self.quality is not None
            or self.format == "avif"
        )

    def output_format(self, ext: str) -> str:
        """The format a request for ``<name>.<ext>`` gets, or a 400 saying which URL to use.
        ``auto`` (the best format ``Accept`` allows) is one for presets without a format."""
        ext = _FORMAT_ALIASES.get(ext.lower(), ext.lower())
        if ext == AUTO and self.format is None:
            return AUTO
        if ext not in FORMATS:
            raise BadRequestError(
                f"format must be one of {', '.join(FORMATS)} (or jpeg), got {ext[:10]!r}",
                code="bad_format",
            )
        if ext not in self.formats:
            if self.format is not None:
                raise BadRequestError(
                    f"preset {self.name} is {self.format}: ask for {self.name}.{self.format}",
                    code="bad_format",
                )
            raise BadRequestError(
                f"preset {self.name} is transparent and jpg has no transparency: ask for "
                f"{self.name}.png, {self.name}.webp or {self.name}.avif",
                code="bad_background",
            )
        return ext

    def as_json(self) -> dict[str, Any]:
        """What the presets listing shows of this preset."""
        return {
            "name": self.name,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "fit": self.fit,
            "bg": self.bg,
            "fill": self.fill,
            "anchor": self.anchor if self.fill is not None else None,
            "format": self.format,
            "quality": self.quality,
            "formats": list(self.formats),
            "path": self.path("<image_id>"),
        }


@dataclass(frozen=True, slots=True)
class PresetVariant:
    """A request for a preset in one format: ``/img/<image_id>/<filename>``."""

    preset: Preset
    fmt: str

    @property
    def filename(self) -> str:
        """The canonical last segment (``main.jpg`` for ``main.JPEG``): redirect to it."""
        return f"{self.preset.name}.{self.fmt}"


def resolve(presets: Mapping[str, Preset], filename: str) -> PresetVariant:
    """The preset and format of a URL's last segment ``<name>.<ext>``.

    A 404 for a name no preset has, a 400 for a malformed segment or a format the preset
    does not serve (see :meth:`Preset.output_format`). Compare :attr:`PresetVariant.filename`
    with ``filename`` to redirect other spellings to the canonical one.
    """
    name, dot, ext = filename.rpartition(".")
    if not dot or not name:
        raise BadRequestError(
            "the last segment must be <preset>.<ext>, e.g. main.jpg", code="bad_filename"
        )
    preset = presets.get(name)
    if preset is None:
        raise NotFoundError(f"no preset named {name[:64]!r}", code="unknown_preset")
    return PresetVariant(preset, preset.output_format(ext))


NONE: Mapping[str, Preset] = MappingProxyType({})


def from_settings(settings: Settings) -> Mapping[str, Preset]:
    """The presets of ``PROXY_PRESETS_FILE`` under the settings' size limits (none when it
    is unset). The ground floor imports nothing from here, so the start (``cutproxy serve``,
    ``cutproxy settings``, the app factory) checks the file through this function."""
    if settings.presets_file is None:
        return NONE
    return load_presets(
        settings.presets_file,
        max_width=settings.max_width,
        max_height=settings.max_height,
        max_pixels=settings.max_pixels,
    )


def load_presets(
    path: str | os.PathLike[str],
    *,
    max_width: int = MAX_WIDTH,
    max_height: int = MAX_HEIGHT,
    max_pixels: int = MAX_PIXELS,
) -> Mapping[str, Preset]:
    """Read and check the presets file: the presets by name, in the file's order."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise SettingsError(f"{ENV}: {os.fspath(path)}: cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{ENV}: {os.fspath(path)}: is not UTF-8 text") from None
    return parse_presets(
        text,
        source=f"{ENV}: {os.fspath(path)}",
        max_width=max_width,
        max_height=max_height,
        max_pixels=max_pixels,
    )


def parse_presets(
    text: str,
    *,
    source: str = ENV,
    max_width: int = MAX_WIDTH,
    max_height: int = MAX_HEIGHT,
    max_pixels: int = MAX_PIXELS,
) -> Mapping[str, Preset]:
    """:func:`load_presets` of a file's text; ``source`` starts every message."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source}: not valid TOML: {exc}") from None
    unknown = [key for key in document if key != "presets"]
    if unknown:
        raise SettingsError(
            f"{source}: unknown table or key {unknown[0][:64]!r}: "
            "the file has only [presets.<name>] tables"
        )
    tables = document.get("presets", {})
    if not isinstance(tables, dict) or not tables:
        raise SettingsError(f"{source}: no [presets.<name>] table: define at least one preset")
    presets: dict[str, Preset] = {}
    limits = (max_width, max_height, max_pixels)
    for name, table in tables.items():
        presets[name] = _preset(name, table, f"{ENV}: [presets.{_key(name)}]", limits)
    return MappingProxyType(presets)


def _preset(name: str, table: object, where: str, limits: tuple[int, int, int]) -> Preset:
    if not NAME.fullmatch(name):
        raise SettingsError(
            f"{where}: the name must be 1 to 64 of a-z, 0-9, '-' and '_', starting with a "
            "letter or digit: it is the URL's last segment, /img/<image_id>/<name>.<ext>"
        )
    if _SIZE_LIKE.fullmatch(name):
        raise SettingsError(
            f"{where}: the name looks like a size: sizes have their own URLs "
            "(/img/<image_id>/<w>x<h>/<bg>.<ext>); pick a word"
        )
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: must be a table of {', '.join(KEYS)}")
    for key in table:
        if key not in KEYS:
            raise SettingsError(f"{where} {key[:64]}: unknown key (a preset has {', '.join(KEYS)})")

    def bad(key: str, why: str) -> SettingsError:
        return SettingsError(f"{where} {key}: {why}, got {_shown(table[key])}")

    if "size" not in table:
        raise SettingsError(f'{where} size: missing (e.g. size = "1000x1000")')
    size = table["size"]
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise bad("size", 'must be a string like "1000x1000"')
    width, height = int(match[1]), int(match[2])
    if width < 1 or height < 1:
        raise bad("size", "width and height must be at least 1")
    max_width, max_height, max_pixels = limits
    if width > max_width or height > max_height:
        raise bad("size", f"must be at most {max_width}x{max_height} (PROXY_MAX_WIDTH/HEIGHT)")
    if width * height > max_pixels:
        raise bad("size", f"must be at most {max_pixels:,} pixels (PROXY_MAX_PIXELS)")

    fit = table.get("fit", DEFAULT_FIT)
    if fit not in FITS:
        raise bad("fit", f"must be one of {', '.join(FITS)}")

    bg = table.get("bg", DEFAULT_BG)
    if not isinstance(bg, str):
        raise bad("bg", "must be a colour like ffffff, or transparent")
    if bg.lower() == TRANSPARENT:
        bg = TRANSPARENT
    else:
        colour = _HEX.fullmatch(bg)
        if colour is None:
            raise bad("bg", "must be a colour like ffffff, or transparent")
        bg = colour[1].lower()
        bg = bg if len(bg) == 6 else "".join(c * 2 for c in bg)

    fill = table.get("fill")
    if fill is not None:
        if isinstance(fill, bool) or not isinstance(fill, int | float):
            raise bad("fill", "must be a number above 0 and at most 1")
        if not (math.isfinite(fill) and 0 < fill <= 1):
            raise bad("fill", "must be a number above 0 and at most 1")
        fill = float(fill)

    anchor = table.get("anchor", DEFAULT_ANCHOR)
    if "anchor" in table and fill is None:
        raise SettingsError(
            f"{where} anchor: needs fill (the anchor places the trimmed product; "
            "fill = 1.0 trims without a margin)"
        )
    if anchor not in ANCHORS:
        raise bad("anchor", f"must be one of {', '.join(ANCHORS)}")

    fmt = table.get("format")
    if fmt is not None:
        fmt = _FORMAT_ALIASES.get(fmt, fmt) if isinstance(fmt, str) else fmt
        if fmt not in FORMATS:
            raise bad("format", f"must be one of {', '.join(FORMATS)}")
        if fmt == "jpg" and bg == TRANSPARENT:
            raise SettingsError(
                f"{where} format: jpg has no transparency: use png, webp or avif, "
                "or give bg a colour like ffffff"
            )

    quality = table.get("quality")
    if quality is not None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise bad("quality", "must be a whole number from 1 to 100")
        if fmt == "png":
            raise SettingsError(f"{where} quality: png is lossless: remove quality")

    return Preset(name, width, height, fit, bg, fill, anchor, fmt, quality)


def _key(name: str) -> str:
    """``name`` as a TOML key in a message: bare when it can be, else quoted and clipped."""
    clipped = "..." if len(name) > 64 else ""
    if _BARE_KEY.fullmatch(name) and not clipped:
        return name
    return '"' + name[:64].encode("unicode_escape").decode().replace('"', '\\"') + '"' + clipped


def _shown(value: object) -> str:
    """A TOML value in a message: as the file spells it where that is short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value[:40].encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"
