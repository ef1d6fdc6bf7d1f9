"""Store mode when things break: the engine gone, the workers killed mid-derivation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Engine, product_png, register, start_engine
from tests.store_mode.conftest import (
    Stack,
    decode,
    derived_files,
    fetch_all,
    master_files,
    served_image,
    store_stack,
    upload,
)

pytestmark = pytest.mark.slow


def test_a_stopped_engine_still_serves_every_size_of_a_mastered_image(tmp_path: Path) -> None:
    engine = start_engine(tmp_path / "engine")
    stack = store_stack(
        engine, tmp_path, {"PROXY_RETRY_ATTEMPTS": "2", "PROXY_RETRY_BACKOFF": "0.1"}
    )
    try:
        upload(stack.url, "mastered", product_png(fill=(20, 90, 200)))
        # registered by its unique_filename: an upload made elsewhere, so no master yet
        register(
            stack.url, "unmastered", engine.upload(product_png(fill=(200, 30, 40))), (800, 600)
        )
        served_image(httpx.get(f"{stack.url}/img/mastered/100x100/ffffff.jpg", timeout=30), "jpg")

        engine.server.stop()
        paths = [
            "/img/mastered/320x240/ffffff.jpg",
            "/img/mastered/500x500-cover/transparent.png",
            "/img/mastered/333x222-contain/000000.webp",
            "/img/mastered/128x128/transparent.avif",
        ]
        for path, answer in zip(paths * 2, fetch_all(stack.url, paths * 2), strict=True):
            served_image(answer, path.rsplit(".", 1)[1])

        for answer in fetch_all(stack.url, ["/img/unmastered/100x100/ffffff.jpg"] * 4):
            assert answer.status_code in (502, 503, 504), answer.text
            assert answer.headers["content-type"] == "application/json"
            assert set(answer.json()) >= {"error", "message"}
            assert answer.headers["cache-control"] == "no-store"
    finally:
        stack.stop()
        engine.server.stop()


# 50 variants, none yet derived: more than both workers derive at once, so most of them are
# queued or being derived (and written) when the workers are killed
CRASH_PATHS = [
    f"/img/crash/{400 + 8 * n}x{300 + 6 * n}/{bg}.{ext}"
    for n, (bg, ext) in enumerate(
        [("transparent", "png"), ("ffffff", "webp"), ("336699", "jpg"), ("transparent", "avif")]
        * 13
    )
][:50]


def unreadable(data_dir: Path) -> list[str]:
    """Kept files (masters, derived bytes) that are not whole images."""
    broken = []
    for path in master_files(data_dir) + derived_files(data_dir):
        try:
            decode(path.read_bytes())
        except Exception as error:  # Pillow raises several kinds for a cut file
            broken.append(f"{path.relative_to(data_dir)}: {error!r}")
    return broken


async def crash_during(stack: Stack, paths: list[str], after: int) -> list[object]:
    """Ask for every path at once; kill -9 the serve process group once ``after`` answers are
    in. Each request's outcome: its answer, or the error that cut it off."""
    limits = httpx.Limits(max_connections=len(paths))
    async with httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=120) as client:
        tasks = [asyncio.create_task(client.get(path)) for path in paths]
        pending: set[asyncio.Task[httpx.Response]] = set(tasks)
        while len(tasks) - len(pending) < after and pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert stack.proxy is not None
        stack.proxy.kill()  # SIGKILL to the whole group: the workers and their supervisor
        return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_killed_workers_leave_only_whole_files_and_mint_nothing_again(
    shared_engine: Engine, tmp_path: Path
) -> None:
    stack = store_stack(shared_engine, tmp_path)
    try:
        upload(stack.url, "crash", product_png(fill=(90, 60, 30)))
        minted = shared_engine.minted()
        outcomes = asyncio.run(crash_during(stack, CRASH_PATHS, after=5))
        cut = [o for o in outcomes if not isinstance(o, httpx.Response)]
        assert cut, "every derivation had finished before the kill: nothing was in flight"
        for path, outcome in zip(CRASH_PATHS, outcomes, strict=True):
            if isinstance(outcome, httpx.Response):  # answered before the kill: whole
                served_image(outcome, path.rsplit(".", 1)[1])
        assert unreadable(stack.data) == []

        stack.start()
        answers = fetch_all(stack.url, CRASH_PATHS)
        for path, answer in zip(CRASH_PATHS, answers, strict=True):
            width, height = path.split("/")[3].split("x")
            assert served_image(answer, path.rsplit(".", 1)[1]).size == (int(width), int(height))
        assert unreadable(stack.data) == []
        assert master_files(stack.data, "crash") and derived_files(stack.data)
        assert shared_engine.minted() == minted
    finally:
        stack.stop()
