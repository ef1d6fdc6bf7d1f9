"""``cutproxy engine`` as users run it: the command line, several workers, heavy renders."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Awaitable
from pathlib import Path

import anyio
import httpx
import pytest

from proxy.engine.app import PROCESS_PATH, TOKEN_PATH
from proxy.engine.settings import EngineSettings
from tests.engine.conftest import API_KEY, start_engine
from tests.engine.photos import BOX, SIZE, photo_jpeg
from tests.servers import cutproxy

PHOTO = photo_jpeg(size=(480, 360), box=(120, 80, 361, 281))
LARGE = [  # 12 MP out of a 12 MP photo
    {"variant_name": "png", "format": "png"},
    {"variant_name": "jpg", "format": "jpg", "background_color": "#FFFFFF"},
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cutproxy(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )


def test_help_documents_every_setting() -> None:
    shown = run_cli("engine", "--help")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for f in dataclasses.fields(EngineSettings):
        assert f"--{f.name.replace('_', '-')}" in text
        assert f.metadata["env"] in text
    for flag in ("--host", "--port", "--workers"):
        assert flag in text
    assert "kept in <data dir>/api-key" in text and "engine-dev-key" not in text


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), {"PROXY_ENGINE_ERROR_RATE": "2"}, "PROXY_ENGINE_ERROR_RATE"),
        ((), {"PROXY_ENGINE_TOKEN_TTL": "soon"}, "PROXY_ENGINE_TOKEN_TTL"),
        (("--mode", "sideways"), {}, "PROXY_ENGINE_MODE"),
        (("--max-upload-mb", "lots"), {}, "--max-upload-mb"),
    ],
)
def test_bad_settings_stop_the_start_naming_the_variable(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    failed = run_cli("engine", "--port", "1", *args, env=env)
    assert failed.returncode == 2
    assert named in failed.stderr


async def test_workers_share_tokens_counters_and_files(tmp_path: Path) -> None:
    public = "http://cdn.example:8443/engine"
    settings = {"data_dir": tmp_path / "data", "public_url": public}
    server = await anyio.to_thread.run_sync(
        start_engine, settings, tmp_path / "engine.log", "--workers", "2"
    )
    # No key configured: the one made in the data dir, which both workers accept.
    key = (tmp_path / "data" / "api-key").read_text().strip()
    assert key not in server.log()
    fresh = {"Connection": "close"}  # every call on a new connection: any worker may take it
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            # The kernel picks which worker accepts; one call at a time often lands on the
            # same one, so ask in bursts of new connections until both have answered.
            pids: set[int] = set()
            deadline = anyio.current_time() + 30
            while len(pids) < 2 and anyio.current_time() < deadline:
                burst = [client.get("/_engine/health", headers=fresh) for _ in range(8)]
                pids.update(answer.json()["pid"] for answer in await gather(*burst))
            assert len(pids) == 2, "both workers answer on the one port"

            tokens = []
            for _ in range(4):
                minted = await client.post(
                    TOKEN_PATH,
                    json={"output_variants": [{"variant_name": "v"}]},
                    headers={"Authorization": f"Bearer {key}", **fresh},
                )
                assert minted.status_code == 200
                tokens.append(minted.json()["access_token"])
            assert (await client.get("/_engine/stats", headers=fresh)).json()["tokens_minted"] == 4

            async def process(token: str) -> httpx.Response:
                files = {"image": ("p.jpg", PHOTO, "image/jpeg")}
                return await client.post(
                    PROCESS_PATH, data={"token": token}, files=files, headers=fresh
                )

            for token in tokens:  # the same token twice at once: one render, one 401
                answers = await gather(process(token), process(token))
                assert sorted(a.status_code for a in answers) == [200, 401]
                url = next(a for a in answers if a.status_code == 200).json()["output_urls"]["v"]
                assert url.startswith(f"{public}/files/")
                for _ in range(3):  # whichever worker serves it has the file
                    got = await client.get(url.replace(public, server.url), headers=fresh)
                    assert got.status_code == 200
            stats = (await client.get("/_engine/stats", headers=fresh)).json()
            assert stats["uploads"] == 4 and stats["variants_rendered"] == 4
            assert stats["rejections"] == {"401": 4}
    finally:
        server.stop()


async def gather(*calls: Awaitable[httpx.Response]) -> list[httpx.Response]:
    answers: list[httpx.Response] = []

    async def run(call: Awaitable[httpx.Response]) -> None:
        answers.append(await call)

    async with anyio.create_task_group() as group:
        for call in calls:
            group.start_soon(run, call)
    return answers


async def test_two_large_renders_leave_the_engine_responsive(tmp_path: Path) -> None:
    settings = {"data_dir": tmp_path / "data", "token_ttl": 120, "api_key": API_KEY}
    server = await anyio.to_thread.run_sync(start_engine, settings, tmp_path / "engine.log")
    scale = 4000 / SIZE[0]
    large = await anyio.to_thread.run_sync(
        lambda: photo_jpeg(size=(4000, 3000), box=tuple(round(c * scale) for c in BOX), noise=2)
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def mint(variants: list[dict[str, object]]) -> str:
                answer = await client.post(
                    TOKEN_PATH,
                    json={"output_variants": variants},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                return str(answer.json()["access_token"])

            tokens = [await mint(LARGE), await mint(LARGE)]

            async def render(token: str) -> httpx.Response:
                files = {"image": ("big.jpg", large, "image/jpeg")}
                return await client.post(PROCESS_PATH, data={"token": token}, files=files)

            renders: list[httpx.Response] = []
            rendering_since = 0.0
            latencies: list[float] = []
            async with anyio.create_task_group() as group:
                for token in tokens:
                    group.start_soon(lambda t=token: _collect(renders, render(t)))
                # Both uploads stored means both requests are past decoding, into rendering.
                for _ in range(1000):
                    if (await client.get("/_engine/stats")).json()["uploads"] == 2:
                        break
                    await anyio.sleep(0.02)
                rendering_since = time.perf_counter()
                for _ in range(5):
                    started = time.perf_counter()
                    assert (await client.get("/_engine/stats")).status_code == 200
                    assert len(await mint([{"variant_name": "small"}])) > 0
                    latencies.append(time.perf_counter() - started)
                    await anyio.sleep(0.05)
                assert not renders, "the renders were still running while we measured"
            render_time = time.perf_counter() - rendering_since
    finally:
        server.stop()
    assert [r.status_code for r in renders] == [200, 200]
    assert max(latencies) < 0.5, latencies
    assert render_time > 3 * max(latencies)


async def _collect(answers: list[httpx.Response], call: Awaitable[httpx.Response]) -> None:
    answers.append(await call)
