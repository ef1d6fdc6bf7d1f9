"""Answers behind shared caches: lifetimes per audience, surrogate keys, and purging by key.

    CachePolicy        the caching headers of every kind of answer, in one place
    surrogate_keys()   the tags naming an image (``img-<id>``) and it with a background
    tag(), add_tags()  a handler marks its request; its answer (or error) carries the tags
    Purger             asks a CDN to drop everything tagged with an image's key

A redirect to an output URL is only good while that URL lives, so both lifetimes (browsers'
``max-age`` and shared caches' ``s-maxage``/``CDN-Cache-Control``/``Surrogate-Control``) are
capped by the URL's remaining life, never by a fixed number. Store mode's bytes live until
their image changes (:meth:`CachePolicy.stored`): long lifetimes, purged by key. Errors: 4xx
briefly, 5xx and 429 never (``no-store`` for every audience), and so is anything decided per
request (a budget fallback), which a shared cache must not hand to the next visitor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from proxy.setting_values import PURGE_STYLES
from proxy.settings import Settings

log = logging.getLogger("cutproxy.cdn")

"""The values of ``PROXY_CDN_PURGE_STYLE``."""

NO_STORE = "no-store"
# Store mode's lifetimes when PROXY_BROWSER_MAX_AGE / PROXY_CDN_MAX_AGE are unset (seconds).
STORED_BROWSER_MAX_AGE = 86400
STORED_SHARED_MAX_AGE = 31536000
STALE_IF_ERROR = 86400
SCOPE_KEYS = "surrogate_keys"  # where a handler leaves its tags in ``scope["state"]``


# --- lifetimes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Who may keep an answer, and for how long.

    ``browser_max_age`` and ``shared_max_age`` cap the two lifetimes of a variant answer
    (None: no cap beyond the output URL's life); ``error_max_age`` is the life of a 4xx.
    """

    browser_max_age: int | None = None
    shared_max_age: int | None = None
    error_max_age: int = 60

    @classmethod
    def from_settings(cls, settings: Settings) -> CachePolicy:
        return _policy(settings.browser_max_age, settings.cdn_max_age, settings.error_max_age)

    def lifetimes(self, remaining: float) -> tuple[int, int]:
        """(browser, shared) seconds for an answer whose output URL lives ``remaining`` more."""
        life = max(0, math.floor(remaining))
        browser = life if self.browser_max_age is None else min(life, self.browser_max_age)
        shared = life if self.shared_max_age is None else min(life, self.shared_max_age)
        return browser, shared

    def output(self, remaining: float) -> dict[str, str]:
        """Headers of an answer that points at an output URL (the redirect, its JSON)."""
        browser, shared = self.lifetimes(remaining)
        if browser <= 0 and shared <= 0:
            return no_store()
        if shared <= 0:
            return browsers_only(browser)
        cache_control = f"public, max-age={browser}"
        if shared != browser:
            cache_control += f", s-maxage={shared}"
        return {
            "Cache-Control": cache_control,
            # RFC 9213 (Cloudflare, Akamai, Fastly) and Surrogate-Control (Fastly, Varnish
            # setups): the shared lifetime again, for CDNs that read only their own header.
            "CDN-Cache-Control": f"max-age={shared}",
            "Surrogate-Control": f"max-age={shared}",
        }

    def stored(self) -> dict[str, str]:
        """Headers of a store-mode answer (the bytes, their JSON, a 304).

        A URL's bytes change only when its image is replaced, and that purges shared caches
        by surrogate key: browsers keep them ``PROXY_BROWSER_MAX_AGE`` (a day by default),
        shared caches ``PROXY_CDN_MAX_AGE`` (a year), and either may serve them a day past
        that while the proxy answers errors (``stale-if-error``, RFC 5861).
        """
        browser = STORED_BROWSER_MAX_AGE if self.browser_max_age is None else self.browser_max_age
        shared = STORED_SHARED_MAX_AGE if self.shared_max_age is None else self.shared_max_age
        if browser <= 0 and shared <= 0:
            return no_store()
        if shared <= 0:
            return browsers_only(browser)
        return {
            "Cache-Control": f"public, max-age={browser}, s-maxage={shared}, "
            f"stale-if-error={STALE_IF_ERROR}",
            "CDN-Cache-Control": f"max-age={shared}",
            "Surrogate-Control": f"max-age={shared}",
        }

    def error(self, status: int) -> dict[str, str]:
        """4xx: kept briefly by everyone; 429 and 5xx: kept by nobody."""
        if status >= 500 or status == 429:
            return no_store()
        return {"Cache-Control": f"public, max-age={self.error_max_age}"}


@functools.lru_cache(maxsize=64)
def _policy(browser: int | None, shared: int | None, error: int) -> CachePolicy:
    # Frozen, so one instance per setting combination serves every request.
    return CachePolicy(browser, shared, error)


def browsers_only(max_age: int) -> dict[str, str]:
    """Browsers may keep it ``max_age`` seconds; no shared cache may (PROXY_CDN_MAX_AGE=0)."""
    return {
        "Cache-Control": f"private, max-age={max_age}",
        "CDN-Cache-Control": NO_STORE,
        "Surrogate-Control": NO_STORE,
    }


def no_store() -> dict[str, str]:
    """An answer nobody may keep: errors worth retrying, decisions made for one request.

    ``Surrogate-Control`` is set too because Varnish's built-in VCL reads only it, not
    ``Cache-Control``, once the header is present on any answer.
    """
    return {"Cache-Control": NO_STORE, "CDN-Cache-Control": NO_STORE, "Surrogate-Control": NO_STORE}


# --- surrogate keys -------------------------------------------------------------------------


def image_key(image_id: str) -> str:
    """The tag on every answer about ``image_id``: purge it to drop them all."""
    return f"img-{image_id}"


def surrogate_keys(image_id: str, bg: str | None = None) -> tuple[str, ...]:
    """``img-<id>`` and, with a background, ``img-<id>.<bg>`` (ids never contain a dot)."""
    key = image_key(image_id)
    return (key,) if bg is None else (key, f"{key}.{bg}")


def tag(scope: Scope, keys: Sequence[str]) -> None:
    """Mark the answer to this request with ``keys``, success or error alike.

    The handler puts them on its own answer (:func:`tag_raw`); the error handlers and
    :func:`tagged` endpoints read them back with :func:`add_tags`.
    """
    scope.setdefault("state", {})[SCOPE_KEYS] = tuple(keys)


def tag_headers(keys: Sequence[str]) -> dict[str, str]:
    """``Surrogate-Key`` (Fastly, Varnish; space-separated) and ``Cache-Tag`` (Cloudflare)."""
    return {"Surrogate-Key": " ".join(keys), "Cache-Tag": ",".join(keys)}


@functools.lru_cache(maxsize=4096)
def tag_raw(keys: tuple[str, ...]) -> tuple[tuple[bytes, bytes], ...]:
    """:func:`tag_headers` as raw ASGI headers, encoded once per image and background."""
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in tag_headers(keys).items()
    )


def add_tags(scope: Scope, response: Response) -> Response:
    """Put the request's tags (if a handler left any) on ``response``, unless already there."""
    keys = scope.get("state", {}).get(SCOPE_KEYS)
    if keys:
        headers = response.headers
        for name, value in tag_headers(keys).items():
            if name not in headers:
                headers[name] = value
    return response


def tagged(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint whose answer carries the tags it left with :func:`tag`."""

    @functools.wraps(endpoint)
    async def tagging(request: Request) -> Response:
        return add_tags(request.scope, await endpoint(request))

    return tagging


# --- purging --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What one purge call did; ``error`` is public (never a URL's secrets or a token)."""

    keys: tuple[str, ...]
    ok: bool
    status: int | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "configured": True,
            "ok": self.ok,
            "keys": list(self.keys),
            "status": self.status,
            "error": self.error,
        }


NOT_CONFIGURED: dict[str, Any] = {"configured": False, "ok": None, "keys": []}


@dataclass
class Purger:
    """Sends purge-by-key calls to one CDN, counts them, and repeats them once a little later.

    Why the repeat: every worker trusts its view of an image's version for
    ``PROXY_IMAGE_VIEW_TTL`` seconds, so in that window a CDN that refetches may still be
    handed the old answer, and would keep it for ``s-maxage``. A second purge after the
    window drops that copy too.
    """

    url: str
    style: str = "varnish"
    token: str | None = None
    timeout: float = 5.0
    repeat_after: float | None = None
    transport: httpx.AsyncBaseTransport | None = None
    registry: CollectorRegistry | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _repeats: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _counter: Counter | None = field(default=None, init=False, repr=False)
    succeeded: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.style not in PURGE_STYLES:
            raise ValueError(f"unknown purge style {self.style!r}; expected one of {PURGE_STYLES}")
        if self.registry is not None:
            self._counter = Counter(
                "cutproxy_cdn_purges",
                "CDN purge calls by outcome (ok, failed).",
                ["outcome"],
                registry=self.registry,
            )

    def __repr__(self) -> str:
        # The token is a secret; the URL may carry an account id: show neither.
        return f"Purger(style={self.style!r}, succeeded={self.succeeded}, failed={self.failed})"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        registry: CollectorRegistry | None = None,
    ) -> Purger | None:
        """The purger ``PROXY_CDN_PURGE_*`` describe, or None when no purge URL is set."""
        if not settings.cdn_purge_url:
            return None
        return cls(
            url=settings.cdn_purge_url,
            style=settings.cdn_purge_style,
            token=settings.cdn_purge_token,
            timeout=settings.cdn_purge_timeout,
            repeat_after=settings.image_view_ttl + 1.0,
            transport=transport,
            registry=registry,
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self.transport, timeout=self.timeout, follow_redirects=False
            )
        return self._client

    def _request(self, keys: Sequence[str]) -> httpx.Request:
        if self.style == "varnish":
            # deploy/varnish/default.vcl bans every object whose Surrogate-Key holds one.
            return httpx.Request("BAN", self.url, headers={"Surrogate-Key": " ".join(keys)})
        if self.style == "fastly":
            # POST /service/<id>/purge with the keys in Surrogate-Key (Fastly's batch purge).
            headers = {"Surrogate-Key": " ".join(keys), "Fastly-Key": self.token or ""}
            return httpx.Request("POST", self.url, headers=headers)
        # cloudflare: POST /client/v4/zones/<zone>/purge_cache {"tags": [...]}
        return httpx.Request(
            "POST",
            self.url,
            json={"tags": list(keys)},
            headers={"Authorization": f"Bearer {self.token or ''}"},
        )

    async def purge(self, keys: Iterable[str]) -> PurgeResult:
        """One purge call for ``keys``. Never raises: a failure is logged, counted, returned."""
        wanted = tuple(keys)
        try:
            response = await self._http().send(self._request(wanted))
        except httpx.HTTPError as exc:
            # The exception's text can hold the URL; its class name says enough.
            return self._done(wanted, None, f"no answer from the CDN ({type(exc).__name__})")
        if response.is_success:
            return self._done(wanted, response.status_code, None)
        return self._done(wanted, response.status_code, f"the CDN answered {response.status_code}")

    def _done(self, keys: tuple[str, ...], status: int | None, error: str | None) -> PurgeResult:
        ok = error is None
        if ok:
            self.succeeded += 1
            log.info("cdn purge of %s: ok", " ".join(keys))
        else:
            self.failed += 1
            log.warning("cdn purge of %s failed: %s", " ".join(keys), error)
        if self._counter is not None:
            self._counter.labels(outcome="ok" if ok else "failed").inc()
        return PurgeResult(keys, ok, status, error)

    async def purge_image(self, image_id: str) -> PurgeResult:
        """Purge every answer about the image now, and once more after ``repeat_after``."""
        result = await self.purge(surrogate_keys(image_id))
        self._later(image_id)
        return result

    def notice(self, image_id: str) -> None:
        """A synchronous hook (the image service's ``on_change``): purge in the background."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("cdn purge of %s skipped: no event loop", image_key(image_id))
            return
        self._spawn(loop, self.purge_image(image_id), self._tasks)

    def _later(self, image_id: str) -> None:
        if not self.repeat_after:
            return
        delay = self.repeat_after

        async def again() -> PurgeResult:
            await self.sleep(delay)
            return await self.purge(surrogate_keys(image_id))

        self._spawn(asyncio.get_running_loop(), again(), self._repeats)

    @staticmethod
    def _spawn(
        loop: asyncio.AbstractEventLoop,
        work: Awaitable[PurgeResult],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        async def run() -> None:
            await work

        task = loop.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def settle(self) -> None:
        """Wait for every background purge started so far, repeats included (tests)."""
        while self._tasks or self._repeats:
            await asyncio.gather(*self._tasks, *self._repeats, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish purges in flight (each bounded by ``timeout``), drop waiting repeats, close."""
        while self._tasks or self._repeats:
            for task in list(self._repeats):
                task.cancel()  # a purge in flight may add one: hence the loop
            await asyncio.gather(*self._tasks, *self._repeats, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
