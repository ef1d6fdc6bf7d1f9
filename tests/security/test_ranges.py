"""A Range header gets the whole file: never Starlette's plain-text 400 or bodiless 416.

The demo page, its static files and the embedded engine's output files are small and fetched
whole; RFC 9110 (14.2) lets a server ignore Range, and these do, so every answer stays inside
the promise that errors are JSON (found by tests/security/test_fuzz.py).
"""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import Served

RANGES = ["bytes=5-1", "bytes=x", "bytes=99999999-", "bytes=-0", "bytes=0-1", "items=0-1"]


@pytest.mark.parametrize("path", ["/", "/static/demo.js", "/_engine/files/{file}"])
def test_a_range_header_gets_the_whole_file(served: Served, path: str) -> None:
    url = served.server.url + path.format(file=served.files[0])
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content
    for value in RANGES:
        answer = httpx.get(url, headers={"Range": value}, timeout=10)
        assert answer.status_code == 200, (value, answer.status_code, answer.text[:80])
        assert answer.headers["content-type"] == whole.headers["content-type"]
        assert answer.content == whole.content, value
    assert whole.headers["accept-ranges"] == "none"  # and clients are told so
