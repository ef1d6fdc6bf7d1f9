"""Real servers on loopback: the CLI against `cutproxy serve`, and several workers."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images.conftest import ADMIN, AUTH, photo
from tests.servers import Server, cutproxy, free_port, start

pytestmark = pytest.mark.slow


def serve(tmp_path: Path, workers: int, **env: str) -> Server:
    port = free_port()
    return start(
        cutproxy("serve", "--port", "{port}", "--workers", str(workers)),
        port=port,
        log_path=tmp_path / "proxy.log",
        env={
            "PROXY_DATA_DIR": str(tmp_path / "data"),
            "PROXY_ADMIN_TOKEN": ADMIN,
            "PROXY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PROXY_API_KEY": "",
            **env,
        },
        ready_path="/health",
    )


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Server]:
    server = serve(tmp_path, workers=1)
    try:
        yield server
    finally:
        server.stop()


def stats(server: Server) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.url}/_engine/stats", timeout=5).json()
    return data


def run_cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cutproxy(*args, "--url", server.url),
        capture_output=True,
        text=True,
        timeout=120,
        env={"PROXY_ADMIN_TOKEN": ADMIN, "COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )


def summary(output: str) -> dict[str, int]:
    """The numbers of the import summary table, by outcome."""
    counts = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            counts[cells[0]] = int(cells[1])
    return counts


def test_import_a_folder_twice_uploads_twenty_then_none(proxy: Server, tmp_path: Path) -> None:
    folder = tmp_path / "catalogue"
    (folder / "mugs").mkdir(parents=True)
    for n in range(20):
        kind = ("png", "PNG") if n % 2 else ("jpg", "JPEG")
        (folder / "mugs" / f"Mug {n:02d}.{kind[0]}").write_bytes(photo(n, fmt=kind[1]))
    before = stats(proxy)["uploads"]

    first = run_cli(proxy, "import", str(folder), "--concurrency", "4")
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first.stdout)["uploaded"] == 20 and summary(first.stdout)["failed"] == 0
    assert "importing" in first.stderr  # the progress bar
    assert stats(proxy)["uploads"] == before + 20

    again = run_cli(proxy, "import", str(folder))
    assert again.returncode == 0
    assert summary(again.stdout)["uploaded"] == 0 and summary(again.stdout)["unchanged"] == 20
    assert stats(proxy)["uploads"] == before + 20

    listed = run_cli(proxy, "images", "ls")
    assert "20 image(s)" in listed.stdout and "Mug-00" in listed.stdout
    answer = httpx.get(f"{proxy.url}/img/Mug-07/320x320/ffffff.jpg", timeout=30)
    assert answer.status_code == 302


def test_import_reports_failures_and_reads_a_csv(proxy: Server, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "good.webp").write_bytes(photo(1, fmt="WEBP"))
    table = tmp_path / "list.csv"
    table.write_text("image_id,path\nsku-1,good.webp\nsku-2,notes.png\nsku-3,missing.jpg\n")
    result = run_cli(proxy, "import", str(table))
    assert result.returncode == 1
    counts = summary(result.stdout)
    assert counts["uploaded"] == 1 and counts["failed"] == 2
    assert "not a PNG, JPEG or WebP" in result.stdout and "No such file" in result.stdout

    wrong = subprocess.run(
        cutproxy("import", str(table), "--url", proxy.url, "--token", "x" * 20),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "admin token" in wrong.stderr


def test_warm_show_and_rm(proxy: Server, tmp_path: Path) -> None:
    put = httpx.put(
        f"{proxy.url}/images/mug",
        content=photo(3, size=(1600, 1200)),
        headers={**AUTH, "Content-Type": "image/png"},
        timeout=30,
    )
    assert put.status_code == 201
    minted = stats(proxy)["tokens_minted"]
    warmed = run_cli(proxy, "warm", "--sizes", "320x320,640x640,1280x1280,160x160", "mug")
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert summary(warmed.stdout)["variants rendered"] == 4
    assert summary(warmed.stdout)["being minted for a visitor"] == 0
    assert stats(proxy)["tokens_minted"] == minted + 1
    again = run_cli(proxy, "warm", "--sizes", "320x320,640x640,1280x1280,160x160")
    assert summary(again.stdout)["already cached"] == 4
    assert stats(proxy)["tokens_minted"] == minted + 1

    shown = run_cli(proxy, "images", "show", "mug")
    assert "4 cached variant(s)" in shown.stdout and "/img/mug/1280x1280/ffffff.jpg" in shown.stdout
    removed = run_cli(proxy, "images", "rm", "mug")
    assert "removed mug: 4 cached variant(s), original deleted" in removed.stdout
    assert run_cli(proxy, "images", "rm", "mug").returncode == 1


def test_no_worker_serves_a_replaced_image(tmp_path: Path) -> None:
    server = serve(tmp_path, workers=2, PROXY_IMAGE_VIEW_TTL="0.5")
    try:
        url = f"{server.url}/img/mug/200x200/ffffff.png"
        put = {**AUTH, "Content-Type": "image/png"}
        assert httpx.put(f"{server.url}/images/mug", content=photo(1), headers=put).is_success
        # fresh connections, so both workers serve (and cache) the variant
        old = {httpx.get(url, timeout=30).headers["location"] for _ in range(30)}
        assert len(old) == 1
        replaced = httpx.put(f"{server.url}/images/mug", content=photo(2), headers=put)
        assert replaced.json()["status"] == "replaced"
        time.sleep(0.6)  # PROXY_IMAGE_VIEW_TTL: how long a worker may trust its view
        new = {httpx.get(url, timeout=30).headers["location"] for _ in range(30)}
        assert len(new) == 1 and new != old
    finally:
        server.stop()


def test_workers_share_one_reupload_when_the_engine_forgot(tmp_path: Path) -> None:
    server = serve(tmp_path, workers=2, PROXY_ENGINE_RETENTION="2")
    try:
        put = {**AUTH, "Content-Type": "image/png"}
        assert httpx.put(f"{server.url}/images/mug", content=photo(1), headers=put).is_success
        time.sleep(2.2)  # PROXY_ENGINE_RETENTION: the engine forgets the upload
        before = stats(server)["uploads"]

        async def burst() -> list[int]:
            limits = httpx.Limits(max_keepalive_connections=0)  # spread over both workers
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as c:
                paths = [f"/img/mug/{100 + n}x{100 + n}/ffffff.jpg" for n in range(10)]
                answers = await asyncio.gather(*(c.get(p) for p in paths * 5))
                return [a.status_code for a in answers]

        assert set(asyncio.run(burst())) == {302}
        assert stats(server)["uploads"] == before + 1
    finally:
        server.stop()


def test_warm_takes_named_presets_in_store_mode(tmp_path: Path) -> None:
    presets = Path(__file__).parents[2] / "docs" / "presets.example.toml"
    server = serve(tmp_path, workers=1, PROXY_MODE="store", PROXY_PRESETS_FILE=str(presets))
    try:
        put = {**AUTH, "Content-Type": "image/png"}
        assert httpx.put(f"{server.url}/images/mug", content=photo(3), headers=put).is_success
        minted = stats(server)["tokens_minted"]  # the upload carried the master
        warmed = run_cli(server, "warm", "--presets", "main,grid", "mug")
        assert warmed.returncode == 0, warmed.stdout + warmed.stderr
        assert "preset(s) main, grid" in warmed.stdout
        assert summary(warmed.stdout)["variants rendered"] == 2  # main.jpg, grid.jpg
        again = run_cli(server, "warm", "--presets", "main", "--sizes", "320x320", "mug")
        assert summary(again.stdout)["already cached"] == 1
        assert summary(again.stdout)["variants rendered"] == 1
        assert stats(server)["tokens_minted"] == minted  # derived from the master: no mint
        assert httpx.get(f"{server.url}/img/mug/main.jpg", timeout=30).status_code == 200
    finally:
        server.stop()
