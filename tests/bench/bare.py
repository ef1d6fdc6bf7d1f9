"""The baseline: a bare Starlette app that only redirects, served exactly like the proxy."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route


async def redirect(request: Request) -> Response:
    response = RedirectResponse("http://127.0.0.1/_engine/files/x.jpg", status_code=302)
    response.headers["Cache-Control"] = "public, max-age=6900"
    return response


app = Starlette(routes=[Route("/img/{image_id}/{size}/{filename}", redirect)])
