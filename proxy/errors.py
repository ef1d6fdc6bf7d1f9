"""The proxy's errors. Each carries its HTTP status, a stable code and a public message.

    ProxyError
    ├── BadRequestError            400  the URL or body is malformed
    ├── UnauthorizedError          401  admin token missing or wrong
    ├── ForbiddenError             403  signature missing, wrong or expired
    ├── NotFoundError              404  unknown image (or route)
    ├── PayloadTooLargeError       413  upload over the size limit
    ├── UnsupportedMediaError      415  upload of a type we cannot use
    ├── TooManyRequestsError       429  a budget or rate limit is spent (Retry-After)
    │   └── MissRefusedError       429  a miss over the client's rate or the credit budget
    ├── ServiceUnavailableError    503  busy: coalescing wait ran out, upstream rate-limited
    │   ├── SharedStoreUnavailableError 503  the shared store (Redis) is unreachable
    │   └── LeaseLostError         503  a lock's lease was taken over while its work ran
    └── UpstreamError              502  the upstream failed or answered something unusable
        └── UpstreamTimeoutError   504  the upstream did not answer in time

Messages are public: they must never contain a key, a token or a stack trace.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base: an error the client sees as ``{"error": code, "message": text}``."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def as_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class BadRequestError(ProxyError):
    """The request is malformed; the message says what to change."""

    status_code = 400
    code = "bad_request"


class UnauthorizedError(ProxyError):
    """Admin credentials are missing or wrong."""

    status_code = 401
    code = "unauthorized"


class ForbiddenError(ProxyError):
    """The URL's signature is missing, wrong or expired."""

    status_code = 403
    code = "forbidden"


class NotFoundError(ProxyError):
    """No such image, route or resource."""

    status_code = 404
    code = "not_found"


class MethodNotAllowedError(ProxyError):
    """The route exists but not for this method."""

    status_code = 405
    code = "method_not_allowed"


class PayloadTooLargeError(ProxyError):
    """The body is over the size limit."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaError(ProxyError):
    """The body is of a type the proxy cannot use."""

    status_code = 415
    code = "unsupported_media_type"


class TooManyRequestsError(ProxyError):
    """A budget or per-client limit is spent; retry later."""

    status_code = 429
    code = "too_many_requests"


class MissRefusedError(TooManyRequestsError):
    """A cache miss was not minted: its client's miss rate or the credit budget is spent."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retry_after: float,
        reason: str,
        client: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.reason = reason  # client_rate | budget | derive_rate (store mode)
        self.client = client


class ServiceUnavailableError(ProxyError):
    """The proxy cannot answer now (busy, upstream rate-limited); retry later."""

    status_code = 503
    code = "unavailable"


class SharedStoreUnavailableError(ServiceUnavailableError):
    """The shared store (Redis) did not answer: misses cannot be coalesced, so none are minted."""

    code = "shared_store_unavailable"


class LeaseLostError(ServiceUnavailableError):
    """A lock's lease lapsed and another holder took it over: the work under it was stopped."""

    code = "lock_lost"


class UpstreamError(ProxyError):
    """The upstream failed or answered something the proxy cannot use."""

    status_code = 502
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        maybe_charged: bool = False,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.upstream_status = upstream_status
        # A mint that failed in a way that does not prove the upstream took no credits.
        self.maybe_charged = maybe_charged


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer within its timeout."""

    status_code = 504
    code = "upstream_timeout"


class UpstreamRateLimitedError(UpstreamError):
    """The upstream said 429 and retries did not get through: the client should retry."""

    status_code = 503
    code = "upstream_rate_limited"


class UpstreamGoneError(UpstreamError):
    """The upstream no longer knows the image's ``unique_filename`` (expired upload)."""

    code = "upstream_upload_gone"
