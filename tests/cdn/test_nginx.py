"""deploy/nginx/cutproxy.conf with a real nginx in front of a real ``cutproxy serve``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cdn.conftest import JSON
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

NGINX = find("nginx")
CONF = REPO / "deploy" / "nginx" / "cutproxy.conf"
BROWSER = {"Accept": "image/avif,image/webp,*/*"}
BROWSER_MAX_AGE = 300
HIDDEN = ("surrogate-key", "cache-tag", "surrogate-control", "cdn-cache-control")

pytestmark = [pytest.mark.slow, pytest.mark.needs("nginx")]


def _max_age(cache_control: str) -> int:
    found = re.search(r"(?:^|[,\s])max-age=(\d+)", cache_control)
    assert found, cache_control
    return int(found.group(1))


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"deploy/nginx/cutproxy.conf no longer has {old!r}"
    return text.replace(old, new)


def conf_for(nginx_port: int, proxy_port: int, directory: Path) -> Path:
    """The shipped server block on loopback ports, inside a top-level config of its own."""
    site = CONF.read_text()
    site = _replace(site, "listen 80;", f"listen 127.0.0.1:{nginx_port};")
    site = _replace(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{proxy_port};")
    site = _replace(
        site, "proxy_cache_path /var/cache/nginx/cutproxy ", f"proxy_cache_path {directory}/cache "
    )
    (directory / "cutproxy.conf").write_text(site)
    temp = {
        name: directory / "temp" / name
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp_path
    top = directory / "nginx.conf"
    top.write_text(
        f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log;\n"
        "events {}\n"
        "http {\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + f"    access_log {directory}/access.log;\n"
        f"    include {directory}/cutproxy.conf;\n"
        "}\n"
    )
    return top


@contextlib.contextmanager
def running(tmp_path: Path, **env: str) -> Iterator[Stack]:
    """The shipped config in a real nginx in front of ``cutproxy serve --demo`` (``env``)."""
    assert NGINX is not None
    # nginx sends no Age: docs/cdn.md asks for a short browser max-age behind it.
    proxy = start_demo_proxy(tmp_path, PROXY_BROWSER_MAX_AGE=str(BROWSER_MAX_AGE), **env)
    nginx_port = free_port()
    conf = conf_for(nginx_port, proxy.port, tmp_path)
    # -e: the error log nginx opens before it has read the config.
    args = [NGINX, "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"), "-c", str(conf)]
    nginx: subprocess.Popen[bytes] | None = None
    try:
        checked = subprocess.run([*args, "-t"], capture_output=True, timeout=30)
        assert checked.returncode == 0, checked.stderr.decode(errors="replace")
        nginx = subprocess.Popen(
            args,
            stdout=(tmp_path / "nginx.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(f"http://127.0.0.1:{nginx_port}", nginx, tmp_path / "error.log")
        yield Stack(proxy, nginx, f"http://127.0.0.1:{nginx_port}")
    finally:
        if nginx is not None:
            stop(nginx)
        proxy.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running(tmp_path) as made:
        yield made


def test_nginx_keeps_one_copy_per_format_of_an_auto_url(tmp_path: Path) -> None:
    with running(tmp_path, PROXY_MODE="store") as store_stack:
        check_one_copy_per_format(store_stack)


def test_nginx_sends_one_request_per_variant_and_keeps_json_apart(stack: Stack) -> None:
    path = "/img/demo/320x320/ffffff.jpg"
    answers = asyncio.run(get_many(stack.front + path, 100, headers=BROWSER))
    assert {a.status_code for a in answers} == {302}
    assert len({a.headers["location"] for a in answers}) == 1
    assert stack.reached(path) == 1  # 100 requests, one reached the proxy
    assert sum(a.headers["x-cache"] == "HIT" for a in answers) >= 90
    later = httpx.get(stack.front + path, headers=BROWSER, timeout=10)
    assert later.status_code == 302 and later.headers["x-cache"] == "HIT"
    for answer in (answers[0], later):
        assert not [name for name in HIDDEN if name in answer.headers]
        # No Age from nginx: the browser's lifetime must be short whatever the copy's age.
        assert 0 < _max_age(answer.headers["cache-control"]) <= BROWSER_MAX_AGE

    # Apps get their own copy: JSON, cached as well, not the redirect.
    as_json = [httpx.get(stack.front + path, headers=JSON, timeout=10) for _ in range(3)]
    assert {a.status_code for a in as_json} == {200}
    assert as_json[0].json()["url"] == later.headers["location"]
    assert [a.headers["x-cache"] for a in as_json[1:]] == ["HIT", "HIT"]
    assert stack.reached(path) == 2

    # A browser still gets the redirect, from the cache.
    browser = httpx.get(stack.front + path, headers=BROWSER, timeout=10)
    assert browser.status_code == 302 and browser.headers["x-cache"] == "HIT"
    assert browser.headers["location"] == later.headers["location"]


def test_nginx_never_keeps_a_5xx_and_keeps_the_admin_api_away(stack: Stack) -> None:
    check_no_5xx_is_kept(stack)

    for private in ("/metrics", "/images/demo", "/admin/costs"):
        assert httpx.get(stack.front + private, timeout=5).status_code == 403, private
    assert httpx.get(f"{stack.front}/health", timeout=5).status_code == 200
