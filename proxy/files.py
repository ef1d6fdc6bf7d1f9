"""Files sent whole, whatever Range asks: the demo page's, and the local engine's outputs.

Starlette's ``FileResponse`` answers a Range it cannot read with a plain-text 400, and one
past the end with a bodiless 416: errors outside the JSON every other answer is. These files
are small and fetched whole (a page, a script, a rendered image), and RFC 9110 (14.2) lets a
server ignore Range, so they do: always the whole file, with ``Accept-Ranges: none``.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Receive, Scope, Send

_RANGE_HEADERS = (b"range", b"if-range")


class WholeFile(FileResponse):
    """A ``FileResponse`` that ignores Range and says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers["accept-ranges"] = "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _RANGE_HEADERS]
        await super().__call__({**scope, "headers": headers}, receive, send)


class WholeStaticFiles(StaticFiles):
    """``StaticFiles`` whose files are :class:`WholeFile`."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = WholeFile(full_path, status_code=status_code, stat_result=stat_result)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response
