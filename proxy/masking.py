"""Masking secrets in text bound for a log: every form a secret commonly travels in.

An upstream may echo what it was sent, and not always as it was sent: percent-encoded in a
URL, base64 in a header or a JWT, hex, JSON-escaped. :func:`mask` replaces each of those
forms of each secret with ``***``::

    mask(upstream_text, api_key, access_token)

A secret base64-encoded inside a longer value (``Bearer <key>`` encoded whole) is encoded
differently at each of the three byte offsets it may start at; the characters that depend on
the secret alone are masked for every offset. Matching ignores case (hex and percent escapes
come in both cases; masking a little too much is harmless). Derived forms shorter than
:data:`MIN_FORM` characters are not masked on their own: they would match ordinary text.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_FORM = 8


def mask(text: str, *secrets: str | None) -> str:
    """``text`` with every form of every (non-empty) secret replaced by :data:`MASK`."""
    kept = tuple(sorted({s for s in secrets if s}))
    if not kept or not text:
        return text
    return _pattern(kept).sub(MASK, text)


def secret_forms(secret: str) -> set[str]:
    """The spellings of ``secret`` that :func:`mask` looks for."""
    if not secret:
        return set()
    raw = secret.encode()
    forms = {secret, raw.hex()}
    forms |= {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    escaped = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms |= escaped | {e.replace("/", "\\/") for e in escaped}
    encoded = set(_base64_forms(raw))
    forms |= encoded
    forms |= {quote(e, safe="") for e in encoded}  # base64 in a query string
    return {form for form in forms if form == secret or len(form) >= MIN_FORM}


def _base64_forms(raw: bytes) -> Iterable[str]:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        yield whole
        yield whole.rstrip("=")
        for offset in range(3):
            # Encoded after ``offset`` other bytes: keep the characters whose six bits all
            # come from the secret (the neighbours' bytes change the others).
            text = encode(b"\0" * offset + raw + b"\0\0").decode()
            first = -(-8 * offset // 6)
            end = 8 * (offset + len(raw)) // 6
            yield text[first:end]


@functools.lru_cache(maxsize=64)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str]:
    forms = {form for secret in secrets for form in secret_forms(secret)}
    # Longest first: a whole encoding is masked before the part of it that is also a form.
    ordered = sorted(forms, key=lambda form: (-len(form), form))
    return re.compile("|".join(re.escape(form) for form in ordered), re.IGNORECASE)
