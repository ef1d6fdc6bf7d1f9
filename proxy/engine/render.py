"""Decoding uploads and rendering output variants with Pillow.

Everything here is synchronous and CPU-bound: the HTTP layer calls it in a worker thread,
never on the event loop. Pillow releases the GIL inside decode, resize, filters and encode,
so a few renders in threads keep the loop responsive (see docs/engine.md for numbers).

The pipeline for one variant: mask (the input's alpha, or the cut-out) → autocrop to the
subject's box → scale down so width*height <= max_resolution, aspect ratio kept, never up →
composite onto the background colour → encode as asked.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from proxy.engine.cutout import Cutout
from proxy.engine.errors import InvalidRequestError
from proxy.engine.variants import OutputVariant
from proxy.upstream.contract import fit

INPUT_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
INPUT_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
#: Mask values at or below this are halo from the soft edge, not subject, for autocrop.
CROP_ALPHA = 24
PNG_COMPRESS_LEVEL = 3  # lossless either way; 6 takes about 3x as long
WEBP_METHOD = 4


@dataclass(frozen=True, slots=True)
class Source:
    """A decoded, upright input: RGB pixels and, if the file had a real one, its alpha."""

    image: Image.Image
    alpha: Image.Image | None
    format: str  # png, jpg or webp: the file's own format

    @property
    def content_type(self) -> str:
        return INPUT_CONTENT_TYPES[self.format]


def decode(data: bytes, *, max_pixels: int) -> Source:
    """Decode a PNG, JPEG or WebP upload, applying its EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(INPUT_FORMATS)) as opened:
            width, height = opened.size
            # The header is read, the pixels are not: refuse bombs before allocating them.
            if width * height > max_pixels:
                raise InvalidRequestError(
                    f"image: {width}x{height} is over the {max_pixels:,} pixel limit "
                    "(decompression bomb)"
                )
            file_format = INPUT_FORMATS[str(opened.format)]
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise InvalidRequestError("image: not a PNG, JPEG or WebP file") from None
    except Image.DecompressionBombError:
        raise InvalidRequestError(
            f"image: over the {max_pixels:,} pixel limit (decompression bomb)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidRequestError("image: the file is corrupt or truncated") from exc
    return _split_alpha(image, file_format)


def _split_alpha(image: Image.Image, file_format: str) -> Source:
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or ("transparency" in image.info)
    if not has_alpha:
        return Source(image.convert("RGB"), None, file_format)
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    # A fully opaque alpha channel says nothing about the subject: cut it out instead.
    if alpha.getextrema()[0] == 255:
        return Source(rgba.convert("RGB"), None, file_format)
    return Source(rgba.convert("RGB"), alpha, file_format)


def subject_box(mask: Image.Image) -> tuple[int, int, int, int] | None:
    """The subject's bounding box in ``mask``, or None if nothing is subject."""
    return mask.point(lambda v: 255 if v > CROP_ALPHA else 0).getbbox()


def render(source: Source, variants: Sequence[OutputVariant], cutout: Cutout) -> list[bytes]:
    """Encode every variant of ``source``; masks are computed once per quality."""
    masks: dict[str, Image.Image] = {}
    boxes: dict[str, tuple[int, int, int, int] | None] = {}
    outputs = []
    for variant in variants:
        key = "alpha" if source.alpha is not None else variant.quality
        if key not in masks:
            masks[key] = source.alpha or cutout.mask(source.image, variant.quality)
        mask = masks[key]
        box = None
        if variant.autocrop:
            if key not in boxes:
                boxes[key] = subject_box(mask)
            box = boxes[key]
        outputs.append(render_variant(source.image, mask, variant, box))
    return outputs


def render_variant(
    image: Image.Image,
    mask: Image.Image,
    variant: OutputVariant,
    box: tuple[int, int, int, int] | None = None,
) -> bytes:
    """One output: crop to ``box`` (autocrop), scale, composite and encode."""
    if box is not None:
        image, mask = image.crop(box), mask.crop(box)
    cut = image.convert("RGBA")
    cut.putalpha(mask)
    size = fit(cut.size, variant.max_resolution)
    if size != cut.size:
        # Pillow resizes RGBA premultiplied, so background colour does not bleed in.
        cut = cut.resize(size, Image.Resampling.LANCZOS)
    background = variant.rgb
    if background is None:
        return encode(cut, variant)
    # paste-with-mask releases the GIL; Image.alpha_composite holds it for the whole image.
    out = Image.new("RGB", size, background)
    out.paste(cut, (0, 0), cut)
    return encode(out, variant)


def encode(image: Image.Image, variant: OutputVariant) -> bytes:
    """Encode as the variant's format; ``output_compression`` is the JPEG/WebP quality.

    PNG is lossless whatever the compression asked: the value has no lossy meaning there.
    """
    buffer = io.BytesIO()
    if variant.format == "jpg":
        image.convert("RGB").save(buffer, "JPEG", quality=variant.output_compression)
    elif variant.format == "webp":
        image.save(buffer, "WEBP", quality=variant.output_compression, method=WEBP_METHOD)
    else:
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
