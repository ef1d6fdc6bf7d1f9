"""How answers look on the wire: redirects with honest lifetimes, store mode's bytes with their
ETag, errors as JSON."""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from proxy.errors import ProxyError
from proxy.serving.cdn import CachePolicy, add_tags, no_store
from proxy.stores.cache import CachedOutput
from proxy.stores.derived import StoredVariant

log = logging.getLogger("cutproxy")

DEFAULT_POLICY = CachePolicy()
RawHeaders = Sequence[tuple[bytes, bytes]]

_LOCATION_SAFE = ":/%#?=@[]!$&'()*+,;"  # what Starlette's RedirectResponse leaves unquoted


def raw_response(status_code: int, headers: list[tuple[bytes, bytes]]) -> Response:
    """An answer with no body and exactly ``headers`` (raw ASGI pairs)."""
    response = Response(status_code=status_code)
    response.raw_headers = headers
    return response


def redirect_headers(
    output: CachedOutput,
    now: float,
    extra: RawHeaders = (),
    *,
    policy: CachePolicy = DEFAULT_POLICY,
    shared: bool = True,
) -> list[tuple[bytes, bytes]]:
    """The 302's headers: cacheable for as long as the output URL still lives, never longer.

    ``shared=False``: the answer was decided for this request alone (a budget fallback), so
    no cache may keep it. ``extra``: more headers, already encoded. Encoded once per URL and
    per lifetime, as raw ASGI pairs: the same a ``RedirectResponse`` would have built (no
    body: ``content-length: 0`` and no content type). The hit path sends them as they are.
    """
    life = _output_raw(policy, math.floor(output.remaining(now))) if shared else _NO_STORE_RAW
    return [_NO_BODY, (b"location", _location(output.url)), *life, *extra]


_NO_BODY = (b"content-length", b"0")


@functools.lru_cache(maxsize=4096)
def _location(url: str) -> bytes:
    return quote(url, safe=_LOCATION_SAFE).encode("latin-1")


@functools.lru_cache(maxsize=4096)
def _output_raw(policy: CachePolicy, life: int) -> tuple[tuple[bytes, bytes], ...]:
    # Lifetimes are whole seconds (floored), so one entry serves every hit in that second.
    return raw_headers(policy.output(life))


def raw_headers(headers: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    """Headers as ASGI pairs: lower-case names, latin-1, as Starlette encodes them."""
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    )


_NO_STORE_RAW = raw_headers(no_store())


def output_json(
    body: dict[str, Any],
    output: CachedOutput,
    now: float,
    *,
    policy: CachePolicy = DEFAULT_POLICY,
    shared: bool = True,
    extra: RawHeaders = (),
) -> JSONResponse:
    """200 JSON about the output (apps), with the redirect's lifetimes."""
    headers = policy.output(output.remaining(now)) if shared else no_store()
    response = JSONResponse(body, headers=headers)
    response.raw_headers += extra
    return response


@dataclass(frozen=True, slots=True)
class StoredWire:
    """A kept variant's answers as raw ASGI headers, encoded once: the 200's (GET and HEAD
    alike) and the 304's. The one place store mode's headers are built: the full stack
    (:meth:`proxy.serving.negotiation.Negotiation.stored`) and the hit path both use it."""

    ok: tuple[tuple[bytes, bytes], ...]
    not_modified: tuple[tuple[bytes, bytes], ...]


def stored_wire(
    stored: StoredVariant, extra: RawHeaders = (), *, policy: CachePolicy = DEFAULT_POLICY
) -> StoredWire:
    """``stored``'s answers with ``extra`` (Vary, surrogate keys) last: the 200 has the exact
    type and length, the strong ETag and the lifetimes of :meth:`CachePolicy.stored`; the
    304 the ETag, the lifetimes and ``extra``, no body. Built once per kept variant and path
    (its ETag names its bytes), then a lookup."""
    return _wire(stored.content_type, len(stored.data), stored.etag, tuple(extra), policy)


@functools.lru_cache(maxsize=4096)
def _wire(
    content_type: str,
    nbytes: int,
    etag: str,
    extra: tuple[tuple[bytes, bytes], ...],
    policy: CachePolicy,
) -> StoredWire:
    tag = (b"etag", etag.encode("latin-1"))
    lifetimes = raw_headers(policy.stored())
    ok = (
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(nbytes).encode("latin-1")),
        tag,
        *lifetimes,
        *extra,
    )
    return StoredWire(ok, (tag, *lifetimes, *extra))


DURABLE_BROWSER_MAX_AGE = 300  # seconds a browser keeps a 302 to a durable object


def durable_headers(
    location: str, extra: RawHeaders = (), *, policy: CachePolicy = DEFAULT_POLICY
) -> list[tuple[bytes, bytes]]:
    """A store-mode 302 to the bytes' durable object: the lifetimes of the bytes for shared
    caches (purged by surrogate key when the image is replaced), but browsers keep it at most
    five minutes, since a replaced image's old object is deleted."""
    lifetimes = [
        (name, _capped_max_age(value) if name == b"cache-control" else value)
        for name, value in raw_headers(policy.stored())
    ]
    return [
        (b"location", location.encode("latin-1")),
        (b"content-length", b"0"),
        *lifetimes,
        *extra,
    ]


def _capped_max_age(value: bytes) -> bytes:
    def cap(match: re.Match[bytes]) -> bytes:
        return b"max-age=%d" % min(int(match[1]), DURABLE_BROWSER_MAX_AGE)

    return re.sub(rb"(?<![-\w])max-age=(\d+)", cap, value)


def bytes_response(status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    """An answer with ``body`` and exactly ``headers`` (which carry its length)."""
    response = Response(content=body, status_code=status_code)
    response.raw_headers = headers
    return response


def stored_json(
    body: dict[str, Any], *, policy: CachePolicy = DEFAULT_POLICY, extra: RawHeaders = ()
) -> JSONResponse:
    """200 JSON about a store-mode variant (apps), with the bytes' lifetimes."""
    response = JSONResponse(body, headers=policy.stored())
    response.raw_headers += extra
    return response


def canonical(path: str, query: str, error_max_age: int) -> Response:
    """308 to the canonical spelling of the same request (the query travels along)."""
    location = f"{path}?{query}" if query else path
    response = RedirectResponse(location, status_code=308)
    response.headers["Cache-Control"] = f"public, max-age={max(error_max_age, 3600)}"
    return response


def error(exc: ProxyError, error_max_age: int) -> JSONResponse:
    return json_error(exc.status_code, exc.as_json(), error_max_age, exc.retry_after)


def json_error(
    status: int, body: dict[str, Any], error_max_age: int, retry_after: float | None = None
) -> JSONResponse:
    headers = CachePolicy(error_max_age=error_max_age).error(status)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(body, status_code=status, headers=headers)


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def error_handlers(error_max_age: int) -> dict[Any, ErrorHandler]:
    """The app's exception handlers: its own errors, Starlette's 404/405, and anything else
    as a 500 that says nothing of the cause (the log does). 4xx are kept ``error_max_age``."""

    async def proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        # An error about an image (a 404 for a gone one, say) is purged with it too.
        return add_tags(request.scope, error(exc, error_max_age))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        messages = {
            404: "no such route: variants live at /img/<image_id>/<w>x<h>/<bg>.<ext>",
            405: f"{request.method} is not allowed here",
        }
        body = {
            "error": codes.get(exc.status_code, "http_error"),
            "message": messages.get(exc.status_code, str(exc.detail)),
        }
        response = json_error(exc.status_code, body, error_max_age)
        if exc.headers:
            response.headers.update(exc.headers)
        return add_tags(request.scope, response)

    return {ProxyError: proxy_error, HTTPException: http_error, Exception: unexpected_error}


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
    body = {"error": "internal_error", "message": "the proxy failed unexpectedly; see its log"}
    return json_error(500, body, 0)
