"""The baseline: a bare Starlette app that only redirects, served exactly like the proxy.

``python -m tests.bench.bare PROTOCOL PORT WORKERS`` serves it under uvicorn's plain
``httptools`` protocol, ``h11`` (with its bound on the head), or ``bounded``: the protocol
``cutproxy serve`` runs (:mod:`proxy.headlimit`); the bench compares what each costs.
"""

from __future__ import annotations

import asyncio
import sys

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
