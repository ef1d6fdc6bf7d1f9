"""The process's log output: every record as one JSON line, written off the event loop.

:class:`JsonFormatter` renders each record (time, level, logger, message, the current
request's id, fields, pid); :class:`JsonLinesHandler` writes records at once and queues access
lines (built by :mod:`proxy.ops.accesslog`) for a :class:`LineWriter` thread that writes them
in batches. :func:`logging_config` installs both (``cutproxy serve`` hands it to uvicorn);
:func:`flush_lines` writes the queue out before the process stops.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO


@dataclass(slots=True)
class RequestContext:
    """What the middleware learns about one request while it runs."""

    request_id: str
    upstream_seconds: float = 0.0


# A miss renders in a task of its own (single flight); tasks copy the context when they are
# created, so the leader's upstream time still lands on the request that started it.
current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "cutproxy_request", default=None
)


def current_request_id() -> str | None:
    context = current_request.get()
    return context.request_id if context is not None else None


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
        return ENCODER.encode(data)


ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)  # json.dumps makes one per call


class _Process:
    """This process's id, read once (a forked child reads its own)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.pid = os.getpid()
        self.tail = f', "pid": {self.pid}}}\n'  # how every access line ends


process = _Process()


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
        "pid": process.pid,
    }
    return ENCODER.encode(data) + "\n"


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
        "formatters": {"json": {"()": "proxy.ops.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "proxy.ops.logs.JsonLinesHandler",
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
