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

Access lines do not cost the event loop a write each: an access line is built straight into
the queue of :class:`JsonLinesHandler`'s writer (:func:`access_line`, about a microsecond,
no LogRecord), and a thread writes the queue in batches. Any other line is written at once,
after what is queued. A graceful stop writes the queue out (:func:`flush_lines`, when the
app's lifespan ends; logging's exit hook otherwise).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import json.encoder
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.ops.metrics import Metrics

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
        f"{_process.tail}"
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
            f'"client": {_encode(client)}{_process.tail}'
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


# --- formatting -------------------------------------------------------------------------------

_second: tuple[int, str] = (-1, "")  # one tuple, replaced whole: threads log too
_milli: tuple[int, str] = (-1, "")


def iso_timestamp(created: float) -> str:
    """ISO 8601 in UTC to the millisecond; the date and time are built once a second, the
    whole stamp once a millisecond (a busy worker writes several lines in one)."""
    global _second, _milli
    milli = int(created * 1000)
    last, stamp = _milli
    if milli == last:
        return stamp
    second, text = _second
    if milli // 1000 != second:
        second = milli // 1000
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, text)
    stamp = f"{text}.{milli - second * 1000:03d}+00:00"
    _milli = (milli, stamp)
    return stamp


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id and fields."""

    def timestamp(self, created: float) -> str:
        return iso_timestamp(created)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": iso_timestamp(record.created),
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


class _Process:
    """This process's id, read once (a forked child reads its own)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.pid = os.getpid()
        self.tail = f', "pid": {self.pid}}}\n'  # how every access line ends


_process = _Process()


# --- writing ----------------------------------------------------------------------------------

WRITE_EVERY = 0.1  # seconds lines wait in the queue, so one write carries many
MAX_QUEUED = 100_000  # lines; past this (stderr not read) new info lines are dropped, counted


class LineWriter:
    """Lines for a stream, written in batches by a thread of their own.

    :meth:`write` only appends to a queue (a deque: appends are atomic), so the event loop
    never waits on the stream; the thread wakes when the first line arrives, lets more
    gather for :data:`WRITE_EVERY`, and writes them all at once. :meth:`flush` writes the
    queue out in the caller's thread: for lines that must not wait, and at exit.
    """

    def __init__(self, stream: TextIO, *, every: float = WRITE_EVERY) -> None:
        self.stream = stream
        self.every = every
        self.dropped = 0
        self._queue: deque[str] = deque()
        self._armed = False  # the thread was woken for what is queued
        self._lock = threading.Lock()  # one writer at a time, in queue order
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        _writers.add(self)

    def write(self, line: str) -> None:
        """Queue ``line`` (ending in a newline); written within :data:`WRITE_EVERY`."""
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.append(line)
        if not self._armed:
            self._armed = True
            if self._thread is None:
                self._start()
            self._wake.set()

    def write_now(self, line: str) -> None:
        """Write what is queued, then ``line``, before returning."""
        self._queue.append(line)
        self.flush()

    def flush(self) -> None:
        """Write everything queued, in this thread."""
        with self._lock:
            self._armed = False
            queue = self._queue
            lines = [queue.popleft() for _ in range(len(queue))]  # later appends stay queued
            if self.dropped:
                lines.append(_dropped_line(self.dropped))
                self.dropped = 0
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except (OSError, ValueError):  # stderr closed or gone: nowhere left to log
                    pass

    def close(self) -> None:
        self._closed = True
        self.flush()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:  # other threads (anyio's workers) log too: start one thread only
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="cutproxy-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.every)
            self.flush()

    def _forked(self) -> None:
        """In a forked child: no thread yet, and the parent writes its own queue."""
        self._queue.clear()
        self._armed = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None


_writers: weakref.WeakSet[LineWriter] = weakref.WeakSet()


def flush_lines() -> None:
    """Write out every queued line now: before the process stops.

    Workers run uvicorn, which ends a graceful stop by raising SIGTERM again with its
    default action, so the interpreter's exit hooks (logging's flush) never run there.
    """
    for writer in list(_writers):
        writer.flush()


def _forked() -> None:
    for writer in list(_writers):
        writer._forked()


os.register_at_fork(after_in_child=_forked)


def _dropped_line(count: int) -> str:
    data = {
        "ts": iso_timestamp(time.time()),
        "level": "warning",
        "logger": "cutproxy.log",
        "msg": f"{count} log line(s) dropped: stderr is not being read fast enough",
        "pid": _process.pid,
    }
    return _ENCODER.encode(data) + "\n"


class JsonLinesHandler(logging.Handler):
    """Every record as a JSON line on stderr (or ``stream``); access lines off the loop.

    Access lines, one per request, skip records altogether (:func:`log_request`) and wait
    in the :class:`LineWriter`'s queue for its thread. Records are few (start, stop, a
    mint, warnings, errors) and are written before ``emit`` returns, after the lines queued
    before them: the order holds, and an operator has them even if the process dies next.
    ``flush``, which logging calls at exit, writes the queue out.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.writer = LineWriter(stream if stream is not None else sys.stderr)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.writer.write_now(line)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        super().close()


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` (uvicorn's ``log_config``): JSON lines to stderr.

    uvicorn applies it in the supervisor and again in every worker process. Libraries that
    log each HTTP call at INFO (httpx), or each image pipeline (libvips, through pyvips, in
    store mode), are held at WARNING unless the level is debug.
    """
    level = level.upper()
    chatty = "DEBUG" if level == "DEBUG" else "WARNING"
    handler = {"handlers": ["stderr"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "proxy.ops.accesslog.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "proxy.ops.accesslog.JsonLinesHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "cutproxy": {"level": level, **handler},
            # Its own entry, not only cutproxy's: access lines then go to the writer directly.
            "cutproxy.access": {"level": level, **handler},
            "uvicorn": {"level": level, **handler},
            "uvicorn.error": {"level": level, "propagate": True},
            # The access log above replaces uvicorn's.
            "uvicorn.access": {"level": "WARNING", **handler},
            "httpx": {"level": chatty, **handler},
            "httpcore": {"level": chatty, **handler},
            "pyvips": {"level": chatty, **handler},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }
