"""`make serve` as a user runs it: the embedded engine, the demo image, several workers."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from tests.servers import cutproxy, free_port, start


def test_two_workers_upload_the_demo_once_and_serve_it(tmp_path: Path) -> None:
    port = free_port()
    server = start(
        cutproxy("serve", "--port", "{port}", "--workers", "2", "--demo"),
        port=port,
        log_path=tmp_path / "serve.log",
        env={"PROXY_DATA_DIR": str(tmp_path / "data"), "PROXY_API_KEY": ""},
        ready_path="/health",
    )
    try:
        for _ in range(50):  # both workers are up once each has answered
            pids = {httpx.get(f"{server.url}/_engine/health").json().get("pid") for _ in range(8)}
            if len(pids) == 2:
                break
        answer = httpx.get(f"{server.url}/img/demo/400x300/ff5733.jpg")
        assert answer.status_code == 302
        image = httpx.get(answer.headers["location"])
        assert image.headers["content-type"] == "image/jpeg"
        picture = Image.open(io.BytesIO(image.content))
        assert picture.width <= 400 and picture.height <= 300
        corner = picture.convert("RGB").getpixel((0, 0))
        assert max(abs(a - b) for a, b in zip(corner, (255, 87, 51), strict=True)) < 8
        stats = httpx.get(f"{server.url}/_engine/stats").json()
        assert stats["uploads"] == 1, stats
        assert stats["tokens_minted"] == 2  # the demo upload and the one variant
    finally:
        assert server.stop() == 0
