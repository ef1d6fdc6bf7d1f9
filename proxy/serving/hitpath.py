"""The hit path: a variant in the memory tier is answered before anything else runs.

:class:`HitPath` is the app's outermost layer, in front of even Starlette's error layer. A GET
or HEAD of ``/img/<id>/<size>/<file>`` (or a preset's ``/img/<id>/<file>``; for ``.auto``,
the format its ``Accept`` gets) whose answer comes from this worker's memory tier is
sent from here in raw ASGI, with the headers, request id, metrics and access-log line any
request gets: in redirect mode the 302 (``hit_output``), in store mode the bytes themselves,
or a 304 when ``If-None-Match`` names their ETag (``hit_bytes``; no disk is touched). Their
headers are built once per kept variant (:func:`proxy.serving.responses.stored_wire`, which
the full stack's answer uses too), so such a hit is a few lookups and two sends. Anything
else (a miss, a disk-tier hit, a 308, JSON, a bad signature, an error of any kind) goes
down the full stack, access log, router, exception handlers and
:class:`proxy.serving.variant_route.VariantEndpoint`, exactly as if this layer were not there:
both ask the same :class:`~proxy.url.decision.Decider` what the URL means, so a hit is never
answered differently from how the full stack would answer it (``tests/ops/test_hit_path.py``).

What a hit skips is the per-request machinery: Starlette's error and exception layers, the
router, request and response objects, the wrappers each layer puts around ``send``. Its
counts go through the metrics' batched tally, and ``cutproxy_hit_path_answers_total`` counts
the requests answered here. Memory hits never wait, so they are not counted in
``cutproxy_http_requests_in_flight``.

Whatever it keeps per request is bounded in bytes, not only in entries: the decider's memo
keeps short paths only, and the ``Accept`` values remembered are short ones. A failure
here is a bug: it is counted (``cutproxy_hit_path_errors_total``) and logged (at most once a
minute, with a count), and the full stack answers the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.ops.accesslog import FixedLine, access_log, given_request_id, new_request_id
from proxy.ops.logs import flush_lines
from proxy.ops.metrics import Metrics
from proxy.serving import formats, responses
from proxy.serving.cdn import CachePolicy
from proxy.serving.negotiation import stored_bytes
from proxy.serving.responses import RawHeaders
from proxy.serving.variant_route import Described
from proxy.stores.cache import CachedOutput
from proxy.stores.derived import StoredVariant
from proxy.url.decision import PREFIX, PRESET_ROUTE, ROUTE, Decider, Serve
from proxy.url.variant import Variant

_READS = frozenset({"GET", "HEAD"})
ERROR_LOG_EVERY = 60.0  # seconds between two log lines about hit-path failures

log = logging.getLogger("cutproxy.hitpath")
# Every hit's access line, by route template (a size's or a preset's) and status: 302
# (redirect mode), 200 and 304 (store mode).
_LINES = {
    (route, status): FixedLine(route, status, "memory")
    for route in (ROUTE, PRESET_ROUTE)
    for status in (302, 200, 304)
}
# status, headers, body, request id, path as JSON, route template
_Answer = tuple[int, RawHeaders, bytes, str, str, str]


class HitPath:
    """ASGI: memory hits of the variant route answered at once; everything else passed on.

    ``hit_output``: redirect mode's memory hits (their output URL); ``hit_bytes``: store
    mode's (the variant's bytes). Either one counts the hit it returns, as the route would.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        decider: Decider[Described],
        hit_output: Callable[[Variant], CachedOutput | None] | None = None,
        hit_bytes: Callable[[Variant], StoredVariant | None] | None = None,
        policy: CachePolicy,
        clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        if (hit_output is None) == (hit_bytes is None):
            raise ValueError("give hit_output (redirect mode) or hit_bytes (store mode)")
        self.app = app
        self.decide = decider.decide
        self.hit_output = hit_output
        self.hit_bytes = hit_bytes
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self._errors = _ErrorReport(clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _READS
            and scope["path"].startswith(PREFIX)
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
                status, headers, body, request_id, path_json, route = answer
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                seconds = time.perf_counter() - started
                self.metrics.hit_path_answered(route, scope["method"], status, seconds)
                if access_log.isEnabledFor(logging.INFO):
                    _LINES[route, status].log(scope, seconds, request_id, path_json)
                return
        elif scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, send)
            finally:  # the app is done: so are its requests, and their queued access lines
                flush_lines()
            return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> _Answer | None:
        """The answer's status, headers and body, the request id and the path as JSON, or
        None: not a plain memory hit."""
        accept = given_id = if_none_match = None
        for name, value in scope["headers"]:  # the first of each, as Starlette reads them
            if name == b"accept":
                accept = value if accept is None else accept
            elif name == b"x-request-id":
                given_id = value if given_id is None else given_id
            elif name == b"if-none-match":
                if_none_match = value if if_none_match is None else if_none_match
        now = self.clock()
        try:
            decision = self.decide(scope["path"], scope["query_string"], accept, now)
        except ProxyError:  # a 400 or 403: the full stack renders it
            return None
        if type(decision) is not Serve or decision.json:  # a 308, JSON, not a variant URL
            return None
        about = decision.about
        store = self.hit_bytes is not None
        # .auto: the format this Accept gets, as the route picks it
        variant = formats.concrete(decision.variant, accept, store=store)
        if self.hit_bytes is not None:  # store mode
            stored = self.hit_bytes(variant)
            if stored is None:
                return None
            wire = responses.stored_wire(stored, about.headers, policy=self.policy)
            head = scope["method"] == "HEAD"
            status, raw, body = stored_bytes(stored, wire, if_none_match=if_none_match, head=head)
            headers = list(raw)
        else:
            assert self.hit_output is not None
            output = self.hit_output(variant)
            if output is None:
                return None
            status, body = 302, b""
            headers = responses.redirect_headers(output, now, about.headers, policy=self.policy)
        request_id = new_request_id() if given_id is None else given_request_id(given_id)
        headers.append((b"x-request-id", request_id.encode()))
        route = ROUTE if decision.variant.preset is None else PRESET_ROUTE
        return status, headers, body, request_id, about.path_json, route


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
