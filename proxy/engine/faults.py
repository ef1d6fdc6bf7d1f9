"""Fault injection: a slow, failing, unreachable or hanging engine, on request.

The state starts from the settings and is changed at run time by ``PUT /_engine/faults``; it
lives in the shared store, so every worker misbehaves alike.

- ``token_latency`` / ``process_latency``: seconds added before a mint / processing call;
- ``error_rate``: the share of those calls answered with ``error_status`` (a 5xx);
- ``mode = "down"``: API and file calls get no answer. An app cannot refuse a TCP connection,
  so it does the nearest thing: it starts a response and raises :class:`EngineDownError`.
  Through ``httpx.ASGITransport`` the client sees that exception, an ``httpx.ConnectError``
  (what an unreachable host raises); through uvicorn the connection is closed with the body
  unsent, so httpx raises ``RemoteProtocolError``. Either way: no status, no body.
- ``mode = "hang"``: the call is never answered; the engine waits until the client
  disconnects. Note that ``httpx.ASGITransport`` enforces no timeouts: wrap such calls in
  ``anyio.fail_after``.

Stats, health and the faults endpoint itself are never affected, so a test can always
switch the engine back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.engine.errors import InjectedFaultError, InvalidRequestError
from proxy.engine.settings import FAULT_MODES, EngineSettings
from proxy.engine.store import Store

_KEY = "faults"


class EngineDownError(httpx.ConnectError):
    """The engine plays unreachable (fault mode ``down``)."""


@dataclass(frozen=True, slots=True)
class FaultState:
    token_latency: float = 0.0
    process_latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    mode: str = "ok"

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> FaultState:
        return cls(
            token_latency=settings.token_latency,
            process_latency=settings.process_latency,
            error_rate=settings.error_rate,
            error_status=settings.error_status,
            mode=settings.mode,
        )

    def updated(self, changes: Any) -> FaultState:
        """A copy with ``changes`` (a JSON object) applied; 400 naming any bad field."""
        if not isinstance(changes, Mapping):
            raise InvalidRequestError("body: must be a JSON object of fault settings")
        values = dataclasses.asdict(self)
        for key, value in changes.items():
            if key not in values:
                raise InvalidRequestError(f"{key}: unknown fault setting")
            values[key] = _check(key, value)
        return FaultState(**values)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(key: str, value: Any) -> Any:
    # json.loads reads NaN and Infinity: neither is a number of seconds.
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if key in ("token_latency", "process_latency"):
        if not number or value < 0:
            raise InvalidRequestError(f"{key}: must be a number of seconds, 0 or more")
        return float(value)
    if key == "error_rate":
        if not number or not 0 <= value <= 1:
            raise InvalidRequestError(f"{key}: must be a number from 0 to 1")
        return float(value)
    if key == "error_status":
        if not isinstance(value, int) or isinstance(value, bool) or not 500 <= value <= 599:
            raise InvalidRequestError(f"{key}: must be a status from 500 to 599")
        return value
    if value not in FAULT_MODES:
        raise InvalidRequestError(f"{key}: must be one of {', '.join(FAULT_MODES)}")
    return value


class DropConnection(Response):
    """Start an answer, then fail: the server closes the connection with nothing usable sent."""

    def __init__(self) -> None:
        super().__init__(status_code=503)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A promised body that never comes: no client can mistake this for an answer.
        await send(
            {"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"1")]}
        )
        raise EngineDownError("the engine is down (fault injection)")


class Hang(Response):
    """Never answer; return once the client has given up."""

    def __init__(self) -> None:
        super().__init__(status_code=504)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


Kind = Literal["token", "process", "file"]


class Faults:
    """Reads the shared fault state and applies it to one call."""

    def __init__(self, store: Store, *, chance: Callable[[], float] | None = None) -> None:
        self._store = store
        self._chance = chance or random.Random().random

    async def state(self) -> FaultState:
        stored = await anyio.to_thread.run_sync(self._store.get, _KEY)
        return FaultState(**stored) if isinstance(stored, dict) else FaultState()

    async def change(self, changes: Any) -> FaultState:
        state = (await self.state()).updated(changes)
        await anyio.to_thread.run_sync(self._store.set, _KEY, state.as_json())
        return state

    def reset(self, state: FaultState) -> None:
        """Blocking: set the state outright (at start-up)."""
        self._store.set(_KEY, state.as_json())

    async def before(self, kind: Kind) -> Response | None:
        """Misbehave as configured: a response to answer with instead, or None to go on.

        Raises :class:`InjectedFaultError` for an injected 5xx.
        """
        state = await self.state()
        if state.mode == "down":
            return DropConnection()
        if state.mode == "hang":
            return Hang()
        if kind == "file":
            return None
        latency = state.token_latency if kind == "token" else state.process_latency
        if latency > 0:
            await anyio.sleep(latency)
        if state.error_rate > 0 and self._chance() < state.error_rate:
            raise InjectedFaultError(state.error_status)
        return None


class _DropInjectedFaults(logging.Filter):
    """Keep uvicorn from logging a traceback for each connection dropped on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], EngineDownError))


_FILTER = _DropInjectedFaults()


def quiet_dropped_connections() -> None:
    """Install the filter on uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
