"""deploy/varnish/default.vcl with a real varnishd in front of a real ``cutproxy serve``."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cdn.conftest import AUTH, JSON
from tests.cdn.stack import (
    Stack,
    check_no_5xx_is_kept,
    check_one_copy_per_format,
    get_many,
    start_demo_proxy,
    stop,
    wait_for,
)
from tests.components import find
from tests.servers import REPO, free_port

VARNISHD = find("varnishd")
VCL = REPO / "deploy" / "varnish" / "default.vcl"

pytestmark = [pytest.mark.slow, pytest.mark.needs("varnishd")]


def vcl_for(port: int, directory: Path) -> Path:
    """The shipped VCL with its backend pointed at the proxy's loopback port."""
    text = VCL.read_text()
    assert '.host = "proxy";' in text and '.port = "8080";' in text
    text = text.replace('.host = "proxy";', '.host = "127.0.0.1";')
    text = text.replace('.port = "8080";', f'.port = "{port}";')
    path = directory / "default.vcl"
    path.write_text(text)
    return path


@contextlib.contextmanager
def running(tmp_path: Path, **env: str) -> Iterator[Stack]:
    """The shipped VCL in a real varnishd in front of ``cutproxy serve --demo`` (``env``)."""
    assert VARNISHD is not None
    varnish_port = free_port()
    proxy = start_demo_proxy(
        tmp_path,
        PROXY_CDN_PURGE_URL=f"http://127.0.0.1:{varnish_port}/",
        # The purge's repeat comes this long after: later than these tests look.
        PROXY_IMAGE_VIEW_TTL="60",
        **env,
    )
    varnish = subprocess.Popen(
        [
            VARNISHD,
            "-F",
            "-j",
            "none",
            "-n",
            str(tmp_path / "varnish"),
            "-a",
            f"127.0.0.1:{varnish_port}",
            "-f",
            str(vcl_for(proxy.port, tmp_path)),
            "-s",
            "malloc,32m",
            "-p",
            "ban_lurker_sleep=0.01",
        ],
        stdout=(tmp_path / "varnish.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    front = f"http://127.0.0.1:{varnish_port}"
    try:
        wait_for(front, varnish, tmp_path / "varnish.log")
        yield Stack(proxy, varnish, front)
    finally:
        stop(varnish)
        proxy.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running(tmp_path) as made:
        yield made


def test_varnish_keeps_one_copy_per_format_of_an_auto_url(tmp_path: Path) -> None:
    with running(tmp_path, PROXY_MODE="store") as store_stack:
        check_one_copy_per_format(store_stack)


def test_varnish_keeps_redirects_as_long_as_allowed_and_drops_them_on_purge(
    stack: Stack,
) -> None:
    path = "/img/demo/320x320/ffffff.jpg"
    answers = asyncio.run(get_many(stack.front + path, 100))
    assert {a.status_code for a in answers} == {302}
    assert len({a.headers["location"] for a in answers}) == 1
    assert stack.reached(path) == 1  # 100 requests, one reached the proxy
    assert sum(a.headers["x-cache"] == "HIT" for a in answers) >= 99
    last = answers[-1]
    assert "surrogate-key" not in last.headers and "cdn-cache-control" not in last.headers
    max_age = int(last.headers["cache-control"].split("max-age=")[1])
    assert 6800 < max_age <= 6900 and int(last.headers["age"]) < 60  # browsers count down

    # Apps get their own copy: JSON, cached as well.
    as_json = [httpx.get(stack.front + path, headers=JSON, timeout=10) for _ in range(3)]
    assert {a.status_code for a in as_json} == {200}
    assert as_json[0].json()["url"] == last.headers["location"]
    assert stack.reached(path) == 2
    assert httpx.get(stack.front + path, timeout=10).headers["x-cache"] == "HIT"

    # The admin drops the image's variants: the proxy bans its key, the next request is a miss.
    dropped = httpx.delete(f"{stack.proxy.url}/images/demo/variants", headers=AUTH, timeout=10)
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["cdn"]["ok"] is True
    after = httpx.get(stack.front + path, timeout=30)
    assert after.status_code == 302 and after.headers["x-cache"] == "MISS"
    assert after.headers["location"] != last.headers["location"]  # rendered anew
    assert stack.reached(path) == 3
    assert httpx.get(stack.front + path, timeout=10).headers["x-cache"] == "HIT"
    assert stack.reached(path) == 3

    # Other images keep their cached answers: bans match whole keys only.
    other = "/img/demo/160x160/ffffff.jpg"
    httpx.get(stack.front + other, timeout=30)
    ban = httpx.request("BAN", stack.front + "/", headers={"Surrogate-Key": "img-dem"}, timeout=5)
    assert ban.status_code == 200
    assert httpx.get(stack.front + other, timeout=10).headers["x-cache"] == "HIT"
    bad = httpx.request("BAN", stack.front + "/", headers={"Surrogate-Key": "a|b"}, timeout=5)
    assert bad.status_code == 400


def test_varnish_never_keeps_a_5xx_and_keeps_the_admin_api_away(stack: Stack) -> None:
    check_no_5xx_is_kept(stack)

    assert httpx.get(f"{stack.front}/metrics", timeout=5).status_code == 403
    assert (
        httpx.delete(f"{stack.front}/images/demo/variants", headers=AUTH, timeout=5).status_code
        == 403
    )
