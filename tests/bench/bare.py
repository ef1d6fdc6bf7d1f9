"""The baselines: bare Starlette apps, served exactly like the proxy.

``app`` only redirects (redirect mode's hits). ``python -m tests.bench.bare PROTOCOL PORT
WORKERS`` serves it under uvicorn's plain ``httptools`` protocol, ``h11`` (with its bound on
the head), or ``bounded``: the protocol ``cutproxy serve`` runs (:mod:`proxy.headlimit`); the
bench compares what each costs.

``bytes_app`` answers every variant URL with the bytes of the file named by
``BENCH_BYTES_FILE``, read once at start and kept in memory (store mode's memory hits).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from proxy.serving.headlimit import protocol
from proxy.settings import Settings


async def redirect(request: Request) -> Response:
    response = RedirectResponse("http://127.0.0.1/_engine/files/x.jpg", status_code=302)
    response.headers["Cache-Control"] = "public, max-age=6900"
    return response


app = Starlette(routes=[Route("/img/{image_id}/{size}/{filename}", redirect)])


def _bytes_app(path: str | None) -> Starlette:
    data = Path(path).read_bytes() if path else b""
    headers = {
        "ETag": f'"{hashlib.sha256(data).hexdigest()[:32]}"',
        "Cache-Control": "public, max-age=86400, s-maxage=31536000",
    }

    async def image(request: Request) -> Response:
        return Response(data, media_type="image/jpeg", headers=headers)

    return Starlette(routes=[Route("/img/{image_id}/{size}/{filename}", image)])


bytes_app = _bytes_app(os.environ.get("BENCH_BYTES_FILE"))


def main(kind: str, port: int, workers: int) -> None:
    limit = Settings().max_header_bytes
    http: str | type[asyncio.Protocol] = protocol(limit) if kind == "bounded" else kind
    uvicorn.run(
        "tests.bench.bare:app",
        host="127.0.0.1",
        port=port,
        workers=workers,
        http=http,
        h11_max_incomplete_event_size=limit,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
