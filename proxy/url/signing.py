"""imgproxy-style URL signatures: only URLs this proxy's owner signed may spend credits.

A signature is ``HMAC-SHA256(key, salt + path + ("?exp=<exp>" if exp else ""))``, encoded
as unpadded base64url after keeping the first ``size`` bytes of the digest (imgproxy's
``IMGPROXY_KEY`` / ``IMGPROXY_SALT`` / ``IMGPROXY_SIGNATURE_SIZE``, same bytes, same output).
It travels in the query string::

    /img/shoe/640x480/ffffff.jpg?s=<signature>&exp=<unix seconds>

``exp`` is optional; when present it is covered by the signature, so it cannot be moved.
Other query parameters are not covered (the proxy ignores them).

Several (key, salt) pairs may be configured for rotation: the first signs, any verifies.
Rotate by putting the new pair first, re-signing, and dropping the old pair once the URLs
signed with it have been replaced.

The path signed and verified is the percent-decoded request path (``scope["path"]``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from proxy.errors import ForbiddenError
from proxy.setting_values import MAX_SIGNATURE_SIZE, signing_pairs
from proxy.settings import Settings

SIGNATURE_PARAM = "s"
EXPIRY_PARAM = "exp"
_EXPIRY = re.compile(r"[1-9][0-9]{0,15}")


@dataclass(frozen=True, slots=True, repr=False)
class Signer:
    """Signs and verifies paths with one or more (key, salt) pairs.

    Build it with :meth:`from_hex` or :meth:`from_settings`; ``clock`` is only used by
    :meth:`sign_url` when no ``now`` is given.
    """

    pairs: tuple[tuple[bytes, bytes], ...]
    size: int = MAX_SIGNATURE_SIZE
    clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        # Never show key material, not even in a traceback or a debugger.
        return f"Signer(pairs={len(self.pairs)}, size={self.size})"

    @classmethod
    def from_hex(
        cls,
        keys: Sequence[str],
        salts: Sequence[str],
        size: int = MAX_SIGNATURE_SIZE,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Signer:
        """Decode hex keys and salts (one salt per key), by
        :func:`proxy.setting_values.signing_pairs`, which the settings validate with.

        Raises :class:`SettingsError` naming ``PROXY_SIGNING_KEY``, ``PROXY_SIGNING_SALT`` or
        ``PROXY_SIGNATURE_SIZE`` when they are empty, not hex, or of different counts.
        """
        return cls(signing_pairs(keys, salts, size), size, clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer | None:
        """The signer the settings describe, or None when no key is set (signing off)."""
        if not settings.signing_key and not settings.signing_salt:
            return None
        return cls.from_hex(settings.signing_key, settings.signing_salt, settings.signature_size)

    def sign_path(self, path: str, exp: int | None = None) -> str:
        """The signature of ``path`` (and ``exp``, unix seconds) with the first pair."""
        key, salt = self.pairs[0]
        return _signature(key, salt, path, exp, self.size)

    def sign_url(self, url_or_path: str, ttl: float | None = None, now: float | None = None) -> str:
        """``url_or_path`` with ``s`` (and, given ``ttl`` seconds, ``exp``) in its query.

        Scheme, host, path and other query parameters are kept; an old ``s``/``exp`` is
        replaced. ``exp`` is rounded up, so the URL lives at least ``ttl`` seconds.
        """
        parts = urlsplit(url_or_path)
        if not parts.path.startswith("/"):
            raise ValueError(f"expected a URL or a path starting with '/', got {url_or_path!r}")
        exp: int | None = None
        if ttl is not None:
            if not ttl > 0:
                raise ValueError("ttl must be greater than 0 seconds")
            exp = math.ceil((self.clock() if now is None else now) + ttl)
        query = [
            (name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if name not in (SIGNATURE_PARAM, EXPIRY_PARAM)
        ]
        query.append((SIGNATURE_PARAM, self.sign_path(unquote(parts.path), exp)))
        if exp is not None:
            query.append((EXPIRY_PARAM, str(exp)))
        return urlunsplit(parts._replace(query=urlencode(query)))

    def verify(self, path: str, query: Mapping[str, str], now: float) -> None:
        """Return if ``query`` carries a valid, unexpired signature for ``path``.

        Raises :class:`ForbiddenError` with code ``signature_missing``,
        ``signature_invalid`` or ``signature_expired``. Any configured pair may match.
        """
        given = query.get(SIGNATURE_PARAM, "")
        if not given:
            raise ForbiddenError(
                "this proxy only serves signed URLs: the 's' query parameter is missing",
                code="signature_missing",
            )
        raw_exp = query.get(EXPIRY_PARAM)
        exp: int | None = None
        if raw_exp is not None:
            if not _EXPIRY.fullmatch(raw_exp):
                raise ForbiddenError(
                    "the 'exp' query parameter must be unix seconds", code="signature_invalid"
                )
            exp = int(raw_exp)
        given_bytes = given.encode("utf-8", "surrogateescape")
        # Compare against every pair (no early exit): timing says nothing about which matched.
        matches = [
            hmac.compare_digest(
                _signature(key, salt, path, exp, self.size).encode("ascii"), given_bytes
            )
            for key, salt in self.pairs
        ]
        if not any(matches):
            raise ForbiddenError(
                "the URL's signature does not match its path", code="signature_invalid"
            )
        if exp is not None and exp <= now:
            raise ForbiddenError(
                f"the signed URL expired {max(1, math.ceil(now - exp))} s ago: ask for a new one",
                code="signature_expired",
            )


def _signature(key: bytes, salt: bytes, path: str, exp: int | None, size: int) -> str:
    message = salt + path.encode("utf-8", "surrogateescape")
    if exp:
        message += f"?{EXPIRY_PARAM}={exp}".encode("ascii")
    digest = hmac.new(key, message, hashlib.sha256).digest()[:size]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
