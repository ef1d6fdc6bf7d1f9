"""The upstream client: BackgroundCut's v3 token flow over one pooled httpx client.

Foreign errors stop here: every httpx exception and every unusable answer is translated into
the proxy's own hierarchy (``proxy.errors``) before it leaves this module. Retries (tenacity)
cover 429, 5xx and connection failures, honour ``Retry-After`` and stop at an overall deadline;
a 4xx other than 429 is never retried. A mint that timed out is not retried either: the
upstream may have charged for it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

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
from proxy.settings import Settings

log = logging.getLogger("cutproxy.upstream")

_MAX_MESSAGE = 200


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


class UpstreamClient:
    def __init__(
        self,
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] | None = None,
        on_call: Callable[[str, str, float], None] | None = None,
        on_mint: Callable[[list[dict[str, Any]], str | None], None] | None = None,
    ) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            headers={"User-Agent": "cutproxy"},
        )
        self._sleep = sleep
        # on_call(endpoint, outcome, seconds) and on_mint(output_variants, unique_filename):
        # hooks for metrics and access logs.
        self._on_call = on_call
        self._on_mint = on_mint

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the two calls -------------------------------------------------------------------
    async def mint(
        self, output_variants: list[dict[str, Any]], unique_filename: str | None = None
    ) -> str:
        """Mint a token for ``output_variants`` (credits are charged here)."""
        body: dict[str, Any] = {"output_variants": output_variants}
        if unique_filename:
            body["unique_filename"] = unique_filename

        async def attempt() -> str:
            response = await self._send(
                "token",
                "POST",
                self.config.token_url,
                timeout=self.config.token_timeout,
                headers={"Authorization": f"Bearer {self.config.api_key}"},
                json=body,
                retry_on_timeout=False,
            )
            data = _json(response, "token")
            token = data.get("access_token")
            if not isinstance(token, str) or not token:
                raise UpstreamError("upstream token answer has no access_token")
            return token

        token: str = await self._retrying(attempt)
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
                data={"token": token},
                files=files,
                retry_on_timeout=True,
            )
            return self._parse_process(_json(response, "process"))

        return await self._retrying(attempt)

    async def reachable(self, url: str, timeout: float, *, need_success: bool = False) -> bool:
        """Whether ``url`` answers a HEAD within ``timeout``: a health probe (no key, no
        retries, no credits). Any HTTP answer counts, or only a 2xx with ``need_success``."""
        try:
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
        raise UpstreamError("upstream retries ended without an answer")  # pragma: no cover

    async def _send(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        timeout: float,
        retry_on_timeout: bool,
        **kwargs: Any,
    ) -> httpx.Response:
        started = time.monotonic()
        outcome = "error"
        try:
            response = await self._client.request(method, url, timeout=timeout, **kwargs)
            outcome = str(response.status_code)
        except httpx.TimeoutException as exc:
            outcome = "timeout"
            if isinstance(exc, httpx.ConnectTimeout):
                raise _Retryable(_unreachable(endpoint), None) from exc
            error = UpstreamTimeoutError(f"upstream {endpoint} call timed out after {timeout:g}s")
            if retry_on_timeout:
                raise _Retryable(error, None) from exc
            raise error from exc
        except httpx.HTTPError as exc:
            outcome = "unreachable"
            raise _Retryable(_unreachable(endpoint), None) from exc
        except Exception as exc:  # a broken transport must not escape as a 500
            outcome = "unreachable"
            log.warning("upstream %s transport failed: %s", endpoint, type(exc).__name__)
            raise _Retryable(_unreachable(endpoint), None) from exc
        finally:
            if self._on_call is not None:
                self._on_call(endpoint, outcome, time.monotonic() - started)
        if response.is_success:
            return response
        raise self._status_error(endpoint, response)

    def _status_error(self, endpoint: str, response: httpx.Response) -> Exception:
        status = response.status_code
        detail = _scrub(error_message(response), self.config.api_key)
        said = f" ({detail})" if detail else ""
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            error: UpstreamError = UpstreamRateLimitedError(
                f"upstream rate limit reached{said}; retry later",
                retry_after=retry_after or 5.0,
                upstream_status=status,
            )
            return _Retryable(error, retry_after)
        if status >= 500:
            error = UpstreamError(
                f"upstream {endpoint} call failed with {status}{said}", upstream_status=status
            )
            return _Retryable(error, parse_retry_after(response.headers.get("retry-after")))
        if status == 404:
            return UpstreamGoneError(
                f"upstream no longer has this image's upload{said}", upstream_status=status
            )
        if status in (401, 403) and endpoint == "token":
            return UpstreamError(
                f"upstream rejected the API key ({status}): check PROXY_API_KEY",
                code="upstream_auth",
                upstream_status=status,
            )
        if status in (401, 403):
            return UpstreamError(
                f"upstream rejected the processing token ({status}){said}",
                code="upstream_token_rejected",
                upstream_status=status,
            )
        if status == 402:
            return UpstreamError(
                "upstream account is out of credits (402): top up the BackgroundCut account",
                code="upstream_out_of_credits",
                upstream_status=status,
            )
        return UpstreamError(
            f"upstream refused the {endpoint} call with {status}{said}",
            code="upstream_refused",
            upstream_status=status,
        )

    def _parse_process(self, data: dict[str, Any]) -> ProcessResult:
        unique = data.get("unique_filename")
        urls = data.get("output_urls")
        if not isinstance(unique, str) or not isinstance(urls, dict):
            raise UpstreamError("upstream processing answer lacks unique_filename/output_urls")
        checked: dict[str, str] = {}
        for name, url in urls.items():
            if not isinstance(url, str):
                raise UpstreamError(f"upstream output URL for {name!r} is not a string")
            self.check_output_url(url)
            checked[str(name)] = url
        input_url = data.get("input_url")
        return ProcessResult(unique, checked, input_url if isinstance(input_url, str) else None)

    def check_output_url(self, url: str) -> None:
        """The proxy redirects only to allowed hosts: it is never an open redirect."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host_allowed(
            host, self.config.output_hosts
        ):
            raise UpstreamError(
                "upstream returned an output URL on a host that is not allowed "
                "(see PROXY_ALLOWED_OUTPUT_HOSTS)",
                code="output_host_not_allowed",
            )


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if math.isnan(seconds) or seconds < 0:
        return 0.0
    return min(seconds, 3600.0)


def error_message(response: httpx.Response) -> str:
    """A short message from any error body shape the upstream family uses."""
    text = response.text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:_MAX_MESSAGE]
    return _message_from(data)[:_MAX_MESSAGE]


def _message_from(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data:
                value = data[key]
                if isinstance(value, dict):
                    return _message_from(value)
                if isinstance(value, list):
                    return "; ".join(_message_from(v) for v in value)
                return str(value)
        if isinstance(data.get("errors"), list):
            return "; ".join(_message_from(e) for e in data["errors"])
        for key in ("title", "code"):
            if key in data:
                return str(data[key])
    if isinstance(data, list):
        return "; ".join(_message_from(v) for v in data)
    return ""


def _json(response: httpx.Response, endpoint: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise UpstreamError(f"upstream {endpoint} answer is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream {endpoint} answer is not a JSON object")
    return data


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _unreachable(endpoint: str) -> UpstreamError:
    return UpstreamError(f"upstream unreachable ({endpoint} call)", code="upstream_unreachable")
