"""The admin API's guard: ``Authorization: Bearer <PROXY_ADMIN_TOKEN>``, constant-time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from proxy.errors import ForbiddenError, UnauthorizedError


def require_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        raise ForbiddenError(
            "the admin API is off: set PROXY_ADMIN_TOKEN to enable it", code="admin_disabled"
        )
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError(
            "send the admin token as 'Authorization: Bearer <token>'", code="admin_token_missing"
        )
    if not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
        raise UnauthorizedError("the admin token is wrong", code="admin_token_wrong")
