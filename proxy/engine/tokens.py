"""Access tokens: HMAC-SHA256 signed, JWT-shaped, carrying the whole mint.

A token holds its variants, its optional ``unique_filename``, its price and its expiry, so
processing needs no lookup to know what to render; only the single-use mark is shared state
(see :mod:`proxy.engine.store`). Verification is constant-time and says why a token is
refused without ever echoing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.engine.errors import UnauthorizedError
from proxy.engine.variants import OutputVariant

_HEADER = {"alg": "HS256", "typ": "JWT"}
MAX_TOKEN_LENGTH = 64 * 1024


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants."""

    token_id: str
    issued_at: float
    expires_at: float
    variants: tuple[OutputVariant, ...]
    unique_filename: str | None
    credits: float


class TokenSigner:
    """Mints and verifies tokens with one secret; time comes from ``clock``."""

    def __init__(self, secret: bytes, *, ttl: float, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._ttl = ttl
        self._clock = clock

    def mint(
        self,
        variants: list[OutputVariant],
        *,
        unique_filename: str | None,
        credits: float,
    ) -> tuple[str, Claims]:
        now = self._clock()
        claims = Claims(
            token_id=uuid.uuid4().hex,
            issued_at=now,
            expires_at=now + self._ttl,
            variants=tuple(variants),
            unique_filename=unique_filename,
            credits=credits,
        )
        payload = {
            "jti": claims.token_id,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "uf": unique_filename,
            "cr": credits,
            "v": [v.as_json() for v in variants],
        }
        signing_input = _b64(_HEADER) + "." + _b64(payload)
        return f"{signing_input}.{self._sign(signing_input)}", claims

    def verify(self, token: str) -> Claims:
        """The token's claims, or :class:`UnauthorizedError` saying why not."""
        parts = token.split(".")
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or len(parts) != 3:
            raise UnauthorizedError("token: malformed")
        signing_input = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(signing_input), parts[2]):
            raise UnauthorizedError("token: invalid signature")
        try:
            payload = json.loads(_unb64(parts[1]))
            claims = Claims(
                token_id=str(payload["jti"]),
                issued_at=float(payload["iat"]),
                expires_at=float(payload["exp"]),
                variants=tuple(OutputVariant.from_json(v) for v in payload["v"]),
                unique_filename=payload["uf"],
                credits=float(payload["cr"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            # Signed by us but unreadable: a token from an incompatible engine version.
            raise UnauthorizedError("token: unreadable payload") from exc
        if self._clock() >= claims.expires_at:
            raise UnauthorizedError("token: expired")
        return claims

    def _sign(self, signing_input: str) -> str:
        digest = hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("bad base64") from exc
