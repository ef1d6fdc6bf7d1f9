"""Reading what the upstream answered: output URLs (plainly ``http(s)://host/...`` and on
the allow-list), ``Retry-After``, and the text of an error body for the log.

Pure functions, split from :mod:`proxy.upstream.client` so the client holds only the token
flow and its retries.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from proxy.masking import mask

MAX_MESSAGE = 200  # characters of the upstream's own text kept (in the log)


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


_PORT = re.compile(r"[0-9]{1,5}")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_output_url(url: str) -> str:
    """``url`` rebuilt from its parts if it is plainly ``http(s)://host[:port]/...``.

    Raises ValueError (saying why, never echoing the URL) for anything else: non-ASCII,
    whitespace or control characters, a backslash (browsers read it as ``/``, Python does
    not), userinfo (``user@``), another scheme, an empty or malformed host, a bad port.
    The scheme and host come back lowercased, a default port dropped, an empty path as ``/``.
    """
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise ValueError("it has whitespace, control or non-ASCII characters")
    if "\\" in url:
        raise ValueError("it has a backslash")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError("it is not an http(s) URL")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise ValueError("it has userinfo")
    if authority.startswith("["):
        inner, bracket, after = authority[1:].partition("]")
        try:
            host = f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise ValueError("its host is not a valid IPv6 address") from None
        if not bracket or (after and not after.startswith(":")):
            raise ValueError("its host is malformed")
        colon, port = after[:1], after[1:]
    else:
        host, colon, port = authority.partition(":")
        host = host.lower()
        if not _HOSTNAME.fullmatch(host):
            raise ValueError("its host is empty or malformed")
    if colon and not _PORT.fullmatch(port):
        raise ValueError("its port is malformed")
    if port and not 0 < int(port) < 65536:
        raise ValueError("its port is out of range")
    netloc = host if not port or int(port) == _DEFAULT_PORTS[scheme] else f"{host}:{int(port)}"
    if not tail.startswith("/"):
        tail = "/" + tail
    return f"{scheme}://{netloc}{tail}"


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


def error_message(response: httpx.Response, *secrets: str) -> str:
    """A short message from any error body shape the upstream family uses, for the log:
    every form of each of ``secrets`` is masked before it is cut short."""
    text = response.text.strip()
    try:
        message = _message_from(json.loads(text)) or text
    except ValueError:
        message = text
    return mask(message, *secrets)[:MAX_MESSAGE]


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
