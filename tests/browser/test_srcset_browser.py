"""A real browser (Debian's Chromium, driven by Playwright) loads srcset markup from the proxy.

At a 400 px wide viewport the page shows the demo image 320 CSS px wide: a DPR 1 screen
must fetch the 320w candidate, a DPR 2 screen the 640w one, each through the proxy's 302 to
the rendered file, and decode it. The demo page is opened too, and its screenshot kept in
``artifacts/demo-page.png``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cdn.conftest import image_size
from tests.components import find
from tests.servers import REPO, Server, cutproxy, free_port, start

CHROMIUM = find("chromium")
ARTIFACTS = REPO / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.slow, pytest.mark.needs("chromium")]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("browser")
    server = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--demo"),
        port=free_port(),
        log_path=tmp / "proxy.log",
        env={"PROXY_DATA_DIR": str(tmp / "data")},
        ready_path="/health",
    )
    try:
        yield server
    finally:
        server.stop()


def open_browser(playwright: Any, profile: Path, dpr: int) -> Any:
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=ARGS,
        viewport={"width": 400, "height": 800},
        device_scale_factor=dpr,
    )


@pytest.fixture
def shop(proxy: Server) -> Iterator[str]:
    """A shop's product page on another loopback origin, with the proxy's srcset markup.

    (A page from a public address may not load images from loopback in Chromium, so the
    shop is served for real rather than faked with a route.)
    """
    markup = httpx.get(
        f"{proxy.url}/srcset/demo",
        params={"widths": "320,640,1280", "ratio": "1:1", "sizes": "320px", "alt": "Red mug"},
        timeout=30,
    )
    markup.raise_for_status()
    page = f"<!doctype html><meta charset=utf-8><title>Shop</title><body>{markup.text}</body>"
    body = page.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/product" else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/product"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("dpr", "box", "pixels"), [(1, 320, (320, 240)), (2, 640, (640, 480))])
def test_the_browser_takes_the_candidate_for_its_screen_and_decodes_it(
    proxy: Server,
    shop: str,
    playwright: Any,
    tmp_path: Path,
    dpr: int,
    box: int,
    pixels: tuple[int, int],
) -> None:
    context = open_browser(playwright, tmp_path / "profile", dpr)
    try:
        page = context.new_page()
        requests: list[Any] = []
        page.on("request", lambda request: requests.append(request))
        page.goto(shop)
        page.wait_for_function("document.querySelector('img').complete", timeout=30_000)
        state = page.evaluate(
            """() => { const img = document.querySelector('img');
                return {currentSrc: img.currentSrc, complete: img.complete,
                        naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}; }"""
        )
        wanted = f"{proxy.url}/img/demo/{box}x{box}/ffffff.jpg"
        asked = [r.url for r in requests if "/img/" in r.url]
        files = [r for r in requests if "/_engine/files/" in r.url]
        chain = [
            (
                r.redirected_from.url if r.redirected_from else None,
                r.redirected_from.response().status if r.redirected_from else None,
                r.response().status,
            )
            for r in files
        ]
    finally:
        context.close()

    assert asked == [wanted]  # only the one candidate, none of the others
    # It followed the proxy's 302 to the rendered file, which answered 200.
    assert chain == [(wanted, 302, 200)]
    assert state["currentSrc"] == wanted and state["complete"] is True
    # Intrinsic size = delivered pixels / (descriptor / slot): 320 CSS px at either density.
    assert (state["naturalWidth"], state["naturalHeight"]) == (320, 240)
    assert image_size(httpx.get(files[0].url, timeout=10).content) == pixels


def test_the_demo_page_shows_the_images_and_what_they_cost(
    proxy: Server, playwright: Any, tmp_path: Path
) -> None:
    context = open_browser(playwright, tmp_path / "profile", 1)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_viewport_size({"width": 1100, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{proxy.url}/")
        page.wait_for_function(
            "() => { const img = document.querySelector('.card img');"
            " return img && img.complete && img.naturalWidth > 0; }",
            timeout=30_000,
        )
        # The page's own image is now cached; the card says so and that it cost nothing more.
        page.wait_for_function(
            "document.querySelector('.card .state').textContent.startsWith('cached')",
            timeout=10_000,
        )
        at_1x = page.text_content(".card") or ""
        page.click('label:has(input[name="density"][value="2"])')  # as a person would
        page.wait_for_function(
            "document.querySelector('#url').textContent.includes('@2x')", timeout=10_000
        )
        page.wait_for_function(
            "() => { const img = document.querySelector('.card img');"
            " return img && img.complete && img.naturalWidth > 0; }",
            timeout=30_000,
        )
        page.wait_for_timeout(500)  # the cache state refreshes after the image loads
        url = page.text_content("#url") or ""
        markup = page.text_content("#markup") or ""
        at_2x = page.text_content(".card .cost") or ""
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-page.png"), full_page=True)
    finally:
        context.close()
    assert not errors
    assert url == f"{proxy.url}/img/demo/320x320@2x/ffffff.jpg"
    assert 'srcset="' in markup and "640w" in markup
    assert "demo" in at_1x and "1200×900" in at_1x and "240" in at_1x
    assert "0 (cached)" in at_1x
    assert at_2x == "0 (cached)" or "credit" in at_2x  # 640x640: cached only if loaded before
    assert (ARTIFACTS / "demo-page.png").stat().st_size > 10_000
