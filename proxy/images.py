"""Images: getting an original to the upstream once and keeping the registry in step."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from proxy.errors import BadRequestError
from proxy.registry import ImageRecord, Registry
from proxy.upstream import UpstreamClient

# The seed's first request: one small, cheap variant whose only purpose is the upload.
UPLOAD_VARIANT = {
    "variant_name": "initial",
    "quality": "low",
    "max_resolution": 65_536,
    "format": "webp",
}


@dataclass
class ImageService:
    registry: Registry
    upstream: UpstreamClient
    clock: Callable[[], float] = time.time

    async def upload(
        self, image_id: str, data: bytes, content_type: str, size: tuple[int, int]
    ) -> ImageRecord:
        """Upload ``data`` to the upstream and (re)register it under ``image_id``."""
        token = await self.upstream.mint([dict(UPLOAD_VARIANT)])
        result = await self.upstream.process(
            token,
            data,
            filename=f"{image_id}.{content_type.split('/')[-1]}",
            content_type=content_type,
        )
        now = self.clock()
        record = ImageRecord(
            image_id=image_id,
            unique_filename=result.unique_filename,
            width=size[0],
            height=size[1],
            content_type=content_type,
            size=len(data),
            uploaded_at=now,
            registered_at=now,
        )
        await self.registry.put(record)
        return record


def probe(data: bytes) -> tuple[str, tuple[int, int]]:
    """Content type and size of an image, from its bytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
            return f"image/{'jpeg' if kind == 'jpeg' else kind}", image.size
    except Exception as exc:
        raise BadRequestError("the file is not an image the proxy can read") from exc
