"""A real Chromium loads the demo page in store mode with the example presets: the formats
and presets side by side decode, ``auto`` among them (as AVIF: Chromium accepts it), and the
page shows the bytes each one took."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_srcset_browser import ARTIFACTS, open_browser
from tests.servers import REPO, Server, cutproxy, free_port, start

pytestmark = [pytest.mark.slow, pytest.mark.needs("chromium")]

ALL_LOADED = """() => {
  const tiles = [...document.querySelectorAll('#formats .tile, #presets .tile')];
  return tiles.length > 0 && tiles.every((t) => t.dataset.loaded);
}"""


@pytest.fixture(scope="module")
def store_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("browser-store")
    server = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--demo"),
        port=free_port(),
        log_path=tmp / "proxy.log",
        env={
            "PROXY_DATA_DIR": str(tmp / "data"),
            "PROXY_MODE": "store",
            "PROXY_PRESETS_FILE": str(REPO / "docs" / "presets.example.toml"),
        },
        ready_path="/health",
    )
    try:
        yield server
    finally:
        server.stop()


def test_the_demo_page_shows_formats_and_presets_and_auto_decodes(
    store_proxy: Server, playwright: Any, tmp_path: Path
) -> None:
    context = open_browser(playwright, tmp_path / "profile", 1)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_viewport_size({"width": 1100, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{store_proxy.url}/")
        page.wait_for_function(ALL_LOADED, timeout=60_000)
        tiles = page.evaluate(
            """() => [...document.querySelectorAll('#formats .tile, #presets .tile')].map((t) => {
                const img = t.querySelector('img');
                return {name: t.querySelector('.name').textContent, path: img.getAttribute('src'),
                        loaded: t.dataset.loaded, bytes: Number(t.dataset.bytes || 0),
                        width: img.naturalWidth, height: img.naturalHeight,
                        shown: t.querySelector('.bytes').textContent};
            })"""
        )
        page.locator("#compare").scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-formats.png"), full_page=True)
    finally:
        context.close()
    assert not errors
    by_path = {t["path"]: t for t in tiles}
    for tile in tiles:  # every one decoded, and the page says how many bytes it took
        assert tile["loaded"] == "1" and tile["width"] > 0, tile
        assert tile["bytes"] > 0 and "B" in tile["shown"], tile
    auto = by_path["/img/demo/320x320/ffffff.auto"]
    avif = by_path["/img/demo/320x320/ffffff.avif"]
    assert (auto["width"], auto["height"]) == (320, 320)
    assert auto["bytes"] == avif["bytes"] and auto["name"] == "auto → avif"
    jpg = by_path["/img/demo/320x320/ffffff.jpg"]
    assert avif["bytes"] < jpg["bytes"]
    # The presets: main's exact frame, and grid's auto, decoded too.
    assert (by_path["/img/demo/main.jpg"]["width"], by_path["/img/demo/main.jpg"]["height"]) == (
        1600,
        1600,
    )
    assert by_path["/img/demo/grid.auto"]["width"] == 400
