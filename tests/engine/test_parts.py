"""The engine's parts on their own: tokens, settings, shared state.

Its prices and sizes are the upstream contract's: tests/unit/test_contract.py checks them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from proxy.engine.app import create_engine_app
from proxy.engine.errors import UnauthorizedError
from proxy.engine.keys import key_path, load_or_create
from proxy.engine.ratelimit import ApiRateLimit
from proxy.engine.settings import EngineSettings
from proxy.engine.store import Store
from proxy.engine.tokens import TokenSigner
from proxy.engine.variants import OutputVariant
from proxy.envconfig import SettingsError
from tests.engine.conftest import ASGI_BASE, Clock
from tests.engine.photos import photo_jpeg


def test_tokens_are_signed_timed_and_opaque() -> None:
    clock = Clock()
    signer = TokenSigner(b"s" * 32, ttl=600, clock=clock)
    token, claims = signer.mint([OutputVariant("v")], unique_filename=None, credits=1.1)
    assert signer.verify(token) == claims
    other = TokenSigner(b"t" * 32, ttl=600, clock=clock)
    with pytest.raises(UnauthorizedError, match="signature"):
        other.verify(token)
    clock.now += 600
    with pytest.raises(UnauthorizedError, match="expired"):
        signer.verify(token)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}


def test_settings_come_from_the_environment_and_name_what_is_wrong() -> None:
    settings = EngineSettings.from_env(
        {
            "PROXY_ENGINE_TOKEN_TTL": "30",
            "PROXY_ENGINE_SINGLE_USE": "false",
            "PROXY_ENGINE_API_KEY": "k" * 20,
        },
        retention=60,
    )
    assert (settings.token_ttl, settings.single_use, settings.retention) == (30.0, False, 60.0)
    assert settings.api_key == "k" * 20 and settings.describe()["PROXY_ENGINE_API_KEY"] == "***"
    assert EngineSettings().api_key is None  # no key in the source: see the next test
    assert EngineSettings().retention == 7200 and EngineSettings().token_ttl == 600
    for environ, named in (
        ({"PROXY_ENGINE_RATE_LIMIT_PER_MINUTE": "0"}, "PROXY_ENGINE_RATE_LIMIT_PER_MINUTE"),
        ({"PROXY_ENGINE_ERROR_STYLE": "html"}, "PROXY_ENGINE_ERROR_STYLE"),
        ({"PROXY_ENGINE_PUBLIC_URL": "engine.local"}, "PROXY_ENGINE_PUBLIC_URL"),
        ({"PROXY_ENGINE_SECRET": "short"}, "PROXY_ENGINE_SECRET"),
    ):
        with pytest.raises(SettingsError, match=named):
            EngineSettings.from_env(environ)
    with pytest.raises(SettingsError, match="unknown"):
        EngineSettings.from_env({}, colour="red")


async def test_without_a_configured_key_each_data_dir_makes_its_own_private_one(
    tmp_path: Path,
) -> None:
    settings = EngineSettings(data_dir=tmp_path / "a", public_url=ASGI_BASE)
    app = create_engine_app(settings)
    path = key_path(settings.data_dir)
    key = path.read_text().strip()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(key) >= 32 and load_or_create(settings.data_dir) == key  # kept, not remade
    assert load_or_create(tmp_path / "b") != key  # another data dir, another key
    body = {"output_variants": [{"variant_name": "v"}]}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=ASGI_BASE
    ) as client:
        for given, status in (("engine-dev-key", 401), (key, 200)):
            auth = {"Authorization": f"Bearer {given}"}
            answer = await client.post("/api/v3/remove-bg/token/", json=body, headers=auth)
            assert answer.status_code == status
            assert key not in answer.text
    path.chmod(0o644)  # restored from a backup with loose permissions: tightened on read
    assert load_or_create(settings.data_dir) == key
    assert path.stat().st_mode & 0o777 == 0o600


def test_rate_limit_window_moves_with_the_clock(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path, retention=60, clock=clock)
    limit = ApiRateLimit(2, store.cache, clock)
    assert limit.hit() is None
    clock.now += 30
    assert limit.hit() is None
    assert limit.hit() == pytest.approx(30)  # the first hit leaves the window in 30 s
    clock.now += 30
    assert limit.hit() is None
    # A second limiter on the same data dir (another worker) sees the same window.
    assert ApiRateLimit(2, Store(tmp_path, retention=60, clock=clock).cache, clock).hit() == (
        pytest.approx(30)
    )


async def test_state_is_shared_by_apps_on_one_data_dir_and_survives_restarts(
    tmp_path: Path,
) -> None:
    settings = EngineSettings(data_dir=tmp_path, public_url=ASGI_BASE, starting_balance=5)

    def client() -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=create_engine_app(settings))
        return httpx.AsyncClient(transport=transport, base_url=ASGI_BASE)

    auth = {"Authorization": f"Bearer {load_or_create(tmp_path)}"}
    body = {"output_variants": [{"variant_name": "v"}]}
    async with client() as first, client() as second:
        token = (await first.post("/api/v3/remove-bg/token/", json=body, headers=auth)).json()
        files = {"image": ("p.jpg", photo_jpeg(size=(300, 200), box=(80, 50, 221, 151)))}
        processed = await second.post(
            "/v3/remove-bg/", data={"token": token["access_token"]}, files=files
        )
        assert processed.status_code == 200  # the generated secret is the same for both
    async with client() as restarted:
        stats = (await restarted.get("/_engine/stats")).json()
        assert stats["tokens_minted"] == 1 and stats["balance"] == pytest.approx(3.9)
        url = processed.json()["output_urls"]["v"]
        assert (await restarted.get(url)).status_code == 200


def test_sweep_deletes_expired_files_only(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path, retention=100, clock=clock)
    old = store.save_file(b"old", "png", "image/png")
    clock.now += 60
    young = store.save_file(b"young", "png", "image/png")
    clock.now += 50
    assert store.sweep() == 1
    assert not old.path.exists() and young.path.exists()
    assert store.file(old.name) is None and store.file(young.name) is not None
    clock.now += 100
    assert store.maybe_sweep() == 1  # the young one's turn
    store.save_file(b"another", "png", "image/png")
    clock.now += 200
    assert store.maybe_sweep() == 0  # at most one sweep a minute, across workers
