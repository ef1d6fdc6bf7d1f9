"""Health endpoints for load balancers and orchestrators.

- ``GET /health/live`` (and ``/health``): the process is serving. Never touches I/O, so a
  slow disk or upstream cannot get a healthy process restarted.
- ``GET /health/ready``: this instance can do its job: the store takes writes and the upstream
  answers within ``PROXY_READY_TIMEOUT``. The answer is kept ``PROXY_READY_CACHE`` seconds
  and concurrent probes share one check, so probes never cost a stream of upstream calls.
  The upstream probe spends no credits: the embedded engine's health route, or any HTTP
  answer from the real upstream's origin.
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

from proxy.cache import CachedOutput, SharedTier
from proxy.upstream import UpstreamClient

PROBE_KEY = "health:probe"

# A reachability probe: True when the upstream answered as expected in time.
UpstreamProbe = Callable[[float], Awaitable[bool]]


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
