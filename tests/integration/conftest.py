"""Real servers on loopback: a standalone local engine and the proxy in front of it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.servers import Server, cutproxy, free_port, start

ENGINE_KEY = "engine-key-for-tests-0123456789"
ADMIN = "admin-token-for-tests-0123456789"


def product_png(
    width: int = 800, height: int = 600, fill: tuple[int, int, int] = (20, 90, 200)
) -> bytes:
    """A product shot: an ellipse of ``fill`` (its box half the frame, centred) on near-white."""
    image = Image.new("RGB", (width, height), (240, 240, 238))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=fill)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@dataclass
class Engine:
    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    def stats(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.url}/_engine/stats", timeout=5).json()
        return data

    def minted(self) -> int:
        return int(self.stats()["tokens_minted"])  # type: ignore[call-overload]

    def faults(self, **faults: object) -> None:
        response = httpx.put(
            f"{self.url}/_engine/faults",
            json=faults,
            headers={"Authorization": f"Bearer {ENGINE_KEY}"},
            timeout=5,
        )
        response.raise_for_status()

    def upload(self, data: bytes) -> str:
        """The seed's first request, straight at the engine: returns the unique_filename."""
        token = httpx.post(
            f"{self.url}/api/v3/remove-bg/token/",
            headers={"Authorization": f"Bearer {ENGINE_KEY}"},
            json={"output_variants": [{"variant_name": "initial", "quality": "low"}]},
            timeout=10,
        ).json()["access_token"]
        answer = httpx.post(
            f"{self.url}/v3/remove-bg/",
            data={"token": token},
            files={"image": ("p.png", data, "image/png")},
            timeout=30,
        )
        answer.raise_for_status()
        return str(answer.json()["unique_filename"])


def start_engine(directory: Path) -> Engine:
    """The standalone engine, its data and log under ``directory`` (the caller stops it)."""
    directory.mkdir(parents=True, exist_ok=True)
    server = start(
        cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}"),
        port=free_port(),
        log_path=directory / "engine.log",
        env={
            "PROXY_ENGINE_DATA_DIR": str(directory / "engine-data"),
            "PROXY_ENGINE_API_KEY": ENGINE_KEY,
        },
        ready_path="/_engine/health",
    )
    return Engine(server)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    started = start_engine(tmp_path)
    try:
        yield started
    finally:
        started.server.stop()


def proxy_env(engine_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """A proxy that mints at the standalone engine at ``engine_url``."""
    return {
        "PROXY_API_KEY": ENGINE_KEY,
        "PROXY_TOKEN_URL": f"{engine_url}/api/v3/remove-bg/token/",
        "PROXY_PROCESS_URL": f"{engine_url}/v3/remove-bg/",
        "PROXY_ALLOWED_OUTPUT_HOSTS": "127.0.0.1",
        "PROXY_DATA_DIR": str(data_dir),
        "PROXY_ADMIN_TOKEN": ADMIN,
        **extra,
    }


def start_proxy(
    engine: Engine, tmp_path: Path, *, workers: int = 2, name: str = "proxy", **extra: str
) -> Server:
    return start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)),
        port=free_port(),
        log_path=tmp_path / f"{name}.log",
        env=proxy_env(engine.url, tmp_path / "proxy-data", **extra),
        ready_path="/health",
    )


def register(proxy_url: str, image_id: str, unique_filename: str, size: tuple[int, int]) -> int:
    """PUT /images/<id> (JSON registration); the status: 201 created, 200 replaced."""
    response = httpx.put(
        f"{proxy_url}/images/{image_id}",
        json={"unique_filename": unique_filename, "width": size[0], "height": size[1]},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text
    return response.status_code
