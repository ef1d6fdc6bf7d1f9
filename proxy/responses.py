"""How answers look on the wire: redirects with honest lifetimes, errors as JSON."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response

from proxy.cache import CachedOutput
from proxy.errors import ProxyError


def redirect(output: CachedOutput, now: float, extra: dict[str, str] | None = None) -> Response:
    """302 to the output: cacheable for as long as the output URL still lives, never longer."""
    remaining = math.floor(output.remaining(now))
    response = RedirectResponse(output.url, status_code=302)
    if remaining > 0:
        response.headers["Cache-Control"] = f"public, max-age={remaining}"
    else:
        response.headers["Cache-Control"] = "no-store"
    for name, value in (extra or {}).items():
        response.headers[name] = value
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
    headers = {
        "Cache-Control": (
            "no-store" if status >= 500 or status == 429 else f"public, max-age={error_max_age}"
        )
    }
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(body, status_code=status, headers=headers)
