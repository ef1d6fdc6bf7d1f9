"""Store mode's memory hits in the raw-ASGI hit path (proxy/serving/hitpath.py): the same
answer the full stack gives, byte for byte and header for header, and never an old version.

Which path answered is read from ``cutproxy_hit_path_answers_total``, counted by the hit path
alone. The full stack's answer to the same request is taken behind a path prefix
(``root_path``), which the hit path always leaves to the router.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.ops.conftest import JsonLines, scrape
from tests.serving.conftest import AUTH, BASE, MakeRig, Rig, photo

URL = "/img/mug/640x640/ffffff.jpg"
PREFIX = "/cdn"


async def answered_by_hit_path(rig: Rig) -> int:
    return int((await scrape(rig.client)).value("cutproxy_hit_path_answers_total"))


def headers(answer: httpx.Response) -> list[tuple[str, str]]:
    """The answer's headers in order, but its request id (one per request)."""
    return [(k, v) for k, v in answer.headers.multi_items() if k != "x-request-id"]


@pytest.fixture
async def stack(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests the full stack answers (behind a path prefix)."""
    transport = httpx.ASGITransport(app=rig.app, root_path=PREFIX)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


async def test_a_memory_hit_is_answered_by_the_hit_path_as_the_stack_answered_it(
    rig: Rig,
) -> None:
    await rig.upload("mug", photo())
    derived = await rig.client.get(URL)  # derived: the full stack answers
    assert await answered_by_hit_path(rig) == 0
    hit = await rig.client.get(URL)  # now in this worker's memory tier
    assert await answered_by_hit_path(rig) == 1

    assert derived.status_code == hit.status_code == 200
    assert hit.content == derived.content
    assert headers(hit) == headers(derived)
    assert hit.headers["content-type"] == "image/jpeg"
    assert int(hit.headers["content-length"]) == len(hit.content)
    assert hit.headers["x-request-id"] != derived.headers["x-request-id"]
    given = await rig.client.get(URL, headers={"X-Request-ID": "order-1234"})
    assert given.headers["x-request-id"] == "order-1234"
    assert await answered_by_hit_path(rig) == 2


async def test_the_hit_paths_304_and_head_are_the_stacks(
    rig: Rig, stack: httpx.AsyncClient
) -> None:
    await rig.upload("mug", photo())
    etag = (await rig.client.get(URL)).headers["etag"]  # derived, kept in memory
    requests = [
        ("GET", {}),
        ("GET", {"If-None-Match": etag}),
        ("GET", {"If-None-Match": f'"other", W/{etag}'}),
        ("GET", {"If-None-Match": '"not-it"'}),
        ("HEAD", {}),
        ("HEAD", {"If-None-Match": etag}),
    ]
    for method, given in requests:
        before = await answered_by_hit_path(rig)
        full = await stack.request(method, PREFIX + URL, headers=given)
        assert await answered_by_hit_path(rig) == before  # the stack answered that one
        fast = await rig.client.request(method, URL, headers=given)
        assert await answered_by_hit_path(rig) == before + 1, (method, given)
        assert (fast.status_code, headers(fast), fast.content) == (
            full.status_code,
            headers(full),
            full.content,
        ), (method, given)
        expected = 304 if "If-None-Match" in given and given["If-None-Match"] != '"not-it"' else 200
        assert fast.status_code == expected
        if method == "HEAD" or expected == 304:
            assert fast.content == b""
        if expected == 304:
            assert fast.headers["etag"] == etag and "content-length" not in fast.headers


async def test_what_needs_more_than_the_memory_tier_goes_down_the_stack(rig: Rig) -> None:
    await rig.upload("mug", photo())
    await rig.client.get(URL)
    as_json = await rig.client.get(URL, headers={"Accept": "application/json"})
    spelled = await rig.client.get("/img/mug/640x640-pad/FFF.jpg")
    other = await rig.client.get("/img/mug/320x320/ffffff.jpg")  # not kept yet: derived
    assert await answered_by_hit_path(rig) == 0
    assert as_json.status_code == 200 and as_json.json()["etag"]
    assert spelled.status_code == 308
    assert other.status_code == 200


async def test_a_disk_tier_hit_is_the_full_stacks(store_rig: MakeRig) -> None:
    async with store_rig(variant_memory_mb=0) as rig:  # nothing kept in memory
        await rig.upload("mug", photo())
        derived = await rig.client.get(URL)
        again = await rig.client.get(URL)  # read off the disk tier
        assert await answered_by_hit_path(rig) == 0
        assert await rig.disk_keys("/img/mug/") != []
    assert again.status_code == 200 and again.content == derived.content
    assert headers(again) == headers(derived)


async def test_a_replaced_or_deleted_image_is_never_answered_from_the_hit_path(
    rig: Rig,
) -> None:
    await rig.upload("mug", photo(seed=1))
    old = await rig.client.get(URL)
    assert (await rig.client.get(URL)).content == old.content
    assert await answered_by_hit_path(rig) == 1

    await rig.upload("mug", photo(seed=2, colour=120))
    new = await rig.client.get(URL)
    assert await answered_by_hit_path(rig) == 1  # derived from the new master by the stack
    assert new.status_code == 200 and new.headers["etag"] != old.headers["etag"]
    assert new.content != old.content
    again = await rig.client.get(URL, headers={"If-None-Match": old.headers["etag"]})
    assert await answered_by_hit_path(rig) == 2  # the new bytes are kept now
    assert again.status_code == 200 and again.content == new.content

    deleted = await rig.client.delete("/images/mug", headers=AUTH)
    assert deleted.status_code == 200
    gone = await rig.client.get(URL)
    assert gone.status_code == 404 and gone.json()["error"]
    assert await answered_by_hit_path(rig) == 2


async def test_the_hit_paths_access_lines_name_the_status_and_the_memory_tier(
    rig: Rig, log_lines: JsonLines
) -> None:
    await rig.upload("mug", photo())
    etag = (await rig.client.get(URL)).headers["etag"]
    log_lines.lines.clear()
    hit = await rig.client.get(URL)
    await rig.client.head(URL, headers={"If-None-Match": etag})
    assert await answered_by_hit_path(rig) == 2
    lines = [json.loads(line) for line in log_lines.lines]
    requests = [line for line in lines if line["msg"] == "request" and line["path"] == URL]
    assert [(r["method"], r["status"], r["cache_tier"]) for r in requests] == [
        ("GET", 200, "memory"),
        ("HEAD", 304, "memory"),
    ]
    assert requests[0]["route"] == "/img/{image_id}/{size}/{filename}"
    assert requests[0]["request_id"] == hit.headers["x-request-id"]


async def test_an_auto_urls_hit_is_the_format_its_accept_gets(rig: Rig) -> None:
    await rig.upload("mug", photo())
    url = "/img/mug/320x320/ffffff.auto"
    webp = {"Accept": "image/webp,*/*"}
    derived = await rig.client.get(url, headers=webp)  # the stack picks webp and derives it
    hit = await rig.client.get(url, headers=webp)
    assert await answered_by_hit_path(rig) == 1
    assert hit.headers["content-type"] == "image/webp" and hit.content == derived.content
    assert headers(hit) == headers(derived) and hit.headers["vary"] == "Accept"
    # Another Accept names another format: not kept yet, so the stack derives it
    avif = await rig.client.get(url, headers={"Accept": "image/avif,image/webp,*/*"})
    plain = await rig.client.get(url, headers={"Accept": "*/*"})
    assert avif.headers["content-type"] == "image/avif"
    assert plain.headers["content-type"] == "image/jpeg"
    assert await answered_by_hit_path(rig) == 1
    again = await rig.client.get(url, headers={"Accept": "image/avif,image/webp,*/*"})
    assert again.content == avif.content and await answered_by_hit_path(rig) == 2
    metrics = await scrape(rig.client)
    assert metrics.value("cutproxy_hit_path_errors_total") == 0
