"""What a browser, a CDN and an app see on the wire: lifetimes, tags, Vary, JSON, density."""

from __future__ import annotations

import httpx
import pytest

from proxy.serving.cdn import CachePolicy
from proxy.settings import Settings, SettingsError
from proxy.url.decision import wants_json
from tests.cdn.conftest import AUTH, JSON, AppFactory, Clock, image_size, minted, photo


def directives(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        out[name] = arg
    return out


async def test_a_redirect_is_tagged_and_lives_no_longer_than_its_output(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/img/demo/640x640/ffffff.jpg")
    assert answer.status_code == 302
    cache = directives(answer.headers["cache-control"])
    assert "public" in cache
    life = int(cache["max-age"])
    assert 7200 - 300 - 5 <= life <= 7200 - 300  # the output's 2 h, less the safety margin
    assert "s-maxage" not in cache  # same lifetime for both audiences: no need to repeat it
    assert answer.headers["cdn-cache-control"] == f"max-age={life}"
    assert answer.headers["surrogate-control"] == f"max-age={life}"
    assert answer.headers["surrogate-key"] == "img-demo img-demo.ffffff"
    assert answer.headers["cache-tag"] == "img-demo,img-demo.ffffff"
    assert answer.headers["vary"] == "Accept"


async def test_browser_and_cdn_lifetimes_are_separate_and_both_capped_by_the_url(
    make_app: AppFactory, clock: Clock
) -> None:
    async with make_app(browser_max_age=300, cdn_max_age=3600) as (_, client):
        fresh = await client.get("/img/demo/320x320/ffffff.jpg")
        assert directives(fresh.headers["cache-control"]) == {
            "public": "",
            "max-age": "300",
            "s-maxage": "3600",
        }
        assert fresh.headers["cdn-cache-control"] == "max-age=3600"
        clock.now += 6800  # the output URL has 100 s of serving life left
        late = await client.get("/img/demo/320x320/ffffff.jpg")
        assert late.headers["location"] == fresh.headers["location"]
        remaining = 7200 - 300 - 6800
        assert directives(late.headers["cache-control"]) == {
            "public": "",
            "max-age": str(remaining),
        }
        assert late.headers["cdn-cache-control"] == f"max-age={remaining}"


async def test_cdn_max_age_zero_keeps_answers_out_of_shared_caches(make_app: AppFactory) -> None:
    async with make_app(cdn_max_age=0) as (_, client):
        answer = await client.get("/img/demo/320x320/ffffff.jpg")
        assert answer.headers["cache-control"].startswith("private, max-age=")
        assert answer.headers["cdn-cache-control"] == "no-store"
        assert answer.headers["surrogate-control"] == "no-store"


async def test_a_404_is_short_lived_and_tagged_so_an_upload_can_purge_it(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/img/sku-9/320x320/ffffff.jpg")
    assert answer.status_code == 404
    assert answer.headers["cache-control"] == "public, max-age=60"
    assert answer.headers["surrogate-key"] == "img-sku-9 img-sku-9.ffffff"
    assert "vary" not in answer.headers


async def test_a_5xx_is_never_stored_by_anyone(make_app: AppFactory) -> None:
    async with make_app(retry_attempts=1) as (_, client):
        faults = await client.put("/_engine/faults", json={"mode": "down"}, headers=AUTH)
        assert faults.status_code == 200, faults.text
        answer = await client.get("/img/demo/321x321/ffffff.jpg")
        assert answer.status_code >= 500
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["cdn-cache-control"] == "no-store"
        assert answer.headers["surrogate-control"] == "no-store"


# --- apps: JSON instead of the redirect --------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json", True),
        ("application/json, */*;q=0.5", True),
        ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", False),  # Chrome's <img>
        ("text/html,application/xhtml+xml,*/*;q=0.8", False),  # a navigation
        ("*/*", False),
        ("image/png, application/json;q=0.5", False),
        ("application/json;q=0", False),
        (None, False),
    ],
)
def test_only_clients_asking_for_json_get_it(accept: str | None, expected: bool) -> None:
    assert wants_json(accept) is expected


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("/img/{id}/640x640/ffffff.jpg", "jpg"),  # a tall original in a square box
        ("/img/{id}/1280x480/transparent.png", "png"),  # height-bound
        ("/img/{id}/2000x3000/ffffff.webp", "webp"),  # larger than the original: no upscale
        ("/img/{id}/333x777/0a0b0c.jpg", "jpg"),  # odd numbers: the floors must agree
    ],
)
async def test_json_reports_the_size_the_renderer_really_makes(
    client: httpx.AsyncClient, path: str, fmt: str
) -> None:
    put = await client.put(
        "/images/tall", content=photo((900, 1201)), headers={**AUTH, "Content-Type": "image/png"}
    )
    assert put.status_code == 201, put.text
    answer = await client.get(path.format(id="tall"), headers=JSON)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["vary"] == "Accept"
    assert answer.headers["surrogate-key"].split() == [
        "img-tall",
        f"img-tall.{path.split('/')[4].split('.')[0]}",
    ]
    body = answer.json()
    assert set(body) == {"url", "width", "height", "format", "expires_at", "size_exact"}
    assert body["format"] == fmt and body["size_exact"] is True
    redirect = await client.get(path.format(id="tall"))
    assert redirect.headers["location"] == body["url"]  # the same output, one mint
    image = await client.get(body["url"])
    assert image_size(image.content) == (body["width"], body["height"])
    assert body["expires_at"].endswith("Z")


async def test_json_for_an_image_of_unknown_size_reports_the_box(client: httpx.AsyncClient) -> None:
    upload = await client.get("/images/demo", headers=AUTH)
    unique = upload.json()["unique_filename"]
    registered = await client.put("/images/bare", json={"unique_filename": unique}, headers=AUTH)
    assert registered.status_code == 201, registered.text
    body = (await client.get("/img/bare/500x300/ffffff.jpg", headers=JSON)).json()
    assert (body["width"], body["height"], body["size_exact"]) == (500, 300, False)
    # Without the original's aspect ratio the box is only a pixel budget: one side of the
    # output may be longer than the box's (docs/mobile.md says so).
    width, height = image_size((await client.get(body["url"])).content)
    assert width * height <= 500 * 300


# --- density --------------------------------------------------------------------------------


async def test_a_density_suffix_is_a_308_to_the_pixel_size(client: httpx.AsyncClient) -> None:
    before = await minted(client)
    answer = await client.get("/img/demo/200x150@2x/ffffff.jpg")
    assert answer.status_code == 308
    assert answer.headers["location"] == "/img/demo/400x300/ffffff.jpg"
    assert "max-age=" in answer.headers["cache-control"]
    assert await minted(client) == before  # the 308 costs nothing
    followed = await client.get("/img/demo/200x150@2x/ffffff.jpg", follow_redirects=True)
    assert image_size(followed.content) == (400, 300)
    as_json = await client.get(
        "/img/demo/160x160@4x/ffffff.jpg", headers=JSON, follow_redirects=True
    )
    assert (as_json.json()["width"], as_json.json()["height"]) == (640, 480)


@pytest.mark.parametrize("size", ["200x150@5x", "200x150@0x", "200x150@2.5x", "2000x2000@3x"])
async def test_densities_outside_1x_to_4x_or_the_limits_are_refused(
    client: httpx.AsyncClient, size: str
) -> None:
    answer = await client.get(f"/img/demo/{size}/ffffff.jpg")
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_size"


# --- the policy and its settings ---------------------------------------------------------------


def test_no_cap_outlives_the_output_url() -> None:
    policy = CachePolicy(browser_max_age=600, shared_max_age=10_000)
    assert policy.output(300.7) == {
        "Cache-Control": "public, max-age=300",
        "CDN-Cache-Control": "max-age=300",
        "Surrogate-Control": "max-age=300",
    }
    assert policy.output(0.9)["Cache-Control"] == "no-store"  # under a second left: nobody


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PROXY_CDN_PURGE_STYLE": "akamai"}, "PROXY_CDN_PURGE_STYLE"),
        ({"PROXY_CDN_PURGE_URL": "varnish:6081"}, "PROXY_CDN_PURGE_URL"),
        (
            {
                "PROXY_CDN_PURGE_URL": "https://api.fastly.com/service/x/purge",
                "PROXY_CDN_PURGE_STYLE": "fastly",
            },
            "PROXY_CDN_PURGE_TOKEN",
        ),
        ({"PROXY_BROWSER_MAX_AGE": "-1"}, "PROXY_BROWSER_MAX_AGE"),
    ],
)
def test_bad_cdn_settings_name_their_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
