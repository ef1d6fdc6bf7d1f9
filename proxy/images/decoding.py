"""Checking that an upload decodes, without holding (or keeping) a whole image in memory.

A full decode holds 4 bytes a pixel: 196 MB for a 7000x7000 PNG that is 200 KB on the wire.

- PNG (:func:`check_png`): the image data is inflated a slice at a time and each row's
  filter byte checked, so a truncated or corrupt stream is found with about one slice in
  hand. The metadata chunks after the pixels are read too (an orientation can live there).
- JPEG and WebP are decoded by Pillow (JPEG at 1/8 scale), within PROXY_MAX_INPUT_PIXELS.
- Freed in a worker thread, glibc keeps a decode's memory in that thread's arena: 187 MB
  after one 7000x7000 decode, 560 MB after three at once. :func:`proxy.malloc.return_large_blocks`
  (once per server process) gives large blocks back to the system when they are freed.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

SLICE = 1 << 20  # bytes of inflated rows held at once
MAX_TEXT = 1 << 20  # a metadata chunk inflating past this is refused (as Pillow does)
_FEED = 1 << 16  # compressed bytes handed to zlib at once (its unconsumed tail is a copy)

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
# Adam7: each pass's first column and row, and its column and row steps.
_ADAM7 = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)
)  # fmt: skip
_CHUNK_TYPE = re.compile(rb"\w\w\w\w")  # what Pillow takes for a chunk type
_ORIENTATION_KEYS = ("Raw profile type exif", "XML:com.adobe.xmp")


class CorruptImageError(ValueError):
    """The image's bytes do not hold what its header promises."""


def check_png(data: bytes) -> dict[str, Any]:
    """Blocking: verify a PNG's image data to the last row, in bounded memory.

    Raises :class:`CorruptImageError` when the image data fails to inflate, ends before the
    last row or has a row with an unknown filter, or a chunk after it is cut short. As in
    Pillow's decoder, IDAT checksums are not verified and nothing is required past the last
    row's bytes. Returns the metadata Pillow would keep in ``info`` for the orientation
    (``exif``, raw EXIF and XMP text), from whichever chunk holds it.
    """
    view = memoryview(data)
    if bytes(view[:8]) != _SIGNATURE:
        raise CorruptImageError("not a PNG signature")
    rows: _Rows | None = None
    inflater = zlib.decompressobj()
    info: dict[str, Any] = {}
    idat = "before"
    at = 8
    while at + 8 <= len(view):
        length, kind = struct.unpack(">I4s", view[at : at + 8])
        if not _CHUNK_TYPE.fullmatch(kind):
            if idat == "before":
                raise CorruptImageError("a chunk without a valid type")
            break  # garbage after the image data ends the file, as Pillow reads it
        end = at + 8 + length
        payload, cut = view[at + 8 : min(end, len(view))], end > len(view)
        if kind == b"IHDR":
            rows = _Rows.from_header(bytes(payload))
        elif kind == b"IDAT":
            if rows is None or idat == "after":  # IDAT chunks follow one another
                raise CorruptImageError("an IDAT chunk out of place")
            idat = "in"
            for start in range(0, len(payload), _FEED):
                _inflate(inflater, payload[start : start + _FEED], rows)
        elif idat == "in":
            idat = "after"
        if kind == b"IEND" or (cut and kind == b"IDAT"):
            break
        if cut:
            raise CorruptImageError(f"the {kind.decode()} chunk is cut short")
        _note_metadata(kind, payload, info)
        at = end + 4  # past the chunk's checksum
    if rows is None:
        raise CorruptImageError("no IHDR chunk")
    if not rows.complete:
        raise CorruptImageError("the image data ends before its last row")
    return info


class _Rows:
    """Walks the inflated stream row by row: each row starts with a filter byte, 0 to 4."""

    def __init__(self, passes: list[tuple[int, int]]) -> None:
        self._passes = passes  # (row length with its filter byte, rows) per pass
        self._pass = 0
        self._rows_left = passes[0][1] if passes else 0
        self._into_row = 0  # bytes of the current row already seen
        self.remaining = sum(length * count for length, count in passes)

    @classmethod
    def from_header(cls, header: bytes) -> _Rows:
        if len(header) != 13:
            raise CorruptImageError("IHDR has the wrong length")
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
        if colour not in _CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace > 1:
            raise CorruptImageError("IHDR describes no PNG pixel format")
        bits = _CHANNELS[colour] * depth
        passes = []
        for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
            columns = (width - x0 + dx - 1) // dx if width > x0 else 0
            count = (height - y0 + dy - 1) // dy if height > y0 else 0
            if columns and count:
                passes.append((1 + (columns * bits + 7) // 8, count))
        return cls(passes)

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def take(self, piece: bytes) -> None:
        """The next inflated bytes (never more than ``remaining``)."""
        self.remaining -= len(piece)
        at = 0
        while at < len(piece):
            length, _ = self._passes[self._pass]
            if self._into_row:  # finish the row begun in an earlier piece
                step = min(length - self._into_row, len(piece) - at)
                self._into_row = (self._into_row + step) % length
                at += step
                if self._into_row == 0:
                    self._rows_done(1)
                continue
            # Rows start at at, at + length, ...: their filter bytes in one slice.
            starts = min(self._rows_left, (len(piece) - at + length - 1) // length)
            if max(piece[at : at + (starts - 1) * length + 1 : length]) > 4:
                raise CorruptImageError("a row has an unknown filter type")
            ends = at + starts * length
            if ends <= len(piece):
                at = ends
                self._rows_done(starts)
            else:  # the last of them goes on in the next piece
                self._into_row = len(piece) - (ends - length)
                at = len(piece)
                self._rows_done(starts - 1)

    def _rows_done(self, count: int) -> None:
        self._rows_left -= count
        if self._rows_left == 0 and self._pass + 1 < len(self._passes):
            self._pass += 1
            self._rows_left = self._passes[self._pass][1]


def _inflate(inflater: Any, payload: memoryview, rows: _Rows) -> None:
    """Inflate ``payload`` into ``rows``, asking zlib for no byte past the last row."""
    pending: bytes | memoryview = payload
    while not rows.complete:
        wanted = min(SLICE, rows.remaining)
        try:
            piece = inflater.decompress(pending, wanted)
        except zlib.error as exc:
            raise CorruptImageError(f"the image data does not inflate: {exc}") from None
        rows.take(piece)
        pending = inflater.unconsumed_tail
        if inflater.eof or (not pending and len(piece) < wanted):
            return


def _note_metadata(kind: bytes, payload: memoryview, info: dict[str, Any]) -> None:
    """What Pillow keeps of the chunks that can carry an orientation."""
    if kind == b"eXIf":
        info["exif"] = bytes(payload)
    elif kind in (b"tEXt", b"zTXt", b"iTXt"):
        key, _, rest = bytes(payload).partition(b"\0")
        name = key.decode("latin-1")
        if name in _ORIENTATION_KEYS:
            info[name] = _text(kind, rest)


def _text(kind: bytes, rest: bytes) -> str:
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return _inflate_text(rest[1:]).decode("latin-1")
    compressed, rest = rest[:1] == b"\x01", rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    return (_inflate_text(text) if compressed else text).decode("utf-8", "replace")


def _inflate_text(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_TEXT + 1)
    except zlib.error as exc:
        raise CorruptImageError(f"a text chunk does not inflate: {exc}") from None
    if len(text) > MAX_TEXT:
        raise CorruptImageError("a text chunk inflates past 1 MiB")
    return text
