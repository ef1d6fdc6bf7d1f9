"""The hit path: a variant in the memory tier is answered before routing.

:class:`HitPath` sits just inside the access log, so a hit's log line, metrics and request id
are those of any request. For a GET or HEAD of the ``/img`` route it asks
:func:`proxy.handlers.memory_hit` for the redirect; when that is not a plain memory hit
(a miss, a 308, JSON, any error) the request goes down the full stack, router, exception
handlers and :func:`proxy.handlers.variant`, exactly as if this layer were not there.
What a hit skips is only the per-request machinery: matching every route, two exception
layers and the wrappers they put around ``send``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import handlers


class HitPath:
    """ASGI middleware: memory hits of ``route`` answered at once; the rest passed on."""

    def __init__(self, app: ASGIApp, route: Route) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match, child_scope = self.route.matches(scope)
            if match is Match.FULL:
                scope["route"] = self.route  # as the router would: logs name the template
                scope.update(child_scope)
                response = handlers.memory_hit(Request(scope, receive, send))
                if response is not None:
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
