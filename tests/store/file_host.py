"""A stand-in for the upstream's file host, misbehaving in the ways the engine cannot.

Serves the files of ``$FILE_HOST_DIR`` under uvicorn (``python -m uvicorn --lifespan off
tests.store.file_host:app``):

- ``/whole/<name>``: the file, with its Content-Length;
- ``/cut/<name>``: declares the whole length, sends half, then drops the connection;
- ``/chunked/<name>``: the file without a Content-Length (chunked), so only the bytes counted
  as they arrive can hold a size limit;
- ``/chunked-half/<name>``: half the file, chunked, ending cleanly: a truncated file that is
  a perfectly valid HTTP response.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

Message = dict[str, Any]


async def app(scope: Message, receive: Any, send: Any) -> None:
    mode, _, name = scope["path"].strip("/").partition("/")
    path = Path(os.environ["FILE_HOST_DIR"]) / name
    if mode == "health":
        await _answer(send, 200, b"ok", length=True)
    elif not name or "/" in name or not path.is_file():
        await _answer(send, 404, b"not found", length=True)
    elif mode == "whole":
        await _answer(send, 200, path.read_bytes(), length=True)
    elif mode == "chunked":
        await _answer(send, 200, path.read_bytes(), length=False)
    elif mode == "chunked-half":
        data = path.read_bytes()
        await _answer(send, 200, data[: len(data) // 2], length=False)
    elif mode == "cut":
        data = path.read_bytes()
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True}
        )
        raise ConnectionAbortedError("dropping the connection mid-body, on purpose")
    else:
        await _answer(send, 404, b"unknown mode", length=True)


async def _answer(send: Any, status: int, body: bytes, *, length: bool) -> None:
    headers = [(b"content-type", b"image/png")]
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if length:
        await send({"type": "http.response.body", "body": body})
        return
    for start in range(0, len(body), 65536):
        await send(
            {"type": "http.response.body", "body": body[start : start + 65536], "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})
