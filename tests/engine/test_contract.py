"""The v3 token flow, status by status, in-process and on a real uvicorn over loopback."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from proxy.engine.app import PROCESS_PATH, TOKEN_PATH
from tests.engine.conftest import API_KEY, Engine, MakeEngine
from tests.engine.photos import photo_jpeg, png_claiming_size

PHOTO = photo_jpeg(size=(480, 360), box=(120, 80, 361, 281))
FILE_URL = re.compile(r"(.+)/files/([0-9a-f]{32})\.(png|jpg|webp)")


def message(answer: httpx.Response) -> str:
    return str(answer.json()["error"])


async def test_upload_then_reuse_renders_every_variant(engine: Engine) -> None:
    before = await engine.stats()
    first = await engine.mint([{"variant_name": "initial", "quality": "low"}])
    assert first.status_code == 200
    assert first.headers["x-credits-charged"] == "1.1"
    uploaded = await engine.process(first.json()["access_token"], PHOTO)
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    assert set(body) == {"unique_filename", "output_urls", "input_url"}
    assert set(body["output_urls"]) == {"initial"}

    second = await engine.mint(
        [
            {
                "variant_name": "high_res",
                "max_resolution": 4_000_000,
                "quality": "high",
                "autocrop": True,
            },
            {"variant_name": "red_bg", "background_color": "#FF5733", "format": "jpg"},
        ],
        unique_filename=body["unique_filename"],
    )
    assert second.status_code == 200
    assert second.headers["x-credits-charged"] == "1.85"  # 1.1 + 0.25 + 0.5 autocrop
    reused = await engine.process(second.json()["access_token"])  # the token alone
    assert reused.status_code == 200, reused.text
    assert reused.json()["unique_filename"] == body["unique_filename"]
    assert "input_url" not in reused.json()
    urls = reused.json()["output_urls"]
    assert set(urls) == {"high_res", "red_bg"}

    for url, content_type in (
        (urls["high_res"], "image/png"),
        (urls["red_bg"], "image/jpeg"),
        (body["input_url"], "image/jpeg"),
    ):
        match = FILE_URL.fullmatch(url)
        assert match and match[1] == engine.settings.base_url
        got = await engine.client.get(url)
        assert got.status_code == 200
        assert got.headers["content-type"] == content_type
        assert int(got.headers["content-length"]) == len(got.content) > 0
        head = await engine.client.head(url)
        assert head.status_code == 200 and head.content == b""
    assert (await engine.client.get(body["input_url"])).content == PHOTO

    after = await engine.stats()
    assert after["tokens_minted"] - before["tokens_minted"] == 2
    assert after["variants_minted"] - before["variants_minted"] == 3
    assert after["variants_rendered"] - before["variants_rendered"] == 3
    assert after["uploads"] - before["uploads"] == 1
    assert after["credits_charged"] - before["credits_charged"] == pytest.approx(2.95)
    assert after["last_token_variants"] == 2


INVALID_MINTS: list[tuple[Any, str]] = [
    ({}, "output_variants"),
    ({"output_variants": []}, "output_variants"),
    ({"output_variants": [{"format": "png"}]}, "output_variants[0].variant_name"),
    (
        {"output_variants": [{"variant_name": "a"}, {"variant_name": "a"}]},
        "output_variants[1].variant_name",
    ),
    (
        {"output_variants": [{"variant_name": "a", "max_resolution": 0}]},
        "output_variants[0].max_resolution",
    ),
    (
        {"output_variants": [{"variant_name": "a", "max_resolution": 12_000_001}]},
        "output_variants[0].max_resolution",
    ),
    ({"output_variants": [{"variant_name": "a", "format": "gif"}]}, "output_variants[0].format"),
    (
        {"output_variants": [{"variant_name": "a", "quality": "best"}]},
        "output_variants[0].quality",
    ),
    (
        {"output_variants": [{"variant_name": "a", "background_color": "red"}]},
        "output_variants[0].background_color",
    ),
    (
        {"output_variants": [{"variant_name": "a", "output_compression": 101}]},
        "output_variants[0].output_compression",
    ),
    (
        {"output_variants": [{"variant_name": "a", "autocrop": "yes"}]},
        "output_variants[0].autocrop",
    ),
    (
        {"output_variants": [{"variant_name": "a", "crop_margin": 5}]},
        "output_variants[0].crop_margin",
    ),
    ({"output_variants": [{"variant_name": "a"}], "bg_image_url": "x"}, "bg_image_url"),
    ({"output_variants": [{"variant_name": "a"}], "unique_filename": 7}, "unique_filename"),
    ([1, 2], "body"),
]


async def test_invalid_mints_are_400_naming_the_field(engine: Engine) -> None:
    before = await engine.stats()
    for body, field in INVALID_MINTS:
        answer = await engine.mint(body=body)
        assert answer.status_code == 400, body
        assert message(answer).startswith(f"{field}:"), (body, message(answer))
    not_json = await engine.client.post(
        TOKEN_PATH, content=b"{nope", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert not_json.status_code == 400 and message(not_json).startswith("body:")
    after = await engine.stats()
    assert after["tokens_minted"] == before["tokens_minted"]
    assert after["credits_charged"] == before["credits_charged"]
    rejected = after["rejections"]["400"] - before["rejections"].get("400", 0)
    assert rejected == len(INVALID_MINTS) + 1


async def test_unusable_images_are_400_and_leave_the_token_usable(engine: Engine) -> None:
    token = await engine.token()
    for data, why in (
        (b"GIF89a not what we take", "not a PNG, JPEG or WebP"),
        (PHOTO[: len(PHOTO) // 3], "corrupt or truncated"),
        (png_claiming_size(10_000, 8_500), "10000x8500 is over the 80,000,000 pixel limit"),
        (png_claiming_size(100_000, 100_000), "pixel limit (decompression bomb)"),
    ):
        answer = await engine.process(token, data)
        assert answer.status_code == 400
        assert message(answer).startswith("image:") and why in message(answer)
    missing = await engine.process(token)
    assert missing.status_code == 400 and message(missing).startswith("image:")
    assert (await engine.process(token, PHOTO)).status_code == 200


async def test_api_key_missing_or_wrong_is_401(engine: Engine) -> None:
    before = (await engine.stats())["rejections"].get("401", 0)
    for key in (None, "not-the-key", API_KEY + "-but-longer", "engine-dev-key"):
        answer = await engine.mint(key=key)
        assert answer.status_code == 401
        assert message(answer).startswith("Authorization:")
    wrong_scheme = await engine.client.post(
        TOKEN_PATH, json={}, headers={"Authorization": f"Basic {API_KEY}"}
    )
    assert wrong_scheme.status_code == 401
    assert (await engine.stats())["rejections"]["401"] - before == 5


def _forge(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["v"][0]["max_resolution"] = 12_000_000  # a bigger render than was paid for
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_forged_tokens_are_401(engine: Engine) -> None:
    token = await engine.token([{"variant_name": "small", "max_resolution": 10_000}])
    for bad in (_forge(token), token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "x.y", "ü.ü.ü"):
        answer = await engine.process(bad, PHOTO)
        assert answer.status_code == 401, bad
        assert message(answer).startswith("token:")
        assert bad not in answer.text
    missing = await engine.client.post(PROCESS_PATH, files={"image": ("p.jpg", PHOTO)})
    assert missing.status_code == 401


async def test_a_token_works_once(engine: Engine) -> None:
    token = await engine.token()
    assert (await engine.process(token, PHOTO)).status_code == 200
    again = await engine.process(token, PHOTO)
    assert again.status_code == 401
    assert message(again) == "token: already used"


async def test_reuse_allowed_when_single_use_is_off(make_engine: MakeEngine) -> None:
    engine = await make_engine(single_use=False)
    token = await engine.token()
    assert (await engine.process(token, PHOTO)).status_code == 200
    assert (await engine.process(token, PHOTO)).status_code == 200


async def test_an_expired_token_is_401(engine: Engine) -> None:
    token = await engine.token()
    await engine.advance(engine.settings.token_ttl + 0.2)
    answer = await engine.process(token, PHOTO)
    assert answer.status_code == 401
    assert message(answer) == "token: expired"


async def test_uploads_and_outputs_expire_after_retention(engine: Engine) -> None:
    body = await engine.render([{"variant_name": "v"}], PHOTO)
    unique_filename, url = body["unique_filename"], body["output_urls"]["v"]
    lead = min(engine.settings.token_ttl, engine.settings.retention) / 2
    await engine.advance(engine.settings.retention - lead)
    assert (await engine.client.get(url)).status_code == 200
    late_token = await engine.token(unique_filename=unique_filename)  # minted just in time

    await engine.advance(lead + 0.2)
    assert (await engine.client.get(url)).status_code == 404
    assert (await engine.client.get(body["input_url"])).status_code == 404
    gone = await engine.mint(unique_filename=unique_filename)
    assert gone.status_code == 404
    assert message(gone).startswith("unique_filename:")
    late = await engine.process(late_token)
    assert late.status_code == 404
    assert message(late).startswith("unique_filename:")


async def test_unknown_names_are_404(engine: Engine) -> None:
    assert (await engine.mint(unique_filename="0f3e8a4c-no-such-upload")).status_code == 404
    for name in ("0" * 32 + ".png", "../state/cache.db", "x.png"):
        assert (await engine.client.get(f"/files/{name}")).status_code == 404
    assert (await engine.client.get("/nowhere")).status_code == 404


async def test_api_routes_are_post_only(engine: Engine) -> None:
    for path in (TOKEN_PATH, PROCESS_PATH):
        answer = await engine.client.get(path)
        assert answer.status_code == 405
        assert "POST" in answer.headers["allow"]


async def test_credit_balance_runs_out_with_402(make_engine: MakeEngine) -> None:
    engine = await make_engine(starting_balance=2.5)
    first = await engine.mint([{"variant_name": "a"}, {"variant_name": "b"}])  # 1.35
    assert first.status_code == 200
    assert first.headers["x-credits-remaining"] == "1.15"
    refused = await engine.mint([{"variant_name": "a", "autocrop": True}])  # 1.6
    assert refused.status_code == 402
    assert "1.6" in message(refused)
    small = await engine.mint([{"variant_name": "a", "max_resolution": 250_000}])  # 0.5
    assert small.status_code == 200
    stats = await engine.stats()
    assert stats["credits_charged"] == pytest.approx(1.85)
    assert stats["balance"] == pytest.approx(0.65)
    assert stats["tokens_minted"] == 2
    assert stats["rejections"] == {"402": 1}


async def test_uploads_over_the_limit_are_413(make_engine: MakeEngine) -> None:
    engine = await make_engine(max_upload_mb=0.05)
    big = photo_jpeg(size=(900, 700), box=(100, 100, 800, 600))
    assert len(big) > 0.05 * 1024 * 1024 + 64 * 1024
    token = await engine.token()
    declared = await engine.process(token, big)
    assert declared.status_code == 413
    assert message(declared).startswith("image:")

    async def chunks() -> Any:  # no Content-Length: counted while reading
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
        yield token.encode() + b"\r\n" + boundary
        yield b'\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n\r\n'
        for start in range(0, len(big), 16_384):
            yield big[start : start + 16_384]
        yield b"\r\n" + boundary + b"--\r\n"

    streamed = await engine.client.post(
        PROCESS_PATH,
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert streamed.status_code == 413
    # Just over the limit but inside the form allowance: the image itself is measured.
    limit = int(0.05 * 1024 * 1024)
    padded = PHOTO + b"\0" * (limit + 10 - len(PHOTO))
    assert (await engine.process(token, padded)).status_code == 413
    assert (await engine.process(token, PHOTO)).status_code == 200  # the token survived
    assert (await engine.stats())["rejections"]["413"] == 3


async def test_rate_limit_is_429_with_retry_after(make_engine: MakeEngine) -> None:
    engine = await make_engine(rate_limit_per_minute=3)
    for _ in range(3):
        assert (await engine.mint()).status_code == 200
    limited = await engine.mint()
    assert limited.status_code == 429
    retry_after = limited.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert (await engine.client.post(PROCESS_PATH, data={"token": "x"})).status_code == 429
    assert (await engine.stats())["rejections"]["429"] == 2
    if engine.transport == "asgi":
        await engine.advance(int(retry_after))
        assert (await engine.mint()).status_code == 200


async def test_injected_errors_and_latency(engine: Engine) -> None:
    assert (await engine.faults(key=None, error_rate=1.0)).status_code == 401
    assert (await engine.faults(error_rate=2)).status_code == 400
    for number in (b"NaN", b"Infinity"):  # what Python's json reads, and no delay is
        body = b'{"process_latency": %s}' % number
        auth = {"Authorization": f"Bearer {engine.settings.api_key}"}
        refused = await engine.client.put("/_engine/faults", content=body, headers=auth)
        assert refused.status_code == 400, refused.text
    before = (await engine.stats())["rejections"].get("502", 0)
    changed = await engine.faults(error_rate=1.0, error_status=502)
    assert changed.json()["error_rate"] == 1.0
    assert (await engine.mint()).status_code == 502
    assert (await engine.process("whatever", PHOTO)).status_code == 502
    assert (await engine.stats())["rejections"]["502"] - before == 2

    await engine.faults(error_rate=0.0, token_latency=0.3)
    started = anyio.current_time()
    assert (await engine.mint()).status_code == 200
    assert anyio.current_time() - started >= 0.3
    await engine.faults(token_latency=0)


async def test_down_engine_answers_nothing(engine: Engine) -> None:
    token = await engine.token()
    assert (await engine.faults(mode="down")).json()["mode"] == "down"
    expected = httpx.ConnectError if engine.transport == "asgi" else httpx.TransportError
    with pytest.raises(expected):
        await engine.mint()
    with pytest.raises(expected):
        await engine.process(token, PHOTO)
    assert (await engine.client.get("/_engine/health")).status_code == 200
    await engine.faults(mode="ok")
    assert (await engine.process(token, PHOTO)).status_code == 200


async def test_hanging_engine_never_answers(engine: Engine) -> None:
    await engine.faults(mode="hang")
    started = anyio.current_time()
    if engine.transport == "asgi":
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):  # ASGITransport enforces no timeout of its own
                await engine.mint()
    else:
        with pytest.raises(httpx.ReadTimeout):
            await engine.client.post(TOKEN_PATH, json={}, timeout=0.3)
    assert anyio.current_time() - started < 5
    await engine.faults(mode="ok")
    assert (await engine.mint()).status_code == 200


@pytest.mark.parametrize("style", ["error", "detail", "errors", "text"])
async def test_error_bodies_come_in_every_documented_shape(
    asgi_engine_factory: Callable[..., Engine], style: str
) -> None:
    engine = asgi_engine_factory(error_style=style)
    answer = await engine.mint(key="sekrit-guess-123")
    assert answer.status_code == 401
    assert "sekrit-guess-123" not in answer.text
    text = "Authorization: invalid API key"
    if style == "text":
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.text == text
    elif style == "errors":
        assert answer.json() == {"errors": [{"title": text, "code": "unauthorized"}]}
    else:
        assert answer.json()[style] == text
    not_allowed = await engine.client.get(TOKEN_PATH)
    assert not_allowed.status_code == 405
    assert "Method Not Allowed" in not_allowed.text  # the same shape for routing errors


async def test_no_redirect_takes_its_host_from_the_request(engine: Engine) -> None:
    # Starlette's trailing-slash redirect would answer 307 to http://evil.example/...
    for path in (
        "/files/0123456789abcdef0123456789abcdef.png/",
        "/_engine/stats/",
        "/stats/",
        TOKEN_PATH.rstrip("/"),
    ):
        answer = await engine.client.get(path, headers={"Host": "evil.example"})
        assert "location" not in answer.headers, path
        assert answer.status_code == 404, path
