"""Store mode's acceptance suite, black-box: `cutproxy serve --workers 2` in front of the
standalone engine, over real HTTP (STORE_SPEC's "Done-when" list).

Nothing from ``proxy/`` is imported: what is paid is the engine's own token count
(``/_engine/stats``), what is served is decoded with Pillow, and what is kept is read
straight off the data directory, whose layout is the stores' documented one:
``<PROXY_DATA_DIR>/masters/<image_id>/<version>-<quality>.png`` (proxy/stores/masters.py)
and, for derived bytes, a directory holding ``index.sqlite3``, ``files/<ab>/<name>`` and
``tmp/`` (proxy/stores/derived.py's ``DiskBytes``; wherever under the data directory the
proxy puts it). One engine serves the whole package, so every test counts tokens as a
difference; a test that stops its engine starts its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import ADMIN, Engine, start_engine, start_proxy
from tests.servers import Server

AUTH = {"Authorization": f"Bearer {ADMIN}"}
PUBLIC_URL = "https://img.example.test"
#: PROXY_IMAGE_VIEW_TTL: how long a worker may trust its view of an image (a replaced or
#: deleted image stops being served by every worker within it).
VIEW_TTL = 0.5
MAGIC = {  # extension -> (Content-Type, Pillow's format name)
    "jpg": ("image/jpeg", "JPEG"),
    "png": ("image/png", "PNG"),
    "webp": ("image/webp", "WEBP"),
    "avif": ("image/avif", "AVIF"),
}


@pytest.fixture(scope="package")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One standalone engine for the package; tests count its tokens as differences."""
    engine = start_engine(tmp_path_factory.mktemp("engine"))
    try:
        yield engine
    finally:
        engine.server.stop()


@dataclass
class Stack:
    """A store-mode proxy (2 workers) on its own data directory, restartable in place."""

    engine: Engine
    directory: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 2
    proxy: Server | None = None

    def start(self) -> Stack:
        self.proxy = start_proxy(
            self.engine, self.directory, workers=self.workers, name="proxy", **self.env
        )
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()

    def restart(self) -> None:
        """A clean shutdown, then a new `cutproxy serve` on the same data directory."""
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    @property
    def data(self) -> Path:
        return self.directory / "proxy-data"  # where start_proxy puts PROXY_DATA_DIR


def store_stack(
    engine: Engine, directory: Path, env: Mapping[str, str] | None = None, *, workers: int = 2
) -> Stack:
    """A started store-mode stack (``env``: more PROXY_* settings); the caller stops it."""
    return Stack(engine, directory, {"PROXY_MODE": "store", **(env or {})}, workers).start()


@pytest.fixture(scope="package")
def store(shared_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The package's store-mode proxy; each test uses image ids of its own."""
    stack = store_stack(
        shared_engine,
        tmp_path_factory.mktemp("store"),
        {"PROXY_PUBLIC_URL": PUBLIC_URL, "PROXY_IMAGE_VIEW_TTL": str(VIEW_TTL)},
    )
    try:
        yield stack
    finally:
        stack.stop()


def upload(base: str, image_id: str, data: bytes) -> httpx.Response:
    """PUT /images/<id> with the image bytes (what an admin's upload does)."""
    headers = {**AUTH, "Content-Type": "image/png"}
    answer = httpx.put(f"{base}/images/{image_id}", content=data, headers=headers, timeout=60)
    assert answer.status_code in (200, 201), answer.text
    return answer


async def _fetch(
    base: str, paths: Iterable[str], headers: dict[str, str] | None, fresh: bool
) -> list[httpx.Response]:
    paths = list(paths)
    # fresh: no keep-alive, so the kernel spreads the connections over both workers
    limits = httpx.Limits(
        max_connections=len(paths), max_keepalive_connections=0 if fresh else None
    )
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        return list(await asyncio.gather(*(client.get(p, headers=headers) for p in paths)))


def fetch_all(
    base: str, paths: Iterable[str], headers: dict[str, str] | None = None, *, fresh: bool = True
) -> list[httpx.Response]:
    """GET every path at once (each on its own connection); the answers in order."""
    return asyncio.run(_fetch(base, paths, headers, fresh))


# --- what is served ---------------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    """The image in ``data``, fully decoded and ending where its format says it ends (a cut
    file raises: Pillow alone decodes a PNG cut short of its IEND chunk)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if not _ends_whole(data):
        raise ValueError(f"{image.format} data does not end where its format says it ends")
    return image


def _ends_whole(data: bytes) -> bool:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data.endswith(b"IEND\xaeB`\x82")
    if data[:3] == b"\xff\xd8\xff":
        return data.endswith(b"\xff\xd9")
    if data[:4] == b"RIFF":
        return int.from_bytes(data[4:8], "little") + 8 == len(data)
    if data[4:8] == b"ftyp":  # ISO BMFF (AVIF): the top-level boxes tile the file exactly
        at = 0
        while at + 8 <= len(data):
            size = int.from_bytes(data[at : at + 4], "big")
            if size == 1:
                size = int.from_bytes(data[at + 8 : at + 16], "big")
            elif size == 0:
                size = len(data) - at
            if size < 8:
                return False
            at += size
        return at == len(data)
    return True


def has_magic(data: bytes, ext: str) -> bool:
    if ext == "jpg":
        return data[:3] == b"\xff\xd8\xff"
    if ext == "png":
        return data[:8] == b"\x89PNG\r\n\x1a\n"
    if ext == "webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data[4:8] == b"ftyp" and b"avif" in data[8:32]  # major or a compatible brand


def served_image(answer: httpx.Response, ext: str) -> Image.Image:
    """Check a 200 image answer is whole and of format ``ext``; the decoded image."""
    assert answer.status_code == 200, (answer.request.url, answer.status_code, answer.text[:300])
    content_type, pillow_format = MAGIC[ext]
    assert answer.headers["content-type"] == content_type
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert has_magic(answer.content, ext), answer.content[:16]
    image = decode(answer.content)
    assert image.format == pillow_format
    return image


def hex_rgb(bg: str) -> tuple[int, int, int]:
    return (int(bg[0:2], 16), int(bg[2:4], 16), int(bg[4:6], 16))


def corner(image: Image.Image) -> tuple[int, ...]:
    """The top-left pixel as RGBA."""
    pixel = image.convert("RGBA").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return pixel


def close(actual: Iterable[int], wanted: Iterable[int], tolerance: int) -> bool:
    return all(abs(a - w) <= tolerance for a, w in zip(actual, wanted, strict=True))


# --- what is kept -----------------------------------------------------------------------------


def master_files(data: Path, image_id: str | None = None) -> list[Path]:
    """The masters kept (temp files, whose names start with a dot, are not kept)."""
    root = data / "masters"
    folders = [root / image_id] if image_id else [p for p in root.glob("*") if p.is_dir()]
    return sorted(
        path
        for folder in folders
        if not folder.name.startswith(".") and folder.is_dir()
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".")
    )


def derived_files(data: Path) -> list[Path]:
    """Every value file of every derived-bytes store under the data directory (``files/`` next
    to an ``index.sqlite3``; ``tmp/`` holds writes in progress, which are not kept)."""
    return sorted(
        path
        for index in data.rglob("index.sqlite3")
        for path in (index.parent / "files").rglob("*")
        if path.is_file()
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kept_hashes(data: Path) -> set[str]:
    return {sha(path.read_bytes()) for path in derived_files(data)}
