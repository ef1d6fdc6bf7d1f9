from __future__ import annotations

from pathlib import Path

import pytest

from proxy.settings import Settings, SettingsError, settings_table


def test_defaults_follow_the_upstream_contract() -> None:
    settings = Settings.from_env({})
    assert settings.token_url == "https://backgroundcut.co/api/v3/remove-bg/token/"
    assert settings.process_url == "https://api.backgroundcut.co/v3/remove-bg/"
    assert settings.token_timeout == 60 and settings.process_timeout == 300
    assert settings.output_ttl == 7200
    assert settings.embedded_engine


def test_environment_is_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "PROXY_API_KEY": "k",
            "PROXY_DATA_DIR": "/tmp/x",
            "PROXY_AUTOCROP": "yes",
            "PROXY_TOKEN_TIMEOUT": "5",
            "PROXY_ALLOWED_OUTPUT_HOSTS": "a.example, *.cdn.example",
        }
    )
    assert settings.data_dir == Path("/tmp/x")
    assert settings.autocrop is True
    assert settings.token_timeout == 5.0
    assert settings.allowed_output_hosts == ("a.example", "*.cdn.example")
    assert not settings.embedded_engine


def test_flags_win_over_the_environment() -> None:
    settings = Settings.from_env({"PROXY_QUALITY": "low"}, quality="high")
    assert settings.quality == "high"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PROXY_TOKEN_TIMEOUT": "soon"}, "PROXY_TOKEN_TIMEOUT"),
        ({"PROXY_TOKEN_TIMEOUT": "0"}, "PROXY_TOKEN_TIMEOUT"),
        ({"PROXY_QUALITY": "ultra"}, "PROXY_QUALITY"),
        ({"PROXY_AUTOCROP": "maybe"}, "PROXY_AUTOCROP"),
        ({"PROXY_TOKEN_URL": "ftp://x"}, "PROXY_TOKEN_URL"),
        ({"PROXY_OUTPUT_COMPRESSION": "101"}, "PROXY_OUTPUT_COMPRESSION"),
        ({"PROXY_ADMIN_TOKEN": "short"}, "PROXY_ADMIN_TOKEN"),
        ({"PROXY_TTL_MARGIN": "9000"}, "PROXY_TTL_MARGIN"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_secrets_are_masked_when_described() -> None:
    described = Settings.from_env(
        {"PROXY_API_KEY": "sk-live-123", "PROXY_ADMIN_TOKEN": "admin-token-0123456789"}
    ).describe()
    assert "sk-live-123" not in str(described)
    assert "admin-token-0123456789" not in str(described)


def test_every_setting_is_in_the_table() -> None:
    names = [row[0] for row in settings_table()]
    assert "PROXY_API_KEY" in names and len(names) == len(set(names))
    assert all(name.startswith("PROXY_") for name in names)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize(
    "env", ["PROXY_OUTPUT_TTL", "PROXY_READY_TIMEOUT", "PROXY_BUDGET_CREDITS_PER_HOUR"]
)
def test_nan_and_infinity_are_refused_naming_the_variable(text: str, env: str) -> None:
    # A NaN TTL compares false with everything: every answer's lifetime broke (a 500 each).
    with pytest.raises(SettingsError, match=f"{env}: expected a finite number"):
        Settings.from_env({env: text})


def test_the_engine_settings_refuse_nan_and_infinity_too() -> None:
    from proxy.engine.settings import EngineSettings

    with pytest.raises(SettingsError, match="PROXY_ENGINE_TOKEN_TTL: expected a finite"):
        EngineSettings.from_env({"PROXY_ENGINE_TOKEN_TTL": "nan"})
    with pytest.raises(SettingsError, match="--retention: expected a finite"):
        EngineSettings.from_env({}, retention=float("inf"))
    with pytest.raises(SettingsError, match="PROXY_ENGINE_ERROR_RATE: expected a finite"):
        EngineSettings.from_env({}).replace(error_rate=float("nan"))
    with pytest.raises(SettingsError, match="PROXY_TTL_MARGIN: expected a finite"):
        Settings.from_env({}).replace(ttl_margin=float("nan"))


def test_store_mode_defaults_follow_the_spec() -> None:
    redirect, store = Settings.from_env({}), Settings.from_env({"PROXY_MODE": "store"})
    assert (redirect.mode, redirect.default_fit, redirect.store_mode) == (
        "redirect",
        "contain",
        False,
    )
    assert (store.default_fit, store.store_mode) == ("pad", True)
    assert Settings.from_env({"PROXY_MODE": "store", "PROXY_FIT": "cover"}).default_fit == "cover"
    assert (store.master_max_pixels, store.variant_memory_mb, store.variant_disk_mb) == (
        12_000_000,
        256,
        2048,
    )
    assert (store.master_cache_mb, store.derive_concurrency, store.avif_quality) == (256, 0, 60)
    assert store.derive_rate == "300/minute"
    assert Settings.from_env({"PROXY_CLIENT_DERIVE_RATE": "none"}).derive_rate is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PROXY_MODE": "mirror"}, "PROXY_MODE"),
        ({"PROXY_MODE": "store", "PROXY_FIT": "stretch"}, "PROXY_FIT"),
        # The upstream can only contain: a redirect-mode default of pad or cover cannot be.
        ({"PROXY_FIT": "pad"}, "PROXY_FIT"),
        ({"PROXY_MASTER_MAX_PIXELS": "12000001"}, "PROXY_MASTER_MAX_PIXELS"),
        ({"PROXY_VARIANT_DISK_MB": "-1"}, "PROXY_VARIANT_DISK_MB"),
        ({"PROXY_DERIVE_CONCURRENCY": "-2"}, "PROXY_DERIVE_CONCURRENCY"),
        ({"PROXY_AVIF_QUALITY": "101"}, "PROXY_AVIF_QUALITY"),
        ({"PROXY_CLIENT_DERIVE_RATE": "lots"}, "PROXY_CLIENT_DERIVE_RATE"),
    ],
)
def test_bad_store_mode_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
