"""How answers look on the wire: redirects with honest lifetimes, errors as JSON."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response

from proxy.cache import CachedOutput
from proxy.cdn import CachePolicy, no_store
from proxy.errors import ProxyError

DEFAULT_POLICY = CachePolicy()


def redirect(
    output: CachedOutput,
    now: float,
    extra: dict[str, str] | None = None,
    *,
    policy: CachePolicy = DEFAULT_POLICY,
    shared: bool = True,
) -> Response:
    """302 to the output: cacheable for as long as the output URL still lives, never longer.

    ``shared=False``: the answer was decided for this request alone (a budget fallback), so
    no cache may keep it.
    """
    response = RedirectResponse(output.url, status_code=302)
    response.headers.update(policy.output(output.remaining(now)) if shared else no_store())
    for name, value in (extra or {}).items():
        response.headers[name] = value
    return response


def output_json(
    body: dict[str, Any],
    output: CachedOutput,
    now: float,
    *,
    policy: CachePolicy = DEFAULT_POLICY,
    shared: bool = True,
) -> JSONResponse:
    """200 JSON about the output (apps), with the redirect's lifetimes."""
    headers = policy.output(output.remaining(now)) if shared else no_store()
    return JSONResponse(body, headers=headers)


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
