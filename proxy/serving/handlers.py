"""HTTP handlers. Each one: check → parse → work → respond; logic lives in the services."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from proxy.errors import BadRequestError
from proxy.serving import cdn, negotiation, responses
from proxy.state import AppState
from proxy.stores.registry import ImageRecord
from proxy.url import grammar

MAX_JSON_BODY = 64 * 1024


class Endpoint:
    """A request handler served as a plain ASGI app: the variant route's.

    Starlette wraps a function endpoint in two more layers per request (one of them wrapping
    ``send``) only to render its exceptions; raised here, they reach the app's exception
    middleware instead, which renders them with the same handlers.
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.proxy
    return state


async def variant(request: Request) -> Response:
    state = state_of(request)
    settings = state.settings
    guards = state.guards
    parsed = _checked(request, state)
    if isinstance(parsed, grammar.Canonical):
        query = guards.redirect_query(request, parsed.path)
        return responses.canonical(parsed.path, query, settings.error_max_age)
    # Every answer from here on (errors too) is about this image: CDNs can purge it by key.
    tags = cdn.surrogate_keys(parsed.image_id, parsed.bg)
    cdn.tag(request.scope, tags)
    # Hits first: who the client is (forwarding headers, address parsing) matters to misses only.
    resolved = state.variants.hit(parsed) or await state.variants.resolve(
        parsed, client=guards.client(request)
    )
    request.scope.setdefault("state", {})["cache_tier"] = resolved.tier
    if resolved.tier == "fallback":  # a refused miss: the nearest cached size, for now
        served = resolved.served or parsed  # JSON describes what is served, not what was asked
        response = await negotiation.answer(
            request, state, served, resolved.output, shared=False, tags=tags
        )
        guards.mark_fallback(response, resolved.reason, resolved.output, state.clock())
        return response
    return await negotiation.answer(request, state, parsed, resolved.output, tags=tags)


def _checked(request: Request, state: AppState) -> grammar.Variant | grammar.Canonical:
    """Signature first (unsigned URLs learn nothing more), then the grammar and the ladder."""
    scope = request.scope
    state.guards.verify(scope["path"], scope["query_string"], state.clock())
    params = request.path_params
    return held(state, params["image_id"], params["size"], params["filename"])


def held(
    state: AppState, image_id: str, size: str, filename: str
) -> grammar.Variant | grammar.Canonical:
    """The URL's parts read by the grammar, then held to the size ladder (pure)."""
    settings = state.settings
    limits = _limits(settings.max_width, settings.max_height, settings.max_pixels)
    # A valid URL's parts are short (an id is at most 128 characters): only those are kept.
    short = len(image_id) + len(size) + len(filename) <= MAX_KEPT_PARTS
    parse = _parse if short else grammar.parse
    return state.guards.hold(parse(image_id, size, filename, limits), limits)


@functools.lru_cache(maxsize=16)
def _limits(max_width: int, max_height: int, max_pixels: int) -> grammar.Limits:
    return grammar.Limits(max_width, max_height, max_pixels)  # as AppState.limits, kept


MAX_KEPT_PARTS = 256  # characters of image id, size and filename together


@functools.lru_cache(maxsize=4096)  # at most 4096 parses of at most 256 characters
def _parse(
    image_id: str, size: str, filename: str, limits: grammar.Limits
) -> grammar.Variant | grammar.Canonical:
    # Pure, and the same few URLs come back again and again: parse each once (errors raise
    # again every time, as they are not kept).
    return grammar.parse(image_id, size, filename, limits)


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
