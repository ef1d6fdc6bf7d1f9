"""The hit path: a variant in the memory tier is answered before anything else runs.

:class:`HitPath` is the app's outermost layer, in front of even Starlette's error layer. A GET
or HEAD of ``/img/<id>/<size>/<file>`` whose answer is a plain redirect from the memory tier
is sent from here in raw ASGI, with the headers, request id, metrics and access-log line any
request gets. Anything else (a miss, a 308, JSON, a bad signature, an error of any kind) goes
down the full stack, access log, router, exception handlers and
:func:`proxy.handlers.variant`, exactly as if this layer were not there: the checks here are
the same pure functions, so a hit is never answered differently from how the full stack
would answer it (``tests/ops/test_hit_path.py``).

What a hit skips is the per-request machinery: Starlette's error and exception layers, the
router, request and response objects, the wrappers each layer puts around ``send``. Its
counts go through the metrics' batched tally. Memory hits never wait, so they are not counted
in ``cutproxy_http_requests_in_flight``.

Whatever it keeps per request is bounded in bytes, not only in entries: paths too long to be
a variant URL are not kept, and the ``Accept`` values it remembers are short ones. A failure
here is a bug: it is counted (``cutproxy_hit_path_errors_total``) and logged (at most once a
minute, with a count), and the full stack answers the request.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.ops.accesslog import (
    FixedLine,
    access_log,
    flush_lines,
    given_request_id,
    json_string,
    new_request_id,
)
from proxy.ops.metrics import Metrics
from proxy.serving import cdn, handlers, negotiation, responses
from proxy.serving.cdn import CachePolicy
from proxy.serving.responses import RawHeaders
from proxy.state import AppState
from proxy.url.grammar import Variant

ROUTE = "/img/{image_id}/{size}/{filename}"
_PREFIX = "/img/"
_READS = frozenset({"GET", "HEAD"})
# The memo of what paths parse to starts again past either bound (re-parsing is cheap).
MEMO_ENTRIES = 4096
MEMO_BYTES = 1 << 20  # of paths
# Longer paths are never variant URLs (an id is at most 128 characters): never kept.
MAX_HELD_PATH = 256
ERROR_LOG_EVERY = 60.0  # seconds between two log lines about hit-path failures

log = logging.getLogger("cutproxy.hitpath")
_LINE = FixedLine(ROUTE, 302, "memory")  # every hit's access line

# The variant, its headers and its path as JSON (for the access line); None: not a hit URL.
Held = tuple[Variant, RawHeaders, str] | None


class HitPath:
    """ASGI: memory hits of the variant route answered at once; everything else passed on."""

    def __init__(self, app: ASGIApp, state: AppState, metrics: Metrics) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics
        self.policy = CachePolicy.from_settings(state.settings)
        # path → what the grammar and the ladder made of it (both pure, so kept).
        self._held: dict[str, Held] = {}
        self._held_bytes = 0
        self._errors = _ErrorReport(state.clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _READS
            and scope["path"].startswith(_PREFIX)
            and not scope.get("root_path")  # behind a path prefix: the router knows best
        ):
            started = time.perf_counter()
            try:
                answer = self._answer(scope)
            except Exception as exc:  # a bug here: reported, and the full stack answers
                self.metrics.hit_path_failed()
                self._errors.report(exc)
                answer = None
            if answer is not None:
                headers, request_id, path_json = answer
                await send({"type": "http.response.start", "status": 302, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                seconds = time.perf_counter() - started
                self.metrics.request_done(ROUTE, scope["method"], 302, seconds)
                if access_log.isEnabledFor(logging.INFO):
                    _LINE.log(scope, seconds, request_id, path_json)
                return
        elif scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, send)
            finally:  # the app is done: so are its requests, and their queued access lines
                flush_lines()
            return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> tuple[list[tuple[bytes, bytes]], str, str] | None:
        """The redirect's headers, the request id and the path as JSON, or None: not a plain
        memory hit."""
        state = self.state
        accept = given_id = None
        for name, value in scope["headers"]:  # the first of each, as Starlette reads them
            if name == b"accept":
                accept = value if accept is None else accept
            elif name == b"x-request-id":
                given_id = value if given_id is None else given_id
        if accept is not None and _wants_json(accept):
            return None
        now = state.clock()
        path = scope["path"]
        if state.guards.signer is not None:
            try:
                state.guards.verify(path, scope["query_string"], now)
            except ProxyError:
                return None
        held = self._held[path] if path in self._held else self._hold(path)
        if held is None:
            return None
        variant, extra, path_json = held
        output = state.variants.hit_output(variant)
        if output is None:
            return None
        headers = responses.redirect_headers(output, now, extra, policy=self.policy)
        request_id = new_request_id() if given_id is None else given_request_id(given_id)
        headers.append((b"x-request-id", request_id.encode()))
        return headers, request_id, path_json

    def _hold(self, path: str) -> Held:
        if len(path) > MAX_HELD_PATH:
            return None
        held: Held = None
        parts = path[len(_PREFIX) :].split("/")
        if len(parts) == 3 and all(parts):  # the route's three [^/]+ segments
            try:
                parsed = handlers.held(self.state, *parts)
            except ProxyError:
                parsed = None
            if isinstance(parsed, Variant):
                tags = cdn.surrogate_keys(parsed.image_id, parsed.bg)
                held = (parsed, negotiation.variant_headers(tags), json_string(path))
        if len(self._held) >= MEMO_ENTRIES or self._held_bytes + len(path) > MEMO_BYTES:
            self._held.clear()
            self._held_bytes = 0
        self._held[path] = held
        self._held_bytes += len(path)
        return held


def _wants_json(accept: bytes) -> bool:
    if len(accept) > negotiation.MAX_KEPT_ACCEPT:  # an odd one: read it, keep nothing
        return negotiation.wants_json(accept.decode("latin-1"))
    return _kept_wants_json(accept)


@functools.lru_cache(maxsize=256)  # at most 256 values of at most 256 bytes
def _kept_wants_json(accept: bytes) -> bool:
    return negotiation.wants_json(accept.decode("latin-1"))


class _ErrorReport:
    """Logs a failure with its traceback, then at most once per :data:`ERROR_LOG_EVERY`
    seconds, saying how many there were in between (every one is counted in the metrics)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next = float("-inf")
        self._unreported = 0

    def report(self, exc: Exception) -> None:
        self._unreported += 1
        now = self._clock()
        if now < self._next:
            return
        self._next = now + ERROR_LOG_EVERY
        count, self._unreported = self._unreported, 0
        log.error(
            "hit path failed (%d time(s) since the last report), the full stack answered: %s",
            count,
            type(exc).__name__,
            exc_info=exc,
        )
