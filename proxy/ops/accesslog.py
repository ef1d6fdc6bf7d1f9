"""Access logs and request metrics: one JSON line per request, one request id end to end.

:class:`AccessLog` is a plain ASGI middleware. For every HTTP request it takes the request id
from ``X-Request-ID`` (or makes one) and echoes it on the response, times the request, adds
up the time spent in upstream calls made on its behalf (:func:`note_upstream`, fed by the
upstream client's hook), and when the response is done writes one line::

    {"ts": "...", "level": "info", "logger": "cutproxy.access", "msg": "request",
     "request_id": "...", "method": "GET", "path": "/img/demo/320x240/ffffff.png",
     "status": 302, "cache_tier": "miss", "upstream_seconds": 1.2034,
     "duration_seconds": 1.2101, "client": "127.0.0.1", "pid": 4242}

The path is logged without its query string: signed URLs carry their signature there.
:class:`~proxy.ops.logs.JsonFormatter` renders every log record of the process that way
(:mod:`proxy.ops.logs`), with the current request's id attached.

Access lines do not cost the event loop a write each: an access line is built straight into
the queue of :class:`~proxy.ops.logs.JsonLinesHandler`'s writer (:func:`access_line`, about
a microsecond, no LogRecord), and a thread writes the queue in batches. Any other line is
written at once, after what is queued. A graceful stop writes the queue out
(``flush_lines``, when the app's lifespan ends; logging's exit hook otherwise).
"""

from __future__ import annotations

import itertools
import json
import json.encoder
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.ops.logs import (
    JsonFormatter,
    JsonLinesHandler,
    LineWriter,
    RequestContext,
    current_request,
    current_request_id,
    iso_timestamp,
    process,
)
from proxy.ops.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.encode()
_GOOD_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")

access_log = logging.getLogger("cutproxy.access")


def note_upstream(seconds: float) -> None:
    """Charge ``seconds`` of upstream time to the request being served, if any."""
    context = current_request.get()
    if context is not None:
        context.upstream_seconds += seconds


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain, else a fresh one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return given_request_id(value)
    return new_request_id()


def given_request_id(value: bytes) -> str:
    """A caller's ``X-Request-ID`` value, kept when it is short and plain."""
    text = value.decode("latin-1").strip()
    return text if _GOOD_ID.fullmatch(text) else new_request_id()


class _RequestIds:
    """32 hex digits: 16 random per process, then a counter. Unique, cheap, not secret."""

    def __init__(self) -> None:
        self.reset()
        # A forked worker must not repeat its parent's ids.
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


new_request_id = _RequestIds()


class AccessLog:
    """ASGI middleware: request id, one JSON access-log line and the request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = RequestContext(request_id_from(scope.get("headers", [])))
        token = current_request.set(context)
        scope.setdefault("state", {})
        root_path = scope.get("root_path", "")
        status = 500
        header = (_REQUEST_ID_RAW, context.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests_in_flight.dec()
            seconds = time.perf_counter() - started
            route = route_label(scope, root_path)
            self.metrics.request_done(route, scope["method"], status, seconds)
            if access_log.isEnabledFor(logging.INFO):  # below the level: build nothing
                tier = scope["state"].get("cache_tier")
                log_request(
                    scope,
                    route,
                    status,
                    self.metrics.tier(tier) if tier else None,
                    seconds,
                    context.upstream_seconds,
                )
            current_request.reset(token)


def log_request(
    scope: Scope,
    route: str,
    status: int,
    tier: str | None,
    seconds: float,
    upstream_seconds: float = 0.0,
    request_id: str | None = None,
) -> None:
    """The access-log line of one request (``request_id``: when no context carries it)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    if request_id is None:
        request_id = current_request_id()
    writer = _direct_writer()
    if writer is not None:  # the line goes straight to the writer's queue: no LogRecord
        writer.write(
            access_line(
                scope, route, status, tier, seconds, upstream_seconds, request_id, time.time()
            )
        )
        return
    fields: dict[str, Any] = {"request_id": request_id} if request_id is not None else {}
    fields.update(
        method=scope["method"],
        path=scope["path"],
        route=route,
        status=status,
        cache_tier=tier,
        upstream_seconds=round(upstream_seconds, 4),
        duration_seconds=round(seconds, 4),
        client=(scope.get("client") or ("", 0))[0],
    )
    # As access_log.info() would, less the caller lookup (a stack walk, and an access line's
    # caller is always this function).
    record = access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": fields}
    )
    access_log.handle(record)


# C; what the formatter's encoder does to a str: a JSON string, quotes included.
json_string: Callable[[str], str] = json.encoder.encode_basestring
_encode = json_string
_QUOTED = {
    name: _encode(name)
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "memory", "disk", "redis", "miss")
}


def access_line(
    scope: Scope,
    route: str,
    status: int,
    tier: str | None,
    seconds: float,
    upstream_seconds: float,
    request_id: str | None,
    created: float,
) -> str:
    """The line :class:`JsonFormatter` would make of the access record, built directly.

    The same fields in the same order, encoded the same way, in about a microsecond: the
    logging path (a LogRecord, a dict, the JSON encoder, a handler lock) costs ten.
    """
    method = scope["method"]
    client = (scope.get("client") or ("", 0))[0]
    rid = "" if request_id is None else f'"request_id": {_encode(request_id)}, '
    return (
        f'{{"ts": "{iso_timestamp(created)}", "level": "info", "logger": "cutproxy.access", '
        f'"msg": "request", {rid}"method": {_QUOTED.get(method) or _encode(method)}, '
        f'"path": {_encode(scope["path"])}, "route": {_encode(route)}, "status": {int(status)}, '
        f'"cache_tier": {"null" if tier is None else _QUOTED.get(tier) or _encode(tier)}, '
        f'"upstream_seconds": {round(upstream_seconds, 4)!r}, '
        f'"duration_seconds": {round(seconds, 4)!r}, "client": {_encode(client)}'
        f"{process.tail}"
    )


class FixedLine:
    """Access lines of requests that share their route, status and tier (the hit path's):
    what they share is encoded once, the rest (time, id, method, path, duration, client)
    per request. The same line :func:`log_request` would write, with less left to do."""

    def __init__(self, route: str, status: int, tier: str) -> None:
        self.route, self.status, self.tier = route, status, tier
        self._middle = (
            f'"route": {_encode(route)}, "status": {status}, "cache_tier": {_encode(tier)}, '
            '"upstream_seconds": 0.0, "duration_seconds": '
        )

    def log(
        self, scope: Scope, seconds: float, request_id: str, path_json: str | None = None
    ) -> None:
        """The line of one request (``request_id``: given or made by this module: plain;
        ``path_json``: the path as JSON, when the caller keeps it encoded)."""
        writer = _direct_writer()
        if writer is None:
            log_request(scope, self.route, self.status, self.tier, seconds, 0.0, request_id)
            return
        method = scope["method"]
        client = (scope.get("client") or ("", 0))[0]
        writer.write(
            f'{{"ts": "{iso_timestamp(time.time())}", "level": "info", '
            f'"logger": "cutproxy.access", "msg": "request", "request_id": "{request_id}", '
            f'"method": {_QUOTED.get(method) or _encode(method)}, '
            f'"path": {path_json or _encode(scope["path"])}, {self._middle}'
            # round(seconds, 4) as JSON; most hits take under 50 us: it is 0.0
            f"{'0.0' if seconds < 0.00005 else repr(round(seconds, 4))}, "
            f'"client": {_encode(client)}{process.tail}'
        )


_direct: tuple[logging.Handler | None, LineWriter | None] = (None, None)


def _direct_writer() -> LineWriter | None:
    """The access log's writer, when its records would reach that writer and nothing else.

    That is how :func:`logging_config` sets it up; anything else (a test's handler, a
    filter, another formatter) gets real records. Worked out once per handler.
    """
    global _direct
    logger = access_log
    handlers = logger.handlers
    if len(handlers) != 1 or logger.propagate or logger.filters:
        return None
    handler = handlers[0]
    known, writer = _direct
    if handler is not known:
        writer = None
        if (
            type(handler) is JsonLinesHandler
            and not handler.filters
            and handler.level <= logging.INFO
            and type(handler.formatter) is JsonFormatter
        ):
            writer = handler.writer
        _direct = (handler, writer)
    return writer


def route_label(scope: Scope, root_path: str) -> str:
    """The matched route's template (``/img/{image_id}/{size}/{filename}``), never the raw path.

    Mounted apps (the embedded engine) report their mount prefix plus their own template.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    prefix = scope.get("root_path", "")[len(root_path) :]
    return f"{prefix}{path}" or "/"
