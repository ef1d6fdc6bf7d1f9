"""The admin API's client for the CLI: a running proxy over HTTP (``--url``, ``--token``).

The commands of :mod:`proxy.cli.images` (and any other command that talks to a running
proxy) share it: the options naming the proxy and the token, and errors that say what to
change when the proxy is unreachable or refuses the token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"


UrlOption = Annotated[
    str,
    typer.Option(envvar="CUTPROXY_URL", help="The proxy's base URL (env CUTPROXY_URL)."),
]


TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="PROXY_ADMIN_TOKEN",
        show_default=False,
        help="Admin token (env PROXY_ADMIN_TOKEN).",
    ),
]


class AdminError(Exception):
    """The proxy refused a request; the message says why."""


class FatalAdminError(AdminError):
    """No request can succeed: the proxy is unreachable or refuses the token."""


class AdminClient:
    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise FatalAdminError("no admin token: pass --token or set PROXY_ADMIN_TOKEN")
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            # An upload waits for the upstream's processing call (up to 300 s).
            timeout=httpx.Timeout(330.0, connect=5.0),
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise FatalAdminError(
                f"cannot reach the proxy at {self.url}: is `cutproxy serve` running? "
                "(--url or CUTPROXY_URL)"
            ) from None
        except httpx.HTTPError as exc:
            raise AdminError(f"{method} {path} failed: {type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise FatalAdminError(f"the proxy refused the admin token: {_message(response)}")
        return response

    async def get_image(self, image_id: str) -> dict[str, Any] | None:
        response = await self._call("GET", f"/images/{image_id}")
        if response.status_code == 404:
            return None
        return _ok(response)

    async def put_image(self, image_id: str, data: bytes, content_type: str) -> dict[str, Any]:
        response = await self._call(
            "PUT",
            f"/images/{image_id}",
            content=data,
            headers={"Content-Type": content_type},
        )
        return _ok(response)

    async def delete_image(self, image_id: str) -> dict[str, Any] | None:
        response = await self._call("DELETE", f"/images/{image_id}")
        if response.status_code == 404:
            return None
        return _ok(response)

    async def warm(
        self,
        image_id: str,
        sizes: list[str],
        bg: str,
        ext: str | None,
        fit: str | None = None,
        presets: list[str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"bg": bg}
        if sizes:
            body["sizes"] = sizes
        if ext:  # none: jpg for sizes, each preset's own format for presets
            body["ext"] = ext
        if fit:
            body["fit"] = fit
        if presets:
            body["presets"] = presets
        return _ok(await self._call("POST", f"/images/{image_id}/warm", json=body))

    async def list_images(self, after: str | None, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return _ok(await self._call("GET", "/images", params=params))

    async def orphans(self, clean: bool, grace: float | None) -> dict[str, Any]:
        """The object store's orphans (``clean``: removed), older than ``grace`` seconds."""
        params = {} if grace is None else {"grace": grace}
        method = "DELETE" if clean else "GET"
        return _ok(await self._call(method, "/admin/store/orphans", params=params))

    async def all_ids(self) -> list[str]:
        ids: list[str] = []
        after: str | None = None
        while True:
            page = await self.list_images(after, 1000)
            ids += [image["image_id"] for image in page["images"]]
            after = page.get("next")
            if not after:
                return ids


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(data, dict) and "message" in data:
        return f"{data['message']} ({response.status_code})"
    return f"HTTP {response.status_code}"


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        data: dict[str, Any] = response.json()
        return data
    raise AdminError(_message(response))


def run(work: Callable[[AdminClient], Awaitable[T]], url: str, token: str | None) -> T:
    """``work`` with a client of the proxy at ``url``; a refusal ends the command (exit 2)."""

    async def main() -> T:
        async with AdminClient(url, token) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except AdminError as exc:
        Console(stderr=True).print(f"cutproxy: {exc}")
        raise typer.Exit(2) from None


def ago(timestamp: float | None) -> str:
    """How long ago ``timestamp`` was, for a person (``?`` when unknown)."""
    if not timestamp:
        return "?"
    seconds = max(0, int(time.time() - timestamp))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
