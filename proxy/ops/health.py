"""Health endpoints for load balancers and orchestrators.

- ``GET /health/live`` (and ``/health``): the process is serving. Never touches I/O, so a
  slow disk or upstream cannot get a healthy process restarted.
- ``GET /health/ready``: this instance can do its job: the store takes writes and the upstream
  answers within ``PROXY_READY_TIMEOUT``. The answer is kept ``PROXY_READY_CACHE`` seconds
  and concurrent probes share one check, so probes never cost a stream of upstream calls.
  The upstream probe spends no credits: the embedded engine's health route, or any HTTP
  answer from the real upstream's origin. A probe can pass while every real call fails (an
  upstream whose API is down behind a healthy front), so the upstream also counts as down
  after ``PROXY_READY_UPSTREAM_FAILURES`` failed calls in a row (:class:`UpstreamCalls`),
  until a call succeeds or ``PROXY_READY_FAILURE_WINDOW`` passes without a new failure.
  Each worker counts the calls it made.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.stores.cache import CachedOutput, SharedTier
from proxy.upstream.client import UpstreamClient

PROBE_KEY = "health:probe"

# A reachability probe: True when the upstream answered as expected in time.
UpstreamProbe = Callable[[float], Awaitable[bool]]


@dataclass
class UpstreamCalls:
    """The run of failed upstream calls, fed by the upstream client's ``on_call`` hook.

    A failure is an answer that says the upstream is not doing its job: a 5xx, a timeout, no
    connection. A 2xx ends the run; other 4xx (a bad image, a forgotten upload) are the
    request's own trouble and change nothing, and so does a call cut short because its
    request went away (outcome ``error``).
    """

    threshold: int  # failures in a row that make the upstream count as down; 0: never
    window: float  # seconds the run counts for after its latest failure
    clock: Callable[[], float] = time.time
    failures: int = field(default=0, init=False)
    _latest: tuple[float, str] | None = field(default=None, init=False)

    def note(self, endpoint: str, outcome: str, seconds: float = 0.0) -> None:
        if outcome.startswith("2"):
            self.failures = 0
        elif outcome in ("timeout", "unreachable") or outcome.startswith("5"):
            self.failures += 1
            self._latest = (self.clock(), f"{endpoint}: {outcome}")

    def failing(self) -> str | None:
        """Why the recent calls say the upstream is down, or None."""
        if not self.threshold or self.failures < self.threshold or self._latest is None:
            return None
        at, what = self._latest
        if self.clock() - at > self.window:
            self.failures = 0  # quiet long enough: let calls show whether it is back
            return None
        return f"the last {self.failures} upstream calls failed (latest {what})"


@dataclass
class Readiness:
    """Runs the readiness checks and remembers the last answer for a short while."""

    data_dir: Path
    shared: SharedTier
    probe_upstream: UpstreamProbe
    timeout: float
    cache_seconds: float
    requires_upstream: bool = True
    clock: Callable[[], float] = time.time
    calls: UpstreamCalls | None = None
    _last: tuple[float, dict[str, Any]] | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def check(self) -> dict[str, Any]:
        """``{"ready": bool, "checks": {"store": {...}, "upstream": {...}}}``."""
        async with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last[0] < self.cache_seconds:
                return self._last[1]
            store, upstream = await asyncio.gather(self._store(), self._upstream())
            result = {
                "ready": store["ok"] and (upstream["ok"] or not self.requires_upstream),
                "checks": {"store": store, "upstream": upstream},
            }
            self._last = (self.clock(), result)
            return result

    async def _store(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                await anyio.to_thread.run_sync(self._write_file)
                now = self.clock()
                probe = CachedOutput(f"health:{secrets.token_hex(4)}", now + 60, now)
                await self.shared.set(PROBE_KEY, probe)
                ok = (await self.shared.get(PROBE_KEY)) == probe
        except TimeoutError:
            return _failed("the store did not answer in time", started)
        except Exception as exc:  # an unwritable disk shows up as many different errors
            return _failed(f"the store is not writable ({type(exc).__name__})", started)
        if not ok:
            return _failed("the store did not keep a write", started)
        return {"ok": True, "seconds": _since(started)}

    def _write_file(self) -> None:
        path = self.data_dir / f".ready-{os.getpid()}"
        path.write_bytes(b"ok")
        path.unlink()

    async def _upstream(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                ok = await self.probe_upstream(self.timeout)
        except TimeoutError:
            ok = False
        if not ok:
            return _failed(f"the upstream did not answer within {self.timeout:g}s", started)
        failing = self.calls.failing() if self.calls is not None else None
        if failing is not None:
            return _failed(failing, started)
        return {"ok": True, "seconds": _since(started)}


def upstream_probe(upstream: UpstreamClient, url: str, *, embedded: bool) -> UpstreamProbe:
    """How to tell the upstream is there without spending credits.

    The embedded engine has a health route (``url``) that must answer 2xx. For the real
    upstream, any HTTP answer from the origin of ``url`` (its token URL) proves DNS, TLS
    and the network path work; its API routes are not called.
    """
    target = (
        url if embedded else urlunsplit(urlsplit(url)._replace(path="/", query="", fragment=""))
    )

    async def probe(timeout: float) -> bool:
        return await upstream.reachable(target, timeout, need_success=embedded)

    return probe


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


def _failed(reason: str, started: float) -> dict[str, Any]:
    return {"ok": False, "seconds": _since(started), "error": reason}


async def live(request: Request) -> Response:
    """``GET /health/live``: answering at all is the whole check."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


def ready_endpoint(readiness: Readiness) -> Callable[[Request], Awaitable[Response]]:
    """``GET /health/ready``: 200 when every check passes, else 503 naming the failed ones."""

    async def ready(request: Request) -> Response:
        result = await readiness.check()
        body = {"status": "ready" if result["ready"] else "not_ready", **result}
        return JSONResponse(
            body,
            status_code=200 if result["ready"] else 503,
            headers={"Cache-Control": "no-store"},
        )

    return ready
