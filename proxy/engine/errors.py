"""The engine's errors: what BackgroundCut answers when a call is refused.

    EngineError
    ├── InvalidRequestError     400  a field is missing or wrong; the message names it
    ├── UnauthorizedError       401  bad API key; missing, forged, expired or reused token
    ├── PaymentRequiredError    402  the credit balance cannot pay for the mint
    ├── NotFoundError           404  unknown or expired unique_filename or output file
    ├── MethodNotAllowedError   405  the API routes take POST only
    ├── PayloadTooLargeError    413  the upload is over the size limit
    ├── RateLimitedError        429  over the rate limit; carries Retry-After
    └── InjectedFaultError      5xx  fault injection: a failure asked for by a test

Messages are public: they never contain the API key, the signing secret or a token.
"""

from __future__ import annotations

import math


class EngineError(Exception):
    """Base: an answer with ``status_code`` and a public ``message``."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Retry-After must be a whole number of seconds; never tell a client "0".
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequestError(EngineError):
    """A field is missing or invalid; the message names the field."""

    status_code = 400
    code = "invalid_request"


class UnauthorizedError(EngineError):
    """The API key or the token is missing, wrong, expired or already used."""

    status_code = 401
    code = "unauthorized"


class PaymentRequiredError(EngineError):
    """Not enough credits left for the mint; nothing was charged."""

    status_code = 402
    code = "insufficient_credits"


class NotFoundError(EngineError):
    """No such upload or file, or it expired."""

    status_code = 404
    code = "not_found"


class MethodNotAllowedError(EngineError):
    """The route exists but not for this method."""

    status_code = 405
    code = "method_not_allowed"


class PayloadTooLargeError(EngineError):
    """The upload is larger than allowed."""

    status_code = 413
    code = "file_too_large"


class RateLimitedError(EngineError):
    """API rate limit crossed; retry after ``retry_after`` seconds."""

    status_code = 429
    code = "rate_limited"


class InjectedFaultError(EngineError):
    """A failure produced on purpose by fault injection."""

    code = "injected_fault"

    def __init__(self, status_code: int) -> None:
        super().__init__("the engine failed on purpose (fault injection)")
        self.status_code = status_code
