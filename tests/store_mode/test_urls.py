"""Variant URL spellings: one spelling per variant in store mode; what redirect mode refuses."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import Engine, product_png, register
from tests.store_mode.conftest import Stack, served_image, upload

pytestmark = pytest.mark.slow

CYAN = (20, 180, 190)


def location(answer: httpx.Response) -> str:
    """The path (and query) a redirect points at, whatever base URL it is spelled with."""
    target = urlsplit(answer.headers["location"])
    return target.path + (f"?{target.query}" if target.query else "")


def follow(client: httpx.Client, path: str, hops: int = 2) -> tuple[list[int], str]:
    """The statuses along the 308s from ``path``, and the path the last one points at."""
    statuses = []
    for _ in range(hops + 1):
        answer = client.get(path)
        statuses.append(answer.status_code)
        if answer.status_code != 308:
            return statuses, path
        path = location(answer)
    return statuses, path


@pytest.mark.parametrize(
    ("asked", "canonical"),
    [
        ("200x200-pad/ffffff.png", "200x200/ffffff.png"),  # the default fit, named
        ("200x200/ffffff.jpeg", "200x200/ffffff.jpg"),
        ("100x100@2x/ffffff.png", "200x200/ffffff.png"),
        ("100x100-cover@2x/ffffff.png", "200x200-cover/ffffff.png"),
        ("100x100-contain@2x/FFF.webp", "200x200-contain/ffffff.webp"),
        ("100x100-pad@2x/ffffff.png", "200x200/ffffff.png"),
    ],
)
def test_store_mode_redirects_every_spelling_to_one(
    store: Stack, asked: str, canonical: str
) -> None:
    upload(store.url, "spelled", product_png(fill=CYAN))
    with httpx.Client(base_url=store.url, timeout=30) as client:
        first = client.get(f"/img/spelled/{asked}")
        assert first.status_code == 308, first.text
        statuses, final = follow(client, f"/img/spelled/{asked}")
        assert final == f"/img/spelled/{canonical}"
        assert statuses[-1] == 200
        served_image(client.get(final), canonical.rsplit(".", 1)[1])


@pytest.mark.parametrize(
    ("segment", "size"),
    [("200x120-cover", (200, 120)), ("200x120-contain", (160, 120)), ("200x120", (200, 120))],
)
def test_store_mode_serves_each_fit_at_its_canonical_spelling(
    store: Stack, segment: str, size: tuple[int, int]
) -> None:
    upload(store.url, "spelled", product_png(fill=CYAN))
    answer = httpx.get(f"{store.url}/img/spelled/{segment}/ffffff.png", timeout=30)
    assert served_image(answer, "png").size == size


@pytest.mark.parametrize(
    "asked", ["200x200-fill/ffffff.png", "200x200-/ffffff.png", "200x200/transparent.jpg"]
)
def test_store_mode_refuses_what_no_spelling_means(store: Stack, asked: str) -> None:
    answer = httpx.get(f"{store.url}/img/spelled/{asked}", timeout=30)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) >= {"error", "message"}


@pytest.fixture(scope="module")
def redirecting(shared_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A proxy with PROXY_MODE unset (redirect mode), one worker, an image registered."""
    stack = Stack(shared_engine, tmp_path_factory.mktemp("redirect"), workers=1).start()
    try:
        unique = shared_engine.upload(product_png(fill=CYAN))
        register(stack.url, "spelled", unique, (800, 600))
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize(
    ("asked", "code"),
    [
        ("200x200-pad/ffffff.png", "fit_needs_store_mode"),
        ("200x200-cover/ffffff.jpg", "fit_needs_store_mode"),
        ("100x100-cover@2x/ffffff.jpg", "fit_needs_store_mode"),
        ("200x200/ffffff.avif", "format_needs_store_mode"),
        ("200x200-contain/transparent.avif", "format_needs_store_mode"),
    ],
)
def test_redirect_mode_refuses_exact_frames_and_avif(
    redirecting: Stack, asked: str, code: str
) -> None:
    minted = redirecting.engine.minted()
    answer = httpx.get(f"{redirecting.url}/img/spelled/{asked}", timeout=30)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == code
    # the spec's words for a fit; a format's message must at least name the mode
    wanted = "exact frames need PROXY_MODE=store" if code.startswith("fit") else "store"
    assert wanted in body["message"]
    assert redirecting.engine.minted() == minted


def test_redirect_mode_redirects_its_default_fit_named(redirecting: Stack) -> None:
    answer = httpx.get(f"{redirecting.url}/img/spelled/200x200-contain/ffffff.jpg", timeout=30)
    assert answer.status_code == 308, answer.text
    assert location(answer) == "/img/spelled/200x200/ffffff.jpg"
