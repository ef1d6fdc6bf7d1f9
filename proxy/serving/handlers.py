"""What the admin API's handlers share (JSON bodies, image records as JSON), and ``/health``.

Each handler: check → parse → work → respond; logic lives in the services.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import BadRequestError
from proxy.stores.registry import ImageRecord

MAX_JSON_BODY = 64 * 1024


def registration(image_id: str, body: Any, now: float) -> ImageRecord:
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object", code="bad_body")
    unique = body.get("unique_filename")
    if not isinstance(unique, str) or not 1 <= len(unique) <= 256:
        raise BadRequestError(
            "unique_filename is required: the upstream's name for an earlier upload",
            code="bad_unique_filename",
        )
    size: list[int | None] = []
    for name in ("width", "height"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000
        ):
            raise BadRequestError(
                f"{name} must be a whole number of pixels from 1 to 100000", code=f"bad_{name}"
            )
        size.append(value)
    unknown = set(body) - {"unique_filename", "width", "height"}
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(sorted(unknown))}", code="bad_body")
    return ImageRecord(
        image_id=image_id,
        unique_filename=unique,
        width=size[0],
        height=size[1],
        uploaded_at=now,
        registered_at=now,
    )


def record_json(record: ImageRecord) -> dict[str, Any]:
    data = record.to_dict()
    data.pop("extra", None)
    return data


async def read_json(request: Request) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise BadRequestError(
                f"JSON body over {MAX_JSON_BODY // 1024} KiB", code="body_too_large"
            )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the body is not valid JSON", code="bad_json") from None


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
