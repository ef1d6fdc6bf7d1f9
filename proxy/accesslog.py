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
:class:`JsonFormatter` renders every log record of the process that way (``cutproxy serve``
installs it through :func:`logging_config`), with the current request's id attached.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.encode()
_GOOD_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")

access_log = logging.getLogger("cutproxy.access")


@dataclass(slots=True)
class RequestContext:
    """What the middleware learns about one request while it runs."""

    request_id: str
    upstream_seconds: float = 0.0


# A miss renders in a task of its own (single flight); tasks copy the context when they are
# created, so the leader's upstream time still lands on the request that started it.
_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "cutproxy_request", default=None
)


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None


def note_upstream(seconds: float) -> None:
    """Charge ``seconds`` of upstream time to the request being served, if any."""
    context = _current.get()
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
        token = _current.set(context)
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
            _current.reset(token)


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
    # caller is always this function): a third of the line's cost on a hit.
    record = access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": fields}
    )
    access_log.handle(record)


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


# --- formatting -------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id and fields."""

    _second: tuple[int, str] = (-1, "")  # one tuple, replaced whole: threads log too

    def timestamp(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond; the date and time are built once a second."""
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            data["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        data["pid"] = record.process or os.getpid()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(data)


_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)  # json.dumps makes one per call


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` (uvicorn's ``log_config``): JSON lines to stderr.

    uvicorn applies it in the supervisor and again in every worker process. Libraries that
    log each HTTP call at INFO (httpx) are held at WARNING unless the level is debug.
    """
    level = level.upper()
    chatty = "DEBUG" if level == "DEBUG" else "WARNING"
    handler = {"handlers": ["stderr"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "proxy.accesslog.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "cutproxy": {"level": level, **handler},
            "uvicorn": {"level": level, **handler},
            "uvicorn.error": {"level": level, "propagate": True},
            # The access log above replaces uvicorn's.
            "uvicorn.access": {"level": "WARNING", **handler},
            "httpx": {"level": chatty, **handler},
            "httpcore": {"level": chatty, **handler},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }
