"""The upstream client: BackgroundCut's v3 token flow over one pooled httpx client.

Foreign errors stop here: every httpx exception and every unusable answer is translated into
the proxy's own hierarchy (``proxy.errors``) before it leaves this module, with a public
message fixed per error code (:data:`PUBLIC_MESSAGES`). What the upstream said goes to the
log only, with every form of the API key and the access token masked (:mod:`proxy.masking`).

Retries (tenacity) honour ``Retry-After`` and stop at an overall deadline. A processing call
is retried after 429, 5xx, timeouts and connection failures. A mint is where credits are
charged, so it is retried only when it provably was not charged: the connection was never
made (connect error, connect or pool timeout), or a 429. Any other failure of a mint (the
connection dropped after the request went out, a read timeout, a 5xx, an undocumented 4xx)
is *ambiguous*: it ends the attempt, carries ``maybe_charged`` for the books and is reported
through ``on_ambiguous_mint``; nothing remembers it, so the next request decides afresh.

Every call is bounded by its timeout as a whole, whatever the transport: httpx's timeouts
are per phase, and ``httpx.ASGITransport`` (the embedded engine) applies none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from proxy.errors import (
    UpstreamError,
    UpstreamGoneError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
)
from proxy.masking import mask
from proxy.settings import Settings
from proxy.upstream.replies import (
    MAX_MESSAGE,
    error_message,
    host_allowed,
    normalise_output_url,
    parse_retry_after,
)

log = logging.getLogger("cutproxy.upstream")


# Public messages, one per error code: never the upstream's text, never a host name.
PUBLIC_MESSAGES: dict[str, str] = {
    "upstream_error": "the upstream failed or sent an answer the proxy cannot use",
    "upstream_refused": "the upstream refused the request",
    "upstream_auth": "the upstream rejected the API key: check PROXY_API_KEY",
    "upstream_token_rejected": "the upstream rejected the processing token",
    "upstream_out_of_credits": (
        "the upstream account is out of credits: top up the BackgroundCut account"
    ),
    "upstream_upload_gone": "the upstream no longer has this image's upload",
    "upstream_rate_limited": "the upstream's rate limit was reached; retry later",
    "upstream_timeout": "the upstream did not answer in time",
    "upstream_unreachable": "the upstream could not be reached or dropped the connection",
    "output_host_not_allowed": (
        "the upstream returned an output URL that is not allowed (see PROXY_ALLOWED_OUTPUT_HOSTS)"
    ),
}

# Answers to a mint that the contract says take no credit: a refusal (400 invalid, 401/403
# key, 402 out of credits, 404 unknown upload, 405, 413) or a rate limit (429). Any other
# status may come after the charge.
UNCHARGED_MINT_STATUSES = frozenset({400, 401, 402, 403, 404, 405, 413, 429})

MintHook = Callable[[list[dict[str, Any]], str | None], None]


@dataclass(frozen=True, slots=True)
class ProcessResult:
    unique_filename: str
    output_urls: dict[str, str]
    input_url: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where and how to reach the upstream; built from Settings (or for the embedded engine)."""

    api_key: str
    token_url: str
    process_url: str
    token_timeout: float = 60.0
    process_timeout: float = 300.0
    attempts: int = 3
    backoff: float = 0.25
    deadline: float = 30.0
    output_hosts: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> UpstreamConfig:
        values: dict[str, Any] = {
            "api_key": settings.api_key or "",
            "token_url": settings.token_url,
            "process_url": settings.process_url,
            "token_timeout": settings.token_timeout,
            "process_timeout": settings.process_timeout,
            "attempts": settings.retry_attempts,
            "backoff": settings.retry_backoff,
            "deadline": settings.retry_deadline,
            "output_hosts": settings.output_hosts,
        }
        values.update(overrides)
        return cls(**values)


class _Retryable(Exception):
    """Internal: an attempt failed in a way worth another try."""

    def __init__(self, error: UpstreamError, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def _failure(code: str, kind: type[UpstreamError] = UpstreamError, **kwargs: Any) -> UpstreamError:
    """The error for ``code``, with its fixed public message."""
    return kind(PUBLIC_MESSAGES[code], code=code, **kwargs)


class UpstreamClient:
    def __init__(
        self,
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] | None = None,
        on_call: Callable[[str, str, float], None] | None = None,
        on_mint: MintHook | None = None,
        on_ambiguous_mint: MintHook | None = None,
    ) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            headers={"User-Agent": "cutproxy"},
        )
        self._sleep = sleep
        # on_call(endpoint, outcome, seconds), on_mint(output_variants, unique_filename) and
        # on_ambiguous_mint(output_variants, unique_filename): hooks for metrics and logs.
        self._on_call = on_call
        self._on_mint = on_mint
        self._on_ambiguous_mint = on_ambiguous_mint

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the two calls -------------------------------------------------------------------
    async def mint(
        self, output_variants: list[dict[str, Any]], unique_filename: str | None = None
    ) -> str:
        """Mint a token for ``output_variants`` (credits are charged here).

        Raises an :class:`UpstreamError` with ``maybe_charged`` set when the mint failed
        after the upstream may have charged for it; such a mint is never retried.
        """
        body: dict[str, Any] = {"output_variants": output_variants}
        if unique_filename:
            body["unique_filename"] = unique_filename

        async def attempt() -> str:
            response = await self._send(
                "token",
                "POST",
                self.config.token_url,
                timeout=self.config.token_timeout,
                secrets=(),
                headers={"Authorization": f"Bearer {self.config.api_key}"},
                json=body,
            )
            data = self._json(response, "token", ())
            token = data.get("access_token")
            if not isinstance(token, str) or not token:
                log.warning("upstream token answer has no access_token")
                # Granted or not, a 2xx mint may have been charged.
                raise _failure("upstream_error", maybe_charged=True)
            return token

        try:
            token: str = await self._retrying(attempt)
        except UpstreamError as exc:
            if exc.maybe_charged:
                log.warning(
                    "a mint failed after the upstream may have charged for it (%s): not "
                    "retried, counted as an ambiguous mint",
                    exc.code,
                )
                if self._on_ambiguous_mint is not None:
                    self._on_ambiguous_mint(output_variants, unique_filename)
            raise
        if self._on_mint is not None:
            self._on_mint(output_variants, unique_filename)
        return token

    async def process(
        self,
        token: str,
        image: bytes | None = None,
        *,
        filename: str = "image",
        content_type: str = "application/octet-stream",
    ) -> ProcessResult:
        """Render the token's variants; ``image`` only on a first upload."""
        files = {"image": (filename, image, content_type)} if image is not None else None

        async def attempt() -> ProcessResult:
            response = await self._send(
                "process",
                "POST",
                self.config.process_url,
                timeout=self.config.process_timeout,
                secrets=(token,),
                data={"token": token},
                files=files,
            )
            return self._parse_process(self._json(response, "process", (token,)))

        return await self._retrying(attempt)

    async def reachable(self, url: str, timeout: float, *, need_success: bool = False) -> bool:
        """Whether ``url`` answers a HEAD within ``timeout``: a health probe (no key, no
        retries, no credits). Any HTTP answer counts, or only a 2xx with ``need_success``."""
        try:
            with anyio.fail_after(timeout):
                response = await self._client.head(url, timeout=timeout)
        except Exception:  # every way of not answering means the same here
            return False
        return response.is_success or not need_success

    # -- plumbing --------------------------------------------------------------------------
    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            backoff = self.config.backoff * (2 ** (state.attempt_number - 1))
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                return min(max(backoff, exc.retry_after), self.config.deadline)
            return backoff

        kwargs: dict[str, Any] = {}
        if self._sleep is not None:
            kwargs["sleep"] = self._sleep
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.attempts) | stop_after_delay(self.config.deadline),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            reraise=True,
            **kwargs,
        )
        try:
            async for state in retrying:
                with state:
                    return await attempt()
        except _Retryable as exc:
            raise exc.error from exc
        raise _failure("upstream_error")  # pragma: no cover

    async def _send(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        timeout: float,
        secrets: tuple[str, ...],
        **kwargs: Any,
    ) -> httpx.Response:
        mint = endpoint == "token"  # a mint may be charged once the request went out
        started = time.monotonic()
        outcome = "error"
        try:
            # The whole call, not each phase: httpx.ASGITransport applies no timeout at all.
            with anyio.fail_after(timeout):
                response = await self._client.request(method, url, timeout=timeout, **kwargs)
            outcome = str(response.status_code)
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
        ) as exc:
            # No connection was made: nothing was sent, so nothing was charged.
            outcome = "timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable"
            raise _Retryable(_failure("upstream_unreachable"), None) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            outcome = "timeout"
            log.warning("upstream %s call timed out after %gs", endpoint, timeout)
            error = _failure("upstream_timeout", UpstreamTimeoutError, maybe_charged=mint)
            if mint:
                raise error from exc
            raise _Retryable(error, None) from exc
        except Exception as exc:  # dropped mid-call, or a broken transport: never a 500
            outcome = "unreachable"
            log.warning("upstream %s call failed: %s", endpoint, type(exc).__name__)
            error = _failure("upstream_unreachable", maybe_charged=mint)
            if mint:
                raise error from exc
            raise _Retryable(error, None) from exc
        finally:
            if self._on_call is not None:
                self._on_call(endpoint, outcome, time.monotonic() - started)
        if response.is_success:
            return response
        raise self._status_error(endpoint, response, secrets)

    def _status_error(
        self, endpoint: str, response: httpx.Response, secrets: tuple[str, ...]
    ) -> Exception:
        status = response.status_code
        said = error_message(response, self.config.api_key, *secrets)
        log.warning("upstream %s call answered %d: %s", endpoint, status, said or "(no text)")
        if status == 429:  # a rate limit charges nothing: worth another try, even a mint
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            limited = _failure(
                "upstream_rate_limited",
                UpstreamRateLimitedError,
                retry_after=retry_after or 5.0,
                upstream_status=status,
            )
            return _Retryable(limited, retry_after)
        if endpoint == "token" and status not in UNCHARGED_MINT_STATUSES:
            code = "upstream_error" if status >= 500 else "upstream_refused"
            return _failure(code, upstream_status=status, maybe_charged=True)
        if status >= 500:
            error = _failure("upstream_error", upstream_status=status)
            return _Retryable(error, parse_retry_after(response.headers.get("retry-after")))
        if status == 404:
            return _failure("upstream_upload_gone", UpstreamGoneError, upstream_status=status)
        if status in (401, 403):
            code = "upstream_auth" if endpoint == "token" else "upstream_token_rejected"
            return _failure(code, upstream_status=status)
        if status == 402:
            return _failure("upstream_out_of_credits", upstream_status=status)
        return _failure("upstream_refused", upstream_status=status)

    def _json(
        self, response: httpx.Response, endpoint: str, secrets: tuple[str, ...]
    ) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data, wrong = None, "not JSON"
        else:
            wrong = "not a JSON object"
        if isinstance(data, dict):
            return data
        text = mask(response.text, self.config.api_key, *secrets)[:MAX_MESSAGE]
        log.warning("upstream %s answer is %s: %r", endpoint, wrong, text)
        raise _failure("upstream_error", maybe_charged=endpoint == "token")

    def _parse_process(self, data: dict[str, Any]) -> ProcessResult:
        unique = data.get("unique_filename")
        urls = data.get("output_urls")
        if not isinstance(unique, str) or not isinstance(urls, dict):
            log.warning("upstream processing answer lacks unique_filename/output_urls")
            raise _failure("upstream_error")
        checked: dict[str, str] = {}
        for name, url in urls.items():
            if not isinstance(url, str):
                log.warning("upstream output URL of a variant is not a string")
                raise _failure("upstream_error")
            checked[str(name)] = self.check_output_url(url)
        input_url = data.get("input_url")
        return ProcessResult(unique, checked, input_url if isinstance(input_url, str) else None)

    def check_output_url(self, url: str) -> str:
        """The output URL, normalised, if it is plainly ``http(s)://allowed-host/...``.

        The proxy redirects only to allowed hosts: it is never an open redirect. A URL that
        parsers might read differently (a backslash, userinfo, whitespace) is refused, and
        callers use the normalised URL this returns, never the upstream's spelling.
        """
        try:
            normal = normalise_output_url(url)
        except ValueError as exc:
            log.warning("refused an upstream output URL: %s", exc)
            raise _failure("output_host_not_allowed") from None
        host = urlsplit(normal).hostname or ""
        if not host_allowed(host, self.config.output_hosts):
            log.warning("refused an upstream output URL on host %r (not allowed)", host)
            raise _failure("output_host_not_allowed")
        return normal
