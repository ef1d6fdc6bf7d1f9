"""A bound on a request's head (request line and headers), enforced by the server.

uvicorn's httptools protocol, the one ``uvicorn[standard]`` runs, reads a head of any size:
a client could send megabytes of headers and the worker would read and hold them all.
:class:`HeadLimitedProtocol` is that protocol with a count of the head's bytes: past
``PROXY_MAX_HEADER_BYTES`` it answers ``431`` with the proxy's JSON error and closes the
connection, before the app (or any of its caches) sees the request.

Two counts, both never above the bytes really received: the URL and each header as the
parser hands them over (exact, but httptools buffers a header until it ends), and the size
of every read that came while a head was incomplete and began no new request (so a single
huge header is cut off as it arrives, at most one read past the bound). ``cutproxy serve``
passes it to uvicorn as ``http=`` (:func:`protocol`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("cutproxy.http")

STATUS_LINE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


class HeadTooLargeError(Exception):
    """The request's head went past the bound (raised inside a parser callback)."""


class HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 to a head over ``max_head_bytes``.

    Kept lean: it runs for every request, so it overrides no more than it must (about half a
    microsecond a request; ``make bench`` measures it against the plain protocol).
    """

    def __init__(self, *args: Any, max_head_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self._counted = 0  # the current head's URL and headers, as parsed so far
        self._raw = 0  # bytes of the reads that were all head
        self._too_large = False

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the head's size checked (a parse error may be the bound's 431).
        self._unset_keepalive_if_required()
        headers = self.headers  # on_message_begin puts a new list here: a new request
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._too_large:
                self._refuse()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self.headers is not headers:  # a request began in this read: counted as parsed
            self._raw = 0
        elif self.scope is not None and "path" not in self.scope:  # its head is not over
            self._raw += len(data)
            if self._raw > self.max_head_bytes:
                self._refuse()

    def on_url(self, url: bytes) -> None:
        if not self.url:  # the first piece of a new request's URL
            self._counted = 0
        self._counted += len(url)
        if self._counted > self.max_head_bytes:
            self._too_large = True
            raise HeadTooLargeError
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._counted += len(name) + len(value) + 4  # ": " and CRLF
        if self._counted > self.max_head_bytes:
            self._too_large = True
            raise HeadTooLargeError
        # As uvicorn's own (inline: this runs for every header of every request).
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps(
            {
                "error": "headers_too_large",
                "message": f"the request's headers are over {self.max_head_bytes} bytes",
            }
        ).encode()
        content = [STATUS_LINE]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()
        client = self.client[0] if self.client else "?"
        log.info("request head over %d bytes from %s: answered 431", self.max_head_bytes, client)


def protocol(max_head_bytes: int) -> type[asyncio.Protocol]:
    """What ``uvicorn.run(http=...)`` takes: the protocol with its bound (picklable, as
    ``--workers`` needs: each worker process receives it)."""
    return cast(
        "type[asyncio.Protocol]",
        functools.partial(HeadLimitedProtocol, max_head_bytes=max_head_bytes),
    )
