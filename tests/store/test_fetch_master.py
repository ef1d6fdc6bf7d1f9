"""fetch_master over real HTTP on loopback: the standalone engine's own output files, and a
small file host (tests/store/file_host.py) for the failures the engine cannot play."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.errors import UpstreamError, UpstreamTimeoutError
from proxy.variants.derive import MasterError, decode_master
from proxy.variants.fetch import fetch_master
from tests.integration.conftest import ENGINE_KEY, Engine, product_png
from tests.servers import Server, cutproxy, free_port, start

SIZE = (800, 600)
SECRET = "X-Amz-Signature=0123456789abcdefsecret"  # what a signed output URL carries
MAX = 20 * 1024 * 1024
UVICORN_ARGS = ("--lifespan", "off", "--host", "127.0.0.1", "--port", "{port}")


@dataclass
class Outputs:
    engine: Engine
    host: Server
    urls: dict[str, str]  # variant name -> the engine's output URL, signed for the test


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    tmp = tmp_path_factory.mktemp("fetch-master")
    engine = Engine(
        start(
            cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}"),
            port=free_port(),
            log_path=tmp / "engine.log",
            env={
                "PROXY_ENGINE_DATA_DIR": str(tmp / "engine-data"),
                "PROXY_ENGINE_API_KEY": ENGINE_KEY,
            },
            ready_path="/_engine/health",
        )
    )
    files = tmp / "files"
    files.mkdir()
    host = start(
        [sys.executable, "-m", "uvicorn", *UVICORN_ARGS, "tests.store.file_host:app"],
        port=free_port(),
        log_path=tmp / "file-host.log",
        env={"FILE_HOST_DIR": str(files)},
        ready_path="/health/",
    )
    try:
        unique = engine.upload(product_png(*SIZE))
        variants = [
            {"variant_name": "master", "format": "png", "quality": "medium"},
            {"variant_name": "jpg", "format": "jpg"},
            {"variant_name": "opaque", "format": "png", "background_color": "#ffffff"},
            {"variant_name": "small", "format": "png", "max_resolution": 120_000},
        ]
        token = httpx.post(
            f"{engine.url}/api/v3/remove-bg/token/",
            headers={"Authorization": f"Bearer {ENGINE_KEY}"},
            json={"unique_filename": unique, "output_variants": variants},
            timeout=10,
        ).json()["access_token"]
        answer = httpx.post(f"{engine.url}/v3/remove-bg/", data={"token": token}, timeout=60)
        answer.raise_for_status()
        urls = {name: f"{url}?{SECRET}" for name, url in answer.json()["output_urls"].items()}
        (files / "master.png").write_bytes(httpx.get(urls["master"], timeout=10).content)
        yield Outputs(engine, host, urls)
    finally:
        host.stop()
        engine.server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    expected_size: tuple[int, int] | None = SIZE,
    max_bytes: int = MAX,
    timeout: float = 20.0,
) -> bytes:
    return await fetch_master(
        client, url, expected_size=expected_size, max_bytes=max_bytes, timeout=timeout
    )


def assert_public(error: UpstreamError) -> None:
    """The message says what went wrong and never quotes the URL's query (or the URL)."""
    for text in (error.message, str(error), repr(error)):
        assert "secret" not in text and "127.0.0.1" not in text
    # No httpx exception rides along into a traceback (its text can quote the URL).
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


async def test_a_good_master_is_returned_whole(outputs: Outputs, client: httpx.AsyncClient) -> None:
    data = await fetch(client, outputs.urls["master"])
    master = decode_master(data)
    assert master.size == SIZE and master.image.bands == 4
    # The upstream rounds when it scales: one pixel either way per side is the same master.
    assert await fetch(client, outputs.urls["master"], expected_size=(801, 599)) == data
    assert await fetch(client, outputs.urls["master"], expected_size=None) == data


@pytest.mark.parametrize(
    ("variant", "expected_size", "message"),
    [
        ("master", (802, 600), "is 800x600, expected 802x600"),
        ("small", SIZE, "is 400x300, expected 800x600"),
        ("jpg", SIZE, "is not a PNG"),
        ("opaque", SIZE, "has no alpha channel"),
    ],
)
async def test_an_unusable_master_is_a_502(
    outputs: Outputs,
    client: httpx.AsyncClient,
    variant: str,
    expected_size: tuple[int, int],
    message: str,
) -> None:
    with pytest.raises(MasterError) as caught:
        await fetch(client, outputs.urls[variant], expected_size=expected_size)
    assert caught.value.status_code == 502 and caught.value.code == "bad_master"
    assert message in caught.value.message
    assert caught.value.message.startswith("the upstream's cut-out ")


async def test_a_master_over_max_bytes_is_refused(
    outputs: Outputs, client: httpx.AsyncClient
) -> None:
    size = len(await fetch(client, outputs.urls["master"]))
    # Refused from its Content-Length, and counted as it streams when there is none.
    for url in (outputs.urls["master"], f"{outputs.host.url}/chunked/master.png?{SECRET}"):
        with pytest.raises(UpstreamError) as caught:
            await fetch(client, url, max_bytes=size - 1)
        assert caught.value.status_code == 502 and caught.value.code == "master_too_large"
        assert f"over the {size - 1:,} byte limit" in caught.value.message
        assert_public(caught.value)
    streamed = await fetch(
        client, f"{outputs.host.url}/chunked/master.png?{SECRET}", max_bytes=size
    )
    assert len(streamed) == size


async def test_a_body_cut_short_is_a_502(outputs: Outputs, client: httpx.AsyncClient) -> None:
    with pytest.raises(UpstreamError) as caught:
        await fetch(client, f"{outputs.host.url}/cut/master.png?{SECRET}")
    assert caught.value.status_code == 502 and caught.value.code == "master_download_failed"
    assert "cut short" in caught.value.message
    assert_public(caught.value)


async def test_a_truncated_file_in_a_complete_response_is_a_502(
    outputs: Outputs, client: httpx.AsyncClient
) -> None:
    # HTTP cannot tell (no length was promised): decoding the whole image does.
    with pytest.raises(MasterError) as caught:
        await fetch(client, f"{outputs.host.url}/chunked-half/master.png?{SECRET}")
    assert "corrupt or truncated" in caught.value.message


async def test_an_expired_output_is_a_502_naming_the_status(
    outputs: Outputs, client: httpx.AsyncClient
) -> None:
    with pytest.raises(UpstreamError) as caught:
        await fetch(client, f"{outputs.engine.url}/files/gone.png?{SECRET}")
    assert caught.value.status_code == 502 and caught.value.upstream_status == 404
    assert caught.value.message == "downloading the upstream's cut-out failed with 404 (expired?)"


async def test_a_download_that_hangs_is_a_504(
    outputs: Outputs, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs.engine.faults(mode="hang")
    try:
        with pytest.raises(UpstreamTimeoutError) as caught:
            await fetch(client, outputs.urls["master"], timeout=1.0)
    finally:
        outputs.engine.faults(mode="ok")
    assert caught.value.status_code == 504 and caught.value.code == "master_timeout"
    assert caught.value.message == "downloading the upstream's cut-out took over 1s"
    assert_public(caught.value)
    assert "secret" not in caplog.text


async def test_an_unreachable_host_is_a_502(client: httpx.AsyncClient, tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as caught:
        await fetch(client, f"http://127.0.0.1:{free_port()}/files/x.png?{SECRET}")
    assert caught.value.status_code == 502 and "ConnectError" in caught.value.message
    assert_public(caught.value)
